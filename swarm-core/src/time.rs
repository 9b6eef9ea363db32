//! Time in the model: wall-clock [`Timestamp`]s and signed spec durations.
//!
//! Control loops run on tokio time so tests can pause it. [`now`] derives a
//! wall-clock timestamp from tokio's clock: the system time when the process
//! first asked, plus the tokio time elapsed since. With a paused clock the
//! timestamps advance exactly as the test advances time.
//!
//! Spec durations ([`SpecDuration`]) are signed nanoseconds, like Swarm's API,
//! so that a negative value can be represented and rejected by validation
//! with an error that names the field. In serde they read an integer of
//! nanoseconds or a human string (`"5s"`, `"1m30s"`, `"-2s"`), and write the
//! human string.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in wall-clock time, nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From a [`SystemTime`].
    pub fn from_system(t: SystemTime) -> Self {
        Timestamp(t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0))
    }

    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// This timestamp plus `d`.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_nanos() as u64))
    }

    /// This timestamp minus `d` (saturating at the epoch).
    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.as_nanos() as u64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_nanos(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct ClockBase {
    wall: Timestamp,
    mono: tokio::time::Instant,
}

static BASE: OnceLock<ClockBase> = OnceLock::new();

/// The current wall-clock time as seen through tokio's clock.
///
/// Outside a tokio runtime it falls back to the system clock.
pub fn now() -> Timestamp {
    if tokio::runtime::Handle::try_current().is_err() {
        return Timestamp::from_system(SystemTime::now());
    }
    let base = BASE.get_or_init(|| ClockBase {
        wall: Timestamp::from_system(SystemTime::now()),
        mono: tokio::time::Instant::now(),
    });
    let now = tokio::time::Instant::now();
    // A paused clock in a later test may sit before the base: saturate.
    base.wall.plus(now.saturating_duration_since(base.mono))
}

/// A signed duration in a spec, in nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SpecDuration(pub i64);

impl SpecDuration {
    /// Zero.
    pub const ZERO: SpecDuration = SpecDuration(0);

    /// Whole seconds.
    pub const fn from_secs(s: i64) -> Self {
        SpecDuration(s.saturating_mul(1_000_000_000))
    }

    /// Milliseconds.
    pub const fn from_millis(ms: i64) -> Self {
        SpecDuration(ms.saturating_mul(1_000_000))
    }

    /// Nanoseconds.
    pub const fn from_nanos(ns: i64) -> Self {
        SpecDuration(ns)
    }

    /// True when negative (validation rejects it).
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// As a std [`Duration`]; negative values become zero (validation
    /// rejects them before they get this far).
    pub fn to_std(self) -> Duration {
        Duration::from_nanos(self.0.max(0) as u64)
    }

    /// Parses `"1h2m3s"`, `"250ms"`, `"-5s"`, or a bare integer of
    /// nanoseconds.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i64>() {
            return Ok(SpecDuration(n));
        }
        let (neg, body) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let d = humantime::parse_duration(body).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
        // Negate before narrowing: -2^63 ns (i64::MIN, which Display
        // writes) fits an i64 although its magnitude does not.
        let n = i128::try_from(d.as_nanos()).map_err(|_| format!("duration {s:?} is too large"))?;
        let n = i64::try_from(if neg { -n } else { n }).map_err(|_| format!("duration {s:?} is too large"))?;
        Ok(SpecDuration(n))
    }
}

impl From<Duration> for SpecDuration {
    fn from(d: Duration) -> Self {
        SpecDuration(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        if self.0 < 0 {
            f.write_str("-")?;
        }
        let d = Duration::from_nanos(self.0.unsigned_abs());
        write!(f, "{}", humantime::format_duration(d).to_string().replace(' ', ""))
    }
}

impl fmt::Debug for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for SpecDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(SpecDuration(n)),
            Raw::Str(s) => SpecDuration::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_text() {
        for (text, nanos) in
            [("5s", 5_000_000_000i64), ("-2s", -2_000_000_000), ("1m30s", 90_000_000_000), ("250ms", 250_000_000)]
        {
            let d = SpecDuration::parse(text).unwrap();
            assert_eq!(d.0, nanos, "{text}");
            assert_eq!(SpecDuration::parse(&d.to_string()).unwrap(), d);
        }
        assert!(SpecDuration::parse("soon").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn now_follows_paused_tokio_time() {
        let a = now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let b = now();
        assert_eq!(b.since(a), Duration::from_secs(3600));
    }
}

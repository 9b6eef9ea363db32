//! Conversions between `SystemTime` and the time types of rcgen and
//! x509-parser (seconds since the Unix epoch).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch to a `SystemTime` (negative values count back).
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A `SystemTime` to rcgen's `OffsetDateTime`, truncated to whole seconds
/// (X.509 times carry seconds only); `None` outside the years -9999..=9999.
pub(crate) fn to_offset(t: SystemTime) -> Option<time::OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => -i64::try_from(e.duration().as_secs()).ok()?,
    };
    time::OffsetDateTime::from_unix_timestamp(secs).ok()
}

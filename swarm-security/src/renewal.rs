//! When a node asks for a new certificate: at a random point between 50 %
//! and 80 % of its certificate's lifetime.
//!
//! The randomness spreads the renewals of nodes that joined together (or
//! whose certificates were reissued together after a CA rotation) so the
//! CA is not asked by all of them at once; the 20 % left at the end gives
//! room for retries before expiry. The caller passes the random source, so
//! a test with a seeded generator gets the same instant every time.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use swarm_security::renewal::renewal_time;
//!
//! let start = SystemTime::UNIX_EPOCH;
//! let end = start + Duration::from_secs(100);
//! let at = renewal_time(start, end, &mut rand_core::OsRng);
//! assert!(at >= start + Duration::from_secs(50) && at <= start + Duration::from_secs(80));
//! ```

use std::time::SystemTime;

use rand_core::RngCore;

use crate::identity::NodeIdentity;

/// The earliest renewal point, as a fraction of the lifetime.
pub const RENEW_FROM: f64 = 0.5;
/// The latest renewal point, as a fraction of the lifetime.
pub const RENEW_UNTIL: f64 = 0.8;

/// A uniformly random instant in `[not_before + 50 %, not_before + 80 %]`
/// of the validity window. A window that is empty or reversed gives
/// `not_before` (renew at once).
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, rng: &mut impl RngCore) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return not_before;
    };
    // 53 random bits: a uniform f64 in [0, 1).
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let fraction = RENEW_FROM + (RENEW_UNTIL - RENEW_FROM) * unit;
    not_before + lifetime.mul_f64(fraction)
}

/// [`renewal_time`] for a certificate's identity.
pub fn renewal_time_for(identity: &NodeIdentity, rng: &mut impl RngCore) -> SystemTime {
    renewal_time(identity.not_before, identity.not_after, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;
    use std::time::Duration;

    #[test]
    fn stays_within_50_and_80_percent_and_covers_the_range() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let lifetime = Duration::from_secs(90 * 86_400);
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for seed in 0..10_000u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let at = renewal_time(start, start + lifetime, &mut rng);
            let f = at.duration_since(start).unwrap().as_secs_f64() / lifetime.as_secs_f64();
            assert!((0.5..=0.8).contains(&f), "seed {seed}: fraction {f}");
            lo = lo.min(f);
            hi = hi.max(f);
        }
        // Spread over the window, not a constant.
        assert!(lo < 0.51 && hi > 0.79, "range seen: {lo}..{hi}");
    }

    #[test]
    fn same_seed_same_instant() {
        let start = SystemTime::UNIX_EPOCH;
        let end = start + Duration::from_secs(3_600);
        let a = renewal_time(start, end, &mut ChaCha8Rng::seed_from_u64(7));
        let b = renewal_time(start, end, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a, b);
    }

    #[test]
    fn an_empty_window_renews_at_once() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(renewal_time(t, t - Duration::from_secs(1), &mut rng), t);
        assert_eq!(renewal_time(t, t, &mut rng), t);
    }
}

//! Per-key rate limit: a token bucket per caller label, refilled at `rate` tokens/s with a burst of `rate`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by caller label; `rate == 0` means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` requests per second per key (0 = unlimited).
    pub fn new(rate: u32) -> Self {
        RateLimiter { rate: f64::from(rate), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token for `label` at `now`; `Err(wait)` when the bucket is empty.
    pub fn check(&self, label: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let bucket = match buckets.get_mut(label) {
            Some(b) => b,
            None => buckets.entry(label.to_string()).or_insert(Bucket { tokens: self.rate, last: now }),
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(rl.check("k", t0).is_ok());
        }
        let wait = rl.check("k", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert!(rl.check("other", t0).is_ok(), "buckets are per key");
        assert!(rl.check("k", t0 + Duration::from_millis(210)).is_ok());
    }

    #[test]
    fn zero_is_unlimited() {
        let rl = RateLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(rl.check("k", t0).is_ok());
        }
    }
}

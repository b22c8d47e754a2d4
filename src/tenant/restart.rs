//! Reconnect back-off: capped exponential with jitter.

use std::time::Duration;

/// The first retry waits this long.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// No retry waits longer than this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Back-off state of one tenant.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Self {
        Backoff {
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The session streamed: start again from the shortest wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next wait: `INITIAL * 2^attempt`, capped, minus up to 25% jitter so
    /// that tenants failing together do not retry in lockstep. An error that
    /// needs a human (`definite`) waits the cap.
    pub fn next_delay(&mut self, definite: bool) -> Duration {
        let base = if definite {
            MAX_BACKOFF
        } else {
            let factor = 1u32 << self.attempt.min(10);
            INITIAL_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
        };
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: cheap, good enough for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = base.mul_f64((self.seed % 1000) as f64 / 4000.0);
        base - jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(42);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay(false)).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = INITIAL_BACKOFF
                .saturating_mul(1 << i.min(10))
                .min(MAX_BACKOFF);
            assert!(
                *d <= base && *d >= base.mul_f64(0.75),
                "attempt {i}: {d:?} vs {base:?}"
            );
        }
        assert!(delays[11] >= MAX_BACKOFF.mul_f64(0.75));
        b.reset();
        assert!(b.next_delay(false) <= INITIAL_BACKOFF);
        assert!(b.next_delay(true) >= MAX_BACKOFF.mul_f64(0.75));
    }
}

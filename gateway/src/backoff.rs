//! Exponential backoff with jitter.
//!
//! replaced by proto::backoff on merge: this is a local copy of exactly
//! the API `proto::backoff::Backoff` offers (`new`, `with_jitter`,
//! `next_delay`, `reset`, `attempts`), so that the follower can be written
//! against it before that lands; on merge this file goes and the one `use`
//! in `follower.rs` names `proto::backoff::Backoff` instead.

use rand::Rng;
use std::time::Duration;

/// Delays that start at `base` and double up to `max`, each scattered by
/// ×(1 ± spread) so that many gateways do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    spread: f64,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            spread: 0.0,
            next: base,
            attempts: 0,
        }
    }

    /// Scatters every delay by ×(1 ± spread).
    pub fn with_jitter(mut self, spread: f64) -> Backoff {
        self.spread = spread.clamp(0.0, 1.0);
        self
    }

    /// The delay before the next attempt; the one after doubles (up to
    /// the maximum).
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = if self.spread > 0.0 {
            rng.gen_range(1.0 - self.spread..1.0 + self.spread)
        } else {
            1.0
        };
        let delay = self.next.mul_f64(factor);
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        delay
    }

    /// Starts again from the base delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.base;
        self.attempts = 0;
    }

    /// Delays handed out since the last reset.
    #[allow(dead_code)] // part of proto::backoff's API
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

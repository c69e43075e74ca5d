//! What one direction of the emulated path does, and its text form.
//!
//! A spec is a comma-separated list of `key=value`, e.g.
//! `delay=20ms,jitter=2ms,loss=1%,burst=3,rate=50mbit,queue=200ms`.
//! Keys (all optional; an empty spec is a perfect wire):
//!
//! | key | meaning |
//! | --- | --- |
//! | `delay` | one-way propagation delay (`us`, `ms`, `s`) |
//! | `jitter` | each packet's delay varies uniformly within +-jitter; order is kept (a FIFO link never reorders) |
//! | `loss` | random loss, percent (`1%`) or a fraction (`0.01`) |
//! | `burst` | with `loss`: mean loss burst length in packets; turns `loss` into a two-state Gilbert model with that mean loss |
//! | `ge` | full Gilbert-Elliott: `P(good->bad)/P(bad->good)/loss in good/loss in bad`, e.g. `ge=1%/25%/0%/50%` |
//! | `reorder` | share of packets held back by `gap` so that later ones overtake them |
//! | `gap` | extra delay of a reordered packet (default 1 ms) |
//! | `rate` | bottleneck rate (`kbit`, `mbit`, `gbit`) |
//! | `queue` | the bottleneck's queue limit: bytes (`64kb`, `1mb`, `1500b`) or time at the rate (`50ms`); default 100 ms |

use std::time::Duration;

/// Why a spec was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("'{0}' is not key=value (e.g. delay=20ms)")]
    NotKeyValue(String),
    #[error("unknown key '{0}' (keys: delay, jitter, loss, burst, ge, reorder, gap, rate, queue)")]
    UnknownKey(String),
    #[error("{key}: '{value}' is not {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("burst needs loss (the mean loss the bursts add up to)")]
    BurstWithoutLoss,
    #[error("loss and ge both set: use one")]
    LossAndGe,
    #[error("queue set without rate: a queue only fills behind a rate limit")]
    QueueWithoutRate,
}

/// How packets are lost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    #[default]
    None,
    /// Each packet independently, with this probability.
    Random(f64),
    /// Two states; the chain moves once per packet, then the packet is lost
    /// with the current state's probability.
    GilbertElliott {
        good_to_bad: f64,
        bad_to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

impl Loss {
    /// The long-run share of packets lost.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott {
                good_to_bad,
                bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let total = good_to_bad + bad_to_good;
                if total == 0.0 {
                    return loss_good;
                }
                let bad = good_to_bad / total;
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// The limit of the bottleneck's queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    Bytes(u64),
    /// As much as the rate drains in this time.
    Time(Duration),
}

/// One direction of the emulated path.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: Loss,
    pub reorder: f64,
    pub reorder_gap: Duration,
    /// Bits per second; `None`: no bottleneck.
    pub rate_bps: Option<u64>,
    pub queue: QueueLimit,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(1),
            rate_bps: None,
            queue: QueueLimit::Time(Duration::from_millis(100)),
        }
    }
}

impl LinkSpec {
    /// The queue limit in bytes (`None` without a rate: no queue at all).
    pub fn queue_bytes(&self) -> Option<u64> {
        let rate = self.rate_bps?;
        Some(match self.queue {
            QueueLimit::Bytes(b) => b,
            QueueLimit::Time(t) => (rate as f64 * t.as_secs_f64() / 8.0) as u64,
        })
    }

    /// Parses `spec` on top of `self` (keys not named keep their value), so
    /// a per-direction spec can refine a spec for both directions.
    pub fn apply(&self, spec: &str) -> Result<LinkSpec, SpecError> {
        let mut out = self.clone();
        let mut loss: Option<f64> = None;
        let mut burst: Option<f64> = None;
        let mut ge = false;
        let mut queue_set = false;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(item.to_string()))?;
            let value = value.trim();
            match key.trim() {
                "delay" => out.delay = duration("delay", value)?,
                "jitter" => out.jitter = duration("jitter", value)?,
                "gap" => out.reorder_gap = duration("gap", value)?,
                "loss" => loss = Some(share("loss", value)?),
                "reorder" => out.reorder = share("reorder", value)?,
                "burst" => {
                    let b: f64 = value.parse().ok().filter(|b: &f64| *b >= 1.0).ok_or(
                        SpecError::BadValue {
                            key: "burst",
                            value: value.to_string(),
                            expected: "a mean burst length in packets, at least 1",
                        },
                    )?;
                    burst = Some(b);
                }
                "ge" => {
                    let bad = || SpecError::BadValue {
                        key: "ge",
                        value: value.to_string(),
                        expected: "four shares p/r/loss_good/loss_bad (e.g. 1%/25%/0%/50%)",
                    };
                    let parts: Vec<f64> = value
                        .split('/')
                        .map(|v| share("ge", v).map_err(|_| bad()))
                        .collect::<Result<_, _>>()?;
                    let [good_to_bad, bad_to_good, loss_good, loss_bad] = parts[..] else {
                        return Err(bad());
                    };
                    out.loss = Loss::GilbertElliott {
                        good_to_bad,
                        bad_to_good,
                        loss_good,
                        loss_bad,
                    };
                    ge = true;
                }
                "rate" => out.rate_bps = Some(rate(value)?),
                "queue" => {
                    out.queue = queue(value)?;
                    queue_set = true;
                }
                other => return Err(SpecError::UnknownKey(other.to_string())),
            }
        }
        if ge && loss.is_some() {
            return Err(SpecError::LossAndGe);
        }
        match (loss, burst) {
            (None, Some(_)) => return Err(SpecError::BurstWithoutLoss),
            (Some(p), None) => out.loss = if p > 0.0 { Loss::Random(p) } else { Loss::None },
            (Some(p), Some(b)) => out.loss = gilbert_from_mean(p, b),
            (None, None) => {}
        }
        if queue_set && out.rate_bps.is_none() {
            return Err(SpecError::QueueWithoutRate);
        }
        Ok(out)
    }
}

/// The simple Gilbert model (every packet lost in the bad state, none in
/// the good one) whose mean loss is `mean` and whose bursts last `burst`
/// packets on average: leaving the bad state has probability 1/burst, and
/// entering it is set so that the bad state's share equals `mean`.
fn gilbert_from_mean(mean: f64, burst: f64) -> Loss {
    if mean <= 0.0 {
        return Loss::None;
    }
    let bad_to_good = 1.0 / burst;
    let good_to_bad = (mean * bad_to_good / (1.0 - mean)).min(1.0);
    Loss::GilbertElliott {
        good_to_bad,
        bad_to_good,
        loss_good: 0.0,
        loss_bad: 1.0,
    }
}

fn number(value: &str, suffixes: &[(&str, f64)]) -> Option<f64> {
    let lower = value.to_ascii_lowercase();
    // Longest suffix first, so "ms" is not read as "s".
    let mut sorted: Vec<&(&str, f64)> = suffixes.iter().collect();
    sorted.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    for (suffix, scale) in sorted {
        if let Some(n) = lower.strip_suffix(suffix) {
            return n
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v * scale);
        }
    }
    None
}

fn duration(key: &'static str, value: &str) -> Result<Duration, SpecError> {
    number(value, &[("us", 1e-6), ("ms", 1e-3), ("s", 1.0)])
        .map(Duration::from_secs_f64)
        .ok_or(SpecError::BadValue {
            key,
            value: value.to_string(),
            expected: "a duration (e.g. 20ms, 500us, 1s)",
        })
}

fn share(key: &'static str, value: &str) -> Result<f64, SpecError> {
    let v = match value.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().ok().map(|v| v / 100.0),
        None => value.parse::<f64>().ok(),
    };
    v.filter(|v| (0.0..=1.0).contains(v))
        .ok_or(SpecError::BadValue {
            key,
            value: value.to_string(),
            expected: "a share between 0 and 1 (e.g. 0.01 or 1%)",
        })
}

fn rate(value: &str) -> Result<u64, SpecError> {
    number(
        value,
        &[("bit", 1.0), ("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9)],
    )
    .filter(|v| *v >= 1000.0)
    .map(|v| v as u64)
    .ok_or(SpecError::BadValue {
        key: "rate",
        value: value.to_string(),
        expected: "a rate of at least 1kbit (e.g. 50mbit, 1gbit)",
    })
}

fn queue(value: &str) -> Result<QueueLimit, SpecError> {
    if let Ok(t) = duration("queue", value) {
        return Ok(QueueLimit::Time(t));
    }
    number(value, &[("b", 1.0), ("kb", 1e3), ("mb", 1e6)])
        .filter(|v| *v >= 1.0)
        .map(|v| QueueLimit::Bytes(v as u64))
        .ok_or(SpecError::BadValue {
            key: "queue",
            value: value.to_string(),
            expected: "bytes (e.g. 64kb, 1mb) or time at the rate (e.g. 50ms)",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_spec_parses() {
        let s = LinkSpec::default()
            .apply(
                "delay=20ms, jitter=500us, loss=1%, reorder=0.5%, gap=2ms, rate=50mbit, queue=64kb",
            )
            .unwrap();
        assert_eq!(s.delay, Duration::from_millis(20));
        assert_eq!(s.jitter, Duration::from_micros(500));
        assert_eq!(s.loss, Loss::Random(0.01));
        assert_eq!(s.reorder, 0.005);
        assert_eq!(s.reorder_gap, Duration::from_millis(2));
        assert_eq!(s.rate_bps, Some(50_000_000));
        assert_eq!(s.queue_bytes(), Some(64_000));
    }

    #[test]
    fn queue_in_time_is_bytes_at_the_rate() {
        let s = LinkSpec::default()
            .apply("rate=50mbit,queue=200ms")
            .unwrap();
        assert_eq!(s.queue_bytes(), Some(1_250_000));
        assert_eq!(LinkSpec::default().queue_bytes(), None);
    }

    #[test]
    fn per_direction_refines_both() {
        let both = LinkSpec::default().apply("delay=10ms,loss=0.1%").unwrap();
        let down = both.apply("rate=50mbit").unwrap();
        assert_eq!(down.delay, Duration::from_millis(10));
        assert_eq!(down.loss, Loss::Random(0.001));
        assert_eq!(down.rate_bps, Some(50_000_000));
        // loss=0 switches loss off again.
        assert_eq!(both.apply("loss=0").unwrap().loss, Loss::None);
    }

    #[test]
    fn burst_gives_a_gilbert_model_with_that_mean() {
        let s = LinkSpec::default().apply("loss=1%,burst=4").unwrap();
        let Loss::GilbertElliott { bad_to_good, .. } = s.loss else {
            panic!("not Gilbert-Elliott: {:?}", s.loss)
        };
        assert_eq!(bad_to_good, 0.25);
        assert!((s.loss.mean() - 0.01).abs() < 1e-12);
        let ge = LinkSpec::default().apply("ge=1%/25%/0%/50%").unwrap();
        assert!((ge.loss.mean() - 0.5 / 26.0).abs() < 1e-12);
    }

    #[test]
    fn bad_specs_are_refused_clearly() {
        let d = LinkSpec::default();
        assert_eq!(
            d.apply("delay"),
            Err(SpecError::NotKeyValue("delay".into()))
        );
        assert_eq!(
            d.apply("latency=1ms"),
            Err(SpecError::UnknownKey("latency".into()))
        );
        assert!(matches!(
            d.apply("delay=fast"),
            Err(SpecError::BadValue { key: "delay", .. })
        ));
        assert!(matches!(
            d.apply("loss=150%"),
            Err(SpecError::BadValue { key: "loss", .. })
        ));
        assert!(matches!(
            d.apply("rate=5"),
            Err(SpecError::BadValue { key: "rate", .. })
        ));
        assert!(matches!(
            d.apply("ge=1%/2%"),
            Err(SpecError::BadValue { key: "ge", .. })
        ));
        assert_eq!(d.apply("burst=3"), Err(SpecError::BurstWithoutLoss));
        assert_eq!(
            d.apply("loss=1%,ge=1%/25%/0%/50%"),
            Err(SpecError::LossAndGe)
        );
        assert_eq!(d.apply("queue=10ms"), Err(SpecError::QueueWithoutRate));
        // The message names the key and what was expected.
        let e = d.apply("jitter=-1ms").unwrap_err().to_string();
        assert!(e.contains("jitter") && e.contains("duration"), "{e}");
    }
}

//! The impairment model of one direction of one link, free of I/O so it can be
//! tested against a synthetic clock.
//!
//! Per datagram, in order: outage, bottleneck queue (tail drop when the packet
//! would wait longer than `queue_ms`), serialization at `rate_kbps`, random and
//! burst loss, then propagation delay with jitter. Delivery times never go
//! backwards, so the link does not reorder, as cellular bearers mostly don't.
//! Every datagram draws the same number of random values whatever its fate, so a
//! given seed and packet sequence always give the same verdicts.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Impairment;

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it at this instant.
    Deliver(Instant),
    /// Drop it.
    Drop(DropReason),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The link is dark.
    Outage,
    /// The bottleneck buffer was full.
    Queue,
    /// Random or burst loss.
    Loss,
}

/// One direction of a link.
#[derive(Debug)]
pub struct Shaper {
    rng: ChaCha8Rng,
    in_bad_state: bool,
    /// When the bottleneck finishes sending what it already holds.
    busy_until: Option<Instant>,
    /// When the previous datagram was delivered (to forbid reordering).
    last_delivery: Option<Instant>,
    rate_limited: bool,
}

impl Shaper {
    /// A shaper whose random choices come from `seed`; `rate_limited` says
    /// whether this direction honours `rate_kbps` (the downlink does not).
    pub fn new(seed: u64, rate_limited: bool) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_bad_state: false,
            busy_until: None,
            last_delivery: None,
            rate_limited,
        }
    }

    /// Decides the fate of a datagram of `len` bytes arriving at `now`.
    pub fn admit(&mut self, imp: &Impairment, now: Instant, len: usize) -> Verdict {
        // Fixed number of draws per datagram keeps verdicts reproducible.
        let loss_draw: f64 = self.rng.random();
        let burst_draw: f64 = self.rng.random();
        let transition_draw: f64 = self.rng.random();
        let jitter_draw: f64 = self.rng.random_range(-1.0..=1.0);

        if let Some(ge) = &imp.burst {
            let p = if self.in_bad_state {
                ge.leave_bad_percent
            } else {
                ge.enter_bad_percent
            };
            if transition_draw * 100.0 < p {
                self.in_bad_state = !self.in_bad_state;
            }
        }
        if !imp.up {
            return Verdict::Drop(DropReason::Outage);
        }

        let mut departure = now;
        if self.rate_limited
            && let Some(kbps) = imp.rate_kbps
        {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            if start.duration_since(now) > Duration::from_millis(u64::from(imp.queue_ms)) {
                return Verdict::Drop(DropReason::Queue);
            }
            let serialization =
                Duration::from_secs_f64(len as f64 * 8.0 / (f64::from(kbps) * 1000.0));
            departure = start + serialization;
            self.busy_until = Some(departure);
        }

        let random_loss = loss_draw * 100.0 < imp.loss_percent;
        let burst_loss = self.in_bad_state
            && imp
                .burst
                .as_ref()
                .is_some_and(|ge| burst_draw * 100.0 < ge.loss_in_bad_percent);
        if random_loss || burst_loss {
            return Verdict::Drop(DropReason::Loss);
        }

        let delay_ms = (imp.delay_ms + jitter_draw * imp.jitter_ms).max(0.0);
        let mut at = departure + Duration::from_secs_f64(delay_ms / 1000.0);
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GilbertElliott;

    fn run(seed: u64, imp: &Impairment, n: usize, gap: Duration) -> Vec<Verdict> {
        let mut s = Shaper::new(seed, true);
        let t0 = Instant::now();
        (0..n)
            .map(|i| s.admit(imp, t0 + gap * i as u32, 1316))
            .collect()
    }

    #[test]
    fn same_seed_same_verdicts() {
        let imp = Impairment {
            loss_percent: 5.0,
            jitter_ms: 5.0,
            delay_ms: 20.0,
            burst: Some(GilbertElliott {
                enter_bad_percent: 2.0,
                leave_bad_percent: 20.0,
                loss_in_bad_percent: 80.0,
            }),
            ..Default::default()
        };
        let gap = Duration::from_millis(1);
        let drops = |v: &[Verdict]| {
            v.iter()
                .map(|x| matches!(x, Verdict::Drop(_)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            drops(&run(9, &imp, 2000, gap)),
            drops(&run(9, &imp, 2000, gap))
        );
        assert_ne!(
            drops(&run(9, &imp, 2000, gap)),
            drops(&run(10, &imp, 2000, gap))
        );
    }

    #[test]
    fn random_loss_rate_is_close_to_configured() {
        let imp = Impairment {
            loss_percent: 2.0,
            ..Default::default()
        };
        let v = run(1, &imp, 50_000, Duration::from_micros(100));
        let lost = v
            .iter()
            .filter(|x| **x == Verdict::Drop(DropReason::Loss))
            .count();
        let pct = lost as f64 * 100.0 / v.len() as f64;
        assert!((1.7..2.3).contains(&pct), "loss {pct}%");
    }

    #[test]
    fn burst_loss_comes_in_runs() {
        let imp = Impairment {
            burst: Some(GilbertElliott {
                enter_bad_percent: 1.0,
                leave_bad_percent: 10.0,
                loss_in_bad_percent: 100.0,
            }),
            ..Default::default()
        };
        let v = run(3, &imp, 50_000, Duration::from_micros(100));
        let lost: Vec<bool> = v.iter().map(|x| matches!(x, Verdict::Drop(_))).collect();
        let losses = lost.iter().filter(|l| **l).count();
        let runs = lost.windows(2).filter(|w| w[1] && !w[0]).count();
        // Mean bad-state sojourn is 1/0.10 = 10 packets.
        let mean_run = losses as f64 / runs as f64;
        assert!((7.0..13.0).contains(&mean_run), "mean burst {mean_run}");
    }

    #[test]
    fn rate_limit_bounds_throughput_and_tail_drops() {
        // 1 Mbit/s link offered ~2.1 Mbit/s: about half is dropped at the queue.
        let imp = Impairment {
            rate_kbps: Some(1000),
            queue_ms: 100,
            ..Default::default()
        };
        let v = run(1, &imp, 2000, Duration::from_millis(5));
        let t0 = match v[0] {
            Verdict::Deliver(t) => t,
            _ => panic!(),
        };
        let delivered: Vec<Instant> = v
            .iter()
            .filter_map(|x| {
                if let Verdict::Deliver(t) = x {
                    Some(*t)
                } else {
                    None
                }
            })
            .collect();
        let span = delivered.last().unwrap().duration_since(t0).as_secs_f64();
        let kbps = (delivered.len() - 1) as f64 * 1316.0 * 8.0 / span / 1000.0;
        assert!((950.0..1050.0).contains(&kbps), "{kbps} kbit/s");
        assert!(v.contains(&Verdict::Drop(DropReason::Queue)));
    }

    #[test]
    fn never_reorders_and_honours_delay() {
        let imp = Impairment {
            delay_ms: 30.0,
            jitter_ms: 20.0,
            ..Default::default()
        };
        let gap = Duration::from_millis(1);
        let mut s = Shaper::new(5, true);
        let t0 = Instant::now();
        let mut last = t0;
        for i in 0..1000u32 {
            let now = t0 + gap * i;
            let Verdict::Deliver(at) = s.admit(&imp, now, 100) else {
                panic!()
            };
            assert!(at >= last);
            assert!(at >= now + Duration::from_millis(10));
            assert!(at <= now + Duration::from_millis(51) || at == last);
            last = at;
        }
    }

    #[test]
    fn outage_drops_everything() {
        let imp = Impairment {
            up: false,
            ..Default::default()
        };
        assert!(
            run(1, &imp, 100, Duration::from_millis(1))
                .iter()
                .all(|v| *v == Verdict::Drop(DropReason::Outage))
        );
    }
}

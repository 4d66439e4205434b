//! The link controller: turns what each link shows (RTT, whether anything comes
//! back, what we pushed into it) into librist weights and the bond's capacity.
//!
//! Per link it keeps a capacity estimate, adapted like a delay-based congestion
//! controller: queueing delay (RTT above the link's recent minimum) beyond a
//! threshold cuts the estimate multiplicatively; a quiet queue while the link
//! carries close to its estimate grows it. Weights are proportional to the
//! estimates, so each link carries what it can. A link from which nothing came
//! back for `dark_after` is parked at weight 0 which, in librist, means "send
//! copies here": it never holds the only copy of a packet. Its relay drops
//! those copies and passes only the small keepalives, which show when it heals. A healed link comes back at half its
//! old estimate and grows from there.
//!
//! librist resets a peer's round-robin credit on every weight change, which can
//! skip a packet (later recovered by NACK) and lets that peer take its whole
//! weight in a row, so weights are small (`weight_scale`) and only pushed when
//! they move by more than `weight_hysteresis`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::link::LinkState;

/// Tuning of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often weights are recomputed.
    pub tick: Duration,
    /// Silence after which a link counts as dark.
    pub dark_after: Duration,
    /// First estimate of a link's capacity when its spec gives none.
    pub initial_kbps: f64,
    /// The estimate never falls below this (so a link keeps being measured).
    pub min_kbps: f64,
    /// Nor rises above this.
    pub max_kbps: f64,
    /// Share of the summed estimates offered to the encoder.
    pub headroom: f64,
    /// Relative weight change below which librist is left alone.
    pub weight_hysteresis: f64,
    /// Window of the base-RTT minimum filter.
    pub base_rtt_window: Duration,
    /// After a link comes up, RTT samples are ignored this long, until the first
    /// echo round trips have been measured: an early bogus sample would sit in
    /// the base-RTT window and look like queueing for the window's length.
    pub warmup: Duration,
    /// Weight of the strongest link. librist's round robin gives a peer whose
    /// weight was just set its whole weight in a row, so small weights keep
    /// those bursts short; 20 still gives 5 % resolution.
    pub weight_scale: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            dark_after: Duration::from_millis(250),
            initial_kbps: 1000.0,
            min_kbps: 100.0,
            max_kbps: 200_000.0,
            headroom: 0.8,
            weight_hysteresis: 0.15,
            base_rtt_window: Duration::from_secs(30),
            weight_scale: 20,
            warmup: Duration::from_millis(500),
        }
    }
}

/// What the controller sees of a link at one tick.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Bytes pushed into the link since it was added.
    pub sent_bytes: u64,
    /// When anything last came back over the link.
    pub last_heard: Option<Instant>,
    /// librist's current RTT for the link.
    pub rtt_ms: Option<u32>,
}

/// What the controller decided for a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The link's state.
    pub state: LinkState,
    /// Weight to give librist.
    pub weight: u32,
    /// Whether `weight` differs from what librist has.
    pub weight_changed: bool,
    /// Whether the link's relay should drop data and pass only small control
    /// packets: a dark link at weight 0 would otherwise carry a full copy of
    /// the stream until librist itself gives up on the peer (about 1 s).
    pub suppress_data: bool,
}

/// Per-link controller state.
#[derive(Debug)]
pub struct LinkControl {
    state: LinkState,
    capacity_kbps: f64,
    /// Estimate before the link went dark, to resume from.
    capacity_before_dark: f64,
    weight: u32,
    last_sent_bytes: Option<(Instant, u64)>,
    sent_kbps: f64,
    rtts: VecDeque<(Instant, u32)>,
    last_cut: Option<Instant>,
    /// When the link last changed state (for the "time to drop/re-adopt" figures).
    pub state_since: Instant,
}

impl LinkControl {
    /// A new link, starting at `initial_kbps`.
    pub fn new(now: Instant, initial_kbps: f64) -> Self {
        Self {
            state: LinkState::Probing,
            capacity_kbps: initial_kbps,
            capacity_before_dark: initial_kbps,
            weight: 1,
            last_sent_bytes: None,
            sent_kbps: 0.0,
            rtts: VecDeque::new(),
            last_cut: None,
            state_since: now,
        }
    }

    /// The link's state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// The capacity estimate, kbit/s.
    pub fn capacity_kbps(&self) -> f64 {
        self.capacity_kbps
    }

    /// Smoothed rate pushed into the link, kbit/s.
    pub fn sent_kbps(&self) -> f64 {
        self.sent_kbps
    }

    /// The weight librist has.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Lowest RTT in the window.
    pub fn base_rtt_ms(&self) -> Option<u32> {
        self.rtts.iter().map(|r| r.1).min()
    }

    /// Marks the link removed; it keeps weight 0 from then on.
    pub fn remove(&mut self, now: Instant) {
        self.set_state(LinkState::Removed, now);
    }

    fn set_state(&mut self, s: LinkState, now: Instant) {
        if self.state != s {
            self.state = s;
            self.state_since = now;
        }
    }
}

/// Recomputes every link; returns a decision per link, in order.
pub fn tick(
    cfg: &ControllerConfig,
    now: Instant,
    links: &mut [&mut LinkControl],
    obs: &[Observation],
) -> Vec<Decision> {
    for (l, o) in links.iter_mut().zip(obs) {
        update_link(cfg, now, l, o);
    }
    let max_cap = links
        .iter()
        .filter(|l| l.state == LinkState::Up)
        .map(|l| l.capacity_kbps)
        .fold(0.0_f64, f64::max);
    links
        .iter_mut()
        .map(|l| {
            let target = match l.state {
                LinkState::Up => ((f64::from(cfg.weight_scale) * l.capacity_kbps / max_cap).round()
                    as u32)
                    .clamp(1, cfg.weight_scale),
                // A token share: librist never declares a peer dead that never
                // answered, so weight 0 would copy the whole stream to it forever.
                LinkState::Probing => 1,
                // Copies only; the link's relay drops the copies while it is
                // dark, so only keepalives go out (see `Decision::suppress_data`).
                LinkState::Dark | LinkState::Removed => 0,
            };
            let old = l.weight;
            let moved = if old == 0 || target == 0 {
                old != target
            } else {
                (f64::from(target) - f64::from(old)).abs() / f64::from(old) > cfg.weight_hysteresis
            };
            if moved {
                l.weight = target;
            }
            Decision {
                state: l.state,
                weight: l.weight,
                weight_changed: moved,
                suppress_data: l.state == LinkState::Dark,
            }
        })
        .collect()
}

/// The bond's usable capacity: what the encoder may send, kbit/s.
pub fn usable_kbps<'a>(
    cfg: &ControllerConfig,
    links: impl IntoIterator<Item = &'a LinkControl>,
) -> f64 {
    links
        .into_iter()
        .filter(|l| l.state == LinkState::Up)
        .map(|l| l.capacity_kbps)
        .sum::<f64>()
        * cfg.headroom
}

fn update_link(cfg: &ControllerConfig, now: Instant, l: &mut LinkControl, o: &Observation) {
    if l.state == LinkState::Removed {
        return;
    }
    // Rate pushed into the link, smoothed over about half a second.
    if let Some((t, b)) = l.last_sent_bytes {
        let dt = now.duration_since(t).as_secs_f64();
        if dt > 0.0 {
            let kbps = (o.sent_bytes.saturating_sub(b)) as f64 * 8.0 / dt / 1000.0;
            l.sent_kbps += (kbps - l.sent_kbps) * (dt / 0.5).min(1.0);
        }
    }
    l.last_sent_bytes = Some((now, o.sent_bytes));

    let heard_recently = o
        .last_heard
        .is_some_and(|t| now.saturating_duration_since(t) < cfg.dark_after);
    match (l.state, heard_recently) {
        (LinkState::Probing, true) => l.set_state(LinkState::Up, now),
        (LinkState::Up, false) => {
            l.capacity_before_dark = l.capacity_kbps;
            l.set_state(LinkState::Dark, now);
        }
        (LinkState::Dark, true) => {
            l.capacity_kbps = (l.capacity_before_dark * 0.5).max(cfg.min_kbps);
            // The base-RTT window is kept: a lossy link flaps dark and back,
            // and a fresh window would learn its standing queue as the base.
            l.last_cut = Some(now);
            l.set_state(LinkState::Up, now);
        }
        _ => {}
    }
    if l.state != LinkState::Up {
        return;
    }

    if now.duration_since(l.state_since) < cfg.warmup {
        return;
    }
    let Some(rtt) = o.rtt_ms.filter(|r| *r > 0) else {
        return;
    };
    l.rtts.push_back((now, rtt));
    while l
        .rtts
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > cfg.base_rtt_window)
    {
        l.rtts.pop_front();
    }
    let base = f64::from(l.base_rtt_ms().unwrap_or(rtt));
    let queueing = f64::from(rtt) - base;
    let high = (0.5 * base).max(40.0);
    let low = (0.2 * base).max(15.0);
    let cooldown = Duration::from_millis((2 * rtt).max(300).into());
    if queueing > high {
        if l.last_cut.is_none_or(|t| now.duration_since(t) >= cooldown) {
            // Cut below what the link was carrying when its queue built up.
            l.capacity_kbps = (l.capacity_kbps.min(l.sent_kbps) * 0.8).max(cfg.min_kbps);
            l.last_cut = Some(now);
        }
    } else if queueing < low && l.sent_kbps > 0.85 * l.capacity_kbps {
        l.capacity_kbps = (l.capacity_kbps * 1.04 + 10.0).min(cfg.max_kbps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        cfg: &ControllerConfig,
        now: Instant,
        links: &mut [LinkControl],
        sent: &mut [u64],
        rates_kbps: &[f64],
        rtts: &[u32],
        heard: &[bool],
    ) -> Vec<Decision> {
        let obs: Vec<Observation> = (0..links.len())
            .map(|i| {
                sent[i] += (rates_kbps[i] * 1000.0 / 8.0 * cfg.tick.as_secs_f64()) as u64;
                Observation {
                    sent_bytes: sent[i],
                    last_heard: heard[i].then_some(now),
                    rtt_ms: Some(rtts[i]),
                }
            })
            .collect();
        tick(cfg, now, &mut links.iter_mut().collect::<Vec<_>>(), &obs)
    }

    #[test]
    fn overloaded_link_loses_weight() {
        let cfg = ControllerConfig::default();
        let t0 = Instant::now();
        let mut links: Vec<_> = (0..2).map(|_| LinkControl::new(t0, 1000.0)).collect();
        let mut sent = [0, 0];
        let mut now = t0;
        for i in 0..60 {
            now += cfg.tick;
            // After the warm-up, link 0 queues (RTT climbs), link 1 stays at its base RTT.
            let rtt0 = if i < 25 {
                40
            } else {
                40 + 20 * (i - 24).min(10)
            };
            step(
                &cfg,
                now,
                &mut links,
                &mut sent,
                &[1500.0, 1500.0],
                &[rtt0, 50],
                &[true, true],
            );
        }
        assert!(
            links[0].capacity_kbps() < 800.0,
            "{}",
            links[0].capacity_kbps()
        );
        assert!(
            links[1].capacity_kbps() > 1500.0,
            "{}",
            links[1].capacity_kbps()
        );
        assert!(links[0].weight() < links[1].weight());
        assert!(links[0].weight() >= 1);
    }

    #[test]
    fn early_rtt_samples_do_not_cut_capacity() {
        let cfg = ControllerConfig::default();
        let t0 = Instant::now();
        let mut links = vec![LinkControl::new(t0, 1000.0)];
        let mut sent = [0];
        // A bogus low RTT before the first echo, then the real 120 ms.
        for i in 0..40u32 {
            let rtt = if i < 4 { 10 } else { 120 };
            step(
                &cfg,
                t0 + cfg.tick * (i + 1),
                &mut links,
                &mut sent,
                &[500.0],
                &[rtt],
                &[true],
            );
        }
        assert_eq!(links[0].capacity_kbps(), 1000.0);
    }

    #[test]
    fn dark_link_goes_to_zero_and_comes_back() {
        let cfg = ControllerConfig::default();
        let t0 = Instant::now();
        let mut links: Vec<_> = (0..2).map(|_| LinkControl::new(t0, 2000.0)).collect();
        let mut sent = [0, 0];
        let mut now = t0;
        let mut last_heard = t0;
        for i in 0..60 {
            now += cfg.tick;
            let alive = !(20..40).contains(&i);
            if alive {
                last_heard = now;
            }
            let obs = [
                Observation {
                    sent_bytes: {
                        sent[0] += 25_000;
                        sent[0]
                    },
                    last_heard: Some(now),
                    rtt_ms: Some(50),
                },
                Observation {
                    sent_bytes: {
                        sent[1] += 25_000;
                        sent[1]
                    },
                    last_heard: Some(last_heard),
                    rtt_ms: Some(50),
                },
            ];
            let d = tick(&cfg, now, &mut links.iter_mut().collect::<Vec<_>>(), &obs);
            if i == 24 {
                assert_eq!((d[1].state, d[1].weight), (LinkState::Dark, 0));
                assert!(d[1].suppress_data);
            }
            if i == 41 {
                assert_eq!(d[1].state, LinkState::Up);
                assert!(d[1].weight >= 1);
            }
        }
        // Darkness was declared 300-400 ms after the last reply.
        assert!(usable_kbps(&cfg, &links) > 0.0);
    }

    #[test]
    fn a_flapping_link_keeps_its_base_rtt() {
        let cfg = ControllerConfig::default();
        let t0 = Instant::now();
        let mut links = vec![LinkControl::new(t0, 1000.0)];
        let mut sent = [0];
        let mut now = t0;
        // 2 s at its true 100 ms, then a standing 400 ms queue with short dark spells.
        for i in 0..100u32 {
            now += cfg.tick;
            let rtt = if i < 20 { 100 } else { 400 };
            let heard = i < 20 || i % 10 > 3;
            step(
                &cfg,
                now,
                &mut links,
                &mut sent,
                &[1000.0],
                &[rtt],
                &[heard],
            );
        }
        assert_eq!(links[0].base_rtt_ms(), Some(100));
        assert_eq!(links[0].capacity_kbps(), cfg.min_kbps);
    }

    #[test]
    fn probing_link_gets_token_weight_and_hysteresis_holds() {
        let cfg = ControllerConfig::default();
        let t0 = Instant::now();
        let mut links = vec![LinkControl::new(t0, 1000.0), LinkControl::new(t0, 1000.0)];
        let mut sent = [0, 0];
        let d = step(
            &cfg,
            t0 + cfg.tick,
            &mut links,
            &mut sent,
            &[0.0, 0.0],
            &[40, 40],
            &[true, false],
        );
        assert_eq!((d[0].state, d[0].weight), (LinkState::Up, cfg.weight_scale));
        assert_eq!((d[1].state, d[1].weight), (LinkState::Probing, 1));
        // No load: estimates and weights stay put, no needless weight_set.
        let d = step(
            &cfg,
            t0 + cfg.tick * 2,
            &mut links,
            &mut sent,
            &[0.0, 0.0],
            &[40, 40],
            &[true, false],
        );
        assert!(!d[0].weight_changed && !d[1].weight_changed);
    }
}

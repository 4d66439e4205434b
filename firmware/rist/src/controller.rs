//! The link controller: turns what each link shows (RTT, whether anything comes
//! back, what we pushed into it) into librist weights and the bond's capacity.
//!
//! Per link it keeps a capacity estimate, adapted like a delay-based congestion
//! controller: queueing delay (RTT above the link's recent minimum) beyond a
//! threshold cuts the estimate, though not below what the link delivers (what
//! it was sent less what the receiver NACKed); a quiet queue while the link
//! carries `probe_load` of its estimate grows it. Weights are proportional to
//! the estimates, so each link carries what it can. A link from which nothing
//! came back for max(`dark_after`, 2 x its base RTT) is parked at weight 0
//! which, in librist, means "send copies here": it never holds the only copy
//! of a packet. Its relay drops those copies (new media) and passes control
//! packets, whose answers show when it heals; the media it sent in its last
//! round trip is sent again on the live links at once ([`Decision::rescue_since`]).
//! A healed link waits out a hold-down that doubles while it flaps, then
//! comes back at half its old estimate and grows from there. The controller
//! also picks the link retransmissions leave by ([`retransmit_link`]) and the
//! encoder's bit rate ([`usable_kbps`], [`video_kbps`]): one headroom, here.
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
    /// Silence after which a link counts as dark: this, or twice the link's
    /// RTT if that is longer. librist's receiver answers every 100 ms or so
    /// (RTCP and echo replies), so much less would see darkness in jitter.
    pub dark_after: Duration,
    /// Nor longer than this, however slow the link.
    pub dark_after_max: Duration,
    /// A dark link that answers again is taken back after it has answered
    /// this long without a break...
    pub hold_down: Duration,
    /// ...twice as long each time it went dark again within `flap_window` of
    /// being taken back, up to this: a flapping link is not re-admitted on
    /// every blip.
    pub hold_down_max: Duration,
    /// See `hold_down_max`; a link up this long starts from `hold_down` again.
    pub flap_window: Duration,
    /// First estimate of a link's capacity when its spec gives none.
    pub initial_kbps: f64,
    /// The estimate never falls below this (so a link keeps being measured).
    pub min_kbps: f64,
    /// Nor rises above this.
    pub max_kbps: f64,
    /// Share of the summed estimates offered to the encoder: the one
    /// headroom of the whole chain (room for retransmissions and for the
    /// estimates' error). [`video_kbps`] takes only audio and mux overhead off.
    pub headroom: f64,
    /// A link's estimate grows while its queue is quiet and it carries at
    /// least this share of the estimate. Below `headroom`: a bond carrying
    /// what the encoder makes at `headroom` must still probe upward.
    pub probe_load: f64,
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
            tick: Duration::from_millis(50),
            dark_after: Duration::from_millis(150),
            dark_after_max: Duration::from_millis(1000),
            hold_down: Duration::from_millis(500),
            hold_down_max: Duration::from_secs(2),
            flap_window: Duration::from_secs(10),
            initial_kbps: 1000.0,
            min_kbps: 100.0,
            max_kbps: 200_000.0,
            headroom: 0.8,
            probe_load: 0.7,
            weight_hysteresis: 0.15,
            base_rtt_window: Duration::from_secs(30),
            weight_scale: 20,
            warmup: Duration::from_millis(500),
        }
    }
}

/// What the controller sees of a link at one tick.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation {
    /// Bytes pushed into the link since it was added.
    pub sent_bytes: u64,
    /// When anything last came back over the link.
    pub last_heard: Option<Instant>,
    /// librist's current RTT for the link.
    pub rtt_ms: Option<u32>,
    /// New media packets the link carried since it was added...
    pub media_packets: u64,
    /// ...and how many of them the receiver NACKed.
    pub nacked_packets: u64,
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
    /// The link went dark at this tick: media it sent since this instant may
    /// not have arrived and should be sent again on live links now.
    pub rescue_since: Option<Instant>,
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
    /// (when, media packets, NACKed) over the last `LOSS_WINDOW`.
    counts: VecDeque<(Instant, u64, u64)>,
    last_cut: Option<Instant>,
    /// Since when the link has answered without a break (while dark: how
    /// long it has been back).
    heard_since: Option<Instant>,
    /// Current hold-down, and when the link was last taken back.
    hold_down: Option<Duration>,
    readmitted_at: Option<Instant>,
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
            counts: VecDeque::new(),
            last_cut: None,
            heard_since: None,
            hold_down: None,
            readmitted_at: None,
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

    /// Share of the media the link carried over the last second that the
    /// receiver NACKed, 0..1.
    pub fn loss(&self) -> f64 {
        match (self.counts.front(), self.counts.back()) {
            (Some(a), Some(b)) if b.1 > a.1 => {
                (b.2.saturating_sub(a.2) as f64 / (b.1 - a.1) as f64).min(1.0)
            }
            _ => 0.0,
        }
    }

    /// The latest RTT sample.
    pub fn rtt_ms(&self) -> Option<u32> {
        self.rtts.back().map(|r| r.1)
    }

    /// Silence after which this link counts as dark: twice its unloaded RTT
    /// (a queue on the way up does not space the receiver's answers out).
    pub fn dark_after(&self, cfg: &ControllerConfig) -> Duration {
        let rtt = Duration::from_millis(self.base_rtt_ms().unwrap_or(0).into());
        (2 * rtt).clamp(cfg.dark_after, cfg.dark_after_max)
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

/// Window of the loss figure the controller reads.
const LOSS_WINDOW: Duration = Duration::from_secs(1);

/// Recomputes every link; returns a decision per link, in order.
pub fn tick(
    cfg: &ControllerConfig,
    now: Instant,
    links: &mut [&mut LinkControl],
    obs: &[Observation],
) -> Vec<Decision> {
    let rescues: Vec<Option<Instant>> = links
        .iter_mut()
        .zip(obs)
        .map(|(l, o)| update_link(cfg, now, l, o))
        .collect();
    let max_cap = links
        .iter()
        .filter(|l| l.state == LinkState::Up)
        .map(|l| l.capacity_kbps)
        .fold(0.0_f64, f64::max);
    links
        .iter_mut()
        .zip(rescues)
        .map(|(l, rescue_since)| {
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
                rescue_since,
            }
        })
        .collect()
}

/// MPEG-TS and RIST overhead over the encoders' bit rates (PES and TS
/// headers, RTP and GRE; about 5 % at these rates).
pub const MUX_OVERHEAD: f64 = 0.05;

/// The video encoder's bit rate for a bond whose usable capacity is
/// `usable_kbps` (see [`usable_kbps`]), beside `audio_kbps` of audio.
pub fn video_kbps(usable_kbps: f64, audio_kbps: f64) -> f64 {
    (usable_kbps * (1.0 - MUX_OVERHEAD) - audio_kbps).max(0.0)
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

/// Updates one link; returns the rescue instant if it went dark at this tick.
/// The link retransmissions should leave by: of the up links with room
/// (sending below 90 % of their estimate), the one with the lowest RTT; if
/// none has room, the one with the most. `None` while no link is up.
pub fn retransmit_link<'a>(links: impl IntoIterator<Item = &'a LinkControl>) -> Option<usize> {
    let up: Vec<(usize, &LinkControl)> = links
        .into_iter()
        .enumerate()
        .filter(|(_, l)| l.state == LinkState::Up)
        .collect();
    let room = |l: &LinkControl| l.capacity_kbps - l.sent_kbps;
    up.iter()
        .filter(|(_, l)| l.sent_kbps < 0.9 * l.capacity_kbps)
        .min_by_key(|(_, l)| l.rtt_ms().unwrap_or(u32::MAX))
        .or_else(|| up.iter().max_by(|a, b| room(a.1).total_cmp(&room(b.1))))
        .map(|(i, _)| *i)
}

fn update_link(
    cfg: &ControllerConfig,
    now: Instant,
    l: &mut LinkControl,
    o: &Observation,
) -> Option<Instant> {
    if l.state == LinkState::Removed {
        return None;
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
    l.counts.push_back((now, o.media_packets, o.nacked_packets));
    while l
        .counts
        .front()
        .is_some_and(|(t, ..)| now.duration_since(*t) > LOSS_WINDOW)
    {
        l.counts.pop_front();
    }

    let dark_after = l.dark_after(cfg);
    let heard_recently = o
        .last_heard
        .is_some_and(|t| now.saturating_duration_since(t) < dark_after);
    if !heard_recently {
        l.heard_since = None;
    } else if l.heard_since.is_none() {
        l.heard_since = o.last_heard;
    }
    let mut rescue = None;
    match (l.state, heard_recently) {
        (LinkState::Probing, true) => l.set_state(LinkState::Up, now),
        (LinkState::Up, false) => {
            l.capacity_before_dark = l.capacity_kbps;
            // A link that dies soon after it was taken back is flapping:
            // it waits twice as long before the next time.
            let flapped = l
                .readmitted_at
                .is_some_and(|t| now.duration_since(t) < cfg.flap_window);
            l.hold_down = Some(match l.hold_down {
                Some(h) if flapped => (h * 2).min(cfg.hold_down_max),
                _ => cfg.hold_down,
            });
            l.set_state(LinkState::Dark, now);
            // What it sent since the last answer's round trip began may be lost.
            let rtt = Duration::from_millis(l.rtt_ms().unwrap_or(0).into());
            rescue = o.last_heard.map(|t| t.checked_sub(rtt).unwrap_or(t));
        }
        (LinkState::Dark, true)
            if l.heard_since
                .is_some_and(|t| now.duration_since(t) >= l.hold_down.unwrap_or_default()) =>
        {
            l.capacity_kbps = (l.capacity_before_dark * 0.5).max(cfg.min_kbps);
            // The base-RTT window is kept: a lossy link flaps dark and back,
            // and a fresh window would learn its standing queue as the base.
            l.last_cut = Some(now);
            l.readmitted_at = Some(now);
            l.set_state(LinkState::Up, now);
        }
        _ => {}
    }
    if l.state != LinkState::Up {
        return rescue;
    }

    if now.duration_since(l.state_since) < cfg.warmup {
        return None;
    }
    let rtt = o.rtt_ms.filter(|r| *r > 0)?;
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
            // Cut below what the link was carrying when its queue built up,
            // but not below what it delivers (what it is sent minus what the
            // receiver NACKed): when more is offered than all links carry,
            // every queue stands, and cuts alone would sink all estimates to
            // the floor together, and the weights (their ratios) with them.
            let delivered = l.sent_kbps * (1.0 - l.loss());
            let cut = l.capacity_kbps.min(l.sent_kbps) * 0.8;
            l.capacity_kbps = cut.max(delivered * 0.9).max(cfg.min_kbps);
            l.last_cut = Some(now);
        }
    } else if queueing < low && l.sent_kbps > cfg.probe_load * l.capacity_kbps {
        // 4 % and 10 kbit/s per 100 ms, whatever the tick.
        let ticks = cfg.tick.as_secs_f64() / 0.1;
        l.capacity_kbps = (l.capacity_kbps * 1.04_f64.powf(ticks) + 10.0 * ticks).min(cfg.max_kbps);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults at a 100 ms tick (the tests count ticks).
    fn cfg() -> ControllerConfig {
        ControllerConfig {
            tick: Duration::from_millis(100),
            ..Default::default()
        }
    }

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
                    ..Default::default()
                }
            })
            .collect();
        tick(cfg, now, &mut links.iter_mut().collect::<Vec<_>>(), &obs)
    }

    #[test]
    fn overloaded_link_loses_weight() {
        let cfg = cfg();
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
        // Cut below what it was sent (it delivers less: its queue grows),
        // not below what it delivers (no NACKs here: all of it).
        assert!(
            links[0].capacity_kbps() <= 0.9 * 1500.0,
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
        let cfg = cfg();
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
        let cfg = cfg();
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
                    ..Default::default()
                },
                Observation {
                    sent_bytes: {
                        sent[1] += 25_000;
                        sent[1]
                    },
                    last_heard: Some(last_heard),
                    rtt_ms: Some(50),
                    ..Default::default()
                },
            ];
            let d = tick(&cfg, now, &mut links.iter_mut().collect::<Vec<_>>(), &obs);
            if i == 24 {
                assert_eq!((d[1].state, d[1].weight), (LinkState::Dark, 0));
                assert!(d[1].suppress_data);
            }
            // Declared dark 200 ms after the last reply (150 ms, at a 100 ms
            // tick), and only that tick asks for a rescue, from one RTT
            // before the last reply.
            assert_eq!(
                d[1].state == LinkState::Dark,
                (21..45).contains(&i),
                "tick {i}"
            );
            let rescue = (i == 21).then(|| last_heard - Duration::from_millis(50));
            assert_eq!(d[1].rescue_since, rescue, "tick {i}");
            if i == 43 {
                // Heard again, but held down for 500 ms.
                assert_eq!(d[1].state, LinkState::Dark);
            }
            if i == 45 {
                assert_eq!(d[1].state, LinkState::Up);
                assert!(d[1].weight >= 1);
            }
        }
        assert!(usable_kbps(&cfg, &links) > 0.0);
    }

    #[test]
    fn a_flapping_link_keeps_its_base_rtt() {
        let cfg = cfg();
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
        // It went dark twice within seconds: held down ever longer, it is not
        // taken back while it keeps dropping out.
        assert_eq!(links[0].state(), LinkState::Dark);
    }

    #[test]
    fn probing_link_gets_token_weight_and_hysteresis_holds() {
        let cfg = cfg();
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

    #[test]
    fn dark_after_twice_the_base_rtt_and_never_under_150_ms() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut links = vec![LinkControl::new(t0, 1000.0), LinkControl::new(t0, 1000.0)];
        let mut sent = [0, 0];
        for i in 1..=20u32 {
            step(
                &cfg,
                t0 + cfg.tick * i,
                &mut links,
                &mut sent,
                &[500.0, 500.0],
                &[40, 300],
                &[true, true],
            );
        }
        assert_eq!(links[0].dark_after(&cfg), Duration::from_millis(150));
        assert_eq!(links[1].dark_after(&cfg), Duration::from_millis(600));
    }

    #[test]
    fn a_flapping_link_is_held_down_longer_each_time_up_to_the_cap() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut links = vec![LinkControl::new(t0, 1000.0)];
        let mut sent = [0];
        let mut up_ticks = Vec::new();
        // Up 1 s, down 1 s, for 12 s; then up for good.
        for i in 1..=200u32 {
            let heard = !(10..130).contains(&i) || (i / 10) % 2 == 0;
            let d = step(
                &cfg,
                t0 + cfg.tick * i,
                &mut links,
                &mut sent,
                &[500.0],
                &[50],
                &[heard],
            );
            if d[0].state == LinkState::Up {
                up_ticks.push(i);
            }
        }
        // Taken back after the first outage (500 ms hold), not on every blip
        // after that (1 s, then 2 s: longer than the link stays up).
        let flapping_up = up_ticks.iter().filter(|t| (20..130).contains(*t)).count();
        assert!((1..=10).contains(&flapping_up), "{up_ticks:?}");
        // Once it stays up, it carries again within 2 s (+ the dark threshold).
        assert!(up_ticks.contains(&152), "{up_ticks:?}");
    }

    #[test]
    fn retransmissions_go_to_the_up_link_with_room_and_the_lowest_rtt() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut links: Vec<_> = (0..3).map(|_| LinkControl::new(t0, 2000.0)).collect();
        let mut sent = [0, 0, 0];
        for i in 1..=10u32 {
            // Both up links have room, link 1 the shorter RTT; link 2,
            // shorter still, is dark.
            step(
                &cfg,
                t0 + cfg.tick * i,
                &mut links,
                &mut sent,
                &[500.0, 500.0, 0.0],
                &[70, 40, 20],
                &[true, true, i < 3],
            );
        }
        assert_eq!(links[2].state(), LinkState::Dark);
        assert_eq!(retransmit_link(&links), Some(1));
        // Nobody has room (a standing queue, neither cut nor grown): the
        // one with the most.
        let mut full: Vec<_> = (0..2).map(|_| LinkControl::new(t0, 1000.0)).collect();
        let mut sent = [0, 0];
        for i in 1..=20u32 {
            let rtts = if i <= 8 { [40, 70] } else { [70, 100] };
            step(
                &cfg,
                t0 + cfg.tick * i,
                &mut full,
                &mut sent,
                &[1100.0, 1050.0],
                &rtts,
                &[true, true],
            );
        }
        let v: Vec<_> = full
            .iter()
            .map(|l| (l.capacity_kbps(), l.sent_kbps(), l.rtt_ms()))
            .collect();
        assert_eq!(retransmit_link(&full), Some(1), "{v:?}");
        assert_eq!(
            retransmit_link(&[LinkControl::new(t0, 1000.0)]),
            None,
            "none up"
        );
    }

    #[test]
    fn the_encoder_gets_the_usable_capacity_less_audio_and_overhead() {
        assert_eq!(
            video_kbps(1000.0, 128.0),
            1000.0 * (1.0 - MUX_OVERHEAD) - 128.0
        );
        assert_eq!(video_kbps(100.0, 128.0), 0.0);
    }
}

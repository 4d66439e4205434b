//! Bonding benchmark: our [`BondedSender`] against librist's stock `ristsender`
//! (main profile, equal static weights) over the same emulated links.
//!
//! Every run starts a fresh `strata-linksim` emulator with the same seed between
//! the sender under test and *our* [`BondedReceiver`], so only the sender
//! differs. The input is a real H.264/AAC MPEG-TS made once with ffmpeg at a
//! mux rate equal to the offered rate, looped and paced with [`Pacer`] in
//! 1316-byte datagrams. Neither sender encrypts: `ristsender` only takes its
//! secret on the command line, where it must not go, so ours runs without a
//! PSK too and the comparison stays fair. Recovery buffer: 1000 ms.
//!
//! Scenarios (links as rate kbit/s, RTT ms, loss %):
//! - (a) three links 1/2/4 Mbit/s, RTT 40/70/120 ms, loss 0.5/1/2 %, 5 Mbit/s offered;
//! - (b) the same links at 3 Mbit/s with link 3 dark from t = 10 s to t = 20 s
//!   (linksim clock), recovery buffer 1000 ms; (b500) the same at 500 ms;
//! - (f) as (b), but link 3 flaps from t = 10 s to t = 20 s: down 1 s, up 1 s;
//! - (h) capacity that moves: a steady 2 Mbit/s link beside a 4 Mbit/s link
//!   whose rate halves for 2 s every 4 s (a cell handover), 2.5 Mbit/s offered;
//! - (c) four links: 2/4/2 Mbit/s (RTT 40/70/100 ms, loss 0.5/1/1 %) and a
//!   100 kbit/s, 20 %-loss, 100 ms-RTT link, 6 Mbit/s offered, and (c0) the
//!   three good links alone, for the cost of the bad link,
//!   1 - delivered(c) / delivered(c0).
//!
//! Unrecovered loss is shown twice: librist's `lost` counter, read just before
//! the output runs dry (when its queue empties at the end of a stream, librist
//! 0.2.7 counts a whole ring of ~65k "holes"), and TS bytes sent minus output.
//!
//! The outage times of (b) come from the emulator's uplink counters sampled
//! every 50 ms. "Out" is when the dead link's input rate drops, for good, below
//! 10 % of its rate over t = 5..10 s (100 ms windows). It counts bytes, not
//! packets: librist keeps sending a keepalive every 100 ms to a dead peer,
//! which in packets is about 10 % of a link's data share. "Back" is when the
//! link's delivered rate over the last 100 ms exceeds 50 % of its pre-outage rate.
//!
//! Run with `scripts/bench-bonding`; the markdown table goes to stdout,
//! progress to stderr, logs (with our controller's view every second and each
//! link's counters) to `$BENCH_DIR/bench.log` (default `target/bench-bonding`).
//! `BENCH_SECS` (default 30, at least 25) sets the stream length per run;
//! `BENCH_ONLY=a,c` runs some scenarios only.

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strata_linksim::{LinkSim, SimConfig};
use strata_rist::ts::{DATAGRAM_PAYLOAD, Pacer};
use strata_rist::{
    BondStats, BondedReceiver, BondedSender, LinkSpec, ReceiverConfig, SenderConfig,
};

const SEED: u64 = 42;
/// How often the emulator's counters are sampled.
const SAMPLE: Duration = Duration::from_millis(50);
/// Rate window of the outage measurements, s.
const WINDOW: f64 = 0.1;
/// Time after the last input for the receiver to output the tail.
const DRAIN: Duration = Duration::from_millis(2500);

/// A change on a link's timeline (linksim clock, s).
#[derive(Clone, Copy)]
enum Event {
    Up(bool),
    Rate(u32),
}

/// A scenario of the benchmark.
struct Scenario {
    key: &'static str,
    offered_kbps: f64,
    buffer_ms: u64,
    /// Links: rate kbit/s, RTT ms, loss %.
    links: Vec<(u32, u32, f64)>,
    /// Timeline: link index, time s, change.
    events: Vec<(usize, f64, Event)>,
    /// A link that is dark between two times, for the out/back figures.
    outage: Option<(usize, f64, f64)>,
}

impl Scenario {
    fn new(key: &'static str, offered_kbps: f64, links: Vec<(u32, u32, f64)>) -> Self {
        Self {
            key,
            offered_kbps,
            buffer_ms: 1000,
            links,
            events: Vec::new(),
            outage: None,
        }
    }

    /// Link `l` dark from `from` to `to`.
    fn dark(mut self, l: usize, from: f64, to: f64) -> Self {
        self.events.push((l, from, Event::Up(false)));
        self.events.push((l, to, Event::Up(true)));
        self.outage = Some((l, from, to));
        self
    }

    fn buffer(mut self, ms: u64) -> Self {
        self.buffer_ms = ms;
        self
    }

    fn event(mut self, l: usize, at: f64, e: Event) -> Self {
        self.events.push((l, at, e));
        self
    }
}

/// Every scenario, in the table's order.
fn scenarios() -> Vec<Scenario> {
    let three = vec![(1000, 40, 0.5), (2000, 70, 1.0), (4000, 120, 2.0)];
    let good = vec![(2000, 40, 0.5), (4000, 70, 1.0), (2000, 100, 1.0)];
    let mut flap = Scenario::new("f", 3000.0, three.clone());
    for k in 0..5 {
        let t = 10.0 + 2.0 * f64::from(k);
        flap = flap
            .event(2, t, Event::Up(false))
            .event(2, t + 1.0, Event::Up(true));
    }
    let mut handover = Scenario::new("h", 2500.0, vec![(2000, 50, 0.5), (4000, 80, 1.0)]);
    for k in 0..6 {
        let t = 5.0 + 4.0 * f64::from(k);
        handover = handover
            .event(1, t, Event::Rate(2000))
            .event(1, t + 2.0, Event::Rate(4000));
    }
    vec![
        Scenario::new("a", 5000.0, three.clone()),
        Scenario::new("b", 3000.0, three.clone()).dark(2, 10.0, 20.0),
        Scenario::new("b500", 3000.0, three.clone())
            .dark(2, 10.0, 20.0)
            .buffer(500),
        flap,
        handover,
        Scenario::new("c", 6000.0, [good.clone(), vec![(100, 100, 20.0)]].concat()),
        Scenario::new("c0", 6000.0, good),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Strata,
    Rist,
}

/// The sender under test, while it runs.
enum Tx {
    Strata(Box<BondedSender>),
    /// `ristsender`, the socket feeding it and its input port.
    Rist(Child, UdpSocket, u16),
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Tx::Rist(child, ..) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The emulator's uplink counters at one instant: per link [bytes_in, bytes_delivered].
struct Sample {
    t: f64,
    links: Vec<[u64; 2]>,
}

/// One run's inputs.
struct Job<'a> {
    sc: &'a Scenario,
    ts: &'a [u8],
    secs: f64,
    dir: &'a Path,
}

/// What one run measured.
struct Outcome {
    offered_kbps: f64,
    delivered_kbps: f64,
    lost: u64,
    recovered: u64,
    missing_bytes: i64,
    gap_ms: f64,
    share: Vec<f64>,
    queue_drops: Vec<u64>,
    /// Time to drop and to re-adopt the dead link, ms (`None`: never).
    out_back: Option<(Option<f64>, Option<f64>)>,
    /// Our sender's view at the end (`None` for ristsender).
    bond: Option<BondStats>,
}

fn main() -> Result<()> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    let dir = PathBuf::from(env("BENCH_DIR", "target/bench-bonding"));
    std::fs::create_dir_all(&dir)?;
    let filter = "warn,bench_bonding=info,strata_rist=info,librist=info,strata_linksim=info";
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(env("RUST_LOG", filter)))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(File::create(dir.join("bench.log"))?))
        .init();
    let secs: f64 = env("BENCH_SECS", "30").parse()?;
    if secs < 25.0 {
        bail!("BENCH_SECS must be at least 25 (scenario b's outage ends at t = 20 s)");
    }
    let all = scenarios();
    let keys: Vec<&str> = all.iter().map(|s| s.key).collect();
    let only = env("BENCH_ONLY", &keys.join(","));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let began = Instant::now();
    let mut results = HashMap::new();
    for sc in all.iter().filter(|s| only.split(',').any(|k| k == s.key)) {
        let ts = input_ts(&dir, sc.offered_kbps)?;
        for who in [Who::Strata, Who::Rist] {
            let t = Instant::now();
            tracing::info!("=== scenario {} with {}", sc.key, name(who));
            let job = Job {
                sc,
                ts: &ts,
                secs,
                dir: &dir,
            };
            let o = run(&rt, &job, who).with_context(|| format!("scenario {}", sc.key))?;
            let (k, d, m, g) = (sc.key, o.delivered_kbps, o.missing_bytes, o.gap_ms);
            let took = t.elapsed().as_secs_f64();
            eprintln!(
                "[{k} {}] delivered {d:.0} kbit/s, missing {m} B, gap {g:.0} ms ({took:.0} s)",
                name(who)
            );
            results.insert((sc.key, who), o);
        }
    }
    println!("{}", table(&all, &results, secs));
    println!("Total run time: {:.0} s.", began.elapsed().as_secs_f64());
    Ok(())
}

fn name(who: Who) -> &'static str {
    match who {
        Who::Strata => "strata",
        Who::Rist => "ristsender",
    }
}

/// A 10 s H.264/AAC TS at mux rate `kbps`, made once and cached; cut to whole datagrams.
fn input_ts(dir: &Path, kbps: f64) -> Result<Vec<u8>> {
    let path = dir.join(format!("input-{kbps:.0}k.ts"));
    if !path.exists() {
        let v = kbps * 0.7;
        let args = format!(
            "-hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
             -f lavfi -i sine=frequency=1000:sample_rate=48000 -t 10 -c:v libx264 -preset ultrafast \
             -g 30 -b:v {v:.0}k -maxrate {v:.0}k -bufsize {v:.0}k -c:a aac -b:a 96k \
             -f mpegts -muxrate {kbps:.0}k"
        );
        let tmp = path.with_extension("tmp.ts");
        let status = Command::new("ffmpeg")
            .args(args.split_whitespace())
            .arg(&tmp)
            .status()
            .context("cannot run ffmpeg (scripts/setup installs it)")?;
        if !status.success() {
            bail!("ffmpeg failed ({status})");
        }
        std::fs::rename(&tmp, &path)?;
    }
    let mut ts = std::fs::read(&path)?;
    ts.truncate(ts.len() / DATAGRAM_PAYLOAD * DATAGRAM_PAYLOAD);
    if ts.is_empty() || !strata_rist::ts::is_ts(&ts) {
        bail!("{} is not MPEG-TS; delete it to regenerate", path.display());
    }
    Ok(ts)
}

/// The emulator's configuration: links l1.. toward the receiver's `ports`.
fn sim_toml(sc: &Scenario, ports: &[u16]) -> String {
    let mut t = format!("seed = {SEED}\n");
    for (i, ((rate, rtt, loss), port)) in sc.links.iter().zip(ports).enumerate() {
        t += &format!(
            "[[link]]\nname = \"l{}\"\nlisten = \"127.0.0.1:0\"\ntarget = \"127.0.0.1:{port}\"\n\
             rate_kbps = {rate}\ndelay_ms = {}\nloss_percent = {loss}\n",
            i + 1,
            f64::from(*rtt) / 2.0
        );
        for (_, at, e) in sc.events.iter().filter(|e| e.0 == i) {
            t += &match e {
                Event::Up(up) => format!("[[link.event]]\nat_s = {at}\nup = {up}\n"),
                Event::Rate(r) => format!("[[link.event]]\nat_s = {at}\nrate_kbps = {r}\n"),
            };
        }
    }
    t
}

/// One scenario with one sender, from a fresh emulator to the receiver's final stats.
fn run(rt: &tokio::runtime::Runtime, job: &Job, who: Who) -> Result<Outcome> {
    let (sc, n) = (job.sc, job.sc.links.len());
    let rx = BondedReceiver::new(ReceiverConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0)); n],
        psk: None,
        buffer_ms: sc.buffer_ms as u32,
    })?;
    let cfg = SimConfig::from_toml(&sim_toml(sc, &rx.ports()))?;
    let sim = rt.block_on(LinkSim::start(cfg))?;
    let remotes = (1..=n).map(|i| sim.listen_addr(&format!("l{i}")).context("no link"));
    let remotes = remotes.collect::<Result<Vec<_>>>()?;
    let stop = AtomicBool::new(false);
    let (driven, read, samples) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_output(&rx, &sim, &stop));
        let sampler = s.spawn(|| sample(&sim, &stop));
        let driven = drive(job, who, &sim, &rx, &remotes);
        stop.store(true, Ordering::Relaxed);
        (
            driven,
            reader.join().expect("reader thread"),
            sampler.join().expect("sampler thread"),
        )
    });
    let ((sent, stream_secs, lost, bond), (received, gap_ms)) = (driven?, read?);
    let links = sim.stats();
    tracing::info!("end: {links:?}");
    let total: u64 = links.iter().map(|l| l.uplink.bytes_delivered).sum();
    let kbps = |bytes: u64| bytes as f64 * 8.0 / stream_secs / 1000.0;
    Ok(Outcome {
        offered_kbps: kbps(sent),
        delivered_kbps: kbps(received),
        lost,
        recovered: rx.stats().recovered,
        missing_bytes: sent as i64 - received as i64,
        gap_ms,
        share: links
            .iter()
            .map(|l| l.uplink.bytes_delivered as f64 / total.max(1) as f64)
            .collect(),
        queue_drops: links.iter().map(|l| l.uplink.dropped_queue).collect(),
        out_back: sc
            .outage
            .map(|(l, from, to)| outage_times(&samples, l, from, to)),
        bond,
    })
}

/// Starts the sender, waits until the receiver answered on every link, streams
/// `ts` paced at the offered rate for `secs`, and waits for the tail to come
/// out. Returns bytes sent, seconds streamed, librist's `lost` as it was
/// just before the output ran dry (see the crate docs), and our sender's stats.
fn drive(
    job: &Job,
    who: Who,
    sim: &LinkSim,
    rx: &BondedReceiver,
    remotes: &[SocketAddr],
) -> Result<(u64, f64, u64, Option<BondStats>)> {
    let (sc, ts) = (job.sc, job.ts);
    let mut tx = match who {
        Who::Strata => {
            let links = remotes.iter().enumerate();
            let links = links
                .map(|(i, r)| LinkSpec::new(format!("l{}", i + 1), *r))
                .collect();
            let cfg = SenderConfig {
                psk: None,
                buffer_ms: sc.buffer_ms as u32,
                ..Default::default()
            };
            Tx::Strata(Box::new(BondedSender::new(cfg, links)?))
        }
        Who::Rist => {
            let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
            let peers = remotes.iter().enumerate();
            let peers = peers.map(|(i, r)| format!("rist://{r}?weight=5&cname=l{}", i + 1));
            let args = format!(
                "-p 1 -b {} -S 0 -v 4 -i udp://@127.0.0.1:{port} -o {}",
                sc.buffer_ms,
                peers.collect::<Vec<_>>().join(",")
            );
            let child = Command::new("ristsender")
                .args(args.split_whitespace())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(
                    job.dir.join(format!("ristsender-{}.log", sc.key)),
                )?)
                .spawn()
                .context("cannot start ristsender (scripts/setup installs rist-tools)")?;
            Tx::Rist(child, UdpSocket::bind("127.0.0.1:0")?, port)
        }
    };
    let t = Instant::now();
    let connected = |tx: &Tx| !matches!(tx, Tx::Strata(s) if !s.is_connected());
    while !(connected(&tx) && sim.stats().iter().all(|l| l.downlink.delivered > 0)) {
        if t.elapsed() > Duration::from_secs(5) {
            eprintln!("warning: not every link answered within 5 s; starting anyway");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (mut pacer, start, mut next_log) =
        (Pacer::new(sc.offered_kbps), Instant::now(), Instant::now());
    let (mut at, mut sent) = (0, 0u64);
    while start.elapsed().as_secs_f64() < job.secs {
        if at == ts.len() {
            at = 0;
        }
        let d = &ts[at..at + DATAGRAM_PAYLOAD];
        at += DATAGRAM_PAYLOAD;
        pacer.wait(d.len());
        match &mut tx {
            Tx::Strata(s) => {
                s.send(d)?;
                if Instant::now() >= next_log {
                    next_log += Duration::from_secs(1);
                    log_bond(sim, &s.stats());
                }
            }
            Tx::Rist(_, sock, port) => _ = sock.send_to(d, ("127.0.0.1", *port))?,
        }
        sent += d.len() as u64;
    }
    let streamed = start.elapsed().as_secs_f64();
    if let Tx::Strata(s) = &mut tx {
        s.flush()?;
    }
    let before = Duration::from_millis(sc.buffer_ms - 150);
    std::thread::sleep(before);
    let lost = rx.stats().lost;
    std::thread::sleep(DRAIN - before);
    let bond = match &tx {
        Tx::Strata(s) => Some(s.stats()),
        Tx::Rist(..) => None,
    };
    if let Some(b) = &bond {
        log_bond(sim, b);
        tracing::info!("end: {b:?}");
    }
    Ok((sent, streamed, lost, bond))
}

/// One line of our controller's view, for the log.
fn log_bond(sim: &LinkSim, s: &BondStats) {
    let links: Vec<String> = s
        .links
        .iter()
        .map(|l| {
            let (rtt, base) = (l.rtt_ms.unwrap_or(0), l.base_rtt_ms.unwrap_or(0));
            let (n, st, w, c, sent) = (&l.name, l.state, l.weight, l.capacity_kbps, l.sent_kbps);
            format!("{n} {st:?} w{w} cap {c:.0} sent {sent:.0} rtt {rtt}/{base}")
        })
        .collect();
    let t = sim.started().elapsed().as_secs_f64();
    let (usable, rtx, links) = (s.usable_kbps, s.retransmitted_packets, links.join(" | "));
    tracing::info!("t={t:.1} usable {usable:.0} rtx {rtx} | {links}");
}

/// Reads the receiver's output until `stop`; returns TS bytes and the longest gap in ms.
fn read_output(rx: &BondedReceiver, sim: &LinkSim, stop: &AtomicBool) -> Result<(u64, f64)> {
    let (mut bytes, mut gap, mut last) = (0u64, Duration::ZERO, None::<Instant>);
    while !stop.load(Ordering::Relaxed) {
        if let Some(d) = rx.read(Duration::from_millis(50))? {
            let now = Instant::now();
            if let Some(l) = last
                && now - l > gap
            {
                gap = now - l;
                let at = (now - sim.started()).as_secs_f64();
                tracing::info!("longest output gap so far: {gap:?}, ending at t={at:.2} s");
            }
            last = Some(now);
            bytes += d.len() as u64;
        }
    }
    Ok((bytes, gap.as_secs_f64() * 1000.0))
}

/// Samples the emulator's uplink counters every [`SAMPLE`] until `stop`.
fn sample(sim: &LinkSim, stop: &AtomicBool) -> Vec<Sample> {
    let mut v = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let links = sim
            .stats()
            .iter()
            .map(|l| [l.uplink.bytes_in, l.uplink.bytes_delivered])
            .collect();
        v.push(Sample {
            t: sim.started().elapsed().as_secs_f64(),
            links,
        });
        next += SAMPLE;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    v
}

/// Rate (bytes/s) of counter `k` (0 input, 1 delivered) of link `l` between
/// the first sample at or after `t0` and the last at or before `t1`.
fn rate(s: &[Sample], l: usize, k: usize, t0: f64, t1: f64) -> f64 {
    match (
        s.iter().find(|x| x.t >= t0),
        s.iter().rev().find(|x| x.t <= t1),
    ) {
        (Some(a), Some(b)) if b.t > a.t => {
            b.links[l][k].saturating_sub(a.links[l][k]) as f64 / (b.t - a.t)
        }
        _ => 0.0,
    }
}

/// Link `l` dark from `from` to `to`: ms until its input stays below 10 % of
/// its pre-outage rate, and ms after `to` until it delivers half that rate again.
fn outage_times(s: &[Sample], l: usize, from: f64, to: f64) -> (Option<f64>, Option<f64>) {
    let profile = |t0: f64| -> String {
        let r = (0..16)
            .map(|i| t0 + 0.1 * f64::from(i))
            .map(|t| rate(s, l, 0, t, t + 0.1) * 8e-3);
        r.map(|k| format!("{k:.0}")).collect::<Vec<_>>().join(" ")
    };
    tracing::info!(
        "l{} input kbit/s per 100 ms from t={:.1}: {}",
        l + 1,
        from - 0.2,
        profile(from - 0.2)
    );
    tracing::info!(
        "l{} input kbit/s per 100 ms from t={:.1}: {}",
        l + 1,
        to - 0.2,
        profile(to - 0.2)
    );
    let (pre_in, pre_out) = (
        rate(s, l, 0, from - 5.0, from),
        rate(s, l, 1, from - 5.0, from),
    );
    let mut out = None;
    // Walk back from the end of the outage while every window stays low.
    for x in s.iter().rev().filter(|x| x.t >= from && x.t + WINDOW <= to) {
        if rate(s, l, 0, x.t, x.t + WINDOW) >= 0.1 * pre_in {
            break;
        }
        out = Some((x.t - from) * 1000.0);
    }
    let back = s
        .iter()
        .find(|x| x.t >= to + WINDOW && rate(s, l, 1, x.t - WINDOW, x.t) > 0.5 * pre_out);
    (out, back.map(|x| (x.t - to) * 1000.0))
}

fn shares(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{:.1}", s * 100.0))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One metric of one run: name, text, number (for the ratio), target and whether it was met.
type Metric = (&'static str, String, Option<f64>, Option<(String, bool)>);

#[rustfmt::skip]
fn metrics(sc: &Scenario, o: &Outcome) -> Vec<Metric> {
    let lossless = !sc.key.starts_with('c');
    let no_loss = lossless.then(|| ("0".to_string(), o.lost == 0 && o.missing_bytes <= 0));
    let gap_goal = sc.key.starts_with(['b', 'f']).then(|| ("<= 100 ms".to_string(), o.gap_ms <= 100.0));
    let drops = o.queue_drops.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ");
    let n = |v: f64| (format!("{v:.0}"), Some(v.round()));
    // Our sender's own counters; ristsender has none to compare.
    let ours = |f: fn(&strata_rist::LinkStats) -> u64| {
        o.bond.as_ref().map_or(("—".into(), None), |b| n(b.links.iter().map(f).sum::<u64>() as f64))
    };
    let mut m = vec![
        ("offered kbit/s", n(o.offered_kbps), None),
        ("delivered kbit/s", n(o.delivered_kbps), None),
        ("unrecovered loss: librist `lost`, packets", n(o.lost as f64), no_loss.clone()),
        ("unrecovered loss: TS bytes sent - output", n(o.missing_bytes as f64), no_loss),
        ("packets recovered by retransmission", n(o.recovered as f64), None),
        ("longest output gap, ms", n(o.gap_ms), gap_goal),
        ("link share %, uplink bytes delivered", (shares(&o.share), None), None),
        ("bottleneck queue drops per link", (drops, None), None),
        ("retransmissions sent (steered)", ours(|l| l.retransmitted_packets), None),
        ("early NACKs not answered", ours(|l| l.early_nacks), None),
        ("packets rescued from a dark link", ours(|l| l.rescued_packets), None),
    ];
    if let Some((out, back)) = o.out_back {
        // Dark within max(150 ms, 2 x RTT) of the dead link (RTT 120 ms).
        let rtt = sc.outage.map_or(0.0, |(l, ..)| f64::from(sc.links[l].1));
        let dark_goal = (2.0 * rtt).max(150.0);
        let t = |v: Option<f64>| (v.map_or("never".into(), |v| format!("{v:.0}")), v);
        let goal = format!("<= {dark_goal:.0} ms");
        m.push(("dead link out after, ms", t(out), Some((goal, out.is_some_and(|v| v <= dark_goal)))));
        m.push(("dead link back after, ms", t(back), Some(("<= 2 s".into(), back.is_some_and(|v| v <= 2000.0)))));
    }
    m.into_iter().map(|(name, (text, v), goal)| (name, text, v, goal)).collect()
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "—".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn verdict(target: &str, strata: bool, rist: bool) -> String {
    let m = |ok| if ok { "met" } else { "**missed**" };
    format!("{target}: strata {}, ristsender {}", m(strata), m(rist))
}

/// The side-by-side markdown table.
fn table(all: &[Scenario], r: &HashMap<(&str, Who), Outcome>, secs: f64) -> String {
    let mut t = format!(
        "Bonding benchmark: {secs:.0} s per run, linksim seed {SEED}, the same BondedReceiver for \
         both senders, recovery buffer 1000 ms unless the scenario says. Neither sender encrypts \
         (ristsender could only take its secret on the command line); ristsender has weight=5 on \
         every link.\n\n\
         (a) 1/2/4 Mbit/s links, RTT 40/70/120 ms, loss 0.5/1/2 %, 5 Mbit/s offered. \
         (b) as (a), link 3 dark t=10..20 s, 3 Mbit/s offered; (b500) the same at 500 ms buffer. \
         (f) as (b), link 3 down 1 s / up 1 s from t=10 to t=20 s. \
         (h) 2 Mbit/s (RTT 50 ms) beside 4 Mbit/s (RTT 80 ms) that halves for 2 s every 4 s, \
         2.5 Mbit/s offered. \
         (c) 2/4/2 Mbit/s links (RTT 40/70/100 ms, loss 0.5/1/1 %) + a 100 kbit/s, 20 %-loss, \
         100 ms link, 6 Mbit/s offered. (c0) the three good links of (c) alone.\n\n\
         | scenario: metric | strata | ristsender | strata/ristsender | target |\n\
         |---|---:|---:|---:|---|\n"
    );
    for sc in all {
        let key = sc.key;
        let (Some(s), Some(b)) = (r.get(&(key, Who::Strata)), r.get(&(key, Who::Rist))) else {
            continue;
        };
        for ((metric, st, sv, sg), (_, bt, bv, bg)) in
            metrics(sc, s).into_iter().zip(metrics(sc, b))
        {
            let ratio = sv.zip(bv).map_or(String::new(), |(x, y)| ratio(x, y));
            let target = sg
                .zip(bg)
                .map_or(String::new(), |((g, so), (_, bo))| verdict(&g, so, bo));
            t += &format!("| ({key}) {metric} | {st} | {bt} | {ratio} | {target} |\n");
        }
    }
    let cost = |who| {
        let (c, c0) = (r.get(&("c", who))?, r.get(&("c0", who))?);
        Some(100.0 * (1.0 - c.delivered_kbps / c0.delivered_kbps))
    };
    if let (Some(s), Some(b)) = (cost(Who::Strata), cost(Who::Rist)) {
        // `+ 0.0` turns -0.0 into 0.0.
        let (s, b) = (
            (s * 10.0).round() / 10.0 + 0.0,
            (b * 10.0).round() / 10.0 + 0.0,
        );
        let v = verdict("<= 2 %", s <= 2.0, b <= 2.0);
        t += &format!(
            "| (c) cost of the bad link, % = 1 - delivered(c)/delivered(c0) | {s:.1} | {b:.1} | {} | {v} |\n",
            ratio(s, b)
        );
    }
    t
}

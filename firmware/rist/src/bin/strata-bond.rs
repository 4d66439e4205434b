//! `strata-bond`: send or receive a bonded RIST stream from the command line.
//!
//! The PSK comes from `--psk-file` or the `STRATA_PSK` environment variable,
//! never from the command line.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use strata_rist::ts::{DATAGRAM_PAYLOAD, Pacer};
use strata_rist::{
    BondStats, BondedReceiver, BondedSender, LinkSpec, Psk, ReceiverConfig, SenderConfig,
};

/// Bonded RIST over several links (main profile, AES-256 PSK).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send MPEG-TS from a file or stdin over bonded links.
    Send(SendArgs),
    /// Receive a bonded stream and write the MPEG-TS to a file or stdout.
    Receive(ReceiveArgs),
}

#[derive(Args)]
struct Common {
    /// File holding the passphrase (else $STRATA_PSK; neither = no encryption).
    #[arg(long)]
    psk_file: Option<PathBuf>,
    /// Recovery buffer, ms.
    #[arg(long, default_value_t = 1000)]
    buffer_ms: u32,
    /// Print statistics as one JSON object per line instead of a table: on stdout for
    /// `send`, on stderr for `receive` (whose stdout may carry the TS).
    #[arg(long)]
    stats_json: bool,
    /// Statistics interval, ms.
    #[arg(long, default_value_t = 1000)]
    stats_interval_ms: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args)]
struct SendArgs {
    /// A link: NAME=HOST:PORT[,dev=IFACE|,src=IP][,kbps=N]; repeat per link.
    #[arg(long = "link", required = true)]
    links: Vec<LinkSpec>,
    /// TS input file ("-" = stdin).
    #[arg(long, default_value = "-")]
    input: PathBuf,
    /// Pace the input at this rate (kbit/s) as if it were live.
    #[arg(long)]
    pace_kbps: Option<f64>,
    /// Start the file again at its end (with --pace-kbps).
    #[arg(long = "loop")]
    repeat: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ReceiveArgs {
    /// Address to listen on, one per link; repeat.
    #[arg(long = "listen", required = true)]
    listen: Vec<SocketAddr>,
    /// TS output file ("-" = stdout).
    #[arg(long, default_value = "-")]
    output: PathBuf,
    #[command(flatten)]
    common: Common,
}

fn psk(c: &Common) -> anyhow::Result<Option<Psk>> {
    if let Some(f) = &c.psk_file {
        return Ok(Some(Psk::from_file(f)?));
    }
    match std::env::var("STRATA_PSK") {
        Ok(s) if !s.is_empty() => Ok(Some(Psk::new(s)?)),
        _ => Ok(None),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Send(a) => send(a),
        Cmd::Receive(a) => receive(a),
    }
}

fn send(a: SendArgs) -> anyhow::Result<()> {
    let cfg = SenderConfig {
        psk: psk(&a.common)?,
        buffer_ms: a.common.buffer_ms,
        ..Default::default()
    };
    let mut sender = BondedSender::new(cfg, a.links)?;
    let mut input: Box<dyn Read> = open_input(&a.input)?;
    let mut pacer = a.pace_kbps.map(Pacer::new);
    let start = Instant::now();
    let deadline = a
        .common
        .duration
        .map(|d| start + Duration::from_secs_f64(d));
    let interval = Duration::from_millis(a.common.stats_interval_ms);
    let mut next_stats = start + interval;
    let mut buf = vec![0u8; DATAGRAM_PAYLOAD];
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            if a.repeat && a.input.as_os_str() != "-" {
                input = open_input(&a.input)?;
                continue;
            }
            break;
        }
        let whole = n / 188 * 188;
        if let Some(p) = pacer.as_mut() {
            p.wait(whole);
        }
        sender.send(&buf[..whole])?;
        if Instant::now() >= next_stats {
            next_stats += interval;
            print_bond(&sender.stats(), start, a.common.stats_json)?;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    sender.flush()?;
    // Let retransmissions of the tail complete before the context goes away.
    std::thread::sleep(Duration::from_millis(
        u64::from(a.common.buffer_ms).min(2000),
    ));
    print_bond(&sender.stats(), start, a.common.stats_json)?;
    Ok(())
}

fn open_input(p: &PathBuf) -> anyhow::Result<Box<dyn Read>> {
    Ok(if p.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(p).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?)
    })
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn print_bond(s: &BondStats, start: Instant, json: bool) -> anyhow::Result<()> {
    let t = start.elapsed().as_secs_f64();
    if json {
        let mut v = serde_json::to_value(s)?;
        v["t"] = t.into();
        println!("{v}");
        return Ok(());
    }
    eprintln!(
        "t={t:6.1}s bond: sent {:7.0} kbit/s  usable {:7.0} kbit/s  retransmitted {}",
        s.sent_kbps, s.usable_kbps, s.retransmitted_packets
    );
    for l in &s.links {
        eprintln!(
            "    {:>8} {:>8?} rtt {:>4} ms  weight {:>4}  share {:5.1}%  sent {:7.0} kbit/s  capacity {:7.0} kbit/s",
            l.name,
            l.state,
            l.rtt_ms.map_or("-".into(), |r| r.to_string()),
            l.weight,
            l.share * 100.0,
            l.sent_kbps,
            l.capacity_kbps
        );
    }
    Ok(())
}

fn receive(a: ReceiveArgs) -> anyhow::Result<()> {
    let rx = BondedReceiver::new(ReceiverConfig {
        listen: a.listen,
        psk: psk(&a.common)?,
        buffer_ms: a.common.buffer_ms,
    })?;
    eprintln!("listening on ports {:?}", rx.ports());
    let mut out: Box<dyn Write> = if a.output.as_os_str() == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(File::create(&a.output).map_err(|e| {
            anyhow::anyhow!("cannot create {}: {e}", a.output.display())
        })?))
    };
    let start = Instant::now();
    let deadline = a
        .common
        .duration
        .map(|d| start + Duration::from_secs_f64(d));
    let interval = Duration::from_millis(a.common.stats_interval_ms);
    let mut next_stats = start + interval;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stop cleanly on SIGTERM/SIGINT so the output file is complete.
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(d) = rx.read(Duration::from_millis(100))? {
            out.write_all(&d)?;
        }
        if Instant::now() >= next_stats {
            next_stats += interval;
            out.flush()?;
            let s = rx.stats();
            let mut v = serde_json::to_value(&s)?;
            v["t"] = start.elapsed().as_secs_f64().into();
            if a.common.stats_json {
                eprintln!("{v}");
            } else {
                eprintln!(
                    "t={:6.1}s flow: {:7.0} kbit/s received {} recovered {} lost {} garbage {}{}",
                    start.elapsed().as_secs_f64(),
                    s.bitrate_kbps,
                    s.received,
                    s.recovered,
                    s.lost,
                    s.garbage_datagrams,
                    s.problem
                        .as_ref()
                        .map(|p| format!("  PROBLEM: {p}"))
                        .unwrap_or_default()
                );
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    out.flush()?;
    let mut v = serde_json::to_value(rx.stats())?;
    v["final"] = true.into();
    eprintln!("{v}");
    Ok(())
}

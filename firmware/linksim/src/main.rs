//! `strata-linksim`: relays UDP over emulated links described in a TOML file and
//! prints per-link counters every second.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use strata_linksim::{LinkSim, SimConfig};

/// Emulate lossy, rate-limited links between a sender and a receiver on loopback.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML file with `[[link]]` tables (see the crate docs).
    config: PathBuf,
    /// Stop after this many seconds (runs until Ctrl-C otherwise).
    #[arg(long)]
    duration: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = SimConfig::from_file(&args.config)?;
    let sim = LinkSim::start(cfg).await?;
    for s in sim.stats() {
        println!(
            "link {} listening on {}",
            s.name,
            sim.listen_addr(&s.name).expect("link")
        );
    }
    let deadline = args
        .duration
        .map(|d| sim.started() + Duration::from_secs_f64(d));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = sim.stats();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let now = sim.stats();
        let t = sim.started().elapsed().as_secs_f64();
        for (n, p) in now.iter().zip(&last) {
            let kbps = (n.uplink.bytes_delivered - p.uplink.bytes_delivered) as f64 * 8.0 / 1000.0;
            println!(
                "t={t:6.1}s {:>8} {:>4} up {kbps:8.0} kbit/s  in {:>7}  lost {:>5}  queue-drop {:>5}  outage-drop {:>5}",
                n.name,
                if n.impairment.up { "up" } else { "DOWN" },
                n.uplink.packets_in,
                n.uplink.dropped_loss,
                n.uplink.dropped_queue,
                n.uplink.dropped_outage,
            );
        }
        last = now;
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
    }
    Ok(())
}

//! `strata-receiver`: one worker per stream (see the crate docs and
//! docs/receiver-control.md). Secrets (the RIST PSK, stream keys, SRT
//! passphrases) come from a 0600 file or an inherited fd, never argv.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use strata_receiver::control::ControlSocket;
use strata_receiver::destination::{Destination, DestinationSpec};
use strata_receiver::worker::{self, WorkerConfig};
use strata_rist::Psk;

/// Receive one bonded RIST stream and forward it to RTMP, SRT, HLS and recordings.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Stream id, for logs and events.
    #[arg(long)]
    stream_id: String,
    /// UDP ports to receive RIST on, one per link (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    ports: Vec<u16>,
    /// Address the ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// A destination without secrets (srt://host:port, hls:///dir, record:///dir);
    /// repeatable. Destinations with a key or passphrase go in the secrets file.
    #[arg(long = "forward-to")]
    forward_to: Vec<String>,
    /// Unix socket for control commands and events.
    #[arg(long)]
    control_socket: PathBuf,
    /// JSON file (mode 0600) with {"psk": "...", "outputs": [{"id","url","passphrase"?}]}.
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// Like --secrets-file, read from this inherited file descriptor.
    #[arg(long)]
    secrets_fd: Option<i32>,
    /// RIST recovery buffer, ms.
    #[arg(long, default_value_t = 1000)]
    buffer_ms: u32,
    /// Seconds without input before a `stalled` event.
    #[arg(long, default_value_t = 30)]
    stall_after_s: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Secrets {
    #[serde(default)]
    psk: Option<String>,
    #[serde(default)]
    outputs: Vec<DestinationSpec>,
}

fn read_secrets(args: &Args) -> anyhow::Result<Secrets> {
    let text = if let Some(p) = &args.secrets_file {
        strata_rist::ensure_private(p)?;
        std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?
    } else if let Some(fd) = args.secrets_fd {
        anyhow::ensure!(
            fd > 2,
            "--secrets-fd must be an inherited descriptor above 2"
        );
        // SAFETY: the parent handed us this fd for exactly this purpose; we own it from here.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        s
    } else {
        return Ok(Secrets::default());
    };
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("secrets: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = gstreamer::init() {
        eprintln!("strata-receiver: GStreamer: {e}");
        return ExitCode::from(1);
    }
    let signal = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, signal.clone());
    }
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let socket = match ControlSocket::bind(&args.control_socket, cmd_tx) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strata-receiver: {e}");
            return ExitCode::from(2);
        }
    };
    let fail = |socket: &ControlSocket, msg: String| {
        tracing::error!("{msg}");
        // Give the control plane a moment to connect so it hears why.
        for _ in 0..20 {
            if socket.has_clients() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        socket.emit(json!({"event": "error", "message": msg}), true);
        std::thread::sleep(Duration::from_millis(100));
        ExitCode::from(2)
    };
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => return fail(&socket, e.to_string()),
    };
    match worker::run(cfg, &socket, cmd_rx, signal) {
        Ok(reason) => {
            let why = match reason {
                worker::StopReason::Command => "stop",
                worker::StopReason::Signal => "signal",
            };
            socket.emit(json!({"event": "stopped", "reason": why}), false);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&socket, e.to_string()),
    }
}

fn config(args: &Args) -> anyhow::Result<WorkerConfig> {
    let secrets = read_secrets(args)?;
    let mut outputs = secrets.outputs;
    for (i, url) in args.forward_to.iter().enumerate() {
        let d = Destination::parse(url, None)?;
        anyhow::ensure!(
            !d.has_secret(),
            "{}: stream keys must not be on the command line; put this destination in the secrets file",
            d.redacted()
        );
        outputs.push(DestinationSpec {
            id: format!("out{i}"),
            url: url.clone(),
            passphrase: None,
        });
    }
    worker::validate(&outputs).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!args.ports.is_empty(), "no ports");
    Ok(WorkerConfig {
        stream_id: args.stream_id.clone(),
        listen: args
            .ports
            .iter()
            .map(|p| SocketAddr::new(args.bind, *p))
            .collect(),
        psk: secrets.psk.map(Psk::new).transpose()?,
        buffer_ms: args.buffer_ms,
        outputs,
        stall_after: Duration::from_secs(args.stall_after_s),
        stats_every: Duration::from_secs(1),
    })
}

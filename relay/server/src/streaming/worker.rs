//! One `strata-receiver` process: how it is started (secrets in a 0600 file
//! that is deleted once the worker is ready, never on the command line; in a
//! systemd scope with memory and CPU limits where systemd runs) and the
//! line-delimited JSON of its control socket (`docs/receiver-control.md`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// What the worker reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Ports bound, outputs started.
    Ready {
        /// The ports it listens on.
        #[serde(default)]
        ports: Vec<u16>,
    },
    /// Numbers, every second.
    Stats(WorkerStats),
    /// Something failed (before `ready`: the worker exits).
    Error {
        /// What.
        message: String,
        /// Which output, if one.
        #[serde(default)]
        output: Option<String>,
    },
    /// A command worked.
    Ok {
        /// What was done.
        #[serde(default)]
        message: String,
    },
    /// No input for a while.
    Stalled {
        /// For how long.
        #[serde(default)]
        seconds: u64,
    },
    /// Input is back.
    Resumed,
    /// The worker is done.
    Stopped {
        /// Why.
        #[serde(default)]
        reason: String,
    },
}

/// The worker's stats event (the fields the relay uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WorkerStats {
    /// Input bitrate, kbit/s.
    #[serde(default)]
    pub bitrate_in_kbps: f64,
    /// Per output.
    #[serde(default)]
    pub outputs: Vec<OutputStats>,
}

/// One output's numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct OutputStats {
    /// Output id (the destination id).
    pub id: String,
    /// connecting, live, reconnecting, failed, stopped.
    pub state: String,
    /// Bytes sent.
    #[serde(default)]
    pub bytes: u64,
    /// Reconnections.
    #[serde(default)]
    pub reconnects: u64,
    /// Last error (destinations redacted by the worker).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// An output as the worker's secrets file lists it (all outputs go there, so
/// the worker reports each under its destination id).
#[derive(Serialize)]
pub struct SecretOutput {
    /// Output id.
    pub id: String,
    /// URL (an RTMP URL ends with the stream key).
    pub url: String,
    /// SRT passphrase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

/// The worker's secrets file.
#[derive(Serialize)]
pub struct Secrets {
    /// RIST PSK of the stream.
    pub psk: String,
    /// Outputs with secrets.
    pub outputs: Vec<SecretOutput>,
}

/// How to start a worker.
pub struct Launch<'a> {
    /// The strata-receiver binary.
    pub bin: &'a Path,
    /// Stream id.
    pub stream_id: &'a str,
    /// RIST ports.
    pub ports: &'a [u16],
    /// Address the ports are bound on.
    pub bind: IpAddr,
    /// The stream's private directory (0700): socket, secrets, log.
    pub dir: &'a Path,
    /// Seconds without input before the worker reports `stalled`.
    pub stall_after_s: u64,
    /// Memory limit for the systemd scope, e.g. "512M".
    pub memory_max: &'a str,
    /// CPU quota for the systemd scope, e.g. "150%".
    pub cpu_quota: &'a str,
}

impl Launch<'_> {
    /// The control socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn secrets_path(&self) -> PathBuf {
        self.dir.join("secrets.json")
    }
}

/// Whether workers can go in systemd scopes (systemd is PID 1 and
/// `systemd-run` exists).
fn systemd_scopes() -> bool {
    Path::new("/run/systemd/system").exists()
        && std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("systemd-run").is_file()))
}

/// Writes the secrets file (0600) and starts the worker; the caller
/// deletes the file with [`forget_secrets`] once the worker is ready.
pub fn spawn(l: &Launch<'_>, secrets: &Secrets) -> std::io::Result<tokio::process::Child> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(l.dir)?;
    let _ = std::fs::remove_file(l.socket());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(l.secrets_path())?;
    f.write_all(&serde_json::to_vec(secrets).expect("secrets serialize"))?;
    f.sync_all()?;
    let log = std::fs::File::create(l.dir.join("worker.log"))?;

    let scoped = systemd_scopes();
    if !scoped {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                "systemd is not PID 1: receiver workers run without memory and CPU limits"
            )
        });
    }
    let mut cmd = if scoped {
        let mut c = tokio::process::Command::new("systemd-run");
        c.args(["--scope", "--quiet", "--collect"])
            .arg(format!("--unit=strata-receiver-{}", l.stream_id))
            .arg(format!("--property=MemoryMax={}", l.memory_max))
            .arg(format!("--property=CPUQuota={}", l.cpu_quota))
            .arg("--")
            .arg(l.bin);
        c
    } else {
        tokio::process::Command::new(l.bin)
    };
    cmd.arg("--stream-id")
        .arg(l.stream_id)
        .arg("--ports")
        .arg(
            l.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--bind")
        .arg(l.bind.to_string())
        .arg("--control-socket")
        .arg(l.socket())
        .arg("--secrets-file")
        .arg(l.secrets_path())
        .arg("--stall-after-s")
        .arg(l.stall_after_s.to_string());
    // Its own process group: a Ctrl-C of the relay does not end live streams
    // (they are re-adopted when the relay comes back).
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn()
}

/// Deletes the secrets file (the worker has read it once it is ready).
pub fn forget_secrets(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("secrets.json"));
}

/// Whether `pid` is a live strata-receiver for `stream_id` (guards against
/// pid reuse when re-adopting after a restart).
pub fn is_worker(pid: u32, stream_id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.iter().any(|a| a.ends_with(b"strata-receiver")) && args.contains(&stream_id.as_bytes())
    })
}

/// Sends SIGKILL to a worker that does not stop.
pub fn kill(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// A connection to a worker's control socket.
pub struct WorkerLink {
    lines: Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
}

impl WorkerLink {
    /// Connects, retrying while the worker creates its socket.
    pub async fn connect(path: &Path, within: Duration) -> std::io::Result<WorkerLink> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match UnixStream::connect(path).await {
                Ok(s) => {
                    let (rd, wr) = s.into_split();
                    return Ok(WorkerLink {
                        lines: BufReader::new(rd).lines(),
                        wr,
                    });
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The next event; `None` when the worker closed the socket. Lines that
    /// do not parse are logged and skipped.
    pub async fn next(&mut self) -> std::io::Result<Option<WorkerEvent>> {
        loop {
            let Some(line) = self.lines.next_line().await? else {
                return Ok(None);
            };
            match serde_json::from_str(&line) {
                Ok(ev) => return Ok(Some(ev)),
                Err(e) => tracing::warn!(error = %e, "unparsable worker event skipped"),
            }
        }
    }

    /// Sends a command line.
    pub async fn send(&mut self, cmd: serde_json::Value) -> std::io::Result<()> {
        let mut line = cmd.to_string();
        line.push('\n');
        self.wr.write_all(line.as_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        let ev: WorkerEvent = serde_json::from_str(
            r#"{"event":"stats","stream_id":"s","bitrate_in_kbps":5200,"rist":{"lost":0},
                "outputs":[{"id":"yt","kind":"rtmp","destination":"rtmp://h/app/***","state":"live","bytes":9,"bitrate_kbps":1,"reconnects":2,"dropped":0,"last_error":null}]}"#,
        )
        .unwrap();
        match ev {
            WorkerEvent::Stats(s) => {
                assert_eq!(s.bitrate_in_kbps, 5200.0);
                assert_eq!(
                    (s.outputs[0].id.as_str(), s.outputs[0].reconnects),
                    ("yt", 2)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            serde_json::from_str(r#"{"event":"ready","stream_id":"s","ports":[1,2]}"#).unwrap(),
            WorkerEvent::Ready { ports } if ports == [1, 2]
        ));
        assert!(serde_json::from_str::<WorkerEvent>(r#"{"event":"nonsense"}"#).is_err());
    }
}

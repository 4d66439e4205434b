//! The control socket: line-delimited JSON over a Unix socket (seed 003 §4),
//! documented in docs/receiver-control.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Value, json};

/// Longest command line accepted; longer ones are refused, not buffered.
const MAX_LINE: usize = 64 * 1024;

/// A command from the control plane.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// EOS, flush, finalise recordings, exit 0.
    Stop,
    /// Emit a stats event now.
    Stats,
    /// Replace a destination's URL (the only one when `id` is absent).
    UpdateForward {
        /// The output to change.
        #[serde(default)]
        id: Option<String>,
        /// Its new URL.
        url: String,
        /// SRT passphrase.
        #[serde(default)]
        passphrase: Option<String>,
    },
    /// Add a destination while live.
    AddOutput {
        /// Its id, unique within the stream.
        id: String,
        /// Its URL.
        url: String,
        /// SRT passphrase.
        #[serde(default)]
        passphrase: Option<String>,
    },
    /// Remove a destination while live (a recording is finalised).
    RemoveOutput {
        /// Its id.
        id: String,
    },
}

/// The socket and its connected clients.
pub struct ControlSocket {
    path: PathBuf,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    greeting: Arc<Mutex<Option<Value>>>,
}

impl ControlSocket {
    /// Listens on `path` (mode 0600); commands go to `commands`.
    pub fn bind(path: &Path, commands: Sender<Command>) -> anyhow::Result<Self> {
        if path.exists() {
            // A stale socket from a crashed worker; a live one would refuse us below.
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!("control socket {} is in use", path.display());
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let greeting: Arc<Mutex<Option<Value>>> = Arc::default();
        let (c, g) = (clients.clone(), greeting.clone());
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let Ok(mut writer) = stream.try_clone() else {
                        continue;
                    };
                    if let Some(hello) = g.lock().expect("greeting lock").as_ref() {
                        let _ = writeln!(writer, "{hello}");
                    }
                    c.lock().expect("clients lock").push(writer);
                    let commands = commands.clone();
                    let _ = std::thread::Builder::new()
                        .name("control-client".into())
                        .spawn(move || serve(stream, commands));
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            clients,
            greeting,
        })
    }

    /// Sends an event to every client; `greet` also sends it to later clients (ready).
    pub fn emit(&self, event: Value, greet: bool) {
        if greet {
            *self.greeting.lock().expect("greeting lock") = Some(event.clone());
        }
        let line = format!("{event}\n");
        self.clients
            .lock()
            .expect("clients lock")
            .retain_mut(|c| c.write_all(line.as_bytes()).is_ok());
    }

    /// Whether anybody is listening.
    pub fn has_clients(&self) -> bool {
        !self.clients.lock().expect("clients lock").is_empty()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one client's commands; answers malformed ones with an error event.
fn serve(stream: UnixStream, commands: Sender<Command>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64 + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_LINE => {
                let _ = writeln!(
                    writer,
                    "{}",
                    json!({"event": "error", "message": "command too long"})
                );
                return;
            }
            Ok(_) => {}
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Command>(text) {
            Ok(c) => {
                if commands.send(c).is_err() {
                    return;
                }
            }
            Err(e) => {
                // Never echo the line: it may hold a stream key.
                let _ = writeln!(
                    writer,
                    "{}",
                    json!({"event": "error", "message": format!("bad command: {e}")})
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_commands() {
        let p = |s: &str| serde_json::from_str::<Command>(s);
        assert_eq!(p(r#"{"cmd":"stop"}"#).unwrap(), Command::Stop);
        assert_eq!(p(r#"{"cmd":"stats"}"#).unwrap(), Command::Stats);
        assert!(matches!(
            p(r#"{"cmd":"update_forward","url":"rtmp://new/app/k"}"#).unwrap(),
            Command::UpdateForward { id: None, .. }
        ));
        assert!(p(r#"{"cmd":"launch_missiles"}"#).is_err());
        assert!(p("not json").is_err());
    }
}

//! The launcher: the first thing `strata-agent` does, before the agent
//! proper starts. It decides which binary runs:
//! - a staged trial, started as a child and supervised: if it reaches the
//!   relay it commits itself (trial becomes installed) and the launcher
//!   just waits for it; if it exits first, or has not committed within
//!   `trial_s`, the launcher stops it, records why (`failed.json`) and runs
//!   the previous version. A trial already attempted once (the device lost
//!   power or crashed during it) is given up the same way;
//! - else the installed release, exec'd in place (same PID for systemd);
//! - else itself, the factory version.
//!
//! Every release is verified (SHA-256 and signature) before it is run.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{
    ENV_LAUNCHED, ENV_LAUNCHER, ENV_RELEASE, ENV_SUPERVISED, ENV_TRIAL, RESTART_CODE, Staged,
    check, dir, trusted_key,
};
use crate::config::AgentConfig;

/// Marks a trial as started once (in the update directory).
pub const ATTEMPTED: &str = "trial.attempted";

/// What the launcher decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Launch {
    /// Run the agent in this process.
    RunHere,
    /// A supervised trial ended: exit with its code.
    Exit(u8),
}

enum Supervised {
    Exited(u8),
    GaveUp(String),
    /// The committed child staged another release and handed back.
    Restart,
}

/// Chooses and starts the binary to run (see the module docs).
pub fn launch(cfg: &AgentConfig) -> Launch {
    if std::env::var_os(ENV_LAUNCHED).is_some() {
        return Launch::RunHere;
    }
    let Ok(key) = trusted_key(cfg) else {
        return Launch::RunHere;
    };
    let dir = dir(&cfg.data_dir);
    let trial = dir.join("trial");
    let installed = dir.join("installed");
    recover(&dir);
    while trial.exists() {
        let version = version_of(&trial);
        if dir.join(ATTEMPTED).exists() {
            give_up(
                &dir,
                &version,
                "it stopped (crash, restart or power loss) before it reached the relay",
            );
            continue;
        }
        let staged = match check(&key, &trial) {
            Ok(s) => s,
            Err(why) => {
                give_up(&dir, &version, &format!("it failed verification: {why}"));
                continue;
            }
        };
        if let Err(e) = std::fs::write(dir.join(ATTEMPTED), b"") {
            give_up(&dir, &version, &format!("cannot mark the trial: {e}"));
            continue;
        }
        match supervise(cfg, &dir, &staged) {
            Supervised::Exited(code) => return Launch::Exit(code),
            Supervised::GaveUp(why) => give_up(&dir, &staged.version, &why),
            Supervised::Restart => {}
        }
    }
    if installed.exists() {
        match check(&key, &installed) {
            Ok(staged) => {
                use std::os::unix::process::CommandExt;
                let e = agent_command(&installed, &staged.version).exec();
                tracing::error!(error = %e, "cannot run the installed release; running the factory version");
            }
            Err(why) => tracing::error!(
                reason = %why,
                "the installed release is unusable; running the factory version"
            ),
        }
    }
    Launch::RunHere
}

/// After a power cut between commit's two renames (installed → previous,
/// trial → installed) there is no installed release: the previous one is
/// the last that reached the relay.
pub(super) fn recover(dir: &Path) {
    let (installed, previous) = (dir.join("installed"), dir.join("previous"));
    if !installed.exists() && previous.exists() && std::fs::rename(&previous, &installed).is_ok() {
        tracing::warn!("restored the previous release (interrupted commit)");
    }
}

/// The version a release directory names ("unknown" if unreadable).
pub(super) fn version_of(release_dir: &Path) -> String {
    std::fs::read_to_string(release_dir.join("release.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Staged>(&t).ok())
        .map(|s| s.version)
        .unwrap_or_else(|| "unknown".into())
}

/// The command that runs a release's binary with this process's arguments.
fn agent_command(release_dir: &Path, version: &str) -> Command {
    let mut c = Command::new(release_dir.join("strata-agent"));
    c.args(std::env::args_os().skip(1))
        .env(ENV_LAUNCHED, "1")
        .env(ENV_RELEASE, version);
    if std::env::var_os(ENV_LAUNCHER).is_none()
        && let Ok(me) = std::env::current_exe()
    {
        c.env(ENV_LAUNCHER, me);
    }
    c
}

/// Gives a trial up: recorded for the relay, removed from disk.
fn give_up(dir: &Path, version: &str, reason: &str) {
    tracing::error!(%version, %reason, "the new release was given up; the previous version runs");
    let failed = serde_json::json!({ "version": version, "reason": reason });
    if let Err(e) = std::fs::write(dir.join("failed.json"), failed.to_string()) {
        tracing::error!(error = %e, "cannot record the failed update");
    }
    let _ = std::fs::remove_dir_all(dir.join("trial"));
    let _ = std::fs::remove_file(dir.join(ATTEMPTED));
    super::sync_dir(dir);
}

/// Whether the trial of `version` committed itself.
fn committed(dir: &Path, version: &str) -> bool {
    !dir.join("trial").exists() && version_of(&dir.join("installed")) == version
}

fn supervise(cfg: &AgentConfig, dir: &Path, staged: &Staged) -> Supervised {
    let trial = dir.join("trial");
    let mut cmd = agent_command(&trial, &staged.version);
    cmd.env(ENV_TRIAL, "1").env(ENV_SUPERVISED, "1");
    // A trial must never outlive its supervisor (killed launcher, crash):
    // unsupervised, a bad release would never be rolled back.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Supervised::GaveUp(format!("it could not be started: {e}")),
    };
    tracing::info!(version = %staged.version, pid = child.id(), trial_s = cfg.update.trial_s, "trying the new release");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(cfg.update.trial_s);
    // Once the trial committed, the deadline no longer applies: a later
    // staged release is not this child's to prove.
    let mut proven = false;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if stop.load(Ordering::SeqCst) {
            // Stopped by systemd (or Ctrl-C): the agent stops too. An
            // uncommitted trial is given up at the next start.
            return Supervised::Exited(end(&mut child, Duration::from_secs(20)));
        }
        proven = proven || committed(dir, &staged.version);
        match child.try_wait() {
            Ok(Some(status)) if proven && status.code() == Some(RESTART_CODE) => {
                return Supervised::Restart;
            }
            Ok(Some(status)) if proven => return Supervised::Exited(code(status)),
            Ok(Some(status)) => {
                return Supervised::GaveUp(format!(
                    "it exited ({status}) before it reached the relay"
                ));
            }
            Ok(None) => {}
            Err(e) => return Supervised::GaveUp(format!("cannot watch it: {e}")),
        }
        if !proven && Instant::now() >= deadline {
            end(&mut child, Duration::from_secs(10));
            return Supervised::GaveUp(format!(
                "it did not reach the relay within {} s",
                cfg.update.trial_s
            ));
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; the exit code.
fn end(child: &mut Child, grace: Duration) -> u8 {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return code(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().map(code).unwrap_or(1)
}

fn code(status: std::process::ExitStatus) -> u8 {
    status.code().map(|c| c.clamp(0, 255) as u8).unwrap_or(1)
}

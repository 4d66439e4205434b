//! Self-update: download a release the relay names, check it, stage it,
//! and let the [`launcher`] try it.
//!
//! The root filesystem is read-only, so the factory binary
//! (`/usr/bin/strata-agent`) never changes: it is the launcher, and runs
//! releases kept on the data partition, `<data_dir>/update/`:
//! - `trial/`: a release downloaded and verified, not yet proven;
//! - `installed/`: the release that last reached the relay;
//! - `previous/`: the one before it;
//! - `failed.json`: why the last trial was given up, reported to the relay
//!   by whichever version runs next.
//!
//! Each directory holds `strata-agent` and `release.json` (version, SHA-256,
//! signature). A release is trusted when the vendor's ed25519 signature over
//! its version, this agent's target triple and its SHA-256 verifies with the
//! release key this agent was built with (`STRATA_RELEASE_PUBKEY`), checked
//! after download and again before every launch.
//!
//! Flow: `Update` command → [`fetch`] (progress events, size limit, SHA-256
//! and signature) → `trial/` → [`restart`] (exec of the launcher) → the
//! launcher runs the trial under supervision → the trial reaches the relay
//! and [`commit`]s (trial becomes installed) → or it does not within
//! `trial_s`, exits, or cannot be verified: the launcher stops it, records
//! why, and runs the previous version.

pub mod launcher;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::config::AgentConfig;

/// The release key baked in at build time (hex), if any.
pub const BAKED_KEY: Option<&str> = option_env!("STRATA_RELEASE_PUBKEY");

/// Set by the launcher for the binary it runs.
const ENV_LAUNCHED: &str = "STRATA_AGENT_LAUNCHED";
/// The version of the release the launcher runs.
const ENV_RELEASE: &str = "STRATA_AGENT_RELEASE";
/// Set for a trial run.
const ENV_TRIAL: &str = "STRATA_AGENT_TRIAL";
/// The factory binary, which every restart goes back through.
const ENV_LAUNCHER: &str = "STRATA_AGENT_LAUNCHER";
/// Set for a child the launcher supervises: it restarts by exiting with
/// [`RESTART_CODE`], and the launcher decides again.
const ENV_SUPERVISED: &str = "STRATA_AGENT_SUPERVISED";
/// Exit code that asks the supervising launcher to start what is staged.
pub const RESTART_CODE: i32 = 75;

/// Set once this process committed its trial (later reconnects do nothing).
static COMMITTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What `release.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Release version.
    pub version: String,
    /// SHA-256 of `strata-agent`, hex.
    pub sha256: String,
    /// The vendor's signature, hex.
    pub signature: String,
}

/// A release to fetch (from the relay's `Update` command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Version.
    pub version: String,
    /// Where to download it.
    pub url: String,
    /// Expected SHA-256, hex.
    pub sha256: String,
    /// The vendor's signature, hex.
    pub signature: String,
}

/// The version this process runs: the release the launcher started, else
/// the factory build's.
pub fn running_version() -> String {
    std::env::var(ENV_RELEASE).unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string())
}

/// The release key to trust: the baked-in one, else the configured file.
pub fn trusted_key(cfg: &AgentConfig) -> Result<String, String> {
    // An image built without a key passes an empty one.
    if let Some(k) = BAKED_KEY.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(k.to_string());
    }
    match &cfg.update.public_key_file {
        Some(p) => std::fs::read_to_string(p)
            .map(|k| k.trim().to_string())
            .map_err(|e| format!("release key {}: {e}", p.display())),
        None => Err("this agent was built without a release key; it cannot be updated".into()),
    }
}

/// Whether `candidate` is a later version than `running`.
pub fn is_newer(candidate: &str, running: &str) -> bool {
    strata_release::compare_versions(candidate, running).is_gt()
}

/// `<data_dir>/update`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("update")
}

/// Checks a release on disk: its binary's SHA-256 and the signature.
pub fn check(key: &str, release_dir: &Path) -> Result<Staged, String> {
    let text = std::fs::read_to_string(release_dir.join("release.json"))
        .map_err(|e| format!("release.json: {e}"))?;
    let staged: Staged = serde_json::from_str(&text).map_err(|e| format!("release.json: {e}"))?;
    let f = std::fs::File::open(release_dir.join("strata-agent"))
        .map_err(|e| format!("strata-agent: {e}"))?;
    let (sha, _) = strata_release::sha256_hex(f).map_err(|e| format!("strata-agent: {e}"))?;
    if sha != staged.sha256 {
        return Err("the stored binary changed since it was verified".into());
    }
    strata_release::verify(
        key,
        &staged.version,
        strata_release::TARGET,
        &sha,
        &staged.signature,
    )
    .map_err(|e| e.to_string())?;
    Ok(staged)
}

/// Downloads a release into `trial/` if it is what the relay described and
/// the vendor signed for this target; `progress` gets each tenth of the way.
pub async fn fetch(
    http: &reqwest::Client,
    cfg: &AgentConfig,
    job: &Job,
    progress: &(dyn Fn(u8) + Send + Sync),
) -> Result<(), String> {
    let key = trusted_key(cfg)?;
    if !strata_release::valid_version(&job.version) {
        return Err(format!("{:?} is not a version", job.version));
    }
    let dir = dir(&cfg.data_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let part = dir.join("download.part");
    let result = download(http, job, &part, cfg.update.max_bytes, progress).await;
    let (sha, _) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    let refuse = |why: String| {
        let _ = std::fs::remove_file(&part);
        Err(why)
    };
    if sha != job.sha256.to_ascii_lowercase() {
        return refuse(format!(
            "the download's SHA-256 is not the release's (truncated or altered): {sha}"
        ));
    }
    if let Err(e) = strata_release::verify(
        &key,
        &job.version,
        strata_release::TARGET,
        &sha,
        &job.signature,
    ) {
        return refuse(format!(
            "{e} (version {}, target {})",
            job.version,
            strata_release::TARGET
        ));
    }
    stage(&dir, &part, job, &sha).map_err(|e| format!("staging the release: {e}"))
}

async fn download(
    http: &reqwest::Client,
    job: &Job,
    part: &Path,
    max_bytes: u64,
    progress: &(dyn Fn(u8) + Send + Sync),
) -> Result<(String, u64), String> {
    let mut resp = http
        .get(&job.url)
        // Cellular links are slow; the client's 20 s limit is for API calls.
        .timeout(std::time::Duration::from_secs(30 * 60))
        .send()
        .await
        .map_err(|e| format!("download failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("download failed: HTTP {}", resp.status()));
    }
    let expected = resp.content_length();
    if expected.is_some_and(|n| n > max_bytes) {
        return Err(format!("the release is larger than {max_bytes} bytes"));
    }
    let mut file = tokio::fs::File::create(part)
        .await
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let mut hash = strata_release::Sha256::new();
    let mut tenths = 0u8;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(format!("download interrupted: {e}")),
        };
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("writing the download: {e}"))?;
        if let Some(total) = expected.filter(|&t| t > 0) {
            let done = hash.len();
            let now = (done * 10 / total).min(10) as u8;
            if now > tenths {
                tenths = now;
                progress(tenths * 10);
            }
        }
        if hash.len() > max_bytes {
            return Err(format!("the release is larger than {max_bytes} bytes"));
        }
    }
    file.sync_all()
        .await
        .map_err(|e| format!("writing the download: {e}"))?;
    let (sha, len) = hash.finish();
    if let Some(total) = expected
        && len != total
    {
        return Err(format!("download truncated: {len} of {total} bytes"));
    }
    Ok((sha, len))
}

/// Moves a verified download into `trial/` (replacing an older trial).
fn stage(dir: &Path, part: &Path, job: &Job, sha: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dir.join("trial.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let bin = tmp.join("strata-agent");
    std::fs::rename(part, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700))?;
    let staged = Staged {
        version: job.version.clone(),
        sha256: sha.to_string(),
        signature: job.signature.to_ascii_lowercase(),
    };
    std::fs::write(
        tmp.join("release.json"),
        serde_json::to_vec_pretty(&staged).expect("serializes"),
    )?;
    let trial = dir.join("trial");
    let _ = std::fs::remove_dir_all(&trial);
    let _ = std::fs::remove_file(dir.join(launcher::ATTEMPTED));
    std::fs::rename(&tmp, &trial)?;
    sync_dir(dir);
    Ok(())
}

/// Makes renames in `dir` durable (a power cut must not lose the swap).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// In a trial run that reached the relay: the trial becomes the installed
/// release (the old one is kept as `previous/`). Returns the version
/// committed, if this was a trial.
pub fn commit(data_dir: &Path) -> Result<Option<String>, String> {
    use std::sync::atomic::Ordering;
    if std::env::var_os(ENV_TRIAL).is_none() || COMMITTED.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let r = commit_trial(data_dir, &running_version());
    if r.is_ok() {
        COMMITTED.store(true, Ordering::SeqCst);
    }
    r
}

fn commit_trial(data_dir: &Path, version: &str) -> Result<Option<String>, String> {
    let version = version.to_string();
    let dir = dir(data_dir);
    let trial = dir.join("trial");
    // Only the trial this process is: a newer one staged meanwhile waits its turn.
    if launcher::version_of(&trial) != version {
        return Ok(None);
    }
    let installed = dir.join("installed");
    let previous = dir.join("previous");
    let io = |e: std::io::Error| format!("committing {version}: {e}");
    if installed.exists() {
        let _ = std::fs::remove_dir_all(&previous);
        std::fs::rename(&installed, &previous).map_err(io)?;
    }
    std::fs::rename(&trial, &installed).map_err(io)?;
    let _ = std::fs::remove_file(dir.join(launcher::ATTEMPTED));
    sync_dir(&dir);
    Ok(Some(version))
}

/// Why the last trial was given up, once (the caller reports it).
pub fn take_failure(data_dir: &Path) -> Option<(String, String)> {
    let path = dir(data_dir).join("failed.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        v["version"].as_str()?.to_string(),
        v["reason"].as_str()?.to_string(),
    ))
}

/// Restarts through the launcher, which then runs the staged trial: a
/// supervised process exits with [`RESTART_CODE`] to its launcher, any
/// other execs the factory binary. Only returns if the exec failed.
pub fn restart() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ENV_SUPERVISED).is_some() {
        tracing::info!("handing over to the launcher for the new release");
        std::process::exit(RESTART_CODE);
    }
    let launcher = std::env::var_os(ENV_LAUNCHER)
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/strata-agent"));
    tracing::info!(launcher = %launcher.display(), "restarting into the new release");
    std::process::Command::new(launcher)
        .args(std::env::args_os().skip(1))
        .env_remove(ENV_LAUNCHED)
        .env_remove(ENV_RELEASE)
        .env_remove(ENV_TRIAL)
        .env_remove(ENV_SUPERVISED)
        .exec()
}

#[cfg(test)]
mod tests;

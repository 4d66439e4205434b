//! Agent releases the relay serves: `data_dir/releases/<target>/<version>/`
//! holds the `strata-agent` binary and `release.json` (version, target,
//! SHA-256, size, the vendor's signature). Added with `strata-relay release
//! add`; the relay never signs and never needs the release key: devices
//! check the signature against the key they were built with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One release as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Version.
    pub version: String,
    /// Target triple.
    pub target: String,
    /// SHA-256 of the binary, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The vendor's ed25519 signature of the release statement, hex.
    pub signature: String,
}

/// Whether a target triple is usable as a path part: 1–64 of `[a-z0-9_-]`.
pub fn valid_target(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
}

fn dir(data_dir: &Path, target: &str, version: &str) -> Option<PathBuf> {
    (valid_target(target) && strata_release::valid_version(version))
        .then(|| data_dir.join("releases").join(target).join(version))
}

/// The binary of a release, if it exists.
pub fn binary(data_dir: &Path, target: &str, version: &str) -> Option<PathBuf> {
    dir(data_dir, target, version)
        .map(|d| d.join("strata-agent"))
        .filter(|p| p.is_file())
}

/// One release, if it exists.
pub fn get(data_dir: &Path, target: &str, version: &str) -> Option<Release> {
    let d = dir(data_dir, target, version)?;
    let text = std::fs::read_to_string(d.join("release.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Copies a binary in as a release. The signature is stored as given (hex
/// of 64 bytes); an existing release of that version and target is refused.
pub fn add(
    data_dir: &Path,
    version: &str,
    target: &str,
    binary: &Path,
    signature: &str,
) -> anyhow::Result<Release> {
    let d = dir(data_dir, target, version).with_context(|| {
        format!("{version:?} / {target:?}: a version is [0-9A-Za-z.+-], a target [a-z0-9_-]")
    })?;
    let signature = signature.trim().to_ascii_lowercase();
    anyhow::ensure!(
        signature.len() == 128 && signature.bytes().all(|b| b.is_ascii_hexdigit()),
        "the signature must be 128 hex digits (strata-release sign prints it)"
    );
    anyhow::ensure!(!d.exists(), "release {version} for {target} already exists");
    let f = std::fs::File::open(binary).with_context(|| format!("opening {}", binary.display()))?;
    let (sha256, size) = strata_release::sha256_hex(f)?;
    anyhow::ensure!(size > 0, "{} is empty", binary.display());
    // Not a valid version (leading dot), so never a release's own directory.
    let tmp = d.with_file_name(format!(".adding-{version}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(binary, tmp.join("strata-agent"))?;
    let release = Release {
        version: version.into(),
        target: target.into(),
        sha256,
        size,
        signature,
    };
    std::fs::write(
        tmp.join("release.json"),
        serde_json::to_vec_pretty(&release)?,
    )?;
    std::fs::rename(&tmp, &d)?;
    Ok(release)
}

/// How long pages reuse the release list.
const CATALOG_TTL: Duration = Duration::from_secs(5);

/// The release list for pages, read from disk at most every few seconds:
/// the sender page is a hot path, and releases are added by another
/// process (`strata-relay release add`), so there is no change to hear of.
#[derive(Default)]
pub struct Catalog(Mutex<Option<(Instant, Arc<Vec<Release>>)>>);

impl Catalog {
    /// The releases in `data_dir`, at most [`CATALOG_TTL`] old.
    pub fn list(&self, data_dir: &Path) -> Arc<Vec<Release>> {
        let mut cached = self.0.lock().expect("release catalog");
        match &*cached {
            Some((at, list)) if at.elapsed() < CATALOG_TTL => list.clone(),
            _ => {
                let list = Arc::new(list(data_dir));
                *cached = Some((Instant::now(), list.clone()));
                list
            }
        }
    }
}

/// Every release, newest version first within each target.
pub fn list(data_dir: &Path) -> Vec<Release> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(data_dir.join("releases")) else {
        return out;
    };
    for t in targets.flatten() {
        let Ok(versions) = std::fs::read_dir(t.path()) else {
            continue;
        };
        for v in versions.flatten() {
            let (Some(target), Some(version)) = (
                t.file_name().to_str().map(String::from),
                v.file_name().to_str().map(String::from),
            ) else {
                continue;
            };
            if let Some(r) = get(data_dir, &target, &version) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| {
        a.target
            .cmp(&b.target)
            .then_with(|| strata_release::compare_versions(&b.version, &a.version))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_get() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::write(&bin, b"agent").unwrap();
        let sig = "ab".repeat(64);
        let r = add(tmp.path(), "0.9.1", "x86_64-unknown-linux-gnu", &bin, &sig).unwrap();
        assert_eq!(r.size, 5);
        add(tmp.path(), "0.10.0", "x86_64-unknown-linux-gnu", &bin, &sig).unwrap();
        assert!(add(tmp.path(), "0.10.0", "x86_64-unknown-linux-gnu", &bin, &sig).is_err());
        assert!(add(tmp.path(), "../x", "x86_64-unknown-linux-gnu", &bin, &sig).is_err());
        assert!(add(tmp.path(), "1.0", "../etc", &bin, &sig).is_err());
        assert!(add(tmp.path(), "1.0", "t", &bin, "short").is_err());
        let versions: Vec<_> = list(tmp.path()).into_iter().map(|r| r.version).collect();
        assert_eq!(versions, ["0.10.0", "0.9.1"]);
        assert_eq!(
            get(tmp.path(), "x86_64-unknown-linux-gnu", "0.9.1"),
            Some(r)
        );
        assert!(binary(tmp.path(), "x86_64-unknown-linux-gnu", "0.9.1").is_some());
        assert!(binary(tmp.path(), "x86_64-unknown-linux-gnu", "..").is_none());
    }
}

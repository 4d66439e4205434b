//! Download, verification, staging and commit against a loopback HTTP
//! server that can lie (truncate, serve other bytes).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const BINARY: &[u8] = b"#!/bin/sh\necho new agent\n";

struct Fixture {
    _tmp: tempfile::TempDir,
    cfg: AgentConfig,
    key: strata_release::SigningKey,
}

fn fixture() -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = strata_release::SigningKey::generate().unwrap();
    let key_file = tmp.path().join("release.pub");
    std::fs::write(&key_file, key.public_hex()).unwrap();
    let mut cfg: AgentConfig = toml::from_str("relay_url = \"https://relay.example\"").unwrap();
    cfg.data_dir = tmp.path().join("data");
    cfg.update.public_key_file = Some(key_file);
    Fixture {
        _tmp: tmp,
        cfg,
        key,
    }
}

/// Serves one response: `declared` as Content-Length, then `body`, then closes.
async fn serve_once(body: Vec<u8>, declared: usize) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        s.shutdown().await.unwrap();
    });
    format!("http://{addr}/agent/releases/x/0.2.0/strata-agent")
}

fn job(f: &Fixture, url: String, version: &str, bytes: &[u8]) -> Job {
    let (sha, _) = strata_release::sha256_hex(bytes).unwrap();
    Job {
        version: version.into(),
        url,
        signature: f.key.sign(version, strata_release::TARGET, &sha).unwrap(),
        sha256: sha,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn nothing_staged(f: &Fixture) {
    let d = dir(&f.cfg.data_dir);
    assert!(!d.join("trial").exists(), "nothing staged");
    assert!(!d.join("download.part").exists(), "no partial file left");
}

#[tokio::test]
async fn a_signed_release_is_staged_with_progress() {
    let f = fixture();
    let url = serve_once(BINARY.to_vec(), BINARY.len()).await;
    let j = job(&f, url, "0.2.0", BINARY);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    fetch(&http(), &f.cfg, &j, &move |p| s2.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&100));
    let trial = dir(&f.cfg.data_dir).join("trial");
    assert_eq!(std::fs::read(trial.join("strata-agent")).unwrap(), BINARY);
    let key = trusted_key(&f.cfg).unwrap();
    assert_eq!(check(&key, &trial).unwrap().version, "0.2.0");
    // Tampering after staging is caught before launch.
    std::fs::write(trial.join("strata-agent"), b"#!/bin/sh\necho evil\n").unwrap();
    assert!(check(&key, &trial).unwrap_err().contains("changed"));
}

#[tokio::test]
async fn a_truncated_download_is_refused() {
    let f = fixture();
    let url = serve_once(BINARY[..10].to_vec(), BINARY.len()).await;
    let j = job(&f, url, "0.2.0", BINARY);
    let err = fetch(&http(), &f.cfg, &j, &|_| {}).await.unwrap_err();
    assert!(
        err.contains("interrupted") || err.contains("truncated"),
        "{err}"
    );
    nothing_staged(&f);
}

#[tokio::test]
async fn other_bytes_than_described_are_refused() {
    let f = fixture();
    let url = serve_once(b"something else".to_vec(), 14).await;
    let j = job(&f, url, "0.2.0", BINARY);
    let err = fetch(&http(), &f.cfg, &j, &|_| {}).await.unwrap_err();
    assert!(err.contains("SHA-256"), "{err}");
    nothing_staged(&f);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let f = fixture();
    let url = serve_once(BINARY.to_vec(), BINARY.len()).await;
    let mut j = job(&f, url, "0.2.0", BINARY);
    // Signed for another version: relabelling a release does not verify.
    let (sha, _) = strata_release::sha256_hex(BINARY).unwrap();
    j.signature = f.key.sign("0.1.9", strata_release::TARGET, &sha).unwrap();
    let err = fetch(&http(), &f.cfg, &j, &|_| {}).await.unwrap_err();
    assert!(err.contains("signature"), "{err}");
    nothing_staged(&f);
}

#[tokio::test]
async fn an_oversized_release_is_refused() {
    let mut f = fixture();
    f.cfg.update.max_bytes = 8;
    let url = serve_once(BINARY.to_vec(), BINARY.len()).await;
    let j = job(&f, url, "0.2.0", BINARY);
    let err = fetch(&http(), &f.cfg, &j, &|_| {}).await.unwrap_err();
    assert!(err.contains("larger"), "{err}");
    nothing_staged(&f);
}

#[tokio::test]
async fn without_a_key_nothing_is_fetched() {
    let mut f = fixture();
    f.cfg.update.public_key_file = None;
    if BAKED_KEY.is_none() {
        let j = job(&f, "http://127.0.0.1:9/x".into(), "0.2.0", BINARY);
        let err = fetch(&http(), &f.cfg, &j, &|_| {}).await.unwrap_err();
        assert!(err.contains("release key"), "{err}");
    }
}

#[tokio::test]
async fn commit_keeps_the_previous_release() {
    let f = fixture();
    for v in ["0.2.0", "0.3.0"] {
        let url = serve_once(BINARY.to_vec(), BINARY.len()).await;
        fetch(&http(), &f.cfg, &job(&f, url, v, BINARY), &|_| {})
            .await
            .unwrap();
        assert_eq!(
            commit_trial(&f.cfg.data_dir, v).unwrap().as_deref(),
            Some(v)
        );
    }
    let d = dir(&f.cfg.data_dir);
    assert!(!d.join("trial").exists());
    let key = trusted_key(&f.cfg).unwrap();
    assert_eq!(check(&key, &d.join("installed")).unwrap().version, "0.3.0");
    assert_eq!(check(&key, &d.join("previous")).unwrap().version, "0.2.0");
    assert_eq!(
        commit_trial(&f.cfg.data_dir, "0.3.0").unwrap(),
        None,
        "nothing to commit"
    );
}

#[test]
fn versions_compare_as_numbers() {
    assert!(is_newer("0.10.0", "0.9.1"));
    assert!(is_newer("1.0.1", "1.0.0"));
    assert!(!is_newer("1.0.0", "1.0.0"));
    assert!(!is_newer("0.9.9", "0.10.0"));
}

#[tokio::test]
async fn an_interrupted_commit_brings_the_previous_release_back() {
    let f = fixture();
    for v in ["0.2.0", "0.3.0"] {
        let url = serve_once(BINARY.to_vec(), BINARY.len()).await;
        fetch(&http(), &f.cfg, &job(&f, url, v, BINARY), &|_| {})
            .await
            .unwrap();
        commit_trial(&f.cfg.data_dir, v).unwrap();
    }
    let d = dir(&f.cfg.data_dir);
    // Power lost after installed → previous, before trial → installed.
    std::fs::rename(d.join("installed"), d.join("trial")).unwrap();
    launcher::recover(&d);
    let key = trusted_key(&f.cfg).unwrap();
    assert_eq!(check(&key, &d.join("installed")).unwrap().version, "0.2.0");
    // Nothing to do when installed is there.
    launcher::recover(&d);
    assert_eq!(check(&key, &d.join("installed")).unwrap().version, "0.2.0");
}

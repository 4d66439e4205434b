//! The worker end to end: bonded RIST in from a real sender, out to nginx-rtmp,
//! HLS and recordings, checked with ffprobe.

mod support;

use std::time::Duration;

use support::{Feeder, Nginx, Worker, decodes_cleanly, free_tcp_port, pattern, probe};

#[test]
fn rtmp_to_nginx_and_recording_with_stop() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&dir.path().join("nginx"), free_tcp_port());
    let rec = dir.path().join("rec");
    let outputs = format!(
        r#"[{{"id":"yt","url":"rtmp://127.0.0.1:{}/live/secretkey"}},{{"id":"rec","url":"record://{}"}}]"#,
        nginx.port,
        rec.display()
    );
    let mut w = Worker::start(dir.path(), 2, &outputs, &[]);
    let feeder = Feeder::start(&w.ports, pattern(8), false);
    feeder.finish();
    let stats = w.latest_stats();
    assert_eq!(stats["outputs"][0]["state"], "live", "{stats}");
    assert!(
        !stats.to_string().contains("secretkey"),
        "stream key leaked into stats"
    );
    w.send(r#"{"cmd":"stop"}"#);
    let stopped = w
        .wait_event("stopped", Duration::from_secs(15))
        .expect("stopped event");
    assert_eq!(stopped["reason"], "stop");
    assert!(w.proc.0.wait().unwrap().success());

    let flv = nginx.recordings();
    assert_eq!(flv.len(), 1, "{flv:?}");
    let (codecs, dur) = probe(&flv[0]);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{codecs:?}"
    );
    assert!((6.5..=9.0).contains(&dur), "nginx recorded {dur} s of 8");

    let files: Vec<_> = std::fs::read_dir(&rec)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (codecs, dur) = probe(&files[0]);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{codecs:?}"
    );
    assert!((6.5..=9.0).contains(&dur), "recording is {dur} s of 8");
    assert!(decodes_cleanly(&files[0]));
}

#[test]
fn bad_destination_is_an_error_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-receiver"))
        .args([
            "--stream-id",
            "s",
            "--ports",
            "0",
            "--bind",
            "127.0.0.1",
            "--forward-to",
            "gopher://x/y",
        ])
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported destination scheme"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-receiver"))
        .args(["--stream-id", "s", "--ports", "0", "--bind", "127.0.0.1"])
        .args(["--forward-to", "rtmp://127.0.0.1/live/key"])
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must not be on the command line") && !err.contains("key\""),
        "{err}"
    );
}

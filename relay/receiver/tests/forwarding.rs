//! The worker end to end: bonded RIST in from a real sender, out to nginx-rtmp,
//! HLS and recordings, checked with ffprobe.

mod support;

use std::time::Duration;

use support::{Feeder, Nginx, Worker, decode, free_tcp_port, pattern, probe, starts_on_keyframe};

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
    // The first 8 s of the pattern (2 Mbit/s).
    let feeder = Feeder::start(&w.ports, &pattern(45)[..1520 * 1316], false);
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
    if let Err(e) = decode(&files[0]) {
        panic!("{:?} does not decode: {e}", &files[0])
    }
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

#[test]
fn one_rtmp_destination_going_away_does_not_touch_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let a = Nginx::start(&dir.path().join("a"), free_tcp_port());
    let mut b = Nginx::start(&dir.path().join("b"), free_tcp_port());
    let outputs = format!(
        r#"[{{"id":"a","url":"rtmp://127.0.0.1:{}/live/ka"}},{{"id":"b","url":"rtmp://127.0.0.1:{}/live/kb"}}]"#,
        a.port, b.port
    );
    let mut w = Worker::start(dir.path(), 2, &outputs, &[]);
    let _feeder = Feeder::start(&w.ports, pattern(45), false);
    std::thread::sleep(Duration::from_secs(4));
    b.kill();
    std::thread::sleep(Duration::from_secs(20));
    b.restart();
    let back = std::time::Instant::now();
    let live = w.wait_for(Duration::from_secs(8), |v| {
        v["event"] == "stats"
            && v["outputs"][1]["state"] == "live"
            && v["outputs"][1]["reconnects"].as_u64() > Some(0)
    });
    let resumed_after = back.elapsed();
    assert!(live.is_some(), "output b did not come back");
    assert!(
        resumed_after <= Duration::from_secs(5),
        "b resumed after {resumed_after:?}"
    );
    std::thread::sleep(Duration::from_secs(4));
    w.stop_with_output_untouched(0);

    // a: one unbroken recording of the whole run (~30 s).
    let (_, dur) = a.only_recording();
    assert!(dur >= 26.0, "a recorded {dur} s");
    // b: the part before the outage and the part after, which starts on a keyframe.
    let rb = b.recordings();
    assert_eq!(rb.len(), 2, "{rb:?}");
    assert!(starts_on_keyframe(&rb[1]), "{:?}", rb[1]);
    let (codecs, dur) = probe(&rb[1]);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{codecs:?}"
    );
    assert!(dur >= 3.0, "b after the outage: {dur} s");
    if let Err(e) = decode(&rb[1]) {
        panic!("{:?} does not decode: {e}", &rb[1])
    }
}

#[test]
fn srt_hls_and_update_forward_while_live() {
    let dir = tempfile::tempdir().unwrap();
    let first = Nginx::start(&dir.path().join("n1"), free_tcp_port());
    let second = Nginx::start(&dir.path().join("n2"), free_tcp_port());
    let srt_port = support::free_udp_port();
    let srt_out = dir.path().join("srt.ts");
    let _listener = support::Proc(
        std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(format!("srt://127.0.0.1:{srt_port}?mode=listener&passphrase=srt-test-passphrase&pbkeylen=32"))
            .args(["-c", "copy", "-f", "mpegts"])
            .arg(&srt_out)
            .spawn()
            .unwrap(),
    );
    let hls = dir.path().join("hls");
    let outputs = format!(
        r#"[{{"id":"rtmp","url":"rtmp://127.0.0.1:{}/live/k1"}},
            {{"id":"srt","url":"srt://127.0.0.1:{srt_port}","passphrase":"srt-test-passphrase"}},
            {{"id":"hls","url":"hls://{}?segment=2&playlist=4"}}]"#,
        first.port,
        hls.display()
    );
    let mut w = Worker::start(dir.path(), 2, &outputs, &[]);
    let _feeder = Feeder::start(&w.ports, pattern(45), false);
    std::thread::sleep(Duration::from_secs(6));
    w.send(&format!(
        r#"{{"cmd":"update_forward","id":"rtmp","url":"rtmp://127.0.0.1:{}/live/k2"}}"#,
        second.port
    ));
    let ok = w
        .wait_event("ok", Duration::from_secs(5))
        .expect("ok event");
    assert!(!ok.to_string().contains("k2"), "key leaked: {ok}");
    w.send(r#"{"cmd":"update_forward","url":"rtmp://127.0.0.1:1/live/x"}"#);
    let err = w
        .wait_event("error", Duration::from_secs(5))
        .expect("ambiguous update refused");
    assert!(
        err["message"].as_str().unwrap().contains("needs an id"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(8));
    let stats = w.latest_stats();
    for o in 0..3 {
        assert_eq!(stats["outputs"][o]["state"], "live", "{stats}");
    }
    w.send(r#"{"cmd":"stop"}"#);
    w.wait_event("stopped", Duration::from_secs(15))
        .expect("stopped");

    // About 6 s before the switch and 8 s after it, less connection set-up.
    for (n, min) in [(&first, 3.0), (&second, 5.0)] {
        let r = n.recordings();
        assert_eq!(r.len(), 1, "{r:?}");
        let (codecs, dur) = probe(&r[0]);
        assert!(
            codecs.contains(&"h264".into()) && dur >= min,
            "{codecs:?} {dur}"
        );
    }
    let (codecs, dur) = probe(&srt_out);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()) && dur >= 10.0,
        "SRT: {codecs:?} {dur}"
    );
    let playlist = std::fs::read_to_string(hls.join("index.m3u8")).unwrap();
    let segments: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!((2..=5).contains(&segments.len()), "{playlist}");
    for (i, s) in segments.iter().enumerate() {
        let p = hls.join(s);
        // The newest segment was cut by the stop, mid-frame; the others are whole.
        if i + 1 < segments.len()
            && let Err(e) = decode(&p)
        {
            panic!("{:?} does not decode: {e}", &p)
        }
        assert!(probe(&p).1 > 0.0, "{s} is not playable");
        assert!(starts_on_keyframe(&p), "{s} does not start on a keyframe");
    }
    // Old segments are removed: at most playlist + 2 files on disk.
    let on_disk = std::fs::read_dir(&hls)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "ts")
        })
        .count();
    assert!(on_disk <= 6, "{on_disk} segments on disk");
}

#[test]
fn wrong_psk_is_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let mut w = Worker::start(
        dir.path(),
        1,
        &format!(r#"[{{"id":"r","url":"record://{}"}}]"#, rec.display()),
        &[],
    );
    let _feeder =
        Feeder::start_with_psk(&w.ports, pattern(45), false, "not the stream's passphrase");
    let err = w
        .wait_for(Duration::from_secs(10), |v| v["event"] == "error")
        .expect("error event");
    assert!(err["message"].as_str().unwrap().contains("PSK"), "{err}");
}

#[test]
fn sigterm_finalises_the_recording_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let mut w = Worker::start(
        dir.path(),
        2,
        &format!(
            r#"[{{"id":"r","url":"record://{}?rotate=3"}}]"#,
            rec.display()
        ),
        &[],
    );
    let _feeder = Feeder::start(&w.ports, pattern(45), false);
    std::thread::sleep(Duration::from_secs(8));
    let pid = w.proc.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped = w
        .wait_event("stopped", Duration::from_secs(15))
        .expect("stopped");
    assert_eq!(stopped["reason"], "signal");
    assert!(w.proc.0.wait().unwrap().success());
    let mut files: Vec<_> = std::fs::read_dir(&rec)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "rotated by duration: {files:?}");
    for f in &files {
        if let Err(e) = decode(f) {
            panic!("{:?} does not decode: {e}", f)
        }
    }
    let total: f64 = files.iter().map(|f| probe(f).1).sum();
    assert!(total >= 5.0, "{total} s recorded");
}

#[test]
fn h265_goes_to_recordings_and_is_refused_for_rtmp() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&dir.path().join("n"), free_tcp_port());
    let rec = dir.path().join("rec");
    let outputs = format!(
        r#"[{{"id":"yt","url":"rtmp://127.0.0.1:{}/live/k"}},{{"id":"rec","url":"record://{}"}}]"#,
        nginx.port,
        rec.display()
    );
    let mut w = Worker::start(dir.path(), 2, &outputs, &[]);
    let _feeder = Feeder::start(&w.ports, support::pattern_hevc(45), false);
    let err = w
        .wait_for(Duration::from_secs(10), |v| v["event"] == "error")
        .expect("error event");
    assert_eq!(err["output"], "yt", "{err}");
    assert!(err["message"].as_str().unwrap().contains("H.265"), "{err}");
    std::thread::sleep(Duration::from_secs(5));
    let stats = w.latest_stats();
    assert_eq!(stats["outputs"][0]["state"], "failed", "{stats}");
    assert_eq!(stats["outputs"][1]["state"], "live", "{stats}");
    w.send(r#"{"cmd":"stop"}"#);
    w.wait_event("stopped", Duration::from_secs(15))
        .expect("stopped");
    let files: Vec<_> = std::fs::read_dir(&rec)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1);
    let (codecs, dur) = probe(&files[0]);
    assert!(
        codecs.contains(&"hevc".into()) && dur >= 4.0,
        "{codecs:?} {dur}"
    );
    assert!(nginx.recordings().is_empty());
}

#[test]
fn no_input_raises_stalled_and_input_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    // The worker is started with --stall-after-s 3.
    let mut w = Worker::start(
        dir.path(),
        1,
        &format!(r#"[{{"id":"r","url":"record://{}"}}]"#, rec.display()),
        &[],
    );
    let stalled = w
        .wait_event("stalled", Duration::from_secs(8))
        .expect("stalled event");
    assert!(stalled["seconds"].as_u64() >= Some(3), "{stalled}");
    let _feeder = Feeder::start(&w.ports, pattern(45), false);
    w.wait_event("resumed", Duration::from_secs(8))
        .expect("resumed event");
}

#[test]
fn a_secrets_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        r#"{"psk": "receiver test passphrase", "outputs": []}"#,
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-receiver"))
        .args(["--stream-id", "s", "--ports", "0", "--bind", "127.0.0.1"])
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .arg("--secrets-file")
        .arg(&secrets)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by others") && !err.contains("passphrase"),
        "{err}"
    );
}

#[test]
fn outputs_are_added_and_removed_while_live() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let added = dir.path().join("added");
    let mut w = Worker::start(
        dir.path(),
        2,
        &format!(r#"[{{"id":"first","url":"record://{}"}}]"#, first.display()),
        &[],
    );
    let _feeder = Feeder::start(&w.ports, pattern(45), false);
    std::thread::sleep(Duration::from_secs(3));
    w.send(&format!(
        r#"{{"cmd":"add_output","id":"added","url":"record://{}"}}"#,
        added.display()
    ));
    w.wait_event("ok", Duration::from_secs(5))
        .expect("add acknowledged");
    w.send(r#"{"cmd":"add_output","id":"added","url":"record:///tmp/x"}"#);
    let dup = w
        .wait_event("error", Duration::from_secs(5))
        .expect("duplicate id refused");
    assert!(dup["message"].as_str().unwrap().contains("exists"), "{dup}");
    w.send(r#"{"cmd":"add_output","id":"bad","url":"gopher://x/y"}"#);
    let bad = w
        .wait_event("error", Duration::from_secs(5))
        .expect("bad scheme refused");
    assert!(bad["message"].as_str().unwrap().contains("scheme"), "{bad}");
    std::thread::sleep(Duration::from_secs(4));
    w.send(r#"{"cmd":"remove_output","id":"added"}"#);
    let removed = w
        .wait_event("ok", Duration::from_secs(10))
        .expect("remove acknowledged");
    assert!(
        removed["message"].as_str().unwrap().contains("removed"),
        "{removed}"
    );
    let stats = w.latest_stats();
    assert_eq!(stats["outputs"].as_array().unwrap().len(), 1, "{stats}");
    w.send(&format!(
        r#"{{"cmd":"stats","pad":"{}"}}"#,
        "x".repeat(70_000)
    ));
    let long = w
        .wait_event("error", Duration::from_secs(5))
        .expect("long line refused");
    assert!(
        long["message"].as_str().unwrap().contains("too long"),
        "{long}"
    );
    // The control connection was closed after the long line; stop by signal.
    let pid = w.proc.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(w.proc.0.wait().unwrap().success());
    for d in [&first, &added] {
        let files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(files.len(), 1, "{d:?}: {files:?}");
        let (codecs, dur) = probe(&files[0]);
        assert!(
            codecs.contains(&"h264".into()) && dur >= 3.0,
            "{d:?}: {codecs:?} {dur}"
        );
    }
}

//! Real peers for the receiver's end-to-end tests: nginx with the RTMP module,
//! a bonded sender fed with an ffmpeg-made pattern, and the worker process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_rist::ts::{DATAGRAM_PAYLOAD, Pacer};
use strata_rist::{BondedSender, LinkSpec, Psk, SenderConfig};

pub const PSK: &str = "receiver test passphrase";

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A child process killed on drop.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An H.264 + AAC TS pattern of `secs` seconds, made once per binary.
pub fn pattern(secs: u32) -> &'static [u8] {
    static TS: OnceLock<Vec<u8>> = OnceLock::new();
    TS.get_or_init(|| make_pattern(secs, "libx264"))
}

/// The same pattern in H.265.
pub fn pattern_hevc(secs: u32) -> &'static [u8] {
    static TS: OnceLock<Vec<u8>> = OnceLock::new();
    TS.get_or_init(|| make_pattern(secs, "libx265"))
}

fn make_pattern(secs: u32, encoder: &str) -> Vec<u8> {
    {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("rx-pattern-{secs}-{encoder}.ts"));
        if !path.exists() {
            let tmp = path.with_extension(format!("{}.tmp.ts", std::process::id()));
            let st = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-y"])
                .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
                .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
                .args([
                    "-t",
                    &secs.to_string(),
                    "-c:v",
                    encoder,
                    "-preset",
                    "ultrafast",
                    "-b:v",
                    "1500k",
                ])
                .args(["-maxrate", "1500k", "-bufsize", "750k", "-g", "25"])
                .args([
                    "-c:a", "aac", "-b:a", "96k", "-f", "mpegts", "-muxrate", "2000000",
                ])
                .arg(&tmp)
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::rename(&tmp, &path).unwrap();
        }
        std::fs::read(&path).unwrap()
    }
}

/// nginx with the RTMP module on its own port, recording every stream as FLV.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

impl Nginx {
    pub fn start(dir: &Path, port: u16) -> Self {
        Self::start_with_tls(dir, port, None)
    }

    /// Also terminates TLS on `tls.0` (nginx's stream module, certificate and
    /// key files `tls.1` and `tls.2`) in front of the RTMP port, as RTMPS
    /// ingests are commonly run.
    pub fn start_with_tls(dir: &Path, port: u16, tls: Option<(u16, &Path, &Path)>) -> Self {
        std::fs::create_dir_all(dir.join("rec")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             user root;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\nevents {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record all; record_path {d}/rec; record_unique on; }} }} }}\n",
            d = dir.display()
        );
        let conf = match tls {
            None => conf,
            Some((tls_port, cert, key)) => format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{conf}\
                 stream {{ server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {};\n\
                 ssl_certificate_key {}; proxy_pass 127.0.0.1:{port}; }} }}\n",
                cert.display(),
                key.display()
            ),
        };
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut me = Self {
            port,
            dir: dir.to_path_buf(),
            proc: None,
        };
        me.restart();
        me
    }

    pub fn restart(&mut self) {
        let child = Command::new("nginx")
            .args([
                "-p",
                &self.dir.display().to_string(),
                "-c",
                &self.dir.join("nginx.conf").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx installed by scripts/setup");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops nginx at once (SIGTERM to the master, which takes its workers down).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc_kill(p.0.id() as i32, 15) };
            let _ = p.0.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The one recording nginx made (a stream without a break), and its length in s.
    pub fn only_recording(&self) -> (PathBuf, f64) {
        let r = self.recordings();
        assert_eq!(r.len(), 1, "one recording without a break: {r:?}");
        let dur = probe(&r[0]).1;
        (r[0].clone(), dur)
    }

    /// The recorded FLV files, oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(self.dir.join("rec"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running strata-receiver with a control connection.
pub struct Worker {
    pub proc: Proc,
    pub ports: Vec<u16>,
    control: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Worker {
    /// Starts the worker with `outputs` (JSON array) in a 0600 secrets file.
    pub fn start(dir: &Path, nports: usize, outputs: &str, extra: &[&str]) -> Self {
        Self::start_env(dir, nports, outputs, extra, &[])
    }

    /// The same, with extra environment variables for the worker.
    pub fn start_env(
        dir: &Path,
        nports: usize,
        outputs: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        let ports: Vec<u16> = (0..nports).map(|_| free_udp_port()).collect();
        let secrets = dir.join("secrets.json");
        std::fs::write(
            &secrets,
            format!("{{\"psk\": \"{PSK}\", \"outputs\": {outputs}}}"),
        )
        .unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sock = dir.join("control.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_strata-receiver"))
            .args([
                "--stream-id",
                "str_test",
                "--bind",
                "127.0.0.1",
                "--stall-after-s",
                "3",
            ])
            .arg("--ports")
            .arg(
                ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--control-socket")
            .arg(&sock)
            .arg("--secrets-file")
            .arg(&secrets)
            .args(extra)
            .envs(env.iter().copied())
            // STRATA_TEST_VERBOSE=1 shows the worker's log.
            .stderr(if std::env::var_os("STRATA_TEST_VERBOSE").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let proc = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            assert!(Instant::now() < deadline, "control socket never appeared");
            std::thread::sleep(Duration::from_millis(50));
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let writer = stream.try_clone().unwrap();
        let mut w = Self {
            proc,
            ports,
            control: BufReader::new(stream),
            writer,
        };
        w.wait_event("ready", Duration::from_secs(10))
            .expect("ready event");
        w
    }

    /// Next event of `kind`, skipping others.
    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> Option<Value> {
        self.wait_for(timeout, |v| v["event"] == kind)
    }

    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            match self.control.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && pred(&v)
                    {
                        return Some(v);
                    }
                }
                Err(_) => {}
            }
        }
        None
    }

    /// The newest stats event after asking for one (older queued ones are skipped).
    pub fn latest_stats(&mut self) -> Value {
        self.send(r#"{"cmd":"stats"}"#);
        let mut last = None;
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            if let Some(v) = self.wait_for(until - Instant::now(), |v| v["event"] == "stats") {
                last = Some(v);
            }
        }
        last.expect("a stats event")
    }

    pub fn send(&mut self, cmd: &str) {
        writeln!(self.writer, "{cmd}").unwrap();
    }

    /// Asserts that output `i` never reconnected nor dropped anything, then
    /// stops the worker and waits for its `stopped` event.
    pub fn stop_with_output_untouched(&mut self, i: usize) {
        let stats = self.latest_stats();
        assert_eq!(stats["outputs"][i]["reconnects"], 0, "{stats}");
        assert_eq!(stats["outputs"][i]["dropped"], 0, "{stats}");
        self.send(r#"{"cmd":"stop"}"#);
        self.wait_event("stopped", Duration::from_secs(15))
            .expect("stopped");
    }
}

/// A bonded sender to the worker's ports, fed from `data` at 2 Mbit/s (looping).
pub struct Feeder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    pub fn start(ports: &[u16], data: &'static [u8], looping: bool) -> Self {
        Self::start_with_psk(ports, data, looping, PSK)
    }

    pub fn start_with_psk(ports: &[u16], data: &'static [u8], looping: bool, psk: &str) -> Self {
        let links = ports
            .iter()
            .enumerate()
            .map(|(i, p)| LinkSpec::new(format!("l{i}"), format!("127.0.0.1:{p}").parse().unwrap()))
            .collect();
        let cfg = SenderConfig {
            psk: Some(Psk::new(psk).unwrap()),
            ..Default::default()
        };
        let mut tx = BondedSender::new(cfg, links).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut pacer = Pacer::new(2000.0);
            let whole = data.len() / DATAGRAM_PAYLOAD * DATAGRAM_PAYLOAD;
            let mut i = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if !looping && i * DATAGRAM_PAYLOAD >= whole {
                    break;
                }
                let c = &data[(i * DATAGRAM_PAYLOAD) % whole..][..DATAGRAM_PAYLOAD];
                pacer.wait(c.len());
                tx.send(c).unwrap();
                i += 1;
            }
            tx.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// ffprobe's view of a file: (codec names, duration in seconds).
pub fn probe(path: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let codecs = v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["codec_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let dur = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codecs, dur)
}

/// Decodes every frame of a file: `Ok` when ffmpeg reports no error, else its complaint.
pub fn decode(path: &Path) -> Result<(), String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() && err.trim().is_empty() {
        Ok(())
    } else {
        Err(err)
    }
}

/// Whether the first video frame of a file is a keyframe.
pub fn starts_on_keyframe(path: &Path) -> bool {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-read_intervals",
            "%+#1",
        ])
        .args(["-show_entries", "frame=key_frame", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::trim)
        == Some("1")
}

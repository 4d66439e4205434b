//! The emulated board: `qemu-system-aarch64 -M virt` booting the image
//! `scripts/hil` made, with three NICs on restricted user networking (the
//! host reached only through `guestfwd`), a serial modem, the serial console
//! in a file, QMP to pull cables and the QEMU guest agent to reboot it and to
//! read its journal when a step fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// Host ports the VM's `guestfwd`s lead to.
pub struct HostPorts {
    /// The relay's HTTPS listener (guest 10.0.1.100:443).
    pub https: u16,
    /// The MQTT broker (guest 10.0.1.100:8883).
    pub mqtt: u16,
}

/// A running VM.
pub struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Boots the images in `images` (kernel, initramfs, root and data disks)
    /// with its sockets and logs in `dir`; the modem's AT responder must
    /// already listen on `dir/modem.sock`.
    pub fn boot(images: &Path, dir: &Path, ports: &HostPorts, bridge: &Path) -> Vm {
        for disk in ["rootfs.img", "data.img"] {
            std::fs::copy(images.join(disk), dir.join(disk)).expect("copy disk image");
        }
        let d = dir.display();
        let bridge = bridge.display();
        let mut args: Vec<String> = [
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-smp",
            "2",
            "-m",
            "1536",
            "-nographic",
            "-nodefaults",
            "-no-user-config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "-kernel".into(),
            images.join("vmlinuz").display().to_string(),
            "-initrd".into(),
            images.join("initrd.img").display().to_string(),
            "-append".into(),
            "console=ttyAMA0 root=LABEL=strata-root rw net.ifnames=0".into(),
            "-drive".into(),
            format!("if=none,file={d}/rootfs.img,format=raw,id=root"),
            "-device".into(),
            "virtio-blk-pci,drive=root".into(),
            "-drive".into(),
            format!("if=none,file={d}/data.img,format=raw,id=data"),
            "-device".into(),
            "virtio-blk-pci,drive=data".into(),
        ]);
        // Three links. Each NIC is its own slirp network that reaches the
        // host only through guestfwd: the first also carries HTTPS and MQTT.
        for i in 1..=3 {
            let mut netdev = format!(
                "user,id=net{i},net=10.0.{i}.0/24,restrict=on,\
                 guestfwd=tcp:10.0.{i}.100:9000-cmd:python3 {bridge} host"
            );
            if i == 1 {
                netdev.push_str(&format!(
                    ",guestfwd=tcp:10.0.1.100:443-cmd:socat - TCP:127.0.0.1:{},\
                     guestfwd=tcp:10.0.1.100:8883-cmd:socat - TCP:127.0.0.1:{}",
                    ports.https, ports.mqtt
                ));
            }
            args.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!("virtio-net-pci,netdev=net{i},romfile="),
            ]);
        }
        args.extend([
            "-chardev".into(),
            format!("socket,id=modem,path={d}/modem.sock,reconnect=1"),
            "-device".into(),
            "pci-serial,chardev=modem".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("socket,id=qga,path={d}/qga.sock,server=on,wait=off"),
            "-device".into(),
            "virtserialport,chardev=qga,name=org.qemu.guest_agent.0".into(),
            "-chardev".into(),
            format!("file,id=console,path={d}/console.log"),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!("unix:{d}/qmp.sock,server=on,wait=off"),
            "-monitor".into(),
            "none".into(),
        ]);
        let log = std::fs::File::create(dir.join("qemu.log")).unwrap();
        let child = Command::new("qemu-system-aarch64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu-system-aarch64 (scripts/hil installs it)");
        Vm {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        let raw = std::fs::read(self.dir.join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// The console's last lines and QEMU's own log, for a failure message.
    pub fn report(&self) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        let qemu = std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
        // The sender's "no link has answered" warnings would fill the tail.
        let journal = self
            .exec(
                "journalctl -b --no-pager -o short-monotonic | grep -v 'held datagram' | tail -n 150",
                30,
            )
            .unwrap_or_else(|e| format!("(no journal: {e})"));
        let modem = std::fs::read_to_string(self.dir.join("modem.log")).unwrap_or_default();
        let modem: Vec<&str> = modem.lines().collect();
        let modem = modem[modem.len().saturating_sub(40)..].join("\n");
        format!(
            "--- serial console ({}), last 60 lines ---\n{tail}\n--- guest journal ---\n{journal}\n\
             --- AT modem, last 40 commands ---\n{modem}\n--- qemu ---\n{qemu}",
            self.dir.join("console.log").display()
        )
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One QMP command.
    pub fn qmp(&self, cmd: &str, args: Value) -> Result<Value, String> {
        let conn = UnixStream::connect(self.dir.join("qmp.sock")).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut w = conn.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?; // greeting
        for msg in [
            json!({"execute": "qmp_capabilities"}),
            json!({"execute": cmd, "arguments": args}),
        ] {
            writeln!(w, "{msg}").map_err(|e| e.to_string())?;
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
                if v.get("event").is_some() {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                if msg["execute"] == cmd {
                    return Ok(v["return"].clone());
                }
                break;
            }
        }
        Err("no answer".into())
    }

    /// Pulls or plugs NIC `i` (1-based) like a cable.
    pub fn set_link(&self, i: usize, up: bool) {
        self.qmp("set_link", json!({"name": format!("net{i}"), "up": up}))
            .expect("QMP set_link");
    }

    fn qga(&self, cmd: Value, secs: u64) -> Result<Value, String> {
        let conn = UnixStream::connect(self.dir.join("qga.sock")).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(secs))).ok();
        let mut w = conn.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(conn);
        // guest-sync flushes whatever an earlier, abandoned client left behind.
        static SYNC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = u64::from(std::process::id()) << 32
            | SYNC.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        writeln!(
            w,
            "{}",
            json!({"execute": "guest-sync", "arguments": {"id": id}})
        )
        .map_err(|e| e.to_string())?;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("guest agent closed".into());
            }
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["return"] == json!(id)) {
                break;
            }
        }
        writeln!(w, "{cmd}").map_err(|e| e.to_string())?;
        if cmd["execute"] == "guest-shutdown" {
            return Ok(Value::Null); // it answers by going away
        }
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match v.get("error") {
            Some(e) => Err(e.to_string()),
            None => Ok(v["return"].clone()),
        }
    }

    /// Runs a shell command in the guest as root; its stdout and stderr.
    /// Retries while the guest agent is not up yet (it starts late in boot).
    pub fn exec(&self, script: &str, secs: u64) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match self.exec_once(script, secs) {
                Ok(out) => return Ok(out),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    fn exec_once(&self, script: &str, secs: u64) -> Result<String, String> {
        let started = self.qga(
            json!({"execute": "guest-exec", "arguments": {
                "path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}),
            5,
        )?;
        let pid = started["pid"].clone();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let st = self.qga(
                json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
                5,
            )?;
            if st["exited"] == true {
                let text = |k: &str| {
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(st[k].as_str().unwrap_or_default())
                        .unwrap_or_default();
                    String::from_utf8_lossy(&b).into_owned()
                };
                return Ok(format!("{}{}", text("out-data"), text("err-data")));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("`{script}` still running after {secs} s"))
    }

    /// A clean reboot, as `systemctl reboot` in the guest.
    pub fn reboot(&self) -> Result<(), String> {
        self.qga(
            json!({"execute": "guest-shutdown", "arguments": {"mode": "reboot"}}),
            5,
        )
        .map(|_| ())
    }
}

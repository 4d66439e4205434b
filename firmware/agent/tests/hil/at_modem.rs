//! A cellular modem at the hardware edge of the QEMU test: it answers the AT
//! commands ModemManager's generic plugin sends over the VM's serial port
//! (QEMU `pci-serial` wired to this Unix socket), so the real ModemManager in
//! the guest reports a modem with IMEI, SIM, operator and signal.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// IMEI the modem reports (a valid Luhn check digit).
pub const IMEI: &str = "356938035643809";
/// Operator name it is registered with.
pub const OPERATOR: &str = "Strata Mobile";
/// Its MCC/MNC.
pub const OPERATOR_CODE: &str = "24001";

/// The listening modem; QEMU connects to it.
pub struct AtModem {
    /// Every command line received, for failure messages.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl AtModem {
    /// Listens on `path`; every connection (QEMU reconnects after a reset)
    /// gets a fresh modem. The dialogue is also written to `log`.
    pub fn listen(path: &Path, log_path: &Path) -> AtModem {
        let listener = UnixListener::bind(path).expect("AT modem socket");
        let file = Arc::new(Mutex::new(
            std::fs::File::create(log_path).expect("AT modem log"),
        ));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                let file = file.clone();
                let _ = writeln!(file.lock().unwrap(), "-- connected");
                std::thread::spawn(move || {
                    let mut state = State::default();
                    let mut line = Vec::new();
                    let mut buf = [0u8; 512];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        for &b in &buf[..n] {
                            if b == b'\r' || b == b'\n' {
                                if line.is_empty() {
                                    continue;
                                }
                                let cmd = String::from_utf8_lossy(&line).trim().to_string();
                                line.clear();
                                log.lock().unwrap().push(cmd.clone());
                                let reply = state.answer(&cmd);
                                let _ = writeln!(
                                    file.lock().unwrap(),
                                    "{cmd} -> {}",
                                    reply.split_whitespace().collect::<Vec<_>>().join(" ")
                                );
                                if conn.write_all(reply.as_bytes()).is_err() {
                                    return;
                                }
                            } else {
                                line.push(b);
                            }
                        }
                    }
                });
            }
        });
        AtModem { seen }
    }
}

#[derive(Default)]
struct State {
    /// `AT+COPS=3,<format>`: 0 long name, 2 numeric.
    cops_format: u8,
    /// `AT+CREG=<n>` and friends: how much the registration replies say.
    creg_n: u8,
}

impl State {
    /// The whole reply to one command line (`AT...;+...;+...`).
    fn answer(&mut self, line: &str) -> String {
        let upper = line.to_ascii_uppercase();
        let Some(body) = upper.strip_prefix("AT") else {
            return "\r\nERROR\r\n".into();
        };
        let mut out = String::new();
        for (i, part) in body.split(';').enumerate() {
            let cmd = if i == 0 {
                part.to_string()
            } else {
                part.trim().to_string()
            };
            match self.one(&cmd) {
                Some(lines) => {
                    for l in lines {
                        out.push_str(&format!("\r\n{l}\r\n"));
                    }
                }
                None => return "\r\nERROR\r\n".into(),
            }
        }
        out.push_str("\r\nOK\r\n");
        out
    }

    /// Information lines of one command, or None for ERROR.
    fn one(&mut self, cmd: &str) -> Option<Vec<String>> {
        let s = |v: &str| Some(vec![v.to_string()]);
        let reg = |name: &str, n: u8| {
            if n >= 2 {
                s(&format!("+{name}: {n},1,\"1A2B\",\"01A2B3C\",7"))
            } else {
                s(&format!("+{name}: {n},1"))
            }
        };
        match cmd {
            "" | "Z" | "E0" | "E1" | "V1" | "Q0" | "+CMEE=1" | "+CMEE=2" | "&F" => Some(vec![]),
            "+GCAP" => s("+GCAP: +CGSM"),
            "I" => s("Strata HIL LTE modem"),
            "+CGMI" | "+GMI" => s("Strata"),
            "+CGMM" | "+GMM" => s("HIL-LTE"),
            "+CGMR" | "+GMR" => s("HIL-1.0"),
            "+CGSN" | "+GSN" => s(IMEI),
            "+CPIN?" => s("+CPIN: READY"),
            "+CIMI" => s("240011234567890"),
            "+CCID" | "+ICCID" => s("+CCID: 89460123456789012345"),
            "+CNUM" => s("+CNUM: ,\"+46700000001\",145"),
            "+CFUN?" => s("+CFUN: 1"),
            "+CSQ" => s("+CSQ: 21,99"),
            "+CREG?" => reg("CREG", self.creg_n),
            "+CGREG?" => reg("CGREG", self.creg_n),
            "+CEREG?" => reg("CEREG", self.creg_n),
            "+COPS?" => {
                if self.cops_format == 2 {
                    s(&format!("+COPS: 0,2,\"{OPERATOR_CODE}\",7"))
                } else {
                    s(&format!("+COPS: 0,0,\"{OPERATOR}\",7"))
                }
            }
            "+CGDCONT=?" => s("+CGDCONT: (1-10),\"IP\",,,(0-2),(0-4)"),
            "+CGDCONT?" => s("+CGDCONT: 1,\"IP\",\"internet\",\"0.0.0.0\",0,0"),
            "+WS46=?" => s("+WS46: (12,22,28)"),
            "+WS46?" => s("+WS46: 28"),
            "+CGACT?" => s("+CGACT: 1,0"),
            _ => {
                if let Some(f) = cmd.strip_prefix("+COPS=3,") {
                    self.cops_format = f.parse().ok()?;
                    Some(vec![])
                } else if let Some(n) = ["+CREG=", "+CGREG=", "+CEREG="]
                    .iter()
                    .find_map(|p| cmd.strip_prefix(p))
                {
                    self.creg_n = n.parse().ok()?;
                    Some(vec![])
                } else if cmd.starts_with("+CFUN=") || cmd.starts_with("+CGDCONT=") {
                    Some(vec![])
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_commands_and_formats() {
        let mut m = State::default();
        assert_eq!(m.answer("AT"), "\r\nOK\r\n");
        assert!(m.answer("AT+COPS=3,2;+COPS?").contains("\"24001\""));
        assert!(m.answer("AT+COPS=3,0;+COPS?").contains(OPERATOR));
        assert_eq!(m.answer("AT+XYZ"), "\r\nERROR\r\n");
        assert!(m.answer("at+cgsn").contains(IMEI));
    }
}

//! What a link is to the bond: a name, where it leaves the device, where it goes.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Serialize;

/// How a link's socket is tied to its network path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkBind {
    /// Whatever route the OS picks (tests on loopback, single-homed hosts).
    Any,
    /// Leave by this interface (`SO_BINDTODEVICE`, needs CAP_NET_RAW), e.g. `wwan0`.
    Interface(String),
    /// Leave from this source address (policy routing picks the modem).
    Source(IpAddr),
}

/// One link of a bond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// Name shown to the owner, e.g. the modem's interface name.
    pub name: String,
    /// Where the link leaves the device.
    pub bind: LinkBind,
    /// The receiver's address and port for this link.
    pub remote: SocketAddr,
    /// A first guess of the link's capacity; the controller corrects it.
    pub initial_kbps: Option<u32>,
}

impl LinkSpec {
    /// A link to `remote` with the OS's default route.
    pub fn new(name: impl Into<String>, remote: SocketAddr) -> Self {
        Self {
            name: name.into(),
            bind: LinkBind::Any,
            remote,
            initial_kbps: None,
        }
    }
}

/// Parses `NAME=HOST:PORT[,dev=IFACE][,src=IP][,kbps=N]`.
impl FromStr for LinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s.split_once('=').ok_or_else(|| {
            format!("link {s:?}: expected NAME=HOST:PORT[,dev=IFACE|,src=IP][,kbps=N]")
        })?;
        let mut parts = rest.split(',');
        let remote = parts.next().unwrap_or_default();
        let remote: SocketAddr = remote
            .parse()
            .map_err(|e| format!("link {name:?}: bad address {remote:?}: {e}"))?;
        let mut spec = LinkSpec::new(name, remote);
        for p in parts {
            match p.split_once('=') {
                Some(("dev", d)) if !d.is_empty() => spec.bind = LinkBind::Interface(d.into()),
                Some(("src", ip)) => {
                    spec.bind = LinkBind::Source(
                        ip.parse()
                            .map_err(|e| format!("link {name:?}: bad src {ip:?}: {e}"))?,
                    )
                }
                Some(("kbps", k)) => {
                    spec.initial_kbps = Some(
                        k.parse()
                            .map_err(|e| format!("link {name:?}: bad kbps {k:?}: {e}"))?,
                    )
                }
                _ => return Err(format!("link {name:?}: unknown option {p:?}")),
            }
        }
        if spec.name.is_empty() {
            return Err(format!("link {s:?}: empty name"));
        }
        Ok(spec)
    }
}

/// Where a link stands in the bond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Added; nothing heard back yet. Carries a token share.
    Probing,
    /// Heard from recently; carries its share of the stream.
    Up,
    /// Nothing heard back for a while; carries only duplicates, never the only copy.
    Dark,
    /// Taken out by the application.
    Removed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_specs() {
        let l: LinkSpec = "wwan0=192.0.2.1:5000,dev=wwan0,kbps=2000".parse().unwrap();
        assert_eq!(l.name, "wwan0");
        assert_eq!(l.bind, LinkBind::Interface("wwan0".into()));
        assert_eq!(l.initial_kbps, Some(2000));
        let l: LinkSpec = "a=127.0.0.1:1,src=127.0.0.2".parse().unwrap();
        assert_eq!(l.bind, LinkBind::Source("127.0.0.2".parse().unwrap()));
        assert!("nope".parse::<LinkSpec>().is_err());
        assert!("a=1.2.3.4".parse::<LinkSpec>().is_err());
        assert!(
            "a=1.2.3.4:5,colour=red"
                .parse::<LinkSpec>()
                .unwrap_err()
                .contains("unknown option")
        );
    }
}

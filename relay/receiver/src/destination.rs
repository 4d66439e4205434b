//! Where a stream goes: parsing and validating destination URLs, and showing
//! them without their secrets.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// A validated destination.
#[derive(Clone, PartialEq)]
pub enum Destination {
    /// RTMP or RTMPS ingest; the URL's last path segment is the stream key.
    Rtmp {
        /// Full URL, key included.
        url: String,
    },
    /// SRT in caller mode, MPEG-TS passthrough.
    Srt {
        /// `srt://host:port` (no passphrase in it).
        url: String,
        /// Encryption passphrase (10 to 79 bytes), if any.
        passphrase: Option<String>,
    },
    /// HLS: segments cut on keyframes and a rolling playlist in a directory.
    Hls {
        /// Output directory.
        dir: PathBuf,
        /// Target segment length.
        segment: Duration,
        /// Segments kept in the playlist (older ones are deleted).
        playlist_len: u32,
    },
    /// Recording: MPEG-TS files rotated by duration.
    Record {
        /// Output directory.
        dir: PathBuf,
        /// Length of each file.
        rotate: Duration,
    },
}

/// Why a destination was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    /// Not a URL at all.
    #[error("unparsable destination URL {0}")]
    Unparsable(String),
    /// A scheme we do not forward to.
    #[error("unsupported destination scheme {0:?} (rtmp, rtmps, srt, hls, record)")]
    Scheme(String),
    /// Something else is wrong with it.
    #[error("invalid destination {url}: {why}")]
    Invalid {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        why: String,
    },
}

/// A destination as the control plane sends it (secrets allowed here: this
/// never comes from a command line).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    /// The output's id, unique within the stream.
    pub id: String,
    /// Its URL.
    pub url: String,
    /// SRT passphrase.
    #[serde(default)]
    pub passphrase: Option<String>,
}

impl Destination {
    /// Parses a URL (plus an SRT passphrase given separately).
    pub fn parse(url: &str, passphrase: Option<&str>) -> Result<Self, DestinationError> {
        let u = Url::parse(url).map_err(|_| DestinationError::Unparsable(redact(url)))?;
        let invalid = |why: &str| DestinationError::Invalid {
            url: redact(url),
            why: why.into(),
        };
        let query = |k: &str| {
            u.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        match u.scheme() {
            "rtmp" | "rtmps" => {
                if u.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("no host"));
                }
                let segs: Vec<_> = u
                    .path_segments()
                    .map(|s| s.filter(|x| !x.is_empty()).collect())
                    .unwrap_or_default();
                if segs.len() < 2 {
                    return Err(invalid("expected rtmp://host/app/stream-key"));
                }
                Ok(Destination::Rtmp {
                    url: url.to_string(),
                })
            }
            "srt" => {
                if u.host_str().is_none_or(str::is_empty) || u.port().is_none() {
                    return Err(invalid("expected srt://host:port"));
                }
                if u.query_pairs().any(|(k, _)| k == "passphrase") {
                    return Err(invalid(
                        "give the SRT passphrase separately, not in the URL",
                    ));
                }
                if let Some(p) = passphrase
                    && !(10..=79).contains(&p.len())
                {
                    return Err(invalid("SRT passphrase must be 10 to 79 bytes"));
                }
                let clean = format!(
                    "srt://{}:{}",
                    u.host_str().unwrap_or_default(),
                    u.port().unwrap_or_default()
                );
                Ok(Destination::Srt {
                    url: clean,
                    passphrase: passphrase.map(str::to_string),
                })
            }
            "hls" | "record" => {
                let dir = PathBuf::from(u.path());
                if !dir.is_absolute() || u.path().len() < 2 {
                    return Err(invalid(
                        "expected an absolute directory, e.g. hls:///var/lib/strata/hls/s1",
                    ));
                }
                let secs = |k: &str, d: u64, max: u64| -> Result<Duration, DestinationError> {
                    match query(k) {
                        None => Ok(Duration::from_secs(d)),
                        Some(v) => match v.parse::<u64>() {
                            Ok(n) if (1..=max).contains(&n) => Ok(Duration::from_secs(n)),
                            _ => Err(invalid(&format!("{k} must be 1..={max} seconds"))),
                        },
                    }
                };
                if u.scheme() == "hls" {
                    let playlist_len = match query("playlist") {
                        None => 6,
                        Some(v) => v
                            .parse()
                            .ok()
                            .filter(|n| (2..=100).contains(n))
                            .ok_or_else(|| invalid("playlist must be 2..=100"))?,
                    };
                    Ok(Destination::Hls {
                        dir,
                        segment: secs("segment", 4, 60)?,
                        playlist_len,
                    })
                } else {
                    Ok(Destination::Record {
                        dir,
                        rotate: secs("rotate", 600, 86_400)?,
                    })
                }
            }
            other => Err(DestinationError::Scheme(other.into())),
        }
    }

    /// Whether the URL carries a secret (so it must not come from a command line).
    pub fn has_secret(&self) -> bool {
        matches!(
            self,
            Destination::Rtmp { .. }
                | Destination::Srt {
                    passphrase: Some(_),
                    ..
                }
        )
    }

    /// Whether the server accepts a TCP connection now (RTMP only; `None` for
    /// kinds that cannot be probed cheaply).
    pub fn reachable(&self) -> Option<bool> {
        let Destination::Rtmp { url } = self else {
            return None;
        };
        let u = Url::parse(url).ok()?;
        let port = u
            .port()
            .unwrap_or(if u.scheme() == "rtmps" { 443 } else { 1935 });
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(u.host_str()?, port)).ok()?;
        Some(addrs.into_iter().any(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(300)).is_ok()
        }))
    }

    /// A short kind name for stats.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Rtmp { .. } => "rtmp",
            Destination::Srt { .. } => "srt",
            Destination::Hls { .. } => "hls",
            Destination::Record { .. } => "record",
        }
    }

    /// The destination with secrets masked, for logs and events.
    pub fn redacted(&self) -> String {
        match self {
            Destination::Rtmp { url } => redact(url),
            Destination::Srt { url, passphrase } => {
                format!(
                    "{url}{}",
                    if passphrase.is_some() {
                        " (encrypted)"
                    } else {
                        ""
                    }
                )
            }
            Destination::Hls { dir, .. } => format!("hls://{}", dir.display()),
            Destination::Record { dir, .. } => format!("record://{}", dir.display()),
        }
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Masks what may be secret in a URL: the last path segment (stream key),
/// user info and the query.
pub fn redact(url: &str) -> String {
    let Ok(mut u) = Url::parse(url) else {
        return "<unparsable URL>".into();
    };
    let _ = u.set_password(None);
    let _ = u.set_username("");
    if u.query().is_some() {
        u.set_query(Some("***"));
    }
    if let Some(segs) = u.path_segments() {
        let mut segs: Vec<String> = segs.map(str::to_string).collect();
        if segs.len() >= 2
            && let Some(last) = segs.last_mut()
            && !last.is_empty()
        {
            *last = "***".into();
        }
        u.set_path(&segs.join("/"));
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            Destination::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh", None)
                .unwrap()
                .kind(),
            "rtmp"
        );
        let s = Destination::parse("srt://127.0.0.1:9000", Some("0123456789ab")).unwrap();
        assert!(s.has_secret());
        match Destination::parse("hls:///tmp/x?segment=2&playlist=5", None).unwrap() {
            Destination::Hls {
                segment,
                playlist_len,
                ..
            } => {
                assert_eq!((segment, playlist_len), (Duration::from_secs(2), 5))
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            Destination::parse("record:///tmp/r?rotate=60", None),
            Ok(Destination::Record { .. })
        ));
    }

    #[test]
    fn refuses_bad_urls_clearly() {
        use DestinationError::*;
        assert!(matches!(
            Destination::parse("not a url", None),
            Err(Unparsable(_))
        ));
        assert_eq!(
            Destination::parse("ftp://x/y/z", None),
            Err(Scheme("ftp".into()))
        );
        for bad in [
            "rtmp://host/onlyapp",
            "srt://host",
            "srt://host:1?passphrase=abcdefghijk",
            "hls://relative",
            "record:///tmp/r?rotate=0",
            "hls:///tmp/h?playlist=1",
        ] {
            assert!(
                matches!(Destination::parse(bad, None), Err(Invalid { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Destination::parse("srt://h:1", Some("short")),
            Err(Invalid { .. })
        ));
    }

    #[test]
    fn redacts_keys() {
        let d = Destination::parse("rtmp://live.twitch.tv/app/live_123_secret", None).unwrap();
        assert_eq!(d.redacted(), "rtmp://live.twitch.tv/app/***");
        assert!(!format!("{d:?}").contains("secret"));
        assert_eq!(redact("rtmp://u:p@h/app/key?x=1"), "rtmp://h/app/***?***");
    }
}

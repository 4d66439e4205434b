//! One RTMP or RTMPS connection of an RTMP output: it publishes the FLV tags
//! of the stream's shared remux (`flv.rs`). rml_rtmp does the RTMP session
//! (handshake, chunking, connect and publish commands); this module owns the
//! socket, TLS (rustls, system roots or `SSL_CERT_FILE`) and the publishing
//! loop. One blocking socket per output thread: a black-holed server blocks
//! only this thread, for at most [`WRITE_TIMEOUT`], while its queue drops.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionError, ClientSessionEvent,
    ClientSessionResult, PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use rustls::pki_types::ServerName;
use url::Url;

use crate::flv::{FlvFanout, Headers};
use crate::output::Shared;
use crate::pipeline::VideoCodec;
use crate::remux::{Tag, TagKind};

/// TCP connect, and then handshake plus connect plus publish, must each end within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(10);
/// A server that takes no data for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Kernel send buffer: about 1.2 s of a 6.5 Mbit/s stream (Linux doubles it).
const SEND_BUFFER: usize = 512 * 1024;
/// How often the server's messages (acknowledgements, pings) are read while publishing.
const READ_EVERY: Duration = Duration::from_millis(200);
/// How long tags gather before they are written (adds at most this latency).
const BATCH: Duration = Duration::from_millis(100);

/// Whether RTMP can carry this video codec.
pub(crate) fn supports(codec: VideoCodec) -> Result<(), String> {
    match codec {
        VideoCodec::H264 => Ok(()),
        VideoCodec::H265 => Err(
            "H.265 cannot be sent over RTMP here (no enhanced-RTMP support); \
                                 use SRT, HLS or a recording"
                .into(),
        ),
    }
}

/// An RTMP URL taken apart: the last path segment (and query) is the stream key.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    app: String,
    key: String,
    tc_url: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let u = Url::parse(url).map_err(|_| "unparsable RTMP URL".to_string())?;
        let tls = u.scheme() == "rtmps";
        // An IPv6 literal without its brackets, for the resolver and TLS.
        let host = match u.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        };
        let port = u.port().unwrap_or(if tls { 443 } else { 1935 });
        let path = u.path().trim_matches('/');
        let (app, key) = path
            .rsplit_once('/')
            .ok_or_else(|| "expected rtmp://host/app/stream-key".to_string())?;
        let key = match u.query() {
            Some(q) => format!("{key}?{q}"),
            None => key.to_string(),
        };
        let shown_port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(Self {
            tc_url: format!(
                "{}://{}{shown_port}/{app}",
                u.scheme(),
                u.host_str().unwrap_or_default()
            ),
            tls,
            host,
            port,
            app: app.to_string(),
            key,
        })
    }
}

/// The connection: plain TCP or TLS over it.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
        }
    }

    /// Reads what the server sent, if anything, without waiting.
    fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.tcp().set_nonblocking(true)?;
        let r = self.read(buf);
        self.tcp().set_nonblocking(false)?;
        match r {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// The TLS client setup, made once: the system's CA roots (or `SSL_CERT_FILE`).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("RTMPS: no CA certificates found (install ca-certificates, \
                            or set SSL_CERT_FILE)"
                    .into());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("RTMPS: {e}"))
        })
        .clone()
}

fn connect(t: &Target) -> Result<Conn, String> {
    let addrs: Vec<_> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", t.host))?
        .collect();
    let mut last = format!("{} has no address", t.host);
    let tcp = addrs
        .iter()
        .find_map(|a| match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => Some(s),
            Err(e) => {
                last = format!("cannot connect to {a}: {e}");
                None
            }
        })
        .ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    // A fixed send buffer (no autotuning to several MB): a slow ingest then
    // shows as a blocked write within seconds, not after a minute of backlog.
    let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER);
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    // rustls runs the TLS handshake inside the first write: bound its reads too.
    tcp.set_read_timeout(Some(NEGOTIATE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    if !t.tls {
        return Ok(Conn::Plain(tcp));
    }
    let name = ServerName::try_from(t.host.clone()).map_err(|e| format!("RTMPS: {e}"))?;
    let tls = rustls::ClientConnection::new(tls_config()?, name).map_err(|e| e.to_string())?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))))
}

/// Sends the session's packets; hands back its events. Returns bytes written.
fn apply(
    conn: &mut Conn,
    results: Vec<ClientSessionResult>,
    events: &mut Vec<ClientSessionEvent>,
) -> Result<u64, String> {
    let mut out = Vec::new();
    for r in results {
        match r {
            ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
            ClientSessionResult::RaisedEvent(e) => events.push(e),
            ClientSessionResult::UnhandleableMessageReceived(_) => {}
        }
    }
    conn.write_all(&out).map_err(write_error)?;
    conn.flush().map_err(write_error)?;
    Ok(out.len() as u64)
}

fn write_error(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("destination took no data for {} s", WRITE_TIMEOUT.as_secs())
        }
        _ => format!("write: {e}"),
    }
}

/// Reads until the server sent something or the deadline passed.
fn read_until(conn: &mut Conn, buf: &mut [u8], deadline: Instant) -> Result<usize, String> {
    let silent = || {
        format!(
            "no answer from the server within {} s",
            NEGOTIATE_TIMEOUT.as_secs()
        )
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(silent());
    }
    conn.tcp()
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    match conn.read(buf) {
        Ok(0) => Err("the server closed the connection".into()),
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(silent())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Handshake, connect to the app, publish the key: a session ready for data.
fn negotiate(conn: &mut Conn, t: &Target) -> Result<ClientSession, String> {
    let deadline = Instant::now() + NEGOTIATE_TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    let mut hs = Handshake::new(PeerType::Client);
    let p0p1 = hs
        .generate_outbound_p0_and_p1()
        .map_err(|e| format!("RTMP handshake: {e:?}"))?;
    conn.write_all(&p0p1).map_err(write_error)?;
    let rest = loop {
        let n = read_until(conn, &mut buf, deadline)?;
        match hs.process_bytes(&buf[..n]) {
            Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                conn.write_all(&response_bytes).map_err(write_error)?;
            }
            Ok(HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            }) => {
                conn.write_all(&response_bytes).map_err(write_error)?;
                break remaining_bytes;
            }
            Err(e) => return Err(format!("RTMP handshake failed: {e:?}")),
        }
    };
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(t.tc_url.clone());
    config.flash_version = "FMLE/3.0 (compatible; strata-receiver)".into();
    let session_error = |e: ClientSessionError| format!("RTMP session: {e}");
    let (mut session, first) = ClientSession::new(config).map_err(session_error)?;
    let mut events = Vec::new();
    apply(conn, first, &mut events)?;
    let r = session
        .request_connection(t.app.clone())
        .map_err(session_error)?;
    apply(conn, vec![r], &mut events)?;
    let mut input = rest;
    let mut publishing_asked = false;
    loop {
        if !input.is_empty() {
            let results = session.handle_input(&input).map_err(|e| match e {
                ClientSessionError::CreateStreamFailed => {
                    "the server refused to create a stream".to_string()
                }
                e => session_error(e),
            })?;
            apply(conn, results, &mut events)?;
        }
        for e in events.drain(..) {
            match e {
                ClientSessionEvent::ConnectionRequestAccepted if !publishing_asked => {
                    publishing_asked = true;
                    let r = session
                        .request_publishing(t.key.clone(), PublishRequestType::Live)
                        .map_err(session_error)?;
                    let mut more = Vec::new();
                    apply(conn, vec![r], &mut more)?;
                }
                ClientSessionEvent::PublishRequestAccepted => return Ok(session),
                ClientSessionEvent::ConnectionRequestRejected { description } => {
                    return Err(format!("the server refused app {:?}: {description}", t.app));
                }
                ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                    return Err(format!("the server refused to publish: {code}"));
                }
                _ => {}
            }
        }
        let n = read_until(conn, &mut buf, deadline)?;
        input = buf[..n].to_vec();
    }
}

/// What a connection does with one tag from its queue.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing: not started yet, skipping to a keyframe, or audio timed
    /// before the first keyframe.
    Skip,
    /// The first keyframe: metadata and the codec headers, then the tag, at 0.
    Open,
    /// A keyframe after a gap: the codec headers (the queue may have dropped
    /// a new one), then the tag, at this time.
    Resume(u32),
    /// The tag, at this time.
    Send(u32),
}

/// A connection's place in the stream: where its times start, the last time
/// sent per kind (kept monotonic), and whether it skips to a keyframe.
#[derive(Default)]
struct Cursor {
    base: Option<i64>,
    last: [u32; 2],
    waiting: bool,
    /// Tags in a row timed before `base`.
    behind: u32,
}

impl Cursor {
    fn step(&mut self, tag: &Tag) -> Result<Step, String> {
        let starts = tag.kind == TagKind::Video && tag.keyframe;
        let Some(base) = self.base else {
            if starts {
                self.base = Some(tag.ts_ms);
                return Ok(Step::Open);
            }
            return Ok(Step::Skip);
        };
        // Tags before this one were lost: what follows may reference them.
        self.waiting |= tag.after_gap;
        let i = usize::from(tag.kind == TagKind::Video);
        // Times only go forward on the wire.
        let ts = u32::try_from(tag.ts_ms - base)
            .unwrap_or(0)
            .max(self.last[i]);
        if tag.header {
            // Never skipped: a changed SPS or ASC must get through.
            return Ok(Step::Send(ts));
        }
        if tag.ts_ms < base {
            // Audio from before the first keyframe. The remux keeps its
            // timeline going, so this only lasts a moment; if it does not,
            // start over rather than go silent.
            self.behind += 1;
            if self.behind > 500 {
                return Err("the stream's times went back; reconnecting".into());
            }
            return Ok(Step::Skip);
        }
        if self.waiting && !starts {
            return Ok(Step::Skip);
        }
        self.behind = 0;
        self.last[i] = ts;
        if std::mem::take(&mut self.waiting) {
            Ok(Step::Resume(ts))
        } else {
            Ok(Step::Send(ts))
        }
    }
}

/// The metadata RTMP servers show (codecs, audio rate and channels).
fn metadata(h: &Headers) -> StreamMetadata {
    let mut meta = StreamMetadata::new();
    meta.video_codec_id = Some(7);
    meta.encoder = Some("strata-receiver".into());
    if let Some(a) = h.audio_info() {
        meta.audio_codec_id = Some(10);
        meta.audio_sample_rate = Some(a.rate);
        meta.audio_channels = Some(u32::from(a.channels));
        meta.audio_is_stereo = Some(a.channels == 2);
    }
    meta
}

/// Runs one RTMP connection on tags from the remux until it fails (Err) or
/// the output is stopped (Ok). It opens with metadata and the latest codec
/// headers, then starts on a keyframe with its timestamps from 0.
pub(crate) fn run(
    url: &str,
    rx: &Receiver<Tag>,
    fan: &FlvFanout,
    sh: &Shared,
) -> Result<(), String> {
    let t = Target::parse(url)?;
    let mut conn = connect(&t)?;
    let mut session = negotiate(&mut conn, &t)?;
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut next_read = Instant::now() + READ_EVERY;
    let mut cursor = Cursor::default();
    let session_error = |e: ClientSessionError| format!("RTMP session: {e}");
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            if let Ok(r) = session.stop_publishing() {
                let _ = apply(&mut conn, r, &mut events);
            }
            return Ok(());
        }
        // Tags gather for a batch: one wake-up and one write per batch, not per
        // tag, and the remux's try_send finds nobody blocked to wake.
        std::thread::sleep(BATCH);
        let mut send = Vec::new();
        loop {
            let tag = match rx.try_recv() {
                Ok(tag) => tag,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            };
            let step = cursor.step(&tag)?;
            let (headers, ts) = match step {
                Step::Skip => (None, 0),
                Step::Open => {
                    let h = fan.headers();
                    send.push(
                        session
                            .publish_metadata(&metadata(&h))
                            .map_err(session_error)?,
                    );
                    (Some(h), 0)
                }
                Step::Resume(ts) => (Some(fan.headers()), ts),
                Step::Send(ts) => (None, ts),
            };
            for hdr in headers
                .into_iter()
                .flat_map(|h| [h.video, h.audio])
                .flatten()
            {
                send.push(publish(&mut session, &hdr, ts)?);
            }
            if step != Step::Skip {
                send.push(publish(&mut session, &tag, ts)?);
            }
        }
        if !send.is_empty() {
            sh.add_bytes(apply(&mut conn, send, &mut events)?);
        }
        if Instant::now() >= next_read {
            next_read = Instant::now() + READ_EVERY;
            match conn.read_ready(&mut buf) {
                Ok(Some(0)) => return Err("the server closed the connection".into()),
                Ok(Some(n)) => {
                    let r = session.handle_input(&buf[..n]).map_err(session_error)?;
                    apply(&mut conn, r, &mut events)?;
                    for e in events.drain(..) {
                        if let ClientSessionEvent::UnhandleableOnStatusCode { code } = e {
                            tracing::debug!("server status while publishing: {code}");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

fn publish(s: &mut ClientSession, tag: &Tag, ts: u32) -> Result<ClientSessionResult, String> {
    let ts = RtmpTimestamp::new(ts);
    match tag.kind {
        TagKind::Video => s.publish_video_data(tag.body.clone(), ts, false),
        TagKind::Audio => s.publish_audio_data(tag.body.clone(), ts, false),
    }
    .map_err(|e| format!("RTMP session: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_path_segment_and_query_are_the_key() {
        let t = Target::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("a.rtmp.youtube.com", 1935, false)
        );
        assert_eq!((t.app.as_str(), t.key.as_str()), ("live2", "abcd-efgh"));
        assert_eq!(t.tc_url, "rtmp://a.rtmp.youtube.com/live2");
        let t = Target::parse("rtmps://h:4443/app/inst/key?auth=1").unwrap();
        assert_eq!((t.port, t.tls), (4443, true));
        assert_eq!((t.app.as_str(), t.key.as_str()), ("app/inst", "key?auth=1"));
        assert_eq!(t.tc_url, "rtmps://h:4443/app/inst");
        assert!(!t.tc_url.contains("key"), "the key is not in the tcUrl");
        assert!(Target::parse("rtmp://h/justapp").is_err());
        let t = Target::parse("rtmp://[::1]:1936/live/k").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 1936));
        assert_eq!(t.tc_url, "rtmp://[::1]:1936/live");
    }

    fn tag(kind: TagKind, ts_ms: i64, keyframe: bool, header: bool, after_gap: bool) -> Tag {
        Tag {
            kind,
            ts_ms,
            body: bytes::Bytes::new(),
            header,
            keyframe,
            after_gap,
        }
    }

    #[test]
    fn a_connection_opens_on_a_keyframe_and_skips_to_the_next_after_a_gap() {
        use TagKind::{Audio, Video};
        let mut c = Cursor::default();
        let steps: Vec<_> = [
            tag(Audio, 990, false, false, false), // before any keyframe
            tag(Video, 1000, false, false, false),
            tag(Video, 2000, true, false, false), // the first keyframe
            tag(Audio, 1990, false, false, false), // timed before it
            tag(Audio, 2010, false, false, false),
            tag(Video, 2033, false, false, true), // tags were lost before this
            tag(Video, 2050, false, true, false), // a new SPS: never skipped
            tag(Audio, 2060, false, false, false),
            tag(Video, 4000, true, false, false), // the next keyframe
            tag(Audio, 3990, false, false, false), // behind the video: each kind is monotonic on its own
        ]
        .iter()
        .map(|t| c.step(t).unwrap())
        .collect();
        use Step::*;
        assert_eq!(
            steps,
            [
                Skip,
                Skip,
                Open,
                Skip,
                Send(10),
                Skip,
                Send(50),
                Skip,
                Resume(2000),
                Send(1990)
            ]
        );
    }

    #[test]
    fn times_that_stay_behind_the_start_end_the_connection() {
        let mut c = Cursor::default();
        c.step(&tag(TagKind::Video, 5000, true, false, false))
            .unwrap();
        let ended =
            (0..600).find_map(|_| c.step(&tag(TagKind::Audio, 10, false, false, false)).err());
        assert!(ended.is_some_and(|e| e.contains("went back")));
    }

    #[test]
    fn h265_is_refused() {
        assert!(supports(VideoCodec::H264).is_ok());
        assert!(supports(VideoCodec::H265).unwrap_err().contains("H.265"));
    }
}

//! The running emulator: per link, a UDP relay with one task per direction that
//! receives and judges datagrams, and one that delivers them on time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Impairment, LinkConfig, SimConfig};
use crate::shaper::{DropReason, Shaper, Verdict};

/// Counters of one direction of a link.
#[derive(Debug, Default)]
struct DirectionCounters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    delivered: AtomicU64,
    bytes_delivered: AtomicU64,
    dropped_outage: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_loss: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams received from the sending side.
    pub packets_in: u64,
    /// Bytes received from the sending side.
    pub bytes_in: u64,
    /// Datagrams passed on.
    pub delivered: u64,
    /// Bytes passed on.
    pub bytes_delivered: u64,
    /// Dropped because the link was dark.
    pub dropped_outage: u64,
    /// Dropped because the bottleneck buffer was full.
    pub dropped_queue: u64,
    /// Dropped by random or burst loss.
    pub dropped_loss: u64,
}

impl DirectionCounters {
    fn snapshot(&self) -> DirectionStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirectionStats {
            packets_in: g(&self.packets_in),
            bytes_in: g(&self.bytes_in),
            delivered: g(&self.delivered),
            bytes_delivered: g(&self.bytes_delivered),
            dropped_outage: g(&self.dropped_outage),
            dropped_queue: g(&self.dropped_queue),
            dropped_loss: g(&self.dropped_loss),
        }
    }

    fn count_drop(&self, reason: DropReason) {
        let c = match reason {
            DropReason::Outage => &self.dropped_outage,
            DropReason::Queue => &self.dropped_queue,
            DropReason::Loss => &self.dropped_loss,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStats {
    /// The link's name.
    pub name: String,
    /// Its impairments right now.
    pub impairment: Impairment,
    /// Sender to receiver.
    pub uplink: DirectionStats,
    /// Receiver to sender.
    pub downlink: DirectionStats,
}

/// State shared by one link's tasks.
#[derive(Debug)]
struct Link {
    name: String,
    listen: SocketAddr,
    impairment: Mutex<Impairment>,
    /// Where the sender's datagrams came from; replies go there.
    sender: Mutex<Option<SocketAddr>>,
    uplink: DirectionCounters,
    downlink: DirectionCounters,
}

/// A running set of emulated links. Dropping it stops every relay.
#[derive(Debug)]
pub struct LinkSim {
    links: Vec<Arc<Link>>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

/// Where a direction delivers to.
#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

impl LinkSim {
    /// Binds every link's sockets and starts relaying; the timeline's t=0 is now.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<LinkSim> {
        cfg.validate()?;
        let started = Instant::now();
        let mut links = Vec::new();
        let mut tasks = Vec::new();
        for (index, lc) in cfg.links.iter().enumerate() {
            let (link, mut t) = start_link(cfg.seed, index as u64, lc, started).await?;
            links.push(link);
            tasks.append(&mut t);
        }
        Ok(LinkSim {
            links,
            tasks,
            started,
        })
    }

    /// When the timeline started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The address a sender should use for link `name`.
    pub fn listen_addr(&self, name: &str) -> Option<SocketAddr> {
        self.find(name).map(|l| l.listen)
    }

    /// Changes a link's impairments now.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut Impairment)) -> anyhow::Result<()> {
        let link = self
            .find(name)
            .ok_or_else(|| anyhow::anyhow!("no link named {name:?}"))?;
        change(&mut link.impairment.lock().expect("impairment lock"));
        Ok(())
    }

    /// Takes a link dark (`false`) or brings it back (`true`).
    pub fn set_up(&self, name: &str, up: bool) -> anyhow::Result<()> {
        self.update(name, |i| i.up = up)
    }

    /// Counters of every link, in configuration order.
    pub fn stats(&self) -> Vec<LinkStats> {
        self.links
            .iter()
            .map(|l| LinkStats {
                name: l.name.clone(),
                impairment: l.impairment.lock().expect("impairment lock").clone(),
                uplink: l.uplink.snapshot(),
                downlink: l.downlink.snapshot(),
            })
            .collect()
    }

    fn find(&self, name: &str) -> Option<&Arc<Link>> {
        self.links.iter().find(|l| l.name == name)
    }
}

impl Drop for LinkSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start_link(
    seed: u64,
    index: u64,
    lc: &LinkConfig,
    started: Instant,
) -> anyhow::Result<(Arc<Link>, Vec<JoinHandle<()>>)> {
    let front = Arc::new(
        UdpSocket::bind(lc.listen)
            .await
            .map_err(|e| anyhow::anyhow!("link {:?}: cannot bind {}: {e}", lc.name, lc.listen))?,
    );
    // The receiver sees each link from its own source port, as it would see each modem.
    let back_bind: SocketAddr = if lc.target.is_ipv4() {
        "127.0.0.1:0".parse()?
    } else {
        "[::1]:0".parse()?
    };
    let back = Arc::new(UdpSocket::bind(back_bind).await?);
    let link = Arc::new(Link {
        name: lc.name.clone(),
        listen: front.local_addr()?,
        impairment: Mutex::new(lc.impairment.clone()),
        sender: Mutex::new(None),
        uplink: DirectionCounters::default(),
        downlink: DirectionCounters::default(),
    });
    // Distinct, reproducible streams of randomness per link and direction.
    let up_seed = seed ^ (index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let down_seed = up_seed ^ 0xD1B5_4A32_D192_ED03;
    let mut tasks = Vec::new();
    for (dir, from, to, shaper) in [
        (
            Direction::Up,
            front.clone(),
            back.clone(),
            Shaper::new(up_seed, true),
        ),
        (
            Direction::Down,
            back.clone(),
            front.clone(),
            Shaper::new(down_seed, false),
        ),
    ] {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(judge(link.clone(), dir, from, shaper, tx)));
        tasks.push(tokio::spawn(deliver(link.clone(), dir, to, lc.target, rx)));
    }
    let mut events = lc.events.clone();
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let tl_link = link.clone();
    tasks.push(tokio::spawn(async move {
        for e in events {
            tokio::time::sleep_until((started + std::time::Duration::from_secs_f64(e.at_s)).into())
                .await;
            e.apply(&mut tl_link.impairment.lock().expect("impairment lock"));
            tracing::info!(link = %tl_link.name, at_s = e.at_s, event = ?e, "timeline event");
        }
    }));
    Ok((link, tasks))
}

/// Receives datagrams of one direction and decides their fate.
async fn judge(
    link: Arc<Link>,
    dir: Direction,
    sock: Arc<UdpSocket>,
    mut shaper: Shaper,
    tx: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
) {
    let counters = match dir {
        Direction::Up => &link.uplink,
        Direction::Down => &link.downlink,
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port-unreachable from a previous send surfaces here on Linux; keep going.
            Err(e) => {
                tracing::debug!(link = %link.name, "recv: {e}");
                continue;
            }
        };
        if let Direction::Up = dir {
            *link.sender.lock().expect("sender lock") = Some(from);
        }
        counters.packets_in.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        let verdict = {
            let imp = link.impairment.lock().expect("impairment lock");
            shaper.admit(&imp, Instant::now(), len)
        };
        match verdict {
            Verdict::Deliver(at) => {
                if tx.send((at, buf[..len].to_vec())).is_err() {
                    return;
                }
            }
            Verdict::Drop(reason) => counters.count_drop(reason),
        }
    }
}

/// Sends judged datagrams when their time comes.
async fn deliver(
    link: Arc<Link>,
    dir: Direction,
    sock: Arc<UdpSocket>,
    target: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) {
    let counters = match dir {
        Direction::Up => &link.uplink,
        Direction::Down => &link.downlink,
    };
    while let Some((at, data)) = rx.recv().await {
        tokio::time::sleep_until(at.into()).await;
        let dest = match dir {
            Direction::Up => Some(target),
            Direction::Down => *link.sender.lock().expect("sender lock"),
        };
        let Some(dest) = dest else { continue };
        if sock.send_to(&data, dest).await.is_ok() {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_delivered
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(target: SocketAddr, extra: &str) -> SimConfig {
        SimConfig::from_toml(&format!(
            "seed = 1\n[[link]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{target}\"\n{extra}"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn relays_both_ways_with_delay() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sim = LinkSim::start(cfg(server.local_addr().unwrap(), "delay_ms = 30"))
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = Instant::now();
        client
            .send_to(b"ping", sim.listen_addr("a").unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(t0.elapsed() >= Duration::from_millis(29));
        server.send_to(b"pong", from).await.unwrap();
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert!(t0.elapsed() >= Duration::from_millis(59));
        let s = &sim.stats()[0];
        assert_eq!((s.uplink.delivered, s.downlink.delivered), (1, 1));
    }

    #[tokio::test]
    async fn timeline_takes_link_down_and_up() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let extra =
            "[[link.event]]\nat_s = 0.2\nup = false\n[[link.event]]\nat_s = 0.5\nup = true\n";
        let sim = LinkSim::start(cfg(server.local_addr().unwrap(), extra))
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dest = sim.listen_addr("a").unwrap();
        for _ in 0..70 {
            client.send_to(&[0u8; 100], dest).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = &sim.stats()[0].uplink;
        assert_eq!(s.packets_in, 70);
        // About 30 of 70 packets fall in the 0.2..0.5 s outage.
        assert!((20..=40).contains(&s.dropped_outage), "{s:?}");
        assert_eq!(s.delivered + s.dropped_outage, 70);
    }

    #[tokio::test]
    async fn bind_failure_is_a_clear_error() {
        let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut c = cfg("127.0.0.1:9".parse().unwrap(), "");
        c.links[0].listen = taken.local_addr().unwrap();
        let e = LinkSim::start(c).await.unwrap_err().to_string();
        assert!(e.contains("cannot bind"), "{e}");
    }
}

//! The bond end to end: our sender and receiver over emulated links.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use strata_rist::{BondedReceiver, BondedSender, LinkSpec, Psk, ReceiverConfig, SenderConfig};
use support::{
    Links, PADDING_DATAGRAMS, drain, feed, feed_part, free_port, sha, strip_padding, test_ts,
};

fn psk() -> Psk {
    Psk::new("a test passphrase, not a secret").unwrap()
}

fn receiver(n: usize, psk: Option<Psk>) -> BondedReceiver {
    let listen = (0..n).map(|_| "127.0.0.1:0".parse().unwrap()).collect();
    BondedReceiver::new(ReceiverConfig {
        listen,
        psk,
        buffer_ms: 1000,
    })
    .unwrap()
}

fn sender(links: Vec<LinkSpec>, psk: Option<Psk>) -> BondedSender {
    BondedSender::new(
        SenderConfig {
            psk,
            ..Default::default()
        },
        links,
    )
    .unwrap()
}

/// Three links through linksim to the receiver's ports; `extra[i]` is appended to link i.
fn three_links(ports: &[u16], extra: [&str; 3]) -> (Links, Vec<LinkSpec>) {
    let base = [("a", 20, 0.5), ("b", 35, 1.0), ("c", 60, 2.0)];
    let mut toml = String::from("seed = 42\n");
    for (i, (name, delay, loss)) in base.iter().enumerate() {
        toml += &format!(
            "[[link]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ntarget = \"127.0.0.1:{}\"\n\
             rate_kbps = 2000\ndelay_ms = {delay}\njitter_ms = 2\nloss_percent = {loss}\n{}\n",
            ports[i], extra[i]
        );
    }
    let links = Links::start(&toml);
    let specs = base
        .iter()
        .map(|(n, _, _)| LinkSpec::new(*n, links.sim.listen_addr(n).unwrap()))
        .collect();
    (links, specs)
}

#[test]
fn ts_over_three_lossy_links_arrives_byte_identical() {
    let data = test_ts();
    let rx = receiver(3, Some(psk()));
    let (links, specs) = three_links(&rx.ports(), ["", "", ""]);
    let mut tx = sender(specs, Some(psk()));
    feed(&mut tx, data, 2000.0);
    let out = drain(&rx, Duration::from_secs(2), Duration::from_secs(30));
    let st = rx.stats();
    assert_eq!(sha(strip_padding(&out)), sha(data), "stats: {st:?}");
    assert_eq!(st.lost, 0);
    // Random loss on the links was there, and recovered.
    let dropped: u64 = links
        .sim
        .stats()
        .iter()
        .map(|l| l.uplink.dropped_loss)
        .sum();
    assert!(dropped > 0 && st.recovered > 0, "dropped {dropped}, {st:?}");
    // Every link carried part of the stream, and its RTT (40/70/120 ms) is known.
    assert_eq!(st.peers.len(), 3, "{st:?}");
    assert!(st.peers.iter().all(|p| p.packets > 100), "{st:?}");
    assert!(st.peers.iter().all(|p| p.rtt_ms >= 30), "{st:?}");
    // The relays read every encrypted datagram's RTP header: each original
    // packet was counted once, on the link that carried it, and NACKs were
    // counted against links, a few per cent at most (a wrong decryption
    // would flag about half the packets as retransmissions).
    let bond = tx.stats();
    let datagrams = (data.len() / 1316 + PADDING_DATAGRAMS) as u64;
    let media: u64 = bond.links.iter().map(|l| l.media_packets).sum();
    let nacked: u64 = bond.links.iter().map(|l| l.nacked_packets).sum();
    assert!(
        (datagrams..datagrams + 4).contains(&media),
        "{media} media packets for {datagrams} datagrams: {bond:?}"
    );
    assert!(nacked > 0, "{st:?}, {bond:?}");
    for l in &bond.links {
        assert!(l.nacked_packets * 4 < l.media_packets, "{bond:?}");
    }
}

#[test]
fn one_of_three_links_dies_mid_stream_without_loss() {
    let data = test_ts();
    let rx = receiver(3, Some(psk()));
    let (links, specs) = three_links(
        &rx.ports(),
        ["", "", "[[link.event]]\nat_s = 2.0\nup = false\n"],
    );
    let mut tx = sender(specs, Some(psk()));
    feed(&mut tx, data, 2000.0);
    let out = drain(&rx, Duration::from_secs(2), Duration::from_secs(30));
    let st = rx.stats();
    assert_eq!(st.lost, 0, "{st:?}");
    assert_eq!(sha(strip_padding(&out)), sha(data), "stats: {st:?}");
    let bond = tx.stats();
    assert_eq!(
        bond.links[2].state,
        strata_rist::LinkState::Dark,
        "{bond:?}"
    );
    assert_eq!(bond.links[2].weight, 0);
    assert!(links.sim.stats()[2].uplink.dropped_outage > 0);
}

#[test]
fn links_can_be_removed_and_added_while_streaming() {
    let data = test_ts();
    let rx = receiver(3, Some(psk()));
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let ports = rx.ports();
    let mut tx = sender(
        vec![
            LinkSpec::new("a", addr(ports[0])),
            LinkSpec::new("b", addr(ports[1])),
        ],
        Some(psk()),
    );
    let (first, rest) = data.split_at(data.len() / 2 / 1316 * 1316);
    feed_part(&mut tx, first, 2000.0);
    tx.remove_link("b").unwrap();
    assert!(tx.remove_link("b").is_err());
    tx.add_link(LinkSpec::new("c", addr(ports[2]))).unwrap();
    assert!(tx.add_link(LinkSpec::new("a", addr(ports[2]))).is_err());
    feed(&mut tx, rest, 2000.0);
    let out = drain(&rx, Duration::from_secs(2), Duration::from_secs(30));
    let st = rx.stats();
    assert_eq!(sha(strip_padding(&out)), sha(data), "stats: {st:?}");
    // librist numbers its peers as they appear: the added link is the last.
    assert_eq!(st.peers.len(), 3, "{st:?}");
    assert!(
        st.peers.last().is_some_and(|p| p.packets > 50 && p.alive),
        "the added link carried data: {st:?}"
    );
}

#[test]
fn wrong_psk_lets_nothing_through_and_says_why() {
    let rx = receiver(1, Some(psk()));
    let remote: SocketAddr = format!("127.0.0.1:{}", rx.ports()[0]).parse().unwrap();
    let mut tx = sender(
        vec![LinkSpec::new("a", remote)],
        Some(Psk::new("another passphrase").unwrap()),
    );
    feed(&mut tx, &test_ts()[..200 * 1316], 2000.0);
    let out = drain(&rx, Duration::from_secs(1), Duration::from_secs(3));
    let st = rx.stats();
    assert!(out.is_empty(), "{} bytes got through", out.len());
    assert!(st.auth_failures > 0, "{st:?}");
    assert!(
        st.problem.as_deref().unwrap_or("").contains("PSK"),
        "{st:?}"
    );
}

#[test]
fn garbage_datagrams_are_counted_and_dropped() {
    let data = test_ts();
    let rx = receiver(2, Some(psk()));
    let ports = rx.ports();
    let specs = ports
        .iter()
        .enumerate()
        .map(|(i, p)| LinkSpec::new(format!("l{i}"), format!("127.0.0.1:{p}").parse().unwrap()))
        .collect();
    let mut tx = sender(specs, Some(psk()));
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a, b) = data.split_at(data.len() / 2 / 1316 * 1316);
    feed_part(&mut tx, a, 2000.0);
    for i in 0..200u32 {
        let mut d = vec![0u8; 1 + (i as usize * 37) % 1400];
        d.iter_mut()
            .enumerate()
            .for_each(|(j, x)| *x = (j as u32 * 31 + i) as u8);
        junk.send_to(&d, ("127.0.0.1", ports[(i % 2) as usize]))
            .unwrap();
    }
    feed(&mut tx, b, 2000.0);
    let out = drain(&rx, Duration::from_secs(2), Duration::from_secs(30));
    let st = rx.stats();
    assert_eq!(sha(strip_padding(&out)), sha(data), "stats: {st:?}");
    assert!(st.garbage_datagrams >= 200, "{st:?}");
    // The kernel filter on each port dropped them before librist woke up.
    assert!(st.ports.iter().all(|p| p.garbage >= 100), "{st:?}");
    let _ = free_port();
}

#[test]
fn links_bound_to_an_interface_carry_the_stream() {
    let data = &test_ts()[..400 * 1316];
    let rx = receiver(2, Some(psk()));
    let specs = rx
        .ports()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut l = LinkSpec::new(format!("l{i}"), format!("127.0.0.1:{p}").parse().unwrap());
            // SO_BINDTODEVICE to loopback: the sockets must leave by `lo`.
            l.bind = strata_rist::LinkBind::Interface("lo".into());
            l
        })
        .collect();
    let mut tx = sender(specs, Some(psk()));
    feed(&mut tx, data, 2000.0);
    let out = drain(&rx, Duration::from_secs(2), Duration::from_secs(20));
    assert_eq!(sha(strip_padding(&out)), sha(data));
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    let mut l = LinkSpec::new("wwan9", "127.0.0.1:9".parse().unwrap());
    l.bind = strata_rist::LinkBind::Interface("wwan9-missing".into());
    let err = BondedSender::new(SenderConfig::default(), vec![l])
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("cannot bind to interface wwan9-missing"),
        "{err}"
    );
}

#[test]
fn callback_mode_delivers_the_same_bytes() {
    use std::sync::{Arc, Mutex};
    let data = &test_ts()[..600 * 1316];
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let listen = vec!["127.0.0.1:0".parse().unwrap(); 2];
    let rx = BondedReceiver::with_callback(
        ReceiverConfig {
            listen,
            psk: Some(psk()),
            buffer_ms: 1000,
        },
        Box::new(move |d| sink.lock().unwrap().extend_from_slice(d)),
    )
    .unwrap();
    assert!(
        rx.read(Duration::from_millis(1)).is_err(),
        "read is not for callback mode"
    );
    let specs = rx
        .ports()
        .iter()
        .enumerate()
        .map(|(i, p)| LinkSpec::new(format!("l{i}"), format!("127.0.0.1:{p}").parse().unwrap()))
        .collect();
    let mut tx = sender(specs, Some(psk()));
    feed(&mut tx, data, 2000.0);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sha(strip_padding(&got.lock().unwrap())), sha(data));
    assert_eq!(
        rx.stats().output_bytes,
        (data.len() + PADDING_DATAGRAMS * 1316) as u64
    );
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = BondedReceiver::new(ReceiverConfig {
        listen: vec![addr],
        psk: None,
        buffer_ms: 1000,
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

//! Statistics the bond publishes, serialisable for telemetry.

use serde::Serialize;

use crate::link::LinkState;

/// One link of a sending bond.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkStats {
    /// The link's name.
    pub name: String,
    /// Where it stands.
    pub state: LinkState,
    /// librist's smoothed round-trip time over this link, in ms.
    pub rtt_ms: Option<u32>,
    /// Lowest RTT seen recently (the link's unloaded RTT), in ms.
    pub base_rtt_ms: Option<u32>,
    /// RIST packets sent on this link (data and retransmissions).
    pub sent_packets: u64,
    /// Retransmissions that left by this link (they are steered: see the
    /// crate docs).
    pub retransmitted_packets: u64,
    /// Bytes sent on this link, all RIST overhead included.
    pub sent_bytes: u64,
    /// Bit rate sent on this link, over the last second, in kbit/s.
    pub sent_kbps: f64,
    /// The controller's estimate of what the link can carry, in kbit/s.
    pub capacity_kbps: f64,
    /// librist load-balancing weight (0 = duplicates only).
    pub weight: u32,
    /// Share of the bond's traffic over the last second, 0..1.
    pub share: f64,
    /// Packet loss toward the receiver over the last 10 s, in percent: media
    /// this link carried that the receiver asked for again (NACKed), over
    /// media it carried. Packets that arrived too late count too.
    pub loss_percent: f64,
    /// Retransmissions among what this link sent over the last 10 s, in
    /// percent (of any link's packets: retransmissions are steered).
    pub retransmit_percent: f64,
    /// New media packets this link carried (retransmissions not counted).
    pub media_packets: u64,
    /// Of those, how many the receiver asked for again (NACKed).
    pub nacked_packets: u64,
    /// NACKs for this link's packets that left the receiver before the packet
    /// was due (the link is slower than another); not answered.
    pub early_nacks: u64,
    /// Packets this link had carried, sent again on live links when it went dark.
    pub rescued_packets: u64,
    /// Datagrams the OS refused to send (interface gone).
    pub send_errors: u64,
}

/// A sending bond as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BondStats {
    /// Every link, in the order they were added.
    pub links: Vec<LinkStats>,
    /// Bytes of MPEG-TS the application handed over.
    pub input_bytes: u64,
    /// Bit rate all links send, over the last second, in kbit/s.
    pub sent_kbps: f64,
    /// What the bond can carry now, with headroom for retransmissions; the
    /// encoder bitrate should follow it.
    pub usable_kbps: f64,
    /// Retransmissions over all links.
    pub retransmitted_packets: u64,
}

/// One public port of a receiving bond.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortStats {
    /// The UDP port.
    pub port: u16,
    /// Datagrams the kernel dropped on it before librist: not RIST (the
    /// port's filter), or no room left in its receive buffer.
    pub garbage: u64,
}

/// One sender link as librist's receiver knows it: one peer per remote
/// address, numbered by librist as they appear.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerStats {
    /// librist's number for the peer.
    pub id: u32,
    /// Round-trip time measured over that link, in ms.
    pub rtt_ms: u32,
    /// Whether librist still hears from it.
    pub alive: bool,
    /// RIST data packets received over it (first copies and retransmissions).
    pub packets: u64,
    /// Its bit rate over librist's last report, in kbit/s.
    pub bitrate_kbps: f64,
    /// Its share of the flow's bit rate over librist's last report, 0..1.
    pub share: f64,
}

/// A receiving bond: the reassembled flow and each port.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FlowStats {
    /// RTP packets received (first copies and recoveries).
    pub received: u64,
    /// Packets that arrived only thanks to a retransmission.
    pub recovered: u64,
    /// Packets that never arrived in time: a gap in the output.
    pub lost: u64,
    /// Packets that were missing at some point (recovered or not).
    pub missing: u64,
    /// Duplicates and reordered packets are normal in a bond; counted for insight.
    pub reordered: u64,
    /// Bytes of MPEG-TS handed to the application.
    pub output_bytes: u64,
    /// Incoming bit rate as librist measures it, in kbit/s.
    pub bitrate_kbps: f64,
    /// Datagrams dropped on our ports before they reached librist (see
    /// [`PortStats::garbage`]), plus those librist refused as not RIST.
    pub garbage_datagrams: u64,
    /// Packets that failed to decrypt (wrong or missing PSK).
    pub auth_failures: u64,
    /// Per port.
    pub ports: Vec<PortStats>,
    /// Per sender link: RTT, packets and share.
    pub peers: Vec<PeerStats>,
    /// Why nothing is coming through, when we can tell.
    pub problem: Option<String>,
}

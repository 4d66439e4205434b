//! Device telemetry: the last minutes at full rate in memory for live views,
//! and one averaged sample per link every [`DOWNSAMPLE_MS`] for the database
//! (history), so a thousand devices at 1 Hz do not mean a thousand inserts
//! per second.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::store::senders::LinkSample;

/// How much full-rate telemetry stays in memory per device.
pub const KEEP_MS: i64 = 5 * 60_000;
/// Interval of the averaged samples written to the database.
pub const DOWNSAMPLE_MS: i64 = 10_000;

#[derive(Default)]
struct Device {
    recent: VecDeque<LinkSample>,
    /// Per link, the current interval.
    pending: HashMap<String, Interval>,
    interval_start: i64,
}

/// One link's samples of the current interval: sums of the averaged
/// figures, the worst of loss and retransmissions.
#[derive(Default)]
struct Interval {
    kbps: i64,
    rtt_ms: i64,
    loss_permille: i64,
    retransmit_permille: i64,
    n: i64,
}

/// Telemetry of every device that sent some.
#[derive(Default)]
pub struct LiveTelemetry {
    devices: Mutex<HashMap<String, Device>>,
}

impl LiveTelemetry {
    /// Adds one report's samples (all with the same `ts`). Returns the
    /// averaged samples to store when an interval closed.
    pub fn add(&self, device_id: &str, samples: &[LinkSample]) -> Option<Vec<LinkSample>> {
        let ts = samples.first()?.ts;
        let mut devices = self.devices.lock().expect("telemetry");
        let d = devices.entry(device_id.to_string()).or_default();
        if d.interval_start == 0 {
            d.interval_start = ts;
        }
        let flushed = if ts - d.interval_start >= DOWNSAMPLE_MS {
            let start = d.interval_start;
            d.interval_start = ts;
            Some(
                d.pending
                    .drain()
                    .map(|(link, i)| LinkSample {
                        ts: start,
                        link,
                        kbps: i.kbps / i.n,
                        rtt_ms: i.rtt_ms / i.n,
                        loss_permille: i.loss_permille,
                        retransmit_permille: i.retransmit_permille,
                    })
                    .collect(),
            )
        } else {
            None
        };
        for s in samples {
            d.recent.push_back(s.clone());
            let i = d.pending.entry(s.link.clone()).or_default();
            i.kbps += s.kbps;
            i.rtt_ms += s.rtt_ms;
            i.loss_permille = i.loss_permille.max(s.loss_permille);
            i.retransmit_permille = i.retransmit_permille.max(s.retransmit_permille);
            i.n += 1;
        }
        while d.recent.front().is_some_and(|s| s.ts < ts - KEEP_MS) {
            d.recent.pop_front();
        }
        flushed
    }

    /// A device's samples newer than `since_ms`, oldest first (empty if none in memory).
    pub fn since(&self, device_id: &str, since_ms: i64) -> Vec<LinkSample> {
        let devices = self.devices.lock().expect("telemetry");
        devices
            .get(device_id)
            .map(|d| {
                d.recent
                    .iter()
                    .filter(|s| s.ts > since_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a device (revoked or deleted).
    pub fn forget(&self, device_id: &str) {
        self.devices.lock().expect("telemetry").remove(device_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, link: &str, kbps: i64, loss: i64) -> LinkSample {
        LinkSample {
            ts,
            link: link.into(),
            kbps,
            rtt_ms: 50,
            loss_permille: loss,
            retransmit_permille: 2 * loss,
        }
    }

    #[test]
    fn keeps_recent_and_downsamples() {
        let t = LiveTelemetry::default();
        let mut stored = Vec::new();
        for i in 0..25 {
            let ts = 1_000_000 + i * 1000;
            let loss = if i == 3 { 7 } else { 0 };
            if let Some(out) = t.add(
                "d",
                &[s(ts, "wwan0", 1000 + i, loss), s(ts, "wwan1", 500, 0)],
            ) {
                stored.extend(out);
            }
        }
        // Two closed intervals of 10 reports, two links each.
        assert_eq!(stored.len(), 4);
        let first = stored
            .iter()
            .find(|x| x.link == "wwan0" && x.ts == 1_000_000)
            .unwrap();
        assert_eq!(first.kbps, 1004); // mean of 1000..=1009
        assert_eq!(first.loss_permille, 7, "the worst loss of the interval");
        assert_eq!(
            first.retransmit_permille, 14,
            "the worst share of the interval"
        );
        assert_eq!(t.since("d", 1_000_000 + 20_000).len(), 8);
        assert!(t.since("other", 0).is_empty());

        // Old samples leave memory.
        t.add("d", &[s(1_000_000 + KEEP_MS + 30_000, "wwan0", 1, 0)]);
        assert_eq!(t.since("d", 0).len(), 1);
    }
}

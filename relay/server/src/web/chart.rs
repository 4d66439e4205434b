//! The live per-link chart: bitrate and RTT over the last minutes as a
//! server-rendered SVG (no chart library in the page).

use crate::store::senders::LinkSample;

/// Colours assigned to links in order of first appearance.
const COLOURS: [&str; 6] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

/// Chart width and plot height in SVG units.
pub const WIDTH: f64 = 600.0;
/// Height of each of the two plots.
pub const HEIGHT: f64 = 120.0;

/// One link's lines.
pub struct Series {
    /// Link name.
    pub link: String,
    /// Stroke colour.
    pub colour: &'static str,
    /// `points` of the bitrate polyline.
    pub kbps_points: String,
    /// `points` of the RTT polyline.
    pub rtt_points: String,
    /// Latest bitrate, kbit/s.
    pub last_kbps: i64,
    /// Latest RTT, ms.
    pub last_rtt: i64,
    /// Latest loss, per mille.
    pub last_loss: i64,
    /// Latest share of retransmissions among what the link sent, per mille.
    pub last_retransmit: i64,
}

/// The chart's data.
pub struct Chart {
    /// Per-link series.
    pub series: Vec<Series>,
    /// Top of the bitrate axis, kbit/s.
    pub max_kbps: i64,
    /// Top of the RTT axis, ms.
    pub max_rtt: i64,
    /// Window length, seconds.
    pub window_s: i64,
}

/// Lays out samples from `now - window` to `now` (ms).
pub fn build(samples: &[LinkSample], now_ms: i64, window_ms: i64) -> Chart {
    let max_kbps = nice_ceiling(samples.iter().map(|s| s.kbps).max().unwrap_or(0).max(100));
    let max_rtt = nice_ceiling(samples.iter().map(|s| s.rtt_ms).max().unwrap_or(0).max(50));
    let mut links: Vec<&str> = Vec::new();
    for s in samples {
        if !links.contains(&s.link.as_str()) {
            links.push(&s.link);
        }
    }
    let x = |ts: i64| (WIDTH * (1.0 - (now_ms - ts) as f64 / window_ms as f64)).clamp(0.0, WIDTH);
    let y = |v: i64, max: i64| HEIGHT - HEIGHT * (v.max(0) as f64 / max as f64).min(1.0);
    let series = links
        .iter()
        .enumerate()
        .map(|(i, link)| {
            let pts: Vec<&LinkSample> = samples.iter().filter(|s| s.link == *link).collect();
            let last = pts.last().expect("a link appears because it has samples");
            Series {
                link: link.to_string(),
                colour: COLOURS[i % COLOURS.len()],
                kbps_points: polyline(&pts, |s| (x(s.ts), y(s.kbps, max_kbps))),
                rtt_points: polyline(&pts, |s| (x(s.ts), y(s.rtt_ms, max_rtt))),
                last_kbps: last.kbps,
                last_rtt: last.rtt_ms,
                last_loss: last.loss_permille,
                last_retransmit: last.retransmit_permille,
            }
        })
        .collect();
    Chart {
        series,
        max_kbps,
        max_rtt,
        window_s: window_ms / 1000,
    }
}

/// SVG `points` of samples placed by `at` (whole units: the chart is 600 wide).
fn polyline(samples: &[&LinkSample], at: impl Fn(&LinkSample) -> (f64, f64)) -> String {
    let pts: Vec<String> = samples
        .iter()
        .map(|s| {
            let (x, y) = at(s);
            format!("{},{}", x.round() as i64, y.round() as i64)
        })
        .collect();
    pts.join(" ")
}

/// Rounds up to 1, 2 or 5 times a power of ten (values are capped at 10^12:
/// telemetry comes from devices and must not overflow the loop).
fn nice_ceiling(v: i64) -> i64 {
    let v = v.clamp(1, 1_000_000_000_000);
    let mut p = 1;
    loop {
        for m in [1, 2, 5] {
            if m * p >= v {
                return m * p;
            }
        }
        p *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, link: &str, kbps: i64, rtt: i64) -> LinkSample {
        LinkSample {
            ts,
            link: link.into(),
            kbps,
            rtt_ms: rtt,
            loss_permille: 0,
            retransmit_permille: 0,
        }
    }

    #[test]
    fn lays_out_links() {
        let c = build(
            &[
                s(0, "wwan0", 1000, 40),
                s(0, "wwan1", 3000, 90),
                s(60_000, "wwan0", 2000, 50),
            ],
            60_000,
            60_000,
        );
        assert_eq!(c.max_kbps, 5000);
        assert_eq!(c.max_rtt, 100);
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.series[0].kbps_points, "0,96 600,72");
        assert_eq!(c.series[0].last_kbps, 2000);
        assert_ne!(c.series[0].colour, c.series[1].colour);
    }

    #[test]
    fn ceilings() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(101), 200);
        assert_eq!(nice_ceiling(6000), 10000);
        assert_eq!(nice_ceiling(i64::MAX), 1_000_000_000_000);
        assert_eq!(nice_ceiling(-5), 1);
    }
}

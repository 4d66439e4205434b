//! GStreamer pipeline descriptions for the SRT, HLS and recording outputs.
//! Passphrases are set as properties after parsing, never in the
//! description, so a parse error can never echo them.

use crate::destination::Destination;

/// The video codec of the incoming stream, from its PMT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264 / AVC (stream type 0x1B).
    H264,
    /// H.265 / HEVC (stream type 0x24).
    H265,
}

/// The source every pipeline starts with: MPEG-TS pushed by the worker.
const SRC: &str = "appsrc name=src is-live=true format=time max-bytes=4000000 block=false \
                   caps=\"video/mpegts,systemstream=(boolean)true,packetsize=(int)188\"";

/// A pipeline description for `dest`, or why this stream cannot go there.
pub fn describe(dest: &Destination, codec: VideoCodec) -> Result<String, String> {
    let (vcaps, vparse) = match codec {
        VideoCodec::H264 => ("video/x-h264", "h264parse"),
        VideoCodec::H265 => ("video/x-h265", "h265parse"),
    };
    let demux = "tsdemux name=demux latency=200";
    let video = format!(
        "demux. ! {vcaps} ! queue max-size-time=2000000000 ! {vparse} name=vparse config-interval=-1"
    );
    let audio = "demux. ! audio/mpeg ! queue max-size-time=2000000000 ! aacparse name=aparse";
    Ok(match dest {
        // RTMP is published by `rtmp.rs` from the Rust remux, not GStreamer.
        Destination::Rtmp { .. } => return Err("RTMP has no GStreamer pipeline".into()),
        Destination::Srt { url, .. } => {
            format!(
                "{SRC} ! queue name=out ! srtsink name=sink uri=\"{url}?mode=caller\" wait-for-connection=false sync=false"
            )
        }
        Destination::Hls {
            dir,
            segment,
            playlist_len,
        } => format!(
            "{SRC} ! {demux} {video} ! hls.video {audio} ! hls.audio \
             hlssink2 name=hls target-duration={} playlist-length={playlist_len} max-files={} \
             location=\"{}/segment%05d.ts\" playlist-location=\"{}/index.m3u8\"",
            segment.as_secs(),
            playlist_len + 2,
            dir.display(),
            dir.display()
        ),
        Destination::Record { dir, rotate } => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "{SRC} ! {demux} {video} ! rec.video {audio} ! rec.audio_0 \
                 splitmuxsink name=rec muxer-factory=mpegtsmux max-size-time={} location=\"{}/rec-{stamp}-%05d.ts\"",
                rotate.as_nanos(),
                dir.display()
            )
        }
    })
}

/// The incoming stream's video: its codec and TS PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Video {
    /// The codec.
    pub codec: VideoCodec,
    /// The PID its packets carry.
    pub pid: u16,
    /// The PID of its ADTS AAC audio (stream type 0x0F), if it has one.
    pub audio_pid: Option<u16>,
}

/// Finds the video stream in a TS datagram's PMT, if it holds one.
pub struct CodecProbe {
    pmt_pid: Option<u16>,
}

impl CodecProbe {
    /// A probe that has seen nothing yet.
    pub fn new() -> Self {
        Self { pmt_pid: None }
    }

    /// Feeds TS packets; returns the video stream once the PMT names one.
    pub fn feed(&mut self, data: &[u8]) -> Option<Video> {
        for p in data.chunks_exact(188) {
            if p[0] != 0x47 || p[1] & 0x40 == 0 {
                continue; // not a section start
            }
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            let mut off = 4;
            if p[3] & 0x20 != 0 {
                off += 1 + usize::from(p[4]);
            }
            if off >= 188 {
                continue;
            }
            off += 1 + usize::from(p[off]); // pointer field
            let sec = p.get(off..)?;
            if sec.len() < 12 {
                continue;
            }
            let len = (usize::from(sec[1] & 0x0f) << 8 | usize::from(sec[2])).min(sec.len() - 3);
            if pid == 0 && sec[0] == 0x00 {
                // PAT: program entries after the 8-byte header, minus CRC.
                for e in sec[8..3 + len.saturating_sub(4)].chunks_exact(4) {
                    let program = u16::from_be_bytes([e[0], e[1]]);
                    if program != 0 {
                        self.pmt_pid = Some((u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]));
                    }
                }
            } else if Some(pid) == self.pmt_pid && sec[0] == 0x02 {
                let info_len = usize::from(sec[10] & 0x0f) << 8 | usize::from(sec[11]);
                let mut i = 12 + info_len;
                let end = 3 + len.saturating_sub(4);
                let (mut video, mut audio_pid) = (None, None);
                while i + 5 <= end {
                    let pid = (u16::from(sec[i + 1] & 0x1f) << 8) | u16::from(sec[i + 2]);
                    match sec[i] {
                        0x1B if video.is_none() => video = Some((VideoCodec::H264, pid)),
                        0x24 if video.is_none() => video = Some((VideoCodec::H265, pid)),
                        0x0F if audio_pid.is_none() => audio_pid = Some(pid),
                        _ => {}
                    }
                    let es_info = usize::from(sec[i + 3] & 0x0f) << 8 | usize::from(sec[i + 4]);
                    i += 5 + es_info;
                }
                if let Some((codec, pid)) = video {
                    return Some(Video {
                        codec,
                        pid,
                        audio_pid,
                    });
                }
            }
        }
        None
    }
}

/// Where the last video access unit starts in `data` (whole TS packets): the
/// offset of the last packet on `pid` with payload_unit_start set.
pub fn last_video_start(data: &[u8], pid: u16) -> Option<usize> {
    data.chunks_exact(188).enumerate().rev().find_map(|(i, p)| {
        let p_pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        (p[0] == 0x47 && p[1] & 0x40 != 0 && p_pid == pid).then_some(i * 188)
    })
}

impl Default for CodecProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_video_in_a_real_pmt_and_cuts_at_access_units() {
        // PAT (program 1 -> PMT PID 0x1000) and PMT (H.264 on PID 0x100), as ffmpeg writes them.
        let mut pat = vec![
            0x47, 0x40, 0x00, 0x10, 0x00, 0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00,
        ];
        pat.extend([0x00, 0x01, 0xf0, 0x00, 0, 0, 0, 0]);
        pat.resize(188, 0xff);
        let mut pmt = vec![
            0x47, 0x50, 0x00, 0x10, 0x00, 0x02, 0xb0, 0x17, 0x00, 0x01, 0xc1, 0x00, 0x00,
        ];
        pmt.extend([
            0xe1, 0x00, 0xf0, 0x00, 0x1b, 0xe1, 0x00, 0xf0, 0x00, 0x0f, 0xe1, 0x01, 0xf0, 0x00, 0,
            0, 0, 0,
        ]);
        pmt.resize(188, 0xff);
        let mut probe = CodecProbe::new();
        assert_eq!(probe.feed(&pat), None);
        assert_eq!(
            probe.feed(&pmt),
            Some(Video {
                codec: VideoCodec::H264,
                pid: 0x100,
                audio_pid: Some(0x101),
            })
        );
        let mut start = vec![0x47, 0x41, 0x00, 0x10];
        start.resize(188, 0);
        let mut cont = vec![0x47, 0x01, 0x00, 0x10];
        cont.resize(188, 0);
        let data = [cont.clone(), start.clone(), cont.clone(), start, cont].concat();
        assert_eq!(last_video_start(&data, 0x100), Some(3 * 188));
        assert_eq!(last_video_start(&data, 0x101), None);
    }

    #[test]
    fn every_kind_parses_in_gstreamer() {
        gstreamer::init().unwrap();
        for (u, codec) in [
            ("srt://127.0.0.1:9", VideoCodec::H265),
            ("hls:///tmp/strata-hls-test", VideoCodec::H264),
            ("record:///tmp/strata-rec-test", VideoCodec::H265),
        ] {
            let d = Destination::parse(u, None).unwrap();
            let desc = describe(&d, codec).unwrap();
            gstreamer::parse::launch(&desc).unwrap_or_else(|e| panic!("{u}: {e}\n{desc}"));
        }
    }
}

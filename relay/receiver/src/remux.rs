//! TS to FLV remux for RTMP, hand-written: PES reassembly of the video
//! (H.264) and audio (ADTS AAC) PIDs, Annex B to AVCC, ADTS to raw AAC, and
//! the codec headers RTMP wants (AVCDecoderConfigurationRecord,
//! AudioSpecificConfig). It runs on the input's thread and allocates one
//! buffer per frame: `scripts/bench-receiver` showed GStreamer's tsdemux !
//! parse ! flvmux chain, with its threads and queues, costing more than the
//! whole of ffmpeg. (mpeg2ts-reader would cover only the TS layer, the
//! smallest part here.)

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// 33-bit MPEG timestamps wrap at this value (90 kHz, about 26.5 h).
const WRAP: i64 = 1 << 33;
/// A decode time this far back (1 s) or forward (10 s) of the stream's last
/// one starts a new timeline (90 kHz).
const JUMP_BACK: i64 = 90_000;
const JUMP_FORWARD: i64 = 900_000;
/// A PES larger than this is broken input; it is dropped.
const MAX_PES: usize = 4 << 20;
/// One stream may run this far (ms) ahead of the other before it is sent
/// anyway (the other stream is late, or absent).
const MAX_SKEW_MS: i64 = 1000;

/// What an FLV tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// Audio (AAC).
    Audio,
    /// Video (H.264).
    Video,
}

/// One FLV tag's body (what an RTMP audio or video message carries).
#[derive(Debug, Clone)]
pub struct Tag {
    /// Audio or video.
    pub kind: TagKind,
    /// Decode time in ms on the remux's timeline (may start below 0).
    pub ts_ms: i64,
    /// The tag body: FLV audio/video tag header, then the data.
    pub body: Bytes,
    /// A codec header (AVC sequence header, AAC AudioSpecificConfig).
    pub header: bool,
    /// A video keyframe (IDR access unit).
    pub keyframe: bool,
    /// Set on a destination's copy when tags before it were dropped from
    /// that destination's queue (`flv.rs`).
    pub after_gap: bool,
}

impl Tag {
    fn new(kind: TagKind, ts_ms: i64, body: Bytes, header: bool, keyframe: bool) -> Self {
        Self {
            kind,
            ts_ms,
            body,
            header,
            keyframe,
            after_gap: false,
        }
    }
}

/// What the audio stream is, for RTMP metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioInfo {
    /// Samples per second.
    pub rate: u32,
    /// Channels.
    pub channels: u8,
}

impl AudioInfo {
    /// Reads rate and channels from a 2-byte AudioSpecificConfig.
    pub fn from_asc(asc: [u8; 2]) -> Self {
        let sf = usize::from(((asc[0] & 7) << 1) | (asc[1] >> 7));
        Self {
            rate: RATES.get(sf).copied().unwrap_or(0),
            channels: (asc[1] >> 3) & 0x0f,
        }
    }
}

/// AAC sampling rates by index (ISO 14496-3).
const RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

#[derive(Default)]
struct Pes {
    buf: Vec<u8>,
    /// Continuity counter of the last packet; None before the first.
    cc: Option<u8>,
    /// A packet was lost inside this PES: it is dropped when it ends.
    broken: bool,
}

/// The remux of one stream. Feed TS; take tags in decode order.
pub struct TsToFlv {
    video_pid: u16,
    audio_pid: Option<u16>,
    video: Pes,
    audio: Pes,
    /// First decode time seen (90 kHz, unwrapped): the timeline's zero.
    base: Option<i64>,
    /// Last unwrapped time, to follow 33-bit wraps.
    last: Option<i64>,
    /// Added to every time (90 kHz): how a new timeline is joined to the old.
    offset: i64,
    /// Last decode time per stream (audio, video), offset applied.
    last_dts: [Option<i64>; 2],
    /// Times the input's timeline jumped (an encoder restart, a splice).
    jumps: u64,
    sps: Vec<u8>,
    pps: Vec<u8>,
    asc: Option<[u8; 2]>,
    /// Tags waiting for the other stream, to leave in decode order.
    vq: VecDeque<Tag>,
    aq: VecDeque<Tag>,
    /// TS packets without a sync byte, and PES or frames dropped as broken.
    dropped: u64,
}

impl TsToFlv {
    /// A remux of the video PID and, if the stream has AAC, the audio PID.
    pub fn new(video_pid: u16, audio_pid: Option<u16>) -> Self {
        Self {
            video_pid,
            audio_pid,
            video: Pes::default(),
            audio: Pes::default(),
            base: None,
            last: None,
            offset: 0,
            last_dts: [None, None],
            jumps: 0,
            sps: Vec::new(),
            pps: Vec::new(),
            asc: None,
            vq: VecDeque::new(),
            aq: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Feeds whole TS packets; `out` gets every tag ready to go, in order.
    pub fn feed(&mut self, data: &[u8], out: &mut impl FnMut(Tag)) {
        for p in data.chunks_exact(188) {
            if p[0] != 0x47 {
                self.dropped += 1;
                continue;
            }
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            let is_video = pid == self.video_pid;
            if !is_video && Some(pid) != self.audio_pid {
                continue;
            }
            let start = p[1] & 0x40 != 0;
            let cc = p[3] & 0x0f;
            let has_payload = p[3] & 0x10 != 0;
            let mut off = 4;
            if p[3] & 0x20 != 0 {
                off += 1 + usize::from(p[4]);
            }
            if !has_payload || off >= 188 {
                continue;
            }
            let pes = self.pes(is_video);
            if let Some(prev) = pes.cc
                && (prev + 1) & 0x0f != cc
            {
                pes.broken = true;
            }
            pes.cc = Some(cc);
            if start {
                self.finish(is_video, out);
            }
            let pes = self.pes(is_video);
            if !start && pes.buf.is_empty() {
                continue; // joined mid-PES: wait for the next start
            }
            pes.buf.extend_from_slice(&p[off..]);
            if pes.buf.len() > MAX_PES {
                pes.buf.clear();
                self.dropped += 1;
                continue;
            }
            // A PES with a length (audio usually) is complete without waiting.
            if pes.buf.len() >= 6 {
                let len = usize::from(u16::from_be_bytes([pes.buf[4], pes.buf[5]]));
                if len != 0 && pes.buf.len() >= 6 + len {
                    self.finish(is_video, out);
                }
            }
        }
    }

    /// Turns the PES being gathered into tags, and empties it (keeping its
    /// buffer: a video PES is tens of kB, and reallocating it each frame showed).
    fn finish(&mut self, is_video: bool, out: &mut impl FnMut(Tag)) {
        let pes = self.pes(is_video);
        let buf = std::mem::take(&mut pes.buf);
        let broken = std::mem::replace(&mut pes.broken, false);
        if !buf.is_empty() {
            self.pes_to_tags(is_video, &buf, broken, out);
        }
        let pes = self.pes(is_video);
        pes.buf = buf;
        pes.buf.clear();
    }

    fn pes(&mut self, is_video: bool) -> &mut Pes {
        if is_video {
            &mut self.video
        } else {
            &mut self.audio
        }
    }

    fn pes_to_tags(&mut self, is_video: bool, pes: &[u8], broken: bool, out: &mut impl FnMut(Tag)) {
        if broken {
            self.dropped += 1;
            return;
        }
        let Some((pts, dts, payload)) = parse_pes(pes) else {
            self.dropped += 1;
            return;
        };
        let cts = (pts - dts).rem_euclid(WRAP);
        let mut dts = self.unwrap(dts) + self.offset;
        let i = usize::from(is_video);
        if let Some(prev) = self.last_dts[i]
            && !(-JUMP_BACK..=JUMP_FORWARD).contains(&(dts - prev))
        {
            // A new timeline (the encoder restarted, a splice): carry on one
            // frame after the old one, so every destination's time keeps going.
            let next = prev + if is_video { 3000 } else { 1920 };
            self.offset += next - dts;
            dts = next;
            self.jumps += 1;
        }
        self.last_dts[i] = Some(dts);
        let pts = dts + cts;
        let base = *self.base.get_or_insert(dts);
        let ms = |t: i64| (t - base).div_euclid(90);
        if is_video {
            self.video_au(ms(dts), ms(pts) - ms(dts), payload);
        } else {
            self.audio_frames(pts, base, payload);
        }
        self.release(out);
    }

    /// Follows a 33-bit time across wraps, near the last time seen.
    fn unwrap(&mut self, t: i64) -> i64 {
        let t = match self.last {
            None => t,
            Some(last) => {
                let mut t = (last - last.rem_euclid(WRAP)) + t;
                if t - last > WRAP / 2 {
                    t -= WRAP;
                } else if last - t > WRAP / 2 {
                    t += WRAP;
                }
                t
            }
        };
        self.last = Some(t);
        t
    }

    fn video_au(&mut self, dts_ms: i64, cts_ms: i64, payload: &[u8]) {
        let mut keyframe = false;
        let mut config_changed = false;
        let mut nals = Vec::new();
        for nal in annexb_nals(payload) {
            match nal[0] & 0x1f {
                9 => continue, // access unit delimiter: FLV has none
                7 if nal != self.sps.as_slice() => {
                    self.sps = nal.to_vec();
                    config_changed = true;
                }
                8 if nal != self.pps.as_slice() => {
                    self.pps = nal.to_vec();
                    config_changed = true;
                }
                5 => keyframe = true,
                _ => {}
            }
            nals.push(nal);
        }
        if self.sps.len() < 4 || self.pps.is_empty() {
            self.dropped += 1; // not decodable before the first SPS and PPS
            return;
        }
        if config_changed {
            let body = avc_sequence_header(&self.sps, &self.pps);
            self.vq
                .push_back(Tag::new(TagKind::Video, dts_ms, body, true, false));
        }
        let size: usize = nals.iter().map(|n| n.len() + 4).sum();
        let mut body = BytesMut::with_capacity(5 + size);
        body.put_u8(if keyframe { 0x17 } else { 0x27 });
        body.put_u8(1); // AVC NALU
        let cts = cts_ms.clamp(-(1 << 23), (1 << 23) - 1) as i32;
        body.put_slice(&cts.to_be_bytes()[1..]);
        for n in nals {
            body.put_u32(n.len() as u32);
            body.put_slice(n);
        }
        self.vq.push_back(Tag::new(
            TagKind::Video,
            dts_ms,
            body.freeze(),
            false,
            keyframe,
        ));
    }

    fn audio_frames(&mut self, pts: i64, base: i64, mut data: &[u8]) {
        let mut n = 0i64;
        while data.len() >= 7 {
            let Some(adts) = Adts::parse(data) else {
                self.dropped += 1;
                return;
            };
            let frame = &data[adts.header_len..adts.frame_len];
            let t = pts + n * 1024 * 90_000 / i64::from(adts.rate);
            let ms = (t - base).div_euclid(90);
            if self.asc != Some(adts.asc) {
                self.asc = Some(adts.asc);
                let mut body = BytesMut::with_capacity(4);
                body.put_slice(&[0xaf, 0]);
                body.put_slice(&adts.asc);
                self.aq
                    .push_back(Tag::new(TagKind::Audio, ms, body.freeze(), true, false));
            }
            let mut body = BytesMut::with_capacity(2 + frame.len());
            // AAC, and the 44 kHz / 16-bit / stereo flags FLV requires for AAC.
            body.put_slice(&[0xaf, 1]);
            body.put_slice(frame);
            self.aq
                .push_back(Tag::new(TagKind::Audio, ms, body.freeze(), false, false));
            data = &data[adts.frame_len..];
            n += 1;
        }
    }

    /// Hands on tags in decode order: the earlier head of the two queues
    /// while both have one, or a stream that ran too far ahead of the other.
    fn release(&mut self, out: &mut impl FnMut(Tag)) {
        fn span(q: &VecDeque<Tag>) -> i64 {
            q.back().map_or(0, |b| b.ts_ms) - q.front().map_or(0, |f| f.ts_ms)
        }
        loop {
            let take_video = match (self.vq.front(), self.aq.front()) {
                (Some(v), Some(a)) => v.ts_ms <= a.ts_ms,
                (Some(_), None) if self.audio_pid.is_none() || span(&self.vq) > MAX_SKEW_MS => true,
                (None, Some(_)) if span(&self.aq) > MAX_SKEW_MS => false,
                _ => return,
            };
            let tag = if take_video {
                self.vq.pop_front()
            } else {
                self.aq.pop_front()
            };
            out(tag.expect("a head was seen"));
        }
    }
}

/// (PTS, DTS, payload) of a PES; DTS is PTS when absent.
fn parse_pes(p: &[u8]) -> Option<(i64, i64, &[u8])> {
    if p.len() < 9 || p[..3] != [0, 0, 1] {
        return None;
    }
    let flags = p[7] >> 6;
    let start = 9 + usize::from(p[8]);
    if flags & 2 == 0 || p.len() < 14 || start > p.len() {
        return None; // no PTS: nothing to time it by
    }
    let pts = ts90k(&p[9..14]);
    let dts = if flags == 3 && p.len() >= 19 {
        ts90k(&p[14..19])
    } else {
        pts
    };
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let end = if len == 0 {
        p.len()
    } else {
        (6 + len).min(p.len())
    };
    Some((pts, dts, &p[start..end.max(start)]))
}

fn ts90k(b: &[u8]) -> i64 {
    (i64::from(b[0] >> 1 & 7) << 30)
        | (i64::from(b[1]) << 22)
        | (i64::from(b[2] >> 1) << 15)
        | (i64::from(b[3]) << 7)
        | i64::from(b[4] >> 1)
}

/// The NAL units of an Annex B byte stream (start codes removed).
fn annexb_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    /// Where the next start code begins, at or after `from`.
    fn next_start(data: &[u8], from: usize) -> Option<usize> {
        data.get(from..)?
            .windows(3)
            .position(|w| w == [0, 0, 1])
            .map(|i| from + i)
    }
    let mut at = next_start(data, 0);
    std::iter::from_fn(move || {
        loop {
            let s = at? + 3;
            at = next_start(data, s);
            // A 4-byte start code leaves a zero at the end of the previous NAL.
            let mut e = at.unwrap_or(data.len());
            while e > s && data[e - 1] == 0 {
                e -= 1;
            }
            if e > s {
                return Some(&data[s..e]);
            }
        }
    })
}

/// The FLV video tag body of an AVC sequence header.
fn avc_sequence_header(sps: &[u8], pps: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + sps.len() + pps.len());
    b.put_slice(&[0x17, 0, 0, 0, 0]);
    // AVCDecoderConfigurationRecord: version, profile, compatibility, level,
    // 4-byte NAL lengths, one SPS, one PPS.
    b.put_slice(&[1, sps[1], sps[2], sps[3], 0xff, 0xe1]);
    b.put_u16(sps.len() as u16);
    b.put_slice(sps);
    b.put_u8(1);
    b.put_u16(pps.len() as u16);
    b.put_slice(pps);
    b.freeze()
}

/// One ADTS frame header.
struct Adts {
    header_len: usize,
    frame_len: usize,
    rate: u32,
    asc: [u8; 2],
}

impl Adts {
    fn parse(d: &[u8]) -> Option<Self> {
        if d.len() < 7 || d[0] != 0xff || d[1] & 0xf0 != 0xf0 {
            return None;
        }
        let header_len = if d[1] & 1 == 1 { 7 } else { 9 };
        let object = (d[2] >> 6) + 1;
        let sf = (d[2] >> 2) & 0x0f;
        let channels = ((d[2] & 1) << 2) | (d[3] >> 6);
        let frame_len =
            (usize::from(d[3] & 3) << 11) | (usize::from(d[4]) << 3) | usize::from(d[5] >> 5);
        let rate = *RATES.get(usize::from(sf))?;
        if frame_len < header_len || frame_len > d.len() {
            return None;
        }
        let asc = [(object << 3) | (sf >> 1), ((sf & 1) << 7) | (channels << 3)];
        Some(Self {
            header_len,
            frame_len,
            rate,
            asc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_splits_on_three_and_four_byte_start_codes() {
        let d = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let nals: Vec<_> = annexb_nals(&d).collect();
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
        assert_eq!(annexb_nals(&[1, 2, 3]).count(), 0, "no start code");
    }

    #[test]
    fn adts_header_gives_the_audio_specific_config() {
        // AAC LC, 48 kHz (index 3), stereo, 10-byte frame, no CRC.
        let len = 10usize;
        let d = [
            0xff,
            0xf1,
            (1 << 6) | (3 << 2),
            (2 << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1f,
            0xfc,
            1,
            2,
            3,
        ];
        let a = Adts::parse(&d).unwrap();
        assert_eq!((a.rate, a.header_len, a.frame_len), (48000, 7, 10));
        assert_eq!(a.asc, [0x11, 0x90], "AAC LC, 48 kHz, 2 channels");
        let info = AudioInfo::from_asc(a.asc);
        assert_eq!((info.rate, info.channels), (48000, 2));
        assert!(Adts::parse(&d[..6]).is_none(), "short");
        assert!(Adts::parse(&[0u8; 10]).is_none(), "no sync word");
    }

    #[test]
    fn timestamps_follow_a_33_bit_wrap() {
        let mut r = TsToFlv::new(0x100, None);
        assert_eq!(r.unwrap(WRAP - 90), WRAP - 90);
        assert_eq!(r.unwrap(0), WRAP, "wrapped forwards");
        assert_eq!(
            r.unwrap(WRAP - 180),
            WRAP - 180,
            "a little back across the wrap"
        );
    }

    /// FLV file of the tags: what nginx-rtmp would record from them.
    fn flv_file(tags: &[Tag]) -> Vec<u8> {
        let mut f = vec![b'F', b'L', b'V', 1, 5, 0, 0, 0, 9, 0, 0, 0, 0];
        for t in tags {
            let kind = if t.kind == TagKind::Video { 9 } else { 8 };
            let ts = t.ts_ms.max(0) as u32;
            let len = t.body.len() as u32;
            f.push(kind);
            f.extend_from_slice(&len.to_be_bytes()[1..]);
            f.extend_from_slice(&ts.to_be_bytes()[1..]);
            f.push((ts >> 24) as u8);
            f.extend_from_slice(&[0, 0, 0]);
            f.extend_from_slice(&t.body);
            f.extend_from_slice(&(len + 11).to_be_bytes());
        }
        f
    }

    #[test]
    fn an_ffmpeg_ts_remuxes_to_an_flv_that_ffprobe_reads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("in.ts");
        let ok = std::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg("testsrc2=size=320x240:rate=25")
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "4",
            ])
            .args([
                "-c:v", "libx264", "-bf", "2", "-g", "25", "-c:a", "aac", "-f", "mpegts",
            ])
            .arg(&ts)
            .status()
            .unwrap();
        assert!(ok.success(), "ffmpeg made the pattern");
        let data = std::fs::read(&ts).unwrap();
        let mut r = TsToFlv::new(0x100, Some(0x101));
        let mut tags = Vec::new();
        for d in data.chunks(1316) {
            r.feed(d, &mut |t| tags.push(t));
        }
        assert_eq!(r.dropped, 0);
        assert!(tags[0].header && tags.iter().any(|t| t.header && t.kind == TagKind::Audio));
        let first_frame = tags.iter().find(|t| !t.header && t.kind == TagKind::Video);
        assert!(
            first_frame.is_some_and(|t| t.keyframe),
            "opens on a keyframe"
        );
        // Decode order: timestamps only go forward across both streams.
        assert!(tags.windows(2).all(|w| w[1].ts_ms >= w[0].ts_ms));
        let flv = dir.path().join("out.flv");
        std::fs::write(&flv, flv_file(&tags)).unwrap();
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name:format=duration",
            ])
            .args(["-of", "csv=p=0"])
            .arg(&flv)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("h264") && text.contains("aac"), "{text}");
        let decode = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&flv)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            decode.status.success() && decode.stderr.is_empty(),
            "{decode:?}"
        );
        let frames = tags
            .iter()
            .filter(|t| t.kind == TagKind::Video && !t.header)
            .count();
        // The last access unit waits for a next PES start that never comes.
        assert!((99..=100).contains(&frames), "{frames} of 100 frames");
    }

    #[test]
    fn a_timeline_that_jumps_back_carries_on_forward() {
        // Video PES with PTS only: 10 s, 10.033 s, then an encoder restart at 0.
        fn pes(pts: i64) -> Vec<u8> {
            let mut p = vec![0x47, 0x41, 0x00, 0x10, 0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
            p.extend([
                0x21 | ((pts >> 29) as u8 & 0x0e),
                (pts >> 22) as u8,
                ((pts >> 14) as u8 & 0xfe) | 1,
                (pts >> 7) as u8,
                ((pts << 1) as u8) | 1,
            ]);
            // SPS, PPS and an IDR slice.
            p.extend([
                0, 0, 1, 0x67, 0x42, 0, 0x1e, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88,
            ]);
            p.resize(188, 0xff);
            p
        }
        let mut r = TsToFlv::new(0x100, None);
        let mut ts = Vec::new();
        for (i, pts) in [900_000, 903_000, 0, 3000].into_iter().enumerate() {
            let mut p = pes(pts);
            p[3] = 0x10 | i as u8; // continuity counter
            r.feed(&p, &mut |t| {
                if !t.header {
                    ts.push(t.ts_ms)
                }
            });
        }
        assert_eq!(
            ts,
            vec![0, 33, 66],
            "the last frame waits for the next PES start"
        );
        assert_eq!(r.jumps, 1);
    }

    #[test]
    fn garbage_is_counted_and_makes_no_tag() {
        let mut r = TsToFlv::new(0x100, Some(0x101));
        let mut tags = 0;
        r.feed(&[0u8; 188 * 3], &mut |_| tags += 1);
        // A video PES start with no valid header.
        let mut p = vec![0x47, 0x41, 0x00, 0x10];
        p.resize(188, 0xee);
        r.feed(&p, &mut |_| tags += 1);
        p[3] = 0x11;
        r.feed(&p, &mut |_| tags += 1);
        assert_eq!(tags, 0);
        assert_eq!(r.dropped, 4, "3 non-TS packets and one broken PES");
    }
}

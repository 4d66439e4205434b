//! `strata-receiver`: one worker process per stream. It receives the bonded
//! RIST stream (`strata-rist`), and forwards it without transcoding to every
//! destination at once: RTMP/RTMPS (TS to FLV remux), SRT (TS passthrough),
//! HLS (segments cut on keyframes) and recordings (MPEG-TS files rotated by
//! duration, so a crash never leaves an unplayable file).
//!
//! Engine: GStreamer pipelines as in seed 003, one per output behind its own
//! bounded queue and reconnect loop, so a failing destination never touches
//! the input or the others. (A leaner hand-written remux path is the fallback
//! if `scripts/bench-receiver` shows GStreamer cannot meet its targets.)
//!
//! What we hand-write: the PMT probe that tells the video codec before any
//! pipeline is built (so H.265 to RTMP is refused up front), and the control
//! socket protocol (docs/receiver-control.md).

pub mod control;
pub mod destination;
pub mod output;
pub mod pipeline;
pub mod worker;

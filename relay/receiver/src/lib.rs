//! `strata-receiver`: one worker process per stream. It receives the bonded
//! RIST stream (`strata-rist`), and forwards it without transcoding to every
//! destination at once: RTMP/RTMPS (TS to FLV remux), SRT (TS passthrough),
//! HLS (segments cut on keyframes) and recordings (MPEG-TS files rotated by
//! duration, so a crash never leaves an unplayable file).
//!
//! Engine: GStreamer pipelines as in seed 003, one per output behind its own
//! bounded queue and reconnect loop, so a failing destination never touches
//! the input or the others. RTMP destinations share one TS to FLV remux
//! (`flv.rs`) and each runs only `appsrc ! rtmp2sink` (`rtmp.rs`), so an
//! extra RTMP destination does not demux and mux the stream again.
//! (`scripts/bench-receiver` shows GStreamer still costs more CPU than
//! ffmpeg per stream; a hand-written remux path is the open alternative.)
//!
//! What we hand-write: the PMT probe that tells the video codec before any
//! pipeline is built (so H.265 to RTMP is refused up front), and the control
//! socket protocol (docs/receiver-control.md).

pub mod control;
pub mod destination;
pub mod flv;
pub mod output;
pub mod pipeline;
mod rtmp;
pub mod worker;

//! `strata-receiver`: one worker process per stream. It receives the bonded
//! RIST stream (`strata-rist`), and forwards it without transcoding to every
//! destination at once: RTMP/RTMPS (TS to FLV remux), SRT (TS passthrough),
//! HLS (segments cut on keyframes) and recordings (MPEG-TS files rotated by
//! duration, so a crash never leaves an unplayable file).
//!
//! Engine, chosen by measurement (`scripts/bench-receiver`): RTMP takes a
//! Rust path. The input thread remuxes the TS to FLV once per stream
//! (`remux.rs`) and each RTMP destination publishes the tags over its own
//! socket (`rtmp.rs`, RTMP session by rml_rtmp, TLS by rustls). The
//! GStreamer chain it replaced (tsdemux ! h264parse ! flvmux ! rtmp2sink)
//! measured 1.6 to 1.8 times ffmpeg's CPU, mostly in thread hand-offs
//! between elements; the benchmark prints what the Rust path costs now.
//! What is left of the receiver's CPU is mostly librist's own two threads,
//! the same threads ffmpeg's RIST input runs.
//!
//! SRT, HLS and recordings stay GStreamer pipelines (srtsink, hlssink2,
//! splitmuxsink). Every output sits behind its own bounded queue and
//! reconnect loop, so a failing destination never touches the input or the
//! others.
//!
//! What we hand-write, and why:
//! - the PMT probe that tells the codecs before any output starts (so H.265
//!   to RTMP is refused up front);
//! - the TS to FLV remux (`remux.rs`): PES reassembly of two PIDs, Annex B to
//!   AVCC and ADTS to raw AAC are small; no maintained crate does the FLV
//!   side, and mpeg2ts-reader would cover only the TS layer;
//! - the control socket protocol (docs/receiver-control.md).

pub mod control;
pub mod destination;
pub mod flv;
pub mod output;
pub mod pipeline;
pub mod remux;
mod rtmp;
pub mod worker;

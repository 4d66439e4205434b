//! One RTMP connection of an RTMP output, fed with FLV tags by the stream's
//! shared remux (`flv.rs`): `appsrc ! queue ! rtmp2sink`, so each extra RTMP
//! destination costs only the RTMP session itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::flv::is_keyframe_tag;
use crate::output::{Shared, count_bytes, failure, parse, play, progress};

/// Runs one RTMP connection on FLV tags from the remux until it fails (Err)
/// or the output is stopped (Ok). Each connection opens with the stream
/// headers (the caps' streamheader, which rtmp2sink sends first) and then
/// waits for a keyframe, so the far end can decode from its first frame.
pub(crate) fn run(
    desc: &str,
    url: &str,
    rx: &Receiver<gst::Sample>,
    sh: &Shared,
) -> Result<(), String> {
    let (pipeline, guard) = parse(desc)?;
    pipeline
        .by_name("sink")
        .expect("sink")
        .set_property("location", url);
    let bytes = Arc::new(AtomicU64::new(0));
    let out = pipeline.by_name("out").and_then(|q| q.static_pad("src"));
    count_bytes(&out.expect("out queue"), &bytes);
    let (appsrc, bus) = play(&pipeline)?;
    let mut last_bytes = 0;
    let mut caps: Option<gst::Caps> = None;
    let mut keyframe_seen = false;
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            let _ = appsrc.end_of_stream();
            let _ = bus.timed_pop_filtered(
                gst::ClockTime::from_seconds(5),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            );
            drop(guard);
            sh.bytes.fetch_add(
                bytes.load(Ordering::Relaxed) - last_bytes,
                Ordering::Relaxed,
            );
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(sample) => {
                if let Some(buf) = sample.buffer_owned() {
                    if !keyframe_seen {
                        keyframe_seen = buf.map_readable().is_ok_and(|m| is_keyframe_tag(&m));
                    }
                    if keyframe_seen {
                        if let Some(c) = sample.caps_owned()
                            && caps.as_ref() != Some(&c)
                        {
                            appsrc.set_caps(Some(&c));
                            caps = Some(c);
                        }
                        let _ = appsrc.push_buffer(buf);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if let Some(why) = failure(&bus) {
            return Err(why);
        }
        progress(sh, &bytes, &mut last_bytes);
    }
}

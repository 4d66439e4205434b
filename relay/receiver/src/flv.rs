//! One TS to FLV remux per stream, shared by all of its RTMP destinations.
//!
//! Demuxing the TS, parsing H.264 and AAC and muxing FLV is most of what an
//! RTMP output costs. Done once, it makes each extra RTMP destination just
//! an `appsrc ! rtmp2sink` pipeline, fed through its own bounded queue. The
//! remux runs as an internal output (see `output.rs`). Its appsink hands
//! each FLV tag to every subscriber with `try_send`, so a stalled
//! destination only ever fills, and then drops from, its own queue.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use gstreamer as gst;

/// FLV tags an RTMP destination may hold: about 3 s of 30 fps video plus AAC.
const QUEUE_TAGS: usize = 256;

/// Called when a subscriber's queue was full and a tag was dropped for it.
pub type OnDrop = Arc<dyn Fn() + Send + Sync>;

struct Subscriber {
    id: String,
    tx: SyncSender<gst::Sample>,
    on_drop: OnDrop,
}

/// The remux's subscribers: one per RTMP destination.
#[derive(Default)]
pub struct FlvFanout {
    subs: Mutex<Vec<Subscriber>>,
}

impl FlvFanout {
    /// A fan-out with no subscriber yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds (or replaces) subscriber `id`; its tags arrive on the receiver.
    pub fn subscribe(&self, id: &str, on_drop: OnDrop) -> Receiver<gst::Sample> {
        let (tx, rx) = sync_channel(QUEUE_TAGS);
        let mut subs = self.subs.lock().expect("subscribers lock");
        subs.retain(|s| s.id != id);
        subs.push(Subscriber {
            id: id.to_string(),
            tx,
            on_drop,
        });
        rx
    }

    /// Whether any destination listens (the remux is idle otherwise).
    pub fn is_empty(&self) -> bool {
        self.subs.lock().expect("subscribers lock").is_empty()
    }

    /// Hands one FLV tag (with the caps that carry the stream headers) to
    /// every subscriber without waiting; a subscriber that is gone is removed.
    pub fn broadcast(&self, sample: &gst::Sample) {
        self.subs.lock().expect("subscribers lock").retain(|s| {
            match s.tx.try_send(sample.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    (s.on_drop)();
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

/// Whether an FLV tag (11-byte tag header, then the body) is an H.264
/// keyframe: video tag, frame type 1, AVC NAL units (not the sequence header).
pub fn is_keyframe_tag(tag: &[u8]) -> bool {
    tag.len() > 12 && tag[0] == 9 && tag[11] >> 4 == 1 && tag[12] == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn tag(kind: u8, first: u8, second: u8) -> Vec<u8> {
        let mut t = vec![kind, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, first, second];
        t.resize(16, 0);
        t
    }

    #[test]
    fn keyframes_are_video_avc_nalus_of_frame_type_1() {
        assert!(is_keyframe_tag(&tag(9, 0x17, 1)));
        assert!(!is_keyframe_tag(&tag(9, 0x27, 1)), "inter frame");
        assert!(!is_keyframe_tag(&tag(9, 0x17, 0)), "sequence header");
        assert!(!is_keyframe_tag(&tag(8, 0xaf, 1)), "audio");
        assert!(!is_keyframe_tag(&[9, 0, 0]), "short");
    }

    #[test]
    fn a_full_subscriber_drops_and_a_gone_one_is_removed() {
        gst::init().unwrap();
        let fan = FlvFanout::new();
        let drops = Arc::new(AtomicU64::new(0));
        let d = drops.clone();
        let slow = fan.subscribe(
            "slow",
            Arc::new(move || _ = d.fetch_add(1, Ordering::Relaxed)),
        );
        let gone = fan.subscribe("gone", Arc::new(|| {}));
        drop(gone);
        let sample = gst::Sample::builder()
            .buffer(&gst::Buffer::from_slice(tag(9, 0x17, 1)))
            .build();
        for _ in 0..QUEUE_TAGS + 10 {
            fan.broadcast(&sample);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 10);
        assert_eq!(fan.subs.lock().unwrap().len(), 1, "the gone one is removed");
        assert_eq!(slow.try_iter().count(), QUEUE_TAGS);
    }
}

//! The stream's FLV tags, shared by all of its RTMP destinations.
//!
//! The input thread remuxes the TS once (`remux.rs`) and hands each tag to
//! every RTMP destination with `try_send`, so a stalled destination only
//! ever fills, and then drops from, its own bounded queue. The latest codec
//! headers are kept here, so that a destination that (re)connects can open
//! with them.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::remux::{AudioInfo, Tag, TagKind};

/// FLV tags an RTMP destination may hold: about 3 s of 30 fps video plus AAC.
const QUEUE_TAGS: usize = 256;

/// Called when a subscriber's queue was full and a tag was dropped for it.
pub type OnDrop = Arc<dyn Fn() + Send + Sync>;

struct Subscriber {
    id: String,
    tx: SyncSender<Tag>,
    on_drop: OnDrop,
    /// A tag was dropped for it: the next one it gets is marked `after_gap`.
    lost: bool,
}

/// The codec headers a connection opens with.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// The AVC sequence header tag.
    pub video: Option<Tag>,
    /// The AAC AudioSpecificConfig tag.
    pub audio: Option<Tag>,
}

impl Headers {
    /// Sample rate and channels (from the AudioSpecificConfig), for metadata.
    pub fn audio_info(&self) -> Option<AudioInfo> {
        let asc = self.audio.as_ref()?.body.get(2..4)?;
        Some(AudioInfo::from_asc([asc[0], asc[1]]))
    }
}

/// The remux's subscribers: one per RTMP destination.
#[derive(Default)]
pub struct FlvFanout {
    subs: Mutex<Vec<Subscriber>>,
    headers: Mutex<Headers>,
}

impl FlvFanout {
    /// A fan-out with no subscriber yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds (or replaces) subscriber `id`; its tags arrive on the receiver.
    pub fn subscribe(&self, id: &str, on_drop: OnDrop) -> Receiver<Tag> {
        let (tx, rx) = sync_channel(QUEUE_TAGS);
        let mut subs = self.subs.lock().expect("subscribers lock");
        subs.retain(|s| s.id != id);
        subs.push(Subscriber {
            id: id.to_string(),
            tx,
            on_drop,
            lost: false,
        });
        rx
    }

    /// Whether any destination listens (no remux runs otherwise).
    pub fn is_empty(&self) -> bool {
        self.subs.lock().expect("subscribers lock").is_empty()
    }

    /// The latest codec headers.
    pub fn headers(&self) -> Headers {
        self.headers.lock().expect("headers lock").clone()
    }

    /// Hands one tag to every subscriber without waiting; a subscriber that
    /// is gone is removed. A header tag also replaces the kept header.
    pub fn broadcast(&self, tag: &Tag) {
        if tag.header {
            let mut h = self.headers.lock().expect("headers lock");
            let kept = match tag.kind {
                TagKind::Video => &mut h.video,
                TagKind::Audio => &mut h.audio,
            };
            *kept = Some(tag.clone());
        }
        self.subs.lock().expect("subscribers lock").retain_mut(|s| {
            let mut t = tag.clone();
            t.after_gap = s.lost;
            match s.tx.try_send(t) {
                Ok(()) => {
                    s.lost = false;
                    true
                }
                Err(TrySendError::Full(_)) => {
                    s.lost = true;
                    (s.on_drop)();
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn tag(header: bool) -> Tag {
        Tag {
            kind: TagKind::Video,
            ts_ms: 0,
            body: bytes::Bytes::from_static(&[0x17, 1, 0, 0, 0]),
            header,
            keyframe: !header,
            after_gap: false,
        }
    }

    #[test]
    fn a_full_subscriber_drops_and_a_gone_one_is_removed() {
        let fan = FlvFanout::new();
        let drops = Arc::new(AtomicU64::new(0));
        let d = drops.clone();
        let slow = fan.subscribe(
            "slow",
            Arc::new(move || _ = d.fetch_add(1, Ordering::Relaxed)),
        );
        let gone = fan.subscribe("gone", Arc::new(|| {}));
        drop(gone);
        for _ in 0..QUEUE_TAGS + 10 {
            fan.broadcast(&tag(false));
        }
        assert_eq!(drops.load(Ordering::Relaxed), 10);
        assert_eq!(fan.subs.lock().unwrap().len(), 1, "the gone one is removed");
        let got: Vec<_> = slow.try_iter().collect();
        assert_eq!(got.len(), QUEUE_TAGS);
        assert!(got.iter().all(|t| !t.after_gap));
        fan.broadcast(&tag(false));
        assert!(
            slow.try_recv().unwrap().after_gap,
            "the first tag after the drops says so"
        );
        fan.broadcast(&tag(false));
        assert!(!slow.try_recv().unwrap().after_gap);
    }

    #[test]
    fn header_tags_are_kept_for_later_connections() {
        let fan = FlvFanout::new();
        assert!(fan.headers().video.is_none());
        fan.broadcast(&tag(true));
        fan.broadcast(&tag(false));
        assert!(fan.headers().video.is_some_and(|t| t.header));
        assert!(fan.headers().audio.is_none());
    }
}

//! Commands to devices and their replies: every command gets an id, the
//! caller waits for the reply with that id (or gives up after a timeout).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_proto::message::Outcome;
use tokio::sync::oneshot;

/// Waiters for replies, by (device, command id).
pub struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<(String, u64), oneshot::Sender<Outcome>>>,
}

impl Default for Pending {
    fn default() -> Self {
        // Ids start at the clock so they do not repeat across relay restarts
        // (the agent answers a repeated id with its first answer).
        Pending {
            next: AtomicU64::new(crate::now_ms().max(1) as u64 * 1000),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl Pending {
    /// A fresh id and the receiver of its reply.
    pub fn open(&self, device_id: &str) -> (u64, oneshot::Receiver<Outcome>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("pending")
            .insert((device_id.to_string(), id), tx);
        (id, rx)
    }

    /// Hands a reply to its waiter; false if nobody waits (late or unknown).
    pub fn resolve(&self, device_id: &str, id: u64, outcome: Outcome) -> bool {
        let tx = self
            .waiting
            .lock()
            .expect("pending")
            .remove(&(device_id.to_string(), id));
        tx.is_some_and(|tx| tx.send(outcome).is_ok())
    }

    /// Stops waiting for a command (timed out).
    pub fn abandon(&self, device_id: &str, id: u64) {
        self.waiting
            .lock()
            .expect("pending")
            .remove(&(device_id.to_string(), id));
    }
}

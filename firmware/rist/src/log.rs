//! Routes librist's log lines to `tracing` and recognises the ones that mean
//! something to the application (a wrong PSK, garbage on a port, a peer timeout).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_rist_sys as sys;

/// What librist reported about one context, as counters.
#[derive(Debug, Default)]
pub(crate) struct LogTap {
    /// Which side: "sender" or "receiver" (a log field).
    pub role: &'static str,
    /// Packets that failed to decrypt or authenticate (wrong PSK, or none).
    pub auth_failures: AtomicU64,
    /// Datagrams librist itself refused as not RIST.
    pub malformed: AtomicU64,
    /// The last error librist logged, without its newline.
    pub last_error: Mutex<Option<String>>,
}

impl LogTap {
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            ..Default::default()
        }
    }

    fn classify(&self, level: sys::rist_log_level, msg: &str) {
        // Messages of librist 0.2.7 (rist-common.c: rist_peer_recv and the decrypt path).
        let auth = msg.contains("Malformed packet, rtp flag")
            || msg.contains("Disabling packet processing till new NONCE")
            || msg.contains("configured without keysize")
            || msg.contains("sent clear communication");
        if auth {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        if msg.contains("Packet too small") || msg.contains("not supported (wrong profile?)") {
            self.malformed.fetch_add(1, Ordering::Relaxed);
        }
        if level == sys::rist_log_level::RIST_LOG_ERROR || auth {
            *self.last_error.lock().expect("log lock") = Some(msg.to_string());
        }
    }

    /// A human-readable reason when packets fail authentication.
    pub fn auth_problem(&self) -> Option<String> {
        (self.auth_failures.load(Ordering::Relaxed) > 0).then(|| {
            "packets from the sender fail to decrypt: the PSK differs on the two sides".to_string()
        })
    }
}

/// The C callback; `arg` is a `*const LogTap` that outlives the context.
unsafe extern "C" fn log_cb(
    arg: *mut c_void,
    level: sys::rist_log_level,
    msg: *const c_char,
) -> c_int {
    if arg.is_null() || msg.is_null() {
        return 0;
    }
    // SAFETY: librist passes back the pointer we registered, which the owning
    // context keeps alive until after rist_destroy; msg is a C string valid for
    // the duration of the call.
    let (tap, msg) = unsafe { (&*(arg as *const LogTap), CStr::from_ptr(msg)) };
    let msg = msg.to_string_lossy();
    let msg = msg.trim_end();
    tap.classify(level, msg);
    use sys::rist_log_level as L;
    match level {
        L::RIST_LOG_ERROR => tracing::warn!(target: "librist", role = tap.role, "{msg}"),
        L::RIST_LOG_WARN | L::RIST_LOG_NOTICE => {
            tracing::info!(target: "librist", role = tap.role, "{msg}")
        }
        L::RIST_LOG_INFO => tracing::debug!(target: "librist", role = tap.role, "{msg}"),
        _ => tracing::trace!(target: "librist", role = tap.role, "{msg}"),
    }
    0
}

/// librist logging settings bound to a tap; must outlive the context using it.
pub(crate) struct LogSettings(*mut sys::rist_logging_settings);

// SAFETY: the settings are only read by librist's threads and freed once, on drop.
unsafe impl Send for LogSettings {}
// SAFETY: as above; Rust code never touches the pointee.
unsafe impl Sync for LogSettings {}

impl LogSettings {
    /// Settings that send INFO and above to `tap`. `tap` must outlive them.
    pub fn new(tap: &LogTap) -> anyhow::Result<Self> {
        let mut s: *mut sys::rist_logging_settings = ptr::null_mut();
        // Never RIST_LOG_SIMULATE: at that level librist drops packets on purpose.
        let level = if tracing::enabled!(target: "librist", tracing::Level::TRACE) {
            sys::rist_log_level::RIST_LOG_DEBUG
        } else {
            sys::rist_log_level::RIST_LOG_INFO
        };
        // SAFETY: s is a valid out-pointer; the callback and arg stay valid as documented.
        let rc = unsafe {
            sys::rist_logging_set(
                &mut s,
                level,
                Some(log_cb),
                tap as *const LogTap as *mut c_void,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc != 0 || s.is_null() {
            anyhow::bail!("rist_logging_set failed ({rc})");
        }
        Ok(Self(s))
    }

    pub fn as_ptr(&self) -> *mut sys::rist_logging_settings {
        self.0
    }
}

impl Drop for LogSettings {
    fn drop(&mut self) {
        // SAFETY: allocated by rist_logging_set and freed exactly once.
        unsafe { sys::rist_logging_settings_free2(&mut self.0) };
    }
}

//! Building librist peer configurations and the contexts both sides share.

use std::ffi::{c_char, c_void};

use strata_rist_sys as sys;

use crate::psk::Psk;

/// Copies `s` into a fixed C string field, NUL-terminated.
fn set_cstr(field: &mut [c_char], s: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.len() < field.len(),
        "{s:?} is too long for librist ({} max)",
        field.len() - 1
    );
    for (d, b) in field.iter_mut().zip(s.bytes().chain(std::iter::once(0))) {
        *d = b as c_char;
    }
    Ok(())
}

/// A main-profile peer configuration for `url` (`rist://HOST:PORT` or `rist://@HOST:PORT`).
pub(crate) fn peer_config(
    url: &str,
    psk: Option<&Psk>,
    buffer_ms: u32,
    weight: u32,
    cname: &str,
) -> anyhow::Result<sys::rist_peer_config> {
    let mut cfg = sys::rist_peer_config::default();
    // SAFETY: cfg is a valid, writable rist_peer_config.
    unsafe { sys::peer_config_defaults(&mut cfg) };
    set_cstr(&mut cfg.address, url)?;
    set_cstr(&mut cfg.cname, cname)?;
    cfg.recovery_length_min = buffer_ms;
    cfg.recovery_length_max = buffer_ms;
    cfg.weight = weight;
    if let Some(psk) = psk {
        set_cstr(&mut cfg.secret, psk.expose())?;
        // Without key_size librist silently sends in clear.
        cfg.key_size = 256;
    }
    Ok(cfg)
}

/// Wipes the secret from a configuration once librist has copied it.
pub(crate) fn scrub(cfg: &mut sys::rist_peer_config) {
    for b in cfg.secret.iter_mut() {
        // SAFETY: volatile write to a valid, aligned byte so it is not optimised away.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// A librist context pointer that may cross threads (librist locks internally).
#[derive(Clone, Copy)]
pub(crate) struct Ctx(pub *mut sys::rist_ctx);
// SAFETY: librist's public calls on a context are thread-safe (they take its locks).
unsafe impl Send for Ctx {}
// SAFETY: as above.
unsafe impl Sync for Ctx {}

/// A peer pointer owned by its context.
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub *mut sys::rist_peer);
// SAFETY: only passed back to librist calls on the owning context.
unsafe impl Send for Peer {}
// SAFETY: as above.
unsafe impl Sync for Peer {}

/// Registers `cb` as the stats callback with `arg`, every `interval_ms`.
pub(crate) fn set_stats_callback(
    ctx: Ctx,
    interval_ms: i32,
    cb: unsafe extern "C" fn(*mut c_void, *const sys::rist_stats) -> i32,
    arg: *const c_void,
) -> anyhow::Result<()> {
    // SAFETY: ctx is live; arg outlives the context (documented at each caller).
    let rc =
        unsafe { sys::rist_stats_callback_set(ctx.0, interval_ms, Some(cb), arg as *mut c_void) };
    anyhow::ensure!(rc == 0, "rist_stats_callback_set failed ({rc})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_psk_and_buffer() {
        let psk = Psk::new("0123456789abcdef").unwrap();
        let mut c = peer_config("rist://127.0.0.1:5000", Some(&psk), 1000, 7, "dev").unwrap();
        assert_eq!(c.key_size, 256);
        assert_eq!(c.recovery_length_max, 1000);
        assert_eq!(c.weight, 7);
        assert_eq!(c.secret[0] as u8, b'0');
        scrub(&mut c);
        assert!(c.secret.iter().all(|b| *b == 0));
        assert!(peer_config(&"x".repeat(300), None, 1, 1, "a").is_err());
    }
}

//! Who is asking: passwords, the session cookie, API tokens, CSRF tokens and
//! the login rate limit. [`Caller`] is the one extractor handlers use.

mod cache;
mod caller;
mod csrf;
mod password;
mod ratelimit;

pub use cache::{AuthCache, SessionEntry};
pub use caller::{ApiCaller, Caller, SESSION_COOKIE, SessionUser};
pub use csrf::{Csrf, PRE_SESSION_COOKIE, csrf_guard};
pub use password::{check_password_strength, hash_password, verify_password};
pub use ratelimit::LoginLimiter;

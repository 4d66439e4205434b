//! Login rate limit: per client address and per account name, so neither a
//! single client nor a distributed guesser against one account gets far.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keyed limiters for login attempts.
pub struct LoginLimiter {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_account: DefaultKeyedRateLimiter<String>,
}

impl LoginLimiter {
    /// Allows `per_minute` attempts a minute per address and per account (burst of the same size).
    pub fn new(per_minute: u32) -> LoginLimiter {
        let n = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        let quota = Quota::per_minute(n).allow_burst(n);
        LoginLimiter {
            by_ip: RateLimiter::keyed(quota),
            by_account: RateLimiter::keyed(quota),
        }
    }

    /// Forgets keys whose limit has fully recovered.
    pub fn retain_recent(&self) {
        self.by_ip.retain_recent();
        self.by_account.retain_recent();
    }

    /// Takes one attempt for this address and account; false when either is over its limit.
    pub fn attempt(&self, ip: Option<IpAddr>, account: &str) -> bool {
        let ip_ok = ip.is_none_or(|ip| self.by_ip.check_key(&ip).is_ok());
        let account_ok = self.by_account.check_key(&account.to_string()).is_ok();
        // Keep the maps from growing without bound under a spray of names.
        if self.by_account.len() > 100_000 {
            self.by_account.retain_recent();
        }
        ip_ok && account_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_and_per_account() {
        let l = LoginLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| l.attempt(Some(a), "ann@x.org")));
        assert!(!l.attempt(Some(a), "ann@x.org"));
        assert!(
            !l.attempt(Some(b), "ann@x.org"),
            "the account is limited from any address"
        );
        assert!(
            !l.attempt(Some(a), "bob@x.org"),
            "the address is limited for any account"
        );
        assert!(l.attempt(Some(b), "bob@x.org"));
    }
}

//! Logger setup and a rate limiter so a misbehaving guest cannot flood the host log.

use std::time::{Duration, Instant};

/// Sets up `RUST_LOG`-style filtering (default `info`); no timestamps under systemd.
pub fn init() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        b.format_timestamp(None);
    }
    let _ = b.try_init();
}

/// Allows at most `per_second` events a second; counts what it suppresses.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether to log this event. Logs how many were dropped when a new window opens.
    pub fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                log::warn!("{} similar messages suppressed", self.suppressed);
            }
            self.window = Instant::now();
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_caps_events_per_window() {
        let mut r = RateLimiter::new(3);
        let allowed = (0..100).filter(|_| r.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(r.suppressed, 97);
    }
}

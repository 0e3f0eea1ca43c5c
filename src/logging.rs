//! Logger setup (`RUST_LOG`-style filtering, journald-friendly lines under systemd) and a rate
//! limiter so a misbehaving guest cannot flood the host log.

use std::io::Write;
use std::time::{Duration, Instant};

use log::Level;

/// Where log lines go, which decides their format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// stderr is connected to journald (`$JOURNAL_STREAM` names it): `<N>` priority prefixes
    /// (sd-daemon(3)), no timestamps (the journal has its own).
    Journal,
    /// Run by systemd, stderr elsewhere: no timestamps.
    Systemd,
    /// A terminal or a file: env_logger's default format.
    Plain,
}

/// Sets up `RUST_LOG`-style filtering (default `info`); under systemd no timestamps, and when
/// stderr is the journal every line carries its syslog priority as a `<N>` prefix.
pub fn init() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match sink() {
        Sink::Journal => {
            b.format(|buf, record| {
                let msg =
                    journal_lines(record.level(), record.target(), &record.args().to_string());
                buf.write_all(msg.as_bytes())
            });
        }
        Sink::Systemd => {
            b.format_timestamp(None);
        }
        Sink::Plain => {}
    }
    let _ = b.try_init();
}

fn sink() -> Sink {
    if let Some(v) = std::env::var_os("JOURNAL_STREAM") {
        if v.to_str().is_some_and(stderr_is) {
            return Sink::Journal;
        }
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        return Sink::Systemd;
    }
    Sink::Plain
}

/// Whether stderr is the stream `$JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names: systemd's
/// advice, so a redirected stderr (`2>file` in a unit's script) gets plain lines.
fn stderr_is(journal_stream: &str) -> bool {
    // SAFETY: fstat writes into a zeroed, properly sized stat buffer we own.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(libc::STDERR_FILENO, &mut st) != 0 {
            return false;
        }
        st
    };
    names_stream(journal_stream, st.st_dev, st.st_ino)
}

fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The syslog priority of a level, as journald reads it from a `<N>` prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One record as journal lines: every line prefixed (journald splits a stream at newlines).
fn journal_lines(level: Level, target: &str, msg: &str) -> String {
    let p = priority(level);
    let mut out = String::with_capacity(msg.len() + target.len() + 8);
    for (i, line) in msg.split('\n').enumerate() {
        if i == 0 {
            out.push_str(&format!("<{p}>{target}: {line}\n"));
        } else {
            out.push_str(&format!("<{p}>{line}\n"));
        }
    }
    out
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
    fn journal_lines_carry_the_syslog_priority_on_every_line() {
        assert_eq!(
            journal_lines(Level::Warn, "snapblk::vhost", "queue 0: refused"),
            "<4>snapblk::vhost: queue 0: refused\n"
        );
        assert_eq!(
            journal_lines(Level::Error, "t", "one\ntwo"),
            "<3>t: one\n<3>two\n"
        );
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Trace), 7);
    }

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(names_stream("8:1234\n", 8, 1234));
        assert!(!names_stream("8:1235", 8, 1234));
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("x:y", 8, 1234));
    }

    #[test]
    fn rate_limiter_caps_events_per_window() {
        let mut r = RateLimiter::new(3);
        let allowed = (0..100).filter(|_| r.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(r.suppressed, 97);
    }
}

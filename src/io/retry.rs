//! The one retry policy for network transfers: exponential backoff with a cap, a limit
//! on consecutive attempts without progress, and the server's `Retry-After` honoured
//! (seconds or an HTTP date), itself capped so a hostile server cannot park a build.

use std::time::{Duration, SystemTime};

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Consecutive failed attempts (without progress) before giving up.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` that is obeyed; longer values are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `failures + 1`, after `failures` consecutive failures
    /// (at least 1); the server's `Retry-After`, when given, replaces the backoff.
    pub fn wait(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(w) => w.min(self.max_retry_after),
            None => self
                .initial_backoff
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(self.max_backoff),
        }
    }

    /// Whether another attempt is allowed after `failures` consecutive failures.
    pub fn gives_up(&self, failures: u32) -> bool {
        failures >= self.max_attempts
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(when.timestamp().max(0) as u64);
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of a response, if it has a valid one.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_retry_after_wins_up_to_its_own() {
        let p = RetryPolicy::default();
        assert_eq!(p.wait(1, None), Duration::from_secs(1));
        assert_eq!(p.wait(3, None), Duration::from_secs(4));
        assert_eq!(p.wait(30, None), Duration::from_secs(30));
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(120)
        );
        assert!(!p.gives_up(5) && p.gives_up(6));
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 12 ", now),
            Some(Duration::from_secs(12))
        );
        // 1_700_000_030 s after the epoch.
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2000 22:13:50 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

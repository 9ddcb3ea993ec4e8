//! Per-sandbox caps and the token bucket that enforces the bandwidth cap.

use std::time::{Duration, Instant};

/// Caps of one sandbox's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Connections (TCP, and UDP flows) open at once, connecting included.
    pub max_connections: usize,
    /// Payload bytes per second, each way.
    pub bytes_per_sec: u64,
}

/// Most connections a sandbox may be allowed.
pub const MAX_CONNECTIONS: usize = 4096;
/// Smallest bandwidth cap a sandbox may be given, bytes per second.
pub const MIN_BYTES_PER_SEC: u64 = 1024;

impl Limits {
    /// 256 connections; 64 MiB/s each way.
    pub const DEFAULT: Limits = Limits {
        max_connections: 256,
        bytes_per_sec: 64 << 20,
    };

    /// The caps a caller asked for, defaults for those it did not; a value
    /// out of range is an error naming the field (`max_connections`,
    /// `max_bytes_per_sec`).
    pub fn new(
        max_connections: Option<usize>,
        bytes_per_sec: Option<u64>,
    ) -> Result<Limits, (&'static str, String)> {
        let max_connections = max_connections.unwrap_or(Limits::DEFAULT.max_connections);
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            return Err(("max_connections", format!("must be 1 to {MAX_CONNECTIONS}")));
        }
        let bytes_per_sec = bytes_per_sec.unwrap_or(Limits::DEFAULT.bytes_per_sec);
        if bytes_per_sec < MIN_BYTES_PER_SEC {
            return Err((
                "max_bytes_per_sec",
                format!("must be at least {MIN_BYTES_PER_SEC}"),
            ));
        }
        Ok(Limits {
            max_connections,
            bytes_per_sec,
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Bytes that may pass now: `rate` per second, at most a tenth of a
/// second's worth (64 KiB at least) saved up.
#[derive(Debug)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

/// Smallest wait worth scheduling when the bucket is empty.
const MIN_WAIT: Duration = Duration::from_millis(1);

impl Bucket {
    /// A full bucket of `rate` bytes per second.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let burst = (rate / 10).max(64 << 10);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let earned = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last = now;
        }
    }

    /// How many of `want` bytes may pass now.
    pub fn available(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        want.min(usize::try_from(self.tokens).unwrap_or(usize::MAX))
    }

    /// Takes `n` bytes that passed.
    pub fn take(&mut self, n: usize) {
        self.tokens = self.tokens.saturating_sub(n as u64);
    }

    /// When, if empty, the bucket will hold a useful amount (1/100 s of
    /// rate, or all of a small burst) again.
    pub fn refill_at(&self) -> Option<Instant> {
        if self.tokens > 0 {
            return None;
        }
        let want = (self.rate / 100).clamp(1, self.burst);
        let wait = Duration::from_nanos(want.saturating_mul(1_000_000_000) / self.rate.max(1));
        Some(self.last + wait.max(MIN_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1 << 20, t0);
        // A tenth of a second of 1 MiB/s.
        assert_eq!(b.available(usize::MAX, t0), 104_857);
        let all = b.available(usize::MAX, t0);
        b.take(all);
        assert_eq!(b.available(1000, t0), 0);
        let wake = b.refill_at().expect("empty buckets say when to come back");
        assert!(wake > t0 && wake <= t0 + Duration::from_millis(11));
        // 50 ms later: 50 ms worth; after 10 s, no more than the burst.
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(b.available(usize::MAX, t1), (1 << 20) / 20);
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(b.available(usize::MAX, t2), 104_857);
    }
}

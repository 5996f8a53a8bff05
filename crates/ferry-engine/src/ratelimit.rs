//! A token bucket shared by all transfers of a run (`--bwlimit`).

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self { bytes_per_sec: rate, state: Mutex::new((rate / 10.0, Instant::now())) }
    }

    /// Wait until `n` bytes may pass.
    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut st = self.state.lock().await;
            let now = Instant::now();
            let burst = self.bytes_per_sec / 10.0;
            st.0 =
                (st.0 + now.duration_since(st.1).as_secs_f64() * self.bytes_per_sec).min(burst.max(n as f64));
            st.1 = now;
            st.0 -= n as f64;
            if st.0 < 0.0 {
                Duration::from_secs_f64(-st.0 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_throughput() {
        let rl = RateLimit::new(1_000_000);
        let start = Instant::now();
        for _ in 0..30 {
            rl.acquire(10_000).await;
        }
        // 300 kB at 1 MB/s, minus the initial burst of 100 kB: at least ~0.2 s.
        assert!(start.elapsed() >= Duration::from_millis(180), "{:?}", start.elapsed());
    }
}

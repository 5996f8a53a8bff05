//! The terminal progress line: files, bytes, rate and ETA, also while scanning.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::size::human;

pub struct Display {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Display {
    pub fn start(progress: Arc<Progress>) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        let start = Instant::now();
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                b.set_message(line(&progress, start.elapsed()));
                b.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { bar, task }
    }

    /// The progress line, for printing lines around it.
    pub fn bar(&self) -> ProgressBar {
        self.bar.clone()
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

fn line(p: &Progress, elapsed: Duration) -> String {
    let listed = p.listed.load(Relaxed);
    let done = p.transferred.load(Relaxed);
    let skipped = p.skipped.load(Relaxed);
    let failed = p.failed.load(Relaxed);
    let moved = p.bytes_moved();
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = moved as f64 / secs;
    let scanning = !p.scan_done.load(Relaxed);
    let left = p.bytes_left();
    // While scanning, what is listed so far: the real ETA is no shorter.
    let eta = if rate > 0.0 && left > 0 {
        let at_least = if scanning { "≥ " } else { "" };
        format!(", ETA {at_least}{}", duration((left as f64 / rate).ceil() as u64))
    } else {
        String::new()
    };
    format!(
        "{}{listed} listed ({}), {done} transferred, {skipped} unchanged, {failed} failed | {} at {}/s{eta}",
        if scanning { "scanning… " } else { "" },
        human(p.listed_bytes.load(Relaxed) as f64),
        human(moved as f64),
        human(rate),
    )
}

/// `42s`, `3m05s`, `2h03m`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_counts_rate_and_an_eta_of_what_is_left() {
        let p = Progress::default();
        p.listed.store(3, Relaxed);
        p.listed_bytes.store(300 << 20, Relaxed);
        p.bytes_moving.store(10 << 20, Relaxed);
        p.skipped.store(1, Relaxed);
        p.skipped_bytes.store(100 << 20, Relaxed);
        // 10 MiB in 1 s, 190 MiB left: 19 s, at least, while scanning.
        let l = line(&p, Duration::from_secs(1));
        assert!(l.starts_with("scanning… 3 listed (300"), "{l}");
        assert!(l.contains("1 unchanged") && l.ends_with("/s, ETA ≥ 19s"), "{l}");
        // Files not moved yet count, whether or not they are queued: the
        // ETA follows everything listed that is not settled.
        p.scan_done.store(true, Relaxed);
        assert!(line(&p, Duration::from_secs(1)).ends_with(", ETA 19s"));
        // A failed file's bytes are settled; so is what moved.
        p.unmoved_bytes.store(100 << 20, Relaxed);
        p.transferred_bytes.store(100 << 20, Relaxed);
        p.transferred.store(1, Relaxed);
        let l = line(&p, Duration::from_secs(1));
        assert!(!l.contains("ETA") && l.contains("1 transferred"), "nothing left: {l}");
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7380), "2h03m");
    }
}

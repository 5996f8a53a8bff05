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
    let moved = p.transferred_bytes.load(Relaxed).max(p.bytes_moving.load(Relaxed));
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = moved as f64 / secs;
    let scanning = !p.scan_done.load(Relaxed);
    let total = p.to_transfer_bytes.load(Relaxed);
    let eta = if !scanning && rate > 0.0 && total > moved {
        format!(", ETA {}s", ((total - moved) as f64 / rate).ceil())
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

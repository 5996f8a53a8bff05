//! What `ferry sync` writes while a run goes on: a dry run's plan, line by
//! line, and `--failures-csv`, every failed item. The summary at the end
//! keeps only the first 10,000 of each.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use ferry_engine::{Failure, Journal, PlanLine, FAILURE_CSV_HEADER};
use indicatif::ProgressBar;

use crate::size::human;

#[derive(Debug)]
pub struct RunJournal {
    /// Print plan lines on stdout as they are made.
    print_plan: bool,
    csv: Option<Mutex<Csv>>,
    /// The progress line, kept clear of printed lines.
    bar: OnceLock<ProgressBar>,
}

#[derive(Debug)]
struct Csv {
    path: PathBuf,
    out: BufWriter<File>,
    /// The first write error; later rows are not attempted.
    error: Option<std::io::Error>,
}

impl RunJournal {
    pub fn new(print_plan: bool, failures_csv: Option<&Path>) -> anyhow::Result<Self> {
        let csv = match failures_csv {
            None => None,
            Some(path) => {
                let mut out = BufWriter::new(
                    File::create(path)
                        .with_context(|| format!("creating --failures-csv {}", path.display()))?,
                );
                let error = out.write_all(FAILURE_CSV_HEADER.as_bytes()).err();
                Some(Mutex::new(Csv { path: path.to_path_buf(), out, error }))
            }
        };
        Ok(Self { print_plan, csv, bar: OnceLock::new() })
    }

    pub fn show_progress_on(&self, bar: ProgressBar) {
        let _ = self.bar.set(bar);
    }

    /// Flush the failure list; an error names the file.
    pub fn finish(&self) -> anyhow::Result<()> {
        let Some(csv) = &self.csv else { return Ok(()) };
        let mut csv = csv.lock().expect("csv lock");
        let res = match csv.error.take() {
            Some(e) => Err(e),
            None => csv.out.flush().and_then(|()| csv.out.get_ref().sync_all()),
        };
        res.with_context(|| format!("writing --failures-csv {}: the list is incomplete", csv.path.display()))
    }
}

impl Journal for RunJournal {
    fn failure(&self, failure: &Failure) {
        if let Some(csv) = &self.csv {
            let mut csv = csv.lock().expect("csv lock");
            if csv.error.is_none() {
                csv.error = csv.out.write_all(failure.csv_row().as_bytes()).err();
            }
        }
    }

    fn plan(&self, line: &PlanLine) {
        if !self.print_plan {
            return;
        }
        let text = match line.size {
            Some(size) => {
                format!("would {} {} ({}, {})", line.action, line.path, human(size as f64), line.reason)
            }
            None => format!("would {} {}/ (directory, {})", line.action, line.path, line.reason),
        };
        match self.bar.get() {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }
}

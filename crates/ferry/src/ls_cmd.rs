//! `ferry ls LOCATION`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ferry_model::EntryKind;
use ferry_storage::{Location, OpenOptions, ProcessEnv};

use crate::cli::LsArgs;

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let opts = OpenOptions { retries: 5, ..OpenOptions::default() };
    let loc =
        Location::open(&args.location, &ProcessEnv, opts).await.with_context(|| args.location.clone())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut files, mut dirs, mut bytes, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut write_err = None;
    ferry_engine::walk(
        &loc,
        args.list_threads as usize,
        args.recursive,
        |e| {
            if e.kind == EntryKind::Dir {
                dirs += 1;
            } else {
                files += 1;
                bytes += e.size;
            }
            if !args.summary && write_err.is_none() {
                let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
                if let Err(err) = writeln!(out, "{:>12} {}{slash}", e.size, e.path) {
                    write_err = Some(err);
                }
            }
        },
        |name, reason| {
            bad += 1;
            eprintln!("skipped {name:?}: {reason}");
        },
    )
    .await?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    if args.summary {
        writeln!(out, "{files} file(s), {dirs} dir(s), {bytes} byte(s)")?;
    }
    out.flush().ok();
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

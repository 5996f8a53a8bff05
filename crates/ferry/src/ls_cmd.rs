//! `ferry ls LOCATION`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ferry_model::{Entry, EntryKind};
use ferry_storage::{Location, OpenOptions, ProcessEnv};

use crate::cli::LsArgs;
use crate::source;

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let opts = OpenOptions { retries: 5, ..OpenOptions::default() };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // One file: shown as a listing of just it.
    if let Some((dir, name)) = source::local_file(&args.location) {
        let loc = Location::open(&dir, &ProcessEnv, opts).await.with_context(|| args.location.clone())?;
        if let Some((e, _)) = loc.stat(&name).await.with_context(|| args.location.clone())? {
            print_one(&mut out, &args, &e)?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let loc =
        Location::open(&args.location, &ProcessEnv, opts).await.with_context(|| args.location.clone())?;
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
                if let Err(err) = write_line(&mut out, &e) {
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
    // A prefix in a bucket with nothing under it: an object's key, an empty
    // directory (its marker is there), or nothing.
    if files + dirs + bad == 0 && loc.empty_means_missing() {
        let found = source::object_file(&args.location, opts).await.with_context(|| args.location.clone())?;
        if let Some((_, _, e)) = found {
            print_one(&mut out, &args, &e)?;
            return Ok(ExitCode::SUCCESS);
        }
        if loc.stat_dir("").await.with_context(|| args.location.clone())?.is_none() {
            return Err(source::nothing_stored(&args.location));
        }
    }
    if args.summary {
        writeln!(out, "{files} file(s), {dirs} dir(s), {bytes} byte(s)")?;
    }
    out.flush().ok();
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A location that names one file: the line (or summary) of a listing of it.
fn print_one(out: &mut impl Write, args: &LsArgs, e: &Entry) -> anyhow::Result<()> {
    if args.summary {
        writeln!(out, "1 file(s), 0 dir(s), {} byte(s)", e.size)?;
    } else {
        write_line(out, e)?;
    }
    out.flush()?;
    Ok(())
}

/// One entry of a listing: `SIZE PATH`, directories ending with `/`.
fn write_line(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
    writeln!(out, "{:>12} {}{slash}", e.size, e.path)
}

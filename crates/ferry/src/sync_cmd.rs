//! `ferry sync SRC DST`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use ferry_engine::{check_overlap, CheckpointSpec, Compare, Filter, Report, Sync, SyncOptions, Verify};
use ferry_storage::{Location, LocationSpec, OpenOptions, PartPolicy, ProcessEnv};
use ferry_store::Store;

use crate::cli::{SyncArgs, VerifyArg};
use crate::journal::RunJournal;
use crate::progress::Display;
use crate::size::human;
use crate::source;

pub async fn run(mut args: SyncArgs) -> anyhow::Result<ExitCode> {
    let mut opts = options(&args)?;
    // One file as the source (a local one, or one in a `file://` store): its
    // directory, with just that name listed, as `--files-from` would (DST is
    // the directory it goes into).
    if let Some((dir, name)) = source::local_file(&args.src) {
        source_is_file(&mut args, &mut opts, dir, name)?;
    }
    // Before opening: opening the destination creates it. Malformed
    // locations are reported by `Location::open` below.
    // Only what is named is read from a list: no tree is walked into DST.
    let dst_spec = LocationSpec::parse(&args.dst).ok();
    if let (Ok(src), Some(dst)) = (LocationSpec::parse(&args.src), &dst_spec) {
        check_overlap(&src, dst, opts.files_from.is_none().then_some(&opts.filter))?;
    }
    // A dry run creates nothing.
    let dst_new = dst_spec
        .and_then(|d| d.local_dir())
        .filter(|_| !args.dry_run)
        .map(|d| missing_dirs(&d))
        .unwrap_or_default();
    // Created by this run (the destination and its missing parents) and
    // still empty: a run that ends before copying anything (an error, a
    // source with nothing stored) leaves none.
    let remove_new_dst = || {
        for dir in &dst_new {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    };
    let (mut report, mut journal) = transfer(&args, opts.clone()).await.inspect_err(|_| remove_new_dst())?;
    // Nothing under an object prefix: the key of one object (found only
    // now, so that no run pays a lookup for it), or nothing at all.
    if report.source_missing {
        let found = source::object_file(&args.src, open_options(&args, false)).await;
        match found.with_context(|| format!("source {}", args.src))? {
            Some((dir, name, _)) => {
                source_is_file(&mut args, &mut opts, dir, name)?;
                (report, journal) = transfer(&args, opts).await.inspect_err(|_| remove_new_dst())?;
            }
            None => {
                remove_new_dst();
                bail!("source {}", source::nothing_stored(&args.src));
            }
        }
    }
    let failures_csv = args.failures_csv.as_deref();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !args.quiet || !report.success() {
        print_text(&report, args.quiet, failures_csv);
    }
    journal.finish()?;
    if let Some(why) = &report.stopped {
        bail!(
            "the run stopped early (--unreachable-limit): {why}; {} item(s) not tried; rerun to resume",
            report.not_tried
        );
    }
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn open_options(args: &SyncArgs, is_dst: bool) -> OpenOptions {
    OpenOptions {
        // Links are followed where they are read from: a destination's
        // are items to replace or delete, never a way out of it.
        follow_links: args.copy_links && !is_dst,
        create: is_dst && !args.dry_run,
        may_be_missing: is_dst && args.dry_run,
        parts: PartPolicy {
            chunk: args.part_size as usize,
            concurrent: args.part_concurrency as usize,
            room: args.buffer_memory,
        },
        retries: args.retries,
    }
}

/// SRC names one file: copy it from `dir`, as `--files-from` would.
fn source_is_file(
    args: &mut SyncArgs,
    opts: &mut SyncOptions,
    dir: String,
    name: String,
) -> anyhow::Result<()> {
    if args.files_from.is_some() || args.delete {
        bail!("the source {} is a file: --files-from and --delete need a directory", args.src);
    }
    args.src = dir;
    opts.files_from = Some(vec![name]);
    Ok(())
}

/// Open both locations and run, with the progress display on a terminal.
/// The journal is finished by the caller, once the summary is printed.
async fn transfer(args: &SyncArgs, opts: SyncOptions) -> anyhow::Result<(Report, Arc<RunJournal>)> {
    let src = Location::open(&args.src, &ProcessEnv, open_options(args, false))
        .await
        .with_context(|| format!("source {}", args.src))?;
    let dst = Location::open(&args.dst, &ProcessEnv, open_options(args, true))
        .await
        .with_context(|| format!("destination {}", args.dst))?;

    let mut sync = Sync::new(src, dst, opts);
    if !args.no_checkpoint {
        let url = match &args.state_db {
            Some(url) => url.clone(),
            None => default_state_db(!args.dry_run)?,
        };
        let context = "opening the checkpoint database (see --state-db)";
        // A dry run reads the checkpoint of an earlier run, as the run
        // would, and creates none.
        let store = if args.dry_run {
            Store::connect_existing(&url).await.context(context)?
        } else {
            Some(Store::connect(&url).await.context(context)?)
        };
        if let Some(store) = store {
            sync = sync.with_checkpoint(CheckpointSpec { store, wait_for_pair: false });
        }
    }
    // Created once both locations opened: a bad one leaves no file behind.
    let journal =
        Arc::new(RunJournal::new(args.dry_run && !args.json && !args.quiet, args.failures_csv.as_deref())?);
    sync.progress().set_journal(journal.clone());
    let display = (!args.quiet && !args.json && std::io::stderr().is_terminal())
        .then(|| Display::start(sync.progress()));
    if let Some(d) = &display {
        journal.show_progress_on(d.bar());
    }
    let report = sync.run().await;
    if let Some(d) = display {
        d.finish();
    }
    Ok((report?, journal))
}

fn options(args: &SyncArgs) -> anyhow::Result<SyncOptions> {
    let compare = if args.checksum {
        Compare::Checksum
    } else if args.force {
        Compare::Force
    } else if args.ignore_existing {
        Compare::IgnoreExisting
    } else {
        Compare::SizeMtime
    };
    let files_from = match &args.files_from {
        None => None,
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading --files-from from stdin")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --files-from {}", path.display()))?
            };
            Some(
                text.lines()
                    .map(|l| l.trim_end_matches('\r').trim_start_matches("./").to_string())
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .collect(),
            )
        }
    };
    if args.delete && args.files_from.is_some() {
        bail!("--delete needs a full listing of the source and cannot be combined with --files-from");
    }
    if args.buffer_memory < 1 << 20 {
        bail!("--buffer-memory {} leaves no room to copy with: give at least 1M", args.buffer_memory);
    }
    if !(5 << 20..=5 << 30).contains(&args.part_size) {
        bail!(
            "--part-size {}: parts of a multipart upload are 5M to 5G (larger files get larger parts by themselves)",
            human(args.part_size as f64)
        );
    }
    if let (Some(min), Some(max)) = (args.min_size, args.max_size) {
        if min > max {
            bail!("--min-size {min} is larger than --max-size {max}");
        }
    }
    Ok(SyncOptions {
        compare,
        update: args.update,
        delete: args.delete,
        max_delete: args.max_delete,
        filter: Filter::new(&args.include, &args.exclude, args.min_size, args.max_size)?
            .with_times(args.min_age.clone(), args.max_age.clone())?,
        files_from,
        dry_run: args.dry_run,
        threads: args.threads as usize,
        buffer_bytes: args.buffer_memory,
        list_threads: args.list_threads as usize,
        level_in_memory: args.level_in_memory as usize,
        bwlimit: args.bwlimit,
        verify: match args.verify {
            VerifyArg::None => Verify::None,
            VerifyArg::Transferred => Verify::Transferred,
            VerifyArg::All => Verify::All,
        },
        copy_links: args.copy_links,
        store_copy: !args.no_store_copy,
        copy_cutoff: args.copy_cutoff,
        unreachable_limit: std::time::Duration::from_secs(args.unreachable_limit),
        ..SyncOptions::default()
    })
}

fn default_state_db(create: bool) -> anyhow::Result<String> {
    let dir = match std::env::var_os("FERRY_STATE_DIR") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_STATE_HOME") {
            Some(d) => PathBuf::from(d).join("ferry"),
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".local/state/ferry"),
                None => bail!("cannot place the checkpoint database: set FERRY_STATE_DIR or use --state-db"),
            },
        },
    };
    if create {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    Ok(format!("sqlite://{}", dir.join("sync.db").display()))
}

/// The summary; a dry run's plan was printed as it was made.
fn print_text(r: &Report, quiet: bool, failures_csv: Option<&std::path::Path>) {
    if !quiet {
        let rate = r.transferred_bytes as f64 / r.elapsed_seconds.max(0.001);
        println!(
            "{}{} item(s), {} transferred in {:.1}s ({}/s); {} unchanged, {} excluded, {} deleted, {} failed{}{}",
            if r.dry_run { "dry run: would transfer " } else { "transferred " },
            r.transferred,
            human(r.transferred_bytes as f64),
            r.elapsed_seconds,
            human(rate),
            r.skipped,
            r.excluded,
            r.deleted,
            r.failed,
            match r.other_failures {
                0 => String::new(),
                n => format!(" (and {n} other failure(s): deletions, --max-delete, --verify all)"),
            },
            if r.resumed { " (resumed from checkpoint)" } else { "" },
        );
        if r.copied_in_store > 0 {
            println!("{} of them copied by the store itself, between its buckets", r.copied_in_store);
        }
        if r.aborted_uploads > 0 {
            println!("aborted {} multipart upload(s) left open by the interrupted run", r.aborted_uploads);
        }
        for w in &r.warnings {
            println!("warning: {w}");
        }
    }
    for line in failure_lines(r, failures_csv) {
        eprintln!("{line}");
    }
}

/// Failures shown when a run stopped early (--unreachable-limit): the items
/// in flight then (up to --threads) all failed for the same reason, which
/// the closing error line gives.
const SHOWN_WHEN_STOPPED: usize = 10;

/// What goes to stderr after the summary: skipped deletions and failures.
fn failure_lines(r: &Report, failures_csv: Option<&std::path::Path>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(why) = &r.delete_skipped {
        out.push(format!("deletions skipped: {why}"));
    }
    if r.failures.is_empty() {
        return out;
    }
    out.push("failed items:".into());
    let shown = if r.stopped.is_some() { SHOWN_WHEN_STOPPED.min(r.failures.len()) } else { r.failures.len() };
    for f in &r.failures[..shown] {
        out.push(format!("  {}: {}", if f.path.is_empty() { "(run)" } else { &f.path }, f.reason));
    }
    let more = r.failures_omitted + (r.failures.len() - shown) as u64;
    if more > 0 {
        out.push(match failures_csv {
            Some(path) => format!("  … and {more} more, all listed in {}", path.display()),
            None => format!("  … and {more} more (--failures-csv FILE lists them all)"),
        });
    }
    out
}

/// The directories of `dir` and its ancestors that do not exist, deepest
/// first. Through a `..` the ancestors as written are not the directories
/// that creating `dir` makes: then `dir` alone.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    if dir.components().any(|c| c == std::path::Component::ParentDir) {
        return if dir.exists() { Vec::new() } else { vec![dir] };
    }
    dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_path_buf).collect()
}

#[cfg(test)]
mod tests {
    use ferry_engine::Failure;

    use super::*;

    fn report(failures: usize, omitted: u64) -> Report {
        let failures = (0..failures)
            .map(|i| Failure { path: format!("f{i}"), reason: "cannot connect to the store".into() })
            .collect();
        Report { failed: 3 + omitted, failures, failures_omitted: omitted, ..Default::default() }
    }

    #[test]
    fn missing_dirs_are_those_creating_the_destination_makes() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::create_dir(t.join("existing")).unwrap();
        assert_eq!(missing_dirs(&t.join("new/a")), [t.join("new/a"), t.join("new")]);
        assert!(missing_dirs(&t.join("existing")).is_empty());
        // `new/..` is `t`: `existing` is not this run's to remove.
        let through = t.join("new/../existing/dst");
        assert_eq!(missing_dirs(&through), vec![through]);
    }

    #[test]
    fn every_kept_failure_is_shown_with_what_was_left_out() {
        let lines = failure_lines(&report(3, 0), None);
        assert_eq!(
            lines,
            [
                "failed items:",
                "  f0: cannot connect to the store",
                "  f1: cannot connect to the store",
                "  f2: cannot connect to the store"
            ]
        );
        let lines = failure_lines(&report(3, 5), Some(std::path::Path::new("/tmp/f.csv")));
        assert_eq!(lines.last().unwrap(), "  … and 5 more, all listed in /tmp/f.csv");
    }

    /// A stopped run's in-flight items all failed alike: ten of them, then a count.
    #[test]
    fn a_stopped_run_shows_ten_failures_and_counts_the_rest() {
        let r = Report { stopped: Some("gone".into()), ..report(300, 2) };
        let lines = failure_lines(&r, None);
        assert_eq!(lines.len(), 1 + SHOWN_WHEN_STOPPED + 1, "{lines:?}");
        assert_eq!(lines.last().unwrap(), "  … and 292 more (--failures-csv FILE lists them all)");
        let r = Report { stopped: Some("gone".into()), ..report(4, 0) };
        assert_eq!(failure_lines(&r, None).len(), 5, "no count line when all are shown");
    }
}

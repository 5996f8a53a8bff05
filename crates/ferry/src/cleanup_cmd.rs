//! `ferry cleanup s3://bucket/prefix`: abort incomplete multipart uploads.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context};
use ferry_storage::{Location, OpenOptions, ProcessEnv};
use serde::Serialize;

use crate::cli::CleanupArgs;

#[derive(Serialize)]
struct Line {
    key: String,
    upload_id: String,
    initiated: Option<String>,
    /// `aborted`, `would abort`, or `failed: reason`.
    outcome: String,
}

#[derive(Serialize)]
struct Summary {
    location: String,
    dry_run: bool,
    older_than_seconds: u64,
    /// Uploads found under the prefix.
    found: usize,
    /// Younger than --older-than (or of unknown age), left alone.
    kept: usize,
    aborted: usize,
    failed: usize,
    uploads: Vec<Line>,
}

pub async fn run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let opts = OpenOptions { retries: 5, ..OpenOptions::default() };
    let loc =
        Location::open(&args.location, &ProcessEnv, opts).await.with_context(|| args.location.clone())?;
    let Location::Object(root) = &loc else {
        bail!("{}: a local directory has no multipart uploads; give an s3:// location", args.location);
    };
    // Its errors name the location already.
    let uploads = root.incomplete_uploads().await?;
    let now = SystemTime::now();
    let old_enough = |t: Option<SystemTime>| match t {
        _ if args.older_than.is_zero() => true,
        Some(t) => now.duration_since(t).is_ok_and(|age| age >= args.older_than),
        None => false,
    };
    let mut summary = Summary {
        location: root.display().to_string(),
        dry_run: args.dry_run,
        older_than_seconds: args.older_than.as_secs(),
        found: uploads.len(),
        kept: 0,
        aborted: 0,
        failed: 0,
        uploads: Vec::new(),
    };
    for u in uploads {
        if !old_enough(u.initiated) {
            summary.kept += 1;
            continue;
        }
        let outcome = if args.dry_run {
            "would abort".to_string()
        } else {
            match root.abort_upload(&u).await {
                Ok(()) => {
                    summary.aborted += 1;
                    "aborted".to_string()
                }
                Err(e) => {
                    summary.failed += 1;
                    format!("failed: {e}")
                }
            }
        };
        let initiated = u.initiated.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
        if !args.json {
            let when = initiated.as_deref().unwrap_or("(start unknown)");
            if outcome.starts_with("failed") {
                eprintln!("{outcome}  {when}  {}", u.key);
            } else {
                println!("{outcome}  {when}  {}", u.key);
            }
        }
        summary.uploads.push(Line { key: u.key, upload_id: u.upload_id, initiated, outcome });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let listed = summary.uploads.len();
        println!(
            "{} of {} incomplete upload(s) under {} {}; {} younger than {}s kept{}",
            if args.dry_run { listed } else { summary.aborted },
            summary.found,
            summary.location,
            if args.dry_run { "would be aborted" } else { "aborted" },
            summary.kept,
            summary.older_than_seconds,
            if summary.failed > 0 { format!("; {} failed", summary.failed) } else { String::new() },
        );
    }
    Ok(if summary.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

//! The `ferry` command: thin commands over the ferry crates.

mod admin_cmd;
mod cleanup_cmd;
mod cli;
mod config;
mod ls_cmd;
mod progress;
mod serve_cmd;
mod size;
mod sync_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let quiet =
        if matches!(cli.command, cli::Command::Serve(_) | cli::Command::Worker(_)) { "info" } else { "warn" };
    let filter = if cli.verbose { "ferry=debug,info" } else { quiet };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Sync(args) => sync_cmd::run(*args).await,
            cli::Command::Ls(args) => ls_cmd::run(args).await,
            cli::Command::Cleanup(args) => cleanup_cmd::run(args).await,
            cli::Command::Serve(args) => serve_cmd::serve(args).await,
            cli::Command::Worker(opts) => serve_cmd::worker(opts).await,
            cli::Command::Token(cmd) => admin_cmd::token(cmd).await,
            cli::Command::Credential(cmd) => admin_cmd::credential(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

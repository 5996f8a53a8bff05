//! The `ferry` command: thin commands over the ferry crates.

mod admin_cmd;
mod cleanup_cmd;
mod cli;
mod config;
mod journal;
mod ls_cmd;
mod progress;
mod serve_cmd;
mod size;
mod source;
mod sync_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let quiet =
        if matches!(cli.command, cli::Command::Serve(_) | cli::Command::Worker(_)) { "info" } else { "warn" };
    let filter = if cli.verbose { "ferry=debug,info" } else { quiet };
    // The request signer prints the credentials it loads (secret key and
    // session token included) at debug level: never below info, whatever
    // FERRY_LOG asks.
    let secrets = "reqsign_core=info".parse().expect("a valid directive");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| filter.into())
                .add_directive(secrets),
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
            eprintln!("ferry: error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each cause once: many errors
/// already carry their cause's text in their own.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_already_told_are_not_repeated() {
        let inner = std::io::Error::other("database is locked");
        let e = anyhow::Error::new(inner)
            .context("database error: database is locked")
            .context("checkpoint store");
        assert_eq!(super::one_line(&e), "checkpoint store: database error: database is locked");
        let e = anyhow::anyhow!("disk full").context("write /x");
        assert_eq!(super::one_line(&e), "write /x: disk full");
    }
}

//! `ferry token create` and `ferry credential create`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::AdminCommand;
use crate::config::Config;

/// Print a new API token of the project (only the token, for scripts).
pub async fn token(cmd: AdminCommand) -> Result<ExitCode> {
    let AdminCommand::Create { project, server } = cmd;
    check_project(&project)?;
    let store = Config::load(&server, None)?.open_store().await?;
    println!("{}", store.create_token(&project).await?);
    Ok(ExitCode::SUCCESS)
}

/// Print a new access key pair of the project: `AK SK`.
pub async fn credential(cmd: AdminCommand) -> Result<ExitCode> {
    let AdminCommand::Create { project, server } = cmd;
    check_project(&project)?;
    let store = Config::load(&server, None)?.open_store().await?;
    let (ak, sk) = store.create_access_key(&project).await?;
    println!("{ak} {sk}");
    Ok(ExitCode::SUCCESS)
}

/// Project ids appear in paths: keep them to `A-Za-z0-9-_`, 1 to 64 characters.
fn check_project(project: &str) -> Result<()> {
    let ok = (1..=64).contains(&project.len())
        && project.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        anyhow::bail!("--project {project:?}: use 1 to 64 of A-Z, a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

//! `ferry serve` and `ferry worker`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_api::AppState;
use ferry_engine::worker::{self, WorkerConfig};
use tokio::sync::{watch, Notify};

use crate::cli::{ServeArgs, ServerOpts, WorkerArgs};
use crate::config::Config;

fn worker_config(cfg: &Config) -> WorkerConfig {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let id = format!("{}-{}-{:08x}", host.trim(), std::process::id(), rand::random::<u32>());
    let mut w = WorkerConfig::new(id);
    w.lease_secs = cfg.lease_secs;
    w.max_tasks = cfg.worker_tasks;
    w
}

async fn shutdown_signal(tx: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    let _ = tx.send(true);
}

pub async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let cfg = Config::load(&args.server, args.listen.as_deref())?;
    let store = cfg.open_store().await?;
    let wake = Arc::new(Notify::new());
    let metrics = ferry_api::metrics::install().context("cannot set up metrics")?;
    let state =
        AppState::new(store, cfg.shares_root.clone(), Arc::new(cfg.object_stores.clone()), wake.clone())
            .with_metrics(metrics)
            .with_request_timeout(cfg.request_timeout);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (use --listen ADDR)", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    if !args.no_workers {
        let env = Arc::new(state.task_env(cfg.worker_threads, cfg.unreachable_limit));
        worker::recover(&env).await.context("cannot recover interrupted work")?;
        tokio::spawn(worker::run(env, worker_config(&cfg), wake, rx.clone()));
    }
    let resumed = ferry_api::resume_jobs(&state).await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed unfinished jobs");
    }
    print_banner(&cfg, &args.server, addr);
    tokio::spawn(shutdown_signal(tx));
    let mut rx2 = rx;
    axum::serve(listener, ferry_api::router(state))
        .with_graceful_shutdown(async move {
            let _ = rx2.wait_for(|stop| *stop).await;
        })
        .await
        .context("server failed")?;
    Ok(ExitCode::SUCCESS)
}

fn print_banner(cfg: &Config, opts: &ServerOpts, addr: std::net::SocketAddr) {
    let db =
        if cfg.embedded_db { format!("SQLite in {}", cfg.data_dir.display()) } else { "PostgreSQL".into() };
    let mut same = format!("--data-dir {}", opts.data_dir.display());
    if let Some(c) = &opts.config {
        same.push_str(&format!(" --config {}", c.display()));
    }
    if opts.database.is_some() {
        same.push_str(" --database URL");
    }
    println!("ferry serve: listening on http://{addr}");
    println!("  database:      {db}");
    println!("  shares:        {}", cfg.shares_root.display());
    for s in cfg.object_stores.all() {
        match &s.root {
            Some(root) => println!(
                "  object store:  endpoint \"{}\" = {} (one directory per bucket)",
                s.endpoint,
                root.display()
            ),
            None => println!("  object store:  endpoint \"{}\"", s.endpoint),
        }
    }
    println!("  get a token:   ferry token create --project PROJECT {same}");
    println!("  SDK key pair:  ferry credential create --project PROJECT {same}");
    println!("  API docs:      http://{addr}/docs");
    println!(
        "  try:           curl -H \"X-Auth-Token: $TOKEN\" http://{addr}/v1/PROJECT/sfs-turbo/shares/detail"
    );
}

pub async fn worker(args: WorkerArgs) -> Result<ExitCode> {
    let cfg = Config::load(&args.server, None)?;
    let store = cfg.open_store().await?;
    let state = AppState::new(
        store,
        cfg.shares_root.clone(),
        Arc::new(cfg.object_stores.clone()),
        Arc::new(Notify::new()),
    );
    let env = Arc::new(state.task_env(cfg.worker_threads, cfg.unreachable_limit));
    worker::recover(&env).await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(shutdown_signal(tx));
    println!("ferry worker: running tasks from {}", if cfg.embedded_db { "SQLite" } else { "PostgreSQL" });
    if let Some(addr) = &args.metrics_listen {
        let metrics = ferry_api::metrics::install().context("cannot set up metrics")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
        println!("  metrics:       http://{}/metrics", listener.local_addr()?);
        let app = ferry_api::ops_router(state.with_metrics(metrics));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    worker::run(env, worker_config(&cfg), Arc::new(Notify::new()), rx).await;
    Ok(ExitCode::SUCCESS)
}

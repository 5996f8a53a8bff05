//! Prometheus metrics at `/metrics` (no authentication, like `/health`):
//! HTTP requests by route pattern, the task counters the workers record
//! (`ferry_task*`, `ferry_worker_*`), and the number of tasks in each status,
//! read from the store when scraped (`ferry_database_up` says whether it
//! could be).

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferry_model::hpc::HpcTaskStatus;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Upper bounds of the request duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Install the process-wide recorder; `/metrics` renders it through the
/// handle (give it to [`AppState::with_metrics`]). Call once per process.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ferry_http_request_duration_seconds".into()),
            &DURATION_BUCKETS,
        )?
        .install_recorder()?;
    // Histograms keep their samples until upkeep folds them in.
    let h = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            h.run_upkeep();
        }
    });
    Ok(handle)
}

/// One answered request. `route` is the matched pattern (`/v1/{project_id}/…`),
/// never the concrete path, so that ids do not make a series each.
pub(crate) fn record_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!("ferry_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("ferry_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
}

/// How long a scrape waits on the store for the task counts.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// `GET /metrics`: the Prometheus text format. It answers when the store
/// does not, as a scrape matters most then: `ferry_database_up` is 0, and
/// the `ferry_tasks` gauges keep the counts last read.
pub(crate) async fn render(State(state): State<AppState>) -> Response {
    match ferry_store::bounded(STORE_WAIT, state.store.count_tasks_by_status()).await {
        Ok(counts) => {
            metrics::gauge!("ferry_database_up").set(1.0);
            for status in HpcTaskStatus::ALL {
                let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                metrics::gauge!("ferry_tasks", "status" => status.as_str()).set(n as f64);
            }
        }
        Err(e) => {
            metrics::gauge!("ferry_database_up").set(0.0);
            tracing::warn!(error = %e, "metrics: cannot count tasks in the database");
        }
    }
    let text = state.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

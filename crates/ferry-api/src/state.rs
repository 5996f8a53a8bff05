//! What every handler shares.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_engine::hpc::TaskEnv;
use ferry_storage::ObjectStores;
use ferry_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

/// How long an API request may take before it is answered 503.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server's shared state.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Directory holding one directory per share.
    pub shares_root: PathBuf,
    pub object_stores: Arc<ObjectStores>,
    /// Wakes the in-process workers when a task is created.
    pub wake: Arc<Notify>,
    /// Bytes used per share, with when they were counted.
    pub(crate) usage: Arc<Mutex<HashMap<String, ShareUsage>>>,
    /// Renders `/metrics`; without it only the store's gauges are shown.
    pub(crate) metrics: Option<PrometheusHandle>,
    /// An API request not answered in this time gets 503.
    pub(crate) request_timeout: std::time::Duration,
}

/// The bytes under a share, as counted.
#[derive(Debug, Clone)]
pub(crate) enum ShareUsage {
    /// The share's first count, under way: every caller waits for this one.
    First(Arc<tokio::sync::OnceCell<u64>>),
    /// The last count, and when it was made.
    Counted {
        at: Instant,
        used: u64,
        /// A new count is under way (one at a time per share).
        counting: bool,
    },
}

impl AppState {
    pub fn new(
        store: Store,
        shares_root: PathBuf,
        object_stores: Arc<ObjectStores>,
        wake: Arc<Notify>,
    ) -> Self {
        AppState {
            store,
            shares_root,
            object_stores,
            wake,
            usage: Default::default(),
            metrics: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Answer 503 to an API request not done in `limit` (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, limit: std::time::Duration) -> Self {
        self.request_timeout = limit;
        self
    }

    /// Serve `/metrics` from this recorder (see [`crate::metrics::install`]).
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The environment workers of this process run tasks in.
    pub fn task_env(&self, threads: usize, unreachable_limit: std::time::Duration) -> TaskEnv {
        TaskEnv {
            store: self.store.clone(),
            shares_root: self.shares_root.clone(),
            object_stores: self.object_stores.clone(),
            threads,
            unreachable_limit,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A new resource id (a UUID, as SFS Turbo ids are).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

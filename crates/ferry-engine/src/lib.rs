//! The transfer engine: scan a source and a destination together, plan what
//! differs, transfer it with bounded concurrency, then (only when nothing
//! failed) delete extraneous destination items, and report.
//!
//! Every task type of ferry is a transfer between two locations; `ferry sync`
//! exposes the engine directly.

mod checkpoint;
mod error;
mod filter;
pub mod hpc;
mod options;
mod overlap;
mod progress;
mod ratelimit;
mod sync;
mod walk;
pub mod worker;

pub use checkpoint::CheckpointSpec;
pub use error::{Error, Result};
pub use filter::{Filter, TimeBound};
pub use options::{Compare, ForcedAttributes, SyncOptions, Verify};
pub use overlap::{check_overlap, resolved};
pub use progress::{Failure, Journal, PlanLine, Progress, Report, FAILURE_CSV_HEADER};
pub use ratelimit::RateLimit;
pub use sync::Sync;
pub use walk::walk;

//! ferry's REST API. For now only what needs no HTTP stack: verifying the
//! credentials a request carries ([`auth`]).

pub mod auth;
mod error;

pub use error::{Error, Result};

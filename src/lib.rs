//! aiq: batch scoring of datasets with large language models.
//!
//! The data path, one module per stage:
//! `source` (Parquet/JSONL → record batches) → `render` (row → request) →
//! `schedule` (order, limits, concurrency) → `client` (HTTP, retries) →
//! `journal` (durable per-row outcomes) → `sink` (Parquet).

pub mod auth;
pub mod error;
pub mod outcome;
pub mod parquet_out;
pub mod source;
pub mod tokens;
pub mod wire;

pub use error::{Error, Result};

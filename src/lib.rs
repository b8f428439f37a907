//! aiq: batch scoring of datasets with large language models.
//!
//! The data path, one module per stage:
//! [`source`] (Parquet/JSONL → record batches) → [`render`] (row → request)
//! → [`schedule`] (order, limits, concurrency) → [`client`] (HTTP, retries)
//! → [`collect`] + [`journal`] (durable per-row outcomes) → [`sink`]
//! (Parquet). [`run`] wires them; [`plan`] checks a job before it spends.
//! [`bench`] measures endpoints (and aiq itself) under a load sweep.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod collect;
pub mod dry_run;
pub mod endpoint;
pub mod error;
pub mod explain;
pub mod functions;
pub mod image;
pub mod journal;
pub mod limit;
pub mod openai_batch;
pub mod outcome;
pub mod parquet_out;
pub mod plan;
pub mod progress;
pub mod render;
pub mod reply;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod simulator;
pub mod sink;
pub mod source;
pub mod spend;
#[cfg(feature = "sql")]
pub mod sql;
pub mod stream;
pub mod tokens;
pub mod types;
pub mod wire;

pub use error::{Error, Result};

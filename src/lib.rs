//! aiq: batch scoring of datasets with large language models.
//!
//! The source tree is the architecture, one folder per layer:
//!
//! - [`job`]: what the user asked for. Settings (flags and job files) are
//!   checked into a [`job::plan::Plan`] before anything is spent; budgets
//!   and prices live beside them.
//! - [`pipeline`]: the data path, one module per stage, read top to bottom:
//!   [`pipeline::source`] (Parquet/JSONL → record batches) →
//!   [`pipeline::render`] (row → request) → [`pipeline::schedule`] (order,
//!   limits, concurrency) → [`pipeline::client`] (HTTP, retries) →
//!   [`pipeline::collect`] + [`pipeline::journal`] (durable per-row
//!   outcomes) → [`pipeline::sink`] (Parquet).
//! - [`provider`]: the wire to model servers: endpoints and credentials,
//!   request/reply formats, provider quirks, retry classification and
//!   rate limits.
//! - [`ai`]: AI semantics: SQL return types, the AI task functions, images,
//!   token estimates.
//! - [`frontend`]: the shells over the core: the CLI, `aiq run`, `aiq sql`,
//!   `aiq bench`, dry runs and `--explain`.
//! - [`simulator`]: an OpenAI/Databricks-compatible server for tests,
//!   benchmarks and users' own experiments.

pub mod ai;
pub mod error;
pub mod frontend;
pub mod job;
pub mod pipeline;
pub mod provider;
pub mod simulator;

pub use error::{Error, Result};

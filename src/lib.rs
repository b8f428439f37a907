//! aiq: batch scoring of datasets with large language models.
//!
//! The source tree is the architecture, one folder per layer. Layers, from
//! the bottom up; a module imports only from its own layer and the layers
//! below it, and no two files import each other, directly or in a circle
//! (`tests/it/layers.rs` reads this list and fails on either):
//!
//! 1. [`error`], [`ai`]: the error type, and AI semantics: SQL return
//!    types, the AI task functions, images, token estimates.
//! 2. [`provider`]: the wire to model servers: endpoints and credentials,
//!    request/reply formats and usage, provider quirks, retry
//!    classification, rate limits and the Batch API.
//! 3. [`simulator`]: an OpenAI/Databricks-compatible server for tests,
//!    benchmarks and users' own experiments; it speaks the provider wire.
//! 4. [`job`]: what the user asked for. Settings (flags and job files) are
//!    checked into a [`job::plan::Plan`] before anything is spent (starting
//!    the simulator when asked); budgets and prices live beside them.
//! 5. [`pipeline`]: the data path, one module per stage, read top to bottom:
//!    [`pipeline::source`] (Parquet/JSONL → record batches) →
//!    [`pipeline::render`] (row → request) → [`pipeline::schedule`] (order,
//!    limits, concurrency) → [`pipeline::client`] (HTTP, retries) and
//!    [`pipeline::repair`] → [`pipeline::collect`] + [`pipeline::journal`]
//!    (durable per-row outcomes) → [`pipeline::sink`] (Parquet).
//! 6. [`frontend`]: the shells over the core: the CLI, `aiq run`, `aiq sql`,
//!    `aiq bench`, dry runs and `--explain`.

pub mod ai;
pub mod error;
pub mod frontend;
pub mod job;
pub mod pipeline;
pub mod provider;
pub mod simulator;

pub use error::{Error, Result};

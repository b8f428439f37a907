//! The data path of a job. [`run`] wires it for one job (the CLI, Python,
//! and the tests all call it); one module per stage in the order rows flow:
//! [`source`] reads input batches, [`render`] turns rows into request
//! bodies, [`schedule`] orders and paces calls, [`client`] sends them with
//! retries (over the endpoint and pool that [`connect`] opens), [`collect`] folds outcomes in input order while [`journal`]
//! makes each one durable, and [`sink`] writes the output. [`call_journal`]
//! keeps answers by request content for work shared across processes;
//! [`fingerprint`] names what a row asked (the same request, the same price),
//! and [`dedup`] sends each request of a job once; [`delta`] reads and
//! commits Delta Lake tables;
//! [`recheck`] compares what an earlier run left with the input. The remaining
//! modules are the values and file formats those stages share.

pub mod client;
pub mod collect;
pub mod connect;
pub mod context_cache;
pub mod http;
pub mod journal;
pub mod lock;
pub mod recheck;
pub mod render;
pub mod repair;
pub mod run;
pub mod schedule;
pub mod sink;
pub mod source;
pub mod store;

pub mod answers;
pub mod batch;
pub mod bounds;
pub mod call_journal;
pub mod dedup;
pub mod delta;
pub mod fingerprint;
pub mod jsonl;
pub mod openai_batch;
pub mod outcome;
pub mod parquet_out;
pub mod progress;

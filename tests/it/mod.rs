mod util;

mod bench;
mod cache;
mod functions;
mod jobs;
mod library;
mod openai_batch;
mod reliability;
mod run;
mod shard;
mod spend;
#[cfg(feature = "sql")]
mod sql;

mod util;

mod batch_mode;
mod bench;
mod cache;
mod functions;
mod openai_batch;
mod reliability;
mod run;
mod spend;
#[cfg(feature = "sql")]
mod sql;

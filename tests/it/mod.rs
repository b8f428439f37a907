mod util;

mod cache;
mod bench;
mod functions;
mod openai_batch;
mod reliability;
mod run;
mod spend;
#[cfg(feature = "sql")]
mod sql;

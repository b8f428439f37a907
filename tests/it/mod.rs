mod util;

mod bench;
mod cache;
mod functions;
mod library;
mod openai_batch;
mod reliability;
mod run;
mod spend;
#[cfg(feature = "sql")]
mod sql;

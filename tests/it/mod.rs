mod util;

mod bench;
mod cache;
mod functions;
mod openai_batch;
mod reliability;
mod run;
mod spend;
#[cfg(feature = "sql")]
mod sql;
#[cfg(feature = "sql")]
mod sql_semantic;

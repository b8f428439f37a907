mod util;

mod bench;
mod cache;
mod functions;
mod https;
mod limits;
mod llama_cpp;
mod openai_batch;
mod quirks;
mod reliability;
mod run;
mod spend;
#[cfg(feature = "sql")]
mod sql;

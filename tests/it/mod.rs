mod util;

mod anthropic;
mod azure;
mod batch_mode;
mod bedrock;
mod bedrock_batch;
mod bench;
mod cache;
mod dedup;
#[cfg(feature = "delta")]
mod delta;
mod docs;
mod functions;
mod gemini;
mod hostile;
mod https;
mod input;
mod jobs;
mod layers;
mod library;
mod limits;
mod llama_cpp;
mod native;
mod nested;
mod object_store;
mod openai_batch;
mod output;
mod pipes;
mod proxy;
mod quirks;
mod ranges;
mod redirect;
mod reliability;
mod render;
mod repair;
mod run;
mod shard;
mod spend;
#[cfg(feature = "sql")]
mod sql;
#[cfg(feature = "sql")]
mod sql_semantic;

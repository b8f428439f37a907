//! The wire to model servers. [`endpoint`] resolves `--endpoint` to a URL
//! and credentials ([`auth`]); [`dialect`] is the one place that knows how
//! providers' wires differ (a module per provider with a wire of its own:
//! [`anthropic`], [`gemini`]), [`quirks`] how bodies differ by model; [`wire`],
//! [`reply`] and [`stream`] are the request and reply formats; [`aws`] signs
//! requests to Amazon Bedrock; [`retry`] classifies failures and [`limit`] paces calls
//! to the server's rate limits. The client and the simulator share these.

pub mod anthropic;
pub mod anthropic_batch;
pub mod auth;
pub mod aws;
pub mod aws_fetch;
pub mod azure;
pub mod batch_api;
pub mod batch_line;
pub mod bedrock;
pub mod bedrock_batch;
pub mod dialect;
pub mod endpoint;
pub mod eventstream;
pub mod gemini;
pub mod gemini_batch;
pub mod gemini_cache;
pub mod limit;
pub mod quirks;
pub mod reply;
pub mod retry;
pub mod stream;
pub mod usage;
pub mod wire;

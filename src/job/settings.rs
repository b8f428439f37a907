//! Job settings: one struct that is both the `aiq run` flags and the TOML job
//! file, so the two cannot drift apart. A job file is read into it, then the
//! flags given on the command line override it field by field
//! ([`JobSettings::overlay`]). Nothing here is checked beyond its type: the
//! `plan` module turns settings into a validated [`crate::job::plan::Plan`].

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::ai::functions::AiFunction;
use crate::error::{Error, Result};
use crate::provider::wire::Task;

/// Declares a settings struct that holds, after the fields of its first
/// brace and before those of its second, the settings of every model call
/// (endpoint, model, concurrency, limits, retries, credentials, prices and
/// budgets). `aiq run`'s
/// [`JobSettings`] and `aiq sql`'s `SqlArgs` are declared through it, so each
/// of these settings is declared, documented and keyed once, and both stay
/// flat for clap and serde: a nested struct would need serde's `flatten`,
/// which loses `deny_unknown_fields`' list of the keys that job-file errors,
/// the Python package and the generated reference show. Their ranges are
/// checked in [`crate::job::ranges`]. The struct gets `call_settings()`:
/// these settings alone, as a [`JobSettings`].
macro_rules! with_call_settings {
    ($($item:tt)*) => {
        $crate::job::settings::declare_with_call_settings! {
            { $($item)* }
            {
                /// Where to send requests: a Databricks serving endpoint name
                /// (`databricks:NAME` for one named like a provider), an
                /// OpenAI-compatible base URL (http(s)://host/v1), a provider
                /// (`anthropic`, `gemini`, `openai`, `azure`, `bedrock`), or `simulator` for the built-in
                /// simulator. `aiq sql`: the endpoint of the task functions
                /// (ai_classify, ai_summarize, ...); ai_query names its own.
                #[arg(long, value_name = "NAME|URL")]
                endpoint: Option<String>,

                /// Model name sent in the body (OpenAI-compatible servers and
                /// providers named by --endpoint need one; --endpoint azure: the deployment;
                /// --endpoint bedrock: the model id or inference profile).
                #[arg(long)]
                model: Option<String>,

                /// Where a provider named by --endpoint is, instead of its own API
                /// (a proxy, a private endpoint, a test server) [default: the
                /// variable its SDK reads, e.g. ANTHROPIC_BASE_URL or AZURE_OPENAI_ENDPOINT, else its
                /// public API].
                #[arg(long, value_name = "URL")]
                base_url: Option<String>,

                /// --endpoint azure: the API version, a date (the deployments path,
                /// /openai/deployments/{model}/...?api-version=DATE) or `v1` (the v1 API,
                /// /openai/v1/...) [default: 2024-10-21].
                #[arg(long, value_name = "DATE|v1")]
                api_version: Option<String>,

                /// Requests in flight at most (`aiq sql`: over the whole query) [default: 16].
                #[arg(long, value_name = "N")]
                concurrency: Option<usize>,

                /// Requests per minute the endpoint allows (paced smoothly). Unset: aiq
                /// learns the limit from 429s and x-ratelimit-* headers.
                #[arg(long, value_name = "N")]
                rpm: Option<u32>,

                /// Tokens per minute (prompt estimate + max_tokens per request).
                #[arg(long, value_name = "N")]
                tpm: Option<u32>,

                /// Retries per request for 429, 408, 5xx and connection faults [default: 8].
                #[arg(long, value_name = "N")]
                max_retries: Option<u32>,

                /// Timeout of one attempt, in seconds [default: 300].
                #[arg(long, value_name = "SECS")]
                timeout: Option<f64>,

                /// Environment variable holding the API key [default:
                /// OPENAI_API_KEY; for --endpoint anthropic ANTHROPIC_API_KEY, azure
                /// AZURE_OPENAI_API_KEY, gemini GOOGLE_API_KEY else GEMINI_API_KEY].
                #[arg(long, value_name = "NAME")]
                api_key_env: Option<String>,

                /// ~/.databrickscfg profile [default: $DATABRICKS_CONFIG_PROFILE or DEFAULT].
                #[arg(long)]
                profile: Option<String>,

                /// Stop sending once the job has used this many tokens (input + output,
                /// all runs of the job together); in-flight requests finish, exit 1,
                /// and a re-run with a higher budget resumes. `aiq sql`: over the
                /// whole query, and with --output over all its runs (the journaled
                /// answers count).
                #[arg(long, value_name = "N")]
                max_tokens_total: Option<u64>,

                /// Stop sending once the job has cost this many USD (all runs of the
                /// job together; needs --price-in and --price-out). `aiq sql`: as
                /// --max-tokens-total.
                #[arg(long, value_name = "USD")]
                max_cost: Option<f64>,

                /// Price of input tokens, USD per million: enables the `cost` column,
                /// cost totals, --max-cost and dry-run cost estimates.
                #[arg(long, value_name = "USD")]
                price_in: Option<f64>,

                /// Price of output tokens, USD per million.
                #[arg(long, value_name = "USD")]
                price_out: Option<f64>,

                /// Price of input tokens read from the prompt cache, USD per million
                /// [default: --price-in].
                #[arg(long, value_name = "USD")]
                price_cached: Option<f64>,

                /// Price of input tokens written to the prompt cache, USD per million
                /// [default: --price-in times the provider's documented multiplier:
                /// 1.25 for Anthropic, 1 for the others].
                #[arg(long, value_name = "USD")]
                price_cache_write: Option<f64>,
            }
        }
    };
}
// `aiq sql`'s arguments (the `sql` feature) are the macro's other user.
#[cfg_attr(not(feature = "sql"), allow(unused_imports))]
pub(crate) use with_call_settings;

/// [`with_call_settings`]' second step: the struct, then the call settings.
macro_rules! declare_with_call_settings {
    (
        {
            $(#[$meta:meta])*
            $vis:vis struct $name:ident { $($head:tt)* }
            { $($tail:tt)* }
        }
        { $( $(#[$field_meta:meta])* $field:ident : $ty:ty, )* }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($head)*
            $( $(#[$field_meta])* pub $field: $ty, )*
            $($tail)*
        }

        impl $name {
            /// The settings of every model call alone, the rest unset.
            pub fn call_settings(&self) -> $crate::job::settings::JobSettings {
                $crate::job::settings::JobSettings {
                    $( $field: self.$field.clone(), )*
                    ..Default::default()
                }
            }
        }
    };
}
pub(crate) use declare_with_call_settings;

with_call_settings! {
    /// Everything a job can set, as flags or as keys of a job file.
    #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JobSettings {
        /// Input: .parquet or .jsonl (one JSON object per line), a local path
        /// or an object-store URL (s3://, gs://, az://, abfss://, https://).
        #[arg(long, value_name = "PATH|URL")]
        pub input: Option<PathBuf>,

        /// Output Parquet file, a local path or an s3://, gs://, az:// URL;
        /// written whole when the job completes (the journal lives beside it).
        #[arg(long, value_name = "PATH|URL")]
        pub output: Option<PathBuf>,
    }
    {
        /// Kind of call: chat (default), completions or embeddings.
        #[arg(long, value_enum)]
        pub task: Option<Task>,

        /// System prompt, a template over the row's columns (minijinja: {{column}}).
        #[arg(long, value_name = "TEMPLATE")]
        pub system: Option<String>,

        /// User prompt, a template over the row's columns: "Summarize: {{text}}".
        #[arg(long, value_name = "TEMPLATE")]
        pub prompt: Option<String>,

        /// Second text for ai_similarity, a template over the row's columns.
        #[arg(long, value_name = "TEMPLATE")]
        pub prompt2: Option<String>,

        /// Model parameter passed into the request body, typed: numbers stay
        /// numbers, true/false are booleans, `stop=a,b` is a list. Repeatable.
        /// Job file: a `[params]` table.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        #[serde(default, deserialize_with = "params_from_table")]
        pub params: Vec<(String, Value)>,

        /// Type of the `result` column, as a Databricks SQL type:
        /// STRING, INT, BIGINT, FLOAT, DOUBLE, BOOLEAN, DATE, TIMESTAMP,
        /// ARRAY<T>, MAP<STRING,T>, STRUCT<name: T, ...>.
        #[arg(long, value_name = "SQL_TYPE")]
        pub return_type: Option<String>,

        /// Structured output: a JSON schema document or a DDL `STRUCT<...>`
        /// string; the result column's type follows it.
        #[arg(long, value_name = "SCHEMA")]
        pub response_format: Option<String>,

        /// Databricks AI function to emulate (ai_classify, ai_summarize, ...).
        #[arg(long, value_enum)]
        pub function: Option<AiFunction>,

        /// Labels for ai_classify, ai_extract and ai_mask (comma separated).
        #[arg(long, value_delimiter = ',')]
        #[serde(default, deserialize_with = "list_or_commas")]
        pub labels: Vec<String>,

        /// Word limit for ai_summarize (default 50, 0 = no limit).
        #[arg(long)]
        pub max_words: Option<u32>,

        /// Target language for ai_translate (e.g. `es`).
        #[arg(long)]
        pub to_lang: Option<String>,

        /// An input column holding an image, sent with the prompt as an
        /// `image_url` part (chat only): bytes (Binary), or a string with
        /// base64, a data: URL or an http(s) URL. A null image: the row is not
        /// sent. Repeatable. Job file: `images = ["col", ...]`.
        #[arg(long = "image", value_name = "COLUMN")]
        #[serde(default)]
        pub images: Vec<String>,

        /// Send rows whose prompt renders empty or blank. By default they are
        /// not sent (as a null value is not): their `result` is null and their
        /// `error_message` says why.
        #[arg(long)]
        #[serde(default)]
        pub send_empty: bool,

        /// How to read the input: `rows` (Parquet or JSONL rows, rendered by
        /// the templates) or `openai-batch` (OpenAI Batch API request lines,
        /// each `body` sent as is) [default: rows].
        #[arg(long, value_enum, value_name = "FORMAT")]
        pub input_format: Option<InputFormat>,

        /// How to write the output: `parquet`, `delta` (a Delta Lake table:
        /// see --write-mode), or `openai-batch` (OpenAI Batch API output lines;
        /// needs --input-format openai-batch) [default: parquet].
        #[arg(long, value_enum, value_name = "FORMAT")]
        pub output_format: Option<OutputFormat>,

        /// How a Delta output takes the job's rows: `append` them, `overwrite`
        /// the table with them, or `merge` them by --merge-key (an upsert: one
        /// row per key; a row whose key is in the table with the same request
        /// is not sent, its stored result stands) [default: append].
        #[arg(long, value_enum, value_name = "MODE")]
        pub write_mode: Option<WriteMode>,

        /// The input columns that identify a row for --write-mode merge
        /// (comma separated). Job file: `merge_key = ["id"]` or `"id"`.
        #[arg(long, value_delimiter = ',', value_name = "COL[,COL...]")]
        #[serde(default, deserialize_with = "list_or_commas")]
        pub merge_key: Vec<String>,

        /// Read this version of a Delta input table (time travel).
        #[arg(long, value_name = "N")]
        pub input_version: Option<u64>,

        /// Read a Delta input table as it was at this time (RFC 3339, e.g.
        /// `2026-12-01T00:00:00Z`): the last version committed by then.
        #[arg(long, value_name = "TIMESTAMP")]
        pub input_timestamp: Option<String>,

        /// Fail the whole job on the first row error (ai_query's failOnError).
        /// By default a failed row gets an `error_message` and the job goes on.
        #[arg(long)]
        #[serde(default)]
        pub fail_on_error: bool,

        /// Input tokens per minute (prompt estimates), for providers that limit
        /// input and output apart.
        #[arg(long, value_name = "N")]
        pub itpm: Option<u32>,

        /// Output tokens per minute: max_tokens is reserved before sending and
        /// the unused part given back when the reply's usage arrives (as
        /// Databricks enforces it).
        #[arg(long, value_name = "N")]
        pub otpm: Option<u32>,

        /// Queries per hour.
        #[arg(long, value_name = "N")]
        pub qph: Option<u32>,

        /// Retries allowed after an attempt the provider may have billed without
        /// an answer: it timed out once its request was sent, or its success
        /// reply broke off [default: 1].
        #[arg(long, value_name = "N")]
        pub max_ambiguous_retries: Option<u32>,

        /// First retry delay in milliseconds; later ones grow exponentially, with
        /// jitter, up to a minute [default: 500].
        #[arg(long, value_name = "MS")]
        pub backoff_ms: Option<u64>,

        /// Rows per input batch (also the unit of output ordering) [default: 1024].
        #[arg(long, value_name = "ROWS")]
        pub batch_rows: Option<usize>,

        /// Bytes a JSON Lines input line may hold; a longer line stops the job
        /// before any request, naming the line [default: 67108864 (64 MiB)].
        #[arg(long, value_name = "BYTES")]
        pub max_line_bytes: Option<usize>,

        /// Embeddings: rows per request, for endpoints that take a list input [default: 1].
        #[arg(long, value_name = "ROWS")]
        pub batch_size: Option<usize>,

        /// Put a Claude `cache_control` breakpoint on the last static content
        /// block (automatic for databricks-claude-* endpoints).
        #[arg(long)]
        #[serde(default)]
        pub cache_control: bool,

        /// Do not send `prompt_cache_key` to OpenAI-compatible endpoints.
        #[arg(long)]
        #[serde(default)]
        pub no_prompt_cache_key: bool,

        /// Do not hold back rows of a new prompt prefix until one warm-up request
        /// for it has completed.
        #[arg(long)]
        #[serde(default)]
        pub no_warmup: bool,

        /// Send every row's request, even one that another row of the job asks
        /// too. By default identical requests (the same request fingerprint)
        /// are sent once and the answer is shared by every row that asks it.
        #[arg(long)]
        #[serde(default)]
        pub no_dedup: bool,

        /// Stream replies (server-sent events) and record time to first token.
        #[arg(long)]
        #[serde(default)]
        pub stream: bool,

        /// Tools (function calling) as a JSON list, passed through in the body.
        #[arg(skip)]
        #[serde(default)]
        pub tools: Option<toml::Value>,

        /// tool_choice, passed through in the body.
        #[arg(skip)]
        #[serde(default)]
        pub tool_choice: Option<toml::Value>,

        /// Built-in simulator settings for `endpoint = "simulator"` (job file only).
        #[arg(skip)]
        #[serde(default)]
        pub simulator: Option<SimulatorSettings>,

        /// The simulator's timing as flags, over the `[simulator]` table.
        #[command(flatten)]
        #[serde(skip)]
        pub sim: SimFlags,

        /// Also trust the certificate authorities in this PEM file (a private
        /// CA in front of the endpoint); `SSL_CERT_FILE` works too.
        #[arg(long, value_name = "PATH")]
        pub ca_cert: Option<PathBuf>,

        /// Condition for ai_filter: the BOOLEAN result says whether each
        /// row's text meets it ("mentions a late delivery").
        #[arg(long, value_name = "TEXT")]
        pub condition: Option<String>,

        /// Criterion for ai_score: the DOUBLE result, in [0, 1], says how well
        /// each row's text meets it ("how urgent the ticket is").
        #[arg(long, value_name = "TEXT")]
        pub criterion: Option<String>,
        /// Score only shard K of N (0-based): a contiguous 1/N of the input
        /// rows, disjoint from the other shards and the same on every machine.
        /// `auto/N` takes K from $AIQ_SHARD_INDEX, $JOB_COMPLETION_INDEX
        /// (Kubernetes Indexed Jobs), $AWS_BATCH_JOB_ARRAY_INDEX or
        /// $CLOUD_RUN_TASK_INDEX. Put `{shard}` in --output (out/part-{shard}.parquet).
        /// With --shard, --rpm, --tpm, --itpm, --otpm and --qph are for the
        /// whole job and each shard uses 1/N of them (1/--workers if given);
        /// --max-tokens-total and --max-cost are for the whole job too, 1/N each.
        #[arg(long, value_name = "K/N")]
        pub shard: Option<crate::job::shard::ShardSpec>,

        /// Processes sending at the same time (shards, Spark or Ray tasks):
        /// --rpm, --tpm, --itpm, --otpm and --qph are divided by it, so the
        /// workers together stay within the job's limits [default: N of --shard].
        #[arg(long, value_name = "N")]
        pub workers: Option<u32>,

        /// Folder of answered calls keyed by request content, shared by every
        /// run, shard or task of a job: a call answered there before is not
        /// sent (or paid for) again. Each run adds its own file; none is
        /// ever rewritten, so concurrent and killed runs corrupt nothing.
        #[arg(long, value_name = "DIR")]
        pub call_journal: Option<PathBuf>,
        /// Times a typed reply that was cut off (finish_reason = length) or did
        /// not match the result type is asked again: with twice the max_tokens
        /// when cut off, with the validation error when it did not match. Their
        /// attempts and tokens count in the row's usage and cost [default: 1].
        #[arg(long, value_name = "N")]
        pub max_repairs: Option<u32>,

        /// Resume, re-sending the rows whose journaled outcome is an error
        /// (a plain resume keeps them as final); every answered row is kept.
        #[arg(long)]
        #[serde(default)]
        pub retry_failed: bool,
        /// Run the job even when the output already holds its finished result
        /// (the output's footer names the job that wrote it: same input, same
        /// answer-changing settings) and replace it; without this flag (or
        /// `--restart`) such a run says the output is complete and sends nothing.
        #[arg(long)]
        #[serde(default)]
        pub overwrite: bool,
        /// How rows are sent: `online` (requests now, under the rate limits) or
        /// `batch` (the provider's Batch API: about half price, answered within
        /// 24 hours; OpenAI-compatible base URLs only) [default: online].
        #[arg(long, value_enum)]
        pub mode: Option<Mode>,

        /// Batch mode: requests per batch input file at most [default: 50000].
        #[arg(long, value_name = "N")]
        pub batch_max_requests: Option<usize>,

        /// Batch mode: bytes per batch input file at most [default: 200000000].
        #[arg(long, value_name = "BYTES")]
        pub batch_max_bytes: Option<u64>,

        /// Batch mode: seconds between polls of each running batch [default: 30].
        #[arg(long, value_name = "SECS")]
        pub poll_secs: Option<f64>,

        /// Batch mode: when this much time has passed (e.g. `2h`, `90m`,
        /// `1h30m`), cancel the unfinished batches, keep what they answered and
        /// send the remaining rows online.
        #[arg(long, value_name = "DURATION")]
        pub deadline: Option<String>,

        /// Batch mode on Bedrock: the S3 prefix (`s3://bucket/prefix`) the
        /// batch records are written to and the answers read from.
        #[arg(long, value_name = "URL")]
        pub batch_staging: Option<String>,

        /// Batch mode on Bedrock: the IAM service role Bedrock reads and
        /// writes --batch-staging as (`arn:aws:iam::ACCOUNT:role/NAME`).
        #[arg(long, value_name = "ARN")]
        pub bedrock_role_arn: Option<String>,

        /// Batch mode on Bedrock: the fewest records a batch job takes, AWS's
        /// per-model quota "Minimum number of records per batch inference job"
        /// (raise or lower it as your account's is); a file of fewer rows goes
        /// online [default: 100].
        #[arg(long, value_name = "N")]
        pub bedrock_min_records: Option<usize>,
    }
}

/// How a job's rows reach the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One request per row, now, under the concurrency and rate limits.
    #[default]
    Online,
    /// Through the provider's Batch API (Files + Batches): cheaper, slower.
    Batch,
}

/// The built-in simulator's timing as flags, shared by `aiq run` and
/// `aiq bench` (a job file's `[simulator]` table sets the same knobs).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SimFlags {
    /// Simulator only: milliseconds before a non-streamed reply (and before
    /// the first token when --sim-ttft-ms is 0).
    #[arg(long, value_name = "MS")]
    pub sim_latency_ms: Option<u64>,

    /// Simulator only: milliseconds to the first streamed token.
    #[arg(long, value_name = "MS")]
    pub sim_ttft_ms: Option<u64>,

    /// Simulator only: milliseconds between streamed tokens.
    #[arg(long, value_name = "MS")]
    pub sim_itl_ms: Option<f64>,

    /// Simulator only: longest reply in tokens.
    #[arg(long, value_name = "N")]
    pub sim_output_tokens: Option<u64>,

    /// Simulator only: requests it works on at once, the rest wait (a
    /// server's slots).
    #[arg(long, value_name = "N")]
    pub sim_slots: Option<usize>,
}

impl SimFlags {
    /// `base` with the knobs these flags set; an error when any is set
    /// for an endpoint that is not the simulator, or a time is negative.
    pub fn over(&self, base: SimulatorSettings, simulator: bool) -> Result<SimulatorSettings> {
        let any = self.sim_latency_ms.is_some()
            || self.sim_ttft_ms.is_some()
            || self.sim_itl_ms.is_some()
            || self.sim_output_tokens.is_some()
            || self.sim_slots.is_some();
        if any && !simulator {
            return Err(Error::Config(
                "--sim-* flags only apply with --endpoint simulator".into(),
            ));
        }
        if let Some(itl) = self.sim_itl_ms {
            if !(itl.is_finite() && itl >= 0.0) {
                return Err(Error::Config(format!(
                    "--sim-itl-ms must be a number >= 0, got {itl}"
                )));
            }
        }
        Ok(SimulatorSettings {
            latency_ms: self.sim_latency_ms.or(base.latency_ms),
            ttft_ms: self.sim_ttft_ms.or(base.ttft_ms),
            itl_ms: self.sim_itl_ms.or(base.itl_ms),
            output_tokens: self.sim_output_tokens.or(base.output_tokens),
            slots: self.sim_slots.or(base.slots),
            ..base
        })
    }
}

/// Simulator knobs a job file may set, so the example job shows realistic
/// latency and limits without extra flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSettings {
    pub latency_ms: Option<u64>,
    pub itl_ms: Option<f64>,
    pub ttft_ms: Option<u64>,
    pub output_tokens: Option<u64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub fault_rate: Option<f64>,
    pub seed: Option<u64>,
    /// Batch API: milliseconds from creating a batch to its completion.
    pub batch_turnaround_ms: Option<u64>,
    pub slots: Option<usize>,
}

macro_rules! overlay_options {
    ($self:ident, $base:ident; $($field:ident),* $(,)?) => {
        $( if $self.$field.is_none() { $self.$field = $base.$field; } )*
    };
}

impl JobSettings {
    /// Read a TOML job file. Unknown keys are errors, never silently ignored.
    pub fn from_file(path: &std::path::Path) -> Result<JobSettings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("job file {}: {e}", path.display())))?;
        let mut settings: JobSettings = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("job file {}: {e}", path.display())))?;
        // Relative paths in a job file are relative to the file's folder (as
        // cargo, docker compose and dbt read theirs), so a job runs the same
        // from any directory; flags stay relative to the current one.
        let folder = path.parent().unwrap_or(std::path::Path::new(""));
        for p in [
            &mut settings.input,
            &mut settings.output,
            &mut settings.ca_cert,
            &mut settings.call_journal,
        ]
        .into_iter()
        .flatten()
        {
            *p = beside(folder, p);
        }
        Ok(settings)
    }

    /// Settings from a JSON object with the job file's keys (the Python
    /// API's keywords); see [`from_json`].
    pub fn from_json(text: &str) -> Result<JobSettings> {
        from_json(text)
    }

    /// Flags win over the job file: every field set in `self` stays, every
    /// field unset takes the file's value. Switches are on if either sets them.
    pub fn overlay(mut self, base: JobSettings) -> JobSettings {
        overlay_options!(self, base; input, output, endpoint, model, base_url, api_version, task, system, prompt, prompt2,
            return_type, response_format, function, max_words, to_lang, concurrency, rpm, tpm,
            max_retries, backoff_ms, timeout, itpm, otpm, qph, max_tokens_total, max_cost, price_in, price_out,
            price_cached, price_cache_write, max_ambiguous_retries, api_key_env, profile, batch_rows, max_line_bytes, batch_size, tools, tool_choice,
            simulator, input_format, output_format, mode, batch_max_requests, batch_max_bytes,
            poll_secs, deadline, batch_staging, bedrock_role_arn, bedrock_min_records, max_repairs, shard, workers, call_journal, condition, criterion,
            ca_cert, write_mode, input_version, input_timestamp);
        if self.labels.is_empty() {
            self.labels = base.labels;
        }
        if self.merge_key.is_empty() {
            self.merge_key = base.merge_key;
        }
        if self.images.is_empty() {
            self.images = base.images;
        }
        // Parameters merge by key; a flag overrides the file's value.
        let mut params = base.params;
        for (k, v) in self.params {
            params.retain(|(key, _)| key != &k);
            params.push((k, v));
        }
        self.params = params;
        self.fail_on_error |= base.fail_on_error;
        self.cache_control |= base.cache_control;
        self.no_prompt_cache_key |= base.no_prompt_cache_key;
        self.no_warmup |= base.no_warmup;
        self.no_dedup |= base.no_dedup;
        self.stream |= base.stream;
        self.retry_failed |= base.retry_failed;
        self.send_empty |= base.send_empty;
        self.overwrite |= base.overwrite;
        self
    }
}

/// `path` read from a file in `folder`: joined to it when relative, with
/// `folder/..` folded away as cargo does (`jobs/../target/x` is shown and
/// used as `target/x`). An object-store URL (anything with `://`: no local
/// path holds one) is left as written.
fn beside(folder: &std::path::Path, path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    if path.is_absolute() || path.to_string_lossy().contains("://") {
        return path.to_path_buf();
    }
    let mut joined = PathBuf::new();
    for part in folder.join(path).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(joined.components().next_back(), Some(Component::Normal(_))) =>
            {
                joined.pop();
            }
            other => joined.push(other),
        }
    }
    joined
}

/// `key=value` with the value typed: JSON literals (numbers, booleans, null,
/// quoted strings, lists, objects) stay typed; `a,b` becomes a list of
/// strings (for `stop`); anything else is a string.
pub fn parse_param(s: &str) -> std::result::Result<(String, Value), String> {
    let (key, raw) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("empty key in `{s}`"));
    }
    let raw = raw.trim();
    let value = match serde_json::from_str::<Value>(raw) {
        Ok(v) => v,
        Err(_) if raw.contains(',') => Value::Array(
            raw.split(',')
                .map(|p| Value::String(p.trim().to_string()))
                .collect(),
        ),
        Err(_) => Value::String(raw.to_string()),
    };
    Ok((key.to_string(), value))
}

/// A list, or one string of comma-separated items as the command line
/// takes it (`labels = "billing,shipping"`).
fn list_or_commas<'de, D>(d: D) -> std::result::Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let wrong = || {
        serde::de::Error::custom(
            "expected a list of strings, or one string of comma-separated items",
        )
    };
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s.split(',').map(|p| p.trim().to_owned()).collect()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(wrong()),
            })
            .collect(),
        _ => Err(wrong()),
    }
}

fn params_from_table<'de, D>(d: D) -> std::result::Result<Vec<(String, Value)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let table = toml::Table::deserialize(d)?;
    table
        .into_iter()
        .map(|(k, v)| {
            let v = serde_json::to_value(v).map_err(serde::de::Error::custom)?;
            Ok((k, v))
        })
        .collect()
}

/// The template an OpenAI Batch job is bound with: it names the one column
/// a request needs, so the usual template check proves it is there.
pub const BODY_TEMPLATE: &str = "{{body}}";

/// How the input file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// Parquet or JSON Lines rows, by file extension; templates render requests.
    #[default]
    Rows,
    /// A Delta Lake table's rows (see --input-version, --input-timestamp).
    Delta,
    /// OpenAI Batch API JSONL: each line's `body` is the request.
    OpenaiBatch,
}

/// How the output file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// Parquet: the input columns, then the result, error and usage columns.
    #[default]
    Parquet,
    /// OpenAI Batch API output JSONL (needs `--input-format openai-batch`).
    OpenaiBatch,
    /// A Delta Lake table: the Parquet output's columns, committed to the
    /// table's log as one version per run (see `--write-mode`).
    Delta,
}

/// How a Delta output takes a job's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Add the job's rows as a new version.
    #[default]
    Append,
    /// Replace the table's rows with the job's (earlier versions stay readable).
    Overwrite,
    /// Upsert by `--merge-key`: send only new and changed rows, replace
    /// the stored rows of those keys, keep every other row.
    Merge,
}

/// Settings of type `T` (a job's, `aiq sql`'s) from a JSON object with
/// their keys, as the Python API hands its keywords over. A value of the
/// wrong type names its setting (serde alone names only unknown keys).
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let mut json = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Where in the JSON made of the keywords means nothing to the caller.
        let inner = inner.split(" at line ").next().unwrap_or_default();
        Error::Config(match path.as_str() {
            // An unknown key is named in the message already.
            _ if inner.starts_with("unknown field") => format!("settings: {inner}"),
            "" | "." => format!("settings: {inner}"),
            key => format!("setting `{key}`: {inner}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_file_paths_fold_the_files_folder_away() {
        let p = |f: &str, x: &str| beside(std::path::Path::new(f), std::path::Path::new(x));
        assert_eq!(
            p("jobs", "../target/out.parquet"),
            PathBuf::from("target/out.parquet")
        );
        assert_eq!(p("jobs", "./in.jsonl"), PathBuf::from("jobs/in.jsonl"));
        assert_eq!(p("", "../t4/in.jsonl"), PathBuf::from("../t4/in.jsonl"));
        assert_eq!(p("a/b", "../../../x"), PathBuf::from("../x"));
        assert_eq!(p("jobs", "s3://bucket/x"), PathBuf::from("s3://bucket/x"));
        assert_eq!(p("jobs", "/abs/x"), PathBuf::from("/abs/x"));
    }
    use serde_json::json;

    #[test]
    fn params_are_typed() {
        assert_eq!(
            parse_param("max_tokens=128").unwrap(),
            ("max_tokens".into(), json!(128))
        );
        assert_eq!(parse_param("temperature=0.5").unwrap().1, json!(0.5));
        assert_eq!(parse_param("stop=a,b").unwrap().1, json!(["a", "b"]));
        assert_eq!(parse_param("reasoning_effort=low").unwrap().1, json!("low"));
        assert_eq!(parse_param("logprobs=true").unwrap().1, json!(true));
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=3").is_err());
    }

    #[test]
    fn flags_override_the_job_file() {
        let file: JobSettings = toml::from_str(
            r#"
            input = "in.parquet"
            endpoint = "a"
            concurrency = 4
            fail_on_error = true
            [params]
            max_tokens = 64
            temperature = 0
            "#,
        )
        .unwrap();
        let flags = JobSettings {
            endpoint: Some("b".into()),
            params: vec![("max_tokens".into(), json!(8))],
            ..Default::default()
        };
        let merged = flags.overlay(file);
        assert_eq!(merged.endpoint.as_deref(), Some("b"));
        assert_eq!(merged.input, Some(PathBuf::from("in.parquet")));
        assert_eq!(merged.concurrency, Some(4));
        assert!(merged.fail_on_error);
        assert_eq!(
            merged.params,
            vec![
                ("temperature".into(), json!(0)),
                ("max_tokens".into(), json!(8))
            ]
        );
    }

    /// Issue 27.3: the Python API's settings arrive as JSON; a wrong type
    /// names its setting, and labels may be one comma-separated string as
    /// on the command line.
    #[test]
    fn json_settings_name_the_setting_of_a_wrong_type() {
        let err = JobSettings::from_json(r#"{"prompt": "x", "concurrency": "many"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("setting `concurrency`: invalid type: string \"many\""),
            "{err}"
        );
        assert!(!err.contains("line 1"), "{err}");
        let s = JobSettings::from_json(r#"{"labels": "billing, shipping,technical"}"#).unwrap();
        assert_eq!(s.labels, ["billing", "shipping", "technical"]);
        let s = JobSettings::from_json(r#"{"labels": ["a,b", "c"]}"#).unwrap();
        assert_eq!(s.labels, ["a,b", "c"], "a list is taken as it is");
        let file: JobSettings = toml::from_str(r#"labels = "x,y""#).unwrap();
        assert_eq!(file.labels, ["x", "y"]);
        let err = JobSettings::from_json(r#"{"labels": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("setting `labels`: expected a list of strings"),
            "{err}"
        );
        let err = JobSettings::from_json(r#"{"no_such_key": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no_such_key") && err.contains("expected one of"),
            "{err}"
        );
    }

    #[test]
    fn unknown_job_file_keys_are_errors() {
        let err = toml::from_str::<JobSettings>("concurency = 4").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }
}

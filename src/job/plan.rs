//! Plan: job settings checked into what a run needs, before anything is
//! spent. Every mistake found here is an exit-2 error naming the setting:
//! a missing input or prompt, an unknown type string, options a task
//! function needs, an output path under a file. Checks that need
//! the input (template variables against columns) or credentials happen in
//! `run`, still before the first request.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::ai::functions::{AiFunction, FunctionOptions};
use crate::ai::types::{parse_response_format, SqlType};
use crate::error::{Error, Result};
use crate::job::settings::{JobSettings, SimulatorSettings};
use crate::job::spend::{Budget, Prices};
use crate::pipeline::openai_batch::{InputFormat, OutputFormat};
use crate::pipeline::render::BodySpec;
use crate::provider::endpoint::{Endpoint, Target};
use crate::provider::endpoint::{Flavor, SIMULATOR_MODEL};
use crate::provider::limit::Limits;
use crate::provider::quirks::Quirks;
use crate::provider::retry::RetryPolicy;
use crate::provider::wire::Task;
use crate::simulator::Simulator;

#[derive(Debug, Clone)]
pub struct Plan {
    pub input: PathBuf,
    pub output: PathBuf,
    pub target: Target,
    pub model: Option<String>,
    pub task: Task,
    pub system: Option<String>,
    pub prompt: String,
    pub prompt2: Option<String>,
    pub params: Map<String, Value>,
    pub result_type: SqlType,
    pub response_format: Option<Value>,
    pub function: Option<(AiFunction, FunctionOptions)>,
    /// Image columns, sent as `image_url` parts of the user message.
    pub images: Vec<String>,
    pub input_format: InputFormat,
    pub output_format: OutputFormat,
    pub fail_on_error: bool,
    pub concurrency: usize,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub itpm: Option<u32>,
    pub otpm: Option<u32>,
    pub qph: Option<u32>,
    /// USD per million tokens, when the user gave them.
    pub prices: Option<Prices>,
    pub budget: Budget,
    pub retry: RetryPolicy,
    pub api_key_env: Option<String>,
    pub profile: Option<String>,
    pub batch_rows: usize,
    pub batch_size: usize,
    pub cache_control: bool,
    pub prompt_cache_key: bool,
    pub warmup: bool,
    pub stream: bool,
    pub restart: bool,
    pub simulator: SimulatorSettings,
    /// Extra trusted roots (PEM), from `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
}

pub const DEFAULT_CONCURRENCY: usize = 16;
pub const DEFAULT_BATCH_ROWS: usize = 1024;

impl Plan {
    pub fn from_settings(mut s: JobSettings, restart: bool) -> Result<Plan> {
        let input = s.input.ok_or_else(|| {
            Error::Config("no input: give --input PATH (or `input` in the job file)".into())
        })?;
        let output = s.output.ok_or_else(|| {
            Error::Config("no output: give --output PATH (or `output` in the job file)".into())
        })?;
        if let Some(parent) = output.parent().filter(|p| p.exists() && !p.is_dir()) {
            return Err(Error::output(
                &output,
                format!("{} is a file, not a folder", parent.display()),
            ));
        }
        let endpoint = s.endpoint.ok_or_else(|| {
            Error::Config(
                "no endpoint: give --endpoint NAME|URL|simulator (or `endpoint` in the job file)"
                    .into(),
            )
        })?;
        let target = Target::parse(&endpoint)?;

        let input_format = s.input_format.unwrap_or_default();
        let output_format = s.output_format.unwrap_or_default();
        if input_format == InputFormat::OpenaiBatch {
            // Each line carries its own request: anything that would shape
            // a request is a mistake, not something to ignore silently.
            let shaping = [
                ("--prompt", s.prompt.is_some()),
                ("--system", s.system.is_some()),
                ("--prompt2", s.prompt2.is_some()),
                ("--task", s.task.is_some()),
                ("--return-type", s.return_type.is_some()),
                ("--response-format", s.response_format.is_some()),
                ("--function", s.function.is_some()),
                ("--image", !s.images.is_empty()),
                ("--stream", s.stream),
                ("--batch-size", s.batch_size.is_some_and(|n| n > 1)),
                ("tools", s.tools.is_some()),
                ("tool_choice", s.tool_choice.is_some()),
            ];
            if let Some((flag, _)) = shaping.iter().find(|(_, set)| *set) {
                return Err(Error::Config(format!(
                    "{flag} does not apply with --input-format openai-batch: each line's body is the request"
                )));
            }
            s.prompt = Some(crate::pipeline::openai_batch::BODY_TEMPLATE.to_string());
        } else if output_format == OutputFormat::OpenaiBatch {
            return Err(Error::Config(
                "--output-format openai-batch needs --input-format openai-batch: output lines answer request lines by custom_id".into(),
            ));
        }
        let mut task = s.task.unwrap_or_default();
        let mut system = s.system;
        let mut result_type = SqlType::String;
        let mut response_format = None;
        let mut function = None;
        if let Some(f) = s.function {
            let opts = FunctionOptions {
                labels: s.labels.clone(),
                max_words: s.max_words,
                to_lang: s.to_lang.clone(),
            };
            let spec = f
                .spec(&opts)
                .map_err(|e| Error::Config(format!("--function {}: {e}", f.name())))?;
            if s.return_type.is_some() || s.response_format.is_some() {
                return Err(Error::Config(format!(
                    "--function {} sets its own result type; drop --return-type / --response-format",
                    f.name()
                )));
            }
            if spec.embeddings {
                task = Task::Embeddings;
                if s.prompt2.is_none() {
                    return Err(Error::Config(format!(
                        "--function {} compares two texts: give --prompt and --prompt2",
                        f.name()
                    )));
                }
            } else {
                if system.is_some() {
                    return Err(Error::Config(format!(
                        "--function {} writes its own system prompt; drop --system",
                        f.name()
                    )));
                }
                system = Some(spec.system.clone());
            }
            result_type = spec.return_type.clone();
            response_format = spec.response_format.clone();
            function = Some((f, opts));
        } else if !s.labels.is_empty() || s.max_words.is_some() || s.to_lang.is_some() {
            return Err(Error::Config(
                "--labels, --max-words and --to-lang only apply with --function".into(),
            ));
        }
        if let Some(rt) = &s.return_type {
            result_type = rt
                .parse()
                .map_err(|e| Error::Config(format!("--return-type: {e}")))?;
            if !result_type.is_string() {
                response_format = Some(result_type.response_format());
            }
        }
        if let Some(rf) = &s.response_format {
            if s.return_type.is_some() {
                return Err(Error::Config(
                    "give --return-type or --response-format, not both".into(),
                ));
            }
            let (ty, format) = parse_response_format(rf)
                .map_err(|e| Error::Config(format!("--response-format: {e}")))?;
            result_type = ty;
            response_format = Some(format);
        }
        if task == Task::Embeddings && function.is_none() {
            result_type = SqlType::Array(Box::new(SqlType::Float));
            response_format = None;
        }
        if response_format.is_some() && task != Task::Chat {
            return Err(Error::Config(
                "typed results (--return-type, --response-format) need --task chat".into(),
            ));
        }
        if s.prompt2.is_some() && !matches!(function, Some((AiFunction::AiSimilarity, _))) {
            return Err(Error::Config(
                "--prompt2 only applies with --function ai_similarity".into(),
            ));
        }
        if !s.images.is_empty() && task != Task::Chat {
            return Err(Error::Config(
                "--image needs --task chat: images go into chat messages".into(),
            ));
        }
        let prompt = s.prompt.ok_or_else(|| {
            Error::Config(
                "no prompt: give --prompt TEMPLATE, e.g. --prompt 'Summarize: {{text}}'".into(),
            )
        })?;

        let mut params: Map<String, Value> = s.params.into_iter().collect();
        if let Some(tools) = s.tools {
            params.insert("tools".into(), toml_to_json(tools)?);
        }
        if let Some(choice) = s.tool_choice {
            params.insert("tool_choice".into(), toml_to_json(choice)?);
        }
        for reserved in ["messages", "prompt", "input", "stream", "response_format"] {
            if params.contains_key(reserved) {
                return Err(Error::Config(format!(
                    "--param {reserved} is set by aiq itself; use the matching flag"
                )));
            }
        }

        let concurrency = s.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            return Err(Error::Config("--concurrency must be at least 1".into()));
        }
        let timeout = s.timeout.unwrap_or(300.0);
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(Error::Config(
                "--timeout must be a positive number of seconds".into(),
            ));
        }
        if s.rpm == Some(0) || s.tpm == Some(0) {
            return Err(Error::Config("--rpm and --tpm must be at least 1".into()));
        }
        if s.itpm == Some(0) || s.otpm == Some(0) || s.qph == Some(0) {
            return Err(Error::Config(
                "--itpm, --otpm and --qph must be at least 1".into(),
            ));
        }
        let prices = prices(s.price_in, s.price_out, s.price_cached)?;
        let budget = Budget {
            max_tokens: s.max_tokens_total,
            max_cost: s.max_cost,
        };
        if s.max_tokens_total == Some(0) {
            return Err(Error::Config(
                "--max-tokens-total must be at least 1".into(),
            ));
        }
        if let Some(max) = s.max_cost {
            if !(max.is_finite() && max > 0.0) {
                return Err(Error::Config(
                    "--max-cost must be a positive number of USD".into(),
                ));
            }
            if prices.is_none() {
                return Err(Error::Config(
                    "--max-cost needs prices: give --price-in and --price-out (USD per million tokens)".into(),
                ));
            }
        }
        let batch_rows = s.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS).max(1);
        let batch_size = s.batch_size.unwrap_or(1).max(1);
        if batch_size > 1 && task != Task::Embeddings {
            return Err(Error::Config(
                "--batch-size applies to embeddings only".into(),
            ));
        }
        if s.stream && task == Task::Embeddings {
            return Err(Error::Config(
                "--stream applies to chat and completions, not embeddings".into(),
            ));
        }
        Ok(Plan {
            input,
            output,
            target,
            model: s.model,
            task,
            system,
            prompt,
            prompt2: s.prompt2,
            params,
            result_type,
            response_format,
            function,
            images: s.images,
            input_format,
            output_format,
            fail_on_error: s.fail_on_error,
            concurrency,
            rpm: s.rpm,
            tpm: s.tpm,
            itpm: s.itpm,
            otpm: s.otpm,
            qph: s.qph,
            prices,
            budget,
            retry: RetryPolicy {
                max_retries: s.max_retries.unwrap_or(8),
                max_ambiguous_retries: s.max_ambiguous_retries.unwrap_or(1),
                timeout: Duration::from_secs_f64(timeout),
                min_delay: Duration::from_millis(s.backoff_ms.unwrap_or(500)),
                ..RetryPolicy::default()
            },
            api_key_env: s.api_key_env,
            profile: s.profile,
            batch_rows,
            batch_size,
            cache_control: s.cache_control,
            prompt_cache_key: !s.no_prompt_cache_key,
            warmup: !s.no_warmup,
            stream: s.stream,
            restart,
            simulator: s.simulator.unwrap_or_default(),
            ca_cert: s.ca_cert,
        })
    }

    /// Resolves `--endpoint` to a URL and credentials, starting the
    /// simulator if asked. The work is in
    /// [`crate::provider::endpoint::resolve`], shared with `aiq bench`.
    pub async fn resolve_endpoint(&self) -> Result<(Endpoint, Option<Simulator>)> {
        crate::provider::endpoint::resolve(
            &self.target,
            self.model.as_deref(),
            self.task,
            self.profile.as_deref(),
            self.api_key_env.as_deref(),
            crate::provider::endpoint::simulator_config(&self.simulator),
        )
        .await
    }

    /// The endpoint's name or model, for provider quirks.
    pub fn endpoint_name(&self) -> String {
        match &self.target {
            Target::Simulator => self
                .model
                .clone()
                .unwrap_or_else(|| SIMULATOR_MODEL.to_string()),
            Target::Databricks(name) => name.clone(),
            Target::OpenAi(_) => self.model.clone().unwrap_or_default(),
        }
    }

    pub fn flavor(&self) -> Flavor {
        match self.target {
            Target::OpenAi(_) => Flavor::OpenAi,
            Target::Simulator | Target::Databricks(_) => Flavor::Databricks,
        }
    }

    /// How every request body is laid out, given the provider's quirks.
    pub fn body_spec(&self) -> BodySpec {
        let quirks = Quirks::of(self.flavor(), &self.endpoint_name());
        BodySpec {
            task: self.task,
            model: if quirks.model_in_body {
                self.model.clone()
            } else {
                None
            },
            params: self.params.clone(),
            response_format: self.response_format.clone(),
            cache_control: self.cache_control || quirks.cache_control,
            prompt_cache_key: self.prompt_cache_key && quirks.prompt_cache_key,
            stream: self.stream,
            stream_usage_option: quirks.stream_usage_option,
        }
    }

    /// Every rate limit the job was told.
    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            itpm: self.itpm,
            otpm: self.otpm,
            qph: self.qph,
        }
    }

    /// The settings that change answers, for the journal's fingerprint:
    /// changing any of them makes a journal unusable; changing concurrency,
    /// limits, retries or timeouts does not.
    /// OpenAI Batch input: request bodies come from the input, as is.
    pub fn passthrough(&self) -> bool {
        self.input_format == InputFormat::OpenaiBatch
    }

    pub fn answer_settings(&self) -> Value {
        let mut settings = json!({
            "target": format!("{:?}", self.target),
            "model": self.model,
            "task": format!("{:?}", self.task),
            "system": self.system,
            "prompt": self.prompt,
            "prompt2": self.prompt2,
            "params": self.params,
            "result_type": format!("{:?}", self.result_type),
            "response_format": self.response_format,
            "function": self.function.as_ref().map(|(f, o)| json!({"name": f.name(), "labels": o.labels, "max_words": o.max_words, "to_lang": o.to_lang})),
            "batch_size": self.batch_size,
        });
        // Only when set, so journals of jobs without images stay valid.
        if !self.images.is_empty() {
            settings["images"] = json!(self.images);
        }
        if self.input_format != InputFormat::Rows {
            settings["input_format"] = json!(format!("{:?}", self.input_format));
        }
        settings
    }
}

/// Prices come as a pair (input and output), the cached price optional.
fn prices(input: Option<f64>, output: Option<f64>, cached: Option<f64>) -> Result<Option<Prices>> {
    for (flag, v) in [
        ("--price-in", input),
        ("--price-out", output),
        ("--price-cached", cached),
    ] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(Error::Config(format!(
                "{flag} must be a number of USD per million tokens, 0 or more"
            )));
        }
    }
    match (input, output) {
        (Some(input), Some(output)) => Ok(Some(Prices {
            input,
            output,
            cached,
        })),
        (None, None) if cached.is_none() => Ok(None),
        _ => Err(Error::Config(
            "give both --price-in and --price-out (USD per million tokens), or no prices at all"
                .into(),
        )),
    }
}

fn toml_to_json(v: toml::Value) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Config(format!("tools: {e}")))
}

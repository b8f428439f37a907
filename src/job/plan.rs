//! Plan: job settings checked into what a run needs, before anything is
//! spent. Every mistake found here is an exit-2 error naming the setting:
//! a missing input or prompt, an unknown type string, options a task
//! function needs, an output path under a file. Checks that need
//! the input (template variables against columns) or credentials happen in
//! `run`, still before the first request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::ai::functions::{AiFunction, FunctionOptions, TaskSpec};
use crate::ai::types::{parse_response_format, SqlType};
use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::job::settings::{
    InputFormat, JobSettings, Mode, OutputFormat, SimulatorSettings, BODY_TEMPLATE,
};
use crate::job::shard::{split_limit, Shard, PLACEHOLDER};
use crate::job::spend::{Budget, Prices};
use crate::job::table::TableSettings;
use crate::provider::dialect::{BodySpec, Dialect};
use crate::provider::endpoint::{Endpoint, Handed, Target};
use crate::provider::endpoint::{SIMULATOR_MODEL, SIMULATOR_TOKEN};
use crate::provider::limit::Limits;
use crate::provider::quirks::Quirks;
use crate::provider::reply;
use crate::provider::retry::RetryPolicy;
use crate::provider::wire::Task;
use crate::simulator::{SimConfig, Simulator};

#[derive(Debug, Clone)]
pub struct Plan {
    pub input: Location,
    pub output: Location,
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
    /// `--send-empty`: rows whose prompt renders empty are sent too.
    pub send_empty: bool,
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
    /// Bytes a JSON Lines input line may hold.
    pub max_line_bytes: usize,
    pub batch_size: usize,
    pub cache_control: bool,
    pub prompt_cache_key: bool,
    pub warmup: bool,
    /// Identical requests are sent once (not with `--no-dedup`).
    pub dedup: bool,
    pub stream: bool,
    pub restart: bool,
    pub simulator: SimulatorSettings,
    /// Extra trusted roots (PEM), from `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// Repairs per row of typed replies that were cut off or did not fit.
    pub max_repairs: u32,
    /// Re-send rows whose journaled outcome is an error.
    pub retry_failed: bool,
    /// Run even when the output holds this job's finished result.
    pub overwrite: bool,
    /// Online, or through the provider's Batch API.
    pub mode: Mode,
    /// Batch mode's limits, poll interval and deadline.
    pub batch: BatchSettings,
    /// `--shard`: this run reads only the shard's rows. Limits and budgets
    /// above are already this run's share of the job's.
    pub shard: Option<Shard>,
    /// `--call-journal`: answered calls keyed by request content.
    pub call_journal: Option<PathBuf>,
    /// Delta Lake: the write mode and merge key, the input version.
    pub table: TableSettings,
    /// Credentials handed to this run by its caller, resolved in place of
    /// the process's environment and config file (the Python package's
    /// `credentials=`, which aiq.spark and aiq.ray use to give their tasks
    /// what the driver resolved, its profile included: `profile` is then
    /// not read). Not a job-file setting.
    pub handed: Option<Handed>,
}

/// Batch mode settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// Requests per batch input file at most.
    pub max_requests: usize,
    /// Bytes per batch input file at most.
    pub max_bytes: u64,
    /// Time between polls of a running batch.
    pub poll: Duration,
    /// After this long, unfinished batches are cancelled and the rest sent online.
    pub deadline: Option<Duration>,
    /// Bedrock: the S3 prefix of the batch records, and the service role.
    pub staging: Option<String>,
    pub role_arn: Option<String>,
    /// Bedrock: the fewest records a batch job takes.
    pub min_records: usize,
}

/// OpenAI's limits on one batch input file.
pub const DEFAULT_BATCH_MAX_REQUESTS: usize = 50_000;
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 200_000_000;
pub const DEFAULT_POLL_SECS: f64 = 30.0;

impl Default for BatchSettings {
    fn default() -> BatchSettings {
        BatchSettings {
            max_requests: DEFAULT_BATCH_MAX_REQUESTS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            poll: Duration::from_secs_f64(DEFAULT_POLL_SECS),
            deadline: None,
            staging: None,
            role_arn: None,
            min_records: crate::provider::bedrock_batch::MIN_RECORDS,
        }
    }
}

/// Repairs per row unless `--max-repairs` says otherwise.
pub const DEFAULT_MAX_REPAIRS: u32 = 1;

pub const DEFAULT_CONCURRENCY: usize = 16;
pub const DEFAULT_BATCH_ROWS: usize = 1024;
/// Bytes a line may hold unless `--max-line-bytes` says otherwise: room for
/// any document a model takes in one request, small enough that one line
/// in memory (plus its decoded row) stays within a machine's reach.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

impl Plan {
    /// Checks `s` into a plan. Each concern has its own function below, called
    /// in this order (the first mistake found is the one reported); a new
    /// setting belongs in the one that owns its concern.
    pub fn from_settings(mut s: JobSettings, restart: bool) -> Result<Plan> {
        crate::job::ranges::check(&s)?;
        let Locations {
            input,
            output,
            shard,
        } = locations(&mut s)?;
        let Rates {
            rpm,
            tpm,
            itpm,
            otpm,
            qph,
        } = rates(&s, shard);
        let target = target(&mut s)?;
        let (input_format, output_format) = formats(&mut s)?;
        let table = TableSettings::from_settings(&s)?;
        let Shape {
            task,
            system,
            prompt,
            result_type,
            response_format,
            function,
            params,
        } = shape(&mut s)?;
        check_provider(&target, task, s.model.as_deref())?;
        let (prices, budget) = spend(&s, shard)?;
        let prices = prices.map(|p| p.for_provider(target.dialect()));
        if s.retry_failed && restart {
            return Err(Error::Config(
                "--retry-failed re-sends the failed rows of the journal that --restart discards: give one of them".into(),
            ));
        }
        let Sizes {
            batch_rows,
            max_line_bytes,
            batch_size,
        } = sizes(&s, task)?;
        if task == Task::Embeddings {
            let similarity = matches!(function, Some((AiFunction::AiSimilarity, _)));
            let inputs = if similarity { 2 } else { batch_size };
            target
                .dialect()
                .check_embedding_inputs(s.model.as_deref(), inputs)?;
        }
        let mode = s.mode.unwrap_or_default();
        let batch = batch(&s, mode, &target, batch_size)?;
        let retry = retry_policy(&s);
        let simulator = s.sim.over(
            s.simulator.take().unwrap_or_default(),
            target == Target::Simulator,
        )?;
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
            send_empty: s.send_empty,
            input_format,
            output_format,
            fail_on_error: s.fail_on_error,
            concurrency: s.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            rpm,
            tpm,
            itpm,
            otpm,
            qph,
            prices,
            budget,
            retry,
            api_key_env: s.api_key_env,
            profile: s.profile,
            batch_rows,
            max_line_bytes,
            batch_size,
            cache_control: s.cache_control,
            prompt_cache_key: !s.no_prompt_cache_key,
            warmup: !s.no_warmup,
            dedup: !s.no_dedup,
            stream: s.stream,
            restart,
            simulator,
            ca_cert: s.ca_cert,
            mode,
            batch,
            max_repairs: s.max_repairs.unwrap_or(DEFAULT_MAX_REPAIRS),
            retry_failed: s.retry_failed,
            overwrite: s.overwrite,
            shard,
            call_journal: s.call_journal,
            table,
            handed: None,
        })
    }

    /// Resolves `--endpoint` to a URL and credentials, starting the
    /// simulator if asked ([`EndpointSpec::resolve`]).
    pub async fn resolve_endpoint(&self) -> Result<(Endpoint, Option<Simulator>)> {
        self.endpoint_spec().resolve().await
    }

    /// What names this plan's endpoint and its credentials.
    pub fn endpoint_spec(&self) -> EndpointSpec<'_> {
        EndpointSpec {
            target: &self.target,
            model: self.model.as_deref(),
            task: self.task,
            profile: self.profile.as_deref().filter(|_| self.handed.is_none()),
            api_key_env: self.api_key_env.as_deref(),
            simulator: &self.simulator,
            handed: self.handed.as_ref(),
        }
    }

    /// The endpoint's name or model, for provider quirks.
    pub fn endpoint_name(&self) -> String {
        match &self.target {
            Target::Simulator => self
                .model
                .clone()
                .unwrap_or_else(|| SIMULATOR_MODEL.to_string()),
            Target::Databricks(name) => name.clone(),
            Target::OpenAi(_) | Target::Native { .. } => self.model.clone().unwrap_or_default(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.target.dialect()
    }

    /// How every request body is laid out, given the provider's quirks.
    pub fn body_spec(&self) -> BodySpec {
        let quirks = Quirks::of(self.dialect(), &self.endpoint_name());
        BodySpec {
            dialect: self.dialect(),
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

    /// How every reply of the job is read into its row's result.
    pub fn reply_shape(&self) -> reply::Shape {
        reply::Shape {
            dialect: self.dialect(),
            task: self.task,
            result_type: self.result_type.clone(),
            function: self.function.clone(),
            similarity: self.prompt2.is_some(),
            raw: self.passthrough(),
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
        // Only when set, so journals of other functions stay valid.
        if let Some((_, o)) = &self.function {
            for (key, value) in [("condition", &o.condition), ("criterion", &o.criterion)] {
                if let Some(v) = value {
                    settings["function"][key] = json!(v);
                }
            }
        }
        // Only when set, so journals of jobs without images stay valid.
        if !self.images.is_empty() {
            settings["images"] = json!(self.images);
        }
        // Which rows are sent: a resume must not keep rows an earlier run
        // did not send for being empty.
        if self.send_empty {
            settings["send_empty"] = json!(true);
        }
        if self.input_format != InputFormat::Rows {
            settings["input_format"] = json!(format!("{:?}", self.input_format));
        }
        // Another shard of the same input is other rows.
        if let Some(shard) = self.shard {
            settings["shard"] = json!(format!("{}/{}", shard.index, shard.count));
        }
        settings
    }
}

/// Where the run reads and writes: input, output (this shard's) and shard.
struct Locations {
    input: Location,
    output: Location,
    shard: Option<Shard>,
}

fn locations(s: &mut JobSettings) -> Result<Locations> {
    let input = s.input.take().ok_or_else(|| {
        Error::Config("no input: give --input PATH (or `input` in the job file)".into())
    })?;
    let output = s.output.take().ok_or_else(|| {
        Error::Config("no output: give --output PATH (or `output` in the job file)".into())
    })?;
    let shard = s.shard.take().map(|spec| spec.resolve()).transpose()?;
    // Shards commit to one Delta table; files need one each.
    let output = match s.output_format {
        Some(OutputFormat::Delta) => output,
        _ => shard_output(output, shard)?,
    };
    let (input, output) = (
        Location::parse(input, Role::Input)?,
        Location::parse(output, Role::Output)?,
    );
    let parent = output.local().and_then(Path::parent);
    if let Some(parent) = parent.filter(|p| p.exists() && !p.is_dir()) {
        return Err(Error::output(
            &output,
            format!("{} is a file, not a folder", parent.display()),
        ));
    }
    Ok(Locations {
        input,
        output,
        shard,
    })
}

/// Rate limits, this run's share of them.
struct Rates {
    rpm: Option<u32>,
    tpm: Option<u32>,
    itpm: Option<u32>,
    otpm: Option<u32>,
    qph: Option<u32>,
}

/// Limits are the job's; this run sends its share (docs "Scaling out").
fn rates(s: &JobSettings, shard: Option<Shard>) -> Rates {
    let workers = match (s.workers, shard) {
        (Some(w), _) => w,
        (None, Some(shard)) => shard.count,
        (None, None) => 1,
    };
    let [rpm, tpm, itpm, otpm, qph] =
        [s.rpm, s.tpm, s.itpm, s.otpm, s.qph].map(|l| split_limit(l, workers));
    Rates {
        rpm,
        tpm,
        itpm,
        otpm,
        qph,
    }
}

fn target(s: &mut JobSettings) -> Result<Target> {
    let endpoint = s.endpoint.take().ok_or_else(|| {
        Error::Config(
            "no endpoint: give --endpoint NAME|URL|simulator (or `endpoint` in the job file)"
                .into(),
        )
    })?;
    // `anthropic:MODEL` names the model too, and wins over --model (an
    // ai_query call site names its own).
    let endpoint = match crate::provider::endpoint::provider_model(&endpoint) {
        Some((provider, model)) => {
            s.model = Some(model.to_string());
            provider.to_string()
        }
        None => endpoint,
    };
    Target::parse(&endpoint)?
        .with_base_url(s.base_url.as_deref())?
        .with_api_version(s.api_version.as_deref())
}

/// What a provider reached by name needs before anything is sent: an API
/// for the task, and a model to name.
fn check_provider(target: &Target, task: Task, model: Option<&str>) -> Result<()> {
    let Target::Native { dialect, .. } = target else {
        return Ok(());
    };
    if !dialect.supports(task) {
        return Err(Error::Config(format!(
            "--endpoint {}: the {dialect} API has no {} task (a --function may imply one)",
            dialect.name(),
            format!("{task:?}").to_lowercase()
        )));
    }
    if model.is_none_or(|m| m.trim().is_empty()) {
        return Err(Error::Config(format!(
            "--endpoint {} needs --model (the model's name, as the {dialect} API calls it)",
            dialect.name()
        )));
    }
    Ok(())
}

/// Input and output formats. OpenAI Batch input carries each request whole,
/// so its prompt is the body template.
fn formats(s: &mut JobSettings) -> Result<(InputFormat, OutputFormat)> {
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
        if let Some(flag) = first_given(&shaping) {
            return Err(Error::Config(format!(
                "{flag} does not apply with --input-format openai-batch: each line's body is the request"
            )));
        }
        s.prompt = Some(BODY_TEMPLATE.to_string());
    } else if output_format == OutputFormat::OpenaiBatch {
        return Err(Error::Config(
            "--output-format openai-batch needs --input-format openai-batch: output lines answer request lines by custom_id".into(),
        ));
    }
    Ok((input_format, output_format))
}

/// What each request asks and what its answer is read as.
struct Shape {
    task: Task,
    system: Option<String>,
    prompt: String,
    result_type: SqlType,
    response_format: Option<Value>,
    function: Option<(AiFunction, FunctionOptions)>,
    params: Map<String, Value>,
}

fn shape(s: &mut JobSettings) -> Result<Shape> {
    let mut task = s.task.unwrap_or_default();
    let mut system = s.system.take();
    let mut result_type = SqlType::String;
    let mut response_format = None;
    let function = function(s)?;
    if let Some((f, spec)) = &function {
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
    }
    let function = function.map(|(f, _)| (f, function_options(s)));
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
    let prompt = prompt(s, function.as_ref().map(|(f, _)| *f))?;
    Ok(Shape {
        task,
        system,
        prompt,
        result_type,
        response_format,
        function,
        params: params(s)?,
    })
}

fn function_options(s: &JobSettings) -> FunctionOptions {
    FunctionOptions {
        labels: s.labels.clone(),
        max_words: s.max_words,
        to_lang: s.to_lang.clone(),
        condition: s.condition.clone(),
        criterion: s.criterion.clone(),
    }
}

/// `--function` and its spec; the function's options without it are a mistake.
fn function(s: &JobSettings) -> Result<Option<(AiFunction, TaskSpec)>> {
    let Some(f) = s.function else {
        if !s.labels.is_empty()
            || s.max_words.is_some()
            || s.to_lang.is_some()
            || s.condition.is_some()
            || s.criterion.is_some()
        {
            return Err(Error::Config(
                "--labels, --max-words, --to-lang, --condition and --criterion only apply with --function".into(),
            ));
        }
        return Ok(None);
    };
    let spec = f
        .spec(&function_options(s))
        .map_err(|e| Error::Config(format!("--function {}: {e}", f.name())))?;
    if s.return_type.is_some() || s.response_format.is_some() {
        return Err(Error::Config(format!(
            "--function {} sets its own result type; drop --return-type / --response-format",
            f.name()
        )));
    }
    Ok(Some((f, spec)))
}

fn prompt(s: &mut JobSettings, function: Option<AiFunction>) -> Result<String> {
    s.prompt.take().ok_or_else(|| {
        Error::Config(match function {
            // A function writes the instructions: the prompt is the
            // text it works on.
            Some(f) => format!(
                "no prompt: --function {} needs the text to work on: give --prompt TEMPLATE, e.g. --prompt '{{{{text}}}}'",
                f.name()
            ),
            None => "no prompt: give --prompt TEMPLATE, e.g. --prompt 'Summarize: {{text}}'".into(),
        })
    })
}

/// Extra request-body parameters; those aiq sets itself are refused.
fn params(s: &mut JobSettings) -> Result<Map<String, Value>> {
    let mut params: Map<String, Value> = std::mem::take(&mut s.params).into_iter().collect();
    if let Some(tools) = s.tools.take() {
        params.insert("tools".into(), toml_to_json(tools)?);
    }
    if let Some(choice) = s.tool_choice.take() {
        params.insert("tool_choice".into(), toml_to_json(choice)?);
    }
    for reserved in ["messages", "prompt", "input", "stream", "response_format"] {
        if params.contains_key(reserved) {
            return Err(Error::Config(format!(
                "--param {reserved} is set by aiq itself; use the matching flag"
            )));
        }
    }
    Ok(params)
}

/// Prices and the budget, the budget this run's share of the job's.
pub fn spend(s: &JobSettings, shard: Option<Shard>) -> Result<(Option<Prices>, Budget)> {
    let parts = shard.map_or(1, |s| s.count);
    let budget = Budget {
        max_tokens: s.max_tokens_total.map(|t| (t / u64::from(parts)).max(1)),
        max_cost: s.max_cost.map(|c| c / f64::from(parts)),
    };
    let prices = prices(s)?;
    if s.max_cost.is_some() && prices.is_none() {
        return Err(Error::Config(
            "--max-cost needs prices: give --price-in and --price-out (USD per million tokens)"
                .into(),
        ));
    }
    Ok((prices, budget))
}

/// Rows per read batch, bytes per input line, inputs per request.
struct Sizes {
    batch_rows: usize,
    max_line_bytes: usize,
    batch_size: usize,
}

fn sizes(s: &JobSettings, task: Task) -> Result<Sizes> {
    let batch_size = s.batch_size.unwrap_or(1);
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
    Ok(Sizes {
        batch_rows: s.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS),
        max_line_bytes: s.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES),
        batch_size,
    })
}

fn retry_policy(s: &JobSettings) -> RetryPolicy {
    RetryPolicy {
        max_retries: s.max_retries.unwrap_or(8),
        max_ambiguous_retries: s.max_ambiguous_retries.unwrap_or(1),
        timeout: Duration::from_secs_f64(s.timeout.unwrap_or(300.0)),
        min_delay: Duration::from_millis(s.backoff_ms.unwrap_or(500)),
        ..RetryPolicy::default()
    }
}

/// Batch mode's settings, checked; set without `--mode batch` they are a
/// mistake, and so is what only online mode does with it. A Databricks
/// serving endpoint has no batch API: refused here, before anything is sent.
fn batch(s: &JobSettings, mode: Mode, target: &Target, batch_size: usize) -> Result<BatchSettings> {
    if mode == Mode::Online {
        let batch_only = [
            ("--batch-max-requests", s.batch_max_requests.is_some()),
            ("--batch-max-bytes", s.batch_max_bytes.is_some()),
            ("--poll-secs", s.poll_secs.is_some()),
            ("--deadline", s.deadline.is_some()),
            ("--batch-staging", s.batch_staging.is_some()),
            ("--bedrock-role-arn", s.bedrock_role_arn.is_some()),
            ("--bedrock-min-records", s.bedrock_min_records.is_some()),
        ];
        if let Some(flag) = first_given(&batch_only) {
            return Err(Error::Config(format!(
                "{flag} only applies with --mode batch"
            )));
        }
        return Ok(BatchSettings::default());
    }
    if let Target::Databricks(name) = target {
        return Err(Error::Config(format!(
            "--mode batch: `{name}` is a Databricks Model Serving endpoint, and Model Serving has \
             no batch API. Run the job online (drop --mode batch), or use ai_query on a \
             provisioned-throughput endpoint for batch inference inside Databricks"
        )));
    }
    let deadline = match &s.deadline {
        None => None,
        Some(d) => match crate::provider::retry::parse_reset(d) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                return Err(Error::Config(format!(
                    "--deadline {d:?}: give a duration such as 2h, 90m, 1h30m or 45s"
                )))
            }
        },
    };
    let online_only = [
        ("--stream", s.stream),
        ("--batch-size", batch_size > 1),
        ("--max-cost", s.max_cost.is_some()),
        ("--max-tokens-total", s.max_tokens_total.is_some()),
    ];
    if let Some(flag) = first_given(&online_only) {
        return Err(Error::Config(format!(
            "{flag} does not apply with --mode batch: the provider runs each batch whole \
             (use --dry-run to see the cost first)"
        )));
    }
    let (staging, role_arn) = (s.batch_staging.clone(), s.bedrock_role_arn.clone());
    let bedrock = target.dialect() == crate::provider::dialect::Dialect::Bedrock;
    crate::provider::bedrock_batch::check_settings(
        bedrock,
        staging.as_deref(),
        role_arn.as_deref(),
        s.model.as_deref(),
    )
    .map_err(Error::Config)?;
    Ok(BatchSettings {
        staging,
        role_arn,
        min_records: s
            .bedrock_min_records
            .unwrap_or(crate::provider::bedrock_batch::MIN_RECORDS),
        max_requests: s.batch_max_requests.unwrap_or(DEFAULT_BATCH_MAX_REQUESTS),
        max_bytes: s.batch_max_bytes.unwrap_or(DEFAULT_BATCH_MAX_BYTES),
        poll: Duration::from_secs_f64(s.poll_secs.unwrap_or(DEFAULT_POLL_SECS)),
        deadline,
    })
}

/// The first of `flags` that was given (`true`), for "does not apply" errors.
fn first_given<'a>(flags: &[(&'a str, bool)]) -> Option<&'a str> {
    flags
        .iter()
        .find(|(_, given)| *given)
        .map(|(flag, _)| *flag)
}

impl Plan {
    /// What names this run's shard in lock and call-journal names.
    pub fn shard_scope(&self) -> Option<String> {
        self.shard
            .map(|s| format!("shard-{}-of-{}", s.index, s.count))
    }

    /// What a `--call-journal` key folds in besides the request body: the
    /// settings that change answers or how replies are read, but not the
    /// shard (a call is the same call in any shard).
    pub fn call_fingerprint(&self) -> String {
        let mut settings = self.answer_settings();
        if let Some(map) = settings.as_object_mut() {
            map.remove("shard");
        }
        settings.to_string()
    }
}

/// `--output` for this shard: `{shard}` replaced. Several shards writing
/// one path would overwrite each other, so N > 1 needs the placeholder, and
/// the placeholder needs a shard.
fn shard_output(output: PathBuf, shard: Option<Shard>) -> Result<PathBuf> {
    let text = output.to_string_lossy();
    let has = text.contains(PLACEHOLDER);
    match shard {
        Some(shard) if has => Ok(PathBuf::from(shard.apply(&text))),
        Some(shard) if shard.count > 1 => Err(Error::Config(format!(
            "--shard {}/{}: put {PLACEHOLDER} in --output (e.g. out/part-{PLACEHOLDER}.parquet) so that each shard writes its own file",
            shard.index, shard.count
        ))),
        None if has => Err(Error::Config(format!(
            "--output {text} has {PLACEHOLDER} but no --shard K/N was given"
        ))),
        _ => Ok(output),
    }
}

/// Prices come as a pair (input and output), the cache prices optional
/// (their ranges are checked in [`crate::job::ranges`]; an unset cache-write
/// price is the provider's, [`Prices::for_provider`]).
fn prices(s: &JobSettings) -> Result<Option<Prices>> {
    let (cached, cache_write) = (s.price_cached, s.price_cache_write);
    match (s.price_in, s.price_out) {
        (Some(input), Some(output)) => Ok(Some(Prices {
            input,
            output,
            cached,
            cache_write,
        })),
        (None, None) if cached.is_none() && cache_write.is_none() => Ok(None),
        _ => Err(Error::Config(
            "give both --price-in and --price-out (USD per million tokens), or no prices at all"
                .into(),
        )),
    }
}

fn toml_to_json(v: toml::Value) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Config(format!("tools: {e}")))
}

/// What names an endpoint and its credentials: a plan's
/// ([`Plan::endpoint_spec`]) or `aiq bench`'s flags.
#[derive(Clone, Copy)]
pub struct EndpointSpec<'a> {
    pub target: &'a Target,
    pub model: Option<&'a str>,
    pub task: Task,
    pub profile: Option<&'a str>,
    pub api_key_env: Option<&'a str>,
    /// The `[simulator]` settings, for the target `simulator`.
    pub simulator: &'a SimulatorSettings,
    pub handed: Option<&'a Handed>,
}

impl EndpointSpec<'_> {
    /// Resolves the target to a URL and credentials, starting the built-in
    /// simulator (with the job's `[simulator]` settings) when the target is
    /// `simulator`: planning starts it, the provider layer only speaks
    /// wires. The simulator lives as long as the returned handle: keep it
    /// until the last request is done.
    pub async fn resolve(&self) -> Result<(Endpoint, Option<Simulator>)> {
        let (target, model) = (self.target, self.model);
        if *target != Target::Simulator {
            let endpoint = crate::provider::endpoint::resolve(
                target,
                model,
                self.task,
                self.profile,
                self.api_key_env,
                self.handed,
            )?;
            return Ok((endpoint, None));
        }
        let cfg = SimConfig {
            port: 0,
            token: Some(SIMULATOR_TOKEN.to_string()),
            ..simulator_config(self.simulator)
        };
        let sim = Simulator::start(cfg)
            .await
            .map_err(|e| Error::Config(format!("could not start the built-in simulator: {e}")))?;
        Ok((Endpoint::simulator(sim.base_url(), model), Some(sim)))
    }
}

/// The simulator a job file's `[simulator]` table asks for; unset knobs keep
/// the simulator's defaults.
pub fn simulator_config(s: &SimulatorSettings) -> SimConfig {
    let d = SimConfig::default();
    SimConfig {
        latency_ms: s.latency_ms.unwrap_or(d.latency_ms),
        itl_ms: s.itl_ms.unwrap_or(d.itl_ms),
        ttft_ms: s.ttft_ms.unwrap_or(d.ttft_ms),
        output_tokens: s.output_tokens.unwrap_or(d.output_tokens),
        rpm: s.rpm.or(d.rpm),
        tpm: s.tpm.or(d.tpm),
        fault_rate: s.fault_rate.unwrap_or(d.fault_rate),
        seed: s.seed.unwrap_or(d.seed),
        batch_turnaround_ms: s.batch_turnaround_ms.unwrap_or(d.batch_turnaround_ms),
        slots: s.slots.unwrap_or(d.slots),
        ..d
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn settings(endpoint: &str) -> JobSettings {
        JobSettings {
            input: Some("in.jsonl".into()),
            output: Some("out.parquet".into()),
            endpoint: Some(endpoint.into()),
            prompt: Some("{{text}}".into()),
            mode: Some(Mode::Batch),
            ..Default::default()
        }
    }

    #[test]
    fn batch_settings_are_checked() {
        let plan = Plan::from_settings(
            JobSettings {
                deadline: Some("1h30m".into()),
                poll_secs: Some(0.5),
                ..settings("http://localhost:1/v1")
            },
            false,
        )
        .unwrap();
        assert_eq!(plan.batch.deadline, Some(Duration::from_secs(5400)));
        assert_eq!(plan.batch.poll, Duration::from_millis(500));
        assert_eq!(plan.batch.max_requests, DEFAULT_BATCH_MAX_REQUESTS);
        let err = |s: JobSettings| Plan::from_settings(s, false).unwrap_err().to_string();
        let e = err(settings("databricks-claude-sonnet-4"));
        assert!(e.contains("no batch API") && e.contains("ai_query"), "{e}");
        let e = err(JobSettings {
            deadline: Some("soon".into()),
            ..settings("http://h/v1")
        });
        assert!(e.contains("--deadline"), "{e}");
        let e = err(JobSettings {
            mode: None,
            deadline: Some("2h".into()),
            ..settings("http://h/v1")
        });
        assert!(e.contains("only applies with --mode batch"), "{e}");
        let e = err(JobSettings {
            stream: true,
            ..settings("http://h/v1")
        });
        assert!(e.contains("--stream"), "{e}");
    }
}

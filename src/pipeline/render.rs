//! Render: input rows → request bodies.
//!
//! Templates are minijinja over the row's columns. Every variable a template
//! names is checked against the input schema once, before anything is sent
//! ([`Templates::bind`]); a row where a named column is null is not sent at
//! all (SQL null in, null out), and neither is a row whose prompt renders
//! empty or blank (unless `--send-empty`). Every filter and test a template
//! names is checked to exist before anything is sent, and the work one row's
//! rendering may do is bounded ([`RENDER_FUEL`]): a runaway loop fails its
//! row instead of hanging the job. Bodies are laid out static-first so provider
//! prompt caches hit: the system prompt, then the literal start of the user
//! template, then the row's values; the static prefix is hashed into a
//! [`Prefix`] that the scheduler groups rows by.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::ai::tokens;
use crate::error::{Error, Result};
use crate::job::plan::Plan;
use crate::pipeline::outcome::RowId;
pub use crate::provider::dialect::BodySpec;
use crate::provider::dialect::Dialect;
use crate::provider::wire::Task;

/// Prefixes shorter than this many tokens are not cached by providers
/// (OpenAI's and Anthropic's minimum), so they get no warm-up and no key.
pub const MIN_CACHEABLE_TOKENS: u64 = 1024;

/// Output tokens reserved for a request that sets no `max_tokens` and goes
/// to a provider that adds none ([`output_reserve`]), for token-per-minute
/// pacing and the dry run's "at most".
pub const DEFAULT_OUTPUT_RESERVE: u64 = 256;

/// Output tokens reserved for a request with these `params`: its own
/// `max_tokens`, else the cap the dialect sends in its place (Anthropic's
/// default), else [`DEFAULT_OUTPUT_RESERVE`].
pub fn output_reserve(dialect: Dialect, params: &Map<String, Value>) -> u64 {
    ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_u64))
        .or(dialect.default_max_tokens())
        .unwrap_or(DEFAULT_OUTPUT_RESERVE)
}

/// The work one row's templates may do, in minijinja fuel: one unit per
/// instruction, and one per 64 bytes of text made or read. A real prompt
/// uses thousands (a 1 MB document about 20,000). Using it all up took
/// 0.35 to 0.55 s of CPU per row in a debug build on this project's 2-core
/// machine (`aiq run --dry-run` over 5 rows whose template nests two
/// `range(100000)` loops; a release build is faster), so a runaway loop
/// fails its row within a second, and a stop (Ctrl-C, SIGTERM, a budget)
/// never waits on rendering longer than that.
pub const RENDER_FUEL: u64 = 20_000_000;

/// The static start shared by many rows' prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub key: u64,
    pub tokens: u64,
}

impl Prefix {
    pub fn cacheable(&self) -> bool {
        self.tokens >= MIN_CACHEABLE_TOKENS
    }
}

/// One rendered row, before it becomes a body.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRow {
    pub row: RowId,
    pub system: Option<String>,
    pub user: String,
    pub user2: Option<String>,
    /// Image URLs (data: or http(s)) to send after the user text, one per
    /// `--image` column, in the order the columns were given.
    pub images: Vec<String>,
}

/// The job's templates, compiled and bound to the input columns they use.
pub struct Templates {
    env: minijinja::Environment<'static>,
    has_system: bool,
    has_prompt2: bool,
    system_is_static: bool,
    /// The literal text the user template starts with (before any tag).
    user_literal_prefix: String,
    /// (variable, column index) for every column any template names.
    columns: Vec<(String, usize)>,
    /// (column, column index) of every `--image` column.
    images: Vec<(String, usize)>,
    /// `--send-empty`: send rows whose prompt renders empty or blank.
    send_empty: bool,
}

const SYSTEM: &str = "system";
const PROMPT: &str = "prompt";
const PROMPT2: &str = "prompt2";

impl Templates {
    /// The job's templates, checked against the input's `schema`: one place
    /// for runs, dry runs and `--explain`.
    pub fn for_plan(plan: &Plan, schema: &Schema) -> Result<Templates> {
        Ok(Templates::bind(
            plan.system.as_deref(),
            &plan.prompt,
            plan.prompt2.as_deref(),
            schema,
        )?
        .with_images(&plan.images, schema)?
        .with_send_empty(plan.send_empty))
    }

    /// Compile the templates and check every variable against `schema`.
    pub fn bind(
        system: Option<&str>,
        prompt: &str,
        prompt2: Option<&str>,
        schema: &Schema,
    ) -> Result<Templates> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // Prompts are plain text, never HTML: no escaping.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_fuel(Some(RENDER_FUEL));
        let mut columns: Vec<(String, usize)> = Vec::new();
        let mut system_is_static = true;
        for (name, source) in [(SYSTEM, system), (PROMPT, Some(prompt)), (PROMPT2, prompt2)] {
            let Some(source) = source else { continue };
            env.add_template_owned(name.to_string(), source.to_string())
                .map_err(|e| Error::Template(format!("--{name} template does not parse: {e}")))?;
            let template = env
                .get_template(name)
                .map_err(|e| Error::Template(format!("--{name} template: {e}")))?;
            check_filters_and_tests(&env, name, &template)?;
            // Nested names (`meta.title`) are checked through struct
            // fields, so a typo inside a struct is found before sending too.
            let mut vars: Vec<String> = template.undeclared_variables(true).into_iter().collect();
            vars.sort();
            for path in vars {
                let var = path.split('.').next().unwrap_or_default().to_string();
                if is_builtin_global(&var) {
                    continue;
                }
                let Some((index, field)) = schema.column_with_name(&var) else {
                    let available: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(Error::Template(format!(
                        "the --{name} template uses `{var}`, which is not a column of the input; \
                         input columns are: {}",
                        available.join(", ")
                    )));
                };
                check_nested(name, &path, field.data_type())?;
                if name == SYSTEM {
                    system_is_static = false;
                }
                if !columns.iter().any(|(v, _)| v == &var) {
                    columns.push((var, index));
                }
            }
        }
        Ok(Templates {
            env,
            has_system: system.is_some(),
            has_prompt2: prompt2.is_some(),
            system_is_static,
            user_literal_prefix: literal_prefix(prompt).to_string(),
            columns,
            images: Vec::new(),
            send_empty: false,
        })
    }

    /// `--send-empty`: rows whose prompt renders empty or blank are sent
    /// too (by default they are not, and say so in `error_message`).
    pub fn with_send_empty(mut self, send_empty: bool) -> Templates {
        self.send_empty = send_empty;
        self
    }

    /// Why `row` is not sent although it rendered: its prompt (or second
    /// text) is empty or blank and carries no image. `None`: send it.
    pub fn not_sent_because(&self, row: &RenderedRow) -> Option<String> {
        if self.send_empty || !row.images.is_empty() {
            return None;
        }
        let blank = |text: &str| text.trim().is_empty();
        let which = if blank(&row.user) {
            PROMPT
        } else if row.user2.as_deref().is_some_and(blank) {
            PROMPT2
        } else {
            return None;
        };
        Some(format!(
            "not sent: the --{which} template rendered an empty prompt for this row \
             (--send-empty sends such rows)"
        ))
    }

    /// Adds image columns (`--image`), checked against `schema` like
    /// template variables are: a missing column or one that cannot hold an
    /// image stops the job before anything is sent.
    pub fn with_images(mut self, columns: &[String], schema: &Schema) -> Result<Templates> {
        for name in columns {
            let Some((index, field)) = schema.column_with_name(name) else {
                let available: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(Error::Template(format!(
                    "--image `{name}` is not a column of the input; input columns are: {}",
                    available.join(", ")
                )));
            };
            if !crate::ai::image::is_image_type(field.data_type()) {
                return Err(Error::Template(format!(
                    "--image `{name}` is a {} column; images are binary (bytes) or string \
                     (base64, a data: URL or an http(s) URL) columns",
                    field.data_type()
                )));
            }
            if !self.images.iter().any(|(n, _)| n == name) {
                self.images.push((name.clone(), index));
            }
        }
        Ok(self)
    }

    /// The columns the templates read, in first-use order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(v, _)| v.as_str())
    }

    /// True when the system prompt differs per row, which defeats prefix
    /// caching (reported by `--explain`).
    pub fn system_is_per_row(&self) -> bool {
        self.has_system && !self.system_is_static
    }

    /// The system prompt when it is the same for every row (it names no
    /// column), as every row's request carries it.
    pub fn static_system(&self) -> Option<String> {
        if !self.has_system || !self.system_is_static {
            return None;
        }
        self.render(SYSTEM, &minijinja::Value::UNDEFINED).ok()
    }

    pub fn user_literal_prefix(&self) -> &str {
        &self.user_literal_prefix
    }

    /// Render every row of `batch`; `first_row` is the batch's first row id.
    /// A row whose named columns hold a null yields `Ok(None)`; a row the
    /// template fails on yields `Err((row, message))` for that row only.
    pub fn render_batch(
        &self,
        batch: &RecordBatch,
        first_row: RowId,
    ) -> Vec<std::result::Result<Option<RenderedRow>, (RowId, String)>> {
        self.render_until(batch, first_row, None)
    }

    /// [`Templates::render_batch`], giving up between rows once `stop` is
    /// set: the result then holds fewer rows than the batch.
    pub fn render_until(
        &self,
        batch: &RecordBatch,
        first_row: RowId,
        stop: Option<&AtomicBool>,
    ) -> Vec<std::result::Result<Option<RenderedRow>, (RowId, String)>> {
        let columns: Vec<(&str, &ArrayRef)> = self
            .columns
            .iter()
            .map(|(v, i)| (v.as_str(), batch.column(*i)))
            .collect();
        // Logical nulls: a column of Arrow's null type (JSONL or Parquet
        // column that is null on every row) has no null buffer, yet every
        // value in it is null.
        let nulls: Vec<Option<NullBuffer>> = columns
            .iter()
            .map(|(_, a)| a.logical_nulls())
            .chain(
                self.images
                    .iter()
                    .map(|(_, i)| batch.column(*i).logical_nulls()),
            )
            .collect();
        let formatters: Vec<Option<ArrayFormatter>> = columns
            .iter()
            .map(|(_, a)| {
                needs_formatter(a.data_type())
                    .then(|| ArrayFormatter::try_new(a.as_ref(), &FORMAT).ok())
                    .flatten()
            })
            .collect();
        let images: Vec<&ArrayRef> = self.images.iter().map(|(_, i)| batch.column(*i)).collect();
        (0..batch.num_rows())
            .take_while(|_| !stop.is_some_and(|s| s.load(Ordering::Relaxed)))
            .map(|i| {
                // A null image is a null input like a null variable: not sent.
                if nulls.iter().flatten().any(|n| n.is_null(i)) {
                    return Ok(None);
                }
                let mut ctx = BTreeMap::new();
                for ((var, array), formatter) in columns.iter().zip(&formatters) {
                    ctx.insert(*var, cell_value(array, formatter.as_ref(), i));
                }
                let ctx = minijinja::Value::from(ctx);
                let row = first_row + i as u64;
                let rendered = || -> std::result::Result<RenderedRow, String> {
                    let system = self
                        .has_system
                        .then(|| self.render(SYSTEM, &ctx))
                        .transpose()?;
                    let user = self.render(PROMPT, &ctx)?;
                    let user2 = self
                        .has_prompt2
                        .then(|| self.render(PROMPT2, &ctx))
                        .transpose()?;
                    let images = self
                        .images
                        .iter()
                        .zip(&images)
                        .map(|((name, _), a)| {
                            crate::ai::image::cell_url(a, i)
                                .map_err(|e| format!("--image `{name}`: {e}"))
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Ok(RenderedRow {
                        row,
                        system,
                        user,
                        user2,
                        images,
                    })
                };
                rendered().map(Some).map_err(|e| (row, e))
            })
            .collect()
    }

    fn render(&self, name: &str, ctx: &minijinja::Value) -> std::result::Result<String, String> {
        let template = self.env.get_template(name).map_err(|e| e.to_string())?;
        template.render(ctx).map_err(|e| match e.kind() {
            minijinja::ErrorKind::OutOfFuel => format!(
                "--{name} template did too much work on this row (more than {RENDER_FUEL} steps \
                 of minijinja fuel: a runaway loop?); the row was not sent"
            ),
            _ => format!("--{name} template failed on this row: {e}"),
        })
    }
}

/// Every filter and test `template` names exists in `env`, on every
/// branch, taken by any row or not: a misspelt filter would otherwise fail
/// every row only once rows are being sent. (minijinja looks filters and
/// tests up by name while rendering; their names are in the compiled
/// instructions.)
fn check_filters_and_tests(
    env: &minijinja::Environment<'static>,
    name: &str,
    template: &minijinja::Template<'_, '_>,
) -> Result<()> {
    use minijinja::machinery::{get_compiled_template, Instruction, Instructions};
    let compiled = get_compiled_template(template);
    let mut filters = BTreeSet::new();
    let mut tests = BTreeSet::new();
    let all: Vec<&Instructions> = std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .collect();
    for instructions in all {
        for instruction in (0..).map_while(|i| instructions.get(i)) {
            match instruction {
                Instruction::ApplyFilter(filter, ..) => filters.insert(*filter),
                Instruction::PerformTest(test, ..) => tests.insert(*test),
                _ => false,
            };
        }
    }
    // Whether a name is known is what evaluating it on `none` says (the
    // environment's tables are not public).
    let unknown = |expr: String, kind: minijinja::ErrorKind| {
        env.compile_expression_owned(expr)
            .and_then(|e| e.eval(()))
            .is_err_and(|e| e.kind() == kind)
    };
    for filter in filters {
        if unknown(
            format!("none | {filter}"),
            minijinja::ErrorKind::UnknownFilter,
        ) {
            return Err(Error::Template(format!(
                "the --{name} template uses the filter `{filter}`, which minijinja does not \
                 have; its filters are listed at https://docs.rs/minijinja/latest/minijinja/filters/"
            )));
        }
    }
    for test in tests {
        if unknown(format!("none is {test}"), minijinja::ErrorKind::UnknownTest) {
            return Err(Error::Template(format!(
                "the --{name} template uses the test `{test}`, which minijinja does not have; \
                 its tests are listed at https://docs.rs/minijinja/latest/minijinja/tests/"
            )));
        }
    }
    Ok(())
}

const FORMAT: FormatOptions<'static> = FormatOptions::new();

fn is_builtin_global(name: &str) -> bool {
    matches!(
        name,
        "range" | "dict" | "namespace" | "debug" | "loop" | "self"
    )
}

/// The text before the first template tag: identical for every row.
fn literal_prefix(source: &str) -> &str {
    let end = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|t| source.find(t))
        .min()
        .unwrap_or(source.len());
    &source[..end]
}

/// Checks the struct fields a dotted template name (`meta.title`) walks
/// through. Checking stops at anything that is not a struct: a map's keys
/// and a list's items are only known per row.
fn check_nested(template: &str, path: &str, data_type: &DataType) -> Result<()> {
    let mut data_type = data_type;
    let mut walked = path.split('.').next().unwrap_or_default().to_string();
    for part in path.split('.').skip(1) {
        if !is_nested(data_type) && data_type != &DataType::Null {
            // A string, number, date...: no fields, on any row.
            return Err(Error::Template(format!(
                "the --{template} template uses `{walked}.{part}`, but `{walked}` holds \
                 {data_type} values, which have no fields"
            )));
        }
        let DataType::Struct(fields) = data_type else {
            return Ok(());
        };
        let Some(field) = fields.iter().find(|f| f.name() == part) else {
            let available: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
            return Err(Error::Template(format!(
                "the --{template} template uses `{walked}.{part}`, but `{walked}` has no field \
                 `{part}`; its fields are: {}",
                available.join(", ")
            )));
        };
        walked = format!("{walked}.{part}");
        data_type = field.data_type();
    }
    Ok(())
}

fn needs_formatter(dt: &DataType) -> bool {
    !is_nested(dt)
        && !matches!(
            dt,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
                | DataType::Float32
                | DataType::Float64
        )
}

fn is_nested(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::Map(..)
    )
}

/// One cell as a template value: strings, numbers and booleans natively;
/// structs, lists and maps as template maps and lists (so `{{ meta.title }}`,
/// `{% for t in meta.tags %}` and `{{ meta | tojson }}` work); everything
/// else (decimals, dates, timestamps, ...) in Arrow's exact display text.
fn cell_value(array: &ArrayRef, formatter: Option<&ArrayFormatter>, i: usize) -> minijinja::Value {
    if is_nested(array.data_type()) {
        return nested_value(array.as_ref(), i);
    }
    scalar_value(array.as_ref(), formatter, i)
}

fn scalar_value(
    array: &dyn Array,
    formatter: Option<&ArrayFormatter>,
    i: usize,
) -> minijinja::Value {
    use arrow::datatypes::*;
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).into(),
        DataType::Utf8View => array.as_string_view().value(i).into(),
        DataType::Boolean => array.as_boolean().value(i).into(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => array.as_primitive::<Float32Type>().value(i).into(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(i).into(),
        _ => match formatter {
            Some(f) => f.value(i).to_string().into(),
            None => minijinja::Value::from(()),
        },
    }
}

/// A value inside (or being) a struct, list or map column, recursively; a
/// null is `none`.
fn nested_value(array: &dyn Array, i: usize) -> minijinja::Value {
    use minijinja::Value;
    if array.is_null(i) || array.data_type() == &DataType::Null {
        return Value::from(());
    }
    let items = |values: ArrayRef| -> Value {
        Value::from(
            (0..values.len())
                .map(|j| nested_value(values.as_ref(), j))
                .collect::<Vec<_>>(),
        )
    };
    match array.data_type() {
        DataType::Struct(_) => {
            let s = array.as_struct();
            let fields = s
                .fields()
                .iter()
                .zip(s.columns())
                .map(|(f, c)| (f.name().clone(), nested_value(c.as_ref(), i)))
                .collect();
            Value::from_object(Fields(fields))
        }
        DataType::List(_) => items(array.as_list::<i32>().value(i)),
        DataType::LargeList(_) => items(array.as_list::<i64>().value(i)),
        DataType::FixedSizeList(..) => items(array.as_fixed_size_list().value(i)),
        DataType::Map(..) => {
            let entries = array.as_map().value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let fields = (0..entries.len())
                .map(|j| {
                    let key = nested_value(keys.as_ref(), j);
                    let key = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                    (key, nested_value(values.as_ref(), j))
                })
                .collect();
            Value::from_object(Fields(fields))
        }
        dt if needs_formatter(dt) => {
            // Rare inside nested columns (decimals, timestamps): a formatter
            // per value is fine.
            let formatter = ArrayFormatter::try_new(array, &FORMAT).ok();
            scalar_value(array, formatter.as_ref(), i)
        }
        _ => scalar_value(array, None, i),
    }
}

/// A struct (or map) value in a template: its fields in column order, so
/// `tojson` writes them as the data has them (a plain map would sort them).
#[derive(Debug)]
struct Fields(Vec<(String, minijinja::Value)>);

impl minijinja::value::Object for Fields {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Values(
            self.0
                .iter()
                .map(|(k, _)| minijinja::Value::from(k.as_str()))
                .collect(),
        )
    }
}

/// A request ready to send: the rows it answers and its body.
#[derive(Debug, Clone)]
pub struct Call {
    pub rows: Vec<RowId>,
    pub body: Bytes,
    pub prefix: Option<Prefix>,
    /// Estimated tokens the request will be charged (prompt + output reserve).
    pub est_tokens: u64,
    pub est_prompt_tokens: u64,
    /// The API the body is for, when the call names its own (OpenAI Batch
    /// lines); `None`: the job's task.
    pub route: Option<Task>,
}

/// Builds request bodies from rendered rows.
pub struct BodyBuilder {
    spec: BodySpec,
    user_literal_prefix: String,
    output_reserve: u64,
}

impl BodyBuilder {
    pub fn new(spec: BodySpec, templates: &Templates) -> BodyBuilder {
        BodyBuilder {
            user_literal_prefix: templates.user_literal_prefix().to_string(),
            ..BodyBuilder::literal(spec)
        }
    }

    /// A builder for prompts given as finished text rather than templates
    /// (`aiq sql` renders its prompts in SQL): no literal prefix to split off.
    pub fn literal(spec: BodySpec) -> BodyBuilder {
        let output_reserve = output_reserve(spec.dialect, &spec.params);
        BodyBuilder {
            spec,
            user_literal_prefix: String::new(),
            output_reserve,
        }
    }

    pub fn spec(&self) -> &BodySpec {
        &self.spec
    }

    /// The static prefix of a rendered row: its system prompt, then the
    /// literal start of the user template.
    pub fn prefix_of(&self, row: &RenderedRow) -> Prefix {
        let system = row.system.as_deref().unwrap_or("");
        let user_static = row
            .user
            .strip_prefix(&self.user_literal_prefix)
            .map_or("", |_| self.user_literal_prefix.as_str());
        let mut hasher = blake3::Hasher::new();
        hasher.update(system.as_bytes());
        hasher.update(&[0]);
        hasher.update(user_static.as_bytes());
        let hash = hasher.finalize();
        let mut key = [0u8; 8];
        key.copy_from_slice(&hash.as_bytes()[..8]);
        Prefix {
            key: u64::from_le_bytes(key),
            tokens: tokens::estimate(system) + tokens::estimate(user_static),
        }
    }

    /// One call for one row (chat or completions), or for an embedding of
    /// one text.
    pub fn single(&self, row: &RenderedRow) -> Call {
        let prefix = self.prefix_of(row);
        let body = match self.spec.task {
            Task::Chat => self.chat_body(row, &prefix),
            Task::Completions => self.completion_body(row),
            Task::Embeddings => self.embedding_body(vec![Value::String(row.user.clone())]),
        };
        let est_prompt_tokens = row.system.as_deref().map_or(0, tokens::estimate)
            + tokens::estimate(&row.user)
            + row.images.len() as u64 * crate::ai::image::IMAGE_TOKEN_ESTIMATE;
        let est_tokens = est_prompt_tokens
            + if self.spec.task == Task::Embeddings {
                0
            } else {
                self.output_reserve
            };
        Call {
            rows: vec![row.row],
            body: to_bytes(&body),
            prefix: Some(prefix),
            est_tokens,
            est_prompt_tokens,
            route: None,
        }
    }

    /// One embeddings call for several rows (`--batch-size`); `texts` are
    /// (row, text) pairs, answered in order.
    pub fn embeddings(&self, texts: &[(RowId, &str)]) -> Call {
        let input = texts
            .iter()
            .map(|(_, t)| Value::String((*t).to_string()))
            .collect();
        let est: u64 = texts.iter().map(|(_, t)| tokens::estimate(t)).sum();
        Call {
            rows: texts.iter().map(|(r, _)| *r).collect(),
            body: to_bytes(&self.embedding_body(input)),
            prefix: None,
            est_tokens: est,
            est_prompt_tokens: est,
            route: None,
        }
    }

    /// ai_similarity: one call embedding a row's two texts.
    pub fn pair(&self, row: RowId, a: &str, b: &str) -> Call {
        let est = tokens::estimate(a) + tokens::estimate(b);
        let input = vec![Value::String(a.to_string()), Value::String(b.to_string())];
        Call {
            rows: vec![row],
            body: to_bytes(&self.embedding_body(input)),
            prefix: None,
            est_tokens: est,
            est_prompt_tokens: est,
            route: None,
        }
    }

    /// OpenAI Batch input: one call per row whose `body` column (JSON text)
    /// is sent as is to the route its `url` column names. Only `model` (for
    /// OpenAI-compatible endpoints) and `--param`s the body lacks are
    /// added; a body's own values always win.
    pub fn passthrough_batch(
        &self,
        batch: &RecordBatch,
        first_row: RowId,
    ) -> Vec<std::result::Result<Option<Call>, (RowId, String)>> {
        use crate::pipeline::openai_batch::{route, BODY, URL};
        let column = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (Some(urls), Some(bodies)) = (column(URL), column(BODY)) else {
            let message = format!("OpenAI Batch rows need string columns `{URL}` and `{BODY}`");
            return (0..batch.num_rows())
                .map(|i| Err((first_row + i as u64, message.clone())))
                .collect();
        };
        (0..batch.num_rows())
            .map(|i| {
                let row = first_row + i as u64;
                if urls.is_null(i) || bodies.is_null(i) {
                    return Ok(None);
                }
                let url = urls.value(i);
                let task = route(url)
                    .ok_or_else(|| (row, format!("url {url:?} is not a supported route")))?;
                self.passthrough(row, task, bodies.value(i))
                    .map(Some)
                    .map_err(|e| (row, e))
            })
            .collect()
    }

    fn passthrough(&self, row: RowId, task: Task, body: &str) -> std::result::Result<Call, String> {
        let mut body: Map<String, Value> =
            serde_json::from_str(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
        // A streamed reply would not be one JSON body to keep; the Batch
        // API refuses streaming for the same reason.
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err("body asks for \"stream\": true, which batch requests cannot do".into());
        }
        if let Some(model) = &self.spec.model {
            body.entry("model")
                .or_insert_with(|| Value::String(model.clone()));
        }
        for (k, v) in &self.spec.params {
            body.entry(k.as_str()).or_insert_with(|| v.clone());
        }
        let reserve = match task {
            Task::Embeddings => 0,
            _ => output_reserve(self.spec.dialect, &body),
        };
        let bytes = to_bytes(&Value::Object(body));
        // Estimated from the whole body: good enough for pacing, and the
        // same for every API shape.
        let est_prompt_tokens = tokens::estimate(&String::from_utf8_lossy(&bytes));
        Ok(Call {
            rows: vec![row],
            body: bytes,
            prefix: None,
            est_tokens: est_prompt_tokens + reserve,
            est_prompt_tokens,
            route: Some(task),
        })
    }

    fn base(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some(model) = &self.spec.model {
            body.insert("model".into(), Value::String(model.clone()));
        }
        body
    }

    fn chat_body(&self, row: &RenderedRow, prefix: &Prefix) -> Value {
        let mut messages = Vec::with_capacity(2);
        let split_user = self.spec.cache_control
            && !self.user_literal_prefix.is_empty()
            && row.user.starts_with(&self.user_literal_prefix);
        if let Some(system) = &row.system {
            let content = if self.spec.cache_control && !split_user {
                json!([{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}])
            } else {
                Value::String(system.clone())
            };
            messages.push(json!({"role": "system", "content": content}));
        }
        let mut user = if split_user {
            let rest = &row.user[self.user_literal_prefix.len()..];
            json!([
                {"type": "text", "text": self.user_literal_prefix, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": rest}
            ])
        } else {
            Value::String(row.user.clone())
        };
        if !row.images.is_empty() {
            // Images need the list form of content; they follow the text, so
            // the static text start stays first for prefix caching.
            let mut parts = match user {
                Value::Array(parts) => parts,
                text => vec![json!({"type": "text", "text": text})],
            };
            parts.extend(
                row.images
                    .iter()
                    .map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
            );
            user = Value::Array(parts);
        }
        messages.push(json!({"role": "user", "content": user}));
        let mut body = self.base();
        body.insert("messages".into(), Value::Array(messages));
        self.finish(&mut body);
        if let Some(rf) = &self.spec.response_format {
            body.insert("response_format".into(), rf.clone());
        }
        if self.spec.prompt_cache_key && prefix.cacheable() {
            body.insert(
                "prompt_cache_key".into(),
                Value::String(format!("aiq-{:016x}", prefix.key)),
            );
        }
        Value::Object(self.spec.dialect.request(body))
    }

    fn completion_body(&self, row: &RenderedRow) -> Value {
        let prompt = match &row.system {
            Some(system) => format!("{system}\n\n{}", row.user),
            None => row.user.clone(),
        };
        let mut body = self.base();
        body.insert("prompt".into(), Value::String(prompt));
        self.finish(&mut body);
        Value::Object(body)
    }

    fn embedding_body(&self, input: Vec<Value>) -> Value {
        let mut body = self.base();
        let input = if input.len() == 1 {
            input.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(input)
        };
        body.insert("input".into(), input);
        for (k, v) in &self.spec.params {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(self.spec.dialect.embedding_request(body))
    }

    /// Parameters and streaming flags shared by chat and completions.
    fn finish(&self, body: &mut Map<String, Value>) {
        for (k, v) in &self.spec.params {
            body.insert(k.clone(), v.clone());
        }
        if self.spec.stream {
            body.insert("stream".into(), Value::Bool(true));
            if self.spec.stream_usage_option {
                body.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
    }
}

fn to_bytes(v: &Value) -> Bytes {
    // Serialising a Value cannot fail: its keys are strings and it holds no
    // non-finite floats (serde_json refuses to build those).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Shared handle used by the scheduler.
pub type SharedBuilder = Arc<BodyBuilder>;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("good"), None, Some("bad <b>")])),
            ],
        )
        .unwrap()
    }

    fn spec() -> BodySpec {
        BodySpec {
            dialect: crate::provider::dialect::Dialect::OpenAi,
            task: Task::Chat,
            model: None,
            params: Map::new(),
            response_format: None,
            cache_control: false,
            prompt_cache_key: true,
            stream: false,
            stream_usage_option: false,
        }
    }

    #[test]
    fn output_reserve_is_the_max_tokens_the_request_carries() {
        let row = RenderedRow {
            row: 0,
            system: None,
            user: "hi".into(),
            user2: None,
            images: Vec::new(),
        };
        let reserve = |spec: BodySpec| {
            let call = BodyBuilder::literal(spec).single(&row);
            call.est_tokens - call.est_prompt_tokens
        };
        assert_eq!(reserve(spec()), DEFAULT_OUTPUT_RESERVE);
        // Anthropic requests carry max_tokens 4096 when the job sets none:
        // the limiter and the dry run reserve the same.
        let anthropic = BodySpec {
            dialect: Dialect::Anthropic,
            ..spec()
        };
        assert_eq!(
            reserve(anthropic.clone()),
            crate::provider::anthropic::DEFAULT_MAX_TOKENS
        );
        let mut params = Map::new();
        params.insert("max_tokens".into(), json!(100));
        assert_eq!(
            reserve(BodySpec {
                params,
                ..anthropic
            }),
            100
        );
    }

    #[test]
    fn renders_rows_and_skips_nulls() {
        let b = batch();
        let t = Templates::bind(
            Some("Be terse."),
            "Review {{id}}: {{text}}",
            None,
            &b.schema(),
        )
        .unwrap();
        let rows = t.render_batch(&b, 10);
        let first = rows[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(first.row, 10);
        assert_eq!(first.user, "Review 1: good");
        assert_eq!(first.system.as_deref(), Some("Be terse."));
        assert!(rows[1].as_ref().unwrap().is_none(), "null text → not sent");
        // No HTML escaping in prompts.
        assert_eq!(
            rows[2].as_ref().unwrap().as_ref().unwrap().user,
            "Review 3: bad <b>"
        );
    }

    #[test]
    fn unknown_column_is_named() {
        let b = batch();
        let err = Templates::bind(None, "{{ txt }}", None, &b.schema())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("`txt`") && msg.contains("id, text"), "{msg}");
        assert_eq!(err.exit_code(), 2);
        assert!(Templates::bind(None, "{{ broken", None, &b.schema()).is_err());
    }

    #[test]
    fn a_column_of_the_null_type_is_null_on_every_row() {
        use arrow::array::NullArray;
        let schema = Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, false),
            Field::new("note", DataType::Null, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(NullArray::new(2)),
            ],
        )
        .unwrap();
        let t = Templates::bind(None, "{{text}} {{note}}", None, &schema).unwrap();
        let rows = t.render_batch(&b, 0);
        assert!(rows.iter().all(|r| matches!(r, Ok(None))), "{rows:?}");
    }

    #[test]
    fn unknown_filters_tests_and_fields_of_plain_values_are_found_at_bind() {
        let b = batch();
        for (prompt, named) in [
            ("{{ text | upperr }}", "`upperr`"),
            ("{% if false %}{{ text | nope }}{% endif %}", "`nope`"),
            (
                "{% macro m(x) %}{{ x | nope }}{% endmacro %}{{ m(text) }}",
                "`nope`",
            ),
            ("{% if text is stringg %}x{% endif %}", "`stringg`"),
            ("{{ text.foo }}", "`text.foo`"),
            ("{{ id.real }}", "`id.real`"),
        ] {
            let err = Templates::bind(None, prompt, None, &b.schema())
                .err()
                .unwrap_or_else(|| panic!("{prompt} binds"));
            assert!(err.to_string().contains(named), "{prompt}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        for good in [
            "{{ text | upper | trim }}",
            "{% if text is string and id is number %}{{ text | default('') }}{% endif %}",
            "{% filter upper %}{{ text }}{% endfilter %}",
        ] {
            Templates::bind(None, good, None, &b.schema()).unwrap();
        }
    }

    #[test]
    fn a_runaway_template_fails_its_row_only() {
        let b = batch();
        let t = Templates::bind(
            None,
            "{% if id == 1 %}{% for i in range(100000) %}{% for j in range(100000) %}x\
             {% endfor %}{% endfor %}{% endif %}{{ id }}",
            None,
            &b.schema(),
        )
        .unwrap();
        let rows = t.render_batch(&b, 0);
        let (row, message) = rows[0].as_ref().err().unwrap();
        assert_eq!(*row, 0);
        assert!(message.contains("too much work"), "{message}");
        assert_eq!(rows[1].as_ref().unwrap().as_ref().unwrap().user, "2");
        assert_eq!(rows[2].as_ref().unwrap().as_ref().unwrap().user, "3");
    }

    #[test]
    fn blank_prompts_are_not_sent_unless_asked() {
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["x", "", " \n\t"]))],
        )
        .unwrap();
        let t = Templates::bind(None, "{{text}}", None, &schema).unwrap();
        let reasons: Vec<Option<String>> = t
            .render_batch(&b, 0)
            .iter()
            .map(|r| t.not_sent_because(r.as_ref().unwrap().as_ref().unwrap()))
            .collect();
        assert!(reasons[0].is_none());
        assert!(reasons[1].as_deref().unwrap().contains("--send-empty"));
        assert!(reasons[2].is_some());
        let t = t.with_send_empty(true);
        for r in t.render_batch(&b, 0) {
            assert!(t
                .not_sent_because(r.as_ref().unwrap().as_ref().unwrap())
                .is_none());
        }
    }

    #[test]
    fn static_prefix_is_shared_and_hashed() {
        let b = batch();
        let t = Templates::bind(Some("sys"), "Classify this: {{text}}", None, &b.schema()).unwrap();
        let builder = BodyBuilder::new(spec(), &t);
        let rows = t.render_batch(&b, 0);
        let r0 = rows[0].as_ref().unwrap().as_ref().unwrap();
        let r2 = rows[2].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(builder.prefix_of(r0), builder.prefix_of(r2));
        assert!(!t.system_is_per_row());
        let per_row = Templates::bind(Some("{{text}}"), "x", None, &b.schema()).unwrap();
        assert!(per_row.system_is_per_row());
    }

    #[test]
    fn cache_control_marks_last_static_block() {
        let b = batch();
        let t = Templates::bind(Some("sys"), "Classify this: {{text}}", None, &b.schema()).unwrap();
        let builder = BodyBuilder::new(
            BodySpec {
                cache_control: true,
                ..spec()
            },
            &t,
        );
        let rows = t.render_batch(&b, 0);
        let call = builder.single(rows[0].as_ref().unwrap().as_ref().unwrap());
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body["messages"][0]["content"], json!("sys"));
        let user = &body["messages"][1]["content"];
        assert_eq!(user[0]["text"], json!("Classify this: "));
        assert_eq!(user[0]["cache_control"]["type"], json!("ephemeral"));
        assert_eq!(user[1]["text"], json!("good"));
    }

    #[test]
    fn typed_params_and_response_format_reach_the_body() {
        // `--param` values as the command line parses them, into every kind of body.
        let params: Map<String, Value> = [
            "stop=a,b",
            "temperature=0.5",
            "max_tokens=12",
            "seed=7",
            "logprobs=true",
            "user=me",
        ]
        .iter()
        .map(|p| crate::job::settings::parse_param(p).unwrap())
        .collect();
        let rf = crate::ai::types::SqlType::Int.response_format();
        let b = batch();
        let t = Templates::bind(None, "{{text}}", None, &b.schema()).unwrap();
        let rows = t.render_batch(&b, 0);
        let row = rows[0].as_ref().unwrap().as_ref().unwrap();
        for task in [Task::Chat, Task::Completions, Task::Embeddings] {
            let builder = BodyBuilder::new(
                BodySpec {
                    task,
                    params: params.clone(),
                    response_format: Some(rf.clone()),
                    model: Some("m".into()),
                    ..spec()
                },
                &t,
            );
            let call = builder.single(row);
            let body: Value = serde_json::from_slice(&call.body).unwrap();
            assert_eq!(body["stop"], json!(["a", "b"]), "{task:?}");
            assert_eq!(body["temperature"], json!(0.5));
            assert!(body["temperature"].is_f64());
            assert_eq!(body["max_tokens"], json!(12));
            assert_eq!(body["seed"], json!(7));
            assert_eq!(body["logprobs"], json!(true));
            assert_eq!(body["user"], json!("me"));
            assert_eq!(body["model"], json!("m"));
            // Structured output only where the API has it.
            assert_eq!(
                body.get("response_format"),
                (task == Task::Chat).then_some(&rf),
                "{task:?}"
            );
            if task != Task::Embeddings {
                assert_eq!(
                    call.est_tokens,
                    call.est_prompt_tokens + 12,
                    "max_tokens is the output reserve"
                );
            }
        }
    }

    #[test]
    fn images_become_image_url_parts_and_null_images_are_not_sent() {
        use arrow::array::BinaryArray;
        let png: &[u8] = b"\x89PNG\r\n\x1a\nrest";
        let schema = Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, false),
            Field::new("img", DataType::Binary, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(BinaryArray::from(vec![
                    Some(png),
                    None,
                    Some(b"nope".as_slice()),
                ])),
            ],
        )
        .unwrap();
        let t = Templates::bind(None, "Describe: {{text}}", None, &schema)
            .unwrap()
            .with_images(&["img".into()], &schema)
            .unwrap();
        let rows = t.render_batch(&b, 0);
        let row = rows[0].as_ref().unwrap().as_ref().unwrap();
        assert!(row.images[0].starts_with("data:image/png;base64,"));
        assert!(rows[1].as_ref().unwrap().is_none(), "null image: not sent");
        assert!(rows[2]
            .as_ref()
            .unwrap_err()
            .1
            .contains("--image `img`: not a PNG"));
        let builder = BodyBuilder::new(spec(), &t);
        let call = builder.single(row);
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(
            body["messages"][0]["content"],
            json!([{"type": "text", "text": "Describe: a"}, {"type": "image_url", "image_url": {"url": row.images[0]}}])
        );
        assert!(call.est_prompt_tokens >= crate::ai::image::IMAGE_TOKEN_ESTIMATE);
        assert!(Templates::bind(None, "{{text}}", None, &schema)
            .unwrap()
            .with_images(&["text2".into()], &schema)
            .is_err());
        let ints = Schema::new(vec![Field::new("n", DataType::Int64, false)]);
        let err = Templates::bind(None, "x", None, &ints)
            .unwrap()
            .with_images(&["n".into()], &ints)
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn passthrough_sends_the_body_as_is_plus_missing_model_and_params() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("url", DataType::Utf8, false),
            Field::new("body", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    "/v1/chat/completions",
                    "/v1/embeddings",
                    "/v1/chat/completions",
                    "/v1/x",
                ])),
                Arc::new(StringArray::from(vec![
                    Some(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":7}"#),
                    Some(r#"{"model":"own","input":"x"}"#),
                    Some(r#"{"messages":[],"stream":true}"#),
                    Some("{}"),
                ])),
            ],
        )
        .unwrap();
        let t = Templates::bind(None, "{{body}}", None, &schema).unwrap();
        let mut params = Map::new();
        params.insert("max_tokens".into(), json!(100));
        params.insert("temperature".into(), json!(0));
        let builder = BodyBuilder::new(
            BodySpec {
                model: Some("m".into()),
                params,
                ..spec()
            },
            &t,
        );
        let calls = builder.passthrough_batch(&b, 5);
        let chat = calls[0].as_ref().unwrap().as_ref().unwrap();
        let body: Value = serde_json::from_slice(&chat.body).unwrap();
        assert_eq!(body["model"], json!("m"));
        assert_eq!(body["max_tokens"], json!(7), "the body's own value wins");
        assert_eq!(body["temperature"], json!(0));
        assert_eq!((chat.rows.clone(), chat.route), (vec![5], Some(Task::Chat)));
        let emb = calls[1].as_ref().unwrap().as_ref().unwrap();
        let body: Value = serde_json::from_slice(&emb.body).unwrap();
        assert_eq!(
            (body["model"].clone(), emb.route),
            (json!("own"), Some(Task::Embeddings))
        );
        assert!(calls[2].as_ref().unwrap_err().1.contains("stream"));
        assert_eq!(calls[3].as_ref().unwrap_err().0, 8);
    }

    #[test]
    fn prompt_cache_key_only_for_cacheable_prefixes() {
        let b = batch();
        let long = "x".repeat(5000);
        let t = Templates::bind(Some(&long), "{{text}}", None, &b.schema()).unwrap();
        let builder = BodyBuilder::new(spec(), &t);
        let rows = t.render_batch(&b, 0);
        let body: Value = serde_json::from_slice(
            &builder
                .single(rows[0].as_ref().unwrap().as_ref().unwrap())
                .body,
        )
        .unwrap();
        assert!(body["prompt_cache_key"]
            .as_str()
            .unwrap()
            .starts_with("aiq-"));
        let short = Templates::bind(Some("short"), "{{text}}", None, &b.schema()).unwrap();
        let builder = BodyBuilder::new(spec(), &short);
        let rows = short.render_batch(&b, 0);
        let body: Value = serde_json::from_slice(
            &builder
                .single(rows[0].as_ref().unwrap().as_ref().unwrap())
                .body,
        )
        .unwrap();
        assert!(body.get("prompt_cache_key").is_none());
    }
}

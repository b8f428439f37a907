//! The AI aggregates, `ai_agg(content, instruction)` and
//! `ai_summarize_agg(content)`: one answer per group, map-reduced over the
//! model's context ([`crate::ai::aggregate`]).
//!
//! DataFusion's aggregate UDFs are synchronous (an `Accumulator` must
//! return its value from `evaluate`), while every AI call is async. Rather
//! than block a runtime thread inside `evaluate` (which needs a
//! multi-thread runtime and stalls one of its workers per group, and would
//! not work under a current-thread runtime such as an embedding host may
//! use), [`super::rewrite`] turns `ai_agg(x, i)` into `ai_agg(array_agg(x), i)`:
//! DataFusion's own `array_agg` collects each group's values, and `ai_agg`
//! itself is an async scalar UDF over the collected list, run by
//! DataFusion's `AsyncFuncExec` like the row functions. Groups of one
//! batch are answered concurrently, under the query's one limiter.
//!
//! Values are sorted before chunking: SQL gives no order inside a group
//! (and DataFusion's partitions interleave them differently from run to
//! run), while a resumed query must send the same requests to find them in
//! the journal.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde_json::{json, Value};

use super::calls::{Answer, DryCount, Engine, Prepared};
use super::catalog::{err, identified_by_name, label, string, sync_call_refused, AGG_FUNCTIONS};
use crate::ai::aggregate::{self, Budget, SUMMARIZE_INSTRUCTION};
use crate::error::Error;
use crate::job::settings::JobSettings;
use crate::provider::retry::is_context_overflow;

/// Every AI aggregate, bound to the query's engine.
pub fn all(engine: &Arc<Engine>, default_endpoint: Option<&str>) -> Vec<ScalarUDF> {
    AGG_FUNCTIONS
        .iter()
        .map(|name| {
            let udf = AggUdf {
                name,
                signature: Signature::variadic_any(Volatility::Volatile),
                engine: engine.clone(),
                default_endpoint: default_endpoint.map(str::to_string),
            };
            AsyncScalarUDF::new(Arc::new(udf)).into_scalar_udf()
        })
        .collect()
}

pub struct AggUdf {
    name: &'static str,
    signature: Signature,
    engine: Arc<Engine>,
    default_endpoint: Option<String>,
}

identified_by_name!(AggUdf);

impl ScalarUDFImpl for AggUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::common::Result<ColumnarValue> {
        Err(sync_call_refused(self.name))
    }
}

/// The two call sites of one aggregate: over values, over partial answers.
struct Sites {
    map: Arc<Prepared>,
    reduce: Arc<Prepared>,
}

impl AggUdf {
    fn instruction(&self, args: &[ColumnarValue]) -> Result<String, Error> {
        let name = self.name;
        if name == "ai_summarize_agg" {
            return match args.len() {
                1 => Ok(SUMMARIZE_INSTRUCTION.to_string()),
                _ => Err(Error::Config("ai_summarize_agg takes (content)".into())),
            };
        }
        match args {
            [_, ColumnarValue::Scalar(v)] => string(v).ok_or_else(|| {
                Error::Config(format!("{name}: `instruction` must be a string, got {v}"))
            }),
            [_, _] => Err(Error::Config(format!(
                "{name}: `instruction` must be a literal"
            ))),
            _ => Err(Error::Config(format!(
                "{name} takes (content, instruction)"
            ))),
        }
    }

    fn settings(&self, endpoint: &str, system: String, budget: &Budget) -> JobSettings {
        JobSettings {
            endpoint: Some(endpoint.to_string()),
            system: Some(system),
            params: vec![("max_tokens".into(), json!(budget.answer_tokens))],
            ..Default::default()
        }
    }

    async fn sites(&self, budget: &Budget) -> Result<Sites, Error> {
        let name = self.name;
        let endpoint = self.default_endpoint.as_deref().ok_or_else(|| {
            Error::Config(format!(
                "{name} needs an endpoint to call: give --endpoint NAME|URL|simulator"
            ))
        })?;
        let key = |step: &str| {
            format!(
                "{name}|{step}|{endpoint}|{}|{}",
                budget.context_tokens, budget.instruction
            )
        };
        let map = self
            .engine
            .prepare(
                &key("map"),
                self.settings(endpoint, budget.map_prompt(), budget),
            )
            .await?;
        let reduce = self
            .engine
            .prepare(
                &key("reduce"),
                self.settings(endpoint, budget.reduce_prompt(), budget),
            )
            .await?;
        Ok(Sites { map, reduce })
    }

    /// One group's answer: its values chunked and answered, the answers
    /// combined the same way until one is left.
    async fn combine(
        &self,
        sites: &Sites,
        budget: &Budget,
        values: Vec<String>,
    ) -> Result<Option<String>, Error> {
        if values.is_empty() {
            return Ok(None);
        }
        let mut texts = values;
        let mut first = true;
        loop {
            let (site, room) = if first {
                (&sites.map, budget.values_tokens(false))
            } else {
                (&sites.reduce, budget.values_tokens(true))
            };
            let partials = self
                .answer_chunks(site, aggregate::chunks(&texts, room))
                .await?;
            if partials.len() == 1 {
                return Ok(partials.into_iter().next());
            }
            if !first && partials.len() >= texts.len() {
                return Err(Error::Aborted(format!(
                    "{}: {} partial answers do not combine into fewer; raise --context-tokens",
                    self.name,
                    texts.len()
                )));
            }
            texts = partials;
            first = false;
        }
    }

    /// One answer per chunk, in order; a chunk the server finds too long
    /// for its context is asked again in two halves (two answers).
    async fn answer_chunks(
        &self,
        site: &Prepared,
        chunks: Vec<Vec<String>>,
    ) -> Result<Vec<String>, Error> {
        enum Item {
            Done(String),
            Todo(Vec<String>),
        }
        let mut items: Vec<Item> = chunks.into_iter().map(Item::Todo).collect();
        loop {
            let todo: Vec<usize> = items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| matches!(it, Item::Todo(_)).then_some(i))
                .collect();
            if todo.is_empty() {
                break;
            }
            let texts = todo
                .iter()
                .map(|&i| match &items[i] {
                    Item::Todo(c) => Some((aggregate::render(c), None)),
                    Item::Done(_) => None,
                })
                .collect();
            let answers = self.engine.answer(site, texts).await?;
            // Back to front, so that splicing keeps the earlier indices valid.
            for (&i, answer) in todo.iter().zip(answers).rev() {
                let Item::Todo(chunk) = &items[i] else {
                    continue;
                };
                match answer {
                    Some(Answer::Value(Value::String(s))) => items[i] = Item::Done(s),
                    Some(Answer::Value(v)) => items[i] = Item::Done(v.to_string()),
                    Some(Answer::Error(e)) if is_context_overflow(&e) => {
                        let Some((a, b)) = aggregate::split(chunk) else {
                            return Err(Error::Aborted(format!(
                                "{}: a piece of a few characters is still too long for the model: {e}",
                                self.name
                            )));
                        };
                        items.splice(i..=i, [Item::Todo(a), Item::Todo(b)]);
                    }
                    Some(Answer::Error(e)) => {
                        return Err(Error::Aborted(format!(
                            "{} failed on a group: {e}",
                            self.name
                        )))
                    }
                    None => items[i] = Item::Done(String::new()),
                }
            }
        }
        Ok(items
            .into_iter()
            .filter_map(|it| match it {
                Item::Done(s) => Some(s),
                Item::Todo(_) => None,
            })
            .collect())
    }
}

/// Each group's non-null values as text, sorted (see the module docs).
fn groups(list: &ArrayRef) -> datafusion::common::Result<Vec<Vec<String>>> {
    let list = list.as_list_opt::<i32>().ok_or_else(|| {
        err(Error::Config(format!(
            "AI aggregates take the values of a group, got {}",
            list.data_type()
        )))
    })?;
    let mut out = Vec::with_capacity(list.len());
    for r in 0..list.len() {
        if list.is_null(r) {
            out.push(Vec::new());
            continue;
        }
        let values = arrow::compute::cast(&list.value(r), &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        let mut texts: Vec<String> = values.iter().flatten().map(str::to_string).collect();
        texts.sort_unstable();
        out.push(texts);
    }
    Ok(out)
}

#[async_trait]
impl AsyncScalarUDFImpl for AggUdf {
    async fn invoke_async_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let instruction = self.instruction(&args.args).map_err(err)?;
        let budget = Budget::new(self.engine.settings.context_tokens, &instruction)
            .map_err(|e| err(Error::Config(format!("{}: {e}", self.name))))?;
        let list = args.args[0].to_array(args.number_rows)?;
        let groups = groups(&list)?;
        if let Some(dry) = &self.engine.dry {
            let literals: Vec<Option<ScalarValue>> = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(v) => Some(v.clone()),
                    ColumnarValue::Array(_) => None,
                })
                .collect();
            let label = label(self.name, &literals);
            for g in &groups {
                dry.add(
                    &label,
                    DryCount {
                        calls: aggregate::max_calls(g, &budget),
                        rows: g.len() as u64,
                        groups: 1,
                    },
                );
            }
            return Ok(ColumnarValue::Array(arrow::array::new_null_array(
                &DataType::Utf8,
                groups.len(),
            )));
        }
        let sites = self.sites(&budget).await.map_err(err)?;
        let answers =
            futures::future::join_all(groups.into_iter().map(|g| self.combine(&sites, &budget, g)))
                .await
                .into_iter()
                .collect::<Result<Vec<Option<String>>, Error>>()
                .map_err(err)?;
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(answers))))
    }
}

//! The AI functions as DataFusion async scalar UDFs.
//!
//! `ai_query` and each Databricks task function (`ai_classify`,
//! `ai_summarize`, ...) is one [`AiUdf`]. Its literal arguments (endpoint,
//! `returnType`, `failOnError`, `modelParameters`, `responseFormat`, labels,
//! ...) are read at planning time into [`JobSettings`] and checked by
//! [`crate::job::plan::Plan`] exactly as `aiq run` checks its flags, so a typo in
//! a type string fails the query before anything is sent, and the column's
//! type (which depends on `returnType`) is known to DataFusion. The per-row
//! arguments (the request texts) are evaluated by DataFusion and answered a
//! batch at a time by [`Engine::answer`].
//!
//! Arguments arrive positional: [`super::rewrite`] has already resolved
//! named arguments and filled skipped ones with NULL, read here as "not given".

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema};
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serde_json::{json, Value};

use super::calls::{Answer, Engine};
use super::catalog::{
    err, identified_by_name, label, parameters, string, sync_call_refused, FUNCTIONS,
};
use crate::ai::functions::AiFunction;
use crate::error::Error;
use crate::job::settings::JobSettings;

/// Every AI function, bound to the query's engine.
pub fn all(engine: &Arc<Engine>, default_endpoint: Option<&str>) -> Vec<ScalarUDF> {
    FUNCTIONS
        .iter()
        .map(|name| {
            let udf = AiUdf {
                name,
                function: function_named(name),
                // Volatile: never constant-folded (which would call the
                // function synchronously) nor merged with another call.
                signature: Signature::variadic_any(Volatility::Volatile),
                engine: engine.clone(),
                default_endpoint: default_endpoint.map(str::to_string),
            };
            AsyncScalarUDF::new(Arc::new(udf)).into_scalar_udf()
        })
        .collect()
}

fn function_named(name: &str) -> Option<AiFunction> {
    use clap::ValueEnum;
    AiFunction::value_variants()
        .iter()
        .copied()
        .find(|f| f.name() == name)
}

pub struct AiUdf {
    name: &'static str,
    /// None for `ai_query`.
    function: Option<AiFunction>,
    signature: Signature,
    engine: Arc<Engine>,
    default_endpoint: Option<String>,
}

identified_by_name!(AiUdf);

/// One call site's literal arguments, read and checked.
struct Site {
    settings: JobSettings,
    fail_on_error: bool,
    /// Identifies the call site for the engine's caches.
    key: String,
    /// Argument positions of the per-row texts.
    texts: Vec<usize>,
}

impl AiUdf {
    fn site(&self, literals: &[Option<&ScalarValue>], given: usize) -> Result<Site, Error> {
        let name = self.name;
        let params = parameters(name).unwrap_or(&[]);
        let lit = |i: usize| -> Result<Option<&ScalarValue>, Error> {
            if i >= given {
                return Ok(None);
            }
            match literals.get(i).copied().flatten() {
                Some(v) if v.is_null() => Ok(None),
                Some(v) => Ok(Some(v)),
                None => Err(Error::Config(format!(
                    "{name}: `{}` must be a literal",
                    params.get(i).unwrap_or(&"?")
                ))),
            }
        };
        let text = |i: usize| -> Result<Option<String>, Error> {
            lit(i)?
                .map(|v| {
                    string(v).ok_or_else(|| {
                        Error::Config(format!("{name}: `{}` must be a string, got {v}", params[i]))
                    })
                })
                .transpose()
        };
        let mut s = JobSettings::default();
        let mut fail_on_error = true;
        let mut texts = vec![0];
        match self.function {
            None => {
                if given < 2 {
                    return Err(Error::Config("ai_query needs at least an endpoint and a request: ai_query('endpoint', request)".into()));
                }
                s.endpoint = Some(text(0)?.ok_or_else(|| {
                    Error::Config("ai_query: the endpoint must not be NULL".into())
                })?);
                texts = vec![1];
                s.return_type = text(2)?;
                if let Some(v) = lit(3)? {
                    fail_on_error = match v {
                        ScalarValue::Boolean(Some(b)) => *b,
                        _ => {
                            return Err(Error::Config(format!(
                                "ai_query: failOnError must be true or false, got {v}"
                            )))
                        }
                    };
                }
                if let Some(p) = text(4)? {
                    s.params = model_parameters(&p)?;
                }
                s.response_format = text(5)?;
            }
            Some(f) => {
                let required = if f == AiFunction::AiSummarize {
                    1
                } else {
                    params.len()
                };
                if given < required {
                    return Err(Error::Config(format!(
                        "{name} takes ({})",
                        params.join(", ")
                    )));
                }
                s.endpoint = Some(self.default_endpoint.clone().ok_or_else(|| {
                    Error::Config(format!(
                        "{name} needs an endpoint to call: give --endpoint NAME|URL|simulator"
                    ))
                })?);
                s.function = Some(f);
                match f {
                    AiFunction::AiClassify | AiFunction::AiExtract | AiFunction::AiMask => {
                        s.labels = labels(&text(1)?.unwrap_or_default());
                    }
                    AiFunction::AiSummarize => {
                        if let Some(v) = lit(1)? {
                            let n = v.to_string().parse::<u32>().map_err(|_| {
                                Error::Config(format!(
                                    "ai_summarize: max_words must be a whole number >= 0, got {v}"
                                ))
                            })?;
                            s.max_words = Some(n);
                        }
                    }
                    AiFunction::AiTranslate => s.to_lang = text(1)?,
                    AiFunction::AiFilter => s.condition = text(1)?,
                    AiFunction::AiScore => s.criterion = text(1)?,
                    AiFunction::AiSimilarity => {
                        texts = vec![0, 1];
                        // Only its presence matters: the texts come per row.
                        s.prompt2 = Some("{{expr2}}".into());
                    }
                    _ => {}
                }
            }
        }
        let mut key = format!(
            "{name}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            s.endpoint,
            s.return_type,
            s.params,
            s.response_format,
            s.labels,
            s.max_words,
            s.to_lang
        );
        // Only when set, so journals of the other functions stay valid.
        for v in [&s.condition, &s.criterion].into_iter().flatten() {
            key.push_str(&format!("|{v:?}"));
        }
        // Check now, with the same rules as `aiq run`, before anything is sent.
        self.engine
            .plan(s.clone())
            .map_err(|e| Error::Config(format!("{name}: {}", sql_names(&e.to_string()))))?;
        Ok(Site {
            settings: s,
            fail_on_error,
            key,
            texts,
        })
    }

    fn output_type(&self, site: &Site) -> Result<DataType, Error> {
        let result = self
            .engine
            .plan(site.settings.clone())?
            .result_type
            .arrow_type();
        Ok(if site.fail_on_error {
            result
        } else {
            // As in Databricks: STRUCT<result: T, errorMessage: STRING>.
            DataType::Struct(Fields::from(vec![
                Field::new("result", result, true),
                Field::new("errorMessage", DataType::Utf8, true),
            ]))
        })
    }
}

impl ScalarUDFImpl for AiUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        // Only reached without literal arguments; the real type comes from
        // `return_field_from_args`.
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> datafusion::common::Result<FieldRef> {
        let site = self
            .site(args.scalar_arguments, args.arg_fields.len())
            .map_err(err)?;
        Ok(Arc::new(Field::new(
            self.name,
            self.output_type(&site).map_err(err)?,
            true,
        )))
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::common::Result<ColumnarValue> {
        Err(sync_call_refused(self.name))
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for AiUdf {
    async fn invoke_async_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let rows = args.number_rows;
        let literals: Vec<Option<ScalarValue>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(v) => Some(v.clone()),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        let refs: Vec<Option<&ScalarValue>> = literals.iter().map(Option::as_ref).collect();
        let site = self.site(&refs, args.args.len()).map_err(err)?;
        if let Some(dry) = &self.engine.dry {
            let reaching = match args.args.get(site.texts[0]) {
                Some(ColumnarValue::Array(a)) => a.len() - a.null_count(),
                Some(ColumnarValue::Scalar(v)) if !v.is_null() => rows,
                _ => 0,
            };
            dry.count(&label(self.name, &literals), reaching as u64);
            return Ok(ColumnarValue::Array(dry_answers(
                args.return_field.data_type(),
                rows,
            )));
        }
        let mut columns = Vec::with_capacity(site.texts.len());
        for &i in &site.texts {
            let array = args.args[i].to_array(rows)?;
            columns.push(arrow::compute::cast(&array, &DataType::Utf8)?);
        }
        let texts: Vec<Option<(String, Option<String>)>> = (0..rows)
            .map(|r| {
                let mut cells = columns.iter().map(|c| {
                    let c = c.as_string::<i32>();
                    (!c.is_null(r)).then(|| c.value(r).to_string())
                });
                let a = cells.next().flatten()?;
                match cells.next() {
                    // SQL null in, null out: a pair with a null is not sent.
                    Some(b) => Some((a, Some(b?))),
                    None => Some((a, None)),
                }
            })
            .collect();
        let prepared = self
            .engine
            .prepare(&site.key, site.settings.clone())
            .await
            .map_err(err)?;
        let answers = self.engine.answer(&prepared, texts).await.map_err(err)?;
        let values: Vec<Value> = answers
            .into_iter()
            .map(|a| {
                Ok(match (a, site.fail_on_error) {
                    (None, true) => Value::Null,
                    (None, false) => json!({"result": null, "errorMessage": null}),
                    (Some(Answer::Value(v)), true) => v,
                    (Some(Answer::Value(v)), false) => json!({"result": v, "errorMessage": null}),
                    (Some(Answer::Error(e)), false) => json!({"result": null, "errorMessage": e}),
                    (Some(Answer::Error(e)), true) => {
                        return Err(err(Error::Aborted(format!(
                            "{} failed on a row: {e}{}",
                            self.name,
                            if self.function.is_none() {
                                " (add failOnError => false to get errors as values instead)"
                            } else {
                                ""
                            }
                        ))))
                    }
                })
            })
            .collect::<datafusion::common::Result<_>>()?;
        Ok(ColumnarValue::Array(to_array(
            args.return_field.data_type(),
            values,
        )?))
    }
}

/// What a dry run answers without asking: TRUE for a BOOLEAN (so a filter
/// lets every row through and later steps are counted at their most),
/// NULL otherwise.
fn dry_answers(data_type: &DataType, rows: usize) -> ArrayRef {
    match data_type {
        DataType::Boolean => Arc::new(arrow::array::BooleanArray::from(vec![true; rows])),
        t => arrow::array::new_null_array(t, rows),
    }
}

/// Answers (JSON in the shape of the result type) → one Arrow column.
fn to_array(data_type: &DataType, values: Vec<Value>) -> datafusion::common::Result<ArrayRef> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "result",
        data_type.clone(),
        true,
    )]));
    let rows: Vec<Value> = values.into_iter().map(|v| json!({ "result": v })).collect();
    let batch = crate::pipeline::sink::decode(&schema, &rows).map_err(|e| {
        err(Error::Aborted(format!(
            "an answer does not fit the result type {data_type}: {e}"
        )))
    })?;
    Ok(batch.column(0).clone())
}

/// Plan messages name `aiq run`'s flags; say the SQL argument instead.
fn sql_names(message: &str) -> String {
    [
        ("--return-type", "returnType"),
        ("--response-format", "responseFormat"),
        ("--param", "modelParameters"),
        ("--labels", "labels"),
        ("--max-words", "max_words"),
        ("--to-lang", "to_lang"),
        ("--endpoint", "endpoint"),
    ]
    .iter()
    .fold(message.to_string(), |m, (flag, arg)| m.replace(flag, arg))
}

/// Labels as the rewrite leaves them (a JSON array), or a comma list.
fn labels(s: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(s) {
        Ok(l) => l,
        Err(_) => s
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    }
}

/// `modelParameters` as the rewrite leaves a `named_struct` (a JSON object),
/// or a JSON object written as a string.
fn model_parameters(s: &str) -> Result<Vec<(String, Value)>, Error> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m.into_iter().collect()),
        _ => Err(Error::Config(format!(
            "ai_query: modelParameters must be named_struct('max_tokens', 100, ...) or a JSON object, got {s}"
        ))),
    }
}

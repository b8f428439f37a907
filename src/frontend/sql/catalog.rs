//! What `aiq sql` knows of aiq's AI functions before any is bound to an
//! engine: their names (row and aggregate), their positional parameters,
//! how `--dry-run` labels a call site, and the few helpers every UDF shares.
//! The rewrite, the planner and both kinds of UDF read it; it reads none of
//! them, so they do not depend on each other.

use datafusion::common::{DataFusionError, ScalarValue};

use crate::error::Error;

/// The row functions registered for a query.
pub const FUNCTIONS: [&str; 12] = [
    "ai_query",
    "ai_analyze_sentiment",
    "ai_classify",
    "ai_extract",
    "ai_fix_grammar",
    "ai_gen",
    "ai_mask",
    "ai_similarity",
    "ai_summarize",
    "ai_translate",
    "ai_filter",
    "ai_score",
];

/// Whether `name` is one of aiq's AI functions (row or aggregate).
pub fn is_ai_function(name: &str) -> bool {
    FUNCTIONS.contains(&name) || AGG_FUNCTIONS.contains(&name)
}

/// The aggregate functions, as users write them.
pub const AGG_FUNCTIONS: [&str; 2] = ["ai_agg", "ai_summarize_agg"];

/// The parameters of each AI function, in positional order (as in Databricks).
pub fn parameters(function: &str) -> Option<&'static [&'static str]> {
    Some(match function {
        "ai_query" => &[
            "endpoint",
            "request",
            "returnType",
            "failOnError",
            "modelParameters",
            "responseFormat",
        ],
        "ai_classify" | "ai_extract" | "ai_mask" => &["content", "labels"],
        "ai_summarize" => &["content", "max_words"],
        "ai_translate" => &["content", "to_lang"],
        "ai_similarity" => &["expr1", "expr2"],
        "ai_gen" => &["prompt"],
        "ai_analyze_sentiment" | "ai_fix_grammar" | "ai_summarize_agg" => &["content"],
        "ai_filter" => &["content", "condition"],
        "ai_score" => &["content", "criterion"],
        "ai_agg" => &["content", "instruction"],
        _ => return None,
    })
}

/// How `--dry-run` names a call site: the function with its literal
/// arguments, `…` for the per-row ones.
pub fn label(name: &str, literals: &[Option<ScalarValue>]) -> String {
    let args: Vec<String> = literals
        .iter()
        .map(|l| match l {
            None => "…".to_string(),
            Some(v) if v.is_null() => "NULL".to_string(),
            Some(v) => match string(v) {
                Some(s) => {
                    let short: String = s.chars().take(40).collect();
                    let more = if short.len() < s.len() { "…" } else { "" };
                    format!("'{short}{more}'")
                }
                None => v.to_string(),
            },
        })
        .collect();
    // Trailing NULLs are arguments the query did not give.
    let given = args.iter().rposition(|a| a != "NULL").map_or(0, |i| i + 1);
    format!("{name}({})", args[..given].join(", "))
}

/// Debug, PartialEq, Eq and Hash by the `name` field, for the UDF structs
/// (DataFusion asks for them; the engine inside has none). One instance
/// per name is registered, so the name identifies it.
macro_rules! identified_by_name {
    ($udf:ident) => {
        impl std::fmt::Debug for $udf {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($udf))
                    .field("name", &self.name)
                    .finish()
            }
        }
        impl PartialEq for $udf {
            fn eq(&self, other: &Self) -> bool {
                self.name == other.name
            }
        }
        impl Eq for $udf {}
        impl std::hash::Hash for $udf {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.name.hash(state);
            }
        }
    };
}
pub(super) use identified_by_name;

/// What an AI function answers DataFusion's synchronous call: it is async
/// and runs only through `invoke_async_with_args`.
pub fn sync_call_refused(name: &str) -> DataFusionError {
    DataFusionError::Internal(format!(
        "{name} is async and runs only through invoke_async_with_args"
    ))
}

/// An aiq error as DataFusion carries it (unwrapped again for messages).
pub fn err(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

pub fn string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

//! Databricks AI task functions (`ai_classify`, `ai_extract`, ...) as
//! requests: what system prompt each sends, which result type and
//! `response_format` it uses, and how a parsed reply becomes the function's
//! result.
//!
//! This module owns the prompts and the per-function rules (which options a
//! function takes, what counts as a valid answer); result types and reply
//! parsing are [`crate::types`]'. The caller renders the input text as the
//! user message, parses the reply with `spec.return_type.parse_reply` and
//! hands the value to [`AiFunction::finish`]. `ai_similarity` is the one
//! function without a chat call: it embeds both texts and compares them with
//! [`cosine_similarity`].
//!
//! Prompts are short and ask for the output alone: every extra word a model
//! adds ("Sure! Here is...") would end up in the result column.

use serde_json::{json, Map, Value};

use crate::types::{snippet, strip_fences, SqlType};

/// A Databricks AI function, as named on the command line and in job files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AiFunction {
    AiAnalyzeSentiment,
    AiClassify,
    AiExtract,
    AiFixGrammar,
    AiGen,
    AiMask,
    AiSimilarity,
    AiSummarize,
    AiTranslate,
}

/// The options of the functions that take some; each function accepts only
/// its own, so a misplaced option is an error rather than silently unused.
#[derive(Debug, Clone, Default)]
pub struct FunctionOptions {
    /// Labels for `ai_classify` (at least 2), entity types for `ai_extract`
    /// and `ai_mask` (at least 1).
    pub labels: Vec<String>,
    /// `ai_summarize`: the word limit; unset means 50 (the Databricks
    /// default), 0 means no limit.
    pub max_words: Option<u32>,
    /// `ai_translate`: the target language, as a name or code (`Spanish`, `es`).
    pub to_lang: Option<String>,
}

/// What to send for one function, checked and ready.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The system prompt (empty for `ai_similarity`, which sends none).
    pub system: String,
    /// The type that `return_type.parse_reply` reads the reply as.
    pub return_type: SqlType,
    /// Structured output to request, when the function constrains the reply.
    pub response_format: Option<Value>,
    /// `ai_similarity`: embed the two inputs instead of chatting.
    pub embeddings: bool,
}

/// The labels `ai_analyze_sentiment` answers with, as Databricks defines them.
pub const SENTIMENTS: [&str; 4] = ["positive", "negative", "neutral", "mixed"];

/// `ai_summarize`'s word limit when none is given (as in Databricks).
pub const DEFAULT_MAX_WORDS: u32 = 50;

/// What `ai_mask` puts in place of each masked entity (as in Databricks).
pub const MASK: &str = "[MASKED]";

impl AiFunction {
    pub fn name(&self) -> &'static str {
        match self {
            AiFunction::AiAnalyzeSentiment => "ai_analyze_sentiment",
            AiFunction::AiClassify => "ai_classify",
            AiFunction::AiExtract => "ai_extract",
            AiFunction::AiFixGrammar => "ai_fix_grammar",
            AiFunction::AiGen => "ai_gen",
            AiFunction::AiMask => "ai_mask",
            AiFunction::AiSimilarity => "ai_similarity",
            AiFunction::AiSummarize => "ai_summarize",
            AiFunction::AiTranslate => "ai_translate",
        }
    }

    /// Checks `opts` for this function and builds what to send.
    pub fn spec(&self, opts: &FunctionOptions) -> Result<TaskSpec, String> {
        self.check_options(opts)?;
        let text = |system: String| TaskSpec {
            system,
            return_type: SqlType::String,
            response_format: None,
            embeddings: false,
        };
        Ok(match self {
            AiFunction::AiAnalyzeSentiment => {
                let labels: Vec<String> = SENTIMENTS.iter().map(|s| s.to_string()).collect();
                TaskSpec {
                    system: sentiment_prompt(),
                    return_type: SqlType::String,
                    response_format: Some(enum_format(&labels)),
                    embeddings: false,
                }
            }
            AiFunction::AiClassify => TaskSpec {
                system: classify_prompt(&opts.labels),
                return_type: SqlType::String,
                response_format: Some(enum_format(&opts.labels)),
                embeddings: false,
            },
            AiFunction::AiExtract => TaskSpec {
                system: extract_prompt(&opts.labels),
                return_type: SqlType::Struct(
                    opts.labels
                        .iter()
                        .map(|l| (l.clone(), SqlType::String))
                        .collect(),
                ),
                response_format: Some(extract_format(&opts.labels)),
                embeddings: false,
            },
            AiFunction::AiFixGrammar => text(FIX_GRAMMAR_PROMPT.to_string()),
            AiFunction::AiGen => text(GEN_PROMPT.to_string()),
            AiFunction::AiMask => text(mask_prompt(&opts.labels)),
            AiFunction::AiSimilarity => TaskSpec {
                system: String::new(),
                return_type: SqlType::Float,
                response_format: None,
                embeddings: true,
            },
            AiFunction::AiSummarize => text(summarize_prompt(
                opts.max_words.unwrap_or(DEFAULT_MAX_WORDS),
            )),
            AiFunction::AiTranslate => {
                // check_options made sure it is there.
                text(translate_prompt(
                    opts.to_lang.as_deref().unwrap_or_default().trim(),
                ))
            }
        })
    }

    /// Turns a reply, already parsed with `spec.return_type.parse_reply`,
    /// into the function's result: the bare label for the label functions
    /// (checked against the labels), the struct for `ai_extract`, trimmed
    /// text for the text functions, the score for `ai_similarity`.
    pub fn finish(&self, opts: &FunctionOptions, value: Value) -> Result<Value, String> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        match self {
            AiFunction::AiAnalyzeSentiment => {
                let labels: Vec<String> = SENTIMENTS.iter().map(|s| s.to_string()).collect();
                pick_label(&labels, &value).map(Value::String)
            }
            AiFunction::AiClassify => pick_label(&opts.labels, &value).map(Value::String),
            AiFunction::AiExtract => {
                let t = self.spec(opts)?.return_type;
                match &value {
                    // Raw reply text, if the caller did not parse it.
                    Value::String(s) => t.parse_reply(s),
                    v => t.normalize(v),
                }
            }
            AiFunction::AiFixGrammar
            | AiFunction::AiGen
            | AiFunction::AiMask
            | AiFunction::AiSummarize
            | AiFunction::AiTranslate => match value {
                // Models often end with a newline or start with one; the
                // text itself is what the column should hold.
                Value::String(s) => Ok(Value::String(s.trim().to_string())),
                v => Err(format!("{}: expected text, got {v}", self.name())),
            },
            AiFunction::AiSimilarity => SqlType::Float.normalize(&value),
        }
    }

    /// Rejects options this function does not take and checks the ones it
    /// needs, so that a typo fails before any request is sent.
    fn check_options(&self, opts: &FunctionOptions) -> Result<(), String> {
        let name = self.name();
        let min_labels = match self {
            AiFunction::AiClassify => 2,
            AiFunction::AiExtract | AiFunction::AiMask => 1,
            _ => 0,
        };
        if min_labels == 0 && !opts.labels.is_empty() {
            return Err(format!(
                "{name} takes no labels (labels are for ai_classify, ai_extract and ai_mask)"
            ));
        }
        if opts.labels.len() < min_labels {
            return Err(format!(
                "{name} needs at least {min_labels} label{}, got {}",
                if min_labels == 1 { "" } else { "s" },
                opts.labels.len()
            ));
        }
        for (i, label) in opts.labels.iter().enumerate() {
            if label.trim().is_empty() {
                return Err(format!("{name}: label {} is empty", i + 1));
            }
            // Case-insensitively: "Spam" and "spam" cannot be told apart in
            // a reply, and SQL field names ignore case.
            if opts.labels[..i]
                .iter()
                .any(|l| l.trim().eq_ignore_ascii_case(label.trim()))
            {
                return Err(format!("{name}: label {label:?} is given twice"));
            }
        }
        if opts.max_words.is_some() && *self != AiFunction::AiSummarize {
            return Err(format!(
                "{name} takes no max_words (it is for ai_summarize)"
            ));
        }
        match (
            *self == AiFunction::AiTranslate,
            opts.to_lang.as_deref().map(str::trim),
        ) {
            (true, None) => {
                return Err(format!(
                    "{name} needs to_lang, the language to translate into"
                ))
            }
            (true, Some("")) => return Err(format!("{name}: to_lang is empty")),
            (false, Some(_)) => {
                return Err(format!("{name} takes no to_lang (it is for ai_translate)"))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Cosine similarity of two embeddings, or None when it is undefined (a
/// zero vector, vectors of different lengths, empty or non-finite input).
/// Sums in f64: long f32 embeddings lose precision otherwise.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let cos = dot / (na.sqrt() * nb.sqrt());
    // Rounding can step just outside [-1, 1].
    cos.is_finite().then(|| cos.clamp(-1.0, 1.0) as f32)
}

/// A JSON list of labels for a prompt: quoting keeps labels that contain
/// commas or spaces unambiguous.
fn label_list(labels: &[String]) -> String {
    Value::from(labels.to_vec()).to_string()
}

fn sentiment_prompt() -> String {
    "You classify the sentiment of the text in the user message.\n\
     Answer with exactly one label:\n\
     - positive: mainly favourable opinions or feelings\n\
     - negative: mainly unfavourable opinions or feelings\n\
     - neutral: no clear opinion or feeling, or purely factual\n\
     - mixed: clearly both favourable and unfavourable\n\
     Judge the text as a whole, as its author means it (sarcasm included). \
     Output only JSON of the form {\"result\": \"<label>\"}."
        .to_string()
}

fn classify_prompt(labels: &[String]) -> String {
    format!(
        "You classify the text in the user message into exactly one of these labels: {}.\n\
         Choose the label that best describes the text as a whole; if none fits well, choose the closest. \
         Never invent a label. Output only JSON of the form {{\"result\": \"<label>\"}}, \
         with the label spelled exactly as listed.",
        label_list(labels)
    )
}

fn extract_prompt(labels: &[String]) -> String {
    format!(
        "You extract information from the text in the user message.\n\
         For each of these keys, find what the text says for it: {}.\n\
         Copy each value exactly as written in the text (the most relevant mention if there are several); \
         do not infer, translate or reformat it. Use null when the text does not mention it.\n\
         Output only a JSON object with exactly these keys.",
        label_list(labels)
    )
}

const FIX_GRAMMAR_PROMPT: &str = "You correct the grammar, spelling and punctuation of the text in the user message.\n\
     Change only what is wrong: keep the meaning, language, tone, wording and formatting of everything that is already correct. \
     If nothing is wrong, return the text unchanged.\n\
     Output only the corrected text, without quotes, comments or explanations.";

const GEN_PROMPT: &str = "Respond to the user message.\n\
     Output only the response itself, without a preamble, a closing remark or comments about the response.";

fn mask_prompt(labels: &[String]) -> String {
    format!(
        "You mask sensitive information in the text in the user message.\n\
         Replace every mention of these kinds of information with {MASK}: {}.\n\
         Replace each whole mention, every time it occurs. Leave everything else exactly as it is: \
         the same words, spacing, punctuation and line breaks.\n\
         Output only the resulting text, without quotes, comments or explanations.",
        label_list(labels)
    )
}

fn summarize_prompt(max_words: u32) -> String {
    let limit = if max_words == 0 {
        "concisely".to_string()
    } else {
        format!("in at most {max_words} words")
    };
    format!(
        "You summarize the text in the user message {limit}.\n\
         Keep the main points, names and figures; add nothing that the text does not say. \
         Write in the language of the text.\n\
         Output only the summary as plain prose, without a title, preamble or comments."
    )
}

fn translate_prompt(to_lang: &str) -> String {
    format!(
        "You translate the text in the user message into {to_lang}.\n\
         Keep the meaning, tone and formatting (line breaks, lists, markup). \
         Keep names, numbers, URLs and code as they are, and any part already in {to_lang}.\n\
         Output only the translation, without quotes, notes or explanations."
    )
}

/// The `response_format` for a reply that must be one of `labels`:
/// `{"result": <one of labels>}` under strict structured outputs.
fn enum_format(labels: &[String]) -> Value {
    let schema = json!({
        "type": "object",
        "properties": {"result": {"type": "string", "enum": labels}},
        "required": ["result"],
        "additionalProperties": false,
    });
    json!({"type": "json_schema", "json_schema": {"name": "result", "schema": schema, "strict": true}})
}

/// The `response_format` for `ai_extract`: every key present, each a
/// string or null (strict mode has no optional properties, so "absent" must
/// be expressible as null).
fn extract_format(labels: &[String]) -> Value {
    let properties: Map<String, Value> = labels
        .iter()
        .map(|l| (l.clone(), json!({"type": ["string", "null"]})))
        .collect();
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": labels,
        "additionalProperties": false,
    });
    json!({"type": "json_schema", "json_schema": {"name": "result", "schema": schema, "strict": true}})
}

/// The label a reply names. The reply is usually the STRING result text
/// `{"result": "spam"}`, but endpoints without structured outputs answer
/// `spam`, `"Spam"` or `Spam.`: accept those when they name exactly one
/// label, ignoring case.
fn pick_label(labels: &[String], value: &Value) -> Result<String, String> {
    let raw = match value {
        Value::String(s) => s.as_str(),
        Value::Object(_) => "",
        v => {
            return Err(format!(
                "expected one of the labels {}, got {v}",
                label_list(labels)
            ))
        }
    };
    let parsed = match value {
        Value::Object(_) => Some(value.clone()),
        _ => serde_json::from_str::<Value>(strip_fences(raw)).ok(),
    };
    let answer = match &parsed {
        Some(Value::Object(m)) => match m.get("result") {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Null) => return Err("the reply has no label (result is null)".into()),
            _ => {
                return Err(format!(
                    "expected {{\"result\": <label>}}, got {}",
                    Value::Object(m.clone())
                ))
            }
        },
        Some(Value::String(s)) => s.as_str(),
        _ => strip_fences(raw),
    };
    if let Some(l) = labels.iter().find(|l| l.as_str() == answer) {
        return Ok(l.clone());
    }
    let loose = answer
        .trim()
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '`')
        .trim_end_matches('.')
        .trim();
    let mut found = labels
        .iter()
        .filter(|l| l.trim().eq_ignore_ascii_case(loose));
    match (found.next(), found.next()) {
        (Some(l), None) => Ok(l.clone()),
        _ => Err(format!(
            "{} is not one of the labels {}",
            snippet(answer),
            label_list(labels)
        )),
    }
}

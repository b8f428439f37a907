//! Databricks AI task functions (`ai_classify`, `ai_extract`, ...) as
//! requests: what system prompt each sends, which result type and
//! `response_format` it uses, and how a parsed reply becomes the function's
//! result.
//!
//! This module owns the prompts and the per-function rules (which options a
//! function takes, what counts as a valid answer); result types and reply
//! parsing are [`crate::ai::types`]'. The caller renders the input text as the
//! user message, parses the reply with `spec.return_type.parse_reply` and
//! hands the value to [`AiFunction::finish`]. `ai_similarity` is the one
//! function without a chat call: it embeds both texts and compares them with
//! [`cosine_similarity`].
//!
//! Prompts are short and ask for the output alone: every extra word a model
//! adds ("Sure! Here is...") would end up in the result column.

use serde_json::{json, Map, Value};

use crate::ai::types::{snippet, strip_fences, SqlType};

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
    /// A semantic filter: does the text meet `condition`? (BOOLEAN)
    AiFilter,
    /// A semantic score: how well does the text meet `criterion`? (DOUBLE in [0, 1])
    AiScore,
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
    /// `ai_filter`: the condition a text must meet.
    pub condition: Option<String>,
    /// `ai_score`: what a text is scored on.
    pub criterion: Option<String>,
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
            AiFunction::AiFilter => "ai_filter",
            AiFunction::AiScore => "ai_score",
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
            AiFunction::AiFilter => TaskSpec {
                system: filter_prompt(opts.condition.as_deref().unwrap_or_default().trim()),
                return_type: SqlType::Boolean,
                response_format: Some(SqlType::Boolean.response_format()),
                embeddings: false,
            },
            AiFunction::AiScore => TaskSpec {
                system: score_prompt(opts.criterion.as_deref().unwrap_or_default().trim()),
                return_type: SqlType::Double,
                response_format: Some(score_format()),
                embeddings: false,
            },
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
            AiFunction::AiFilter => SqlType::Boolean.normalize(&value),
            AiFunction::AiScore => {
                let v = SqlType::Double.normalize(&value)?;
                match v.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => Ok(v),
                    _ => Err(format!("ai_score: expected a score in [0, 1], got {v}")),
                }
            }
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
        for (f, what, value) in [
            (AiFunction::AiFilter, "condition", &opts.condition),
            (AiFunction::AiScore, "criterion", &opts.criterion),
        ] {
            match (*self == f, value.as_deref().map(str::trim)) {
                (true, None) => return Err(format!("{name} needs a {what}")),
                (true, Some("")) => return Err(format!("{name}: the {what} is empty")),
                (false, Some(_)) => {
                    return Err(format!("{name} takes no {what} (it is for {})", f.name()))
                }
                _ => {}
            }
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

fn filter_prompt(condition: &str) -> String {
    format!(
        "You decide whether the text in the user message meets this condition: {condition}\n\
         Judge only from what the text says. \
         Output only JSON of the form {{\"result\": true}} or {{\"result\": false}}."
    )
}

fn score_prompt(criterion: &str) -> String {
    format!(
        "You score the text in the user message on this criterion: {criterion}\n\
         Give a number from 0 (does not meet it at all) to 1 (meets it fully); \
         use the whole range, so that texts can be ranked by their scores. \
         Output only JSON of the form {{\"result\": <score>}}."
    )
}

/// `{"result": number}` with the score's range in the schema, so servers
/// that honour `minimum`/`maximum` constrain the model to [0, 1].
fn score_format() -> Value {
    let schema = json!({
        "type": "object",
        "properties": {"result": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["result"],
        "additionalProperties": false,
    });
    json!({"type": "json_schema", "json_schema": {"name": "result", "schema": schema, "strict": true}})
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ls: &[&str]) -> FunctionOptions {
        FunctionOptions {
            labels: ls.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn enum_of(spec: &TaskSpec) -> Value {
        spec.response_format.as_ref().unwrap()["json_schema"]["schema"]["properties"]["result"]
            ["enum"]
            .clone()
    }

    #[test]
    fn names_match_clap_and_serde_spellings() {
        use clap::ValueEnum;
        for f in AiFunction::value_variants() {
            assert_eq!(f.to_possible_value().unwrap().get_name(), f.name());
            assert_eq!(
                serde_json::from_value::<AiFunction>(json!(f.name())).unwrap(),
                *f
            );
        }
        assert_eq!(
            AiFunction::from_str("ai_classify", false),
            Ok(AiFunction::AiClassify)
        );
        assert!(serde_json::from_value::<AiFunction>(json!("ai_clasify")).is_err());
    }

    #[test]
    fn options_are_checked_per_function() {
        let err = |f: AiFunction, o: FunctionOptions| f.spec(&o).unwrap_err();
        assert_eq!(
            err(AiFunction::AiClassify, labels(&["spam"])),
            "ai_classify needs at least 2 labels, got 1"
        );
        assert_eq!(
            err(AiFunction::AiExtract, labels(&[])),
            "ai_extract needs at least 1 label, got 0"
        );
        assert_eq!(
            err(AiFunction::AiMask, labels(&[])),
            "ai_mask needs at least 1 label, got 0"
        );
        assert_eq!(
            err(AiFunction::AiClassify, labels(&["a", " "])),
            "ai_classify: label 2 is empty"
        );
        assert_eq!(
            err(AiFunction::AiClassify, labels(&["Spam", "ham", "spam"])),
            "ai_classify: label \"spam\" is given twice"
        );
        assert!(err(AiFunction::AiSummarize, labels(&["x"]))
            .starts_with("ai_summarize takes no labels"));
        let words = FunctionOptions {
            max_words: Some(10),
            ..Default::default()
        };
        assert!(err(AiFunction::AiGen, words).starts_with("ai_gen takes no max_words"));
        assert_eq!(
            err(AiFunction::AiTranslate, FunctionOptions::default()),
            "ai_translate needs to_lang, the language to translate into"
        );
        let blank = FunctionOptions {
            to_lang: Some("  ".into()),
            ..Default::default()
        };
        assert_eq!(
            err(AiFunction::AiTranslate, blank),
            "ai_translate: to_lang is empty"
        );
        let es = FunctionOptions {
            to_lang: Some("es".into()),
            ..Default::default()
        };
        assert!(err(AiFunction::AiFixGrammar, es).starts_with("ai_fix_grammar takes no to_lang"));
        // Every function without required options builds with none.
        for f in [
            AiFunction::AiAnalyzeSentiment,
            AiFunction::AiFixGrammar,
            AiFunction::AiGen,
            AiFunction::AiSimilarity,
            AiFunction::AiSummarize,
        ] {
            assert!(f.spec(&FunctionOptions::default()).is_ok(), "{}", f.name());
        }
    }

    #[test]
    fn sentiment_is_an_enum_constrained_label() {
        let f = AiFunction::AiAnalyzeSentiment;
        let spec = f.spec(&FunctionOptions::default()).unwrap();
        assert_eq!(spec.return_type, SqlType::String);
        assert_eq!(
            enum_of(&spec),
            json!(["positive", "negative", "neutral", "mixed"])
        );
        assert_eq!(
            spec.response_format.as_ref().unwrap()["json_schema"]["strict"],
            json!(true)
        );
        for label in SENTIMENTS {
            assert!(spec.system.contains(label));
        }
        let opts = FunctionOptions::default();
        let finish = |reply: &str| f.finish(&opts, spec.return_type.parse_reply(reply).unwrap());
        assert_eq!(finish(r#"{"result": "mixed"}"#), Ok(json!("mixed")));
        assert_eq!(finish("Positive."), Ok(json!("positive")));
        assert_eq!(
            finish("```json\n{\"result\":\"neutral\"}\n```"),
            Ok(json!("neutral"))
        );
        assert_eq!(
            finish(r#"{"result": "angry"}"#),
            Err(
                r#""angry" is not one of the labels ["positive","negative","neutral","mixed"]"#
                    .into()
            )
        );
        assert_eq!(f.finish(&opts, Value::Null), Ok(Value::Null));
    }

    #[test]
    fn classify_answers_with_one_of_the_labels() {
        let f = AiFunction::AiClassify;
        let opts = labels(&["urgent, reply today", "not urgent"]);
        let spec = f.spec(&opts).unwrap();
        assert_eq!(spec.return_type, SqlType::String);
        assert!(!spec.embeddings);
        assert_eq!(enum_of(&spec), json!(["urgent, reply today", "not urgent"]));
        // Labels are quoted in the prompt, so a comma inside one is unambiguous.
        assert!(
            spec.system
                .contains(r#"["urgent, reply today","not urgent"]"#),
            "{}",
            spec.system
        );
        assert_eq!(
            f.finish(&opts, json!(r#"{"result": "not urgent"}"#)),
            Ok(json!("not urgent"))
        );
        assert_eq!(
            f.finish(&opts, json!({"result": "not urgent"})),
            Ok(json!("not urgent"))
        );
        assert_eq!(
            f.finish(&opts, json!("  NOT URGENT\n")),
            Ok(json!("not urgent"))
        );
        assert!(f
            .finish(&opts, json!("maybe"))
            .unwrap_err()
            .starts_with("\"maybe\" is not one of the labels"));
        assert!(f
            .finish(&opts, json!(r#"{"label": "x"}"#))
            .unwrap_err()
            .starts_with("expected {\"result\": <label>}"));
        assert!(f
            .finish(&opts, json!(r#"{"result": null}"#))
            .unwrap_err()
            .contains("no label"));
        assert!(f.finish(&opts, json!(3)).is_err());
    }

    #[test]
    fn extract_returns_a_struct_of_nullable_strings() {
        let f = AiFunction::AiExtract;
        let opts = labels(&["person", "location"]);
        let spec = f.spec(&opts).unwrap();
        assert_eq!(
            spec.return_type.to_string(),
            "STRUCT<person: STRING, location: STRING>"
        );
        let schema = &spec.response_format.as_ref().unwrap()["json_schema"]["schema"];
        assert_eq!(
            schema["properties"]["location"],
            json!({"type": ["string", "null"]})
        );
        assert_eq!(schema["required"], json!(["person", "location"]));
        assert_eq!(
            SqlType::from_json_schema(schema),
            Ok(spec.return_type.clone())
        );
        assert!(spec.system.contains(r#"["person","location"]"#) && spec.system.contains("null"));
        let parsed = spec
            .return_type
            .parse_reply(r#"{"person": "Ada", "location": null, "date": "1843"}"#)
            .unwrap();
        assert_eq!(
            f.finish(&opts, parsed),
            Ok(json!({"person": "Ada", "location": null}))
        );
        assert_eq!(
            f.finish(&opts, json!(r#"{"person": "Ada"}"#)),
            Ok(json!({"person": "Ada", "location": null}))
        );
        assert_eq!(
            f.finish(&opts, json!({"person": 7})),
            Err("result.person: expected STRING, got number 7".into())
        );
    }

    #[test]
    fn text_functions_return_trimmed_text_without_response_format() {
        let es = FunctionOptions {
            to_lang: Some("Spanish".into()),
            ..Default::default()
        };
        let mask = labels(&["email", "phone number"]);
        let none = FunctionOptions::default();
        for (f, opts) in [
            (AiFunction::AiFixGrammar, &none),
            (AiFunction::AiGen, &none),
            (AiFunction::AiSummarize, &none),
            (AiFunction::AiTranslate, &es),
            (AiFunction::AiMask, &mask),
        ] {
            let spec = f.spec(opts).unwrap();
            assert_eq!(
                (
                    spec.return_type.clone(),
                    spec.response_format.clone(),
                    spec.embeddings
                ),
                (SqlType::String, None, false)
            );
            assert!(spec.system.contains("Output only"), "{}", f.name());
            let reply = spec.return_type.parse_reply("\n Hola, mundo. \n").unwrap();
            assert_eq!(f.finish(opts, reply), Ok(json!("Hola, mundo.")));
            assert!(f
                .finish(opts, json!({"x": 1}))
                .unwrap_err()
                .starts_with(&format!("{}: expected text", f.name())));
        }
        assert!(AiFunction::AiTranslate
            .spec(&es)
            .unwrap()
            .system
            .contains("into Spanish"));
        let m = AiFunction::AiMask.spec(&mask).unwrap().system;
        assert!(
            m.contains("[MASKED]") && m.contains(r#"["email","phone number"]"#),
            "{m}"
        );
    }

    #[test]
    fn summarize_states_the_word_limit() {
        let words = |n: Option<u32>| {
            AiFunction::AiSummarize
                .spec(&FunctionOptions {
                    max_words: n,
                    ..Default::default()
                })
                .unwrap()
                .system
        };
        assert!(words(None).contains("in at most 50 words"));
        assert!(words(Some(12)).contains("in at most 12 words"));
        let unlimited = words(Some(0));
        assert!(
            unlimited.contains("concisely") && !unlimited.contains("words."),
            "{unlimited}"
        );
    }

    #[test]
    fn similarity_uses_embeddings() {
        let f = AiFunction::AiSimilarity;
        let spec = f.spec(&FunctionOptions::default()).unwrap();
        assert_eq!(
            (spec.system.as_str(), &spec.return_type, spec.embeddings),
            ("", &SqlType::Float, true)
        );
        assert_eq!(spec.response_format, None);
        assert_eq!(
            f.finish(&FunctionOptions::default(), json!(0.25)),
            Ok(json!(0.25))
        );
        assert!(f
            .finish(&FunctionOptions::default(), json!("high"))
            .is_err());
    }

    #[test]
    fn filter_and_score_are_typed_and_need_their_option() {
        let cond = FunctionOptions {
            condition: Some("mentions shipping".into()),
            ..Default::default()
        };
        let spec = AiFunction::AiFilter.spec(&cond).unwrap();
        assert_eq!(spec.return_type, SqlType::Boolean);
        assert!(spec.system.contains("mentions shipping"));
        assert_eq!(
            spec.response_format.unwrap()["json_schema"]["schema"]["properties"]["result"],
            json!({"type": "boolean"})
        );
        assert_eq!(
            AiFunction::AiFilter.finish(&cond, json!(true)),
            Ok(json!(true))
        );
        assert_eq!(
            AiFunction::AiFilter.spec(&FunctionOptions::default()),
            Err("ai_filter needs a condition".into())
        );
        assert!(AiFunction::AiScore
            .spec(&cond)
            .unwrap_err()
            .contains("takes no condition"));
        assert_eq!(
            AiFunction::AiScore.spec(&FunctionOptions::default()),
            Err("ai_score needs a criterion".into())
        );
        let crit = FunctionOptions {
            criterion: Some("urgency".into()),
            ..Default::default()
        };
        let spec = AiFunction::AiScore.spec(&crit).unwrap();
        assert_eq!(spec.return_type, SqlType::Double);
        assert_eq!(
            spec.response_format.unwrap()["json_schema"]["schema"]["properties"]["result"]
                ["maximum"],
            json!(1)
        );
        assert_eq!(
            AiFunction::AiScore.finish(&crit, json!(0.25)),
            Ok(json!(0.25))
        );
        assert!(AiFunction::AiScore.finish(&crit, json!(7)).is_err());
        assert!(AiFunction::AiGen
            .spec(&crit)
            .unwrap_err()
            .contains("takes no criterion"));
    }

    #[test]
    fn cosine_similarity_is_defined_only_for_comparable_vectors() {
        assert_eq!(
            cosine_similarity(&[0.3, -1.2, 4.0], &[0.3, -1.2, 4.0]),
            Some(1.0)
        );
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 2.0]), Some(0.0));
        assert_eq!(cosine_similarity(&[1.0, 2.0], &[-2.0, -4.0]), Some(-1.0));
        let half = cosine_similarity(&[1.0, 0.0], &[1.0, 3f32.sqrt()]).unwrap();
        assert!((half - 0.5).abs() < 1e-6, "{half}");
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), None);
        assert_eq!(cosine_similarity(&[1.0, 2.0], &[1.0]), None);
        assert_eq!(cosine_similarity(&[], &[]), None);
        assert_eq!(cosine_similarity(&[f32::NAN, 1.0], &[1.0, 1.0]), None);
    }
}

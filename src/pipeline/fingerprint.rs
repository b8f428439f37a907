//! Request fingerprint: one hash that says "the same request", kept with
//! every row's outcome (the `request_fingerprint` output column).
//!
//! Two rows with the same fingerprint ask the same model at the same
//! endpoint the same question with the same parameters, and their replies
//! are read the same way: the same price, and answers either row can take.
//! So a job sends such rows once, and a results table can stand for a row
//! whose fingerprint is unchanged since the table was written.
//!
//! In it: the endpoint as written (a Databricks endpoint name, or a base URL
//! with its user-info redacted), the model, the task, the result type and
//! AI function (they change how a reply is read), and the row's request
//! body in canonical form (object keys sorted): the messages with the
//! system prompt and images, every parameter, the response format's schema.
//! Not in it: anything that is not in the body (row numbers, input columns
//! no template reads), and what changes neither the answer nor what the
//! tokens are: `stream` and `stream_options`, `prompt_cache_key`, and the
//! `cache_control` marks with the split of the text they bring. A call that
//! embeds several rows' texts (`--batch-size`) gives each row the
//! fingerprint of a call embedding its text alone, so batching does not
//! change it. The Batch API's discount is not in it either: the same
//! request, billed at another rate.

use serde_json::{json, Map, Value};

use crate::job::plan::Plan;
use crate::pipeline::render::Call;

/// Hex characters of a fingerprint (128 bits).
const HEX_LEN: usize = 32;

/// Body keys that change how a reply travels, not what it says or costs.
const TRANSPORT_KEYS: [&str; 3] = ["stream", "stream_options", "prompt_cache_key"];

/// The job's part of every fingerprint: where requests go and how replies
/// are read.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    scope: Vec<u8>,
}

impl Fingerprinter {
    pub fn of(plan: &Plan) -> Fingerprinter {
        // The settings as the journal's manifest names them: one place
        // says how each is written (the target's URL redacted).
        let settings = plan.answer_settings();
        let mut scope = Map::new();
        for key in ["target", "model", "task", "result_type", "function"] {
            scope.insert(
                key.into(),
                settings.get(key).cloned().unwrap_or(Value::Null),
            );
        }
        Fingerprinter {
            scope: canonical_bytes(&Value::Object(scope)),
        }
    }

    /// The fingerprint of each row of `call`, in `call.rows` order.
    pub fn rows(&self, call: &Call) -> Vec<String> {
        let Ok(body) = serde_json::from_slice::<Value>(&call.body) else {
            // Bodies are built as JSON; should one not parse, its bytes
            // still say what was sent.
            let fp = self.hash(call, &call.body);
            return vec![fp; call.rows.len()];
        };
        let body = normalise(body);
        let texts = body
            .get("input")
            .and_then(Value::as_array)
            .filter(|texts| call.rows.len() > 1 && texts.len() == call.rows.len());
        match texts {
            // Several rows' texts in one embeddings call: each row as if
            // embedded alone (how a one-text call writes its input).
            Some(texts) => texts
                .iter()
                .map(|text| {
                    let mut own = body.clone();
                    own["input"] = text.clone();
                    self.hash(call, &canonical_bytes(&own))
                })
                .collect(),
            None => vec![self.hash(call, &canonical_bytes(&body)); call.rows.len()],
        }
    }

    fn hash(&self, call: &Call, body: &[u8]) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&self.scope);
        h.update(&[0]);
        // A call that names its own API (OpenAI Batch input lines).
        if let Some(route) = call.route {
            h.update(format!("{route:?}").as_bytes());
        }
        h.update(&[0]);
        h.update(body);
        h.finalize().to_hex()[..HEX_LEN].to_string()
    }
}

/// The body without what changes only how it travels: transport keys gone,
/// and message content as plain text where `cache_control` split it into
/// marked parts.
fn normalise(mut body: Value) -> Value {
    let Some(map) = body.as_object_mut() else {
        return body;
    };
    for key in TRANSPORT_KEYS {
        map.remove(key);
    }
    if let Some(messages) = map.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages {
            if let Some(content) = message.get_mut("content") {
                *content = plain_content(std::mem::take(content));
            }
        }
    }
    body
}

/// Content parts without `cache_control` marks, neighbouring text parts
/// joined, and a lone text part as the string it would be unmarked.
fn plain_content(content: Value) -> Value {
    let Value::Array(parts) = content else {
        return content;
    };
    let mut out: Vec<Value> = Vec::with_capacity(parts.len());
    for mut part in parts {
        if let Some(p) = part.as_object_mut() {
            p.remove("cache_control");
        }
        let text = (part.get("type") == Some(&json!("text")))
            .then(|| part.get("text").and_then(Value::as_str).map(str::to_string))
            .flatten();
        let last_text = out
            .last_mut()
            .filter(|l| l.get("type") == Some(&json!("text")))
            .and_then(|l| l.get_mut("text"));
        match (text, last_text) {
            (Some(text), Some(Value::String(last))) => last.push_str(&text),
            _ => out.push(part),
        }
    }
    match out.as_slice() {
        [only]
            if only.get("type") == Some(&json!("text"))
                && only.as_object().map(Map::len) == Some(2) =>
        {
            only.get("text").cloned().unwrap_or(Value::Null)
        }
        _ => Value::Array(out),
    }
}

/// JSON with every object's keys in sorted order, whatever order the map
/// type keeps them in.
fn canonical_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn call(rows: Vec<u64>, body: Value) -> Call {
        Call {
            rows,
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
            prefix: None,
            est_tokens: 0,
            est_prompt_tokens: 0,
            route: None,
        }
    }

    fn fp(scope: &str) -> Fingerprinter {
        Fingerprinter {
            scope: scope.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_same_request_has_the_same_fingerprint_whatever_its_row() {
        let f = fp("s");
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let a = f.rows(&call(vec![1], body.clone()));
        let b = f.rows(&call(vec![7], body.clone()));
        assert_eq!(a, b);
        assert_eq!(a[0].len(), HEX_LEN);
        for changed in [
            json!({"model": "m2", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "ho"}], "temperature": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1}),
            json!({"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "temperature": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "response_format": {"type": "json_object"}}),
        ] {
            assert_ne!(f.rows(&call(vec![1], changed.clone())), a, "{changed}");
        }
        assert_ne!(fp("other endpoint").rows(&call(vec![1], body)), a);
    }

    #[test]
    fn key_order_streaming_and_cache_marks_do_not_change_it() {
        let f = fp("s");
        let plain = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "Classify: good"}, {"type": "image_url", "image_url": {"url": "data:x"}}]}
        ]});
        let marked = json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Classify: ", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "good"},
                {"type": "image_url", "image_url": {"url": "data:x"}}
            ]}
        ], "stream": true, "stream_options": {"include_usage": true}, "prompt_cache_key": "aiq-1", "max_tokens": 5, "model": "m"});
        assert_eq!(
            f.rows(&call(vec![0], plain.clone())),
            f.rows(&call(vec![0], marked))
        );
        let text_only = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}
        ]}]});
        assert_eq!(
            f.rows(&call(vec![0], text_only)),
            f.rows(&call(
                vec![0],
                json!({"messages": [{"role": "user", "content": "ab"}]})
            ))
        );
        let other_image = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "Classify: good"}, {"type": "image_url", "image_url": {"url": "data:y"}}]}
        ]});
        assert_ne!(
            f.rows(&call(vec![0], plain)),
            f.rows(&call(vec![0], other_image))
        );
    }

    #[test]
    fn batched_embeddings_give_each_row_its_own_text_s_fingerprint() {
        let f = fp("s");
        let batched = f.rows(&call(
            vec![3, 4],
            json!({"model": "e", "input": ["a", "b"]}),
        ));
        let alone = f.rows(&call(vec![9], json!({"model": "e", "input": "b"})));
        assert_eq!(batched[1], alone[0]);
        assert_ne!(batched[0], batched[1]);
        // ai_similarity: one row embedding two texts is one request.
        let pair = f.rows(&call(vec![2], json!({"model": "e", "input": ["a", "b"]})));
        assert_eq!(pair.len(), 1);
        assert_ne!(pair[0], batched[0]);
    }
}

//! Deterministic JSON values that conform to a JSON Schema: what the
//! simulator answers for `response_format: json_schema` and for tool-call
//! arguments.
//!
//! Every choice (enum value, number, date) comes from a blake3 hash of the
//! prompt chained with the path inside the document, so the same prompt
//! always gets the same document and different rows get different ones.
//! Answers look like a model's: a plain string is a short word, a number
//! is small (0..=99 unless its bounds say otherwise), an enum gives one of
//! its labels. Supported: `type` (also as a list),
//! `properties`, `additionalProperties`, `items`, `enum`, `const`, `$ref`
//! into `$defs`/`definitions`, `anyOf`/`oneOf` (first non-null branch),
//! `allOf` (merged), string `format` date/date-time/time/email/uuid/uri,
//! numeric bounds, `minItems`/`maxItems`, `minLength`/`maxLength`.

use serde_json::{json, Map, Value};

/// Deeper than this (recursive `$ref`s) the generator answers `null`.
const MAX_DEPTH: u32 = 24;
/// What a plain string answer is: a short word, as a model answering
/// `sentiment: STRING` would give, picked by the row's hash.
const WORDS: [&str; 16] = [
    "positive", "negative", "neutral", "mixed", "good", "poor", "late", "broken", "fast", "slow",
    "cheap", "pricey", "billing", "shipping", "quality", "other",
];
/// Widest range of a generated number: answers stay small (0..=99 when the
/// bounds allow) even when only the type's range bounds them (INT is
/// -2^31..2^31-1 in the schema).
const SPAN: i128 = 99;

/// A value conforming to `schema`, derived from `seed` (the prompt).
pub fn generate(schema: &Value, seed: &str) -> Value {
    let gen = Gen { root: schema };
    gen.value(schema, blake3::hash(seed.as_bytes()), 0)
}

/// Makes `doc` stop conforming to its schema, for `[[sim:badjson]]`: the
/// first scalar found depth-first becomes a value of another type (a string
/// becomes a number, anything else a string), so the client's error can be
/// checked to name that path. Returns false if `doc` has no scalar.
pub fn break_first_leaf(doc: &mut Value) -> bool {
    match doc {
        Value::Object(m) => m.values_mut().any(break_first_leaf),
        Value::Array(items) => items.iter_mut().any(break_first_leaf),
        // A null conforms to whatever made it nullable; look further.
        Value::Null => false,
        Value::String(_) => {
            *doc = json!(12345);
            true
        }
        Value::Bool(_) | Value::Number(_) => {
            *doc = Value::String("[[sim:badjson]]".to_string());
            true
        }
    }
}

struct Gen<'a> {
    root: &'a Value,
}

/// A child seed: the parent's hash chained with a label (property name,
/// item index), so siblings differ.
fn child(seed: blake3::Hash, label: &str) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.update(label.as_bytes());
    h.finalize()
}

fn number_of(seed: blake3::Hash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&seed.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

fn hex(seed: blake3::Hash, chars: usize) -> String {
    seed.to_hex().chars().take(chars).collect()
}

impl Gen<'_> {
    fn value(&self, schema: &Value, seed: blake3::Hash, depth: u32) -> Value {
        let Some(obj) = schema.as_object() else {
            // `true` or a missing schema: anything goes, answer a string.
            return Value::String(self.string(&Map::new(), seed));
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let target = if r == "#" {
                Some(self.root)
            } else {
                r.strip_prefix('#').and_then(|p| self.root.pointer(p))
            };
            return match target {
                Some(t) => self.value(t, seed, depth + 1),
                None => Value::Null,
            };
        }
        if let Some(c) = obj.get("const") {
            return c.clone();
        }
        if let Some(values) = obj
            .get("enum")
            .and_then(Value::as_array)
            .filter(|v| !v.is_empty())
        {
            return values[(number_of(seed) % values.len() as u64) as usize].clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj
                .get(key)
                .and_then(Value::as_array)
                .filter(|v| !v.is_empty())
            {
                let pick = branches
                    .iter()
                    .find(|b| b.get("type").and_then(Value::as_str) != Some("null"));
                return self.value(pick.unwrap_or(&branches[0]), seed, depth + 1);
            }
        }
        if let Some(parts) = obj.get("allOf").and_then(Value::as_array) {
            return self.value(&merge_all_of(obj, parts, self.root), seed, depth + 1);
        }
        match type_of(obj) {
            "object" => self.object(obj, seed, depth),
            "array" => self.array(obj, seed, depth),
            "integer" => self.integer(obj, seed),
            "number" => self.number(obj, seed),
            "boolean" => Value::Bool(number_of(seed) & 1 == 1),
            "null" => Value::Null,
            _ => Value::String(self.string(obj, seed)),
        }
    }

    fn object(&self, obj: &Map<String, Value>, seed: blake3::Hash, depth: u32) -> Value {
        let mut out = Map::new();
        let props = obj.get("properties").and_then(Value::as_object);
        for (name, s) in props.into_iter().flatten() {
            out.insert(name.clone(), self.value(s, child(seed, name), depth + 1));
        }
        // A map (`additionalProperties` with a schema and no fixed
        // properties) gets two entries with hash-derived keys.
        if props.is_none_or(|p| p.is_empty()) {
            if let Some(values) = obj.get("additionalProperties").filter(|v| v.is_object()) {
                for i in 0..2 {
                    let s = child(seed, &format!("#entry{i}"));
                    out.insert(
                        format!("key_{}", hex(s, 6)),
                        self.value(values, s, depth + 1),
                    );
                }
            }
        }
        Value::Object(out)
    }

    fn array(&self, obj: &Map<String, Value>, seed: blake3::Hash, depth: u32) -> Value {
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let n = 2u64.max(min).min(max);
        let items = obj.get("items").cloned().unwrap_or(Value::Bool(true));
        Value::Array(
            (0..n)
                .map(|i| self.value(&items, child(seed, &format!("[{i}]")), depth + 1))
                .collect(),
        )
    }

    fn integer(&self, obj: &Map<String, Value>, seed: blake3::Hash) -> Value {
        let lo = bound(obj, "minimum", "exclusiveMinimum", 1.0).map(|v| v.ceil() as i128);
        let hi = bound(obj, "maximum", "exclusiveMaximum", -1.0).map(|v| v.floor() as i128);
        let (lo, hi) = small(lo.unwrap_or(i128::MIN), hi.unwrap_or(i128::MAX));
        let span = (hi - lo + 1) as u128;
        let v = lo + (number_of(seed) as u128 % span) as i128;
        json!(v as i64)
    }

    fn number(&self, obj: &Map<String, Value>, seed: blake3::Hash) -> Value {
        let lo = bound(obj, "minimum", "exclusiveMinimum", 0.0);
        let hi = bound(obj, "maximum", "exclusiveMaximum", 0.0);
        let (lo, hi) = match (lo, hi) {
            // Bounds within a small span are the answer's range; wider ones
            // (a type's whole range) get a window of 0..100 inside them.
            (Some(l), Some(h)) if h - l <= 100.0 => (l, h.max(l)),
            (l, h) => {
                let l = l
                    .unwrap_or(f64::MIN)
                    .max(0.0)
                    .min(h.unwrap_or(f64::MAX) - 100.0);
                (l, l + 100.0)
            }
        };
        // Strictly inside the range, so exclusive bounds hold too.
        let frac = (number_of(seed) % 9_998 + 1) as f64 / 10_000.0;
        let v = lo + frac * (hi - lo);
        json!(v)
    }

    fn string(&self, obj: &Map<String, Value>, seed: blake3::Hash) -> String {
        let n = number_of(seed);
        let date = || {
            format!(
                "{}-{:02}-{:02}",
                2020 + n % 6,
                1 + (n >> 8) % 12,
                1 + (n >> 16) % 28
            )
        };
        let time = || {
            format!(
                "{:02}:{:02}:{:02}",
                (n >> 24) % 24,
                (n >> 32) % 60,
                (n >> 40) % 60
            )
        };
        let h = seed.to_hex();
        let s = match obj.get("format").and_then(Value::as_str) {
            Some("date") => date(),
            Some("date-time") => format!("{}T{}Z", date(), time()),
            Some("time") => time(),
            Some("email") => format!("user.{}@example.com", &h[..8]),
            Some("uuid") => format!(
                "{}-{}-4{}-8{}-{}",
                &h[..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            ),
            Some("uri") | Some("url") => format!("https://example.com/{}", &h[..8]),
            _ => WORDS[(n % WORDS.len() as u64) as usize].to_owned(),
        };
        fit_length(s, obj)
    }
}

/// A window of at most [`SPAN`] + 1 integers inside `lo..=hi`: 0..=99
/// when the bounds allow, else the end nearest zero.
fn small(lo: i128, hi: i128) -> (i128, i128) {
    let hi = hi.max(lo);
    if hi < 0 {
        ((hi - SPAN).max(lo), hi)
    } else {
        let start = lo.max(0);
        (start, (start + SPAN).min(hi))
    }
}

/// `minimum`/`maximum`, or the exclusive form nudged inwards by `nudge`.
fn bound(obj: &Map<String, Value>, inclusive: &str, exclusive: &str, nudge: f64) -> Option<f64> {
    obj.get(inclusive).and_then(Value::as_f64).or_else(|| {
        obj.get(exclusive)
            .and_then(Value::as_f64)
            .map(|v| v + nudge)
    })
}

/// Pads with 'x' or cuts (on a char boundary) to honour min/maxLength.
fn fit_length(mut s: String, obj: &Map<String, Value>) -> String {
    if let Some(max) = obj.get("maxLength").and_then(Value::as_u64) {
        s = s.chars().take(max as usize).collect();
    }
    if let Some(min) = obj.get("minLength").and_then(Value::as_u64) {
        while (s.chars().count() as u64) < min {
            s.push('x');
        }
    }
    s
}

/// The schema's type: `type` itself, the first non-null of a type list, or
/// a guess from the keywords present.
fn type_of(obj: &Map<String, Value>) -> &str {
    match obj.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if obj.contains_key("properties") || obj.contains_key("additionalProperties") => "object",
        _ if obj.contains_key("items") => "array",
        _ => "string",
    }
}

/// `allOf` as one schema: the parent's keywords plus every part's, with
/// `properties` united (parts given by `$ref` are resolved first).
fn merge_all_of(parent: &Map<String, Value>, parts: &[Value], root: &Value) -> Value {
    let mut merged = parent.clone();
    merged.remove("allOf");
    let mut props = merged
        .remove("properties")
        .and_then(|p| p.as_object().cloned())
        .unwrap_or_default();
    for part in parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix('#')
                .and_then(|p| root.pointer(p))
                .unwrap_or(part),
            None => part,
        };
        let Some(p) = part.as_object() else { continue };
        for (k, v) in p {
            if k == "properties" {
                if let Some(ps) = v.as_object() {
                    props.extend(ps.clone());
                }
            } else {
                merged.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    if !props.is_empty() {
        merged.insert("properties".into(), Value::Object(props));
    }
    Value::Object(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["pos", "neg", "neutral"]},
                "when": {"type": "string", "format": "date"},
                "at": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "count": {"type": "integer", "minimum": 3, "maximum": 5},
                "ok": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 10},
                "scores": {"type": "object", "additionalProperties": {"type": "integer"}},
                "item": {"$ref": "#/$defs/Item"}
            },
            "required": ["label"],
            "$defs": {"Item": {"type": "object", "properties": {"name": {"type": "string"}}}}
        })
    }

    #[test]
    fn conforms_and_is_deterministic() {
        let v = generate(&schema(), "prompt one");
        assert_eq!(v, generate(&schema(), "prompt one"));
        assert!(["pos", "neg", "neutral"].contains(&v["label"].as_str().unwrap()));
        let when = v["when"].as_str().unwrap();
        assert_eq!(when.len(), 10);
        assert_eq!(&when[4..5], "-");
        let at = v["at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
        assert_eq!(v["tags"].as_array().unwrap().len(), 2);
        assert!(WORDS.contains(&v["tags"][0].as_str().unwrap()));
        let score = v["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!((3..=5).contains(&v["count"].as_i64().unwrap()));
        assert!(v["ok"].is_boolean());
        assert!(v["note"].as_str().unwrap().chars().count() <= 10);
        let scores = v["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 2);
        assert!(scores.values().all(Value::is_i64));
        assert!(v["item"]["name"].is_string());
        assert_ne!(v, generate(&schema(), "prompt two"));
    }

    /// Issue 27.10: typed answers look like answers: a short word for a
    /// string, a small integer even when only the type's range bounds it,
    /// a label from an enum; the same for the same row.
    #[test]
    fn typed_answers_are_plausible_for_their_type() {
        let s = json!({"type": "object", "properties": {
            "sentiment": {"type": "string"},
            "score": {"type": "integer", "minimum": -2147483648i64, "maximum": 2147483647i64},
            "big": {"type": "integer", "minimum": -9223372036854775808i64},
            "ratio": {"type": "number", "minimum": -3.4e38, "maximum": 3.4e38},
            "label": {"enum": ["billing", "shipping"]}
        }});
        for row in 0..20 {
            let prompt = format!("Rate: row-{row} says the product is fine");
            let v = generate(&s, &prompt);
            assert_eq!(v, generate(&s, &prompt), "deterministic");
            let word = v["sentiment"].as_str().unwrap();
            assert!(WORDS.contains(&word), "{v}");
            for k in ["score", "big"] {
                assert!((0..=99).contains(&v[k].as_i64().unwrap()), "{v}");
            }
            assert!((0.0..=100.0).contains(&v["ratio"].as_f64().unwrap()), "{v}");
            assert!(["billing", "shipping"].contains(&v["label"].as_str().unwrap()));
        }
    }

    #[test]
    fn break_first_leaf_changes_one_leaf_type() {
        let mut v = json!({"a": null, "b": {"c": 3, "d": "x"}});
        assert!(break_first_leaf(&mut v));
        assert_eq!(
            v,
            json!({"a": null, "b": {"c": "[[sim:badjson]]", "d": "x"}})
        );
        let mut s = json!(["x"]);
        assert!(break_first_leaf(&mut s));
        assert_eq!(s, json!([12345]));
        assert!(!break_first_leaf(&mut json!({"e": []})));
    }

    #[test]
    fn recursive_refs_stop() {
        let s = json!({"$ref": "#/$defs/N", "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}});
        let v = generate(&s, "p");
        assert!(v.is_object());
    }
}

//! Databricks SQL result types: what `returnType` / `responseFormat` name and
//! what a reply must become before it is written.
//!
//! This module owns the three views of one result type and keeps them in
//! step: the DDL spelling users write (`ARRAY<STRUCT<name: STRING>>`), the
//! Arrow type of the output column, and the JSON Schema sent to the endpoint
//! as a strict structured output. It also owns turning a model's reply into a
//! JSON value of that type ([`SqlType::parse_reply`]). The value is
//! *normalised*, not merely checked: whatever `parse_reply` returns, wrapped
//! as `{"result": value}`, decodes with `arrow_json` into
//! [`SqlType::arrow_type`] without error, so the sink never meets a row it
//! cannot write.
//!
//! No date library: dates and timestamps are parsed and printed by hand (the
//! proleptic Gregorian calendar, years 0001–9999 as in Databricks), so the
//! exact accepted grammar is visible here.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde_json::{json, Map, Number, Value};

/// A Databricks SQL type that a result can have. `Map` keys are always
/// `STRING` (JSON object keys), so only the value type is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlType {
    String,
    Int,
    BigInt,
    Float,
    Double,
    Boolean,
    Date,
    Timestamp,
    Array(Box<SqlType>),
    Map(Box<SqlType>),
    Struct(Vec<(String, SqlType)>),
}

/// Nesting deeper than this is refused, in DDL and in JSON schemas, so that
/// hostile input cannot overflow the stack of the recursive parsers.
const MAX_DEPTH: usize = 64;

/// The time zone of TIMESTAMP columns. Spelled as an offset, not `"UTC"`:
/// without arrow's `chrono-tz` feature, arrow-json refuses to build a decoder
/// for a named zone. Parquet stores either as "adjusted to UTC", which is
/// what DuckDB, pandas and Spark read.
pub const UTC: &str = "+00:00";

/// The name of the wrapper property for non-STRUCT results: strict
/// structured outputs need an object at the root.
const RESULT: &str = "result";

impl SqlType {
    /// The Arrow type of the output column. Chosen so DuckDB, pandas and
    /// Spark all read it: lists use the conventional `item` field, maps the
    /// Parquet `entries`/`key`/`value` names, and everything below the root
    /// is nullable (a model may always leave a value out).
    pub fn arrow_type(&self) -> DataType {
        match self {
            SqlType::String => DataType::Utf8,
            SqlType::Int => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Float => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::Boolean => DataType::Boolean,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            SqlType::Array(item) => {
                DataType::List(Arc::new(Field::new("item", item.arrow_type(), true)))
            }
            SqlType::Map(value) => {
                let entries = Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", value.arrow_type(), true),
                ]);
                // Keys are not sorted: arrow-json cannot decode sorted maps,
                // and a model's key order is not sorted anyway.
                DataType::Map(
                    Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                    false,
                )
            }
            SqlType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|(name, t)| Field::new(name, t.arrow_type(), true))
                    .collect::<Fields>(),
            ),
        }
    }

    /// The JSON Schema of a value of this type, in the subset that strict
    /// structured outputs accept. INT and FLOAT carry their ranges as
    /// `minimum`/`maximum`: that constrains the model and is also how
    /// [`SqlType::from_json_schema`] tells them from BIGINT and DOUBLE.
    pub fn json_schema(&self) -> Value {
        match self {
            SqlType::String => json!({"type": "string"}),
            SqlType::Int => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
            SqlType::BigInt => json!({"type": "integer"}),
            SqlType::Float => {
                json!({"type": "number", "minimum": -(f32::MAX as f64), "maximum": f32::MAX as f64})
            }
            SqlType::Double => json!({"type": "number"}),
            SqlType::Boolean => json!({"type": "boolean"}),
            SqlType::Date => json!({"type": "string", "format": "date"}),
            SqlType::Timestamp => json!({"type": "string", "format": "date-time"}),
            SqlType::Array(item) => json!({"type": "array", "items": item.json_schema()}),
            SqlType::Map(value) => {
                json!({"type": "object", "additionalProperties": value.json_schema()})
            }
            SqlType::Struct(fields) => object_schema(
                fields
                    .iter()
                    .map(|(name, t)| (name.as_str(), t.json_schema())),
            ),
        }
    }

    /// The `response_format` of a chat request that makes the model answer
    /// with a value of this type. A STRUCT is the root object itself; any
    /// other type is wrapped as `{"result": value}` because strict mode
    /// requires an object at the root.
    pub fn response_format(&self) -> Value {
        let schema = match self {
            SqlType::Struct(_) => self.json_schema(),
            _ => object_schema([(RESULT, self.json_schema())]),
        };
        json!({"type": "json_schema", "json_schema": {"name": RESULT, "schema": schema, "strict": true}})
    }

    pub fn is_string(&self) -> bool {
        matches!(self, SqlType::String)
    }

    /// Turns a model's reply into a JSON value of this type, normalised so
    /// that arrow-json decodes it (see the module docs).
    ///
    /// STRING results are the reply text exactly as received: no JSON
    /// parsing, no trimming. Other types tolerate surrounding whitespace and
    /// a Markdown code fence, accept the `{"result": x}` wrapper that
    /// [`SqlType::response_format`] asks for as well as a bare value, and for
    /// scalars also an unquoted reply (`42`, `true`, `2024-05-01`).
    pub fn parse_reply(&self, text: &str) -> Result<Value, String> {
        if self.is_string() {
            return Ok(Value::String(text.to_string()));
        }
        let body = strip_fences(text);
        let value = match serde_json::from_str::<Value>(body) {
            Ok(v) => v,
            // Not JSON: a scalar may still be written bare (`2024-05-01`,
            // `True`); read it as the text it is.
            Err(_) if self.is_scalar() => Value::String(body.to_string()),
            Err(e) => {
                return Err(format!(
                    "{RESULT}: expected {self} as JSON, reply is not JSON ({e}): {}",
                    snippet(body)
                ))
            }
        };
        match self {
            SqlType::Struct(fields) => {
                // A model that wrapped the object anyway: unwrap only when the
                // struct has no field of that name, or the wrapper would eat data.
                let has_result_field = fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(RESULT));
                match single_result(&value) {
                    Some(inner @ Value::Object(_)) if !has_result_field => self.normalize(inner),
                    _ => self.normalize(&value),
                }
            }
            _ => match single_result(&value) {
                // Wrapped as asked; if the inner value does not fit, the
                // whole reply may still be a bare value (a MAP whose only key
                // is "result"), but the wrapped reading's error is the one to
                // report.
                Some(inner) => self
                    .normalize(inner)
                    .or_else(|e| self.normalize(&value).map_err(|_| e)),
                None => self.normalize(&value),
            },
        }
    }

    /// Checks and normalises a JSON value against this type (see
    /// [`SqlType::parse_reply`]); errors name the path from `result`.
    pub fn normalize(&self, value: &Value) -> Result<Value, String> {
        normalize_at(self, value, &mut RESULT.to_string())
    }

    /// The type a JSON Schema describes: the inverse of
    /// [`SqlType::json_schema`], and lenient enough for hand-written schemas
    /// (`["string", "null"]` unions, `anyOf` with null, string enums, local
    /// `$ref`s). Object properties keep the order of `required`, since JSON
    /// objects (and serde_json maps) do not keep an order of their own.
    pub fn from_json_schema(schema: &Value) -> Result<SqlType, String> {
        schema_to_type(schema, schema, "#", 0)
    }

    fn is_scalar(&self) -> bool {
        !matches!(
            self,
            SqlType::Array(_) | SqlType::Map(_) | SqlType::Struct(_)
        )
    }
}

/// `--response-format`: a JSON document (a JSON Schema, or a whole
/// `response_format` object to send as is) or a DDL type (`STRUCT<...>`).
/// Returns the result type and the `response_format` to send.
pub fn parse_response_format(s: &str) -> Result<(SqlType, Value), String> {
    let trimmed = s.trim();
    if !trimmed.starts_with('{') {
        let t: SqlType = trimmed.parse()?;
        let rf = t.response_format();
        return Ok((t, rf));
    }
    let doc: Value = serde_json::from_str(trimmed)
        .map_err(|e| format!("--response-format is not valid JSON: {e}"))?;
    // A whole response_format: {"type": "json_schema", "json_schema": {...}}.
    if doc.get("type").and_then(Value::as_str) == Some("json_schema") {
        let schema = doc.pointer("/json_schema/schema").ok_or(
            "--response-format: a response_format of type json_schema needs json_schema.schema",
        )?;
        let t = SqlType::from_json_schema(schema).map_err(|e| format!("--response-format: {e}"))?;
        return Ok((t, doc));
    }
    // The inner json_schema object: {"name": ..., "schema": {...}}.
    if let (Some(schema @ Value::Object(_)), Some(_)) = (doc.get("schema"), doc.get("name")) {
        let t = SqlType::from_json_schema(schema).map_err(|e| format!("--response-format: {e}"))?;
        return Ok((t, json!({"type": "json_schema", "json_schema": doc})));
    }
    let t = SqlType::from_json_schema(&doc).map_err(|e| format!("--response-format: {e}"))?;
    let rf = json!({"type": "json_schema", "json_schema": {"name": RESULT, "schema": doc, "strict": true}});
    Ok((t, rf))
}

/// A strict object schema: every property required, nothing else allowed.
fn object_schema<'a>(props: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, schema) in props {
        properties.insert(name.to_string(), schema);
        required.push(Value::String(name.to_string()));
    }
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// `x` when `value` is exactly `{"result": x}`.
fn single_result(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(m) if m.len() == 1 => m.get(RESULT),
        _ => None,
    }
}

/// The reply without surrounding whitespace or a Markdown code fence
/// (```` ```json ... ``` ````), which chat models add out of habit.
pub(crate) fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    // The info string (`json`) runs to the end of the first line.
    let body = match rest.find('\n') {
        Some(i) => &rest[i + 1..],
        None => rest.trim_start_matches(|c: char| c.is_ascii_alphabetic()),
    };
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

/// A value quoted for an error message, cut short so one bad reply cannot
/// flood a log or an error column.
pub(crate) fn snippet(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

/// "number 3", "string \"abc\"", "array": what a value is, for errors.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", snippet(s)),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

fn normalize_at(t: &SqlType, v: &Value, path: &mut String) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let mismatch = |path: &str| format!("{path}: expected {t}, got {}", describe(v));
    match t {
        SqlType::String => v
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| mismatch(path)),
        SqlType::Int => {
            let n = integer(v).ok_or_else(|| mismatch(path))?;
            i32::try_from(n)
                .map(Value::from)
                .map_err(|_| format!("{path}: {n} is out of range for INT"))
        }
        SqlType::BigInt => {
            let n = integer(v).ok_or_else(|| mismatch(path))?;
            i64::try_from(n)
                .map(Value::from)
                .map_err(|_| format!("{path}: {n} is out of range for BIGINT"))
        }
        SqlType::Float | SqlType::Double => {
            let f = float(v).ok_or_else(|| mismatch(path))?;
            if matches!(t, SqlType::Float) && f.abs() > f32::MAX as f64 {
                return Err(format!("{path}: {f} is out of range for FLOAT"));
            }
            // Keep integers as integers: arrow parses both, and 42 stays 42.
            match v {
                Value::Number(n) => Ok(Value::Number(n.clone())),
                _ => Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| mismatch(path)),
            }
        }
        SqlType::Boolean => match v {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(mismatch(path)),
        },
        SqlType::Date => {
            let s = v.as_str().ok_or_else(|| mismatch(path))?.trim();
            let bad = || format!("{path}: expected DATE (YYYY-MM-DD), got {}", describe(v));
            let (date, rest) = parse_date_prefix(s).ok_or_else(bad)?;
            // A date-time is cut to its date as written (no shift to UTC),
            // but only if the time part is a valid time.
            if !rest.is_empty() && normalize_timestamp(s).is_err() {
                return Err(bad());
            }
            Ok(Value::String(format_date(date)))
        }
        SqlType::Timestamp => {
            let s = v.as_str().ok_or_else(|| mismatch(path))?;
            normalize_timestamp(s.trim())
                .map(Value::String)
                .map_err(|e| format!("{path}: {e}"))
        }
        SqlType::Array(item) => {
            let items = v.as_array().ok_or_else(|| mismatch(path))?;
            let len = path.len();
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                let r = normalize_at(item, x, path);
                path.truncate(len);
                out.push(r?);
            }
            Ok(Value::Array(out))
        }
        SqlType::Map(value) => {
            let m = v.as_object().ok_or_else(|| mismatch(path))?;
            let len = path.len();
            let mut out = Map::new();
            for (k, x) in m {
                path.push_str(&format!("[{k:?}]"));
                let r = normalize_at(value, x, path);
                path.truncate(len);
                out.insert(k.clone(), r?);
            }
            Ok(Value::Object(out))
        }
        SqlType::Struct(fields) => {
            let m = v.as_object().ok_or_else(|| mismatch(path))?;
            let len = path.len();
            let mut out = Map::new();
            for (name, ft) in fields {
                // Exact name first; models sometimes change the case of a
                // key, and SQL field names are case-insensitive anyway.
                let x = m.get(name).or_else(|| {
                    let mut found = m.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
                    match (found.next(), found.next()) {
                        (Some((_, x)), None) => Some(x),
                        _ => None,
                    }
                });
                let r = match x {
                    Some(x) => {
                        path.push('.');
                        path.push_str(name);
                        let r = normalize_at(ft, x, path);
                        path.truncate(len);
                        r?
                    }
                    None => Value::Null,
                };
                out.insert(name.clone(), r);
            }
            Ok(Value::Object(out))
        }
    }
}

/// An integer from a JSON integer, an integral float (`3.0`) or a numeric
/// string (`"42"`); i128 so that range errors can quote the number.
fn integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i as i128)
            } else if let Some(u) = n.as_u64() {
                Some(u as i128)
            } else {
                let f = n.as_f64()?;
                // Beyond ±2^100 the value is out of range for every SQL
                // integer anyway; the bound keeps the cast exact.
                (f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
            }
        }
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i128>()
                .ok()
                .or_else(|| integer(&Value::Number(s.parse::<Number>().ok()?)))
        }
        _ => None,
    }
}

/// A finite float from a JSON number or a numeric string.
fn float(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

type Date = (i64, u32, u32);

/// `YYYY-MM-DD` at the start of `s` (a valid calendar date, years
/// 0001-9999) and the rest of the string.
fn parse_date_prefix(s: &str) -> Option<(Date, &str)> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let m = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    let date = (y, m, d);
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    // A date followed by a time ("accept a date-time and cut"), nothing else.
    let rest = &s[10..];
    match rest.chars().next() {
        None => Some((date, rest)),
        Some('T' | 't' | ' ') => Some((date, rest)),
        Some(_) => None,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn format_date((y, m, d): Date) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil((y, m, d): Date) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> Date {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An RFC 3339-like timestamp as RFC 3339 in UTC with microseconds at most
/// (the precision of the Arrow column): `2024-05-01T12:30:00.5+02:00` →
/// `2024-05-01T10:30:00.500000Z`. Accepted: `T`, `t` or a space between
/// date and time; seconds and fraction optional; zone `Z`, `±HH:MM`,
/// `±HHMM`, `±HH`, ` UTC` or none (taken as UTC); a date alone is midnight.
fn normalize_timestamp(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "expected TIMESTAMP (YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]), got string {}",
            snippet(s)
        )
    };
    let (date, rest) = parse_date_prefix(s).ok_or_else(bad)?;
    let mut micros_of_day: i64 = 0;
    let mut offset_secs: i64 = 0;
    if !rest.is_empty() {
        let b = &rest.as_bytes()[1..];
        let two = |i: usize| b.get(i..i + 2).and_then(digits).map(i64::from);
        let (h, mi) = (two(0).ok_or_else(bad)?, two(3).ok_or_else(bad)?);
        if b.get(2) != Some(&b':') || h > 23 || mi > 59 {
            return Err(bad());
        }
        let mut i = 5;
        let mut sec = 0;
        if b.get(i) == Some(&b':') {
            sec = two(i + 1).filter(|s| *s <= 59).ok_or_else(bad)?;
            i += 3;
        }
        let mut frac_micros = 0;
        if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let frac = &b[start..i];
            if frac.is_empty() || frac.len() > 9 {
                return Err(bad());
            }
            // Microseconds: the first six digits, padded; finer is cut.
            for k in 0..6 {
                frac_micros = frac_micros * 10 + frac.get(k).map_or(0, |c| i64::from(c - b'0'));
            }
        }
        micros_of_day = ((h * 60 + mi) * 60 + sec) * 1_000_000 + frac_micros;
        let zone = std::str::from_utf8(&b[i..]).map_err(|_| bad())?;
        offset_secs = match zone.trim_start() {
            "" | "Z" | "z" | "UTC" | "utc" => 0,
            z => {
                let (sign, hm) = match z.as_bytes()[0] {
                    b'+' => (1, &z[1..]),
                    b'-' => (-1, &z[1..]),
                    _ => return Err(bad()),
                };
                let hm = hm.replace(':', "");
                let (oh, om) = match hm.len() {
                    2 => (digits(hm.as_bytes()), Some(0)),
                    4 => (digits(&hm.as_bytes()[..2]), digits(&hm.as_bytes()[2..])),
                    _ => (None, None),
                };
                let (oh, om) = (oh.ok_or_else(bad)?, om.ok_or_else(bad)?);
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                sign * i64::from(oh * 3600 + om * 60)
            }
        };
    }
    const DAY: i64 = 86_400 * 1_000_000;
    let utc = days_from_civil(date) * DAY + micros_of_day - offset_secs * 1_000_000;
    let (y, m, d) = civil_from_days(utc.div_euclid(DAY));
    if !(1..=9999).contains(&y) {
        return Err(format!(
            "timestamp {} is out of range in UTC (years 0001-9999)",
            snippet(s)
        ));
    }
    let t = utc.rem_euclid(DAY);
    let (secs, micros) = (t / 1_000_000, t % 1_000_000);
    let mut out = format!(
        "{}T{:02}:{:02}:{:02}",
        format_date((y, m, d)),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    out.push('Z');
    Ok(out)
}

/// A point in time as RFC 3339 in UTC, to the second: `2026-12-06T19:49:04Z`
/// (what APIs stamp on the objects they return).
pub fn format_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_date(civil_from_days(days)),
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// An RFC 3339 timestamp (any zone, as [`normalize_timestamp`] reads it)
/// as a point in time; `None` if it is not one or precedes 1970.
pub fn parse_utc(s: &str) -> Option<std::time::SystemTime> {
    let utc = normalize_timestamp(s).ok()?;
    let num = |r: std::ops::Range<usize>| utc.get(r)?.parse::<i64>().ok();
    let days = days_from_civil((num(0..4)?, num(5..7)? as u32, num(8..10)? as u32));
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let micros = utc
        .get(20..26)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    let secs = u64::try_from(secs).ok()?;
    Some(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(secs)
            + std::time::Duration::from_micros(micros),
    )
}

fn schema_to_type(
    schema: &Value,
    root: &Value,
    path: &str,
    depth: usize,
) -> Result<SqlType, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{path}: schema nested deeper than {MAX_DEPTH} levels (a recursive $ref?)"
        ));
    }
    let obj = schema
        .as_object()
        .ok_or_else(|| format!("{path}: expected a schema object, got {}", describe(schema)))?;
    if let Some(r) = obj.get("$ref") {
        let target = r
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p))
            .ok_or_else(|| {
                format!("{path}: cannot resolve $ref {r} (only local refs like \"#/$defs/Name\")")
            })?;
        return schema_to_type(target, root, path, depth + 1);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = obj.get(key) {
            let branches = branches
                .as_array()
                .ok_or_else(|| format!("{path}: {key} must be an array"))?;
            let non_null: Vec<&Value> = branches
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            return match non_null.as_slice() {
                [one] => schema_to_type(one, root, &format!("{path}/{key}"), depth + 1),
                _ => Err(format!(
                    "{path}: {key} with more than one non-null branch has no SQL type"
                )),
            };
        }
    }
    // A string enum (how ai_classify constrains labels) or constant.
    let string_enum = match obj.get("enum") {
        Some(Value::Array(vs)) => {
            vs.iter().any(Value::is_string) && vs.iter().all(|v| v.is_string() || v.is_null())
        }
        _ => false,
    };
    if string_enum || obj.get("const").is_some_and(Value::is_string) {
        return Ok(SqlType::String);
    }
    let ty = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match names.as_slice() {
                [one] => *one,
                _ => {
                    return Err(format!(
                        "{path}: type {} has no SQL type (one type, or one type and null)",
                        Value::Array(ts.clone())
                    ))
                }
            }
        }
        None if obj.contains_key("properties") => "object",
        None if obj.contains_key("items") => "array",
        _ => return Err(format!("{path}: schema has no \"type\"")),
    };
    let bound = |k: &str| obj.get(k).and_then(Value::as_f64);
    Ok(match ty {
        "string" => match obj.get("format").and_then(Value::as_str) {
            Some("date") => SqlType::Date,
            Some("date-time") => SqlType::Timestamp,
            _ => SqlType::String,
        },
        // Any range that fits 32 bits is an INT: lossless, and it is what
        // json_schema writes for INT.
        "integer" => match (bound("minimum"), bound("maximum")) {
            (Some(lo), Some(hi)) if lo >= i32::MIN as f64 && hi <= i32::MAX as f64 => SqlType::Int,
            _ => SqlType::BigInt,
        },
        // Only the exact FLOAT range written by json_schema means FLOAT: a
        // hand-written range like [0, 1] should not lose precision.
        "number" => match (bound("minimum"), bound("maximum")) {
            (Some(lo), Some(hi)) if lo == -(f32::MAX as f64) && hi == f32::MAX as f64 => SqlType::Float,
            _ => SqlType::Double,
        },
        "boolean" => SqlType::Boolean,
        "array" => {
            let items = obj.get("items").ok_or_else(|| format!("{path}: array schema needs \"items\""))?;
            SqlType::Array(Box::new(schema_to_type(items, root, &format!("{path}/items"), depth + 1)?))
        }
        "object" => match obj.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => {
                // Field order: as listed in "required", then the rest.
                let mut names: Vec<&str> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).filter(|n| props.contains_key(*n)).collect())
                    .unwrap_or_default();
                let mut rest: Vec<&str> = props.keys().map(String::as_str).filter(|k| !names.contains(k)).collect();
                rest.sort_unstable();
                names.extend(rest);
                let mut fields = Vec::with_capacity(names.len());
                for name in names {
                    let sub = &props[name];
                    fields.push((name.to_string(), schema_to_type(sub, root, &format!("{path}/properties/{name}"), depth + 1)?));
                }
                SqlType::Struct(fields)
            }
            _ => match obj.get("additionalProperties") {
                Some(v @ Value::Object(_)) => {
                    SqlType::Map(Box::new(schema_to_type(v, root, &format!("{path}/additionalProperties"), depth + 1)?))
                }
                _ => return Err(format!("{path}: object schema needs \"properties\" (a STRUCT) or an \"additionalProperties\" schema (a MAP)")),
            },
        },
        other => return Err(format!("{path}: type {other:?} has no SQL type")),
    })
}

/// Canonical DDL: `ARRAY<STRUCT<name: STRING>>`. Parses back to the same type.
impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::String => f.write_str("STRING"),
            SqlType::Int => f.write_str("INT"),
            SqlType::BigInt => f.write_str("BIGINT"),
            SqlType::Float => f.write_str("FLOAT"),
            SqlType::Double => f.write_str("DOUBLE"),
            SqlType::Boolean => f.write_str("BOOLEAN"),
            SqlType::Date => f.write_str("DATE"),
            SqlType::Timestamp => f.write_str("TIMESTAMP"),
            SqlType::Array(t) => write!(f, "ARRAY<{t}>"),
            SqlType::Map(t) => write!(f, "MAP<STRING, {t}>"),
            SqlType::Struct(fields) => {
                f.write_str("STRUCT<")?;
                for (i, (name, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        write!(f, "{name}: {t}")?;
                    } else {
                        write!(f, "`{}`: {t}", name.replace('`', "``"))?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

impl FromStr for SqlType {
    type Err = String;

    /// Parses a Databricks DDL type, case-insensitively, e.g.
    /// `STRUCT<name STRING, tags: ARRAY<VARCHAR(20)>>`.
    fn from_str(s: &str) -> Result<SqlType, String> {
        let mut p = DdlParser {
            input: s,
            tokens: tokenize(s)?,
            next: 0,
        };
        let t = p.parse_type(0)?;
        match p.peek() {
            None => Ok(t),
            Some(tok) => Err(p.error_at(
                tok.pos,
                &format!("unexpected {} after the type", tok.show()),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A keyword, an identifier or a number.
    Word(String),
    /// A backquoted name, with ``` `` ``` unescaped.
    Quoted(String),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based character position, for messages.
    pos: usize,
}

impl Token {
    fn show(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("\"{w}\""),
            Tok::Quoted(q) => format!("`{q}`"),
            Tok::Punct(c) => format!("\"{c}\""),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Word(chars[start..i].iter().collect()),
                pos,
            });
        } else if c == '`' {
            let mut name = String::new();
            i += 1;
            loop {
                match (chars.get(i), chars.get(i + 1)) {
                    (Some('`'), Some('`')) => {
                        name.push('`');
                        i += 2;
                    }
                    (Some('`'), _) => {
                        i += 1;
                        break;
                    }
                    (Some(ch), _) => {
                        name.push(*ch);
                        i += 1;
                    }
                    (None, _) => {
                        return Err(format!(
                            "unterminated backquoted name at position {pos} in {s:?}"
                        ))
                    }
                }
            }
            tokens.push(Token {
                tok: Tok::Quoted(name),
                pos,
            });
        } else if "<>,:()".contains(c) {
            tokens.push(Token {
                tok: Tok::Punct(c),
                pos,
            });
            i += 1;
        } else {
            return Err(format!(
                "unexpected character {c:?} at position {pos} in {s:?}"
            ));
        }
    }
    Ok(tokens)
}

struct DdlParser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    next: usize,
}

impl DdlParser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn error_at(&self, pos: usize, msg: &str) -> String {
        format!("{msg} at position {pos} in {:?}", self.input)
    }

    /// Position just past the input, for "found end of input".
    fn end_pos(&self) -> usize {
        self.input.chars().count() + 1
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.next).cloned();
        self.next += 1;
        t
    }

    fn expect(&mut self, c: char, context: &str) -> Result<(), String> {
        match self.bump() {
            Some(Token {
                tok: Tok::Punct(p), ..
            }) if p == c => Ok(()),
            Some(t) => Err(self.error_at(
                t.pos,
                &format!("expected \"{c}\" {context}, found {}", t.show()),
            )),
            None => Err(self.error_at(
                self.end_pos(),
                &format!("expected \"{c}\" {context}, found end of input"),
            )),
        }
    }

    fn parse_type(&mut self, depth: usize) -> Result<SqlType, String> {
        let (word, pos) = match self.bump() {
            Some(Token {
                tok: Tok::Word(w),
                pos,
            }) => (w, pos),
            Some(t) => {
                return Err(self.error_at(t.pos, &format!("expected a type, found {}", t.show())))
            }
            None => {
                return Err(self.error_at(self.end_pos(), "expected a type, found end of input"))
            }
        };
        if depth > MAX_DEPTH {
            return Err(self.error_at(pos, &format!("type nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(match word.to_ascii_uppercase().as_str() {
            "STRING" => SqlType::String,
            "VARCHAR" | "CHAR" => {
                // The length is a Databricks constraint on input; results
                // are unbounded strings either way.
                self.expect('(', &format!("after {}", word.to_ascii_uppercase()))?;
                match self.bump() {
                    Some(Token {
                        tok: Tok::Word(n), ..
                    }) if n.chars().all(|c| c.is_ascii_digit()) => {}
                    Some(t) => {
                        return Err(
                            self.error_at(t.pos, &format!("expected a length, found {}", t.show()))
                        )
                    }
                    None => {
                        return Err(
                            self.error_at(self.end_pos(), "expected a length, found end of input")
                        )
                    }
                }
                self.expect(')', "after the length")?;
                SqlType::String
            }
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" | "LONG" => SqlType::BigInt,
            "FLOAT" | "REAL" => SqlType::Float,
            "DOUBLE" => SqlType::Double,
            "BOOLEAN" | "BOOL" => SqlType::Boolean,
            "DATE" => SqlType::Date,
            "TIMESTAMP" | "TIMESTAMP_LTZ" => SqlType::Timestamp,
            "ARRAY" => {
                self.expect('<', "after ARRAY")?;
                let item = self.parse_type(depth + 1)?;
                self.expect('>', "to close ARRAY<")?;
                SqlType::Array(Box::new(item))
            }
            "MAP" => {
                self.expect('<', "after MAP")?;
                let key_pos = self.peek().map_or(self.end_pos(), |t| t.pos);
                let key = self.parse_type(depth + 1)?;
                if key != SqlType::String {
                    return Err(self.error_at(
                        key_pos,
                        &format!(
                            "MAP keys must be STRING (JSON object keys are strings), got {key}"
                        ),
                    ));
                }
                self.expect(',', "between the MAP key and value types")?;
                let value = self.parse_type(depth + 1)?;
                self.expect('>', "to close MAP<")?;
                SqlType::Map(Box::new(value))
            }
            "STRUCT" => {
                self.expect('<', "after STRUCT")?;
                let mut fields: Vec<(String, SqlType)> = Vec::new();
                loop {
                    let (name, name_pos) = match self.bump() {
                        Some(Token {
                            tok: Tok::Word(w) | Tok::Quoted(w),
                            pos,
                        }) => (w, pos),
                        Some(t) => {
                            return Err(self.error_at(
                                t.pos,
                                &format!("expected a field name, found {}", t.show()),
                            ))
                        }
                        None => {
                            return Err(self.error_at(
                                self.end_pos(),
                                "expected a field name, found end of input",
                            ))
                        }
                    };
                    if name.is_empty() {
                        return Err(self.error_at(name_pos, "empty field name"));
                    }
                    if fields.iter().any(|(n, _)| *n == name) {
                        return Err(
                            self.error_at(name_pos, &format!("duplicate field name \"{name}\""))
                        );
                    }
                    if matches!(
                        self.peek(),
                        Some(Token {
                            tok: Tok::Punct(':'),
                            ..
                        })
                    ) {
                        self.next += 1;
                    }
                    let t = self.parse_type(depth + 1)?;
                    fields.push((name, t));
                    match self.bump() {
                        Some(Token {
                            tok: Tok::Punct(','),
                            ..
                        }) => continue,
                        Some(Token {
                            tok: Tok::Punct('>'),
                            ..
                        }) => break,
                        Some(t) => {
                            return Err(self.error_at(
                                t.pos,
                                &format!("expected \",\" or \">\" in STRUCT, found {}", t.show()),
                            ))
                        }
                        None => {
                            return Err(self.error_at(
                                self.end_pos(),
                                "expected \",\" or \">\" in STRUCT, found end of input",
                            ))
                        }
                    }
                }
                SqlType::Struct(fields)
            }
            _ => return Err(self.error_at(pos, &format!("unknown type \"{word}\""))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef};
    use arrow::datatypes::Schema;
    use arrow::util::display::array_value_to_string;

    fn ty(s: &str) -> SqlType {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// What the sink does: decode `{"result": value}` with arrow-json into
    /// the column's Arrow type.
    fn decode(t: &SqlType, value: &Value) -> ArrayRef {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "result",
            t.arrow_type(),
            true,
        )]));
        let mut decoder = arrow_json::ReaderBuilder::new(schema)
            .build_decoder()
            .unwrap();
        decoder.serialize(&[json!({ "result": value })]).unwrap();
        decoder.flush().unwrap().unwrap().column(0).clone()
    }

    #[test]
    fn every_type_goes_from_ddl_through_schema_and_reply_into_arrow() {
        // (DDL, Arrow type, reply, normalised value, value as Arrow prints it)
        let cases: &[(&str, &str, &str, Value, &str)] = &[
            ("STRING", "Utf8", "  héllo \n", json!("  héllo \n"), "  héllo \n"),
            ("INT", "Int32", r#"{"result": 42}"#, json!(42), "42"),
            ("integer", "Int32", "-7", json!(-7), "-7"),
            ("BIGINT", "Int64", r#"{"result": 9007199254740993}"#, json!(9007199254740993i64), "9007199254740993"),
            ("LONG", "Int64", r#"{"result": "12"}"#, json!(12), "12"),
            ("FLOAT", "Float32", r#"{"result": 0.5}"#, json!(0.5), "0.5"),
            ("REAL", "Float32", "3", json!(3), "3.0"),
            ("DOUBLE", "Float64", r#"{"result": 1.25e3}"#, json!(1250.0), "1250.0"),
            ("BOOLEAN", "Boolean", r#"{"result": true}"#, json!(true), "true"),
            ("bool", "Boolean", "False", json!(false), "false"),
            ("DATE", "Date32", r#"{"result": "2024-02-29"}"#, json!("2024-02-29"), "2024-02-29"),
            ("DATE", "Date32", "2024-02-29T23:30:00-05:00", json!("2024-02-29"), "2024-02-29"),
            (
                "TIMESTAMP",
                "Timestamp(µs, \"+00:00\")",
                r#"{"result": "2024-05-01T12:30:00.5+02:00"}"#,
                json!("2024-05-01T10:30:00.500000Z"),
                "2024-05-01T10:30:00.500Z",
            ),
            ("TIMESTAMP", "Timestamp(µs, \"+00:00\")", "\"0001-01-01 00:00:00\"", json!("0001-01-01T00:00:00Z"), "0001-01-01T00:00:00Z"),
            ("VARCHAR(10)", "Utf8", "x", json!("x"), "x"),
            ("ARRAY<STRING>", "List(Utf8)", r#"{"result": ["a", null, "c"]}"#, json!(["a", null, "c"]), "[a, , c]"),
            ("ARRAY<INT>", "List(Int32)", "[1, 2.0, \"3\"]", json!([1, 2, 3]), "[1, 2, 3]"),
            (
                "MAP<STRING, INT>",
                "Map(\"entries\": non-null Struct(\"key\": non-null Utf8, \"value\": Int32), unsorted)",
                r#"{"result": {"b": 2, "a": null}}"#,
                json!({"a": null, "b": 2}),
                "{a: , b: 2}",
            ),
            (
                "STRUCT<name: STRING, age INT, tags: ARRAY<STRING>, `home town`: STRUCT<city STRING, since DATE>>",
                "Struct(\"name\": Utf8, \"age\": Int32, \"tags\": List(Utf8), \"home town\": Struct(\"city\": Utf8, \"since\": Date32))",
                "```json\n{\"Name\": \"Ada\", \"tags\": [\"x\"], \"home town\": {\"city\": \"London\", \"since\": \"1815-12-10\"}, \"extra\": 1}\n```",
                json!({"name": "Ada", "age": null, "tags": ["x"], "home town": {"city": "London", "since": "1815-12-10"}}),
                "{name: Ada, age: , tags: [x], home town: {city: London, since: 1815-12-10}}",
            ),
        ];
        for (ddl, arrow_type, reply, normalised, shown) in cases {
            let t = ty(ddl);
            assert_eq!(t.arrow_type().to_string(), *arrow_type, "{ddl}");
            // The schema describes the type and reads back as the same type.
            assert_eq!(
                SqlType::from_json_schema(&t.json_schema()),
                Ok(t.clone()),
                "{ddl}"
            );
            let value = t
                .parse_reply(reply)
                .unwrap_or_else(|e| panic!("{ddl} {reply:?}: {e}"));
            assert_eq!(&value, normalised, "{ddl} {reply:?}");
            let column = decode(&t, &value);
            assert_eq!(column.data_type(), &t.arrow_type());
            assert!(column.is_valid(0), "{ddl}");
            assert_eq!(array_value_to_string(&column, 0).unwrap(), *shown, "{ddl}");
        }
    }

    #[test]
    fn whatever_parse_reply_accepts_arrow_decodes() {
        let types = [
            "STRING",
            "INT",
            "BIGINT",
            "FLOAT",
            "DOUBLE",
            "BOOLEAN",
            "DATE",
            "TIMESTAMP",
            "ARRAY<FLOAT>",
            "MAP<STRING, ARRAY<TIMESTAMP>>",
            "STRUCT<a INT, b STRUCT<c DATE, d MAP<STRING, BIGINT>>>",
        ];
        let replies = [
            "", " ", "null", "0", "-0", "1e10", "-2147483649", "1.0e2", "18446744073709551615", "\"1e3\"", "true",
            "\"TRUE\"", "\"2024-13-01\"", "\"2024-02-29T24:00\"", "\"9999-12-31T23:59:59.9999999-01:00\"",
            "[]", "[1, \"2\", null, 3.5e38]", "[\"2024-01-01T00:00:00+14:00\"]", "{}", "{\"result\": {}}",
            "{\"a\": \"7\", \"b\": {\"c\": \"2020-01-01t01:02\", \"d\": {\"x\": 1e18, \"y\": null}}}",
            "{\"x\": [\"2000-01-01\", 5]}", "```json", "```", "{\"result\"", "\u{0}", "é\u{1F600}",
        ];
        for ddl in types {
            let t = ty(ddl);
            for reply in replies {
                if let Ok(v) = t.parse_reply(reply) {
                    // decode() unwraps: any failure here is a bug in normalisation.
                    assert_eq!(decode(&t, &v).len(), 1, "{ddl} {reply:?}");
                }
            }
        }
    }

    #[test]
    fn null_decodes_as_null_for_every_type() {
        for ddl in [
            "STRING",
            "INT",
            "DATE",
            "TIMESTAMP",
            "ARRAY<INT>",
            "MAP<STRING, DATE>",
            "STRUCT<a INT>",
        ] {
            let t = ty(ddl);
            let v = if t.is_string() {
                Value::Null
            } else {
                t.parse_reply("null").unwrap()
            };
            assert_eq!(v, Value::Null);
            assert!(decode(&t, &v).is_null(0), "{ddl}");
            // The wrapper holding null is null; a STRUCT is never wrapped,
            // so there it is a struct whose fields are missing.
            let wrapped = if t.is_string() {
                continue;
            } else {
                t.parse_reply(r#"{"result": null}"#)
            };
            let expected = if ddl.starts_with("STRUCT") {
                json!({"a": null})
            } else {
                Value::Null
            };
            assert_eq!(wrapped, Ok(expected), "{ddl}");
        }
    }

    #[test]
    fn ddl_is_case_and_whitespace_insensitive_and_displays_canonically() {
        let t = ty(
            " struct < a : array < map < varchar ( 3 ) , bigint > > , `we``ird name` Timestamp > ",
        );
        assert_eq!(
            t,
            SqlType::Struct(vec![
                (
                    "a".into(),
                    SqlType::Array(Box::new(SqlType::Map(Box::new(SqlType::BigInt))))
                ),
                ("we`ird name".into(), SqlType::Timestamp),
            ])
        );
        assert_eq!(
            t.to_string(),
            "STRUCT<a: ARRAY<MAP<STRING, BIGINT>>, `we``ird name`: TIMESTAMP>"
        );
        assert_eq!(ty(&t.to_string()), t);
    }

    #[test]
    fn ddl_errors_name_the_token_and_position() {
        let err = |s: &str| s.parse::<SqlType>().unwrap_err();
        assert_eq!(
            err("ARRAY<STRNG>"),
            r#"unknown type "STRNG" at position 7 in "ARRAY<STRNG>""#
        );
        assert_eq!(
            err("MAP<INT, STRING>"),
            r#"MAP keys must be STRING (JSON object keys are strings), got INT at position 5 in "MAP<INT, STRING>""#
        );
        assert_eq!(
            err("ARRAY<INT"),
            r#"expected ">" to close ARRAY<, found end of input at position 10 in "ARRAY<INT""#
        );
        assert_eq!(
            err("INT>"),
            r#"unexpected ">" after the type at position 4 in "INT>""#
        );
        assert_eq!(
            err(""),
            r#"expected a type, found end of input at position 1 in """#
        );
        assert!(err("STRUCT<a INT, a STRING>")
            .starts_with(r#"duplicate field name "a" at position 15"#));
        assert!(err("STRUCT<>").starts_with(r#"expected a field name, found ">""#));
        assert!(err("STRUCT<a INT; b INT>").starts_with("unexpected character ';' at position 13"));
        assert!(err("STRUCT<`a INT>").starts_with("unterminated backquoted name at position 8"));
        assert!(err("VARCHAR(x)").starts_with(r#"expected a length, found "x""#));
        let deep = format!("{}INT{}", "ARRAY<".repeat(1000), ">".repeat(1000));
        assert!(err(&deep).contains("nested deeper than"));
    }

    #[test]
    fn reply_errors_name_the_path() {
        let t = ty("STRUCT<tags: ARRAY<STRING>, n INT>");
        assert_eq!(
            t.parse_reply(r#"{"tags": ["a", "b", 3]}"#),
            Err("result.tags[2]: expected STRING, got number 3".to_string())
        );
        assert_eq!(
            t.parse_reply(r#"{"n": 2147483648}"#),
            Err("result.n: 2147483648 is out of range for INT".into())
        );
        assert_eq!(
            t.parse_reply(r#"{"n": 1.5}"#),
            Err("result.n: expected INT, got number 1.5".into())
        );
        assert_eq!(
            ty("MAP<STRING, BOOLEAN>").parse_reply(r#"{"result": {"k": "maybe"}}"#),
            Err(r#"result["k"]: expected BOOLEAN, got string "maybe""#.into())
        );
        assert_eq!(
            ty("DATE").parse_reply("2023-02-29"),
            Err(r#"result: expected DATE (YYYY-MM-DD), got string "2023-02-29""#.into())
        );
        assert!(ty("ARRAY<INT>")
            .parse_reply("one, two")
            .unwrap_err()
            .starts_with("result: expected ARRAY<INT> as JSON, reply is not JSON"));
        assert!(ty("INT")
            .parse_reply("forty-two")
            .unwrap_err()
            .starts_with("result: expected INT, got string"));
        assert_eq!(
            ty("FLOAT").parse_reply("1e39"),
            Err(
                "result: 1000000000000000000000000000000000000000 is out of range for FLOAT".into()
            )
        );
        assert!(ty("BIGINT")
            .parse_reply("9223372036854775808")
            .unwrap_err()
            .contains("out of range for BIGINT"));
        assert!(ty("TIMESTAMP")
            .parse_reply("2024-01-01T25:00:00Z")
            .unwrap_err()
            .starts_with("result: expected TIMESTAMP"));
        assert!(ty("TIMESTAMP")
            .parse_reply("0001-01-01T00:00:00+01:00")
            .unwrap_err()
            .contains("out of range"));
        // A long bad value is cut short in the message.
        let long = format!("\"{}\"", "x".repeat(500));
        assert!(ty("DATE").parse_reply(&long).unwrap_err().len() < 150);
    }

    #[test]
    fn fences_wrappers_and_bare_scalars_are_tolerated() {
        let int = ty("INT");
        for reply in [
            "42",
            " 42\n",
            r#"{"result": 42}"#,
            "```json\n{\"result\": 42}\n```",
            "```\n42\n```",
            "\"42\"",
            "```42```",
        ] {
            assert_eq!(int.parse_reply(reply), Ok(json!(42)), "{reply:?}");
        }
        assert_eq!(ty("BOOLEAN").parse_reply("TRUE"), Ok(json!(true)));
        assert_eq!(
            ty("DATE").parse_reply("2024-01-05"),
            Ok(json!("2024-01-05"))
        );
        // STRING keeps the reply exactly, fences and all.
        assert_eq!(
            SqlType::String.parse_reply("```json\n{}\n```"),
            Ok(json!("```json\n{}\n```"))
        );
        // A MAP that happens to have one key named "result" still reads.
        let map = ty("MAP<STRING, INT>");
        assert_eq!(
            map.parse_reply(r#"{"result": 3}"#),
            Ok(json!({"result": 3}))
        );
        assert_eq!(
            map.parse_reply(r#"{"result": {"a": 1}}"#),
            Ok(json!({"a": 1}))
        );
        // A STRUCT wrapped anyway is unwrapped, unless it has a "result" field.
        assert_eq!(
            ty("STRUCT<a INT>").parse_reply(r#"{"result": {"a": 1}}"#),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            ty("STRUCT<result INT>").parse_reply(r#"{"result": 5}"#),
            Ok(json!({"result": 5}))
        );
    }

    #[test]
    fn timestamps_normalise_to_utc() {
        let ts = |s: &str| normalize_timestamp(s);
        assert_eq!(
            ts("2024-03-01T00:30:00+01:00").as_deref(),
            Ok("2024-02-29T23:30:00Z")
        );
        assert_eq!(
            ts("2024-12-31t23:59:59.999999999-0100").as_deref(),
            Ok("2025-01-01T00:59:59.999999Z")
        );
        assert_eq!(
            ts("2024-01-01 08:00").as_deref(),
            Ok("2024-01-01T08:00:00Z")
        );
        assert_eq!(
            ts("2024-01-01T08:00:00 UTC").as_deref(),
            Ok("2024-01-01T08:00:00Z")
        );
        assert_eq!(
            ts("2024-01-01T08:00:00+05").as_deref(),
            Ok("2024-01-01T03:00:00Z")
        );
        assert_eq!(
            ts("1969-12-31T23:59:59.25Z").as_deref(),
            Ok("1969-12-31T23:59:59.250000Z")
        );
        assert_eq!(ts("2024-01-01").as_deref(), Ok("2024-01-01T00:00:00Z"));
        for bad in [
            "2024-01-01T",
            "2024-01-01T08",
            "2024-01-01T08:00:61",
            "2024-01-01T08:00+5",
            "2024-01-01T08:00:00.Z",
            "2024-1-01",
            "2024-01-01Tä",
            "10000-01-01",
        ] {
            assert!(ts(bad).is_err(), "{bad}");
        }
        // Every day of a few centuries survives the calendar arithmetic.
        for days in (days_from_civil((1600, 1, 1))..days_from_civil((2401, 1, 1))).step_by(7) {
            assert_eq!(days_from_civil(civil_from_days(days)), days);
        }
        // And arrow agrees with the strings we produce.
        let t = SqlType::Timestamp;
        let v = t.parse_reply("2000-02-29T12:00:00.000001-12:00").unwrap();
        assert_eq!(
            array_value_to_string(&decode(&t, &v), 0).unwrap(),
            "2000-03-01T00:00:00.000001Z"
        );
    }

    #[test]
    fn response_format_wraps_non_struct_types() {
        assert_eq!(
            ty("ARRAY<DATE>").response_format(),
            json!({"type": "json_schema", "json_schema": {"name": "result", "strict": true, "schema": {
                "type": "object",
                "properties": {"result": {"type": "array", "items": {"type": "string", "format": "date"}}},
                "required": ["result"],
                "additionalProperties": false,
            }}})
        );
        let s = ty("STRUCT<b STRING, a MAP<STRING, TIMESTAMP>>");
        assert_eq!(
            s.response_format()["json_schema"]["schema"],
            json!({
                "type": "object",
                "properties": {
                    "b": {"type": "string"},
                    "a": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time"}},
                },
                "required": ["b", "a"],
                "additionalProperties": false,
            })
        );
    }

    #[test]
    fn hand_written_schemas_map_to_types() {
        let schema = json!({
            "type": "object",
            "$defs": {"Person": {"type": "object", "properties": {"name": {"type": ["string", "null"]}}}},
            "properties": {
                "z": {"anyOf": [{"$ref": "#/$defs/Person"}, {"type": "null"}]},
                "label": {"enum": ["yes", "no"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "count": {"type": "integer"},
                "a": {"type": "boolean"},
            },
            "required": ["z", "label"],
        });
        assert_eq!(
            SqlType::from_json_schema(&schema).unwrap().to_string(),
            "STRUCT<z: STRUCT<name: STRING>, label: STRING, a: BOOLEAN, count: BIGINT, score: DOUBLE, stars: INT>"
        );
        let err = |s: Value| SqlType::from_json_schema(&s).unwrap_err();
        assert!(err(json!({"type": "object"})).contains("needs \"properties\""));
        assert!(err(json!({"type": "array"})).contains("needs \"items\""));
        assert!(err(json!({"type": ["string", "integer"]})).contains("has no SQL type"));
        assert!(err(json!({"$ref": "#/$defs/Missing"})).contains("cannot resolve $ref"));
        assert!(err(json!({"$defs": {"L": {"type": "array", "items": {"$ref": "#/$defs/L"}}}, "$ref": "#/$defs/L"}))
            .contains("deeper than"));
        assert!(
            err(json!({"properties": {"a": {"type": "object", "properties": {"b": {}}}}}))
                .contains("#/properties/a/properties/b: schema has no \"type\"")
        );
    }

    #[test]
    fn response_format_flag_takes_json_schema_or_ddl() {
        let (t, rf) = parse_response_format("STRUCT<sentiment STRING, score DOUBLE>").unwrap();
        assert_eq!(t.to_string(), "STRUCT<sentiment: STRING, score: DOUBLE>");
        assert_eq!(rf, t.response_format());

        let schema = r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}"#;
        let (t, rf) = parse_response_format(schema).unwrap();
        assert_eq!(t, ty("STRUCT<city STRING>"));
        assert_eq!(
            rf["json_schema"]["schema"],
            serde_json::from_str::<Value>(schema).unwrap()
        );
        assert_eq!(rf["json_schema"]["strict"], json!(true));

        // A whole response_format is sent as given.
        let whole = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}});
        let (t, rf) = parse_response_format(&whole.to_string()).unwrap();
        assert_eq!((t, rf), (ty("STRUCT<n BIGINT>"), whole));
        // So is the inner json_schema object, wrapped.
        let inner = json!({"name": "x", "schema": {"type": "object", "properties": {"n": {"type": "boolean"}}}});
        let (t, rf) = parse_response_format(&inner.to_string()).unwrap();
        assert_eq!(
            (t, rf["json_schema"].clone()),
            (ty("STRUCT<n BOOLEAN>"), inner)
        );

        assert!(parse_response_format("{not json")
            .unwrap_err()
            .starts_with("--response-format is not valid JSON"));
        assert!(parse_response_format("STRUCT<a STRNG>")
            .unwrap_err()
            .starts_with("unknown type \"STRNG\""));
        assert!(parse_response_format(r#"{"type": "json_schema"}"#)
            .unwrap_err()
            .contains("json_schema.schema"));
    }

    #[test]
    fn utc_times_format_and_parse_back() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_500_144);
        assert_eq!(format_utc(t), "2026-12-05T19:49:04Z");
        assert_eq!(parse_utc("2026-12-05T19:49:04Z"), Some(t));
        assert_eq!(parse_utc("2026-12-05T21:49:04+02:00"), Some(t));
        assert_eq!(parse_utc("yesterday"), None);
    }
}

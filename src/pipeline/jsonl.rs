//! JSON Lines before any request: lines of bounded length, and one pass over
//! the whole input that checks every line and infers the columns from all
//! of them.
//!
//! Two things are decided here, once:
//! - **How long a line may be** ([`Lines`]): at most `--max-line-bytes`
//!   ([`DEFAULT_MAX_LINE_BYTES`] unless set). A longer line — or a "file"
//!   that never ends a line, such as a link to `/dev/zero` — stops the job
//!   naming the line, with memory bounded by the limit.
//! - **What the columns are** ([`scan`]): every line is parsed (valid JSON,
//!   valid UTF-8, exactly one object) and its values' types merged into
//!   the columns, in the order their keys first appear. Sampling the first
//!   lines would coerce a `1.9` found later into an integer column, or drop
//!   a key first seen late; reading the whole input costs one streaming
//!   pass, small next to the calls it guards.
//!
//! Types widen, never lossily: integers and floats make a float column
//! (unless an integer there is too large for a float to hold exactly),
//! other mixes of scalars make a text column holding each value as written
//! (a warning names the column and where each kind first appears). An
//! object, an array and a scalar under one key cannot be merged: the scan
//! stops naming the line and the column.

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::{Error, Result};

pub use crate::job::plan::DEFAULT_MAX_LINE_BYTES;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Integers beyond ±2^53 are exact in an Int64 column but not in a Float64
/// one: such a column mixed with floats is read as text instead.
const MAX_EXACT_FLOAT_INT: u64 = 1 << 53;

/// The lines of a JSONL input, numbered from 1, each at most `max` bytes.
pub struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    max: usize,
    /// Number of the last line read (1-based).
    pub line_no: u64,
    /// Where the last line read starts, in bytes from the file's start.
    pub line_start: u64,
    /// Bytes read so far: where the next line starts.
    offset: u64,
}

impl Lines {
    /// Lines of `reader`, which is `offset` bytes and `line_no` lines into
    /// `path` (for messages and [`Lines::line_start`]).
    pub fn new(
        path: &Path,
        reader: Box<dyn BufRead + Send>,
        max: usize,
        line_no: u64,
        offset: u64,
    ) -> Lines {
        Lines {
            path: path.to_path_buf(),
            reader,
            buf: Vec::new(),
            max,
            line_no,
            line_start: offset,
            offset,
        }
    }

    /// The next line's content, without surrounding ASCII whitespace (so
    /// `\r\n` endings and blank lines need no special case) and without a
    /// UTF-8 byte order mark on line 1 (editors on Windows add one; JSON
    /// parsers reject it); empty for a blank line, `None` at the end.
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>> {
        Ok(self.read()?.map(|range| self.line(range)))
    }

    /// The next non-blank line, as [`Lines::next_line`]: the next row.
    pub fn next_row(&mut self) -> Result<Option<Line<'_>>> {
        loop {
            match self.read()? {
                None => return Ok(None),
                Some((start, end)) if start < end => return Ok(Some(self.line((start, end)))),
                Some(_) => {}
            }
        }
    }

    fn line(&self, (start, end): (usize, usize)) -> Line<'_> {
        Line {
            no: self.line_no,
            start: self.line_start,
            text: &self.buf[start..end],
        }
    }

    /// Reads the next line into `buf`; the range of its content.
    fn read(&mut self) -> Result<Option<(usize, usize)>> {
        self.buf.clear();
        let mut read = 0u64;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::input(&self.path, format!("cannot read: {e}"))),
            };
            if chunk.is_empty() {
                if read == 0 {
                    return Ok(None);
                }
                break; // a last line without a newline
            }
            let (take, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            // Checked before copying: an endless line costs `max` bytes.
            if self.buf.len() + take > self.max.saturating_add(1) {
                return Err(Error::input(
                    &self.path,
                    format!(
                        "line {}: longer than {} bytes, the most a line may hold \
                         (raise it with --max-line-bytes or `max_line_bytes` in the job file)",
                        self.line_no + 1,
                        self.max
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..take]);
            self.reader.consume(take);
            read += take as u64;
            if done {
                break;
            }
        }
        self.line_no += 1;
        self.line_start = self.offset;
        self.offset += read;
        let line = match self.line_no {
            1 => self.buf.strip_prefix(UTF8_BOM).unwrap_or(&self.buf),
            _ => &self.buf,
        };
        let content = line.trim_ascii();
        // Positions within `buf`: the content is a sub-slice of it.
        let start = content.as_ptr() as usize - self.buf.as_ptr() as usize;
        Ok(Some((start, start + content.len())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An input error naming the last line read.
    pub fn error(&self, message: impl fmt::Display) -> Error {
        Error::input(&self.path, format!("line {}: {message}", self.line_no))
    }
}

/// A line read by [`Lines`].
#[derive(Debug, PartialEq)]
pub struct Line<'a> {
    /// Its number, from 1.
    pub no: u64,
    /// Where it starts, in bytes from the file's start.
    pub start: u64,
    /// Its content, trimmed.
    pub text: &'a [u8],
}

/// What one pass over a whole JSONL input found.
#[derive(Debug)]
pub struct Scan {
    /// Every key, in the order first seen, with the type all its values fit.
    pub schema: Schema,
    /// Rows: non-blank lines.
    pub rows: u64,
    /// Some column mixes kinds of scalars and is read as text: the decoder
    /// must turn numbers and booleans into their text as written.
    pub text_from_scalars: bool,
    /// Columns read as text because their values mix kinds, for a warning.
    pub widened: Vec<String>,
}

/// Reads every line of `lines`, checking each is one JSON object, and
/// infers the columns from all of them.
pub fn scan(mut lines: Lines) -> Result<Scan> {
    let mut columns = Columns::default();
    let mut rows = 0u64;
    let mut conflict = None;
    while let Some(line) = lines.next_row()? {
        rows += 1;
        let at = line.no;
        let mut de = serde_json::Deserializer::from_slice(line.text);
        let seed = Row {
            columns: &mut columns,
            line: at,
            conflict: &mut conflict,
        };
        let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
        if let Err(e) = parsed {
            return Err(lines.error(match conflict.take() {
                Some(c) => c.to_string(),
                None => json_error(&e),
            }));
        }
    }
    if rows == 0 {
        return Err(Error::input(
            &lines.path,
            "the file is empty: JSON Lines input needs at least one line with a JSON object",
        ));
    }
    let mut widened = Vec::new();
    let fields = columns.fields("", &mut widened);
    Ok(Scan {
        schema: Schema::new(fields),
        rows,
        text_from_scalars: !widened.is_empty(),
        widened,
    })
}

/// serde_json's message without its position inside the line (always "line
/// 1"), which would read as the file's line; the byte offset stays.
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&suffix) {
        Some(m) => format!("not valid JSON: {m} (at byte {} of the line)", e.column()),
        None => format!("not valid JSON: {msg}"),
    }
}

/// Kinds of scalar a column has held (bits), with the line each first
/// appeared on.
#[derive(Default)]
struct Scalars {
    kinds: u8,
    first: [u64; KINDS.len()],
}

const BOOL: u8 = 0;
const INT: u8 = 1;
const FLOAT: u8 = 2;
const TEXT: u8 = 3;
/// An integer a float cannot hold exactly (beyond ±2^53).
const WIDE_INT: u8 = 4;
/// An integer an Int64 cannot hold (above i64::MAX).
const HUGE_INT: u8 = 5;
const KINDS: [&str; 6] = [
    "booleans",
    "integers",
    "floats",
    "text",
    "integers beyond 2^53",
    "integers beyond 2^63",
];

impl Scalars {
    fn add(&mut self, kind: u8, line: u64) {
        if self.kinds & (1 << kind) == 0 {
            self.kinds |= 1 << kind;
            self.first[kind as usize] = line;
        }
    }

    fn has(&self, kind: u8) -> bool {
        self.kinds & (1 << kind) != 0
    }

    /// The narrowest type every value seen fits without loss, and whether
    /// that took reading the values as text.
    fn data_type(&self) -> (DataType, bool) {
        let numbers = (1 << INT) | (1 << FLOAT) | (1 << WIDE_INT);
        match self.kinds {
            0 => (DataType::Null, false),
            k if k == 1 << BOOL => (DataType::Boolean, false),
            k if k == 1 << TEXT => (DataType::Utf8, false),
            k if k & !numbers == 0 && !self.has(FLOAT) => (DataType::Int64, false),
            k if k & !numbers == 0 && !self.has(WIDE_INT) => (DataType::Float64, false),
            _ => (DataType::Utf8, true),
        }
    }

    fn describe(&self) -> String {
        (0..KINDS.len() as u8)
            .filter(|&k| self.has(k))
            .map(|k| {
                format!(
                    "{} (first on line {})",
                    KINDS[k as usize], self.first[k as usize]
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One column's values so far: null only, scalars, arrays or objects. Only
/// one shape per column: arrow has no type holding both a list and a number.
#[derive(Default)]
struct Column {
    shape: Shape,
    /// The line the shape was first seen on, for a conflict's message.
    since: u64,
}

#[derive(Default)]
enum Shape {
    #[default]
    Null,
    Scalar(Scalars),
    List(Box<Column>),
    Object(Box<Columns>),
}

impl Shape {
    fn name(&self) -> &'static str {
        match self {
            Shape::Null => "null",
            Shape::Scalar(_) => "a scalar",
            Shape::List(_) => "an array",
            Shape::Object(_) => "an object",
        }
    }
}

/// Object keys in the order first seen, each with its column.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    types: Vec<Column>,
    index: HashMap<String, usize>,
    /// Where the last key was found: rows usually repeat the same keys in
    /// the same order, so the next key is checked there before hashing.
    cursor: usize,
}

impl Columns {
    fn position(&mut self, key: &str) -> usize {
        let guess = self.cursor;
        let at = if self.names.get(guess).is_some_and(|n| n == key) {
            guess
        } else if let Some(&i) = self.index.get(key) {
            i
        } else {
            self.names.push(key.to_string());
            self.types.push(Column::default());
            self.index.insert(key.to_string(), self.names.len() - 1);
            self.names.len() - 1
        };
        self.cursor = at + 1;
        at
    }

    fn fields(&self, prefix: &str, widened: &mut Vec<String>) -> Fields {
        self.names
            .iter()
            .zip(&self.types)
            .map(|(name, column)| {
                let path = match prefix {
                    "" => name.clone(),
                    p => format!("{p}.{name}"),
                };
                Arc::new(Field::new(name, column.data_type(&path, widened), true))
            })
            .collect()
    }
}

impl Column {
    fn data_type(&self, path: &str, widened: &mut Vec<String>) -> DataType {
        match &self.shape {
            Shape::Null => DataType::Null,
            Shape::Scalar(s) => {
                let (t, as_text) = s.data_type();
                if as_text {
                    widened.push(format!("column {path:?} holds {}", s.describe()));
                }
                t
            }
            Shape::List(item) => DataType::List(Arc::new(Field::new_list_field(
                item.data_type(&format!("{path}[]"), widened),
                true,
            ))),
            Shape::Object(columns) => DataType::Struct(columns.fields(path, widened)),
        }
    }
}

/// Two shapes met under one key: where, for the message.
struct Conflict {
    /// Keys from the value up to the row, innermost first.
    path: Vec<String>,
    was: &'static str,
    since: u64,
    now: &'static str,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        write!(
            f,
            "column {:?} is {} here but {} on line {}: one column cannot hold both",
            path.join("."),
            self.now,
            self.was,
            self.since
        )
    }
}

/// The row's object: merges each value into its key's column.
struct Row<'a> {
    columns: &'a mut Columns,
    line: u64,
    conflict: &'a mut Option<Conflict>,
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (JSON Lines needs one object per line)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        merge_object(self.columns, self.line, self.conflict, &mut map)
    }
}

fn merge_object<'de, A: MapAccess<'de>>(
    columns: &mut Columns,
    line: u64,
    conflict: &mut Option<Conflict>,
    map: &mut A,
) -> Result<(), A::Error> {
    columns.cursor = 0;
    while let Some(i) = map.next_key_seed(Key(columns))? {
        let seed = Value {
            column: &mut columns.types[i],
            line,
            conflict: &mut *conflict,
        };
        if let Err(e) = map.next_value_seed(seed) {
            if let Some(c) = conflict.as_mut() {
                c.path.push(columns.names[i].clone());
            }
            return Err(e);
        }
    }
    Ok(())
}

/// An object key, looked up without allocating when already known.
struct Key<'a>(&'a mut Columns);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        Ok(self.0.position(key))
    }
}

/// One value: merges its type into its column.
struct Value<'a> {
    column: &'a mut Column,
    line: u64,
    conflict: &'a mut Option<Conflict>,
}

/// `column`'s shape, set to `new()`'s if still null; a conflict (kept in
/// `conflict` for the message) if it is another.
fn shape<'c, E: de::Error>(
    column: &'c mut Column,
    line: u64,
    conflict: &mut Option<Conflict>,
    is: fn(&Shape) -> bool,
    new: impl FnOnce() -> Shape,
) -> Result<&'c mut Shape, E> {
    if matches!(column.shape, Shape::Null) {
        column.shape = new();
        column.since = line;
    } else if !is(&column.shape) {
        *conflict = Some(Conflict {
            path: Vec::new(),
            was: column.shape.name(),
            since: column.since,
            now: new().name(),
        });
        return Err(E::custom("shape conflict"));
    }
    Ok(&mut column.shape)
}

impl Value<'_> {
    fn scalar<E: de::Error>(self, kind: u8, wide: bool) -> Result<(), E> {
        let Value {
            column,
            line,
            conflict,
        } = self;
        let is = |s: &Shape| matches!(s, Shape::Scalar(_));
        if let Shape::Scalar(s) = shape(column, line, conflict, is, || {
            Shape::Scalar(Scalars::default())
        })? {
            s.add(kind, line);
            if wide {
                s.add(WIDE_INT, line);
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // null fits every column
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar(BOOL, false)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(INT, v.unsigned_abs() > MAX_EXACT_FLOAT_INT)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => self.scalar(HUGE_INT, true),
        }
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar(FLOAT, false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar(TEXT, false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Value {
            column,
            line,
            conflict,
        } = self;
        let is = |s: &Shape| matches!(s, Shape::List(_));
        let Shape::List(item) = shape(column, line, conflict, is, || Shape::List(Box::default()))?
        else {
            return Ok(());
        };
        while seq
            .next_element_seed(Value {
                column: item,
                line,
                conflict: &mut *conflict,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Value {
            column,
            line,
            conflict,
        } = self;
        let is = |s: &Shape| matches!(s, Shape::Object(_));
        let Shape::Object(columns) =
            shape(column, line, conflict, is, || Shape::Object(Box::default()))?
        else {
            return Ok(());
        };
        merge_object(columns, line, conflict, &mut map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], max: usize) -> Lines {
        let reader = std::io::BufReader::with_capacity(7, std::io::Cursor::new(text.to_vec()));
        Lines::new(Path::new("in.jsonl"), Box::new(reader), max, 0, 0)
    }

    fn scan_of(text: &str) -> Result<Scan> {
        scan(lines(text.as_bytes(), 1 << 20))
    }

    fn types(text: &str) -> Vec<(String, DataType)> {
        let scan = scan_of(text).unwrap();
        scan.schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    }

    fn error(text: &str) -> String {
        scan_of(text).expect_err("a bad input").to_string()
    }

    /// Lines longer than the reader's buffer, at exactly the limit, over
    /// it, without a final newline, with a BOM and CRLF.
    #[test]
    fn lines_are_bounded_and_trimmed() {
        let text = |l: Option<Line>| l.map(|l| l.text.to_vec());
        let mut l = lines(b"\xEF\xBB\xBF{\"a\": 1}\r\n\n  0123456789abcdef\n{}", 16);
        assert_eq!(text(l.next_line().unwrap()), Some(b"{\"a\": 1}".to_vec()));
        assert_eq!(text(l.next_line().unwrap()), Some(vec![]));
        // 18 bytes of content and newline, but only 16 allowed.
        let e = l.next_line().expect_err("too long").to_string();
        assert!(e.contains("line 3: longer than 16 bytes"), "{e}");
        let mut l = lines(b"\n0123456789abcdef\n{}", 16);
        assert_eq!(
            text(l.next_row().unwrap()),
            Some(b"0123456789abcdef".to_vec())
        );
        let last = Line {
            no: 3,
            start: 18,
            text: b"{}",
        };
        assert_eq!(l.next_row().unwrap(), Some(last));
        assert_eq!(l.offset, 20);
        assert!(l.next_line().unwrap().is_none());
        // A line that never ends costs the limit, not the input.
        let endless = std::io::BufReader::new(std::io::repeat(0));
        let mut l = Lines::new(Path::new("zero.jsonl"), Box::new(endless), 1 << 20, 0, 0);
        assert!(l.next_line().is_err());
        assert!(l.buf.capacity() <= 4 << 20, "{}", l.buf.capacity());
    }

    #[test]
    fn types_widen_without_loss_and_keep_the_written_order() {
        use DataType::*;
        let t = types(
            "{\"z\": 1, \"a\": null, \"f\": 1, \"w\": 9007199254740993, \"h\": 1}\n\
             {\"f\": 1.5, \"w\": 0.5, \"h\": 18446744073709551615, \"b\": true, \"s\": \"x\"}\n\
             {\"m\": \"x\", \"late\": 2}\n{\"m\": false}\n",
        );
        let want = [
            ("z", Int64),
            ("a", Null),
            ("f", Float64),
            ("w", Utf8), // a float cannot hold 2^53 + 1
            ("h", Utf8), // nor can an Int64 hold 2^64 - 1
            ("b", Boolean),
            ("s", Utf8),
            ("m", Utf8),
            ("late", Int64),
        ];
        let want: Vec<_> = want.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        assert_eq!(t, want);
        let scan = scan_of("{\"m\": \"x\"}\n{\"m\": false}\n").unwrap();
        assert!(scan.text_from_scalars);
        assert_eq!(
            scan.widened,
            ["column \"m\" holds booleans (first on line 2), text (first on line 1)"]
        );
        assert!(
            !scan_of("{\"f\": 1}\n{\"f\": 2.5}\n")
                .unwrap()
                .text_from_scalars
        );
    }

    #[test]
    fn nested_types_merge_in_written_order() {
        let t = types(
            "{\"o\": {\"y\": 1, \"x\": [1]}, \"l\": []}\n\
             {\"o\": {\"x\": [2.5, null], \"n\": {\"k\": \"v\"}}, \"l\": [{\"q\": 1}]}\n",
        );
        let fields: Fields = vec![
            Field::new("y", DataType::Int64, true),
            Field::new(
                "x",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            ),
            Field::new(
                "n",
                DataType::Struct(vec![Field::new("k", DataType::Utf8, true)].into()),
                true,
            ),
        ]
        .into();
        assert_eq!(t[0], ("o".to_string(), DataType::Struct(fields)));
        let q = DataType::Struct(vec![Field::new("q", DataType::Int64, true)].into());
        assert_eq!(
            t[1],
            (
                "l".to_string(),
                DataType::List(Arc::new(Field::new_list_field(q, true)))
            )
        );
    }

    #[test]
    fn errors_name_the_line_and_the_column() {
        let e = error("{\"a\": {\"b\": 1}}\n\n{\"a\": {\"b\": [1]}}\n");
        assert!(
            e.contains("line 3: column \"a.b\" is an array here but a scalar on line 1"),
            "{e}"
        );
        let e = error("{\"a\": 1}\n{\"a\": {}}\n");
        assert!(e.contains("line 2: column \"a\" is an object here"), "{e}");
        let e = error("{\"a\": [1]}\n{\"a\": [[1]]}\n");
        assert!(
            e.contains("line 2: column \"a\" is an array here but a scalar"),
            "{e}"
        );
        let e = error("{\"a\": 1}\n{\"a\": 1,}\n");
        assert!(
            e.contains("line 2: not valid JSON:") && e.contains("at byte"),
            "{e}"
        );
        let e = error("{\"a\": 1}\n{\"a\": 1} {}\n");
        assert!(
            e.contains("line 2: not valid JSON: trailing characters"),
            "{e}"
        );
        let e = error("[1]\n");
        assert!(
            e.contains("line 1: not valid JSON: invalid type: sequence, expected a JSON object"),
            "{e}"
        );
        let e = scan(lines(b"{\"a\": \"\xff\"}\n", 100))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1: not valid JSON: invalid unicode code point"),
            "{e}"
        );
        let e = error("\n \n");
        assert!(e.contains("empty"), "{e}");
    }
}

//! Input files as a stream of Arrow record batches: the first stage of the
//! data path.
//!
//! This module owns reading the user's dataset — Parquet or JSON Lines, chosen
//! by file extension — into batches of at most `batch_size` rows, so that
//! memory stays bounded by one batch whatever the size of the file. It also
//! owns the input schema the rest of the job is checked against, and the row
//! count used for progress and planning.
//!
//! Every local input is read whole before the first request, so that a bad
//! line or page stops the job before anything is paid (exit 2): JSON Lines
//! by [`jsonl::scan`], which also infers the columns from every line (in the
//! order their keys first appear, not arrow-json's alphabetical order) and
//! counts the rows; Parquet by decoding every page of the row groups the
//! job reads ([`check_parquet`]). An object-store Parquet input has its
//! footer and schema checked; its pages are decoded as they are sent. An
//! object-store JSON Lines input is streamed twice, once to check it. An
//! empty JSONL file is an error: with no line there is no schema, and every
//! template check would fail later with a less clear message.
//!
//! Every failure — a missing file, a wrong extension, a corrupt Parquet file, a
//! malformed JSON line — is an [`Error::Input`] naming the file and, for JSON
//! Lines, the line; nothing here panics on bad input.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow_json::reader::{Decoder, ReaderBuilder};
use parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ArrowReaderMetadata, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

use crate::error::{Error, Result};
use crate::job::location::{Location, Role, StoreUrl};
use crate::job::shard::Shard;
use crate::pipeline::bounds::{self, BATCH_BYTES};
use crate::pipeline::jsonl::{self, Lines, DEFAULT_MAX_LINE_BYTES};
use crate::pipeline::store::{self, Remote};

/// The input formats aiq reads, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Jsonl,
    /// OpenAI Batch API request lines (`--input-format openai-batch`),
    /// read by [`crate::pipeline::openai_batch`].
    OpenAiBatch,
    /// Record batches handed over in memory (the Python package's data,
    /// through the Arrow C stream interface), never a file.
    Arrow,
    /// A Delta Lake table (`--input-format delta`), read by
    /// `pipeline::delta`.
    Delta,
}

impl Format {
    /// The format for `path`'s extension (case-insensitive), or `None`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Format::Parquet),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Parquet => "Parquet",
            Format::Jsonl => "JSON Lines",
            Format::OpenAiBatch => "OpenAI Batch JSON Lines",
            Format::Arrow => "Arrow stream",
            Format::Delta => "Delta table",
        })
    }
}

/// An opened input file: its schema and row count are known, its rows are
/// read on demand by [`Source::into_batches`].
pub struct Source {
    pub path: PathBuf,
    pub schema: SchemaRef,
    /// Rows in the file: from the footer for Parquet, from counting non-blank
    /// lines for JSON Lines.
    pub total_rows: Option<u64>,
    /// Rows per batch at most: the asked batch size, fewer for wide rows
    /// ([`bounds::batch_rows`]).
    pub batch_rows: usize,
    format: Format,
    reader: Reader,
}

enum Reader {
    Parquet(ParquetRecordBatchReader),
    Jsonl(Box<JsonlBatches>),
    /// Batches made by another reader ([`Source::from_batches`]).
    Other(Box<dyn Iterator<Item = Result<RecordBatch>> + Send>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("columns", &self.schema.fields().len())
            .field("total_rows", &self.total_rows)
            .finish()
    }
}

impl Source {
    /// Opens `path`, reads its schema (and, for JSONL, counts its rows), and
    /// prepares to read batches of at most `batch_size` rows.
    pub fn open(path: &Path, batch_size: usize) -> Result<Source> {
        let input = Location::parse(path, Role::Input)?;
        Source::open_shard(&input, batch_size, None, DEFAULT_MAX_LINE_BYTES)
    }

    /// Like [`Source::open`], but reads only `shard`'s rows (all rows
    /// without one): a contiguous range by row number, so every row is in
    /// exactly one of the N shards. Parquet skips the row groups (and rows
    /// within them) outside the range without decoding them; JSON Lines
    /// skips other shards' lines without parsing them. The schema is the
    /// whole file's, so every shard writes the same columns. A JSON line
    /// may hold at most `max_line_bytes` bytes.
    pub fn open_shard(
        input: &Location,
        batch_size: usize,
        shard: Option<Shard>,
        max_line_bytes: usize,
    ) -> Result<Source> {
        if batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1 row".into()));
        }
        let path = input.as_path();
        let format = Format::from_path(path).ok_or_else(|| {
            Error::input(
                path,
                "unknown file type: aiq reads Parquet (.parquet) and JSON Lines (.jsonl, .ndjson)",
            )
        })?;
        match format {
            Format::Parquet => open_parquet(input, batch_size, shard),
            Format::Jsonl => open_jsonl(input, batch_size, shard, max_line_bytes),
            // Never chosen by extension: `--input-format openai-batch` opens
            // such files with `openai_batch::open`, which builds on this module.
            Format::OpenAiBatch => Err(Error::Config(
                "OpenAI Batch files are read with --input-format openai-batch".into(),
            )),
            // Never chosen by extension either: see `Source::from_batches`.
            Format::Arrow | Format::Delta => Err(Error::input(path, "not a file")),
        }
    }

    /// A source whose batches another reader makes (the OpenAI Batch
    /// format, Arrow data from Python), so the rest of the job handles it
    /// like any input.
    pub fn from_batches(
        path: &Path,
        format: Format,
        schema: SchemaRef,
        total_rows: Option<u64>,
        batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    ) -> Source {
        Source {
            path: path.to_path_buf(),
            schema,
            total_rows,
            batch_rows: 0,
            format,
            reader: Reader::Other(batches),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Keep only `shard`'s rows of a source made by another reader
    /// ([`Source::from_batches`]): its batches are read and sliced, so the
    /// other shards' rows are decoded but never sent.
    pub fn into_shard(self, shard: Shard) -> Result<Source> {
        let total = self.total_rows.ok_or_else(|| {
            Error::input(
                &self.path,
                "--shard needs to know how many rows the input has",
            )
        })?;
        let (start, end) = shard.rows(total);
        let path = self.path.clone();
        let (schema, format) = (self.schema.clone(), self.format);
        let mut at = 0u64;
        let batches = self.into_batches().filter_map(move |batch| {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            let (b0, b1) = (at, at + batch.num_rows() as u64);
            at = b1;
            let (lo, hi) = (b0.max(start), b1.min(end));
            (lo < hi).then(|| Ok(batch.slice((lo - b0) as usize, (hi - lo) as usize)))
        });
        Ok(Source::from_batches(
            &path,
            format,
            schema,
            Some(end - start),
            Box::new(batches),
        ))
    }

    /// The rows of the file, in order, in batches of at most `batch_size`
    /// rows. Only one batch (plus the reader's buffers) is in memory at a
    /// time. After the first error the iterator ends.
    pub fn into_batches(self) -> Box<dyn Iterator<Item = Result<RecordBatch>> + Send> {
        match self.reader {
            Reader::Parquet(reader) => {
                let path = self.path;
                Box::new(reader.map(move |batch| {
                    batch.map_err(|e| Error::input(&path, format!("cannot read Parquet data: {e}")))
                }))
            }
            Reader::Jsonl(batches) => Box::new(batches),
            Reader::Other(batches) => batches,
        }
    }
}

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(path, "no such file"),
        _ => Error::input(path, format!("cannot open: {e}")),
    })
}

fn open_parquet(input: &Location, batch_size: usize, shard: Option<Shard>) -> Result<Source> {
    let path = match input {
        Location::Local(path) => path,
        Location::Store(url) => return open_remote_parquet(url, batch_size, shard),
    };
    let file = open_file(path)?;
    let metadata = ArrowReaderMetadata::load(&file, Default::default())
        .map_err(|e| Error::input(path, format!("not a readable Parquet file: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone());
    let (builder, total_rows, batch_size, groups) = select_rows(builder, batch_size, shard);
    check_parquet(path, &metadata, &groups, batch_size)?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| Error::input(path, format!("cannot read Parquet file: {e}")))?;
    Ok(Source {
        path: path.to_path_buf(),
        schema,
        total_rows,
        batch_rows: batch_size,
        format: Format::Parquet,
        reader: Reader::Parquet(reader),
    })
}

/// A Parquet object in a store, read row group by row group.
fn open_remote_parquet(url: &StoreUrl, batch_size: usize, shard: Option<Shard>) -> Result<Source> {
    let remote = Remote::open(url, Role::Input)?;
    let (builder, total_rows, batch_size, _) =
        select_rows(store::parquet_builder(&remote)?, batch_size, shard);
    let schema = builder.schema().clone();
    let batches = store::parquet_batches(builder.with_batch_size(batch_size), &remote.url)?;
    let path = Path::new(url.as_str());
    let mut source = Source::from_batches(path, Format::Parquet, schema, total_rows, batches);
    source.batch_rows = batch_size;
    Ok(source)
}

/// Decodes every page of row groups `groups` of a local Parquet file, so
/// a corrupt one stops the job before the first request rather than after
/// the rows before it were paid for. The groups are shared among the
/// cores; each thread holds a page per column and one batch (as the run's
/// reader does), so memory grows with the cores, not the file.
fn check_parquet(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    groups: &[usize],
    batch_size: usize,
) -> Result<()> {
    let row_groups = metadata.metadata().row_groups();
    let first_rows: Vec<i64> = row_groups
        .iter()
        .scan(0i64, |at, g| {
            let first = *at;
            *at += g.num_rows();
            Some(first)
        })
        .collect();
    let check_group = |i: usize| -> Result<()> {
        let bad = |e: &dyn fmt::Display| {
            let (first, rows) = (first_rows[i], row_groups[i].num_rows());
            Error::input(
                path,
                format!(
                    "row group {i} (rows {}-{}): cannot read Parquet data: {e}",
                    first + 1,
                    first + rows
                ),
            )
        };
        // A file of its own: clones of one handle share its offset, and
        // the threads' seeks would interleave.
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(open_file(path)?, metadata.clone())
                .with_row_groups(vec![i])
                .with_batch_size(batch_size)
                .build()
                .map_err(|e| bad(&e))?;
        for batch in reader {
            batch.map_err(|e| bad(&e))?;
        }
        Ok(())
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(groups.len())
        .max(1);
    // Thread t checks every `threads`-th group from its t-th: the first
    // error in file order is reported whichever thread found it.
    let mut errors: Vec<(usize, Error)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let check_group = &check_group;
                scope.spawn(move || {
                    groups
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .find_map(|&i| check_group(i).err().map(|e| (i, e)))
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(found) => found,
                Err(_) => Some((0, Error::input(path, "checking the Parquet file failed"))),
            })
            .collect()
    });
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// What a local file and an object in a store read alike, from the footer:
/// rows per batch for the row width, and with a shard only its row groups
/// and rows. Returns the builder, the rows it will read, the batch size and
/// the row groups it will read.
fn select_rows<T>(
    mut builder: ArrowReaderBuilder<T>,
    batch_size: usize,
    shard: Option<Shard>,
) -> (ArrowReaderBuilder<T>, Option<u64>, usize, Vec<usize>) {
    // The footer's count is authoritative; a negative one would be corrupt,
    // and then we just don't know.
    let mut total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).ok();
    // Uncompressed bytes per row, from the footer: about the Arrow memory a
    // row takes once read. A dictionary-encoded column stores a repeated
    // value once, but a batch holds it in every row: its unencoded size
    // (which arrow-rs and recent writers record) says how wide it really is.
    let row_groups = builder.metadata().row_groups();
    let bytes: i64 = row_groups
        .iter()
        .flat_map(|g| g.columns())
        .map(|c| {
            c.uncompressed_size()
                .max(c.unencoded_byte_array_data_bytes().unwrap_or(0))
        })
        .sum();
    let rows: i64 = row_groups.iter().map(|g| g.num_rows()).sum();
    let batch_size = bounds::batch_rows(
        batch_size,
        usize::try_from(bytes / rows.max(1)).unwrap_or(0),
    );
    let mut read_groups: Vec<usize> = (0..row_groups.len()).collect();
    if let Some(shard) = shard {
        let groups: Vec<u64> = row_groups
            .iter()
            .map(|g| u64::try_from(g.num_rows()).unwrap_or(0))
            .collect();
        let (groups, selection, rows) = shard_row_groups(&groups, shard);
        read_groups = groups.clone();
        builder = builder
            .with_row_groups(groups)
            .with_row_selection(selection);
        total_rows = Some(rows);
    }
    (builder, total_rows, batch_size, read_groups)
}

/// The row groups that hold `shard`'s rows, and which of their rows to
/// read: row groups wholly outside the range are never read, and the
/// selection (relative to the chosen groups) cuts the ones at its edges.
/// Also returns the shard's row count.
fn shard_row_groups(group_rows: &[u64], shard: Shard) -> (Vec<usize>, RowSelection, u64) {
    let (start, end) = shard.rows(group_rows.iter().sum());
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    let mut at = 0u64;
    for (i, &n) in group_rows.iter().enumerate() {
        let (g0, g1) = (at, at + n);
        at = g1;
        let (lo, hi) = (g0.max(start), g1.min(end));
        if lo >= hi {
            continue;
        }
        groups.push(i);
        for (rows, select) in [(lo - g0, false), (hi - lo, true), (g1 - hi, false)] {
            if rows > 0 {
                let rows = rows as usize;
                selectors.push(if select {
                    RowSelector::select(rows)
                } else {
                    RowSelector::skip(rows)
                });
            }
        }
    }
    (groups, RowSelection::from(selectors), end - start)
}

fn open_jsonl(
    input: &Location,
    batch_size: usize,
    shard: Option<Shard>,
    max_line_bytes: usize,
) -> Result<Source> {
    // The whole input is read once before anything else (an object in a
    // store is streamed, never stored): every line checked, the columns
    // inferred from all of them, the rows counted.
    let path = input.as_path();
    let scan = jsonl::scan(Lines::new(
        path,
        store::open_read(input, 0)?,
        max_line_bytes,
        0,
        0,
    ))?;
    for column in &scan.widened {
        tracing::warn!(
            "{}: {column}: read as text, each value as written",
            path.display()
        );
    }
    let schema = Arc::new(scan.schema);
    let mut total_rows = Some(scan.rows);
    let file_bytes = input
        .local()
        .map_or(0, |path| std::fs::metadata(path).map_or(0, |m| m.len()));
    let row_bytes = usize::try_from(file_bytes / scan.rows.max(1)).unwrap_or(usize::MAX);
    let batch_size = bounds::batch_rows(batch_size, row_bytes.max(1));
    let (skip, take) = match shard {
        Some(shard) => {
            let (start, end) = shard.rows(scan.rows);
            total_rows = Some(end - start);
            (start, Some(end - start))
        }
        None => (0, None),
    };
    let decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_size)
        .with_coerce_primitive(scan.text_from_scalars)
        .build_decoder()
        .map_err(|e| {
            Error::input(
                path,
                format!("cannot decode with the inferred columns: {e}"),
            )
        })?;
    let batches = JsonlBatches {
        input: input.clone(),
        lines: Lines::new(path, store::open_read(input, 0)?, max_line_bytes, 0, 0),
        max_line_bytes,
        schema: schema.clone(),
        coerce: scan.text_from_scalars,
        decoder,
        batch_size,
        first_line_in_batch: 0,
        batch_offset: 0,
        batch_bytes: 0,
        done: false,
        skip,
        take,
    };
    Ok(Source {
        path: path.to_path_buf(),
        schema,
        total_rows,
        batch_rows: batch_size,
        format: Format::Jsonl,
        reader: Reader::Jsonl(Box::new(batches)),
    })
}

/// Decodes a JSONL file into batches, one line at a time, so that an error
/// can name its line and a batch never holds more than `batch_size` rows.
/// The file was checked whole when opened ([`jsonl::scan`]): an error here
/// means it changed since.
struct JsonlBatches {
    input: Location,
    lines: Lines,
    max_line_bytes: usize,
    schema: SchemaRef,
    coerce: bool,
    decoder: Decoder,
    batch_size: usize,
    /// The first line of the rows now in the decoder, and where it starts,
    /// for errors that only show when the batch is built (a value of the
    /// wrong type): see [`JsonlBatches::pinpoint`].
    first_line_in_batch: u64,
    batch_offset: u64,
    /// Bytes of the lines now in the decoder: a batch also ends at
    /// [`BATCH_BYTES`], so a run of unusually wide lines stays bounded.
    batch_bytes: usize,
    done: bool,
    /// Rows (non-blank lines) of earlier shards still to pass over, unparsed.
    skip: u64,
    /// Rows of this shard still to read; `None`: to the end of the file.
    take: Option<u64>,
}

impl JsonlBatches {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.decoder.len() >= self.batch_size
                || self.batch_bytes >= BATCH_BYTES
                || self.take == Some(0)
            {
                return self.flush();
            }
            let Some(line) = self.lines.next_row()? else {
                return self.flush();
            };
            if self.skip > 0 {
                self.skip -= 1; // another shard's row: checked when opened
                continue;
            }
            if let Some(take) = self.take.as_mut() {
                *take -= 1;
            }
            let (line_no, len) = (line.no, line.text.len());
            // The decoder accepts any JSON value and only complains about a
            // non-object when the batch is built, without a line number.
            if line.text.first() != Some(&b'{') {
                return Err(self.lines.error("not a JSON object"));
            }
            if self.decoder.is_empty() {
                self.first_line_in_batch = line_no;
                self.batch_offset = line.start;
            }
            self.batch_bytes += len;
            let before = self.decoder.len();
            let consumed = self.decoder.decode(line.text);
            let consumed = consumed.map_err(|e| self.lines.error(e))?;
            // JSON Lines means exactly one object per line: a truncated
            // object would otherwise swallow the next line, and two objects
            // on one line would throw off the row count.
            if consumed != len
                || self.decoder.has_partial_record()
                || self.decoder.len() != before + 1
            {
                return Err(self.lines.error(
                    "not exactly one complete JSON object (JSON Lines needs one object per line)",
                ));
            }
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        // Reset here, not at the next row: a flush at the byte bound with
        // the count left over would end the next batch before its first
        // row, empty, and an empty batch reads as the end of the input
        // (every row after a line over BATCH_BYTES was lost that way).
        self.batch_bytes = 0;
        let (first, last) = (self.first_line_in_batch, self.lines.line_no);
        self.decoder.flush().map_err(|e| {
            let (lines, e) = match self.pinpoint(first, last) {
                Some((line, e)) => (format!("line {line}"), e),
                None => (format!("lines {first}-{last}"), e),
            };
            Error::input(
                &self.input,
                format!("{lines}: {e} (did the file change since aiq checked it?)"),
            )
        })
    }

    /// Finds the line that made a batch fail by decoding the batch's lines
    /// again one at a time. Only runs on the error path, so re-reading is
    /// cheaper than keeping every batch's text in memory just in case.
    fn pinpoint(&self, first: u64, last: u64) -> Option<(u64, ArrowError)> {
        let reader = store::open_read(&self.input, self.batch_offset).ok()?;
        let mut lines = Lines::new(
            self.input.as_path(),
            reader,
            self.max_line_bytes,
            first.saturating_sub(1),
            self.batch_offset,
        );
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .with_batch_size(1)
            .with_coerce_primitive(self.coerce)
            .build_decoder()
            .ok()?;
        while lines.line_no < last {
            let line = lines.next_row().ok()??;
            let line_no = line.no;
            decoder.decode(line.text).ok()?;
            if let Err(e) = decoder.flush() {
                return Some((line_no, e));
            }
        }
        None
    }
}

impl Iterator for JsonlBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_batch() {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                // The decoder's state is undefined after an error: stop.
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use std::io::Write;

    fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn collect(source: Source) -> Vec<RecordBatch> {
        source.into_batches().collect::<Result<Vec<_>>>().unwrap()
    }

    fn input_error(err: Error, path: &Path) -> String {
        match &err {
            Error::Input { path: p, .. } => assert_eq!(p, path),
            other => panic!("expected Error::Input, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        msg
    }

    fn open_err(path: &Path) -> Error {
        Source::open(path, 10).expect_err("open should fail")
    }

    fn column_names(schema: &Schema) -> Vec<&str> {
        schema.fields().iter().map(|f| f.name().as_str()).collect()
    }

    #[test]
    fn parquet_round_trip_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.PARQUET");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (0..25).collect();
        let texts: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from(texts)),
            ],
        )
        .unwrap();
        let mut writer = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let source = Source::open(&path, 10).unwrap();
        assert_eq!(source.format(), Format::Parquet);
        assert_eq!(source.total_rows, Some(25));
        assert_eq!(column_names(&source.schema), ["id", "text"]);
        let batches = collect(source);
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let got: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                col.values().to_vec()
            })
            .collect();
        assert_eq!(got, ids);
    }

    #[test]
    fn jsonl_keeps_file_key_order_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "in.jsonl",
            b"{\"text\": \"a\", \"id\": 1, \"score\": 0.5}\n{\"text\": \"b\", \"id\": 2, \"score\": 1, \"extra\": true}\n",
        );
        let source = Source::open(&path, 100).unwrap();
        assert_eq!(
            column_names(&source.schema),
            ["text", "id", "score", "extra"]
        );
        assert_eq!(source.schema.field(1).data_type(), &DataType::Int64);
        assert_eq!(source.schema.field(2).data_type(), &DataType::Float64);
        assert_eq!(source.total_rows, Some(2));
        let batches = collect(source);
        assert_eq!(batches.len(), 1);
        let text = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(text.value(1), "b");
        let score = batches[0]
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(score.value(1), 1.0);
        assert!(batches[0].column(3).is_null(0));
    }

    #[test]
    fn jsonl_batch_size_blank_lines_crlf_and_bom() {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = b"\xEF\xBB\xBF".to_vec();
        for i in 0..23 {
            write!(contents, "{{\"id\": {i}}}\r\n").unwrap();
            if i % 5 == 0 {
                contents.extend_from_slice(b"   \r\n\n");
            }
        }
        contents.extend_from_slice(b"{\"id\": 23}"); // no final newline
        let path = write(dir.path(), "in.NDJSON", &contents);
        let source = Source::open(&path, 7).unwrap();
        assert_eq!(source.format(), Format::Jsonl);
        assert_eq!(source.total_rows, Some(24));
        let batches = collect(source);
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [7, 7, 7, 3]
        );
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, (0..24).collect::<Vec<_>>());
    }

    /// Wide rows come in batches bounded by bytes ([`BATCH_BYTES`]), not
    /// in the asked 1,024 rows: what keeps memory flat for documents.
    #[test]
    fn wide_rows_come_in_batches_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let text = "w".repeat(64 << 10);
        let rows = 100;
        let mut jsonl = Vec::new();
        for i in 0..rows {
            writeln!(jsonl, "{{\"id\": {i}, \"text\": \"{text}\"}}").unwrap();
            if i == 50 {
                // A blank line longer than a read: not a row.
                jsonl.extend(std::iter::repeat_n(b' ', 256 * 1024 + 7));
                jsonl.push(b'\n');
            }
        }
        let jsonl = write(dir.path(), "wide.jsonl", &jsonl);

        let parquet = dir.path().join("wide.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            // The same text in every row: dictionary-encoded, stored once,
            // but as wide as ever once read.
            vec![Arc::new(StringArray::from(vec![text.as_str(); rows]))],
        )
        .unwrap();
        let mut writer =
            ArrowWriter::try_new(File::create(&parquet).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        for path in [jsonl, parquet] {
            let source = Source::open(&path, 1024).unwrap();
            assert_eq!(source.total_rows, Some(rows as u64), "{}", path.display());
            let expected = BATCH_BYTES / (64 << 10);
            assert!(
                source.batch_rows <= expected && source.batch_rows >= expected / 2,
                "{}: {} rows per batch",
                path.display(),
                source.batch_rows
            );
            let batches = collect(source);
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
            let widest = batches.iter().map(|b| b.num_rows()).max().unwrap();
            assert!(
                widest <= expected,
                "{}: a batch of {widest} rows",
                path.display()
            );
        }
    }

    #[test]
    fn missing_file_and_unknown_extension() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.parquet");
        let msg = input_error(open_err(&missing), &missing);
        assert!(msg.contains("no such file"), "{msg}");
        let missing = dir.path().join("nope.jsonl");
        input_error(open_err(&missing), &missing);

        let csv = write(dir.path(), "data.csv", b"a,b\n1,2\n");
        let msg = input_error(open_err(&csv), &csv);
        assert!(msg.contains(".parquet") && msg.contains(".jsonl"), "{msg}");
        let bare = write(dir.path(), "data", b"");
        input_error(open_err(&bare), &bare);
    }

    #[test]
    fn corrupt_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bad.parquet", b"this is not parquet at all");
        let msg = input_error(open_err(&path), &path);
        assert!(msg.contains("Parquet"), "{msg}");
        let empty = write(dir.path(), "empty.parquet", b"");
        input_error(open_err(&empty), &empty);
    }

    #[test]
    fn malformed_jsonl_in_inference_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "bad.jsonl",
            b"{\"a\": 1}\n\n{\"a\": 2,\n{\"a\": 3}\n",
        );
        let msg = input_error(open_err(&path), &path);
        assert!(msg.contains("line 3"), "{msg}");
        let path = write(dir.path(), "array.jsonl", b"{\"a\": 1}\n[1, 2]\n");
        let msg = input_error(open_err(&path), &path);
        assert!(
            msg.contains("line 2") && msg.contains("JSON object"),
            "{msg}"
        );
    }

    /// 1,005 good lines, then `bad_line`, then one more.
    fn late_bad_line(bad_line: &[u8]) -> Vec<u8> {
        let mut contents = Vec::new();
        for i in 0..1005 {
            writeln!(contents, "{{\"id\": {i}, \"text\": \"t\"}}").unwrap();
        }
        contents.extend_from_slice(bad_line);
        contents.extend_from_slice(b"\n{\"id\": 0, \"text\": \"t\"}\n");
        contents
    }

    /// However late a bad line, opening the file finds it and names it,
    /// before any batch is read.
    #[test]
    fn malformed_jsonl_anywhere_stops_the_open_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            &b"{\"id\": 1, \"text\": "[..],
            b"{\"id\": 1} {\"id\": 2}",
            b"42",
            b"{\"id\": 1, \"text\": tru}",
            b"{\"id\": 1, \"text\": \"\xff\"}",
            b"{\"id\": 1, \"text\": {\"a\": 1}}",
        ] {
            let path = write(dir.path(), "late.jsonl", &late_bad_line(bad));
            let msg = input_error(open_err(&path), &path);
            assert!(msg.contains("line 1006:"), "{msg}");
        }
    }

    /// A file changed between its check and its reading: the streaming
    /// decoder still names the line.
    #[test]
    fn a_file_changed_after_its_check_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "late.jsonl", &late_bad_line(b"{\"id\": 7}"));
        for (bad, line) in [
            (&b"{\"id\": 1, \"text\": "[..], "line 1006"),
            // A value of the wrong type only shows when the batch is built.
            (b"{\"id\": \"nine\", \"text\": \"t\"}", "line 1006:"),
        ] {
            let source = Source::open(&path, 100).unwrap();
            std::fs::write(&path, late_bad_line(bad)).unwrap();
            let results: Vec<_> = source.into_batches().collect();
            let err = results.into_iter().find_map(|r| r.err()).expect("an error");
            let msg = input_error(err, &path);
            assert!(msg.contains(line), "{msg}");
            std::fs::write(&path, late_bad_line(b"{\"id\": 7}")).unwrap();
        }
    }

    #[test]
    fn empty_jsonl_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "empty.jsonl", b"\n  \n");
        let msg = input_error(open_err(&path), &path);
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn zero_batch_size_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "in.jsonl", b"{\"a\": 1}\n");
        assert!(matches!(Source::open(&path, 0), Err(Error::Config(_))));
    }
}

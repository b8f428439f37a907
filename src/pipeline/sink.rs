//! Sink: input batches + their outcomes → output Parquet.
//!
//! The output schema is the input's columns (cast where DuckDB, pandas or
//! Spark would reject them), then the outcome columns ([`OUTCOME_COLUMNS`]).
//! Finished batches go into part files of the journal's state folder, in
//! input order, rolled every [`PART_ROWS`] rows or [`PART_BYTES`] bytes;
//! when the job completes the parts' encoded row groups are copied into the
//! output ([`concat`]: nothing is encoded twice), which appears atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::file::metadata::ParquetMetaDataReader;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::job::spend::{row_cost, Prices};
use crate::pipeline::bounds::{PART_BYTES, PART_ROWS};
use crate::pipeline::journal::{part_name, Manifest, Part};
use crate::pipeline::outcome::{Outcome, RowId};
use crate::pipeline::parquet_out::{
    compatible_schema, concat, footer_value, make_compatible, ParquetFile, JOB_KEY,
};
use crate::pipeline::store::{parquet_footer, Remote};

/// The columns aiq adds after the input's, in order.
pub const OUTCOME_COLUMNS: [&str; 17] = [
    "result",
    "error_message",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "maybe_billed_twice",
    "repairs",
    "request_fingerprint",
    "shared_from",
];

/// The usage columns, in [`crate::pipeline::outcome::Usage::fields_mut`]
/// order: the six of [`OUTCOME_COLUMNS`] from `prompt_tokens` on.
const USAGE_COLUMNS: &[&str] = OUTCOME_COLUMNS.split_at(3).1.split_at(6).0;

/// Builds output batches.
#[derive(Debug, Clone)]
pub struct Layout {
    input: SchemaRef,
    pub output: SchemaRef,
    result_schema: SchemaRef,
    /// Prices for the `cost` column (null without them).
    prices: Option<Prices>,
}

impl Layout {
    /// Fails (exit 2) when an input column has the name of an outcome column.
    pub fn new(input: &Schema, result_type: DataType) -> Result<Layout> {
        let input = compatible_schema(input);
        if let Some(clash) = input
            .fields()
            .iter()
            .find(|f| OUTCOME_COLUMNS.contains(&f.name().as_str()))
        {
            return Err(Error::Config(format!(
                "the input has a column named `{}`, which aiq writes itself; rename it in the input",
                clash.name()
            )));
        }
        let result = Field::new("result", result_type, true);
        let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
        fields.push(Arc::new(result.clone()));
        fields.push(Arc::new(Field::new("error_message", DataType::Utf8, true)));
        fields.push(Arc::new(Field::new("finish_reason", DataType::Utf8, true)));
        for &name in USAGE_COLUMNS {
            fields.push(Arc::new(Field::new(name, DataType::Int64, false)));
        }
        fields.push(Arc::new(Field::new("cost", DataType::Float64, true)));
        fields.push(Arc::new(Field::new("latency_ms", DataType::Int64, true)));
        fields.push(Arc::new(Field::new("ttft_ms", DataType::Int64, true)));
        fields.push(Arc::new(Field::new("attempts", DataType::Int32, false)));
        fields.push(Arc::new(Field::new(
            "maybe_billed_twice",
            DataType::Boolean,
            false,
        )));
        fields.push(Arc::new(Field::new("repairs", DataType::Int32, false)));
        fields.push(Arc::new(Field::new(
            "request_fingerprint",
            DataType::Utf8,
            true,
        )));
        fields.push(Arc::new(Field::new("shared_from", DataType::Int64, true)));
        Ok(Layout {
            input,
            output: Arc::new(Schema::new(fields)),
            result_schema: Arc::new(Schema::new(vec![result])),
            prices: None,
        })
    }

    /// Fill the `cost` column at these prices (USD per million tokens).
    pub fn with_prices(mut self, prices: Option<Prices>) -> Layout {
        self.prices = prices;
        self
    }

    /// One output batch: `input` rows with their outcomes, in row order.
    pub fn assemble(&self, input: &RecordBatch, outcomes: &mut [Outcome]) -> Result<RecordBatch> {
        let input = make_compatible(input, &self.input)
            .map_err(|e| Error::Config(format!("input columns: {e}")))?;
        let result = self.result_column(outcomes)?;
        let n = outcomes.len();
        let mut error = StringBuilder::with_capacity(n, 0);
        let mut finish = StringBuilder::with_capacity(n, n * 4);
        let mut usage: [Int64Builder; USAGE_COLUMNS.len()] =
            std::array::from_fn(|_| Int64Builder::with_capacity(n));
        let mut cost = Float64Builder::with_capacity(n);
        let mut latency = Int64Builder::with_capacity(n);
        let mut ttft = Int64Builder::with_capacity(n);
        let mut attempts = Int32Builder::with_capacity(n);
        let mut billed_twice = BooleanBuilder::with_capacity(n);
        let mut repairs = Int32Builder::with_capacity(n);
        let mut fingerprint = StringBuilder::with_capacity(n, n * 32);
        let mut shared_from = Int64Builder::with_capacity(n);
        for o in outcomes.iter() {
            error.append_option(o.error_message.as_deref());
            finish.append_option(o.finish_reason.as_deref());
            let mut u = o.usage;
            for (b, v) in usage.iter_mut().zip(u.fields_mut()) {
                b.append_value(*v);
            }
            cost.append_option(row_cost(self.prices.as_ref(), &o.billed_usage()));
            latency.append_option(o.latency_ms);
            ttft.append_option(o.ttft_ms);
            attempts.append_value(o.attempts.min(i32::MAX as u32) as i32);
            billed_twice.append_value(o.maybe_billed_twice());
            repairs.append_value(o.repairs.min(i32::MAX as u32) as i32);
            fingerprint.append_option(o.fingerprint.as_deref());
            shared_from.append_option(o.shared.map(|s| s.from.min(i64::MAX as u64) as i64));
        }
        let mut columns: Vec<ArrayRef> = input.columns().to_vec();
        columns.push(result);
        columns.push(Arc::new(error.finish()));
        columns.push(Arc::new(finish.finish()));
        for mut b in usage {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(cost.finish()));
        columns.push(Arc::new(latency.finish()));
        columns.push(Arc::new(ttft.finish()));
        columns.push(Arc::new(attempts.finish()));
        columns.push(Arc::new(billed_twice.finish()));
        columns.push(Arc::new(repairs.finish()));
        columns.push(Arc::new(fingerprint.finish()));
        columns.push(Arc::new(shared_from.finish()));
        RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| Error::Config(format!("output batch: {e}")))
    }

    /// The typed `result` column, decoded from the outcomes' JSON values. A
    /// value that does not decode (the reply parser should have caught it)
    /// becomes a null with an error in its row rather than failing the batch.
    fn result_column(&self, outcomes: &mut [Outcome]) -> Result<ArrayRef> {
        let rows: Vec<Value> = outcomes
            .iter()
            .map(|o| json!({"result": o.result}))
            .collect();
        if let Ok(batch) = decode(&self.result_schema, &rows) {
            return Ok(batch.column(0).clone());
        }
        let mut rows = rows;
        for (o, row) in outcomes.iter_mut().zip(rows.iter_mut()) {
            if let Err(e) = decode(&self.result_schema, std::slice::from_ref(row)) {
                o.error_message
                    .get_or_insert_with(|| format!("result does not fit the result type: {e}"));
                o.result = Value::Null;
                *row = json!({"result": null});
            }
        }
        decode(&self.result_schema, &rows)
            .map(|b| b.column(0).clone())
            .map_err(|e| Error::Config(format!("result column: {e}")))
    }
}

pub(crate) fn decode(
    schema: &SchemaRef,
    rows: &[Value],
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// Writes finished batches into part files, rolling every [`PART_ROWS`]
/// rows or [`PART_BYTES`] bytes, whichever comes first.
pub struct PartWriter {
    dir: PathBuf,
    schema: SchemaRef,
    current: Option<(RowId, RowId, ParquetFile)>,
    pub parts: Vec<Part>,
    /// Told each time a part is complete: an object-store output sends it
    /// (and the journal before it) to the bucket then, not at the next tick.
    pub on_part: Option<Arc<tokio::sync::Notify>>,
}

impl PartWriter {
    pub fn new(dir: PathBuf, schema: SchemaRef, parts: Vec<Part>) -> PartWriter {
        PartWriter {
            dir,
            schema,
            current: None,
            parts,
            on_part: None,
        }
    }

    /// Write the output rows starting at row `first`.
    pub fn write(&mut self, first: RowId, batch: &RecordBatch) -> Result<()> {
        let (start, end, file) = match &mut self.current {
            Some(c) => c,
            None => {
                // The file's final name is only known at commit; until then
                // ParquetFile keeps it under a temporary name.
                let path = self.dir.join(format!("part-{first:012}-open.parquet"));
                let file = ParquetFile::create(&path, self.schema.clone())?;
                self.current.insert((first, first, file))
            }
        };
        debug_assert_eq!(*end, first);
        file.write(batch)?;
        *end = first + batch.num_rows() as u64;
        if *end - *start >= PART_ROWS || file.size() >= PART_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    /// Close the open part, if any, and rename it to its row range.
    pub fn commit(&mut self) -> Result<()> {
        let Some((start, end, file)) = self.current.take() else {
            return Ok(());
        };
        let open = file.path().to_path_buf();
        file.finish()?;
        if end == start {
            let _ = std::fs::remove_file(&open);
            return Ok(());
        }
        let path = self.dir.join(part_name(start, end));
        std::fs::rename(&open, &path).map_err(|e| Error::io(&path, e))?;
        self.parts.push(Part { start, end, path });
        if let Some(notify) = &self.on_part {
            notify.notify_one();
        }
        Ok(())
    }
}

/// Concatenate the parts, in order, into `output` (atomically), copying
/// their encoded row groups; its footer names `job` ([`job_stamp`]).
pub fn concat_parts(parts: &[Part], output: &Path, schema: SchemaRef, job: &str) -> Result<u64> {
    let files: Vec<PathBuf> = parts.iter().map(|p| p.path.clone()).collect();
    concat(&files, output, schema, Some(job))
}

/// What an output's footer says about the job that wrote it: a hash of the
/// journal's manifest (input identity and answer-changing settings), so the
/// same job run again finds its output complete.
pub fn job_stamp(manifest: &Manifest) -> String {
    let bytes = serde_json::to_vec(manifest).unwrap_or_default();
    blake3::hash(&bytes).to_hex()[..32].to_string()
}

/// The rows of `output` (a local path or an object-store URL) if it is a
/// Parquet file whose footer says `job` ([`job_stamp`]) wrote it.
pub async fn written_by(output: &Location, job: &str) -> Option<u64> {
    let meta = match output {
        Location::Store(url) => parquet_footer(&Remote::open(url, Role::Output).ok()?).await?,
        // Only a regular file has a footer (a pipe would block the open).
        Location::Local(output) if output.is_file() => {
            let file = std::fs::File::open(output).ok()?;
            Arc::new(ParquetMetaDataReader::new().parse_and_finish(&file).ok()?)
        }
        Location::Local(_) => return None,
    };
    let file = meta.file_metadata();
    (footer_value(file, JOB_KEY)? == job).then(|| u64::try_from(file.num_rows()).unwrap_or(0))
}

/// Checks, before anything is sent, that the job can write `output`: not a
/// directory, its folder there (created like `mkdir -p`) and writable, and
/// not the `input`, which the output would replace. Each is an output
/// error (exit 2). For an object-store output only the last applies: the
/// store answers the rest when the job's state is first written there.
pub fn check_output(output: &Location, input: Option<&Location>) -> Result<()> {
    // A device or pipe (`--output /dev/null`) is no file to write: the
    // output is written beside it and renamed into place, which would
    // replace the node itself (as root, /dev/null), and opening a pipe to
    // read a footer waits for a writer forever.
    if let Location::Local(path) = output {
        let kind = std::fs::metadata(path).map(|m| m.file_type());
        if kind.is_ok_and(|k| !k.is_file() && !k.is_dir()) {
            return Err(Error::output(
                output,
                "is not a regular file (a device, pipe or socket): aiq writes its output beside \
                 it and renames it into place. Name a file; --dry-run sends and writes nothing",
            ));
        }
    }
    if input.is_some_and(|input| input.same_as(output)) {
        return Err(Error::output(
            output,
            "is the input: writing it would replace the input. Choose another output",
        ));
    }
    let Location::Local(output) = output else {
        return Ok(());
    };
    if output.is_dir()
        || output
            .to_string_lossy()
            .ends_with(std::path::MAIN_SEPARATOR)
    {
        return Err(Error::output(
            output,
            format!(
                "is a directory: name a file, e.g. {}",
                output.join("out.parquet").display()
            ),
        ));
    }
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(folder)
        .map_err(|e| Error::output(output, format!("cannot create its folder: {e}")))?;
    let probe = folder.join(format!(".aiq-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| {
        Error::output(
            output,
            format!("cannot write in its folder {}: {e}", folder.display()),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use futures::FutureExt;

    #[test]
    fn a_completed_part_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef],
        )
        .unwrap();
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut parts = PartWriter::new(dir.path().to_path_buf(), schema, Vec::new());
        parts.on_part = Some(notify.clone());
        parts.write(0, &batch).unwrap();
        assert!(
            notify.notified().now_or_never().is_none(),
            "a part still open"
        );
        parts.commit().unwrap();
        assert!(notify.notified().now_or_never().is_some());
        assert_eq!(parts.parts.len(), 1);
    }
}

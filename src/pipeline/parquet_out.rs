//! Writing Parquet output that common readers accept, and that never exists
//! half-written.
//!
//! This module owns four things: the output schema ([`compatible_schema`]:
//! Arrow types that DuckDB, pandas and Spark all read the same way), the
//! writer settings ([`writer_properties`]), the atomic file writer
//! ([`ParquetFile`]): rows go to a hidden temporary file beside the target,
//! which replaces the target only once its footer is written and on disk (a
//! crash, an error or Ctrl-C leaves either the old file or the new one, never
//! a Parquet file without a footer, which no reader can open); and
//! [`concat`], which joins finished files by copying their encoded column
//! chunks, so each output byte is encoded and compressed once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::kernels::cast::{can_cast_types, cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{KeyValue, PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;

use crate::error::{Error, Result};
use crate::pipeline::bounds::{ROW_GROUP_BYTES, ROW_GROUP_ROWS};

/// Rows per row group at most (see [`crate::pipeline::bounds`]).
pub const MAX_ROW_GROUP_ROWS: usize = ROW_GROUP_ROWS;

/// zstd level 3: zstd's own default, most of the size gain of higher levels
/// at a fraction of their CPU cost.
const ZSTD_LEVEL: i32 = 3;

/// The schema to write for input `schema`: the same columns, with each type
/// that a common reader rejects or mishandles replaced by one they all read:
///
/// - `UInt8/16/32` → the next wider signed integer (lossless); Spark has no
///   unsigned types.
/// - `UInt64` → `Decimal128(20, 0)`: lossless for every value, so writing can
///   never fail late in a job on a large id or hash; it is also what Spark
///   itself maps unsigned 64-bit Parquet columns to. (`Int64` would fail or
///   corrupt values above `i64::MAX`.)
/// - `Timestamp(Nanosecond, tz)` → `Timestamp(Microsecond, tz)` and
///   `Time64(Nanosecond)` → `Time64(Microsecond)`: Spark rejects nanosecond
///   Parquet timestamps and older pandas/pyarrow stacks mangle them; digits
///   below a microsecond are dropped.
/// - `Date64` → `Date32` (Parquet's date is days; Date64 round-trips through
///   Arrow-specific metadata only).
/// - `Utf8View`/`BinaryView` → `Utf8`/`Binary`; `LargeUtf8` stays.
/// - `Dictionary(_, v)` → `v`: dictionary encoding is Parquet's job anyway,
///   and some readers choke on Arrow dictionary metadata.
/// - `Float16` → `Float32`: few readers support half floats.
/// - `Null` (a JSONL key that was null in every sampled line) → `Utf8` of
///   nulls: Parquet's UNKNOWN logical type is not understood everywhere.
///
/// Lists, structs and maps are converted inside. A type Arrow cannot cast is
/// left as it is rather than failing here.
pub fn compatible_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<FieldRef> = schema.fields().iter().map(compatible_field).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn compatible_field(field: &FieldRef) -> FieldRef {
    let from = field.data_type();
    let to = compatible_type(from);
    if &to == from || !can_cast_types(from, &to) {
        return field.clone();
    }
    Arc::new(Field::clone(field).with_data_type(to))
}

fn compatible_type(data_type: &DataType) -> DataType {
    use DataType::*;
    match data_type {
        UInt8 => Int16,
        UInt16 => Int32,
        UInt32 => Int64,
        UInt64 => Decimal128(20, 0),
        Float16 => Float32,
        Timestamp(TimeUnit::Nanosecond, tz) => Timestamp(TimeUnit::Microsecond, tz.clone()),
        Time64(TimeUnit::Nanosecond) => Time64(TimeUnit::Microsecond),
        Date64 => Date32,
        Utf8View => Utf8,
        BinaryView => Binary,
        Null => Utf8,
        Dictionary(_, values) => compatible_type(values),
        List(item) => List(compatible_field(item)),
        LargeList(item) => LargeList(compatible_field(item)),
        FixedSizeList(item, len) => FixedSizeList(compatible_field(item), *len),
        Struct(fields) => Struct(fields.iter().map(compatible_field).collect()),
        Map(entries, sorted) => Map(compatible_field(entries), *sorted),
        other => other.clone(),
    }
}

/// `batch` converted to `target` (normally [`compatible_schema`] of the
/// batch's schema), casting the columns whose type differs. Casts are
/// checked: a value that does not fit is an error, never a silent null.
pub fn make_compatible(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.num_columns() != target.fields().len() {
        return Err(ArrowError::SchemaError(format!(
            "batch has {} columns, output schema {}",
            batch.num_columns(),
            target.fields().len()
        )));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                cast_with_options(column, field.data_type(), &options)
            }
        })
        .collect::<Result<Vec<ArrayRef>, ArrowError>>()?;
    // The row count is given explicitly so that a batch without columns
    // keeps its rows.
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(target.clone(), columns, &options)
}

/// The settings every output file is written with: zstd level 3, row groups
/// of at most [`MAX_ROW_GROUP_ROWS`] rows and [`ROW_GROUP_BYTES`] encoded
/// bytes (the writer holds a row group in memory until it is flushed, so
/// rows alone would not bound memory for wide rows), page-level statistics
/// (so readers can skip row groups and pages).
pub fn writer_properties() -> WriterProperties {
    // Level 3 is always valid; the fallback only keeps this free of panics.
    let level = ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// A Parquet file being written to `path` through a temporary sibling
/// `.<name>.tmp-<pid>`. [`ParquetFile::finish`] writes the footer, flushes it
/// to disk and renames the temporary file onto `path`; dropping the writer
/// without finishing removes the temporary file and leaves `path` untouched.
///
/// Batches are written as given: pass a schema from [`compatible_schema`] and
/// batches from [`make_compatible`] for output that every reader accepts.
pub struct ParquetFile {
    staged: Staged,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile")
            .field("path", &self.staged.path)
            .field("tmp", &self.staged.tmp)
            .field("rows", &self.rows)
            .finish()
    }
}

impl ParquetFile {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        let (staged, file) = Staged::create(path)?;
        // From here on, Drop removes the temporary file on every error path.
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))
            .map_err(|e| Error::output(path, format!("cannot start a Parquet file: {e}")))?;
        Ok(ParquetFile {
            staged,
            writer: Some(writer),
            rows: 0,
        })
    }

    /// The file this writer will produce.
    pub fn path(&self) -> &Path {
        &self.staged.path
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(Error::output(
                &self.staged.path,
                "write after the file was finished",
            ));
        };
        writer
            .write(batch)
            .map_err(|e| Error::io(&self.staged.path, e.into()))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Bytes written to the file so far plus those buffered for the next
    /// row group: what the file would be if finished now, about.
    pub fn size(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |w| (w.bytes_written() + w.in_progress_size()) as u64)
    }

    /// Writes the footer, makes the file durable and moves it onto the
    /// target path. Returns the number of rows written.
    pub fn finish(mut self) -> Result<u64> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::output(
                &self.staged.path,
                "the file was already finished",
            ));
        };
        // Writes the remaining rows and the footer, and hands back the file.
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&self.staged.path, e.into()))?;
        self.staged.commit(file)?;
        Ok(self.rows)
    }
}

/// A file being written through a temporary sibling that replaces the
/// target only at [`Staged::commit`]; dropped uncommitted, it is removed.
struct Staged {
    path: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl Staged {
    fn create(path: &Path) -> Result<(Staged, File)> {
        let tmp = temp_path(path)?;
        if let Some(dir) = tmp.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(Error::output(
                    path,
                    format!("directory {} does not exist", dir.display()),
                ));
            }
        }
        let file = File::create(&tmp)
            .map_err(|e| Error::output(path, format!("cannot create {}: {e}", tmp.display())))?;
        let staged = Staged {
            path: path.to_path_buf(),
            tmp,
            committed: false,
        };
        Ok((staged, file))
    }

    /// Makes `file` (the temporary file, complete) durable and renames it
    /// onto the target.
    fn commit(&mut self, file: File) -> Result<()> {
        // fsync before rename: otherwise a crash can leave the new name
        // pointing at a file whose data never reached the disk.
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        // Closed before the rename (required on Windows).
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        sync_parent_dir(&self.path)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Nothing useful to do if removal fails while unwinding; the
            // hidden name keeps a leftover out of the user's way.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for ParquetFile {
    fn drop(&mut self) {
        // Close the file before `staged` removes it (required on Windows).
        self.writer.take();
    }
}

/// The footer key (Parquet key-value metadata) naming the job that wrote an
/// output, so that running the same job again can tell it is done.
pub const JOB_KEY: &str = "aiq.job";

/// The value of `key` in a Parquet footer's key-value metadata.
pub fn footer_value<'a>(
    meta: &'a parquet::file::metadata::FileMetaData,
    key: &str,
) -> Option<&'a str> {
    meta.key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_deref()
}

/// Joins Parquet files written by [`ParquetFile`] with `schema`, in order,
/// into `path` (atomically), its footer naming `job` ([`JOB_KEY`]) if given. Their encoded column chunks, page indexes and
/// statistics are copied as they are: nothing is decoded, re-encoded or
/// recompressed, and memory stays at one column chunk's copy buffer. With no
/// files, `path` is an empty file of `schema`. Returns the rows written.
pub fn concat(files: &[PathBuf], path: &Path, schema: SchemaRef, job: Option<&str>) -> Result<u64> {
    let stamp = job.map(|j| KeyValue::new(JOB_KEY.into(), j.to_string()));
    let Some(first) = files.first() else {
        let mut file = ParquetFile::create(path, schema)?;
        if let (Some(stamp), Some(w)) = (stamp, file.writer.as_mut()) {
            w.append_key_value_metadata(stamp);
        }
        return file.finish();
    };
    let open = |part: &Path| -> Result<(File, parquet::file::metadata::ParquetMetaData)> {
        let file = File::open(part).map_err(|e| Error::io(part, e))?;
        let meta = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .parse_and_finish(&file)
            .map_err(|e| Error::output(part, format!("not a readable Parquet file: {e}")))?;
        Ok((file, meta))
    };
    let (_, head) = open(first)?;
    let (mut staged, out) = Staged::create(path)?;
    let failed = |e: parquet::errors::ParquetError| Error::io(path, e.into());
    let root = head.file_metadata().schema_descr().root_schema_ptr();
    let mut writer =
        SerializedFileWriter::new(out, root, Arc::new(writer_properties())).map_err(failed)?;
    // The Arrow schema (ARROW:schema) and any other key-value metadata, so
    // readers see the same Arrow types as in the parts.
    for kv in head
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
    {
        writer.append_key_value_metadata(kv.clone());
    }
    if let Some(stamp) = stamp {
        writer.append_key_value_metadata(stamp);
    }
    let mut rows = 0u64;
    for part in files {
        let (file, meta) = open(part)?;
        if meta.file_metadata().schema_descr().root_schema()
            != head.file_metadata().schema_descr().root_schema()
        {
            return Err(Error::output(
                part,
                "its columns differ from the other parts; run again with --restart",
            ));
        }
        for (g, group) in meta.row_groups().iter().enumerate() {
            let mut out_group = writer.next_row_group().map_err(failed)?;
            for (c, column) in group.columns().iter().enumerate() {
                let close = ColumnCloseResult {
                    bytes_written: column.compressed_size() as u64,
                    rows_written: group.num_rows() as u64,
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: meta
                        .column_index()
                        .and_then(|i| i.get(g))
                        .and_then(|i| i.get(c))
                        .cloned(),
                    offset_index: meta
                        .offset_index()
                        .and_then(|i| i.get(g))
                        .and_then(|i| i.get(c))
                        .cloned(),
                };
                out_group.append_column(&file, close).map_err(failed)?;
            }
            out_group.close().map_err(failed)?;
            rows += group.num_rows() as u64;
        }
    }
    let out = writer.into_inner().map_err(failed)?;
    staged.commit(out)?;
    Ok(rows)
}

/// `.<name>.tmp-<pid>` beside `path`: hidden, in the same directory (so the
/// rename is atomic, on one file system), and distinct per process.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::output(path, "not a file name (ends in `..` or `/`)"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// Removes what killed writers of `path` left beside it: `.<name>.tmp-<pid>`
/// files ([`temp_path`]) whose process is `gone` (a file of a live process
/// is being written and stays). Returns how many were removed.
pub fn remove_stale_temps(path: &Path, gone: impl Fn(u32) -> bool) -> usize {
    let Some(name) = path.file_name() else {
        return 0;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let pid = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(&gone) {
            removed += usize::from(remove_left_behind(&entry.path()));
        }
    }
    removed
}

/// Removes `path` (a file, or a folder and all in it) that a killed run
/// left behind, saying so; true when it went.
pub fn remove_left_behind(path: &Path) -> bool {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => {
            tracing::info!("removed {}, left by a killed run", path.display());
            true
        }
        Err(e) => {
            tracing::warn!("cannot remove {}: {e}", path.display());
            false
        }
    }
}

/// Makes the rename itself durable: a directory entry reaches the disk only
/// when its directory is synced.
fn sync_parent_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = path; // Windows cannot open a directory as a file to sync it.
    Ok(())
}

/// Reads a whole Parquet file into memory: for small files (tests), not for
/// inputs (use [`crate::pipeline::source::Source`]) or parts ([`read_batches`]).
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>> {
    read_batches(path)?.collect()
}

/// The batches of a Parquet file written by aiq, read one at a time (at
/// most [`crate::pipeline::bounds::BATCH_BYTES`] of rows each).
pub fn read_batches(path: &Path) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::output(path, format!("not a readable Parquet file: {e}")))?;
    let meta = builder.metadata().file_metadata();
    let rows = usize::try_from(meta.num_rows()).unwrap_or(0);
    let bytes: i64 = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.total_byte_size())
        .sum();
    let batch = crate::pipeline::bounds::batch_rows(
        8 * 1024,
        usize::try_from(bytes).unwrap_or(0) / rows.max(1),
    );
    let reader = builder
        .with_batch_size(batch)
        .build()
        .map_err(|e| Error::output(path, format!("not a readable Parquet file: {e}")))?;
    let path = path.to_path_buf();
    Ok(reader.map(move |b| {
        b.map_err(|e: ArrowError| Error::output(&path, format!("cannot read Parquet data: {e}")))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, Date64Array, Decimal128Array, DictionaryArray, Int64Array, StringArray,
        StringViewArray, TimestampMicrosecondArray, TimestampNanosecondArray, UInt32Array,
        UInt64Array,
    };
    use arrow::datatypes::Int32Type;
    use parquet::schema::types::ColumnPath;

    fn ids_batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn finish_renames_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let batch = ids_batch(10);
        let mut out = ParquetFile::create(&path, batch.schema()).unwrap();
        out.write(&batch).unwrap();
        out.write(&batch).unwrap();
        let tmp = format!(".out.parquet.tmp-{}", std::process::id());
        assert_eq!(dir_entries(dir.path()), [tmp]);
        assert_eq!(out.finish().unwrap(), 20);
        assert_eq!(dir_entries(dir.path()), ["out.parquet"]);
        let back = read_all(&path).unwrap();
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 20);
        assert_eq!(
            back[0].column(0).slice(0, 10).as_ref(),
            batch.column(0).as_ref()
        );
    }

    #[test]
    fn drop_without_finish_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        std::fs::write(&path, b"previous output").unwrap();
        let batch = ids_batch(5);
        let mut out = ParquetFile::create(&path, batch.schema()).unwrap();
        out.write(&batch).unwrap();
        drop(out);
        assert_eq!(dir_entries(dir.path()), ["out.parquet"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"previous output");

        let fresh = dir.path().join("fresh.parquet");
        drop(ParquetFile::create(&fresh, batch.schema()).unwrap());
        assert_eq!(dir_entries(dir.path()), ["out.parquet"]);
    }

    #[test]
    fn write_with_the_wrong_schema_fails_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
        let mut out = ParquetFile::create(&path, schema).unwrap();
        let err = out.write(&ids_batch(3)).unwrap_err();
        assert!(err.to_string().contains("out.parquet"), "{err}");
        drop(out);
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn missing_directory_is_an_output_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/out.parquet");
        let err = ParquetFile::create(&path, ids_batch(1).schema()).unwrap_err();
        assert!(matches!(err, Error::Output { .. }), "{err:?}");
        assert!(err.to_string().contains("out.parquet"), "{err}");
    }

    #[test]
    fn read_all_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.parquet");
        assert!(read_all(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.parquet"));
        let junk = dir.path().join("junk.parquet");
        std::fs::write(&junk, b"not parquet").unwrap();
        assert!(read_all(&junk)
            .unwrap_err()
            .to_string()
            .contains("junk.parquet"));
    }

    #[test]
    fn properties_and_row_groups() {
        let props = writer_properties();
        let col = ColumnPath::from("id");
        assert_eq!(
            props.compression(&col),
            Compression::ZSTD(ZstdLevel::try_new(3).unwrap())
        );
        assert_eq!(props.max_row_group_row_count(), Some(MAX_ROW_GROUP_ROWS));
        assert_eq!(props.statistics_enabled(&col), EnabledStatistics::Page);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.parquet");
        let batch = ids_batch(MAX_ROW_GROUP_ROWS as i64 + 10);
        let mut out = ParquetFile::create(&path, batch.schema()).unwrap();
        out.write(&batch).unwrap();
        out.finish().unwrap();
        let file = File::open(&path).unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .clone();
        assert_eq!(meta.num_row_groups(), 2);
    }

    /// Wide rows flush row groups by bytes long before 65,536 rows: the
    /// writer holds a row group in memory, so rows alone would not bound it.
    #[test]
    fn wide_rows_flush_row_groups_by_bytes() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "blob",
            DataType::Binary,
            false,
        )]));
        // Incompressible bytes (xorshift), so the encoded size is the raw size.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut row = || -> Vec<u8> {
            (0..(64 << 10) / 8)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.parquet");
        let mut out = ParquetFile::create(&path, schema.clone()).unwrap();
        let (batches, rows_per_batch) = (6, 64); // 24 MiB in all
        for _ in 0..batches {
            let rows: Vec<Vec<u8>> = (0..rows_per_batch).map(|_| row()).collect();
            let array = arrow::array::BinaryArray::from_iter_values(rows.iter());
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(array)]).unwrap();
            out.write(&batch).unwrap();
        }
        out.finish().unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .metadata()
            .clone();
        assert!(
            meta.num_row_groups() >= 2,
            "{} row groups",
            meta.num_row_groups()
        );
        for g in meta.row_groups() {
            assert!(
                (g.compressed_size() as usize) < ROW_GROUP_BYTES + (1 << 20),
                "a row group of {} bytes",
                g.compressed_size()
            );
        }
        assert_eq!(meta.file_metadata().num_rows(), batches * rows_per_batch);
    }

    /// The output is the parts' encoded row groups copied as they are:
    /// every row group and its compressed bytes survive unchanged (a
    /// decode and re-encode would merge them into one group).
    #[test]
    fn concat_copies_row_groups_without_re_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = Vec::new();
        for (i, n) in [(0, 100), (1, 50), (2, 7)] {
            let path = dir.path().join(format!("part-{i}.parquet"));
            let mut out = ParquetFile::create(&path, ids_batch(0).schema()).unwrap();
            out.write(&ids_batch(n)).unwrap();
            out.write(&ids_batch(3)).unwrap();
            out.finish().unwrap();
            parts.push(path);
        }
        let output = dir.path().join("out.parquet");
        assert_eq!(
            concat(&parts, &output, ids_batch(0).schema(), None).unwrap(),
            166
        );
        let sizes = |path: &Path| -> Vec<(i64, i64)> {
            let file = File::open(path).unwrap();
            let meta = ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .unwrap();
            meta.row_groups()
                .iter()
                .map(|g| (g.num_rows(), g.compressed_size()))
                .collect()
        };
        let copied: Vec<(i64, i64)> = parts.iter().flat_map(|p| sizes(p)).collect();
        assert_eq!(sizes(&output), copied);
        let ids: Vec<i64> = read_all(&output)
            .unwrap()
            .iter()
            .flat_map(|b| {
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                col.values().to_vec()
            })
            .collect();
        let expected: Vec<i64> = [100, 50, 7]
            .into_iter()
            .flat_map(|n| (0..n).chain(0..3))
            .collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn compatible_schema_maps_types() {
        let utc: Option<Arc<str>> = Some("UTC".into());
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Schema::new(vec![
            Field::new("a", DataType::UInt8, true),
            Field::new("b", DataType::UInt16, true),
            Field::new("c", DataType::Float16, true),
            Field::new("d", DataType::Null, true),
            Field::new("e", DataType::BinaryView, true),
            Field::new("f", DataType::LargeUtf8, true),
            Field::new_list("g", Field::new_list_field(DataType::UInt32, true), true),
            Field::new(
                "h",
                DataType::Timestamp(TimeUnit::Nanosecond, utc.clone()),
                false,
            ),
            Field::new("i", dict, true),
        ]);
        let out = compatible_schema(&schema);
        let types: Vec<_> = out.fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(
            types,
            [
                DataType::Int16,
                DataType::Int32,
                DataType::Float32,
                DataType::Utf8,
                DataType::Binary,
                DataType::LargeUtf8,
                DataType::new_list(DataType::Int64, true),
                DataType::Timestamp(TimeUnit::Microsecond, utc),
                DataType::Utf8,
            ]
        );
        assert!(!out.field(7).is_nullable(), "nullability is kept");
    }

    #[test]
    fn compatible_data_survives_a_round_trip() {
        let ns = 1_700_000_000_123_456_789i64;
        let dict: DictionaryArray<Int32Type> = vec!["x", "y", "x"].into_iter().collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(vec![0, 7, u32::MAX])),
            Arc::new(UInt64Array::from(vec![0, 7, u64::MAX])),
            Arc::new(TimestampNanosecondArray::from(vec![ns, 0, -1]).with_timezone("UTC")),
            Arc::new(dict),
            Arc::new(StringViewArray::from(vec!["p", "q", "r"])),
            Arc::new(Date64Array::from(vec![86_400_000, 0, 2 * 86_400_000])),
        ];
        let fields: Vec<Field> = ["u32", "u64", "ts", "dict", "view", "date"]
            .iter()
            .zip(&columns)
            .map(|(name, c)| Field::new(*name, c.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let target = compatible_schema(&batch.schema());
        let converted = make_compatible(&batch, &target).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compat.parquet");
        let mut out = ParquetFile::create(&path, target.clone()).unwrap();
        out.write(&converted).unwrap();
        assert_eq!(out.finish().unwrap(), 3);
        let back = read_all(&path).unwrap();
        assert_eq!(back.len(), 1);
        let back = &back[0];
        assert_eq!(back.schema().fields(), target.fields());

        let u32s = back
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(u32s.values().as_ref(), [0, 7, i64::from(u32::MAX)]);
        let u64s = back
            .column(1)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(u64s.values().as_ref(), [0, 7, i128::from(u64::MAX)]);
        let ts = back
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), ns / 1000);
        assert_eq!(ts.timezone(), Some("UTC"));
        let dict = back
            .column(3)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            dict.iter().collect::<Vec<_>>(),
            [Some("x"), Some("y"), Some("x")]
        );
        let view = back
            .column(4)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(view.value(2), "r");
        assert_eq!(back.column(5).data_type(), &DataType::Date32);
        assert_eq!(back.column(5).len(), 3);
    }

    #[test]
    fn make_compatible_rejects_a_column_count_mismatch() {
        let batch = ids_batch(2);
        let target = Arc::new(Schema::empty());
        assert!(make_compatible(&batch, &target).is_err());
    }
}

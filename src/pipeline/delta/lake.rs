//! Delta Lake tables in and out (`--output-format delta`, `--input-format
//! delta`), with delta-rs.
//!
//! A job writing a Delta table runs exactly as one writing Parquet: the
//! journal and the byte-bounded parts live in the state folder beside the
//! table (`table.aiq/`, or `table.shard-K-of-N.aiq/` per shard, since shards
//! share the table), mirrored to the bucket for an object-store table. Only
//! the last step differs: [`commit`] hands the parts to delta-rs, which
//! writes them as data files of at most [`PART_BYTES`] and then commits one
//! log entry. Nothing is visible before that entry: a kill -9 at any point
//! leaves the table at its previous version, and the re-run resumes from the
//! journal. Two writers (shards, tasks) commit optimistically: delta-rs
//! retries an append that lost the race for a version.
//!
//! A commit carries an application transaction (`txn`, app id = the job's
//! stamp) whose version the state folder records before committing, so a
//! run killed between its commit and removing its state does not commit
//! the same rows twice when it is run again. When the rows are named (the
//! stamp says which rows they are: a file or a table version, or a Spark or
//! Ray task's run and partition), the table's own transaction is enough:
//! an append it holds already is not made again, even by a retried task on
//! another machine with none of the state ([`appended_by`], and [`commit`]
//! for another attempt that committed meanwhile).
//!
//! Object stores: delta-rs gets the store aiq builds for every other URL
//! ([`Remote`], the cloud's own credentials), and commits with a
//! conditional put (`PutMode::Create`), as aiq's own commits do. No cloud
//! SDK of delta-rs is built in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, SchemaRef, UInt64Type};
use arrow::record_batch::RecordBatch;
use datafusion::common::Column;
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::logstore::{
    default_logstore, logstore_factories, LogStore, LogStoreFactory, StorageConfig,
};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::job::plan::Plan;
use crate::job::settings::WriteMode;
use crate::pipeline::bounds::PART_BYTES;
use crate::pipeline::delta::saved::Saved;
use crate::pipeline::fingerprint::Fingerprinter;
use crate::pipeline::journal::{state_dir, InputIdentity, Part};
use crate::pipeline::outcome::RowId;
use crate::pipeline::parquet_out::writer_properties;
use crate::pipeline::schedule::CallMaker;
use crate::pipeline::source::{Format, Source};
use crate::pipeline::store::{block_on, get_bytes, put, Remote, StateInStore};

/// The commit metadata key that names the job (as the Parquet footer's).
const JOB_KEY: &str = "aiq.job";

/// The file in the state folder that names the transaction version this
/// run's commit carries (see the module documentation).
const COMMIT_TOKEN: &str = "delta-commit.json";

/// The schemes whose stores aiq builds and hands to delta-rs.
const STORE_SCHEMES: [&str; 8] = ["s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss"];

/// delta-rs's log store for stores with conditional puts, for the schemes
/// of [`STORE_SCHEMES`] (its own factories come with cloud SDKs).
struct ConditionalPut;

impl LogStoreFactory for ConditionalPut {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let factories = logstore_factories();
        for scheme in STORE_SCHEMES {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                factories.insert(url, Arc::new(ConditionalPut));
            }
        }
    });
}

/// A DataFusion session with delta-rs's planner, which its writes and
/// merges plan through.
fn delta_session() -> SessionContext {
    deltalake::delta_datafusion::create_session().into_inner()
}

/// `session` with delta-rs's planner (an `aiq sql` session, which has aiq's
/// own rules and functions), for a write to plan through.
fn with_delta_planner(
    session: datafusion::execution::context::SessionState,
) -> datafusion::execution::context::SessionState {
    datafusion::execution::session_state::SessionStateBuilder::new_from_existing(session)
        .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
        .build()
}

/// A Delta table as the job names it.
pub struct Table {
    /// As the user wrote it, for messages.
    pub path: PathBuf,
    pub table: DeltaTable,
    role: Role,
}

impl Table {
    /// The table at `path` (a local folder or an object-store URL), its
    /// latest version loaded; not yet a table (no log) is fine for an
    /// output and an error for an input.
    pub async fn open(location: &Location, role: Role) -> Result<Table> {
        Table::open_at(location, role, None, None).await
    }

    /// [`Table::open`] at version `version`, or at the last version
    /// committed by `timestamp` (RFC 3339): time travel for an input.
    pub async fn open_at(
        location: &Location,
        role: Role,
        version: Option<u64>,
        timestamp: Option<&str>,
    ) -> Result<Table> {
        register_log_stores();
        let path = location.as_path();
        let fail = |e: &dyn std::fmt::Display| role.error(path, format!("Delta table: {e}"));
        let builder = match location {
            Location::Store(url) => {
                let remote = Remote::open(url, role)?;
                let url = Url::parse(&format!(
                    "{}/{}",
                    remote.root.as_str().trim_end_matches('/'),
                    remote.key
                ))
                .map_err(|e| fail(&e))?;
                DeltaTableBuilder::from_url(url)
                    .map_err(|e| fail(&e))?
                    .with_storage_backend(remote.store.clone(), remote.root.clone())
            }
            Location::Local(path) => {
                if role == Role::Output {
                    std::fs::create_dir_all(path)
                        .map_err(|e| fail(&format!("cannot create the folder: {e}")))?;
                }
                let abs = std::path::absolute(path).map_err(|e| fail(&e))?;
                let url = Url::from_directory_path(&abs)
                    .map_err(|_| fail(&"not a path a URL can name"))?;
                DeltaTableBuilder::from_url(url).map_err(|e| fail(&e))?
            }
        };
        let (builder, at) = match (version, timestamp) {
            (Some(v), _) => (builder.with_version(v), format!(" (version {v})")),
            (None, Some(t)) => (
                builder.with_datestring(t).map_err(|e| {
                    fail(&format!(
                        "--input-timestamp {t}: not an RFC 3339 time (e.g. \
                         2026-12-01T00:00:00Z): {e}"
                    ))
                })?,
                format!(" (as of {t})"),
            ),
            (None, None) => (builder, String::new()),
        };
        let loaded = match role {
            Role::Input => builder.load().await,
            // An output may not be a table yet: kept unloaded then.
            Role::Output => match builder.build() {
                Ok(mut table) => match table.load().await {
                    Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        let table = match loaded {
            Ok(table) => table,
            Err(DeltaTableError::NotATable(_)) => {
                return Err(fail(&"not a Delta table (no _delta_log/ there)"))
            }
            Err(e) => return Err(fail(&format!("{e}{at}"))),
        };
        Ok(Table {
            path: path.to_path_buf(),
            table,
            role,
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> Error {
        self.role.error(
            &self.path.display().to_string(),
            format!("Delta table: {message}"),
        )
    }

    /// The loaded version, `None` before the first commit.
    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The table's Arrow schema, `None` before the first commit.
    pub fn schema(&self) -> Option<SchemaRef> {
        let snapshot = self.table.snapshot().ok()?;
        Some(snapshot.snapshot().arrow_schema())
    }

    /// A DataFusion table over the loaded version, all files or `files`.
    pub async fn provider(&self, files: Option<Vec<String>>) -> Result<Arc<dyn TableProvider>> {
        let mut builder = self.table.table_provider();
        if let Some(files) = files {
            builder = builder.with_file_paths(files);
        }
        builder.await.map_err(|e| self.error(e))
    }

    /// The data files of the loaded version, in log order, with the rows
    /// each holds when its statistics say.
    pub fn files(&self) -> Result<Vec<(String, Option<u64>)>> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|f| {
                let rows = f
                    .stats()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .and_then(|s| s.get("numRecords").and_then(|n| n.as_u64()));
                (f.path().into_owned(), rows)
            })
            .collect())
    }
}

/// Checks before anything is sent that the job can write the table: it
/// opens (or can be created), and a merge key names input columns.
pub async fn check_output(plan: &Plan, input: &arrow::datatypes::Schema) -> Result<()> {
    for key in &plan.table.merge_key {
        if input.field_with_name(key).is_err() {
            return Err(Error::Config(format!(
                "--merge-key {key}: the input has no such column"
            )));
        }
    }
    Table::open(&plan.output, Role::Output).await.map(|_| ())
}

/// The input of a `--input-format delta` job: the table at the asked
/// version, this shard's files only (shards split the table by its files,
/// every file in exactly one shard).
pub fn open_source(plan: &Plan) -> Result<Source> {
    block_on(async {
        let table = open_input(plan).await?;
        let files = table.files()?;
        let files: Vec<(String, Option<u64>)> = match plan.shard {
            Some(shard) => {
                let n = files.len() as u64;
                let (start, end) = shard.rows(n);
                files
                    .into_iter()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .collect()
            }
            None => files,
        };
        let total_rows = files.iter().map(|(_, r)| *r).sum::<Option<u64>>();
        let paths: Vec<String> = files.into_iter().map(|(p, _)| p).collect();
        let provider = table.provider(Some(paths)).await?;
        let schema = provider.schema();
        // One partition: rows come in the table's file order every time,
        // which a resume's row numbers rely on.
        let config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(plan.batch_rows.max(1));
        let ctx = SessionContext::new_with_config(config);
        table
            .table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| table.error(e))?;
        let df = ctx.read_table(provider).map_err(|e| table.error(e))?;
        let stream = df.execute_stream().await.map_err(|e| table.error(e))?;
        let path = plan.input.clone();
        let mut stream = stream;
        let batches = std::iter::from_fn(move || {
            block_on(stream.next()).map(|b| {
                b.map_err(|e| Error::input(&path, format!("cannot read the Delta table: {e}")))
            })
        });
        let mut source = Source::from_batches(
            plan.input.as_path(),
            Format::Delta,
            schema,
            total_rows,
            Box::new(batches),
        );
        source.batch_rows = plan.batch_rows.max(1);
        Ok(source)
    })
}

async fn open_input(plan: &Plan) -> Result<Table> {
    let t = &plan.table;
    Table::open_at(
        &plan.input,
        Role::Input,
        t.input_version,
        t.input_timestamp.as_deref(),
    )
    .await
}

/// What names a Delta input in the journal: the table and the version
/// read (a resume against another version rechecks every row).
pub fn identity(plan: &Plan) -> Result<InputIdentity> {
    let version = block_on(async { open_input(plan).await.map(|t| t.version()) })?;
    Ok(InputIdentity {
        path: plan.input.to_string(),
        size: version.unwrap_or(0),
        modified: 0,
    })
}

/// The parts of a finished job and its state folder, where [`commit`]
/// finds them: local files, or objects in the bucket.
pub enum PartFiles {
    Local { paths: Vec<String>, state: PathBuf },
    Remote(StateInStore),
}

impl PartFiles {
    /// The local parts of the job whose output is `output`.
    pub fn local(parts: &[Part], output: &Path) -> Result<PartFiles> {
        let paths = parts
            .iter()
            .map(|p| {
                std::path::absolute(&p.path)
                    .map(|a| a.to_string_lossy().into_owned())
                    .map_err(|e| Error::io(&p.path, e))
            })
            .collect::<Result<_>>()?;
        Ok(PartFiles::Local {
            paths,
            state: state_dir(output),
        })
    }

    fn urls(&self) -> &[String] {
        match self {
            PartFiles::Local { paths, .. } => paths,
            PartFiles::Remote(r) => &r.urls,
        }
    }

    /// The transaction version an earlier run of this job recorded before
    /// committing (it was killed before its state was removed).
    async fn token(&self) -> Option<i64> {
        let text = match self {
            PartFiles::Local { state, .. } => {
                std::fs::read_to_string(state.join(COMMIT_TOKEN)).ok()?
            }
            PartFiles::Remote(r) => {
                let key = ObjectPath::from(format!("{}/{COMMIT_TOKEN}", r.state));
                let got = get_bytes(&r.store, &key).await.ok()?;
                String::from_utf8(got.to_vec()).ok()?
            }
        };
        text.trim().parse().ok()
    }

    async fn record_token(&self, version: i64) -> Result<()> {
        let text = version.to_string();
        match self {
            PartFiles::Local { state, .. } => {
                let path = state.join(COMMIT_TOKEN);
                std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
            }
            PartFiles::Remote(r) => {
                let key = ObjectPath::from(format!("{}/{COMMIT_TOKEN}", r.state));
                put(&r.store, &key, text.into_bytes())
                    .await
                    .map_err(|e| Error::output(format!("{}/{key}", r.root), e))
            }
        }
    }

    fn state(&self) -> String {
        match self {
            PartFiles::Local { state, .. } => state.display().to_string(),
            PartFiles::Remote(r) => {
                format!("{}/{}", r.root.as_str().trim_end_matches('/'), r.state)
            }
        }
    }
}

/// Commits the job's parts (`rows` rows) to the table as one version
/// (append, overwrite or merge by key), unless the state says this run
/// committed them already. Returns the rows written.
pub async fn commit(
    plan: &Plan,
    parts: PartFiles,
    rows: u64,
    schema: SchemaRef,
    job: &str,
    named: bool,
) -> Result<u64> {
    let table = Table::open(&plan.output, Role::Output).await?;
    let app_id = app_id(job);
    let committed = match table.table.snapshot() {
        Ok(s) => s
            .transaction_version(table.table.log_store().as_ref(), &app_id)
            .await
            .map_err(|e| table.error(e))?,
        Err(_) => None,
    };
    let version = match parts.token().await {
        Some(v) if committed.is_some_and(|c| c >= v) => {
            tracing::info!(
                "{}: this run's rows were committed before",
                table.path.display()
            );
            return Ok(rows);
        }
        Some(v) => v,
        // Another attempt at the same named rows (a speculative or retried
        // task, with none of this run's state) committed them since this
        // run was prepared: its commit stands.
        None if named && committed.is_some() && appends_once(plan) => {
            tracing::info!(
                "{}: another run of this job committed these rows",
                table.path.display()
            );
            return Ok(rows);
        }
        None => {
            let next = committed.unwrap_or(0) + 1;
            parts.record_token(next).await?;
            next
        }
    };
    let ctx = delta_session();
    if let PartFiles::Remote(r) = &parts {
        ctx.register_object_store(&r.root, r.store.clone());
    }
    table
        .table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| table.error(e))?;
    let source = if parts.urls().is_empty() {
        ctx.read_batch(RecordBatch::new_empty(schema.clone()))
    } else {
        let options = ParquetReadOptions::default().schema(&schema);
        ctx.read_parquet(parts.urls().to_vec(), options).await
    }
    .map_err(|e| table.error(format!("reading the job's parts: {e}")))?;
    let properties = CommitProperties::default()
        .with_metadata([(JOB_KEY.to_string(), serde_json::json!(job))])
        .with_application_transaction(Transaction::new(&app_id, version));
    let session = Arc::new(ctx.state());
    let committed = match plan.table.write_mode {
        WriteMode::Append | WriteMode::Overwrite => {
            let (save, schema_mode) = match plan.table.write_mode {
                WriteMode::Overwrite => (SaveMode::Overwrite, SchemaMode::Overwrite),
                _ => (SaveMode::Append, SchemaMode::Merge),
            };
            table
                .table
                .write(Vec::new())
                .with_input_plan(source.logical_plan().clone())
                .with_session_state(session)
                .with_save_mode(save)
                .with_schema_mode(schema_mode)
                .with_target_file_size(std::num::NonZeroU64::new(PART_BYTES))
                .with_writer_properties(writer_properties())
                .with_commit_properties(properties)
                .await
        }
        WriteMode::Merge => {
            merge(
                table.table,
                source,
                &plan.table.merge_key,
                &schema,
                properties,
                session,
            )
            .await
        }
    };
    match committed {
        Ok(_) => Ok(rows),
        Err(e) => Err(Error::Stopped(format!(
            "Delta table {}: the commit failed: {e}. Every answer is kept in {}: run the same \
             command again to commit them",
            plan.output,
            parts.state()
        ))),
    }
}

/// Upserts `source` by `keys`: a key in the table gets the source's row,
/// a new key is inserted; new columns are added to the table.
async fn merge(
    table: DeltaTable,
    source: datafusion::prelude::DataFrame,
    keys: &[String],
    schema: &SchemaRef,
    properties: CommitProperties,
    session: Arc<datafusion::execution::context::SessionState>,
) -> std::result::Result<DeltaTable, DeltaTableError> {
    let side = |alias: &str, name: &str| Expr::Column(Column::new(Some(alias), name));
    let on = keys
        .iter()
        .map(|k| side("target", k).eq(side("source", k)))
        .reduce(Expr::and)
        .unwrap_or(datafusion::prelude::lit(false));
    if table.version().is_none() {
        // No table yet: the first run's rows are the table.
        return table
            .write(Vec::new())
            .with_input_plan(source.logical_plan().clone())
            .with_session_state(session)
            .with_save_mode(SaveMode::Append)
            .with_target_file_size(std::num::NonZeroU64::new(PART_BYTES))
            .with_writer_properties(writer_properties())
            .with_commit_properties(properties)
            .await;
    }
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let (table, _metrics) = table
        .merge(source, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_merge_schema(true)
        .with_session_state(session)
        .with_writer_properties(writer_properties())
        .with_commit_properties(properties)
        .when_matched_update(|mut u| {
            for c in &columns {
                u = u.update(Column::new_unqualified(c), side("source", c));
            }
            u
        })?
        .when_not_matched_insert(|mut i| {
            for c in &columns {
                i = i.set(Column::new_unqualified(c), side("source", c));
            }
            i
        })?
        .await?;
    Ok(table)
}

/// Maps keyed by [`key_hashes`]: already uniform 64-bit hashes, so they
/// are used as they are (no second hash of a million keys).
type ByKey<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (write_u64); anything else still works.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What the table holds for each key, for a merge to tell which input rows
/// it need not send: the request that answered the key's row (its
/// fingerprint) and what that call cost. 40 bytes a key.
pub struct Stored {
    by_key: ByKey<StoredRow>,
    requests: Fingerprinter,
}

#[derive(Clone, Copy)]
struct StoredRow {
    /// The fingerprint's 128 bits as two words: a u128 would align the
    /// entry to 16 bytes (48 instead of 40).
    request: [u64; 2],
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The last row of each key in a merge's input, by key hash: the earlier
/// rows of a key are replaced by it in the table (one row per key, the
/// newest: the last in input order), so they are not sent. 16 bytes a row.
pub struct Latest {
    last: ByKey<RowId>,
}

impl Latest {
    /// Reads the key columns of `source`: the job's input, opened again.
    pub fn read(plan: &Plan, source: Source) -> Result<Latest> {
        let mut last = ByKey::default();
        last.reserve(source.total_rows.unwrap_or(0) as usize);
        let mut row: RowId = 0;
        for batch in source.into_batches() {
            let batch = batch?;
            let keys = key_hashes(&batch, &plan.table.merge_key)
                .map_err(|e| Error::input(&plan.input, e))?;
            for key in keys {
                last.insert(key, row);
                row += 1;
            }
        }
        Ok(Latest { last })
    }

    /// A later row of the input has `key` (not null) too.
    fn replaced(&self, key: u64, null_key: bool, row: RowId) -> bool {
        !null_key && self.last.get(&key).is_some_and(|&last| last != row)
    }
}

/// Reads [`Stored`] from the table: the key columns, the fingerprint and
/// the token counts of every row, nothing else. `None` when the table has
/// no rows yet, or no fingerprint column (written before aiq kept one).
pub async fn stored(plan: &Plan) -> Result<Option<Stored>> {
    let table = Table::open(&plan.output, Role::Output).await?;
    let Some(schema) = table.schema() else {
        return Ok(None);
    };
    let keys = &plan.table.merge_key;
    let wanted: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .chain([FINGERPRINT_COLUMN, "prompt_tokens", "completion_tokens"])
        .collect();
    if wanted.iter().any(|c| schema.field_with_name(c).is_err()) {
        return Ok(None);
    }
    let ctx = delta_session();
    table
        .table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| table.error(e))?;
    let provider = table.provider(None).await?;
    let columns: Vec<Expr> = wanted
        .iter()
        .map(|c| Expr::Column(Column::new_unqualified(*c)))
        .collect();
    let df = ctx
        .read_table(provider)
        .and_then(|df| df.select(columns))
        .map_err(|e| table.error(e))?;
    let mut stream = df.execute_stream().await.map_err(|e| table.error(e))?;
    // Sized once from the files' statistics: growing a million-key map
    // holds the old and the new table at once.
    let mut by_key = ByKey::default();
    by_key.reserve(
        table
            .files()?
            .iter()
            .filter_map(|(_, rows)| *rows)
            .sum::<u64>() as usize,
    );
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| table.error(format!("reading its keys: {e}")))?;
        let hashes = key_hashes(&batch, keys).map_err(|e| table.error(e))?;
        // Once per batch: the column may come as string views, and a cast
        // per row copied the whole batch for every row (quadratic).
        let requests = arrow::compute::cast(batch.column(keys.len()), &DataType::Utf8)
            .map_err(|e| table.error(e))?;
        let requests = requests.as_string::<i32>();
        let tokens = |i: usize| {
            arrow::compute::cast(batch.column(i), &DataType::UInt64).map_err(|e| table.error(e))
        };
        let (prompt, completion) = (tokens(keys.len() + 1)?, tokens(keys.len() + 2)?);
        let (prompt, completion) = (
            prompt.as_primitive::<UInt64Type>(),
            completion.as_primitive::<UInt64Type>(),
        );
        for (row, hash) in hashes.into_iter().enumerate() {
            let Some(request) = request_of(requests, row) else {
                continue;
            };
            by_key.insert(
                hash,
                StoredRow {
                    request,
                    prompt_tokens: prompt.value(row),
                    completion_tokens: completion.value(row),
                },
            );
        }
    }
    Ok(Some(Stored {
        by_key,
        requests: Fingerprinter::of(plan),
    }))
}

/// Of `batch`'s rows (the first is row `first`), those a merge sends: not
/// a row that a later row with its key replaces (`latest`, counted in
/// `saved` as replaced), nor one whose key the table holds with the same
/// request (`stored`; its stored call is counted in `saved`).
pub fn keep(
    stored: Option<&Stored>,
    latest: Option<&Latest>,
    plan: &Plan,
    maker: &CallMaker<'_>,
    first: RowId,
    batch: &RecordBatch,
    saved: &Saved,
) -> Result<BooleanArray> {
    let key_columns = &plan.table.merge_key;
    let keys = key_hashes(batch, key_columns).map_err(|e| Error::input(&plan.input, e))?;
    let nulls = key_columns
        .iter()
        .filter_map(|k| batch.column_by_name(k))
        .fold(None, |n, c| {
            arrow::buffer::NullBuffer::union(n.as_ref(), c.logical_nulls().as_ref())
        });
    let mut keep = vec![true; batch.num_rows()];
    if let Some(latest) = latest {
        for (at, key) in keys.iter().enumerate() {
            let null_key = nulls.as_ref().is_some_and(|n| n.is_null(at));
            if latest.replaced(*key, null_key, first + at as RowId) {
                keep[at] = false;
                saved.add_replaced();
            }
        }
    }
    let Some(stored) = stored else {
        return Ok(BooleanArray::from(keep));
    };
    // Only the rows still to decide are rendered and fingerprinted.
    let undecided = arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep.clone()))
        .map_err(|e| Error::input(&plan.input, e))?;
    let at_of: Vec<usize> = (0..keep.len()).filter(|&at| keep[at]).collect();
    let (_, calls) = maker.calls(0, &undecided);
    for call in &calls {
        let fingerprints = stored.requests.rows(call);
        for (row, fingerprint) in call.rows.iter().zip(fingerprints) {
            let Some(&at) = at_of.get(*row as usize) else {
                continue;
            };
            let Some(found) = keys.get(at).and_then(|k| stored.by_key.get(k)) else {
                continue;
            };
            if parse_request(&fingerprint) == Some(found.request) {
                keep[at] = false;
                saved.add(found.prompt_tokens, found.completion_tokens);
            }
        }
    }
    Ok(BooleanArray::from(keep))
}

/// One hash per row of the key columns' values as text (so an INT key in
/// the table matches a BIGINT one in the input), `\u{1f}` between columns.
fn key_hashes(batch: &RecordBatch, keys: &[String]) -> std::result::Result<Vec<u64>, String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("\u{0}null");
    let formatters = keys
        .iter()
        .map(|k| {
            let column = batch
                .column_by_name(k)
                .ok_or_else(|| format!("no key column {k}"))?;
            ArrayFormatter::try_new(column.as_ref(), &options).map_err(|e| format!("{k}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let mut text = String::new();
    Ok((0..batch.num_rows())
        .map(|row| {
            text.clear();
            for f in &formatters {
                use std::fmt::Write;
                let _ = write!(text, "{}\u{1f}", f.value(row));
            }
            let h = blake3::hash(text.as_bytes());
            let mut eight = [0u8; 8];
            eight.copy_from_slice(&h.as_bytes()[..8]);
            u64::from_le_bytes(eight)
        })
        .collect())
}

/// A stored fingerprint as a number: the first 32 hex digits.
fn request_of(column: &arrow::array::StringArray, row: usize) -> Option<[u64; 2]> {
    if column.is_null(row) {
        return None;
    }
    parse_request(column.value(row))
}

fn parse_request(hex: &str) -> Option<[u64; 2]> {
    let n = u128::from_str_radix(hex.get(..32)?, 16).ok()?;
    Some([(n >> 64) as u64, n as u64])
}

/// The output column that holds each row's request fingerprint
/// ([`crate::pipeline::fingerprint`]).
const FINGERPRINT_COLUMN: &str = "request_fingerprint";

/// Registers the Delta table at `path` (its latest version) as `name` in
/// an `aiq sql` session.
pub async fn register(ctx: &SessionContext, name: &str, path: &Location) -> Result<()> {
    let table = Table::open(path, Role::Input).await?;
    table
        .table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| table.error(e))?;
    let provider = table.provider(None).await?;
    ctx.register_table(name, provider)
        .map_err(|e| table.error(e))?;
    Ok(())
}

/// Writes what `plan` yields (an `aiq sql` query, run by `session`) to the
/// Delta table at `path` as one new version, appended. Returns the rows
/// written.
pub async fn write_plan(
    path: &Location,
    session: datafusion::execution::context::SessionState,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<u64> {
    let table = Table::open(path, Role::Output).await?;
    let session = with_delta_planner(session);
    table
        .table
        .update_datafusion_session(&session)
        .map_err(|e| table.error(e))?;
    let written = table
        .table
        .write(Vec::new())
        .with_input_plan(plan)
        .with_session_state(Arc::new(session))
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_target_file_size(std::num::NonZeroU64::new(PART_BYTES))
        .with_writer_properties(writer_properties())
        .await
        .map_err(|e| Error::Aborted(format!("Delta table {path}: {e}")))?;
    let mut history = written.history(Some(1));
    let rows = match history.next().await {
        Some(Ok(info)) => added_rows(&info),
        _ => 0,
    };
    Ok(rows)
}

/// The rows a commit added, as its metrics say.
fn added_rows(info: &deltalake::kernel::CommitInfo) -> u64 {
    info.info
        .get("operationMetrics")
        .and_then(|m| m.get("num_added_rows"))
        .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
        .unwrap_or(0)
}

/// The application transaction id of the job `job` (its stamp) in the
/// commits it makes.
fn app_id(job: &str) -> String {
    format!("aiq-{job}")
}

/// Whether an append that the table holds already (the same job, its
/// application transaction there) is left out: unless the user asked to run
/// the job again. Only an append: a merge or an overwrite run again decides
/// the table's rows anew.
fn appends_once(plan: &Plan) -> bool {
    plan.table.write_mode == WriteMode::Append
        && !(plan.restart || plan.overwrite || plan.retry_failed)
}

/// The rows the job `job` appended to the table, when its commit is there
/// (the table holds its application transaction): the same append run
/// again is complete, as a Parquet output whose footer names the job is.
/// Only an append: a merge or an overwrite run again decides the table's
/// rows anew (a merge sends nothing the table answers anyway).
pub async fn appended_by(plan: &Plan, job: &str) -> Option<u64> {
    if !appends_once(plan) {
        return None;
    }
    let table = Table::open(&plan.output, Role::Output).await.ok()?;
    let snapshot = table.table.snapshot().ok()?;
    snapshot
        .transaction_version(table.table.log_store().as_ref(), &app_id(job))
        .await
        .ok()??;
    // The history is read only for the summary's row count, newest first.
    let mut history = table.table.history(None);
    while let Some(Ok(info)) = history.next().await {
        if info.info.get(JOB_KEY).and_then(|j| j.as_str()) == Some(job) {
            return Some(added_rows(&info));
        }
    }
    // Its commit is past the log's retention: committed all the same.
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(id: ArrayRef, name: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", id.data_type().clone(), true),
            Field::new("name", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![id, name]).unwrap()
    }

    #[test]
    fn keys_match_across_integer_widths_and_tell_nulls_from_text() {
        let keys = ["id".to_string(), "name".to_string()];
        let a = batch(
            Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("null")])),
        );
        let b = batch(
            Arc::new(Int32Array::from(vec![Some(1), Some(2), None])),
            Arc::new(StringArray::from(vec![Some("a"), Some("c"), None])),
        );
        let (ha, hb) = (
            key_hashes(&a, &keys).unwrap(),
            key_hashes(&b, &keys).unwrap(),
        );
        assert_eq!(ha[0], hb[0], "the same key, as INT and BIGINT");
        assert_ne!(ha[1], hb[1], "another name");
        assert_ne!(ha[2], hb[2], "a null is not the text \"null\"");
        let missing = key_hashes(&a, &["nope".to_string()]).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn stored_fingerprints_read_as_numbers() {
        assert_eq!(
            parse_request("00000000000000020000000000000001ff"),
            Some([2, 1])
        );
        assert_eq!(parse_request("short"), None);
        assert_eq!(parse_request("zz000000000000000000000000000000"), None);
    }
}

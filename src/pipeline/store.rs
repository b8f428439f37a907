//! Object storage: input and output where the data lives (`s3://`, `gs://`,
//! `az://` / `abfss://`, and `http(s)://` for reading).
//!
//! This module owns everything that differs between a local path and an
//! object-store URL, so that the rest of the data path keeps working on local
//! files as it always has:
//!
//! - [`Remote::open`] builds the store of a URL the plan parsed
//!   ([`crate::job::location`]) from the cloud's own environment (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`,
//!   `AZURE_STORAGE_*`), with object_store's retries for transient errors.
//! - Reading: [`open_read`] streams an object (JSON Lines; no download first)
//!   and [`parquet_batches`] reads Parquet row groups with ranged requests.
//! - Writing: [`RemoteOutput`] runs the job's usual journal and part files in
//!   a local scratch folder and mirrors them into the bucket beside the output
//!   (`out.parquet.aiq/`) ([`mirror`]): at least once a second, as soon as a
//!   part is complete, and after every [`MIRROR_AFTER_LINES`] answers (but
//!   not more often than every [`MIRROR_MIN_GAP`]): the journal as immutable
//!   chunk objects (stores cannot append), then the parts as multipart
//!   uploads. A kill -9 thus costs the calls in flight plus the larger of
//!   64 answers and a quarter-second of answers (plus those that land
//!   during one upload), not a second of them, without a PUT per row. A
//!   run on another machine pulls that state back and resumes. At the end the
//!   parts are concatenated into a staged object under the same prefix, which
//!   is copied onto the output only if no object is there yet (a conditional
//!   copy: two runs cannot both commit), and the prefix is deleted.
//!
//! Every store error becomes an input or output error naming the URL and
//! carrying the store's own message (exit 2 when found before any request).
//! Credentials are never part of a message: they live in the store's client.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::{Buf, Bytes};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AwsCredentialProvider, S3CopyIfNotExists};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, CopyMode, CopyOptions, GetOptions, GetRange, ObjectMeta, ObjectStore,
    ObjectStoreScheme, PutOptions, PutPayload, RetryConfig,
};
// Deprecated in parquet 59.3 in favour of one's own `AsyncFileReader`, but
// still the reader parquet and DataFusion 55 ship (ranged GETs, footer
// first); replacing it is a copy of the same thirty lines.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use crate::error::{Error, Result};
use crate::job::location::{Location, StoreUrl};
use crate::pipeline::journal::{is_lock, state_dir, InputIdentity, Part};
use crate::pipeline::parquet_out::{remove_left_behind, writer_properties, JOB_KEY};

/// Read buffer over a streamed object: as for local files.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Transient store errors (5xx, throttling, resets) are retried with
/// exponential backoff, for at most this long per request: long enough to
/// ride out a throttling burst, short enough that a wrong endpoint fails
/// while someone is still watching.
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_RETRIES: usize = 6;

/// How long to wait for a cloud metadata service (instance roles) before
/// deciding there are no credentials at all.
const METADATA_PROBE: Duration = Duration::from_secs(1);

/// An object in a store: the URL as the user wrote it, the store, the key.
#[derive(Clone)]
pub struct Remote {
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub key: ObjectPath,
    /// `scheme://bucket`: what DataFusion registers the store under.
    pub root: Url,
}

impl std::fmt::Debug for Remote {
    // The store is left out: its configuration holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

pub use crate::job::location::Role;

impl Remote {
    /// The object at `url`, in its bucket's store (built once per bucket
    /// from the cloud's environment); an error naming the URL when that
    /// cloud has no credentials.
    pub fn open(url: &StoreUrl, role: Role) -> Result<Remote> {
        let store =
            store_for(&url.scheme, &url.url, &url.root).map_err(|e| role.error(url.as_str(), e))?;
        Ok(Remote {
            url: url.as_str().to_string(),
            store,
            key: url.key.clone(),
            root: url.root.clone(),
        })
    }

    /// The object at the `s3://` URL `url`, in a store of its own signed
    /// with `credentials` in `region` rather than the environment's keys:
    /// Bedrock's staging bucket, which the job's AWS credential chain
    /// (profiles included) must reach as the Bedrock calls do.
    pub fn open_s3_as(
        url: &StoreUrl,
        role: Role,
        credentials: AwsCredentialProvider,
        region: &str,
    ) -> Result<Remote> {
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let store = s3_builder(&url.url, retry)
            .with_credentials(credentials)
            .with_region(region)
            .build()
            .map_err(|e| role.error(url.as_str(), e))?;
        Ok(Remote {
            url: url.as_str().to_string(),
            store: Arc::new(store),
            key: url.key.clone(),
            root: url.root.clone(),
        })
    }

    /// Another object in the same store, `key` relative to the bucket.
    fn at(&self, key: ObjectPath) -> Remote {
        let mut root = self.root.to_string();
        if !root.ends_with('/') {
            root.push('/');
        }
        Remote {
            url: format!("{root}{key}"),
            store: self.store.clone(),
            key,
            root: self.root.clone(),
        }
    }

    /// The object's size and modification time, which identify the input
    /// in the journal's manifest.
    pub fn identity(&self, role: Role) -> Result<InputIdentity> {
        let meta = block_on(self.head(role))?;
        Ok(InputIdentity {
            path: self.url.clone(),
            size: meta.size,
            modified: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
        })
    }

    /// The object's metadata, or an error naming the URL. A HEAD answers a
    /// missing object and a missing bucket alike (a 404 without a body), so
    /// on a 404 a listing, which names a missing bucket, tells them apart.
    async fn head(&self, role: Role) -> Result<ObjectMeta> {
        let e = match head(&self.store, &self.key).await {
            Ok(meta) => return Ok(meta),
            Err(e) => e,
        };
        if !matches!(e, object_store::Error::NotFound { .. })
            || self.root.scheme().starts_with("http")
        {
            return Err(role.error(&self.url, e));
        }
        match self.store.list(Some(&self.key)).next().await {
            Some(Err(bucket)) => Err(role.error(&self.url, bucket)),
            _ => Err(role.error(&self.url, format!("no such object: {e}"))),
        }
    }
}

/// One store per bucket for the whole process: its connections and
/// credentials are reused by every object read or written there.
fn store_for(
    scheme: &ObjectStoreScheme,
    url: &Url,
    root: &Url,
) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let id = root.to_string();
    if let Some(store) = stores.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(store.clone());
    }
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            check_credentials(
                &["AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                "AWS_METADATA_ENDPOINT",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), \
                 or run where an instance or task role is available",
            )?;
            Arc::new(s3_builder(url, retry).build().map_err(|e| e.to_string())?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            check_credentials(
                &["GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY"],
                "",
                "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, run \
                 `gcloud auth application-default login`, or run where a service account is attached",
            )
            .or_else(|e| adc_file_exists().then_some(()).ok_or(e))?;
            Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            check_credentials(
                &["AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_STORAGE_TOKEN", "AZURE_STORAGE_USE_EMULATOR", "AZURE_SKIP_SIGNATURE"],
                "",
                "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or a SAS token \
                 (AZURE_STORAGE_SAS_KEY), or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID, \
                 or run where a managed identity is available",
            )?;
            Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        ObjectStoreScheme::Http => Arc::new(
            HttpBuilder::new()
                .with_url(root.as_str())
                .with_retry(retry)
                .build()
                .map_err(|e| e.to_string())?,
        ),
        _ => {
            return Err("not an object-store URL aiq reads (s3, gs, az, abfss, http, https)".into())
        }
    };
    stores
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, store.clone());
    Ok(store)
}

/// An S3 store for `url` configured from the environment (endpoint,
/// region, keys, `AWS_ALLOW_HTTP`, ...).
fn s3_builder(url: &Url, retry: RetryConfig) -> AmazonS3Builder {
    let b = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_retry(retry);
    // Committing the output is a copy that fails if the object exists;
    // plain S3 does that with a one-part multipart copy and If-None-Match.
    match std::env::var_os("AWS_COPY_IF_NOT_EXISTS") {
        None => b.with_copy_if_not_exists(S3CopyIfNotExists::Multipart),
        Some(_) => b,
    }
}

/// Without any of `vars`, object_store would ask the cloud's metadata
/// service (instance roles), retrying for minutes where there is none. Ask
/// it once, briefly, so that "no credentials" is an immediate error.
fn check_credentials(
    vars: &[&str],
    endpoint_var: &str,
    hint: &str,
) -> std::result::Result<(), String> {
    if vars
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
    {
        return Ok(());
    }
    if skip_signature() {
        return Ok(());
    }
    let endpoint = std::env::var(endpoint_var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "http://169.254.169.254".into());
    let probe = async move {
        let client = reqwest::Client::builder()
            .timeout(METADATA_PROBE)
            .build()
            .ok()?;
        // Any answer at all means a metadata service is there.
        client.get(&endpoint).send().await.ok()
    };
    match block_on(probe) {
        Some(_) => Ok(()),
        None => Err(format!("no credentials found: {hint}")),
    }
}

/// Public buckets are read unsigned when the user says so.
fn skip_signature() -> bool {
    [
        "AWS_SKIP_SIGNATURE",
        "GOOGLE_SKIP_SIGNATURE",
        "AZURE_SKIP_SIGNATURE",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| s.eq_ignore_ascii_case("true")))
}

/// gcloud's application default credentials, which object_store reads.
fn adc_file_exists() -> bool {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .is_some_and(|h| {
            h.join(".config/gcloud/application_default_credentials.json")
                .is_file()
        })
}

/// Runs a store future to completion from synchronous code (the reader
/// thread, the journal): on the caller's runtime when it is multi-threaded,
/// else on a small runtime of our own in a helper thread.
pub fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        _ => {
            static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
            let rt = RUNTIME.get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .ok()
            });
            let Some(rt) = rt.as_ref() else {
                panic!("cannot start a runtime for object storage");
            };
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        }
    }
}

/// The bytes of an input from `offset` on: a local file, or an object
/// streamed with one ranged GET (never downloaded first).
pub fn open_read(input: &Location, offset: u64) -> Result<Box<dyn BufRead + Send>> {
    match input {
        Location::Local(path) => {
            use std::io::{Seek, SeekFrom};
            let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::input(path, "no such file"),
                _ => Error::input(path, format!("cannot open: {e}")),
            })?;
            if offset > 0 {
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
            }
            Ok(Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, file)))
        }
        Location::Store(url) => {
            let remote = Remote::open(url, Role::Input)?;
            let options = GetOptions {
                range: (offset > 0).then_some(GetRange::Offset(offset)),
                ..Default::default()
            };
            let result = block_on(remote.store.get_opts(&remote.key, options))
                .map_err(|e| Error::input(&remote.url, e))?;
            let reader = StreamRead {
                stream: result.into_stream(),
                chunk: Bytes::new(),
            };
            Ok(Box::new(BufReader::with_capacity(
                READ_BUFFER_BYTES,
                reader,
            )))
        }
    }
}

/// A blocking reader over a store's byte stream (for the reader thread).
struct StreamRead {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for StreamRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(bytes)) => self.chunk = bytes,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// A Parquet object's reader: its footer is read with one ranged request
/// (after a HEAD for the size); the caller picks row groups and batch size.
#[allow(deprecated)] // ParquetObjectReader: see the import
pub fn parquet_builder(
    remote: &Remote,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>> {
    let url = &remote.url;
    block_on(async {
        let meta = remote.head(Role::Input).await?;
        let reader = ParquetObjectReader::new(remote.store.clone(), remote.key.clone())
            .with_file_size(meta.size);
        ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| Error::input(url, format!("not a readable Parquet file: {e}")))
    })
}

/// The footer of the Parquet object `remote`, if there is one.
#[allow(deprecated)] // ParquetObjectReader: see the import
pub async fn parquet_footer(remote: &Remote) -> Option<Arc<ParquetMetaData>> {
    let meta = head(&remote.store, &remote.key).await.ok()?;
    let reader = ParquetObjectReader::new(remote.store.clone(), remote.key.clone())
        .with_file_size(meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.ok()?;
    Some(builder.metadata().clone())
}

/// Batches of a Parquet object, for the reader thread: row groups are
/// fetched one at a time, so memory stays one row group as for local files.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

#[allow(deprecated)] // ParquetObjectReader: see the import
pub fn parquet_batches(
    builder: ParquetRecordBatchStreamBuilder<ParquetObjectReader>,
    url: &str,
) -> Result<Batches> {
    let url = url.to_string();
    let mut stream = builder
        .build()
        .map_err(|e| Error::input(&url, format!("cannot read Parquet file: {e}")))?;
    let batches = std::iter::from_fn(move || {
        block_on(stream.next())
            .map(|b| b.map_err(|e| Error::input(&url, format!("cannot read Parquet data: {e}"))))
    });
    Ok(Box::new(batches))
}

/// State prefix sub-folders, as in the local state folder.
const MANIFEST: &str = "manifest.json";
/// The state goes to the bucket at least this often.
pub const MIRROR_EVERY: Duration = Duration::from_secs(1);

/// New journal lines that send the state to the bucket before the tick:
/// what a kill can cost beyond the calls in flight, at modest rates.
pub const MIRROR_AFTER_LINES: u64 = 64;

/// The least time between two sends: above 64 answers a quarter-second,
/// the journal goes in chunks of a quarter-second of answers, not a PUT a
/// row.
pub const MIRROR_MIN_GAP: Duration = Duration::from_millis(250);

/// Keeps the bucket's copy of a job's state close behind the local one
/// until aborted: every [`MIRROR_EVERY`], and when `wake` is told (a part
/// is complete, or [`MIRROR_AFTER_LINES`] new journal lines), at most once
/// per [`MIRROR_MIN_GAP`]. A failed send is retried at the next one.
pub fn mirror(
    remote: Arc<tokio::sync::Mutex<RemoteOutput>>,
    wake: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MIRROR_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake.notified() => {}
            }
            if let Err(e) = remote.lock().await.sync().await {
                tracing::warn!("saving the job's state to the bucket (will retry): {e}");
            }
            tokio::time::sleep(MIRROR_MIN_GAP).await;
        }
    })
}

const JOURNAL_CHUNKS: &str = "journal";
const PARTS: &str = "parts";
/// The concatenated output, staged before the conditional copy.
const STAGED: &str = "output.parquet";

/// A bucket output's local scratch folder in `$TMPDIR` is
/// `aiq-{pid}-{16 hex digits of the output URL's hash}`.
const SCRATCH_PREFIX: &str = "aiq-";
const SCRATCH_HASH_CHARS: usize = 16;

/// Removes the scratch folders in `tmp` of runs that `gone` says have ended
/// (killed: a run that ends removes its own). Only folders named exactly
/// as [`RemoteOutput::prepare`] names them are looked at. Returns how many
/// went.
pub fn remove_stale_scratch(tmp: &Path, gone: impl Fn(u32) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let pid_of = |name: &str| {
        let (pid, hash) = name.strip_prefix(SCRATCH_PREFIX)?.split_once('-')?;
        let hex = hash.len() == SCRATCH_HASH_CHARS && hash.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| pid.parse::<u32>().ok()).flatten()
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = name.to_str().and_then(pid_of).is_some_and(&gone);
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += usize::from(remove_left_behind(&entry.path()));
        }
    }
    removed
}

/// The output of a job that lives in an object store, and the state beside
/// it (see the module documentation).
pub struct RemoteOutput {
    output: Remote,
    /// `out.parquet.aiq/` in the bucket.
    state: Remote,
    /// The local folder the journal and parts are written in first.
    scratch: PathBuf,
    local_output: PathBuf,
    /// Names chunk objects apart from other runs' (another machine may have
    /// run the job before, or even at the same time).
    run_id: String,
    chunk_seq: u64,
    /// Bytes of the local journal already in the store.
    journal_sent: u64,
    manifest_sent: bool,
    parts_sent: BTreeSet<String>,
    /// `--overwrite`: the final copy replaces an output that is there.
    overwrite: bool,
}

impl RemoteOutput {
    /// Checks the bucket is there and readable and the output not yet
    /// written (unless `overwrite`), then pulls an earlier run's state into
    /// a fresh scratch folder (`restart` deletes it instead). All errors
    /// exit 2.
    pub async fn prepare(output: Remote, restart: bool, overwrite: bool) -> Result<RemoteOutput> {
        let fail = |e: object_store::Error| Error::output(&output.url, e);
        let state_key = ObjectPath::from(format!("{}.aiq", output.key));
        let state = output.at(state_key);
        // A listing fails on a missing bucket or denied access; a HEAD could
        // not tell a missing bucket from a missing object.
        let existing: Vec<ObjectPath> = output
            .store
            .list(Some(&state.key))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(fail)?;
        match head(&output.store, &output.key).await {
            Ok(_) if overwrite => {}
            Ok(_) => {
                return Err(Error::output(
                    &output.url,
                    "already exists; delete it, choose another output or give --overwrite (an \
                     object store output is otherwise only ever created, so that two runs \
                     cannot both commit it)",
                ))
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(fail(e)),
        }
        let scratch = std::env::temp_dir().join(format!(
            "{SCRATCH_PREFIX}{}-{}",
            std::process::id(),
            blake3::hash(output.url.as_bytes())
                .to_hex()
                .get(..SCRATCH_HASH_CHARS)
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        let name = Path::new(output.key.filename().unwrap_or("output.parquet")).to_path_buf();
        let local_output = scratch.join(name);
        let local_state = state_dir(&local_output);
        std::fs::create_dir_all(local_state.join(PARTS)).map_err(|e| Error::io(&scratch, e))?;
        let mut out = RemoteOutput {
            state,
            scratch,
            local_output,
            run_id: format!(
                "{}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                std::process::id()
            ),
            chunk_seq: 0,
            journal_sent: 0,
            manifest_sent: false,
            parts_sent: BTreeSet::new(),
            overwrite,
            output,
        };
        if restart {
            // The writer lease stays: this run holds it.
            out.delete(existing.into_iter().filter(not_lock).collect())
                .await?;
            return Ok(out);
        }
        out.pull(existing, &local_state).await?;
        Ok(out)
    }

    /// The output path the job's journal and part writer work with.
    pub fn local_output(&self) -> &Path {
        &self.local_output
    }

    pub fn url(&self) -> &str {
        &self.output.url
    }

    /// The state prefix in the bucket, for messages.
    pub fn state_url(&self) -> &str {
        &self.state.url
    }

    fn sub(&self, rel: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{rel}", self.state.key))
    }

    /// Earlier runs' manifest, journal chunks (concatenated into the local
    /// journal) and parts (as empty stand-ins: only their names count; the
    /// rows are read from the bucket at commit).
    async fn pull(&mut self, existing: Vec<ObjectPath>, local_state: &Path) -> Result<()> {
        let fail = |e: object_store::Error| Error::output(&self.state.url, e);
        let prefix = format!("{}/", self.state.key);
        let mut chunks = Vec::new();
        for key in existing {
            let Some(rel) = key.as_ref().strip_prefix(&prefix) else {
                continue;
            };
            if rel == MANIFEST {
                let bytes = get_bytes(self.store(), &key).await.map_err(fail)?;
                let path = local_state.join(MANIFEST);
                std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
                self.manifest_sent = true;
            } else if let Some(name) = rel.strip_prefix(&format!("{PARTS}/")) {
                let path = local_state.join(PARTS).join(name);
                std::fs::write(&path, b"").map_err(|e| Error::io(&path, e))?;
                self.parts_sent.insert(name.to_string());
            } else if rel.starts_with(&format!("{JOURNAL_CHUNKS}/")) {
                chunks.push(key);
            }
        }
        // Chunk names sort by run, then in order within a run. Each is
        // appended as it arrives: memory holds one chunk, not the journal.
        chunks.sort();
        let journal = local_state.join("journal.jsonl");
        let mut file = std::fs::File::create(&journal).map_err(|e| Error::io(&journal, e))?;
        for key in chunks {
            let mut bytes = get_bytes(self.store(), &key).await.map_err(fail)?.to_vec();
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                bytes.push(b'\n');
            }
            file.write_all(&bytes).map_err(|e| Error::io(&journal, e))?;
            self.journal_sent += bytes.len() as u64;
        }
        Ok(())
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.output.store
    }

    /// Sends what is new in the local state: the manifest once, finished
    /// parts (then drops the local copy), and the journal's new complete
    /// lines as one chunk object. Called every second and at the end.
    pub async fn sync(&mut self) -> Result<()> {
        let fail = |url: &str, e: object_store::Error| Error::output(url, e);
        let local_state = state_dir(&self.local_output);
        if !self.manifest_sent {
            let path = local_state.join(MANIFEST);
            if let Ok(bytes) = std::fs::read(&path) {
                put(self.store(), &self.sub(MANIFEST), bytes)
                    .await
                    .map_err(|e| fail(&self.state.url, e))?;
                self.manifest_sent = true;
            }
        }
        // Lines first: a part then never gets ahead of the answers before it.
        let journal = local_state.join("journal.jsonl");
        if let Ok(mut file) = tokio::fs::File::open(&journal).await {
            let mut bytes = Vec::new();
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len > self.journal_sent {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(self.journal_sent))
                    .await
                    .map_err(|e| Error::io(&journal, e))?;
                file.read_to_end(&mut bytes)
                    .await
                    .map_err(|e| Error::io(&journal, e))?;
                // Only complete lines: the collector may be mid-write.
                let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                bytes.truncate(keep);
            }
            if !bytes.is_empty() {
                let key = self.sub(&format!(
                    "{JOURNAL_CHUNKS}/{}-{:08}.jsonl",
                    self.run_id, self.chunk_seq
                ));
                let n = bytes.len() as u64;
                put(self.store(), &key, bytes)
                    .await
                    .map_err(|e| fail(&self.state.url, e))?;
                self.chunk_seq += 1;
                self.journal_sent += n;
            }
        }
        let parts = local_state.join(PARTS);
        // Parts removed here (a recheck or --retry-failed redoes their
        // rows) go from the bucket too, before their rows are written anew.
        let gone: Vec<String> = self
            .parts_sent
            .iter()
            .filter(|name| !parts.join(name).exists())
            .cloned()
            .collect();
        if !gone.is_empty() {
            let keys = gone
                .iter()
                .map(|n| self.sub(&format!("{PARTS}/{n}")))
                .collect();
            self.delete(keys).await?;
            for name in gone {
                self.parts_sent.remove(&name);
            }
        }
        let mut new = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&parts) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // `-open` parts are still being written; the others are
                // renamed into place only when complete.
                if name.ends_with(".parquet")
                    && !name.contains("-open")
                    && !self.parts_sent.contains(&name)
                {
                    new.push((name, entry.path()));
                }
            }
        }
        new.sort();
        for (name, path) in new {
            let key = self.sub(&format!("{PARTS}/{name}"));
            upload_file(self.store(), &key, &path)
                .await
                .map_err(|e| Error::output(&self.state.url, format!("uploading {name}: {e}")))?;
            // Keep an empty stand-in: the journal lists parts by name.
            std::fs::write(&path, b"").map_err(|e| Error::io(&path, e))?;
            self.parts_sent.insert(name);
        }
        Ok(())
    }

    /// Sends what is left of the state, then says where the parts are in
    /// the bucket: the store, its root URL, and each part's URL (a Delta
    /// output commits them from there).
    pub async fn part_urls(&mut self, parts: &[Part]) -> Result<StateInStore> {
        self.sync().await?;
        let root = self.output.root.as_str().trim_end_matches('/').to_string();
        let urls = parts
            .iter()
            .map(|part| {
                format!(
                    "{root}/{}",
                    self.sub(&format!("{PARTS}/{}", part_name(part)))
                )
            })
            .collect();
        Ok(StateInStore {
            root: self.output.root.clone(),
            store: self.store().clone(),
            state: self.state.key.clone(),
            urls,
        })
    }

    /// Concatenates the parts (all in the bucket after [`Self::sync`]) into
    /// a staged object with a multipart upload, then copies it onto the
    /// output unless an object is already there. Returns the rows written.
    #[allow(deprecated)] // ParquetObjectReader: see the import
    pub async fn commit(&mut self, parts: &[Part], schema: SchemaRef, job: &str) -> Result<u64> {
        self.sync().await?;
        let staged = self.sub(STAGED);
        let url = self.output.url.clone();
        let writer = BufWriter::new(self.store().clone(), staged.clone());
        let mut out = AsyncArrowWriter::try_new(writer, schema, Some(writer_properties()))
            .map_err(|e| Error::output(&url, format!("cannot start a Parquet file: {e}")))?;
        out.append_key_value_metadata(KeyValue::new(JOB_KEY.into(), job.to_string()));
        let mut rows = 0u64;
        for part in parts {
            let name = part_name(part);
            let key = self.sub(&format!("{PARTS}/{name}"));
            let reader = ParquetObjectReader::new(self.store().clone(), key);
            let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .and_then(|b| b.build())
                .map_err(|e| Error::output(&self.state.url, format!("part {name}: {e}")))?;
            while let Some(batch) = stream.next().await {
                let batch = batch
                    .map_err(|e| Error::output(&self.state.url, format!("part {name}: {e}")))?;
                rows += batch.num_rows() as u64;
                out.write(&batch)
                    .await
                    .map_err(|e| Error::output(&url, e))?;
            }
        }
        out.close().await.map_err(|e| Error::output(&url, e))?;
        let mode = if self.overwrite {
            CopyMode::Overwrite
        } else {
            CopyMode::Create
        };
        match copy(self.store(), &staged, &self.output.key, mode).await {
            Ok(()) => Ok(rows),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Stopped(format!(
                "{url} was written by another run of this job meanwhile; this run's answers are \
                 in {}",
                self.state.url
            ))),
            Err(e) => Err(Error::output(&url, e)),
        }
    }

    /// The output is in place: delete the state prefix.
    pub async fn remove(&mut self) -> Result<()> {
        let keys: Vec<ObjectPath> = self
            .store()
            .list(Some(&self.state.key))
            .map_ok(|m| m.location)
            .try_filter(|key| std::future::ready(not_lock(key)))
            .try_collect()
            .await
            .map_err(|e| Error::output(&self.state.url, e))?;
        // The scratch folder goes on drop, after the status file's last
        // write; the writer lease when the run lets it go.
        self.delete(keys).await
    }

    async fn delete(&self, keys: Vec<ObjectPath>) -> Result<()> {
        let mut deleted = self
            .store()
            .delete_stream(futures::stream::iter(keys.into_iter().map(Ok)).boxed());
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::output(&self.state.url, e)),
            }
        }
        Ok(())
    }
}

/// Where a finished job's state is in the bucket ([`RemoteOutput::part_urls`]).
pub struct StateInStore {
    /// `scheme://bucket`, what `store` serves.
    pub root: Url,
    pub store: Arc<dyn ObjectStore>,
    /// The state prefix (`out.aiq`); everything under it goes with it.
    pub state: ObjectPath,
    /// Each part's URL, in order.
    pub urls: Vec<String>,
}

/// A part's file name, as its object is named in the bucket.
fn part_name(part: &Part) -> String {
    part.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Drop for RemoteOutput {
    fn drop(&mut self) {
        // Everything of value is in the bucket by now (or lost with the run).
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Whether `key` is not a writer lease (see [`crate::pipeline::lock`]).
fn not_lock(key: &ObjectPath) -> bool {
    !key.filename().is_some_and(is_lock)
}

// The trait's own (boxed, `Send`) methods: the `ObjectStoreExt` shorthands
// return futures that are not `Send`, and these run in spawned tasks.

async fn head(store: &Arc<dyn ObjectStore>, key: &ObjectPath) -> object_store::Result<ObjectMeta> {
    let options = GetOptions {
        head: true,
        ..Default::default()
    };
    Ok(store.get_opts(key, options).await?.meta)
}

/// An object's bytes.
pub async fn get_bytes(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
) -> object_store::Result<Bytes> {
    store
        .get_opts(key, GetOptions::default())
        .await?
        .bytes()
        .await
}

/// Writes an object whole (replacing it).
pub async fn put(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    bytes: Vec<u8>,
) -> object_store::Result<()> {
    store
        .put_opts(key, PutPayload::from(bytes), PutOptions::default())
        .await
        .map(|_| ())
}

/// A copy within the store; [`CopyMode::Create`] fails if `to` exists.
async fn copy(
    store: &Arc<dyn ObjectStore>,
    from: &ObjectPath,
    to: &ObjectPath,
    mode: CopyMode,
) -> object_store::Result<()> {
    let options = CopyOptions {
        mode,
        ..Default::default()
    };
    store.copy_opts(from, to, options).await
}

/// Uploads a local file with a multipart upload (a single PUT when small),
/// in chunks, so memory stays one chunk whatever the file size.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    path: &Path,
) -> std::result::Result<(), String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut writer = BufWriter::new(store.clone(), key.clone());
    let mut buf = vec![0u8; 1 << 20];
    let result = async {
        loop {
            let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            writer
                .put(Bytes::copy_from_slice(&buf[..n]))
                .await
                .map_err(|e| e.to_string())?;
        }
        writer.shutdown().await.map_err(|e| e.to_string())
    }
    .await;
    if result.is_err() {
        let _ = writer.abort().await;
    }
    result
}

// The input identity's constructors live here, beside the object-store
// paths they must tell from local ones (the journal keeps the type).
impl InputIdentity {
    pub fn of(input: &Location) -> Result<InputIdentity> {
        let path = match input {
            Location::Store(url) => return Remote::open(url, Role::Input)?.identity(Role::Input),
            Location::Local(path) => path,
        };
        let meta = std::fs::metadata(path).map_err(|e| Error::input(path, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(InputIdentity {
            path: path.display().to_string(),
            size: meta.len(),
            modified,
        })
    }
}

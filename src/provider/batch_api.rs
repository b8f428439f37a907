//! The OpenAI Files and Batch APIs: wire types and a small client.
//!
//! A provider's batch API runs a file of requests within a completion
//! window (24 h) at half price. The calls are: upload the input file
//! (`POST {base}/files`, multipart, `purpose=batch`), create a batch
//! (`POST {base}/batches`), poll it (`GET {base}/batches/{id}`), download
//! its output and error files (`GET {base}/files/{id}/content`), cancel it
//! (`POST {base}/batches/{id}/cancel`), and list batches
//! (`GET {base}/batches?after=..`) to find one whose id was lost.
//!
//! These types are the one source of truth for both sides: the batch
//! runner ([`crate::pipeline::batch`]) and the simulator's Batch API use
//! them. Every HTTP call goes through the retry classification of
//! [`crate::provider::retry`]: 408, 429 and 5xx are retried with backoff,
//! never sooner than `Retry-After`; other errors are returned with the
//! provider's message.

use std::collections::BTreeMap;

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::path::{Path, PathBuf};

use crate::provider::auth::{Credentials, Scrubber};
use crate::provider::azure;
pub use crate::provider::batch_line::{LineError, LineResponse, OutputLine};
use crate::provider::bedrock_batch::{self, Staging};
use crate::provider::dialect::Dialect;
use crate::provider::retry::{classify, retry_after, Failure, Pacing, RetryAction, RetryPolicy};
use crate::provider::wire::{self, Task};
use crate::provider::{anthropic_batch, gemini_batch};

/// The only completion window providers offer.
pub const COMPLETION_WINDOW: &str = "24h";

/// Pages of Gemini's batch list read at most (a batch whose name a kill
/// lost was created moments before: among the newest).
const GEMINI_LIST_PAGES: usize = 20;

/// The batch error code of a provider's cap on enqueued tokens: not the
/// rows' fault; the batch is created again once a running one finishes.
pub const TOKEN_LIMIT_EXCEEDED: &str = "token_limit_exceeded";

/// The route a batch of `task` requests names, as its `endpoint` and each
/// line's `url`: OpenAI's with `/v1`; Azure OpenAI's without (as its
/// Batch API documents them; `model` in each body names the deployment).
pub fn endpoint_path(dialect: Dialect, task: Task) -> &'static str {
    let path = match task {
        Task::Chat => "/v1/chat/completions",
        Task::Completions => "/v1/completions",
        Task::Embeddings => "/v1/embeddings",
    };
    match dialect {
        Dialect::Azure => &path[3..],
        _ => path,
    }
}

/// `GET /files/{id}` and the reply of an upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileObject {
    pub id: String,
    #[serde(default = "file_object")]
    pub object: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub created_at: u64,
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub purpose: String,
}

fn file_object() -> String {
    "file".into()
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// No more change will come: its files are final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// Counts of a batch's requests.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

/// Why a batch as a whole failed (e.g. `token_limit_exceeded`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BatchErrors {
    #[serde(default = "list_object")]
    pub object: String,
    #[serde(default)]
    pub data: Vec<BatchError>,
}

fn list_object() -> String {
    "list".into()
}

/// A batch, as `POST /batches` and `GET /batches/{id}` return it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchObject {
    pub id: String,
    #[serde(default = "batch_object")]
    pub object: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub errors: Option<BatchErrors>,
    #[serde(default)]
    pub input_file_id: String,
    #[serde(default)]
    pub completion_window: String,
    pub status: BatchStatus,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub created_at: u64,
    #[serde(default)]
    pub in_progress_at: Option<u64>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub finalizing_at: Option<u64>,
    #[serde(default)]
    pub completed_at: Option<u64>,
    #[serde(default)]
    pub failed_at: Option<u64>,
    #[serde(default)]
    pub expired_at: Option<u64>,
    #[serde(default)]
    pub cancelling_at: Option<u64>,
    #[serde(default)]
    pub cancelled_at: Option<u64>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

fn batch_object() -> String {
    "batch".into()
}

impl BatchObject {
    /// The first batch-level error code, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.errors
            .as_ref()
            .and_then(|e| e.data.first())
            .and_then(|e| e.code.as_deref())
    }

    /// Batch-level errors as one line, for messages.
    pub fn error_text(&self) -> String {
        let Some(errors) = &self.errors else {
            return format!("batch {} {:?}", self.id, self.status);
        };
        errors
            .data
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.code.as_deref().unwrap_or("error"),
                    e.message.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `POST /batches`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `GET /batches`: a page of batches, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchList {
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<BatchObject>,
    #[serde(default)]
    pub first_id: Option<String>,
    #[serde(default)]
    pub last_id: Option<String>,
    #[serde(default)]
    pub has_more: bool,
}

/// One line of a batch input file, written without re-parsing the body:
/// `{"custom_id": .., "method": "POST", "url": .., "body": <body>}`.
pub fn request_line(custom_id: &str, url: &str, body: &[u8]) -> Vec<u8> {
    let head = serde_json::json!({"custom_id": custom_id, "method": "POST", "url": url});
    // `head` is an object: drop its closing brace and append the body.
    let mut line = head.to_string().into_bytes();
    line.pop();
    line.extend_from_slice(b",\"body\":");
    line.extend_from_slice(body);
    line.extend_from_slice(b"}\n");
    line
}

/// A failed call to the Files or Batch API, after retries.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status, when there was a reply.
    pub status: Option<u16>,
    /// The provider's error code (`token_limit_exceeded`), when it gave one.
    pub code: Option<String>,
    pub message: String,
    /// Credentials refused or no such route: the job cannot go on.
    pub fatal: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A client of one provider's Files and Batch APIs: OpenAI's, or another
/// provider's batch API behind the same calls ([`BatchApi::for_dialect`]).
pub struct BatchApi {
    http: reqwest::Client,
    /// The OpenAI-compatible base URL, without a trailing slash (`…/v1`);
    /// another dialect's API base.
    base: String,
    credentials: Credentials,
    scrub: Scrubber,
    policy: RetryPolicy,
    dialect: Dialect,
    /// Where input files are kept for a provider without a files API.
    staging: PathBuf,
    /// The model the batches are for, where the API names it in the path
    /// (Gemini).
    model: String,
    /// Bedrock batch inference: the S3 prefix its files go through.
    bedrock: Option<Staging>,
}

impl BatchApi {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> BatchApi {
        BatchApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            scrub: credentials.scrubber(),
            credentials,
            policy,
            dialect: Dialect::OpenAi,
            staging: PathBuf::new(),
            model: String::new(),
            bedrock: None,
        }
    }

    /// Bedrock batch inference jobs on the control plane at this API's
    /// base, their files through `staging`.
    pub fn for_bedrock(mut self, staging: Staging) -> BatchApi {
        self.bedrock = Some(staging);
        self
    }

    /// The fewest requests one batch may carry: a file with fewer is
    /// sent online instead (Bedrock's minimum records per job).
    pub fn min_requests(&self) -> usize {
        match &self.bedrock {
            Some(staging) => staging.min_records,
            None => 1,
        }
    }

    /// Batches for `model` (Gemini creates a batch at the model's path).
    pub fn for_model(mut self, model: &str) -> BatchApi {
        self.model = model.to_string();
        self
    }

    /// The most input one batch may carry, in bytes, if the API caps it
    /// below what `--batch-max-bytes` allows (Gemini's inline requests).
    pub fn max_input_bytes(&self) -> Option<u64> {
        (self.dialect == Dialect::Gemini).then_some(gemini_batch::MAX_INLINE_BYTES)
    }

    /// The batch API of `dialect` (Anthropic's Message Batches), keeping
    /// input files in `staging` (the job's journal folder) when it has no
    /// files API.
    pub fn for_dialect(mut self, dialect: Dialect, staging: &Path) -> BatchApi {
        self.dialect = dialect;
        if dialect == Dialect::Azure {
            // Files and batches are the resource's, not the deployment's.
            self.base = azure::files_base(&self.base);
        }
        self.staging = staging.join("batch-input");
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn anthropic(&self) -> bool {
        self.dialect == Dialect::Anthropic
    }

    fn gemini(&self) -> bool {
        self.dialect == Dialect::Gemini
    }

    /// A kept input file ([`BatchApi::keep`]).
    fn kept(&self, file_id: &str) -> Result<Vec<u8>, ApiError> {
        let path = self.staging.join(file_id);
        std::fs::read(&path)
            .map_err(|e| fatal(format!("reading the batch input {}: {e}", path.display())))
    }

    /// An input file kept locally (Anthropic has no files API): written
    /// whole, then renamed, so a kill leaves it whole or absent.
    fn keep(&self, filename: &str, content: &Bytes) -> Result<FileObject, ApiError> {
        let path = self.staging.join(filename);
        let tmp = self.staging.join(format!("{filename}.tmp"));
        std::fs::create_dir_all(&self.staging)
            .and_then(|()| std::fs::write(&tmp, content))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| fatal(format!("keeping the batch input {}: {e}", path.display())))?;
        Ok(FileObject {
            id: filename.to_string(),
            object: "file".into(),
            bytes: content.len() as u64,
            created_at: 0,
            filename: filename.to_string(),
            purpose: "batch".into(),
        })
    }

    /// A reply of another dialect's batch API, read into OpenAI's shape.
    fn translated<T: serde::de::DeserializeOwned>(
        reply: &[u8],
        f: fn(&Value) -> Result<Value, String>,
    ) -> Result<T, ApiError> {
        let v: Value = decode(reply)?;
        let v = f(&v).map_err(local)?;
        serde_json::from_value(v).map_err(|e| local(format!("batch reply: {e}")))
    }

    /// Upload a batch input file (`purpose=batch`).
    pub async fn upload(&self, filename: &str, content: Bytes) -> Result<FileObject, ApiError> {
        if let Some(b) = &self.bedrock {
            let records = bedrock_batch::records(&content).map_err(fatal)?;
            let bytes = records.len() as u64;
            let id = b.put_input(filename, records).await.map_err(fatal)?;
            return Ok(FileObject {
                id,
                object: "file".into(),
                bytes,
                created_at: 0,
                filename: filename.to_string(),
                purpose: "batch".into(),
            });
        }
        if self.anthropic() || self.gemini() {
            return self.keep(filename, &content);
        }
        // The multipart body is written by hand: two parts, no need for a
        // multipart crate (or reqwest's feature, which would rebuild it).
        let boundary = format!("aiq-{:016x}", rand::random::<u64>());
        let mut body = Vec::with_capacity(content.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = Bytes::from(body);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let reply = self
            .send(reqwest::Method::POST, "files", Some((content_type, body)))
            .await?;
        decode(&reply)
    }

    pub async fn create(&self, request: &CreateBatch) -> Result<BatchObject, ApiError> {
        if let Some(b) = &self.bedrock {
            let meta = request.metadata.clone().unwrap_or_default();
            let field = |k: &str| meta.get(k).map(String::as_str).unwrap_or_default();
            let body = bedrock_batch::create_body(&bedrock_batch::NewJob {
                job: field("aiq_job"),
                submission: field("aiq_submission"),
                role_arn: &b.role_arn,
                model: &self.model,
                input: &request.input_file_id,
                output: &b.output_url(),
            });
            let body = Bytes::from(body.to_string());
            let json = Some(("application/json".into(), body));
            let reply = self
                .send(reqwest::Method::POST, bedrock_batch::JOBS, json)
                .await?;
            let created: Value = decode(&reply)?;
            let arn = created
                .get("jobArn")
                .and_then(Value::as_str)
                .ok_or_else(|| local("CreateModelInvocationJob answered without a jobArn"))?;
            return self.get(arn).await;
        }
        if self.gemini() {
            let lines = self.kept(&request.input_file_id)?;
            let name = gemini_batch::display_name(&request.metadata.clone().unwrap_or_default());
            let body = gemini_batch::create_body(&name, &lines).map_err(fatal)?;
            let json = Some(("application/json".into(), Bytes::from(body)));
            let path = gemini_batch::create_path(&self.model);
            let reply = self.send(reqwest::Method::POST, &path, json).await?;
            return Self::translated(&reply, gemini_batch::batch_object);
        }
        if self.anthropic() {
            let lines = self.kept(&request.input_file_id)?;
            let body = anthropic_batch::create_body(&lines).map_err(fatal)?;
            let json = Some(("application/json".into(), Bytes::from(body)));
            let reply = self
                .send(reqwest::Method::POST, anthropic_batch::BATCHES, json)
                .await?;
            return Self::translated(&reply, anthropic_batch::batch_object);
        }
        let body = Bytes::from(serde_json::to_vec(request).map_err(|e| local(e.to_string()))?);
        let reply = self
            .send(
                reqwest::Method::POST,
                "batches",
                Some(("application/json".into(), body)),
            )
            .await?;
        decode(&reply)
    }

    pub async fn get(&self, id: &str) -> Result<BatchObject, ApiError> {
        if self.bedrock.is_some() {
            let path = bedrock_batch::job_path(id);
            let reply = self.send(reqwest::Method::GET, &path, None).await?;
            return Self::translated(&reply, bedrock_batch::batch_object);
        }
        if self.gemini() {
            let path = gemini_batch::batch_path(id, None);
            let reply = self.send(reqwest::Method::GET, &path, None).await?;
            return Self::translated(&reply, gemini_batch::batch_object);
        }
        if self.anthropic() {
            let path = format!("{}/{id}", anthropic_batch::BATCHES);
            let reply = self.send(reqwest::Method::GET, &path, None).await?;
            return Self::translated(&reply, anthropic_batch::batch_object);
        }
        let reply = self
            .send(reqwest::Method::GET, &format!("batches/{id}"), None)
            .await?;
        decode(&reply)
    }

    pub async fn cancel(&self, id: &str) -> Result<BatchObject, ApiError> {
        if self.bedrock.is_some() {
            // StopModelInvocationJob answers `{}`: the job says the rest.
            let path = format!("{}/stop", bedrock_batch::job_path(id));
            self.send(reqwest::Method::POST, &path, None).await?;
            return self.get(id).await;
        }
        if self.gemini() {
            // Google answers a cancel with `{}`: the batch says the rest.
            let path = gemini_batch::batch_path(id, Some("cancel"));
            self.send(reqwest::Method::POST, &path, None).await?;
            return self.get(id).await;
        }
        if self.anthropic() {
            let path = format!("{}/{id}/cancel", anthropic_batch::BATCHES);
            let reply = self.send(reqwest::Method::POST, &path, None).await?;
            return Self::translated(&reply, anthropic_batch::batch_object);
        }
        let reply = self
            .send(reqwest::Method::POST, &format!("batches/{id}/cancel"), None)
            .await?;
        decode(&reply)
    }

    /// One page of batches, newest first, after the batch `after`.
    pub async fn list(&self, after: Option<&str>) -> Result<BatchList, ApiError> {
        if self.bedrock.is_some() {
            // A job whose ARN a kill lost is created again with its
            // clientRequestToken, which returns it: nothing to look up.
            return Ok(BatchList {
                object: list_object(),
                data: Vec::new(),
                first_id: None,
                last_id: None,
                has_more: false,
            });
        }
        if self.gemini() {
            return self.gemini_list().await;
        }
        if self.anthropic() {
            let mut path = format!("{}?limit=100", anthropic_batch::BATCHES);
            if let Some(a) = after {
                path.push_str(&format!("&after_id={a}"));
            }
            let reply = self.send(reqwest::Method::GET, &path, None).await?;
            return Self::translated(&reply, anthropic_batch::batch_list);
        }
        let path = match after {
            Some(a) => format!("batches?limit=100&after={a}"),
            None => "batches?limit=100".to_string(),
        };
        let reply = self.send(reqwest::Method::GET, &path, None).await?;
        decode(&reply)
    }

    /// The content of a file (a batch's output or error file).
    pub async fn content(&self, file_id: &str) -> Result<Bytes, ApiError> {
        if let Some(b) = &self.bedrock {
            let records = b.get_output(file_id).await.map_err(local)?;
            return Ok(bedrock_batch::output_lines(&records).into());
        }
        if self.gemini() {
            // The output "file" is the batch's inlined responses.
            let path = gemini_batch::batch_path(file_id, None);
            let reply = self.send(reqwest::Method::GET, &path, None).await?;
            let op: Value = decode(&reply)?;
            return Ok(gemini_batch::output_lines(&op).into());
        }
        if self.anthropic() {
            // The output "file" is the batch's results_url.
            let results = self.send_to(reqwest::Method::GET, file_id, None).await?;
            return Ok(anthropic_batch::output_lines(&results).into());
        }
        self.send(
            reqwest::Method::GET,
            &format!("files/{file_id}/content"),
            None,
        )
        .await
    }

    /// Every batch Google lists, as one page: its pages go by token, which
    /// the runner's `after` (a batch id) cannot carry.
    async fn gemini_list(&self) -> Result<BatchList, ApiError> {
        let mut data = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..GEMINI_LIST_PAGES {
            let path = gemini_batch::list_path(page.as_deref());
            let reply = self.send(reqwest::Method::GET, &path, None).await?;
            let (batches, next) = gemini_batch::list_page(&decode(&reply)?);
            data.extend(batches);
            match next {
                Some(token) => page = Some(token),
                None => break,
            }
        }
        let list = serde_json::json!({"object": "list", "data": data, "has_more": false});
        serde_json::from_value(list).map_err(|e| local(format!("batch list: {e}")))
    }

    /// One call with retries, classified by [`classify`].
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(String, Bytes)>,
    ) -> Result<Bytes, ApiError> {
        self.send_to(method, &under(&self.base, path), body).await
    }

    /// [`BatchApi::send`] to a whole URL.
    async fn send_to(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<(String, Bytes)>,
    ) -> Result<Bytes, ApiError> {
        let url = url.to_string();
        self.policy
            .run(
                Pacing::Backoff,
                || self.attempt(&method, &url, body.as_ref()),
                |_| true,
                |e: &Failed, after| tracing::debug!("retrying in {after:?}: {}", e.1.message),
            )
            .await
            .map_err(|e| e.1)
    }

    async fn attempt(
        &self,
        method: &reqwest::Method,
        url: &str,
        body: Option<&(String, Bytes)>,
    ) -> Result<Bytes, Failed> {
        let transient = |after, message: String| {
            Failed(
                RetryAction::Retry {
                    after,
                    rate_limited: false,
                },
                local(message),
            )
        };
        let mut request = self
            .http
            .request(method.clone(), url)
            .timeout(self.policy.timeout);
        if let Some((content_type, body)) = body {
            let value = HeaderValue::from_str(content_type)
                .map_err(|e| Failed(RetryAction::RowError, local(e.to_string())))?;
            request = request.header(CONTENT_TYPE, value).body(body.clone());
        }
        // AWS signs the method, the URL and the body; others send a key.
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| Failed(RetryAction::Abort, fatal(format!("{url}: {e}"))))?;
        let payload = body.map(|(_, b)| b.clone()).unwrap_or_default();
        let credentials = self
            .credentials
            .headers(&self.http, method, &uri, &payload)
            .await
            .map_err(|e| Failed(RetryAction::Abort, fatal(e.to_string())))?;
        for (name, value) in credentials {
            request = request.header(name, value);
        }
        for (name, value) in self.dialect.headers() {
            request = request.header(*name, *value);
        }
        // reqwest's messages name the URL, never headers: no token leaks.
        let response = request
            .send()
            .await
            .map_err(|e| transient(None, format!("{method} {url}: {e}")))?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transient(retry_after(&headers), format!("{method} {url}: {e}")))?;
            // Server text: no secret of ours comes back out of it.
            return Ok(self.scrub.bytes(bytes));
        }
        let (head, len) = wire::error_body(&headers, reqwest::Body::from(response)).await;
        let bytes = self.scrub.bytes(head);
        let action = classify(self.dialect, status, &headers, &bytes);
        let error = ApiError {
            status: Some(status.as_u16()),
            code: error_code(&bytes),
            message: format!(
                "{method} {url}: HTTP {}: {}",
                status.as_u16(),
                wire::error_message_of(&bytes, len)
            ),
            fatal: action == RetryAction::Abort,
        };
        Err(Failed(action, error))
    }
}

/// `path` (maybe with a query of its own) under `base`, whose query
/// (Azure's `?api-version=…`) every call carries.
fn under(base: &str, path: &str) -> String {
    let (base, query) = azure::split_query(base);
    match (query, path.split_once('?')) {
        ("", _) => format!("{base}/{path}"),
        (query, None) => format!("{base}/{path}{query}"),
        (query, Some((path, own))) => format!("{base}/{path}{query}&{own}"),
    }
}

/// A failed attempt: what to do about it, and the error if it is the last.
struct Failed(RetryAction, ApiError);

impl Failure for Failed {
    fn action(&self) -> &RetryAction {
        &self.0
    }
}

fn local(message: impl Into<String>) -> ApiError {
    ApiError {
        status: None,
        code: None,
        message: message.into(),
        fatal: false,
    }
}

fn fatal(message: impl Into<String>) -> ApiError {
    ApiError {
        fatal: true,
        ..local(message)
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        local(format!(
            "unexpected reply from the Batch API ({e}): {}",
            crate::provider::reply::head(body)
        ))
    })
}

/// `error.code` (OpenAI) or `error_code` (Databricks) of an error body.
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/code")
        .or_else(|| v.get("error_code"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The task a Batch line's `url` asks for. Accepts the paths with or
/// without `/v1`, as OpenAI and vLLM write them.
pub fn route(url: &str) -> Option<Task> {
    let path = url.trim();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match path {
        "/chat/completions" => Some(Task::Chat),
        "/completions" => Some(Task::Completions),
        "/embeddings" => Some(Task::Embeddings),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_with_and_without_v1() {
        assert_eq!(route("/v1/chat/completions"), Some(Task::Chat));
        assert_eq!(route("/completions"), Some(Task::Completions));
        assert_eq!(route("/v1/embeddings"), Some(Task::Embeddings));
        assert_eq!(route("/v1/responses"), None);
        assert_eq!(
            endpoint_path(Dialect::Azure, Task::Chat),
            "/chat/completions"
        );
        assert_eq!(
            endpoint_path(Dialect::OpenAi, Task::Embeddings),
            "/v1/embeddings"
        );
    }

    #[test]
    fn calls_keep_the_bases_query() {
        let azure = "http://h/openai?api-version=2024-10-21";
        assert_eq!(
            under(azure, "batches?limit=100&after=b1"),
            "http://h/openai/batches?api-version=2024-10-21&limit=100&after=b1"
        );
        assert_eq!(
            under(azure, "files/f1/content"),
            "http://h/openai/files/f1/content?api-version=2024-10-21"
        );
        assert_eq!(
            under("http://h/v1", "batches?limit=1"),
            "http://h/v1/batches?limit=1"
        );
    }

    #[test]
    fn request_lines_carry_the_body_unchanged() {
        let line = request_line("17", "/v1/chat/completions", br#"{"messages":[]}"#);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"custom_id": "17", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}})
        );
    }

    #[test]
    fn batch_objects_parse_as_openai_sends_them() {
        let b: BatchObject = serde_json::from_value(json!({
            "id": "batch_abc", "object": "batch", "endpoint": "/v1/chat/completions",
            "errors": {"object": "list", "data": [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached", "param": null, "line": null}]},
            "input_file_id": "file-1", "completion_window": "24h", "status": "failed",
            "output_file_id": null, "error_file_id": null, "created_at": 1, "failed_at": 2,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": {"aiq_job": "x"}
        }))
        .unwrap();
        assert_eq!(b.status, BatchStatus::Failed);
        assert!(b.status.is_terminal());
        assert_eq!(b.error_code(), Some(TOKEN_LIMIT_EXCEEDED));
        assert!(b.error_text().contains("Enqueued token limit"));
        assert!(!BatchStatus::Cancelling.is_terminal());
    }
}

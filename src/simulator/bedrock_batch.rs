//! The simulator's Amazon Bedrock batch inference control plane (service
//! `bedrock`, REST JSON), as AWS documents it:
//! `POST /model-invocation-job` (CreateModelInvocationJob → `{jobArn}`,
//! idempotent by `clientRequestToken`), `GET
//! /model-invocation-job/{jobIdentifier}` (GetModelInvocationJob; the ARN
//! URL-encoded, or the bare 12-character job id) and `POST
//! /model-invocation-job/{jobIdentifier}/stop` (StopModelInvocationJob).
//!
//! The data lives in S3 (`--bedrock-s3-endpoint`, an S3-compatible server
//! such as moto): a job reads the `.jsonl` file its `s3InputDataConfig`
//! names (or every `.jsonl` under that prefix), answers each record
//! `{recordId, modelInput}` — `modelInput` is the model's InvokeModel body:
//! for Anthropic Claude models the Messages body with `anthropic_version:
//! "bedrock-2023-05-31"` and no `model`, answered by the same code as the
//! Anthropic routes ([`super::anthropic_batch::answer`]) — and writes
//! `{output}/{jobId}/{inputFile}.out` (`{recordId, modelInput,
//! modelOutput}` or `{recordId, modelInput, error: {errorCode,
//! errorMessage}}`) and `{output}/{jobId}/manifest.json.out`.
//!
//! A job's life: `Submitted` → `Validating` (fewer records than
//! `--bedrock-min-records` fail it, as AWS's quota does) → `InProgress`
//! (records answered evenly over `--batch-turnaround-ms`) → `Completed`;
//! a stop makes it `Stopping`, then `Stopped` with the records answered so
//! far written out; `--batch-expire-first` jobs end `PartiallyCompleted`
//! after `--batch-expire-share` of their records. `--batch-fail-rate`
//! fails records (errorCode 500), `--batch-create-delay-ms` delays the
//! reply to a new job's create (the job exists at once). Jobs count in
//! [`super::BatchStats`] (a create repeated with its token is not a new
//! job). Every request's SigV4 signature is checked as the runtime's are
//! ([`super::bedrock::verify`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::batch::{create_delay, Pace};
use super::bedrock::wire::error_reply;
use super::stats::bump;
use super::ServerState;
use crate::provider::anthropic::error_status;

/// AWS's default quota "Minimum number of records per batch inference job".
pub const DEFAULT_MIN_RECORDS: usize = 100;

/// The `anthropic_version` a Claude InvokeModel body must carry on Bedrock.
const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// The account the simulated jobs belong to (in their ARNs).
const ACCOUNT: &str = "123456789012";

/// The keys the simulated service role signs its S3 requests with: an
/// S3 server for tests (moto) checks no signature, but answers unsigned
/// reads of signed writes with 403.
const ROLE_KEY_ID: &str = "AKIASIMULATEDROLE001";
const ROLE_SECRET: &str = "simulated-role-secret";

struct Job {
    object: Value,
    stop: Arc<Notify>,
}

/// Batch inference jobs, in memory.
#[derive(Default)]
pub(crate) struct Store {
    /// By job id (the ARN's last part).
    jobs: Mutex<BTreeMap<String, Job>>,
    /// `clientRequestToken` → job id: a create repeated with its token
    /// returns the job it made.
    tokens: Mutex<HashMap<String, String>>,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn invalid(message: &str) -> Response {
    error_reply(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// The region a request is signed for, once its SigV4 signature checks
/// out as the runtime's do ([`super::bedrock::verify`]); otherwise
/// Bedrock's refusal.
fn authorized(
    st: &ServerState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Response> {
    if let Err((kind, message)) =
        super::bedrock::verify(st.cfg.token.as_deref(), method, uri, headers, body)
    {
        bump(&st.counters.unauthorized);
        return Err(error_reply(StatusCode::FORBIDDEN, kind, &message));
    }
    // AKID/yyyymmdd/region/service/aws4_request, checked above.
    let region = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .unwrap_or("us-east-1");
    Ok(region.to_string())
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn name_ok(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || extra.contains(&b))
}

/// `POST /model-invocation-job`.
pub(crate) async fn create(
    State(st): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let region = match authorized(&st, &Method::POST, &uri, &headers, &body) {
        Ok(region) => region,
        Err(refused) => return refused,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return invalid("request body is not JSON");
    };
    let job_name = str_at(&req, "/jobName").unwrap_or_default();
    if !name_ok(job_name, 63, b"+.") {
        return invalid(&format!(
            "1 validation error detected: Value '{job_name}' at 'jobName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             [a-zA-Z0-9]{{1,63}}(-*[a-zA-Z0-9\\+\\-\\.]){{0,63}}"
        ));
    }
    let role = str_at(&req, "/roleArn").unwrap_or_default();
    if !role.starts_with("arn:aws") || !role.contains(":iam::") || !role.contains(":role/") {
        return invalid(&format!(
            "1 validation error detected: Value '{role}' at 'roleArn' failed to satisfy constraint"
        ));
    }
    let model = str_at(&req, "/modelId").unwrap_or_default();
    if model.is_empty() {
        return invalid("1 validation error detected: 'modelId' must not be null");
    }
    let input = str_at(&req, "/inputDataConfig/s3InputDataConfig/s3Uri").unwrap_or_default();
    let output = str_at(&req, "/outputDataConfig/s3OutputDataConfig/s3Uri").unwrap_or_default();
    for (field, uri) in [("inputDataConfig", input), ("outputDataConfig", output)] {
        if split_s3(uri).is_none() {
            return invalid(&format!(
                "{field}: '{uri}' is not an S3 URI (s3://bucket/key)"
            ));
        }
    }
    if let Some(f) = str_at(&req, "/inputDataConfig/s3InputDataConfig/s3InputFormat") {
        if f != "JSONL" {
            return invalid(&format!("s3InputFormat: '{f}' is not JSONL"));
        }
    }
    let timeout = req.get("timeoutDurationInHours");
    if let Some(t) = timeout.filter(|t| !t.is_null()) {
        if !t.as_u64().is_some_and(|h| (24..=168).contains(&h)) {
            return invalid("timeoutDurationInHours: must be between 24 and 168");
        }
    }
    let token = str_at(&req, "/clientRequestToken").map(str::to_string);
    if let Some(t) = &token {
        if !name_ok(t, 256, b"") {
            return invalid(
                "clientRequestToken: must match ^[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}$",
            );
        }
    }
    let store = &st.bedrock_batches;
    // The token's job, or a new one (atomically: two creates with one
    // token make one job).
    let (id, new) = {
        let mut tokens = lock(&store.tokens);
        match token.as_ref().and_then(|t| tokens.get(t)) {
            Some(id) => (id.clone(), false),
            None => {
                let seq = store.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let id = format!("{:012x}", seq ^ 0x5eed_0000_0000);
                if let Some(t) = token.clone() {
                    tokens.insert(t, id.clone());
                }
                (id, true)
            }
        }
    };
    let arn = format!("arn:aws:bedrock:{region}:{ACCOUNT}:model-invocation-job/{id}");
    if new {
        let now = super::anthropic::rfc3339_after(Duration::ZERO);
        let object = json!({
            "jobArn": arn,
            "jobName": job_name,
            "modelId": model,
            "clientRequestToken": token,
            "roleArn": role,
            "status": "Submitted",
            "submitTime": now,
            "lastModifiedTime": now,
            "inputDataConfig": req["inputDataConfig"],
            "outputDataConfig": req["outputDataConfig"],
            "timeoutDurationInHours": timeout.and_then(Value::as_u64).unwrap_or(168),
            "jobExpirationTime": super::anthropic::rfc3339_after(Duration::from_secs(
                3600 * timeout.and_then(Value::as_u64).unwrap_or(168))),
        });
        let stop = Arc::new(Notify::new());
        lock(&store.jobs).insert(
            id.clone(),
            Job {
                object,
                stop: stop.clone(),
            },
        );
        st.batches.count(|s| s.batches += 1);
        tokio::spawn(run(st.clone(), id, stop));
    }
    // A create repeated with its token answers at once: the delay stands
    // for a reply lost after the job was made.
    if new {
        create_delay(&st.cfg).await;
    }
    Json(json!({"jobArn": arn})).into_response()
}

/// `s3://bucket/key` → (bucket, key).
fn split_s3(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, key))
}

/// The job's fields, changed under the lock.
fn update(st: &ServerState, id: &str, f: impl FnOnce(&mut Value)) {
    if let Some(job) = lock(&st.bedrock_batches.jobs).get_mut(id) {
        f(&mut job.object);
        job.object["lastModifiedTime"] = json!(super::anthropic::rfc3339_after(Duration::ZERO));
    }
}

fn status_of(st: &ServerState, id: &str) -> String {
    lock(&st.bedrock_batches.jobs)
        .get(id)
        .and_then(|j| j.object["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn end(st: &ServerState, id: &str, status: &str, message: Option<String>) {
    update(st, id, |o| {
        o["status"] = json!(status);
        o["endTime"] = json!(super::anthropic::rfc3339_after(Duration::ZERO));
        if let Some(m) = message {
            o["message"] = json!(m);
        }
    });
}

/// A bucket of the S3 server the jobs read and write.
fn bucket(st: &ServerState, name: &str, region: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let endpoint = st.cfg.bedrock_s3_endpoint.as_deref().ok_or(
        "the simulator has no S3 (start it with --bedrock-s3-endpoint) to read batch input from",
    )?;
    let s3 = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region(region)
        .with_bucket_name(name)
        .with_access_key_id(ROLE_KEY_ID)
        .with_secret_access_key(ROLE_SECRET)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(s3))
}

/// One input file's records: its name, and `(recordId, modelInput)`.
type InputFile = (String, Vec<(String, Value)>);

/// The job's input files from S3: the `.jsonl` object named, or every
/// `.jsonl` object under the prefix named.
async fn read_input(st: &ServerState, uri: &str, region: &str) -> Result<Vec<InputFile>, String> {
    let (bucket_name, key) = split_s3(uri).ok_or("not an S3 URI")?;
    let store = bucket(st, bucket_name, region)?;
    let keys: Vec<ObjectPath> = if key.ends_with(".jsonl") {
        vec![ObjectPath::from(key)]
    } else {
        let prefix = ObjectPath::from(key);
        let mut listed = store.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| format!("listing {uri}: {e}"))?;
            if meta.location.as_ref().ends_with(".jsonl") {
                keys.push(meta.location);
            }
        }
        keys
    };
    if keys.is_empty() {
        return Err(format!("no .jsonl input file at {uri}"));
    }
    let mut files = Vec::new();
    let mut n = 0usize;
    for key in keys {
        let bytes = store
            .get(&key)
            .await
            .map_err(|e| format!("reading s3://{bucket_name}/{key}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("reading s3://{bucket_name}/{key}: {e}"))?;
        let mut records = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(line)
                .map_err(|e| format!("s3://{bucket_name}/{key} line {}: not JSON: {e}", i + 1))?;
            let Some(input) = v.get("modelInput").filter(|m| m.is_object()) else {
                return Err(format!(
                    "s3://{bucket_name}/{key} line {}: no modelInput object",
                    i + 1
                ));
            };
            n += 1;
            // AWS names a record that has no id.
            let id = str_at(&v, "/recordId")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{n:011}"));
            records.push((id, input.clone()));
        }
        let name = key.filename().unwrap_or("input.jsonl").to_string();
        files.push((name, records));
    }
    Ok(files)
}

/// A job from `Submitted` to its end.
async fn run(st: Arc<ServerState>, id: String, stop: Arc<Notify>) {
    let (input, output, model, region) = {
        let jobs = lock(&st.bedrock_batches.jobs);
        let Some(job) = jobs.get(&id) else { return };
        let o = &job.object;
        let arn = o["jobArn"].as_str().unwrap_or_default();
        (
            str_at(o, "/inputDataConfig/s3InputDataConfig/s3Uri")
                .unwrap_or_default()
                .to_string(),
            str_at(o, "/outputDataConfig/s3OutputDataConfig/s3Uri")
                .unwrap_or_default()
                .to_string(),
            o["modelId"].as_str().unwrap_or_default().to_string(),
            arn.split(':').nth(3).unwrap_or("us-east-1").to_string(),
        )
    };
    // A stop may come at any time: it is not overwritten.
    let advance = |o: &mut Value, to: &str| {
        if o["status"] != "Stopping" {
            o["status"] = json!(to);
        }
    };
    update(&st, &id, |o| advance(o, "Validating"));
    let files = match read_input(&st, &input, &region).await {
        Ok(f) => f,
        Err(m) => return end(&st, &id, "Failed", Some(m)),
    };
    let total: usize = files.iter().map(|(_, r)| r.len()).sum();
    let min = st.cfg.bedrock_min_records;
    if total < min {
        let m = format!(
            "The number of records in the input ({total}) is below the minimum number of \
             records per batch inference job ({min})"
        );
        return end(&st, &id, "Failed", Some(m));
    }
    // Counted as a batch when created (above), its records only once they
    // pass validation: `BatchStats::start`, not `BatchStore::open`.
    let expire = st.batches.count(|s| s.start(total, &st.cfg));
    update(&st, &id, |o| {
        advance(o, "InProgress");
        o["totalRecordCount"] = json!(total);
        o["processedRecordCount"] = json!(0);
        o["successRecordCount"] = json!(0);
        o["errorRecordCount"] = json!(0);
    });
    let pace = Pace::new(&st.cfg, total);
    let mut ended_by: Option<&str> = None;
    let (mut done, mut ok, mut failed) = (0usize, 0usize, 0usize);
    let (mut tokens_in, mut tokens_out) = (0u64, 0u64);
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    'files: for (name, records) in &files {
        let mut lines = Vec::new();
        for (record_id, model_input) in records {
            if expire == Some(done) {
                ended_by = Some("PartiallyCompleted");
            }
            // A stop wakes the wait, or came while a record was answered.
            if ended_by.is_none()
                && (!pace.until(done, &stop).await || status_of(&st, &id) == "Stopping")
            {
                ended_by = Some("Stopped");
            }
            if ended_by.is_some() {
                outputs.push((name.clone(), lines));
                break 'files;
            }
            let mut line = json!({"recordId": record_id, "modelInput": model_input});
            match answer(&st, &model, model_input) {
                Ok(reply) => {
                    ok += 1;
                    tokens_in += reply["usage"]["input_tokens"].as_u64().unwrap_or(0);
                    tokens_out += reply["usage"]["output_tokens"].as_u64().unwrap_or(0);
                    line["modelOutput"] = reply;
                }
                Err((code, message)) => {
                    failed += 1;
                    line["error"] = json!({"errorCode": code, "errorMessage": message});
                }
            }
            done += 1;
            lines.extend(line.to_string().into_bytes());
            lines.push(b'\n');
            update(&st, &id, |o| {
                o["processedRecordCount"] = json!(done);
                o["successRecordCount"] = json!(ok);
                o["errorRecordCount"] = json!(failed);
            });
        }
        outputs.push((name.clone(), lines));
    }
    if ended_by == Some("Stopped") {
        st.batches.count(|s| s.cancelled += 1);
    }
    let manifest = json!({
        "totalRecordCount": total,
        "processedRecordCount": done,
        "successRecordCount": ok,
        "errorRecordCount": failed,
        "inputTokenCount": tokens_in,
        "outputTokenCount": tokens_out,
    });
    let (status, message) = match write_output(&st, &output, &region, &id, outputs, &manifest).await
    {
        Ok(()) => (ended_by.unwrap_or("Completed"), None),
        Err(m) => ("Failed", Some(m)),
    };
    end(&st, &id, status, message);
}

/// `{output}/{jobId}/{file}.out` per input file, and the manifest.
async fn write_output(
    st: &ServerState,
    output: &str,
    region: &str,
    id: &str,
    files: Vec<(String, Vec<u8>)>,
    manifest: &Value,
) -> Result<(), String> {
    let (bucket_name, prefix) = split_s3(output).ok_or("not an S3 URI")?;
    let store = bucket(st, bucket_name, region)?;
    let dir = format!("{}/{id}", prefix.trim_end_matches('/'));
    let dir = dir.trim_start_matches('/');
    let mut objects: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|(name, lines)| (format!("{dir}/{name}.out"), lines))
        .collect();
    objects.push((
        format!("{dir}/manifest.json.out"),
        manifest.to_string().into_bytes(),
    ));
    for (key, bytes) in objects {
        store
            .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes))
            .await
            .map_err(|e| format!("writing s3://{bucket_name}/{key}: {e}"))?;
    }
    Ok(())
}

/// One record's answer: InvokeModel's reply body, or `(errorCode,
/// errorMessage)`. Only Anthropic Claude bodies are understood.
fn answer(st: &ServerState, model: &str, input: &Value) -> Result<Value, (u16, String)> {
    if !model.contains("anthropic.") {
        return Err((
            400,
            format!("the simulator answers Anthropic Claude models only, not {model}"),
        ));
    }
    let mut params = input.clone();
    let Some(body) = params.as_object_mut() else {
        return Err((400, "modelInput is not a JSON object".into()));
    };
    if body.contains_key("model") {
        return Err((400, "extraneous key [model] is not permitted".into()));
    }
    match body.remove("anthropic_version") {
        Some(v) if v == ANTHROPIC_VERSION => {}
        Some(v) => return Err((400, format!("invalid anthropic_version {v}"))),
        None => return Err((400, "required key [anthropic_version] not found".into())),
    }
    body.insert("model".into(), json!(model));
    let result = super::anthropic_batch::answer(st, &params);
    match result["type"].as_str() {
        Some("succeeded") => Ok(result["message"].clone()),
        _ => {
            let e = &result["error"]["error"];
            let status = e["type"].as_str().and_then(error_status).unwrap_or(500);
            let message = e["message"].as_str().unwrap_or("error").to_string();
            Err((status, message))
        }
    }
}

/// The job a `jobIdentifier` names (an ARN, URL-decoded, or a job id).
fn job_id(identifier: &str) -> &str {
    identifier.rsplit('/').next().unwrap_or(identifier)
}

fn not_found(identifier: &str) -> Response {
    error_reply(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("The specified batch inference job {identifier} could not be found"),
    )
}

/// `GET /model-invocation-job/{jobIdentifier}`.
pub(crate) async fn get(
    State(st): State<Arc<ServerState>>,
    Path(identifier): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorized(&st, &Method::GET, &uri, &headers, b"") {
        return refused;
    }
    match lock(&st.bedrock_batches.jobs).get(job_id(&identifier)) {
        Some(job) => Json(job.object.clone()).into_response(),
        None => not_found(&identifier),
    }
}

/// `POST /model-invocation-job/{jobIdentifier}/stop`: `Stopping` until the
/// record being answered is done, then `Stopped`.
pub(crate) async fn stop(
    State(st): State<Arc<ServerState>>,
    Path(identifier): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorized(&st, &Method::POST, &uri, &headers, &body) {
        return refused;
    }
    let mut jobs = lock(&st.bedrock_batches.jobs);
    let Some(job) = jobs.get_mut(job_id(&identifier)) else {
        return not_found(&identifier);
    };
    match job.object["status"].as_str().unwrap_or_default() {
        "Submitted" | "Validating" | "Scheduled" | "InProgress" => {
            job.object["status"] = json!("Stopping");
            job.stop.notify_one();
            Json(json!({})).into_response()
        }
        "Stopping" => Json(json!({})).into_response(),
        other => invalid(&format!(
            "The batch inference job {identifier} is {other} and cannot be stopped"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uris() {
        assert!(name_ok("aiq-job-1.a", 63, b"+."));
        assert!(!name_ok("-x", 63, b""));
        assert_eq!(split_s3("s3://b/p/x.jsonl"), Some(("b", "p/x.jsonl")));
        assert_eq!(split_s3("s3://b"), Some(("b", "")));
        assert_eq!(split_s3("https://b/x"), None);
        assert_eq!(
            job_id("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456"),
            "abc123def456"
        );
    }
}

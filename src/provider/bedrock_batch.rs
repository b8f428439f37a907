//! Amazon Bedrock batch inference behind the batch runner's interface
//! ([`crate::provider::batch_api::BatchApi`], shaped after OpenAI's Files
//! and Batch APIs): the translations both ways.
//!
//! - An "uploaded" input file is a JSONL object in S3 under the staging
//!   prefix (`--batch-staging`), one record `{recordId, modelInput}` per
//!   request line ([`records`]); `modelInput` is the model's InvokeModel
//!   body, for Anthropic Claude the Messages body with `anthropic_version`
//!   and without `model` (the job names the model). Its file id is its
//!   `s3://` URL.
//! - Creating the batch is `POST /model-invocation-job`
//!   (CreateModelInvocationJob, [`create_body`]) with the service role
//!   (`--bedrock-role-arn`), the input object and the output prefix, and a
//!   `clientRequestToken` made from the submission: a re-run that lost the
//!   job's ARN to a kill creates it again with the same token, and Bedrock
//!   returns the job it made instead of a second one.
//! - A job (GetModelInvocationJob) becomes an OpenAI batch object
//!   ([`batch_object`]); once it has ended its output file is
//!   `{output}/{jobId}/{input file}.out`.
//! - Output records become output lines ([`output_lines`]): `modelOutput`
//!   a 200 with the model's reply, `error.errorCode` (an HTTP status) the
//!   status.
//!
//! Bedrock runs a job only with at least [`MIN_RECORDS`] records (AWS's
//! default quota): fewer rows go online ([`crate::pipeline::batch`]).

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{json, Value};

/// AWS's default quota "Minimum number of records per batch inference job"
/// (`--bedrock-min-records` for an account whose quota differs).
pub const MIN_RECORDS: usize = 100;

/// The `anthropic_version` a Claude InvokeModel body carries on Bedrock.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// The control plane's route for batch inference jobs.
pub const JOBS: &str = "model-invocation-job";

/// The S3 prefix a job's Bedrock batches go through (`--batch-staging`):
/// input files under `input/`, Bedrock's output under `output/`.
pub struct Staging {
    pub store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, without a trailing slash.
    pub bucket_url: String,
    /// The prefix's key in the bucket, without slashes at either end.
    pub prefix: String,
    /// The service role Bedrock reads and writes the prefix as.
    pub role_arn: String,
    /// The fewest records a job takes (the account's quota).
    pub min_records: usize,
}

impl Staging {
    fn key(&self, rel: &str) -> String {
        match self.prefix.is_empty() {
            true => rel.to_string(),
            false => format!("{}/{rel}", self.prefix),
        }
    }

    /// Writes an input file; its `s3://` URL is its file id.
    pub async fn put_input(&self, filename: &str, records: Vec<u8>) -> Result<String, String> {
        let key = self.key(&format!("input/{filename}"));
        let url = format!("{}/{key}", self.bucket_url);
        self.store
            .put(&ObjectPath::from(key.as_str()), PutPayload::from(records))
            .await
            .map_err(|e| format!("writing the batch input {url}: {e}"))?;
        Ok(url)
    }

    /// Where Bedrock writes the jobs' output (each job in a folder named
    /// by its id).
    pub fn output_url(&self) -> String {
        format!("{}/{}/", self.bucket_url, self.key("output"))
    }

    /// An output file by its `s3://` URL; none written (a job that failed
    /// or was stopped before answering) reads as empty.
    pub async fn get_output(&self, url: &str) -> Result<Vec<u8>, String> {
        let key = url
            .strip_prefix(&self.bucket_url)
            .map(|k| k.trim_start_matches('/'))
            .ok_or_else(|| format!("batch output {url} is not in {}", self.bucket_url))?;
        let read = async {
            let got = self.store.get(&ObjectPath::from(key)).await?;
            got.bytes().await
        };
        match read.await {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(format!("reading the batch output {url}: {e}")),
        }
    }
}

/// Whether aiq can run `model` in a Bedrock batch: Anthropic Claude model
/// ids (`anthropic.…`) and their inference profiles (`us.anthropic.…`,
/// `global.anthropic.…`, or a profile ARN naming one). Other families'
/// InvokeModel bodies differ, and aiq does not write them.
pub fn batch_family_ok(model: &str) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model);
    let mut parts = id.split('.');
    match (parts.next(), parts.next()) {
        (Some("anthropic"), _) => true,
        (Some(_geo), Some("anthropic")) => true,
        _ => false,
    }
}

/// Checks batch mode's Bedrock settings before anything is sent: on
/// Bedrock (`bedrock`) the staging prefix and the service role are
/// required and the model must be one aiq writes batch records for;
/// elsewhere they are a mistake. The error names the flag.
pub fn check_settings(
    bedrock: bool,
    staging: Option<&str>,
    role_arn: Option<&str>,
    model: Option<&str>,
) -> Result<(), String> {
    if !bedrock {
        return match (staging, role_arn) {
            (Some(_), _) => Err("--batch-staging only applies with --endpoint bedrock".into()),
            (_, Some(_)) => Err("--bedrock-role-arn only applies with --endpoint bedrock".into()),
            _ => Ok(()),
        };
    }
    let staging = staging.ok_or(
        "--endpoint bedrock --mode batch needs --batch-staging s3://bucket/prefix: Bedrock batch \
         inference reads the requests from S3 and writes the answers there",
    )?;
    let prefix = staging
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.trim_matches('/').is_empty());
    if prefix.is_none() {
        return Err(format!(
            "--batch-staging {staging:?}: give an S3 prefix, s3://bucket/prefix"
        ));
    }
    let role = role_arn.ok_or(
        "--endpoint bedrock --mode batch needs --bedrock-role-arn: the service role Bedrock \
         reads and writes the --batch-staging prefix as (arn:aws:iam::ACCOUNT:role/NAME)",
    )?;
    if !(role.starts_with("arn:aws") && role.contains(":iam::") && role.contains(":role/")) {
        return Err(format!(
            "--bedrock-role-arn {role:?}: give an IAM role ARN, arn:aws:iam::ACCOUNT:role/NAME"
        ));
    }
    let model = model.unwrap_or_default();
    if !batch_family_ok(model) {
        return Err(format!(
            "--mode batch: aiq runs only Anthropic Claude models (anthropic.…, us.anthropic.…) in \
             Bedrock batch inference, not `{model}`: run it online (drop --mode batch)"
        ));
    }
    Ok(())
}

/// A row id as a Bedrock `recordId` ("11 character alphanumeric string"
/// in AWS's examples); read back with `parse::<u64>()`.
fn record_id(custom_id: &Value) -> Value {
    match custom_id.as_str().and_then(|c| c.parse::<u64>().ok()) {
        Some(n) => json!(format!("{n:011}")),
        None => custom_id.clone(),
    }
}

/// Batch input lines (`{custom_id, method, url, body}` JSONL with Anthropic
/// Messages bodies, as the runner writes them) as Bedrock records.
pub fn records(lines: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut v: Value =
            serde_json::from_slice(line).map_err(|e| format!("batch input line {}: {e}", i + 1))?;
        let mut body = v.get_mut("body").map(Value::take).unwrap_or(Value::Null);
        let Some(b) = body.as_object_mut() else {
            return Err(format!("batch input line {}: no request body", i + 1));
        };
        // The job names the model; Bedrock refuses a `model` in the body.
        b.remove("model");
        b.insert("anthropic_version".into(), json!(ANTHROPIC_VERSION));
        let record = json!({"recordId": record_id(&v["custom_id"]), "modelInput": body});
        out.extend(record.to_string().into_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Letters and digits of `s`, the rest as `-`, at most `max` long: what
/// job names and request tokens allow.
fn token_text(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(max)
        .collect();
    t.trim_matches('-').to_string()
}

/// What a CreateModelInvocationJob names.
pub struct NewJob<'a> {
    /// The aiq job (the same for every run of it).
    pub job: &'a str,
    /// The submission: one input file, recorded before the job is created.
    pub submission: &'a str,
    pub role_arn: &'a str,
    pub model: &'a str,
    /// The input object's `s3://` URL.
    pub input: &'a str,
    /// The output prefix's `s3://` URL, ending in `/`.
    pub output: &'a str,
}

/// The body of `POST /model-invocation-job`. The token is the same for
/// every attempt at one submission, in this run or the next.
pub fn create_body(j: &NewJob) -> Value {
    json!({
        "jobName": token_text(&format!("aiq-{}", j.submission), 63),
        "clientRequestToken": token_text(&format!("aiq-{}-{}", j.job, j.submission), 256),
        "roleArn": j.role_arn,
        "modelId": j.model,
        "inputDataConfig": {"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": j.input}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": j.output}},
    })
}

/// A job's path: its ARN as one path segment (`:` and `/` escaped).
pub fn job_path(arn: &str) -> String {
    format!("{JOBS}/{}", crate::provider::aws::path_segment(arn))
}

/// Where a job writes the output of its input object:
/// `{output}/{jobId}/{input file name}.out`.
fn output_url(job: &Value) -> Option<String> {
    let arn = job.get("jobArn")?.as_str()?;
    let id = arn.rsplit('/').next()?;
    let input = job
        .pointer("/inputDataConfig/s3InputDataConfig/s3Uri")?
        .as_str()?;
    let output = job
        .pointer("/outputDataConfig/s3OutputDataConfig/s3Uri")?
        .as_str()?;
    let name = input.rsplit('/').next()?;
    Some(format!("{}/{id}/{name}.out", output.trim_end_matches('/')))
}

/// A GetModelInvocationJob reply as an OpenAI batch object (the runner's
/// `BatchObject`).
pub fn batch_object(v: &Value) -> Result<Value, String> {
    let arn = v
        .get("jobArn")
        .and_then(Value::as_str)
        .ok_or("a batch inference job without a jobArn")?;
    let raw = v.get("status").and_then(Value::as_str).unwrap_or_default();
    let status = match raw {
        "Submitted" | "Validating" | "Scheduled" => "validating",
        "InProgress" => "in_progress",
        "Stopping" => "cancelling",
        "Completed" => "completed",
        // Timed out part-done: the rest is answered again.
        "PartiallyCompleted" | "Expired" => "expired",
        "Stopped" => "cancelled",
        "Failed" => "failed",
        other => {
            return Err(format!(
                "batch inference job {arn}: unknown status {other:?}"
            ))
        }
    };
    let ended = matches!(status, "completed" | "expired" | "cancelled");
    let message = v.get("message").and_then(Value::as_str);
    let errors = (status == "failed").then(|| {
        json!({"object": "list", "data": [{
            "code": "Failed",
            "message": message.unwrap_or("the batch inference job failed"),
        }]})
    });
    let count = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(json!({
        "id": arn,
        "object": "batch",
        "endpoint": JOBS,
        "completion_window": "24h",
        "status": status,
        "errors": errors,
        "input_file_id": v.pointer("/inputDataConfig/s3InputDataConfig/s3Uri"),
        "output_file_id": if ended { output_url(v) } else { None },
        "request_counts": {
            "total": count("totalRecordCount"),
            "completed": count("successRecordCount"),
            "failed": count("errorRecordCount"),
        },
    }))
}

/// Output records (JSONL) as OpenAI batch output lines (JSONL).
pub fn output_lines(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in records.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let custom_id = match v["recordId"].as_str() {
            Some(id) => id.parse::<u64>().map_or(id.to_string(), |n| n.to_string()),
            None => continue,
        };
        let line = match (v.get("modelOutput"), v.get("error")) {
            (Some(reply), _) => {
                json!({"custom_id": custom_id, "response": {"status_code": 200, "body": reply}})
            }
            (None, Some(e)) => {
                let message = e["errorMessage"].as_str().unwrap_or("the record failed");
                let code = e["errorCode"]
                    .as_u64()
                    .or_else(|| e["errorCode"].as_str().and_then(|c| c.parse::<u64>().ok()));
                match code.and_then(|c| u16::try_from(c).ok()) {
                    Some(status) => json!({"custom_id": custom_id, "response": {
                        "status_code": status,
                        "body": {"error": {"message": message}},
                    }}),
                    None => json!({"custom_id": custom_id, "error": {
                        "code": e["errorCode"].to_string(), "message": message,
                    }}),
                }
            }
            (None, None) => continue,
        };
        out.extend(line.to_string().into_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_models_and_profiles_run_in_batch() {
        for ok in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0",
        ] {
            assert!(batch_family_ok(ok), "{ok}");
        }
        for no in [
            "meta.llama3-8b-instruct-v1:0",
            "us.amazon.nova-lite-v1:0",
            "mistral.mistral-large",
        ] {
            assert!(!batch_family_ok(no), "{no}");
        }
    }

    #[test]
    fn settings_are_checked_before_anything_is_sent() {
        let (s, r, m) = (
            Some("s3://b/p"),
            Some("arn:aws:iam::123456789012:role/x"),
            Some("anthropic.claude-3-haiku-20240307-v1:0"),
        );
        assert!(check_settings(true, s, r, m).is_ok());
        assert!(check_settings(false, None, None, m).is_ok());
        let e = |b, s, r, m| check_settings(b, s, r, m).unwrap_err();
        assert!(e(true, None, r, m).contains("--batch-staging"));
        assert!(e(true, Some("s3://b"), r, m).contains("s3://bucket/prefix"));
        assert!(e(true, s, None, m).contains("--bedrock-role-arn"));
        assert!(e(true, s, Some("role"), m).contains("IAM role ARN"));
        let other = e(true, s, r, Some("meta.llama3-8b-instruct-v1:0"));
        assert!(
            other.contains("meta.llama3") && other.contains("online"),
            "{other}"
        );
        assert!(e(false, s, None, m).contains("only applies with --endpoint bedrock"));
    }

    #[test]
    fn lines_become_records_and_records_become_output_lines() {
        let lines = br#"{"custom_id":"7","method":"POST","url":"/v1/messages","body":{"model":"m","max_tokens":5,"messages":[]}}"#;
        let out: Value = serde_json::from_slice(&records(lines).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"recordId": "00000000007", "modelInput": {"anthropic_version": ANTHROPIC_VERSION, "max_tokens": 5, "messages": []}})
        );
        let results = [
            json!({"recordId": "00000000002", "modelInput": {}, "error": {"errorCode": 400, "errorMessage": "bad"}}),
            json!({"recordId": "00000000001", "modelInput": {}, "modelOutput": {"content": []}}),
            json!({"recordId": "00000000003", "modelInput": {}, "error": {"errorCode": "Throttled", "errorMessage": "later"}}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let out: Vec<Value> = output_lines(results.as_bytes())
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(out[0]["custom_id"], "2");
        assert_eq!(out[0]["response"]["status_code"], 400);
        assert_eq!(out[0]["response"]["body"]["error"]["message"], "bad");
        assert_eq!(out[1]["response"]["status_code"], 200);
        assert_eq!(out[2]["error"]["message"], "later");
    }

    #[test]
    fn jobs_map_onto_the_runners_batches() {
        let job = |status: &str| {
            batch_object(&json!({
                "jobArn": "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdef012345",
                "status": status, "message": "why",
                "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/p/input/f.jsonl"}},
                "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/p/output/"}},
                "totalRecordCount": 3, "successRecordCount": 2, "errorRecordCount": 1,
            }))
            .unwrap()
        };
        assert_eq!(job("Scheduled")["status"], "validating");
        assert_eq!(job("InProgress")["output_file_id"], Value::Null);
        assert_eq!(job("Stopping")["status"], "cancelling");
        let done = job("Completed");
        assert_eq!(
            done["output_file_id"],
            "s3://b/p/output/abcdef012345/f.jsonl.out"
        );
        assert_eq!(done["request_counts"]["failed"], 1);
        assert_eq!(job("Stopped")["status"], "cancelled");
        assert_eq!(job("Failed")["errors"]["data"][0]["message"], "why");
        assert!(batch_object(&json!({"jobArn": "a", "status": "Odd"})).is_err());
    }

    #[test]
    fn names_tokens_and_paths() {
        let body = create_body(&NewJob {
            job: "out.parquet:3f",
            submission: "00ff",
            role_arn: "arn:aws:iam::123456789012:role/r",
            model: "anthropic.claude",
            input: "s3://b/i.jsonl",
            output: "s3://b/o/",
        });
        assert_eq!(body["jobName"], "aiq-00ff");
        assert_eq!(body["clientRequestToken"], "aiq-out-parquet-3f-00ff");
        assert_eq!(
            job_path("arn:aws:bedrock:us-east-1:1:model-invocation-job/x1"),
            "model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Amodel-invocation-job%2Fx1"
        );
    }
}

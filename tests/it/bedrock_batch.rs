//! Amazon Bedrock batch inference (`--endpoint bedrock --mode batch`): the
//! simulator's control plane (CreateModelInvocationJob,
//! GetModelInvocationJob, StopModelInvocationJob) driven by boto3, then
//! aiq against it, with moto as S3: every row typed with usage, failed
//! records, a kill -9 (one job, never two), the deadline, the remainder
//! below Bedrock's minimum going online, settings refused before any
//! request, a wrong secret stopping the job, and no secret left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aiq::simulator::{SimConfig, AWS_KEYS};
use serde_json::{json, Value};

use super::native::BEDROCK;
use super::object_store::{create_bucket, unique_bucket, Moto};
use super::util::*;

/// boto3's `bedrock` client against the simulator, its `s3` client against
/// moto: a job answered (the same job for a repeated token), one record
/// failed, a job below the minimum failed at validation, a stopped job,
/// and AWS's errors for a bad name and an unknown job.
const SDK_SCRIPT: &str = r#"
import json, sys, time
import boto3
from botocore.exceptions import ClientError

sim, moto, bucket, key, secret = sys.argv[1:6]
kw = dict(region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret)
s3 = boto3.client("s3", endpoint_url=moto, **kw)
bedrock = boto3.client("bedrock", endpoint_url=sim, **kw)

def record(i, text, **extra):
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 40,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    body.update(extra)
    return {"recordId": f"{i:011d}", "modelInput": body}

def put(name, records):
    s3.put_object(Bucket=bucket, Key=name, Body="\n".join(json.dumps(r) for r in records).encode())
    return f"s3://{bucket}/{name}"

def job(name, uri, token=None):
    args = dict(jobName=name, roleArn="arn:aws:iam::123456789012:role/BedrockBatch",
                modelId="us.anthropic.claude-3-5-haiku-20241022-v1:0",
                inputDataConfig={"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": uri}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}},
                timeoutDurationInHours=24)
    if token:
        args["clientRequestToken"] = token
    return bedrock.create_model_invocation_job(**args)["jobArn"]

def wait(arn):
    while True:
        j = bedrock.get_model_invocation_job(jobIdentifier=arn)
        if j["status"] in ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"):
            return j
        time.sleep(0.1)

def output(arn, name):
    job_id = arn.split("/")[-1]
    body = s3.get_object(Bucket=bucket, Key=f"out/{job_id}/{name}.out")["Body"].read()
    manifest = s3.get_object(Bucket=bucket, Key=f"out/{job_id}/manifest.json.out")["Body"].read()
    return [json.loads(l) for l in body.splitlines() if l.strip()], json.loads(manifest)

report = {}
records = [record(i, f"hello {i}") for i in range(3)] + [record(3, "bad", model="m")]
uri = put("in/records.jsonl", records)
arn = job("conformance-1", uri, token="aiq-token-1")
report["same_arn"] = job("conformance-1", uri, token="aiq-token-1") == arn
j = wait(arn)
report["status"] = j["status"]
report["counts"] = [j.get("totalRecordCount"), j.get("successRecordCount"), j.get("errorRecordCount")]
report["submit_time_type"] = type(j["submitTime"]).__name__
lines, manifest = output(arn, "records.jsonl")
report["outputs"] = {l["recordId"]: l["modelOutput"]["content"][0]["text"] for l in lines if "modelOutput" in l}
report["errors"] = {l["recordId"]: l["error"]["errorCode"] for l in lines if "error" in l}
report["usage"] = lines[0].get("modelOutput", {}).get("usage")
report["manifest"] = manifest

small = job("conformance-small", put("in/small.jsonl", records[:1]))
j = wait(small)
report["small"] = [j["status"], j.get("message", "")]

slow = job("conformance-stop", put("in/slow.jsonl", [record(i, f"slow {i}") for i in range(40)]))
bedrock.stop_model_invocation_job(jobIdentifier=slow)
report["stopping"] = bedrock.get_model_invocation_job(jobIdentifier=slow)["status"]
j = wait(slow)
report["stopped"] = j["status"]
report["stopped_lines"] = len(output(slow, "slow.jsonl")[0])
try:
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
except ClientError as e:
    report["stop_done"] = e.response["Error"]["Code"]

try:
    job("-bad name", uri)
except ClientError as e:
    report["bad_name"] = e.response["Error"]["Code"]
try:
    bedrock.get_model_invocation_job(jobIdentifier=arn[:-12] + "000000000000")
except ClientError as e:
    report["unknown"] = e.response["Error"]["Code"]
print(json.dumps(report))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_drives_the_simulators_batch_inference_control_plane() {
    let moto = Moto::shared();
    let bucket = unique_bucket("bedrock-sdk");
    create_bucket(moto, &bucket).await;
    let f = Fixture::open(SimConfig {
        bedrock_s3_endpoint: Some(moto.url.clone()),
        bedrock_min_records: 2,
        batch_turnaround_ms: 2000,
        ..SimConfig::default()
    })
    .await;
    let args = [
        f.sim.base_url(),
        moto.url.clone(),
        bucket,
        // The simulator's long-term key (no --token: its own secret).
        AWS_KEYS[0].0.to_string(),
        AWS_KEYS[0].1.to_string(),
    ];
    let report = python_sdk(&f, SDK_SCRIPT, &args, &[]).await;
    assert_eq!(report["same_arn"], json!(true), "{report}");
    assert_eq!(report["status"], json!("Completed"), "{report}");
    assert_eq!(report["counts"], json!([4, 3, 1]), "{report}");
    assert_eq!(report["submit_time_type"], json!("datetime"));
    assert_eq!(
        report["outputs"],
        json!({"00000000000": "echo: hello 0", "00000000001": "echo: hello 1", "00000000002": "echo: hello 2"})
    );
    // `model` is not part of a Bedrock InvokeModel body.
    assert_eq!(report["errors"], json!({"00000000003": 400}));
    assert!(
        report["usage"]["input_tokens"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(report["manifest"]["successRecordCount"], json!(3));
    assert_eq!(report["small"][0], json!("Failed"));
    assert!(
        report["small"][1].as_str().unwrap().contains("minimum"),
        "{report}"
    );
    // Stopping until the answered part is written out.
    assert!(
        ["Stopping", "Stopped"].contains(&report["stopping"].as_str().unwrap()),
        "{report}"
    );
    assert_eq!(report["stopped"], json!("Stopped"));
    assert!(report["stopped_lines"].as_u64() < Some(40), "{report}");
    assert_eq!(report["stop_done"], json!("ValidationException"));
    assert_eq!(report["bad_name"], json!("ValidationException"));
    assert_eq!(report["unknown"], json!("ResourceNotFoundException"));
    // One job per token; the refused create made none.
    assert_eq!(f.sim.batch_stats().batches, 3);
}

/// The service role every job names (the simulator does not assume it).
const ROLE: &str = "arn:aws:iam::123456789012:role/BedrockBatch";

/// A simulator whose batch jobs use moto as S3, `input` as `in.jsonl`, the
/// output path, and a staging prefix in a bucket of the test's own.
async fn bedrock_job(cfg: SimConfig, input: &[Value]) -> (Fixture, PathBuf, PathBuf, String) {
    let moto = Moto::shared();
    let bucket = unique_bucket("bedrock-batch");
    create_bucket(moto, &bucket).await;
    let cfg = SimConfig {
        bedrock_s3_endpoint: Some(moto.url.clone()),
        ..cfg
    };
    let (f, path, out) = job_of(cfg, input).await;
    (f, path, out, format!("s3://{bucket}/staging"))
}

/// `aiq run --endpoint bedrock --mode batch` (polled every 20 ms): the
/// runtime at the simulator, the control plane too
/// (`AWS_ENDPOINT_URL_BEDROCK`), S3 at moto (`AWS_ENDPOINT_URL`).
fn batch_command(
    f: &Fixture,
    input: &Path,
    out: &Path,
    staging: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Command {
    let mut flags = vec![
        "--prompt",
        "{{text}}",
        "--mode",
        "batch",
        "--poll-secs",
        "0.02",
    ];
    flags.extend(["--batch-staging", staging, "--bedrock-role-arn", ROLE]);
    flags.extend(extra);
    let (sim, moto) = (f.sim.base_url(), &Moto::shared().url);
    let mut all = vec![
        ("AWS_ENDPOINT_URL_BEDROCK", sim.as_str()),
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    all.extend_from_slice(envs);
    let mut cmd = BEDROCK.command(f, [input, out], &flags, &all);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Every row answered as the simulator answers its text, once, in order.
#[track_caller]
fn assert_echoed(f: &Fixture, out: &Path, input: &[Value]) {
    let (_, rows) = read_rows(out);
    assert_eq!(rows.len(), input.len());
    let stats = f.sim.stats();
    for (row, inp) in rows.iter().zip(input) {
        let text = inp["text"].as_str().unwrap();
        assert_eq!(row["result"], json!(format!("echo: {text}")), "{row:?}");
        assert!(row["prompt_tokens"].as_i64() > Some(0), "{row:?}");
        assert_eq!(stats.ok_by_prompt.get(text), Some(&1), "{text}");
    }
}

/// No AWS secret (the simulator's key is the fixture's [`TOKEN`]) in
/// what aiq printed or left in its state folder.
#[track_caller]
fn assert_no_secret(stderr: &str, state: &Path) {
    assert!(!stderr.contains(TOKEN), "{stderr}");
    for entry in walk(state) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(TOKEN),
            "{} holds the secret",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| match e.path().is_dir() {
            true => walk(&e.path()),
            false => vec![e.path()],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_comes_back_from_one_job_typed_with_usage() {
    let input = rows(120, 0);
    let (f, path, out, staging) = bedrock_job(SimConfig::default(), &input).await;
    let typed = ["--return-type", "STRUCT<a: INT, b: STRING>"];
    let o = output(batch_command(&f, &path, &out, &staging, &typed, &[])).await;
    assert_ok(&o);
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 120);
    for (row, inp) in rows.iter().zip(&input) {
        assert_eq!(row["id"], inp["id"], "input order");
        assert_eq!(row["error_message"], Value::Null, "{row:?}");
        assert!(row["result"]["a"].is_i64(), "{row:?}");
        assert!(row["result"]["b"].is_string(), "{row:?}");
        assert!(row["prompt_tokens"].as_i64() > Some(0), "{row:?}");
        assert!(row["completion_tokens"].as_i64() > Some(0), "{row:?}");
    }
    let batch = f.sim.batch_stats();
    assert_eq!((batch.batches, batch.lines), (1, 120));
    assert_eq!(f.sim.stats().requests, 0, "nothing went online");
    assert_no_secret(&stderr(&o), &f.path("out.parquet.aiq"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_records_are_sent_again_or_reported_in_the_error_columns() {
    let mut input = rows(110, 0);
    input[5]["text"] = json!("refuse this one [[sim:400]]");
    let cfg = SimConfig {
        batch_fail_rate: 0.1,
        ..SimConfig::default()
    };
    let (f, path, out, staging) = bedrock_job(cfg, &input).await;
    let o = output(batch_command(&f, &path, &out, &staging, &[], &[])).await;
    assert_ok(&o);
    let (_, rows) = read_rows(&out);
    let refused = &rows[5];
    assert_eq!(refused["result"], Value::Null);
    let message = refused["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("simulated bad request"), "{refused:?}");
    let answered: Vec<Value> = (0..110)
        .filter(|i| *i != 5)
        .map(|i| input[i].clone())
        .collect();
    let rows_answered: Vec<_> = rows.iter().enumerate().filter(|(i, _)| *i != 5).collect();
    for ((_, row), inp) in rows_answered.iter().zip(&answered) {
        let text = inp["text"].as_str().unwrap();
        assert_eq!(row["result"], json!(format!("echo: {text}")), "{row:?}");
    }
    // The records that failed with a 500 were too few for a second job:
    // they went online, and only they did.
    let failed = f.sim.batch_stats().lines_failed;
    assert!(failed > 0);
    assert_eq!(f.sim.batch_stats().batches, 1);
    assert_eq!(f.sim.stats().requests, failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_the_job_runs_then_a_rerun_creates_no_second_job() {
    let input = rows(100, 0);
    let cfg = SimConfig {
        batch_turnaround_ms: 1_500,
        ..SimConfig::default()
    };
    let (f, path, out, staging) = bedrock_job(cfg, &input).await;
    let journal = f.path("out.parquet.aiq/batches.jsonl");
    // `submitting` then `created`: the job runs, its ARN is journaled.
    let mut cmd = batch_command(&f, &path, &out, &staging, &[], &[]);
    let mut child = spawn_until_journaled(&mut cmd, &journal, 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(std::fs::read_to_string(&journal)
        .unwrap()
        .contains("model-invocation-job/"));
    assert_no_secret("", &f.path("out.parquet.aiq"));
    let o = output(batch_command(&f, &path, &out, &staging, &[], &[])).await;
    assert_ok(&o);
    assert_echoed(&f, &out, &input);
    assert_eq!(f.sim.batch_stats().batches, 1, "the re-run polled the job");
    assert_eq!(f.sim.stats().requests, 0);
    assert_no_secret(&stderr(&o), &f.path("out.parquet.aiq"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_arn_a_kill_lost_is_not_created_twice() {
    // The job exists at once, its ARN comes back after 60 s: the kill
    // lands in between; the re-run's create (same clientRequestToken)
    // gets the same job.
    let input = rows(100, 0);
    let cfg = SimConfig {
        batch_create_delay_ms: 60_000,
        ..SimConfig::default()
    };
    let (f, path, out, staging) = bedrock_job(cfg, &input).await;
    let journal = f.path("out.parquet.aiq/batches.jsonl");
    let mut cmd = batch_command(&f, &path, &out, &staging, &[], &[]);
    let mut child = spawn_until_journaled(&mut cmd, &journal, 1);
    while f.sim.batch_stats().batches == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = output(batch_command(&f, &path, &out, &staging, &[], &[])).await;
    assert_ok(&o);
    assert_echoed(&f, &out, &input);
    assert_eq!(f.sim.batch_stats().batches, 1, "one job for the rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_stops_the_job_and_sends_the_rest_online() {
    // The job would take 6 s; the deadline is 1 s.
    let input = rows(120, 0);
    let cfg = SimConfig {
        batch_turnaround_ms: 6_000,
        ..SimConfig::default()
    };
    let (f, path, out, staging) = bedrock_job(cfg, &input).await;
    let o = output(batch_command(
        &f,
        &path,
        &out,
        &staging,
        &["--deadline", "1s"],
        &[],
    ))
    .await;
    assert_ok(&o);
    assert_echoed(&f, &out, &input);
    assert_eq!(f.sim.batch_stats().cancelled, 1);
    // How many the job answered before it stopped depends on the
    // machine's speed; that the rest went online does not.
    assert!(f.sim.stats().requests > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remainder_below_the_minimum_goes_online() {
    let input = rows(130, 0);
    let (f, path, out, staging) = bedrock_job(SimConfig::default(), &input).await;
    let split = ["--batch-max-requests", "100"];
    // The dry run tells the batch job's rows from those going online.
    for json in [true, false] {
        let dry = [&split[..], &["--dry-run"], &["--json"][..usize::from(json)]].concat();
        let mut cmd = batch_command(&f, &path, &out, &staging, &dry, &[]);
        cmd.stdout(Stdio::piped());
        let o = output(cmd).await;
        assert_ok(&o);
        let said = String::from_utf8_lossy(&o.stdout).to_string();
        if json {
            let e: Value = serde_json::from_str(&said).unwrap();
            let files = e["batches"].as_array().unwrap();
            assert_eq!(files.len(), 1, "{e}");
            assert_eq!(files[0]["requests"], json!(100), "{e}");
            assert_eq!(e["batch_online_requests"], json!(30), "{e}");
        } else {
            assert!(said.contains("1 input file(s)"), "{said}");
            assert!(
                said.contains("30 request(s)") && said.contains("online"),
                "{said}"
            );
        }
    }
    assert_eq!(f.sim.batch_stats().batches, 0, "nothing sent");
    let o = output(batch_command(&f, &path, &out, &staging, &split, &[])).await;
    assert_ok(&o);
    assert_echoed(&f, &out, &input);
    let batch = f.sim.batch_stats();
    assert_eq!((batch.batches, batch.lines), (1, 100));
    assert_eq!(f.sim.stats().requests, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_staging_role_or_a_model_outside_claude_exits_2_before_any_request() {
    let input = rows(100, 0);
    let (f, path, out, staging) = bedrock_job(SimConfig::default(), &input).await;
    let envs = [("AWS_ENDPOINT_URL_BEDROCK", f.sim.base_url())];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let batch = ["--prompt", "{{text}}", "--mode", "batch"];
    for (flags, says) in [
        (vec!["--bedrock-role-arn", ROLE], "--batch-staging"),
        (
            vec!["--batch-staging", staging.as_str()],
            "--bedrock-role-arn",
        ),
    ] {
        let extra = [&batch[..], &flags].concat();
        let o = BEDROCK.run(&f, &path, &out, &extra, &envs).await;
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    let base = f.sim.base_url();
    let llama = "meta.llama3-8b-instruct-v1:0";
    let named = ["--base-url", base.as_str(), "--model", llama];
    let flags = [
        "--batch-staging",
        staging.as_str(),
        "--bedrock-role-arn",
        ROLE,
    ];
    let extra = [&batch[..], &flags].concat();
    let mut all = BEDROCK.env.to_vec();
    all.extend_from_slice(&envs);
    let cmd = f.provider_command(
        "bedrock",
        &named,
        ("AWS_SECRET_ACCESS_KEY", TOKEN),
        [&path, &out],
        &extra,
        &all,
    );
    let o = output(cmd).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(llama) && stderr(&o).contains("online"),
        "{}",
        stderr(&o)
    );
    assert_eq!(f.sim.stats().requests, 0);
    assert_eq!(f.sim.batch_stats().batches, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_stops_the_job_early_with_exit_1() {
    let input = rows(100, 0);
    let (f, path, out, staging) = bedrock_job(SimConfig::default(), &input).await;
    let wrong = "wrong/Secret+Key-0123456789";
    let envs = [("AWS_SECRET_ACCESS_KEY", wrong)];
    let o = output(batch_command(&f, &path, &out, &staging, &[], &envs)).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(f.sim.batch_stats().batches, 0);
    assert_eq!(f.sim.stats().requests, 0);
    let err = stderr(&o);
    assert!(!err.contains(wrong), "{err}");
    assert_no_secret(&err, &f.path("out.parquet.aiq"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_alone_signs_the_staging_bucket_and_the_job() {
    // No key in the environment: the profile's keys (and region) must
    // reach S3 as well as Bedrock.
    let input = rows(100, 0);
    let (f, path, out, staging) = bedrock_job(SimConfig::default(), &input).await;
    let credentials = f.path("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[batch]\naws_access_key_id = {}\naws_secret_access_key = {TOKEN}\n",
            AWS_KEYS[0].0
        ),
    )
    .unwrap();
    let config = f.path("config");
    std::fs::write(&config, "[profile batch]\nregion = us-east-1\n").unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_PROFILE", "batch"),
    ];
    let mut cmd = batch_command(&f, &path, &out, &staging, &[], &files);
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        cmd.env_remove(var);
    }
    let o = output(cmd).await;
    assert_ok(&o);
    assert_echoed(&f, &out, &input);
    assert_eq!(f.sim.batch_stats().batches, 1);
    assert_no_secret(&stderr(&o), &f.path("out.parquet.aiq"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_own_minimum_records_per_job_is_used() {
    // An account whose quota is 20 records: 30 rows are one job.
    let input = rows(30, 0);
    let cfg = SimConfig {
        bedrock_min_records: 20,
        ..SimConfig::default()
    };
    let (f, path, out, staging) = bedrock_job(cfg, &input).await;
    let quota = ["--bedrock-min-records", "20"];
    let o = output(batch_command(&f, &path, &out, &staging, &quota, &[])).await;
    assert_ok(&o);
    assert_echoed(&f, &out, &input);
    let batch = f.sim.batch_stats();
    assert_eq!((batch.batches, batch.lines), (1, 30));
    assert_eq!(f.sim.stats().requests, 0);
    // Out of range, or without batch mode: before anything is sent.
    let zero = ["--bedrock-min-records", "0"];
    let o = output(batch_command(
        &f,
        &path,
        &f.path("z.parquet"),
        &staging,
        &zero,
        &[],
    ))
    .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--bedrock-min-records"),
        "{}",
        stderr(&o)
    );
    let online = [&["--prompt", "{{text}}"], &quota[..]].concat();
    let o = BEDROCK
        .run(&f, &path, &f.path("o.parquet"), &online, &[])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only applies with --mode batch"),
        "{}",
        stderr(&o)
    );
}

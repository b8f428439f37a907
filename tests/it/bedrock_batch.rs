//! Amazon Bedrock batch inference: the simulator's control plane
//! (CreateModelInvocationJob, GetModelInvocationJob,
//! StopModelInvocationJob) driven by boto3, with moto as S3.

use aiq::simulator::SimConfig;
use serde_json::json;

use super::object_store::{create_bucket, unique_bucket, Moto};
use super::util::*;

/// The test's AWS keys (the simulator checks the credential scope).
const ACCESS_KEY: &str = "AKIABEDROCKBATCH0001";
const SECRET_KEY: &str = "bedrock-batch-SECRET-5f2a9c";

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
        ACCESS_KEY.to_string(),
        SECRET_KEY.to_string(),
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

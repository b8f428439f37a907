//! `--endpoint bedrock`: aiq against the simulator's Bedrock Runtime
//! (`--base-url`), which checks every request's SigV4 signature as AWS
//! does: every row, the cache columns (`cachePoint` after the shared
//! prefix), typed results through a forced tool, streaming (AWS event
//! streams), embeddings (Titan, Cohere), Bedrock's errors retried or
//! stopping the job, each credentials source, and the AWS secrets kept out
//! of everything aiq writes. The boto3 test proves the simulator's
//! signature check and wire are AWS's.

use std::path::Path;
use std::process::Output;

use aiq::simulator::{SimConfig, AWS_CONTAINER_TOKEN, AWS_KEYS, AWS_WEB_IDENTITY_TOKEN};
use serde_json::json;

use super::native::{self, sum, Provider, BEDROCK};
use super::util::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_row_is_answered_with_bedrock_cache_columns() {
    let rows = native::every_row_with_cache_columns(&BEDROCK).await;
    // The prefix before the cache point is written once, then read.
    assert!(sum(&rows, "cache_write_tokens") > 0);
}

// Typed results online and streamed, repairs, and ThrottlingException
// (429), ServiceUnavailableException (503) and InternalServerException
// (500) retried (ModelTimeoutException: a unit test of provider::retry;
// the simulator has no 408 fault).
native::provider_tests!(BEDROCK, faults: "429,503,500");

#[tokio::test(flavor = "multi_thread")]
async fn streamed_text_and_usage_match_the_unstreamed() {
    let streamed = native::streamed_match_the_unstreamed(&BEDROCK).await;
    assert!(streamed
        .iter()
        .all(|r| r["cached_tokens"].as_i64() > Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_or_key_id_stops_the_job_early() {
    let f = native::a_wrong_key_stops_the_job(&BEDROCK, "wrong/Secret+Key", "403").await;
    assert!(f.sim.stats().unauthorized > 0);
    // An access key id AWS does not know.
    let (f, input, out) = job(SimConfig::default(), 40, 0).await;
    let extra = ["--prompt", "{{text}}", "--concurrency", "2"];
    let unknown = [("AWS_ACCESS_KEY_ID", "AKIDNOSUCHKEY")];
    let o = BEDROCK.run(&f, &input, &out, &extra, &unknown).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("security token included in the request is invalid"),
        "{}",
        stderr(&o)
    );
    assert!(f.sim.stats().requests < 40, "the job stopped early");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_region_no_model_or_no_api_is_found_before_anything_is_sent() {
    native::what_is_missing_is_found_before_anything_is_sent(
        &BEDROCK,
        &["AWS_REGION"],
        "completions",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_the_converse_body_with_its_cache_point() {
    let (f, input, out) = job(SimConfig::default(), 2, 0).await;
    let extra = [
        "--prompt",
        "{{text}}",
        "--system",
        "grade it",
        "--return-type",
        "INT",
        "--explain",
    ];
    let o = BEDROCK.run(&f, &input, &out, &extra, &[]).await;
    assert_ok(&o);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("Bedrock `cachePoint` block"), "{shown}");
    for key in ["\"cachePoint\"", "\"toolConfig\"", "\"toolSpec\""] {
        assert!(shown.contains(key), "{key}: {shown}");
    }
    assert_eq!(f.sim.stats().requests, 0);
}

/// `--endpoint bedrock` at the simulator with `envs` alone for
/// credentials (the region set), then `extra`.
fn bedrock_command(
    f: &Fixture,
    input: &Path,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> std::process::Command {
    let base = f.sim.base_url();
    let named = ["--base-url", &base, "--model", BEDROCK.model];
    let mut args = vec!["--prompt", "{{text}}"];
    args.extend_from_slice(extra);
    f.provider_command(
        "bedrock",
        &named,
        ("AWS_REGION", "us-east-1"),
        [input, out],
        &args,
        envs,
    )
}

async fn bedrock_run(
    f: &Fixture,
    input: &Path,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    output(bedrock_command(f, input, out, extra, envs)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_with_a_session_token_signs_every_call() {
    let (f, input, out) = job(SimConfig::default(), 5, 0).await;
    let (id, secret, token) = AWS_KEYS[1];
    let credentials = f.path("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = nope\n\n\
             [team]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\naws_session_token = {}\n",
            token.unwrap()
        ),
    )
    .unwrap();
    let config = f.path("config");
    std::fs::write(&config, "[profile team]\nregion = eu-west-1\n").unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_PROFILE", "team"),
    ];
    assert_ok(&bedrock_run(&f, &input, &out, &[], &files).await);
    assert_eq!(f.sim.stats().ok, 5);
    // ~/.aws/credentials is where the SDKs look without the variables:
    // its default profile's wrong key is refused.
    std::fs::create_dir_all(f.path(".aws")).unwrap();
    std::fs::copy(&credentials, f.path(".aws/credentials")).unwrap();
    let o = bedrock_run(&f, &input, &f.path("again.parquet"), &[], &[]).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("AWS profile default"), "{}", stderr(&o));
    // A profile asked for by name that is nowhere: before anything is sent.
    let o = bedrock_run(
        &f,
        &input,
        &f.path("x.parquet"),
        &[],
        &[("AWS_PROFILE", "nosuch")],
    )
    .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn container_credentials_are_fetched_and_used() {
    let (f, input, out) = job(SimConfig::default(), 4, 0).await;
    let token_file = f.path("token");
    std::fs::write(&token_file, AWS_CONTAINER_TOKEN).unwrap();
    let uri = format!("{}/aws/container-credentials", f.sim.base_url());
    let envs = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
    ];
    assert_ok(&bedrock_run(&f, &input, &out, &[], &envs).await);
    assert_eq!(f.sim.stats().ok, 4);
    // A token the endpoint refuses: no credentials, the job stops.
    std::fs::write(&token_file, "wrong").unwrap();
    let o = bedrock_run(&f, &input, &f.path("again.parquet"), &[], &envs).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("container credentials"),
        "{}",
        stderr(&o)
    );
    assert_eq!(f.sim.stats().ok, 4, "nothing unsigned went out");
}

#[tokio::test(flavor = "multi_thread")]
async fn web_identity_is_exchanged_at_sts_for_temporary_keys() {
    // STS is called over HTTPS only: the simulator serves TLS, its CA
    // trusted through SSL_CERT_FILE (by aiq and by the credential provider).
    let cfg = SimConfig {
        tls: true,
        ..SimConfig::default()
    };
    let (f, input, out) = job(cfg, 3, 0).await;
    let ca = f.path("ca.pem");
    std::fs::write(&ca, f.sim.ca_pem().unwrap()).unwrap();
    let token_file = f.path("web-identity");
    std::fs::write(&token_file, AWS_WEB_IDENTITY_TOKEN).unwrap();
    let sts = format!("{}/aws/sts", f.sim.base_url());
    let envs = [
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/scorer"),
        ("AWS_ENDPOINT_URL_STS", sts.as_str()),
    ];
    assert_ok(&bedrock_run(&f, &input, &out, &[], &envs).await);
    assert_eq!(f.sim.stats().ok, 3);
    // A token STS refuses stops the job, naming the role.
    std::fs::write(&token_file, "not-a-token").unwrap();
    let o = bedrock_run(&f, &input, &f.path("again.parquet"), &[], &envs).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("role/scorer"), "{}", stderr(&o));
}

/// `profiles` as the AWS config file, `AWS_PROFILE` set to `name`, no
/// credentials file: the variables that point aiq at them.
fn profile_envs(f: &Fixture, profiles: &str, name: &'static str) -> Vec<(&'static str, String)> {
    let config = given(f, "config");
    std::fs::write(&config, profiles).unwrap();
    vec![
        ("AWS_CONFIG_FILE", config.display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            f.path("none").display().to_string(),
        ),
        ("AWS_PROFILE", name.to_string()),
    ]
}

fn as_envs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_assuming_a_role_gets_its_keys_from_sts() {
    let (f, input, out) = job(SimConfig::default(), 4, 0).await;
    // The enterprise shape: a role assumed with another profile's keys
    // (the simulator's long-term key), STS at AWS_ENDPOINT_URL_STS.
    let profiles = |secret: &str| {
        format!(
            "[profile base]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n\n\
             [profile scorer]\nrole_arn = arn:aws:iam::123456789012:role/scorer\n\
             source_profile = base\nrole_session_name = nightly\n",
            AWS_KEYS[0].0
        )
    };
    let mut envs = profile_envs(&f, &profiles(TOKEN), "scorer");
    envs.push((
        "AWS_ENDPOINT_URL_STS",
        format!("{}/aws/sts", f.sim.base_url()),
    ));
    envs.push(("RUST_LOG", "debug".into()));
    let o = bedrock_run(&f, &input, &out, &["-v"], &as_envs(&envs)).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 4);
    assert_eq!(f.sim.stats().unauthorized, 0);
    assert_no_aws_secret(&everything_written(&f, &o));
    assert!(
        !everything_written(&f, &o).contains(TOKEN),
        "the source key leaked"
    );
    // STS refuses a source profile with a wrong secret: the job stops,
    // naming the role, and nothing is sent to Bedrock.
    profile_envs(&f, &profiles("wrong/secret"), "scorer");
    let o = bedrock_run(&f, &input, &f.path("again.parquet"), &[], &as_envs(&envs)).await;
    assert_exit(&o, 1, &["role/scorer", "InvalidSignatureException"]);
    assert_eq!(f.sim.stats().ok, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_process_profile_signs_every_call() {
    let (f, input, out) = job(SimConfig::default(), 3, 0).await;
    let (id, secret, token) = AWS_KEYS[1];
    let printed = json!({
        "Version": 1,
        "AccessKeyId": id,
        "SecretAccessKey": secret,
        "SessionToken": token,
        "Expiration": "2099-01-01T00:00:00Z",
    });
    let script = given(&f, "creds.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho 'signing in' >&2\ncat <<'EOF'\n{printed}\nEOF\n"),
    )
    .unwrap();
    let failing = given(&f, "fails.sh");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho 'no SSO session for alice' >&2\nexit 3\n",
    )
    .unwrap();
    let profiles = format!(
        "[profile proc]\ncredential_process = sh {}\n[profile broken]\ncredential_process = sh {}\n",
        script.display(),
        failing.display()
    );
    let envs = profile_envs(&f, &profiles, "proc");
    let o = bedrock_run(&f, &input, &out, &["-v"], &as_envs(&envs)).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 3);
    assert!(!stderr(&o).contains("signing in"), "{}", stderr(&o));
    assert_no_aws_secret(&everything_written(&f, &o));
    // A command that fails: its status and what it said (nothing it
    // printed on standard output), the job stopped before any call.
    let mut envs = envs;
    envs[2].1 = "broken".into();
    let o = bedrock_run(&f, &input, &f.path("again.parquet"), &[], &as_envs(&envs)).await;
    assert_exit(&o, 1, &["no SSO session for alice", "credential_process"]);
    assert_eq!(f.sim.stats().ok, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_errors_output_and_journal() {
    // A hostile server quotes every request's headers (Authorization,
    // X-Amz-Security-Token) in its error replies; the first calls fail.
    let cfg = SimConfig {
        echo_headers: true,
        fail_first: 3,
        ..SimConfig::default()
    };
    let (f, input, out) = job(cfg, 6, 0).await;
    let (id, secret, token) = AWS_KEYS[1];
    let token = token.unwrap();
    let envs = [
        ("AWS_ACCESS_KEY_ID", id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_SESSION_TOKEN", token),
    ];
    let o = bedrock_run(
        &f,
        &input,
        &out,
        &["--max-retries", "0", "--concurrency", "1"],
        &envs,
    )
    .await;
    let seen = everything_written(&f, &o);
    assert!(seen.contains("you sent"), "the server echoed: {seen:.2000}");
    assert_no_aws_secret(&seen);
}

/// Where a test puts the AWS files it hands aiq (holding secrets), which
/// [`everything_written`] skips.
fn given(f: &Fixture, name: &str) -> std::path::PathBuf {
    let dir = f.path("given");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// What a run printed and every file aiq wrote in the fixture's directory
/// (output, journal, status), as text.
fn everything_written(f: &Fixture, o: &Output) -> String {
    let mut seen = stderr(o) + &String::from_utf8_lossy(&o.stdout);
    let skip = f.path("given");
    for entry in files_under(f.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with(&skip))
    {
        seen.push_str(&String::from_utf8_lossy(
            &std::fs::read(entry).unwrap_or_default(),
        ));
    }
    seen
}

/// The simulator's temporary key appears nowhere in `seen`.
fn assert_no_aws_secret(seen: &str) {
    let (id, secret, token) = AWS_KEYS[1];
    for secret in [id, secret, token.unwrap_or_default()] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_metadata_credentials_by_imdsv2() {
    let (f, input, out) = job(SimConfig::default(), 4, 0).await;
    // As the SDKs take it, with a trailing slash.
    let imds = format!("{}/", f.sim.base_url());
    let envs = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let o = bedrock_run(&f, &input, &out, &["-v"], &envs).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 4);
    assert_eq!(f.sim.stats().unauthorized, 0, "the IMDSv2 token was sent");
    assert_no_aws_secret(&everything_written(&f, &o));
    // A metadata service with no credentials: the job stops, naming it.
    let none = format!("{}/nothing", f.sim.base_url());
    let envs = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", none.as_str())];
    let o = bedrock_run(&f, &input, &f.path("again.parquet"), &[], &envs).await;
    assert_exit(&o, 1, &["instance metadata"]);
    assert_eq!(f.sim.stats().ok, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_through_invoke_model_for_titan_and_cohere() {
    const TITAN: Provider = Provider {
        model: "amazon.titan-embed-text-v2:0",
        ..BEDROCK
    };
    const COHERE: Provider = Provider {
        model: "cohere.embed-english-v3",
        ..BEDROCK
    };
    for (p, batch, calls) in [(&TITAN, "1", 5), (&COHERE, "4", 2)] {
        let (f, input, out) = job(SimConfig::default(), 5, 0).await;
        let extra = [
            "--prompt",
            "{{text}}",
            "--task",
            "embeddings",
            "--batch-size",
            batch,
        ];
        assert_ok(&p.run(&f, &input, &out, &extra, &[]).await);
        let rows = read_rows(&out).1;
        assert_eq!(rows.len(), 5);
        for row in &rows {
            assert_eq!(row["result"].as_array().map(Vec::len), Some(16), "{row:?}");
        }
        assert_ne!(rows[0]["result"], rows[1]["result"]);
        assert_eq!(f.sim.stats().requests, calls, "{}", p.model);
        if p.model.starts_with("amazon.titan") {
            // Titan embeds one text a call: more is refused before any is sent.
            let more = [
                "--prompt",
                "{{text}}",
                "--task",
                "embeddings",
                "--batch-size",
                "2",
            ];
            let o = p.run(&f, &input, &f.path("two.parquet"), &more, &[]).await;
            assert_eq!(code(&o), 2, "{}", stderr(&o));
            assert!(stderr(&o).contains("at most 1"), "{}", stderr(&o));
            assert_eq!(f.sim.stats().requests, calls);
            assert!(
                rows.iter().all(|r| r["prompt_tokens"].as_i64() > Some(0)),
                "{rows:?}"
            );
        }
    }
}

/// converse (a cache write, then a read), converse_stream, a forced
/// tool, invoke_model (Titan), a wrong secret and throttling, through
/// boto3's bedrock-runtime client: its own SigV4 signer and event stream
/// parser against the simulator's.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_drives_the_simulators_bedrock_runtime() {
    let f = Fixture::new(SimConfig::default()).await;
    let args = [f.sim.base_url(), native::long_system()];
    let (id, secret, token) = AWS_KEYS[1];
    let envs = [
        ("AWS_ACCESS_KEY_ID", id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_SESSION_TOKEN", token.unwrap()),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ];
    let report = python_sdk(&f, SDK_SCRIPT, &args, &envs).await;
    assert_eq!(report["text"], json!("echo: hello bedrock"));
    assert_eq!(report["stop"], json!("end_turn"));
    native::assert_cache_written_then_read(
        &report,
        "cacheWriteInputTokens",
        "cacheReadInputTokens",
    );
    assert_eq!(report["streamed"], json!("echo: stream me"));
    assert_eq!(report["stream_stop"], json!("end_turn"));
    assert!(
        report["stream_output_tokens"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(report["tool_stop"], json!("tool_use"));
    assert!(report["tool_input"]["score"].is_i64(), "{report}");
    assert_eq!(report["embedding"], json!(16));
    assert_eq!(report["wrong_secret"], json!("InvalidSignatureException"));
    assert_eq!(report["validation"], json!("ValidationException"));
}

const SDK_SCRIPT: &str = r#"
import json, sys
import boto3
from botocore.config import Config

base, system = sys.argv[1], sys.argv[2]
cfg = Config(retries={"max_attempts": 1})
client = boto3.client("bedrock-runtime", endpoint_url=base, config=cfg)
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
out = {}
marked = [{"text": system}, {"cachePoint": {"type": "default"}}]

def ask(text):
    return client.converse(modelId=model, system=marked,
                           messages=[{"role": "user", "content": [{"text": text}]}],
                           inferenceConfig={"maxTokens": 256})

r = ask("hello bedrock")
out["text"] = r["output"]["message"]["content"][0]["text"]
out["stop"] = r["stopReason"]
out["first_usage"] = r["usage"]
out["second_usage"] = ask("hello again")["usage"]

s = client.converse_stream(modelId=model, messages=[{"role": "user", "content": [{"text": "stream me"}]}])
text = ""
for event in s["stream"]:
    if "contentBlockDelta" in event:
        text += event["contentBlockDelta"]["delta"].get("text", "")
    if "messageStop" in event:
        out["stream_stop"] = event["messageStop"]["stopReason"]
    if "metadata" in event:
        out["stream_output_tokens"] = event["metadata"]["usage"]["outputTokens"]
out["streamed"] = text

t = client.converse(
    modelId=model,
    messages=[{"role": "user", "content": [{"text": "grade this"}]}],
    toolConfig={"tools": [{"toolSpec": {"name": "grade", "description": "Grade it.",
                "inputSchema": {"json": {"type": "object", "properties": {"score": {"type": "integer"}},
                                         "required": ["score"]}}}}],
                "toolChoice": {"tool": {"name": "grade"}}})
out["tool_stop"] = t["stopReason"]
out["tool_input"] = t["output"]["message"]["content"][0]["toolUse"]["input"]

e = client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "embed me"}))
out["embedding"] = len(json.loads(e["body"].read())["embedding"])

wrong = boto3.client("bedrock-runtime", endpoint_url=base, config=cfg,
                     aws_access_key_id="AKIDAIQSIMULATOR", aws_secret_access_key="wrong",
                     aws_session_token=None)
try:
    wrong.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "x"}]}])
except client.exceptions.ClientError as err:
    out["wrong_secret"] = err.response["Error"]["Code"]
try:
    client.converse(modelId=model, messages=[{"role": "system", "content": [{"text": "x"}]}])
except Exception as err:
    out["validation"] = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
print(json.dumps(out))
"#;

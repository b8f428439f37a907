//! `--endpoint azure`: aiq against the simulator's Azure OpenAI routes
//! (`AZURE_OPENAI_ENDPOINT`) as it would talk to NAME.openai.azure.com:
//! both path styles, each way of logging in (key, Entra ID token, client
//! credentials at the token endpoint), typed results, usage with cached
//! tokens, streaming, Azure's 429s, a missing deployment and wrong
//! credentials stopping the job; and the official `openai` SDK's
//! `AzureOpenAI` client against the same routes.

use std::path::Path;
use std::process::Output;

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

/// `aiq run` against the simulator's Azure routes ([`Fixture::azure_command`]).
async fn run(f: &Fixture, input: &Path, out: &Path, extra: &[&str], envs: Envs<'_>) -> Output {
    output(f.azure_command(input, out, extra, envs)).await
}

/// The job stopped with exit `code` and said `what`.
fn assert_stopped(o: &Output, exit: i32, what: &str) {
    let err = stderr(o);
    assert_eq!(code(o), exit, "{err}");
    assert!(err.contains(what), "{err}");
}

/// The key, as the SDKs read it.
const KEY: (&str, &str) = ("AZURE_OPENAI_API_KEY", TOKEN);

/// A simulator whose only deployment is the one the tests name.
fn deployed() -> SimConfig {
    sim(|c| c.endpoints = vec!["gpt4o-dep".into()])
}

fn assert_echoed(rows: &[Map<String, Value>]) {
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row["result"],
            json!(format!("echo: row-{i} says the product is fine")),
            "{row:?}"
        );
        assert_eq!(row["finish_reason"], json!("stop"), "{row:?}");
        assert!(row["prompt_tokens"].as_i64() > Some(0), "{row:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_through_the_deployments_path_and_the_v1_api() {
    // Default (the dated deployments path), a preview version, and v1.
    for version in [None, Some("2025-04-01-preview"), Some("v1")] {
        let (f, input, out) = job(deployed(), 12, 0).await;
        let mut extra = vec!["--prompt", "{{text}}"];
        if let Some(v) = version {
            extra.extend(["--api-version", v]);
        }
        // A dry run prices the job and sends nothing.
        let prices = ["--dry-run", "--price-in", "2.5", "--price-out", "10"];
        let priced = [&extra[..], &prices].concat();
        let o = run(&f, &input, &out, &priced, &[KEY]).await;
        assert_ok(&o);
        assert!(String::from_utf8_lossy(&o.stdout).contains("cost"));
        assert_eq!(f.sim.stats().requests, 0);
        let o = run(&f, &input, &out, &extra, &[KEY]).await;
        assert_ok(&o);
        assert_echoed(&read_rows(&out).1);
        let stats = f.sim.stats();
        assert_eq!((stats.ok, stats.not_found), (12, 0), "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_through_both_path_styles() {
    for version in ["2024-10-21", "v1"] {
        let (f, input, out) = job(deployed(), 4, 0).await;
        let extra = [
            "--task",
            "embeddings",
            "--prompt",
            "{{text}}",
            "--api-version",
            version,
        ];
        let rows = ok_rows(&run(&f, &input, &out, &extra, &[KEY]).await, &out);
        assert_eq!(rows.len(), 4);
        for row in &rows {
            let v = row["result"].as_array().expect("a vector");
            assert_eq!(v.len(), 16, "{version}: {row:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_results_usage_and_cached_tokens_online_and_streamed() {
    let system = "You grade short product reviews carefully and consistently. ".repeat(100);
    for stream in [false, true] {
        let (f, input, out) = job(deployed(), 6, 0).await;
        let mut extra = vec![
            "--prompt",
            "{{text}}",
            "--system",
            &system,
            "--return-type",
            "STRUCT<a: INT, b: STRING>",
            "--concurrency",
            "1",
        ];
        if stream {
            extra.push("--stream");
        }
        let rows = ok_rows(&run(&f, &input, &out, &extra, &[KEY]).await, &out);
        for row in &rows {
            assert_eq!(row["error_message"], Value::Null, "{stream}: {row:?}");
            assert!(row["result"]["a"].is_i64(), "{stream}: {row:?}");
            assert!(row["completion_tokens"].as_i64() > Some(0), "{row:?}");
        }
        // The long system prompt is cached after the first row, and the
        // usage (streamed too: stream_options.include_usage) says so.
        let cached: i64 = rows
            .iter()
            .map(|r| r["cached_tokens"].as_i64().unwrap_or(0))
            .sum();
        let stats = f.sim.stats();
        assert!(cached > 0, "stream {stream}: {rows:?}");
        assert_eq!(cached as u64, stats.cached_tokens, "stream {stream}");
        let prompt: i64 = rows
            .iter()
            .map(|r| r["prompt_tokens"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(prompt as u64, stats.prompt_tokens, "stream {stream}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entra_token_from_the_environment_or_from_client_credentials() {
    let (f, input, out) = job(deployed(), 8, 0).await;
    let extra = ["--prompt", "{{text}}"];
    let token = [("AZURE_OPENAI_AD_TOKEN", TOKEN)];
    assert_ok(&run(&f, &input, &out, &extra, &token).await);
    assert_echoed(&read_rows(&out).1);

    // A service principal: one token for the whole job, from the tenant's
    // token endpoint at AZURE_AUTHORITY_HOST.
    let base = f.sim.base_url();
    let client = [
        ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
        ("AZURE_CLIENT_ID", aiq::simulator::CLIENT_ID),
        ("AZURE_CLIENT_SECRET", aiq::simulator::CLIENT_SECRET),
        ("AZURE_AUTHORITY_HOST", base.as_str()),
    ];
    let out2 = f.path("sp.parquet");
    assert_ok(&run(&f, &input, &out2, &extra, &client).await);
    assert_echoed(&read_rows(&out2).1);
    let stats = f.sim.stats();
    assert_eq!(stats.oauth_tokens, 1);
    assert_eq!((stats.ok, stats.unauthorized), (16, 0));

    // A wrong secret stops the job before any model call, and is not shown.
    let wrong_secret = "wr0ng-Secret~value";
    let mut bad = client;
    bad[2] = ("AZURE_CLIENT_SECRET", wrong_secret);
    let o = run(&f, &input, &f.path("bad.parquet"), &extra, &bad).await;
    assert_stopped(&o, 1, "invalid_client");
    let err = stderr(&o);
    assert!(err.contains("oauth2/v2.0/token"), "{err}");
    assert!(!err.contains(wrong_secret), "{err}");
    assert_eq!(f.sim.stats().requests, 16);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_credentials_and_settings_stop_the_job_early() {
    // A key the service refuses: exit 1, naming the variable, not the key,
    // even from a server that quotes the request's headers.
    let cfg = SimConfig {
        echo_headers: true,
        ..deployed()
    };
    let (f, input, out) = job(cfg, 20, 0).await;
    let extra = ["--prompt", "{{text}}", "--concurrency", "2"];
    let wrong = "wrong-azure-key-123";
    let o = run(&f, &input, &out, &extra, &[("AZURE_OPENAI_API_KEY", wrong)]).await;
    assert_stopped(&o, 1, "credentials sent: the key in AZURE_OPENAI_API_KEY");
    assert!(!stderr(&o).contains(wrong), "{}", stderr(&o));
    assert!(f.sim.stats().unauthorized <= 2);

    // Nothing sent for the rest: exit 2, saying what to set.
    let none = run(&f, &input, &out, &extra, &[]).await;
    assert_stopped(&none, 2, "AZURE_OPENAI_AD_TOKEN");
    let typo = [&extra[..], &["--api-version", "2024-1-21"]].concat();
    let o = run(&f, &input, &out, &typo, &[KEY]).await;
    assert_stopped(&o, 2, "--api-version `2024-1-21`");
    let mut no_endpoint = f.command(&run_io(&input, &out, "azure"), &[KEY]);
    no_endpoint.args(["-q", "--model", "gpt4o-dep", "--prompt", "{{text}}"]);
    assert_stopped(&output(no_endpoint).await, 2, "AZURE_OPENAI_ENDPOINT");
    let url = f.openai_url();
    let elsewhere = [&run_io(&input, &out, &url)[..], &["--api-version", "v1"]].concat();
    assert_stopped(
        &f.aiq(&elsewhere, &[]).await,
        2,
        "--api-version applies to --endpoint azure",
    );
    assert!(f.sim.stats().unauthorized <= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_deployment_stops_the_job() {
    let cfg = sim(|c| c.endpoints = vec!["another".into()]);
    let (f, input, out) = job(cfg, 10, 0).await;
    let o = run(&f, &input, &out, &["--prompt", "{{text}}"], &[KEY]).await;
    assert_stopped(&o, 1, "deployment for this resource does not exist");
    assert_eq!(f.sim.stats().ok, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_429s_with_retry_after_ms_are_retried_until_every_row_is_answered() {
    let cfg = SimConfig {
        fault_rate: 0.3,
        faults: "429,503".into(),
        ..deployed()
    };
    let (f, input, out) = job(cfg, 30, 0).await;
    assert_ok(&run(&f, &input, &out, &["--prompt", "{{text}}"], &[KEY]).await);
    assert_echoed(&read_rows(&out).1);
    let stats = f.sim.stats();
    assert!(stats.faults_injected > 0);
    assert_eq!(stats.ok, 30);
}

/// Batch mode, polled every 20 ms, at most 10 requests a file.
const BATCH: [&str; 6] = [
    "--mode",
    "batch",
    "--poll-secs",
    "0.02",
    "--batch-max-requests",
    "10",
];

#[tokio::test(flavor = "multi_thread")]
async fn batch_mode_on_both_path_styles_waits_out_the_token_cap_and_resubmits_failures() {
    for version in ["2024-10-21", "v1"] {
        // One 10-line file (~40 tokens a line) fits under the enqueued
        // token cap, two do not; a tenth of the lines fail.
        let cfg = SimConfig {
            batch_token_cap: Some(600),
            batch_turnaround_ms: 50,
            batch_fail_rate: 0.1,
            seed: 7,
            ..deployed()
        };
        let (f, input, out) = job(cfg, 30, 0).await;
        let extra = [
            &BATCH[..],
            &["--prompt", "{{text}}", "--api-version", version],
        ]
        .concat();
        let o = run(&f, &input, &out, &extra, &[KEY]).await;
        assert_ok(&o);
        assert_echoed(&read_rows(&out).1);
        let batches = f.sim.batch_stats();
        assert!(batches.token_capped >= 2, "{version}: {batches:?}");
        assert!(batches.lines_failed > 0, "{version}: {batches:?}");
        // Every row answered by a batch, none online.
        let stats = f.sim.stats();
        assert_eq!(stats.requests, 0, "{version}");
        assert_eq!(stats.ok_by_prompt.len(), 30, "{version}");
        assert!(stats.ok_by_prompt.values().all(|n| *n == 1), "{version}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_batch_job_is_resumed_without_a_second_batch() {
    let cfg = SimConfig {
        batch_turnaround_ms: 1_500,
        ..deployed()
    };
    let (f, input, out) = job(cfg, 8, 0).await;
    let extra = [&BATCH[..], &["--prompt", "{{text}}"]].concat();
    let command = || {
        let mut cmd = f.azure_command(&input, &out, &extra, &[KEY]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let journal = f.path("out.parquet.aiq/batches.jsonl");
    // `submitting` then `created`: the batch runs, its id is journaled.
    let mut child = spawn_until_journaled(&mut command(), &journal, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ok(&output(command()).await);
    assert_echoed(&read_rows(&out).1);
    assert_eq!(f.sim.batch_stats().batches, 1, "polled, never resubmitted");
}

/// The official `openai` SDK's `AzureOpenAI` client (chat, streaming,
/// typed output, embeddings; api-key, Entra token and token provider
/// fetching from the simulator's token endpoint) and the plain `OpenAI`
/// client on the v1 API, against the simulator; then Azure's errors as the
/// SDK raises them.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdks_azure_client_drives_the_simulators_azure_routes() {
    let f = Fixture::new(deployed()).await;
    let args = [f.sim.base_url(), TOKEN.to_string()];
    let report = python_sdk(&f, SDK_SCRIPT, &args, &[]).await;
    assert_eq!(report["chat"], json!("echo: hello azure"));
    assert_eq!(report["model"], json!("gpt4o-dep"));
    assert!(report["prompt_tokens"].as_i64() > Some(0), "{report}");
    assert_eq!(report["streamed"], json!("echo: hello azure"));
    assert!(report["streamed_usage"].as_i64() > Some(0), "{report}");
    assert!(report["typed"]["a"].is_i64(), "{report}");
    assert_eq!(report["embedding_dims"], json!([16, 16]));
    assert_eq!(report["ad_token"], json!("echo: with a token"));
    assert_eq!(report["token_provider"], json!("echo: via entra"));
    assert_eq!(report["v1"], json!("echo: on v1"));
    assert_eq!(report["wrong_key"], json!([401, "401"]));
    assert_eq!(report["no_deployment"], json!([404, "DeploymentNotFound"]));
    assert_eq!(report["bad_version"], json!([400, "BadRequest"]));
    assert_eq!(report["bad_secret"], json!([401, "invalid_client"]));
    assert_eq!(report["batch"], json!(["completed", "echo: in a batch"]));
    assert_eq!(report["batch_v1"], json!(["completed", "echo: in a batch"]));
    assert_eq!(f.sim.batch_stats().batches, 2);
    let stats = f.sim.stats();
    assert_eq!(stats.oauth_tokens, 1);
    assert!(stats.unauthorized >= 1);
}

const SDK_SCRIPT: &str = r#"
import json, sys, time, urllib.error, urllib.parse, urllib.request
import openai
from openai import AzureOpenAI, OpenAI

base, key = sys.argv[1], sys.argv[2]
out = {}
client = AzureOpenAI(azure_endpoint=base, api_key=key, api_version="2024-10-21", max_retries=0)

r = client.chat.completions.create(model="gpt4o-dep", messages=[{"role": "user", "content": "hello azure"}])
out["chat"] = r.choices[0].message.content
out["model"] = r.model
out["prompt_tokens"] = r.usage.prompt_tokens

text, usage = "", None
for chunk in client.chat.completions.create(
    model="gpt4o-dep", messages=[{"role": "user", "content": "hello azure"}],
    stream=True, stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.total_tokens
out["streamed"], out["streamed_usage"] = text, usage

schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
          "required": ["a", "b"], "additionalProperties": False}
r = client.chat.completions.create(
    model="gpt4o-dep", messages=[{"role": "user", "content": "typed"}],
    response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}},
)
out["typed"] = json.loads(r.choices[0].message.content)

e = client.embeddings.create(model="gpt4o-dep", input=["one", "two"])
out["embedding_dims"] = [len(d.embedding) for d in e.data]

with_token = AzureOpenAI(azure_endpoint=base, azure_ad_token=key, api_version="2024-10-21", max_retries=0)
r = with_token.chat.completions.create(model="gpt4o-dep", messages=[{"role": "user", "content": "with a token"}])
out["ad_token"] = r.choices[0].message.content

def entra(secret="sim-secret"):
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": "sim-client", "client_secret": secret,
        "scope": "https://cognitiveservices.azure.com/.default",
    }).encode()
    with urllib.request.urlopen(base + "/my-tenant/oauth2/v2.0/token", form) as reply:
        return json.load(reply)["access_token"]

provided = AzureOpenAI(azure_endpoint=base, azure_ad_token_provider=entra, api_version="2024-10-21", max_retries=0)
r = provided.chat.completions.create(model="gpt4o-dep", messages=[{"role": "user", "content": "via entra"}])
out["token_provider"] = r.choices[0].message.content

v1 = OpenAI(base_url=base + "/openai/v1/", api_key=key, max_retries=0)
r = v1.chat.completions.create(model="gpt4o-dep", messages=[{"role": "user", "content": "on v1"}])
out["v1"] = r.choices[0].message.content

def refused(make):
    try:
        make()
    except openai.APIStatusError as e:
        return [e.status_code, e.body.get("code") if isinstance(e.body, dict) else None]
    return None

wrong = AzureOpenAI(azure_endpoint=base, api_key="wrong", api_version="2024-10-21", max_retries=0)
out["wrong_key"] = refused(lambda: wrong.chat.completions.create(model="gpt4o-dep", messages=[{"role": "user", "content": "x"}]))
out["no_deployment"] = refused(lambda: client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]))
old = AzureOpenAI(azure_endpoint=base, api_key=key, api_version="someday", max_retries=0)
out["bad_version"] = refused(lambda: old.chat.completions.create(model="gpt4o-dep", messages=[{"role": "user", "content": "x"}]))
try:
    entra("wrong")
    out["bad_secret"] = None
except urllib.error.HTTPError as e:
    out["bad_secret"] = [e.code, json.load(e)["error"]]

def batch(client, url):
    line = {"custom_id": "r1", "method": "POST", "url": url,
            "body": {"model": "gpt4o-dep", "messages": [{"role": "user", "content": "in a batch"}]}}
    f = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")
    for _ in range(200):
        b = client.batches.retrieve(b.id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.02)
    listed = [x.id for x in client.batches.list(limit=10)]
    assert b.id in listed, listed
    text = client.files.content(b.output_file_id).text
    reply = json.loads(text.splitlines()[0])["response"]["body"]
    return [b.status, reply["choices"][0]["message"]["content"]]

out["batch"] = batch(client, "/chat/completions")
out["batch_v1"] = batch(v1, "/chat/completions")

print(json.dumps(out))
"#;

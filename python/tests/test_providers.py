"""The native providers from Python: the same settings as the CLI's
(`endpoint`, `base_url`, `model`, the provider's key variables), against
the built-in simulator, which speaks each provider's wire."""

import socket

import pandas as pd
import pytest

import aiq

# The key the simulator accepts, as tests/it/native.rs gives it.
TOKEN = "aiq-simulator-token"


# Bedrock signs with AWS keys: the simulator's long-term key id, whose
# secret is the simulator's token (src/simulator/bedrock), and a region.
BEDROCK_ENV = {"AWS_ACCESS_KEY_ID": "AKIDAIQSIMULATOR", "AWS_REGION": "us-east-1"}


@pytest.mark.parametrize(
    "endpoint, model, key_var, env",
    [
        ("anthropic", "claude-haiku-4-5", "ANTHROPIC_API_KEY", {}),
        ("gemini", "gemini-2.5-flash", "GEMINI_API_KEY", {}),
        ("bedrock", "us.anthropic.claude-3-5-haiku-20241022-v1:0", "AWS_SECRET_ACCESS_KEY", BEDROCK_ENV),
        # Azure OpenAI: the model is the deployment; the key goes as `api-key`.
        ("azure", "gpt4o-dep", "AZURE_OPENAI_API_KEY", {}),
    ],
)
def test_a_native_provider_classifies_a_frame(monkeypatch, endpoint, model, key_var, env):
    monkeypatch.setenv(key_var, TOKEN)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    frame = pd.DataFrame({"text": ["Great phone, poor battery.", "Broke in a week."]})
    with aiq.Simulator(token=TOKEN) as sim:
        base = sim.url.removesuffix("/v1")
        out = aiq.run(
            frame,
            endpoint=endpoint,
            base_url=base,
            model=model,
            function="ai_classify",
            prompt="{{text}}",
            labels="good,bad",
            quiet=True,
        )
        served = sim.stats()
    assert isinstance(out, pd.DataFrame)
    assert out["error_message"].isna().all()
    assert set(out["result"]) <= {"good", "bad"}
    assert (out["prompt_tokens"] > 0).all()
    assert served, "the simulator counted the calls"


def test_a_wrong_key_stops_the_job_naming_the_variable(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "not-the-key")
    frame = pd.DataFrame({"text": ["a", "b"]})
    # The simulator checks a key only when given one.
    with aiq.Simulator(token=TOKEN) as sim:
        with pytest.raises(aiq.JobError) as err:
            aiq.run(
                frame,
                endpoint="anthropic",
                base_url=sim.url.removesuffix("/v1"),
                model="claude-haiku-4-5",
                prompt="{{text}}",
                quiet=True,
            )
    assert "ANTHROPIC_API_KEY" in str(err.value)
    assert "not-the-key" not in str(err.value)


def test_bedrock_batch_inference_from_python(monkeypatch):
    # Bedrock batch jobs read and write S3: moto plays it, the simulator
    # plays Bedrock (runtime and control plane) and reads its files there.
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        moto_url = f"http://127.0.0.1:{port}"
        env = {
            **BEDROCK_ENV,
            "AWS_SECRET_ACCESS_KEY": TOKEN,
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ALLOW_HTTP": "true",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
        s3.create_bucket(Bucket="aiq-py-batch")
        # Bedrock's minimum records per job (100 by default): one job.
        frame = pd.DataFrame({"text": [f"review {i}" for i in range(100)]})
        frame.to_parquet("in.parquet")
        settings = dict(
            endpoint="bedrock",
            model="us.anthropic.claude-3-5-haiku-20241022-v1:0",
            prompt="{{text}}",
            mode="batch",
            batch_staging="s3://aiq-py-batch/staging",
            bedrock_role_arn="arn:aws:iam::123456789012:role/BedrockBatch",
            poll_secs=0.02,
            quiet=True,
        )
        with aiq.Simulator(token=TOKEN, bedrock_s3_endpoint=moto_url) as sim:
            base = sim.url.removesuffix("/v1")
            monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", base)
            summary = aiq.run("in.parquet", output="out.parquet", base_url=base, **settings)
            # Batch mode reads its input twice and journals by the output:
            # rows handed in are refused before anything is sent.
            with pytest.raises(aiq.ConfigError, match="input's path"):
                aiq.run(frame, output="again.parquet", base_url=base, **settings)
            online = sim.stats()["requests"]
        staged = s3.list_objects_v2(Bucket="aiq-py-batch", Prefix="staging/input/")
    finally:
        moto.stop()
    assert summary["ok"] == 100, summary
    out = pd.read_parquet("out.parquet")
    assert out["error_message"].isna().all()
    assert list(out["result"]) == [f"echo: review {i}" for i in range(100)]
    assert (out["prompt_tokens"] > 0).all()
    assert online == 0, "every row went through the batch job"
    assert staged["KeyCount"] == 1


def test_azure_batch_from_python(monkeypatch):
    # Azure OpenAI's Batch API (Files + Batches on the deployment), from
    # Python as from the CLI: every row answered by a batch, none online.
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TOKEN)
    pd.DataFrame({"text": [f"review {i}" for i in range(20)]}).to_parquet("in.parquet")
    with aiq.Simulator(token=TOKEN, endpoints="gpt4o-dep", batch_turnaround_ms=50) as sim:
        summary = aiq.run(
            "in.parquet",
            output="out.parquet",
            endpoint="azure",
            base_url=sim.url.removesuffix("/v1"),
            model="gpt4o-dep",
            prompt="{{text}}",
            mode="batch",
            poll_secs=0.02,
            quiet=True,
        )
        online = sim.stats()["requests"]
    assert summary["ok"] == 20, summary
    out = pd.read_parquet("out.parquet")
    assert out["error_message"].isna().all()
    assert list(out["result"]) == [f"echo: review {i}" for i in range(20)]
    assert online == 0, "every row went through the batch"

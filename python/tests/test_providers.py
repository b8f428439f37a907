"""The native providers from Python: the same settings as the CLI's
(`endpoint`, `base_url`, `model`, the provider's key variables), against
the built-in simulator, which speaks each provider's wire."""

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

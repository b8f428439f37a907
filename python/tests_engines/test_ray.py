"""aiq.ray.score on a one-CPU local Ray, against the built-in simulator:
exact results per row over several blocks, one aiq run per actor across
batches, a job-wide rpm, and the call journal across runs. One Ray
instance serves the whole module (~5 s to start)."""

import os

import pyarrow as pa
import pytest

import aiq
import aiq.ray

import ray  # tests/requirements-engines.txt

ROWS = 30


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    # Loopback only, and no usage report sent home.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def dataset(rows=ROWS, blocks=3):
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": [f"review {i}" for i in range(rows)]})
    return ray.data.from_arrow(table).repartition(blocks)


def check(ds, rows=ROWS):
    got = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in got] == list(range(rows))
    for r in got:
        assert r["result"] == f"echo: {r['text']}", r
        assert r["error_message"] is None
    return got


def test_exact_results_per_row(tmp_path):
    with aiq.Simulator() as sim:
        # 3 blocks of 10 rows in batches of at most 8: 6 batches.
        out = aiq.ray.score(dataset(), endpoint=sim.url, model="m", prompt="{{text}}", batch_rows=8)
        check(out)
        assert sim.stats()["ok"] == ROWS


def test_one_run_per_actor_and_the_journal_answers_a_second_run(tmp_path):
    journal = tmp_path / "calls"
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="{{text}}", journal=str(journal), batch_rows=8, workers=1)
        check(aiq.ray.score(dataset(), **settings))
        first = sim.stats()["requests"]
        assert first == ROWS
        # One actor scored all 6 batches in one aiq run (one journal file;
        # a run per batch would leave one file each and start its pace
        # and 429 adaptation cold every batch).
        assert len(os.listdir(journal)) == 1
        again = check(aiq.ray.score(dataset(), **settings))
        assert sim.stats()["requests"] == first
    assert all(r["attempts"] == 0 for r in again)


def test_a_job_wide_rpm_holds():
    # Two actors at once against a server allowing 1200/min with a
    # one-second burst: each sends 600/min (tests_engines/test_spark.py
    # shows the unsplit rate is refused at this limit).
    rows = 120
    with aiq.Simulator(rpm=1200, burst_seconds=1) as sim:
        out = aiq.ray.score(dataset(rows, 4), endpoint=sim.url, model="m", prompt="{{text}}", rpm=1200, workers=2, batch_rows=8)
        check(out, rows)
        stats = sim.stats()
    assert stats["rate_limited"] <= 0.05 * stats["requests"], stats


def test_a_template_naming_a_missing_column_fails_on_the_driver():
    ds = ray.data.from_arrow(pa.table({"text": ["a", "b"]}))
    with pytest.raises(aiq.ConfigError, match="nope"):
        aiq.ray.score(ds, endpoint="http://127.0.0.1:9/v1", model="m", prompt="{{nope}}")


def test_credentials_set_after_ray_init(monkeypatch):
    # Ray's workers took their environment at ray.init(): variables set
    # later in the driver never reach them. Refused on the driver, before
    # any actor starts, unless the driver hands its credentials over.
    endpoint = "databricks-meta-llama-3-3-70b-instruct"
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", "/nonexistent/databrickscfg")
    with pytest.raises(aiq.ConfigError, match="no Databricks host"):
        aiq.ray.score(dataset(), endpoint=endpoint, prompt="{{text}}")
    with aiq.Simulator() as sim:
        monkeypatch.setenv("DATABRICKS_HOST", sim.url.removesuffix("/v1"))
        monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-driver-only")
        with pytest.raises(aiq.ConfigError, match="DATABRICKS_HOST, DATABRICKS_TOKEN are set in this process.*pass_credentials=True"):
            aiq.ray.score(dataset(), endpoint=endpoint, prompt="{{text}}")
        assert sim.stats()["requests"] == 0
        check(aiq.ray.score(dataset(), endpoint=endpoint, prompt="{{text}}", batch_rows=8, pass_credentials=True))
        assert sim.stats()["ok"] == ROWS


def test_straight_into_a_delta_table_a_task_retried_after_its_commit_lands_once(tmp_path):
    import deltalake
    import polars as pl

    table = str(tmp_path / "scores")
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="{{text}}", output=table, output_format="delta")
        # Block 1's worker dies after its commit (once): Ray runs the task
        # again, on a worker with none of its state, and the table's
        # transaction says its rows are in. Append mode: nothing twice.
        marker = tmp_path / "block-1-died"
        summary = aiq.ray.score(dataset(blocks=3), workers=2, _inject_failure=(1, str(marker)), **settings)
        assert marker.exists(), "the worker died once"
        assert sim.stats()["ok"] == ROWS, "the retry sent nothing"
        assert sorted(t["partition"] for t in summary["tasks"]) == [0, 1, 2]
        assert summary["rows"] == ROWS
        # Another call is other work: its rows are appended.
        aiq.ray.score(dataset(rows=5, blocks=1), **settings)
        assert sim.stats()["ok"] == ROWS + 5
    got = pl.read_delta(table).sort("id")
    assert got["id"].to_list() == sorted(list(range(ROWS)) + list(range(5))), "every row once per call"
    for r in got.iter_rows(named=True):
        assert r["result"] == f"echo: {r['text']}", r
    assert got.schema["id"] == pl.Int64 and got.schema["prompt_tokens"] == pl.Int64
    assert len(deltalake.DeltaTable(table).history()) == 4, "one commit per block"
    with pytest.raises(aiq.ConfigError, match="overwrite"):
        aiq.ray.score(dataset(), endpoint="http://127.0.0.1:9/v1", model="m", prompt="{{text}}", output=table,
                      output_format="delta", write_mode="overwrite")

"""aiq.sql, aiq.Simulator and the `aiq` console command."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aiq

AIQ = Path(sys.executable).parent / "aiq"


def test_sql_over_in_memory_and_file_tables(reviews):
    pq.write_table(reviews, "reviews.parquet")
    out = aiq.sql(
        "SELECT t.id, ai_query('simulator', t.text) AS summary, f.text AS same "
        "FROM t JOIN f ON t.id = f.id ORDER BY t.id",
        tables={"t": reviews.to_pandas(), "f": "reviews.parquet"},
    )
    assert isinstance(out, pa.Table)
    assert out["id"].to_pylist() == list(range(reviews.num_rows))
    assert all(isinstance(s, str) and s for s in out["summary"].to_pylist())


def test_sql_writes_output_and_checks_settings(reviews):
    assert aiq.sql("SELECT id FROM t", tables={"t": reviews}, output="q.parquet") is None
    assert pq.read_table("q.parquet")["id"].to_pylist() == list(range(reviews.num_rows))
    with pytest.raises(aiq.ConfigError, match="prompt"):
        aiq.sql("SELECT 1", prompt="x")
    with pytest.raises(aiq.ConfigError, match="SQL"):
        aiq.sql("SELEKT 1")


def test_simulator_rejects_bad_knobs():
    with pytest.raises(aiq.ConfigError):
        aiq.Simulator(latency_ms="soon")


def test_console_command_runs_the_example_job(repo, tmp_path):
    out = tmp_path / "summaries.parquet"
    done = subprocess.run(
        [AIQ, "run", "jobs/review-summaries.toml", "--output", out, "--quiet"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert pq.read_metadata(out).num_rows == 200


def test_console_command_exit_codes(repo):
    def code(*args):
        return subprocess.run([AIQ, *args], cwd=repo, capture_output=True, text=True)

    assert code("--version").returncode == 0
    help_ = code("sql", "--help")
    assert help_.returncode == 0 and "ai_query" in help_.stdout
    bad = code("run", "--input", "examples/reviews.jsonl", "--output", "x.parquet",
               "--endpoint", "simulator", "--prompt", "{{txet}}")
    assert bad.returncode == 2 and "txet" in bad.stderr
    assert code("run", "--no-such-flag").returncode == 2

"""aiq.sql, aiq.Simulator and the `aiq` console command."""

import json
import re
import signal
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


def test_console_command_has_every_subcommand(tmp_path):
    help_ = subprocess.run([AIQ, "--help"], capture_output=True, text=True, check=True).stdout
    commands = re.findall(r"^  (\w+)  ", help_.split("Commands:", 1)[1].split("Options:", 1)[0], re.M)
    assert set(commands) == {"run", "simulate", "bench", "sql", "help"}, help_
    for command in set(commands) - {"help"}:
        done = subprocess.run([AIQ, command, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "Usage: aiq" in done.stdout, (command, done.stderr)

    # `aiq simulate` serves until Ctrl-C; `aiq bench` measures it.
    sim = subprocess.Popen([AIQ, "simulate", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = sim.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        bench = subprocess.run(
            [AIQ, "bench", "-q", "--endpoint", url + "/v1", "--model", "m",
             "--requests", "5", "--json", "-"],
            capture_output=True, text=True, timeout=120,
        )
        assert bench.returncode == 0, bench.stderr
        assert json.loads(bench.stdout)["steps"][0]["requests"] == 5
        sim.send_signal(signal.SIGINT)
        assert sim.wait(timeout=30) == 0
    finally:
        sim.kill()

    # `aiq sql` over a file, written to Parquet.
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "t.parquet")
    done = subprocess.run(
        [AIQ, "sql", "-q", "SELECT text, ai_query('simulator', text) AS s FROM t",
         "--table", "t=t.parquet", "--output", "q.parquet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "q.parquet")["text"].to_pylist() == ["a", "b"]

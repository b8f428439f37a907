"""aiq.spark.score on a local Spark (two cores, UI off), against the
built-in simulator: exact results per row over several partitions, the
declared schema, string kinds, a job-wide rate limit, the call journal
across runs and across a task retried after a failure mid-partition.

One Spark session serves the whole module (starting one takes ~10 s)."""

import os
import sys

import pyarrow as pa
import pytest

import aiq
import aiq.spark

from pyspark.sql import SparkSession  # tests/requirements-engines.txt
from pyspark.sql import functions as F
from pyspark.sql import types as T

ROWS = 40
PARTITIONS = 4
SCHEMA = T.StructType([T.StructField("id", T.LongType()), T.StructField("text", T.StringType())])


@pytest.fixture(scope="module")
def spark():
    # The workers run this interpreter (the venv with aiq), not the
    # `python3` on PATH (read when the context starts).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    # local[2, 4]: two cores, and up to 4 attempts per task so a failed
    # task is retried as on a cluster (plain local[2] never retries).
    session = (
        SparkSession.builder.master("local[2, 4]")
        .appName("aiq-tests")
        .config("spark.ui.enabled", "false")
        # Loopback only, whatever the machine's host name resolves to.
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        # Small Arrow batches: a partition reaches aiq as several.
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
        .getOrCreate()
    )
    yield session
    session.stop()


def frame(spark, rows=ROWS):
    """`rows` reviews (every ninth text null) in PARTITIONS partitions."""
    data = [(i, f"review number {i}" if i % 9 != 8 else None) for i in range(rows)]
    return spark.createDataFrame(data, SCHEMA).repartition(PARTITIONS, "id")


@pytest.fixture
def reviews(spark):
    return frame(spark)


def sent(rows=ROWS):
    """Rows that need a call (a null text is not sent)."""
    return sum(1 for i in range(rows) if i % 9 != 8)


def expected(text):
    return None if text is None else f"echo: Summarize: {text}"


def check(out, rows=ROWS):
    """Every row once, with its own answer; the collected rows."""
    got = sorted(out.collect(), key=lambda r: r["id"])
    assert [r["id"] for r in got] == list(range(rows))
    for r in got:
        assert r["result"] == expected(r["text"]), r
        assert r["error_message"] is None, r
    return got


def test_exact_results_per_row_and_the_declared_schema(spark, reviews):
    with aiq.Simulator() as sim:
        out = aiq.spark.score(reviews, endpoint=sim.url, model="m", prompt="Summarize: {{text}}")
        names = out.schema.names
        assert names[:2] == ["id", "text"]
        assert names[2:4] == ["result", "error_message"]
        assert out.schema["result"].dataType == T.StringType()
        assert out.schema["prompt_tokens"].dataType == T.LongType()
        assert out.schema["attempts"].dataType == T.IntegerType()
        assert out.schema["maybe_billed_twice"].dataType == T.BooleanType()
        # One action (each action runs the scoring again: a second one
        # would pay again without a journal).
        got = check(out.withColumn("partition", F.spark_partition_id()))
        # The rows were scored in every partition, not gathered into one.
        assert {r["partition"] for r in got} == set(range(PARTITIONS))
        assert sim.stats()["ok"] == sent()


def test_a_template_naming_a_missing_column_fails_on_the_driver(reviews):
    # Before any task starts: mapInArrow is not even planned.
    with pytest.raises(aiq.ConfigError, match="nope"):
        aiq.spark.score(reviews, endpoint="http://127.0.0.1:9/v1", model="m", prompt="{{nope}}")


def test_credentials_set_after_the_session_started(reviews, monkeypatch):
    # The executors' Python workers take their environment from Spark's,
    # set when the session started: variables set later in the driver
    # never reach them. Refused on the driver, before any task, unless the
    # driver hands its credentials over.
    endpoint = "databricks-meta-llama-3-3-70b-instruct"
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", "/nonexistent/databrickscfg")
    with pytest.raises(aiq.ConfigError, match="no Databricks host"):
        aiq.spark.score(reviews, endpoint=endpoint, prompt="Summarize: {{text}}")
    with aiq.Simulator() as sim:
        monkeypatch.setenv("DATABRICKS_HOST", sim.url.removesuffix("/v1"))
        monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-driver-only")
        with pytest.raises(aiq.ConfigError, match="DATABRICKS_HOST, DATABRICKS_TOKEN are set in this process.*pass_credentials=True"):
            aiq.spark.score(reviews, endpoint=endpoint, prompt="Summarize: {{text}}")
        assert sim.stats()["requests"] == 0
        out = aiq.spark.score(reviews, endpoint=endpoint, prompt="Summarize: {{text}}", pass_credentials=True)
        check(out)
        assert sim.stats()["ok"] == sent()


def test_typed_results_and_large_strings(spark, reviews):
    spark.conf.set("spark.sql.execution.arrow.useLargeVarTypes", "true")
    try:
        with aiq.Simulator() as sim:
            out = aiq.spark.score(
                reviews, endpoint=sim.url, model="m", prompt="{{text}}", return_type="STRUCT<score: INT, tags: ARRAY<STRING>>"
            )
            assert out.schema["result"].dataType == T.StructType(
                [T.StructField("score", T.IntegerType()), T.StructField("tags", T.ArrayType(T.StringType()))]
            )
            rows = out.collect()
            assert len(rows) == ROWS
            for r in rows:
                if r["text"] is None:
                    assert r["result"] is None
                else:
                    assert r["error_message"] is None and isinstance(r["result"]["score"], int), r
    finally:
        spark.conf.unset("spark.sql.execution.arrow.useLargeVarTypes")


def test_string_views_are_read_and_the_output_is_cast_to_the_declared_types():
    # What a task does with Arrow string views (no Spark version here hands
    # them over yet; pyarrow and Arrow-native engines do): read as strings,
    # and the output cast to the declared schema, here with large strings.
    schema = pa.schema([("id", pa.int64()), ("text", pa.string_view())])
    batches = [
        pa.record_batch([pa.array([i, i + 1], pa.int64()), pa.array([f"a{i}", f"b{i}"], pa.string_view())], schema=schema)
        for i in (0, 2)
    ]
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="{{text}}", workers=1)
        declared = aiq.spark._output_schema(aiq.spark._plain(schema), settings)
        declared = pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f for f in declared])
        out = list(aiq.spark._score_partition(iter(batches), settings, None, declared))
    assert all(b.schema.equals(declared) for b in out)
    table = pa.Table.from_batches(out)
    assert table.column("result").to_pylist() == ["echo: a0", "echo: b0", "echo: a2", "echo: b2"]


def test_a_job_wide_rpm_holds(spark):
    # 4 partitions, 2 tasks at a time, against a server allowing 1200/min
    # with a one-second burst: each task sends 600/min, so together they
    # stay within the limit. The control run gives each task the whole
    # rpm (workers=1): the server then refuses some, so the limit binds
    # and the split is what keeps the first run clean.
    rows = 120
    df = frame(spark, rows)
    settings = dict(model="m", prompt="Summarize: {{text}}", rpm=1200)
    with aiq.Simulator(rpm=1200, burst_seconds=1) as sim:
        check(aiq.spark.score(df, endpoint=sim.url, **settings), rows)
        split = sim.stats()
    assert split["rate_limited"] <= 0.05 * split["requests"], split
    with aiq.Simulator(rpm=1200, burst_seconds=1) as sim:
        out = aiq.spark.score(df, endpoint=sim.url, workers=1, **settings)
        got = sorted(out.collect(), key=lambda r: r["id"])
        whole = sim.stats()
    assert whole["rate_limited"] > 0, whole
    # Twice the server's rate, on purpose, and a told rpm is a ceiling that
    # 429s do not lower: most rows get through on retries, but a row may
    # run out of them. Every row is there once, answered or refused.
    assert [r["id"] for r in got] == list(range(rows))
    for r in got:
        assert r["result"] == expected(r["text"]) or "HTTP 429" in r["error_message"], r


def test_the_journal_answers_a_second_run(spark, reviews, tmp_path):
    journal = str(tmp_path / "calls")
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="Summarize: {{text}}", journal=journal)
        check(aiq.spark.score(reviews, **settings))
        first = sim.stats()["requests"]
        assert first == sent()
        again = check(aiq.spark.score(reviews, **settings))
        assert sim.stats()["requests"] == first, sim.stats()
    # Answered from the journal: not sent, usage as billed the first time.
    assert all(r["attempts"] == 0 for r in again if r["text"] is not None)
    assert sorted(os.listdir(journal)) == [f"partition-{p:05d}" for p in range(PARTITIONS)]


def test_a_task_failing_mid_partition_is_retried_without_paying_again(spark, reviews, tmp_path):
    journal = tmp_path / "calls"
    with aiq.Simulator(latency_ms=20) as sim:
        out = aiq.spark.score(
            reviews,
            endpoint=sim.url,
            model="m",
            prompt="Summarize: {{text}}",
            journal=str(journal),
            concurrency=2,
            _inject_failure=(1, 4),
        )
        got = check(out)
        stats = sim.stats()
    # Partition 1 failed after 4 rows and was retried: its first attempt
    # and its retry each left a journal file, and the retry took the rows
    # answered before the failure from the journal (attempts 0).
    assert len(os.listdir(journal / "partition-00001")) == 2
    reused = [r for r in got if r["text"] is not None and r["attempts"] == 0]
    assert len(reused) >= 4, reused
    # Every row paid once; at most the calls in flight when the task
    # failed (2) paid twice.
    assert sent() <= stats["ok"] <= sent() + 2, stats


def test_the_example_job_runs_as_written(spark, tmp_path):
    # jobs/spark/score_reviews.py, against the simulator: it reads JSON
    # lines, scores, writes Parquet and keeps its journal beside it.
    import importlib.util
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "spark", "score_reviews.py")
    spec = importlib.util.spec_from_file_location("score_reviews", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    source, target = tmp_path / "reviews.jsonl", tmp_path / "scored"
    source.write_text("".join(json.dumps({"product": "phone", "text": f"review {i}"}) + "\n" for i in range(12)))
    with aiq.Simulator() as sim:
        assert job.main(["score_reviews.py", str(source), str(target), sim.url]) == 0
        assert sim.stats()["ok"] == 12
    rows = spark.read.parquet(str(target)).collect()
    assert sorted(r["result"] for r in rows) == sorted(
        f"echo: Summarize this phone review in one sentence: review {i}" for i in range(12)
    )
    assert os.path.isdir(str(target) + ".calls")


def test_the_databricks_nightly_job_scores_new_rows_only(spark, tmp_path):
    # jobs/databricks/score_table.py, as the scheduled job runs it, against
    # a catalog table of this session: the first run scores every row, the
    # next only those added since (and the failed ones).
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "databricks", "score_table.py")
    spec = importlib.util.spec_from_file_location("score_table", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)

    def reviews(ids):
        rows = [(i, "phone", f"review {i}" if i != 3 else "bad [[sim:400]]") for i in ids]
        return spark.createDataFrame(rows, "id LONG, product STRING, text STRING")

    source, results = "aiq_test_reviews", "aiq_test_reviews_scored"
    journal = str(tmp_path / "calls")
    # Managed tables land in the session's warehouse folder (in the current
    # directory): removed afterwards unless it was there before.
    import shutil
    from urllib.parse import urlparse

    warehouse = urlparse(spark.conf.get("spark.sql.warehouse.dir")).path
    warehouse_was_there = os.path.exists(warehouse)
    try:
        reviews(range(6)).write.mode("overwrite").saveAsTable(source)
        with aiq.Simulator() as sim:
            argv = ["score_table.py", source, results, sim.url, journal]
            assert job.main(argv) == 0
            assert sim.stats()["requests"] == 6
            reviews(range(6, 9)).write.mode("append").saveAsTable(source)
            assert job.main(argv) == 0
            # The three new rows, and the failed one again (it fails again).
            assert sim.stats()["requests"] == 6 + 3 + 1
        scored = spark.table(results).collect()
        answered = sorted(r["id"] for r in scored if r["error_message"] is None)
        assert answered == [0, 1, 2, 4, 5, 6, 7, 8]
        assert sorted(r["id"] for r in scored if r["error_message"] is not None) == [3, 3]
        assert {r["result"] for r in scored if r["id"] == 7} == {
            "echo: Summarize this phone review in one sentence: review 7"
        }
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {results}")
        spark.sql(f"DROP TABLE IF EXISTS {source}")
        if not warehouse_was_there:
            shutil.rmtree(warehouse, ignore_errors=True)


def test_straight_into_a_delta_table_each_task_commits_once(spark, reviews, tmp_path):
    import deltalake
    import polars as pl

    table = str(tmp_path / "scores")
    with aiq.Simulator() as sim:
        settings = dict(
            endpoint=sim.url, model="m", prompt="Summarize: {{text}}", output=table,
            output_format="delta", write_mode="merge", merge_key="id",
        )
        # Partition 1's first attempt fails after its commit: Spark runs it
        # again, and the retry finds its rows in the table (the table
        # answers them: not sent, not written again).
        summary = aiq.spark.score(reviews, _inject_failure=(1, 0), **settings)
        retried = summary["tasks"][1]
        assert retried["rows"] == 0 and retried["saved_by_table"] > 0, retried
        assert summary["rows"] + summary["saved_by_table"] == ROWS
        assert sorted(t["partition"] for t in summary["tasks"]) == list(range(PARTITIONS))
        assert sim.stats()["ok"] == sent()
        # The same job again: the table answers every row.
        aiq.spark.score(reviews, **settings)
        assert sim.stats()["ok"] == sent()
    got = pl.read_delta(table).sort("id")
    assert got["id"].to_list() == list(range(ROWS)), "every row once"
    for r in got.iter_rows(named=True):
        assert r["result"] == expected(r["text"]), r
    assert got.schema["prompt_tokens"] == pl.Int64 and got.schema["request_fingerprint"] == pl.String
    history = deltalake.DeltaTable(table).history()
    assert len(history) >= PARTITIONS, history
    with pytest.raises(aiq.ConfigError, match="output_format"):
        aiq.spark.score(reviews, endpoint="http://127.0.0.1:9/v1", model="m", prompt="{{text}}", output=table)


def test_appending_a_task_retried_after_its_commit_lands_its_rows_once(spark, reviews, tmp_path):
    import polars as pl

    table = str(tmp_path / "scores")
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="Summarize: {{text}}", output=table, output_format="delta")
        # Partition 1's first attempt fails after its commit (its state
        # gone with it): the retry finds its rows in the table by the
        # commit's transaction, and sends and appends nothing.
        summary = aiq.spark.score(reviews, _inject_failure=(1, 0), **settings)
        assert summary["rows"] == ROWS
        assert sim.stats()["ok"] == sent(), "the retry sent nothing"
        # Another call is other work: appended again.
        aiq.spark.score(reviews, **settings)
        assert sim.stats()["ok"] == 2 * sent()
    got = pl.read_delta(table)
    assert sorted(got["id"].to_list()) == sorted(2 * list(range(ROWS))), "every row once per call"
    with pytest.raises(aiq.ConfigError, match="overwrite"):
        aiq.spark.score(reviews, endpoint="http://127.0.0.1:9/v1", model="m", prompt="{{text}}", output=table,
                        output_format="delta", write_mode="overwrite")

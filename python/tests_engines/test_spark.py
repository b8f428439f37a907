"""aiq.spark.score on a local Spark (two cores, UI off), against the
built-in simulator: exact results per row over several partitions, the
declared schema, string kinds, a job-wide rate limit, the call journal
across runs and across a task retried after a failure mid-partition.

One Spark session serves the whole module (starting one takes ~10 s)."""

import pyarrow as pa
import pytest

import aiq
import aiq.spark

pyspark = pytest.importorskip("pyspark")
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

ROWS = 40
PARTITIONS = 4


@pytest.fixture(scope="module")
def spark():
    # local[2, 4]: two cores, and up to 4 attempts per task so a failed
    # task is retried as on a cluster (plain local[2] never retries).
    session = (
        SparkSession.builder.master("local[2, 4]")
        .appName("aiq-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture
def reviews(spark):
    rows = [(i, f"review number {i}" if i % 9 != 8 else None) for i in range(ROWS)]
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("text", T.StringType())])
    return spark.createDataFrame(rows, schema).repartition(PARTITIONS, "id")


def expected(text):
    return None if text is None else f"echo: Summarize: {text}"


def check(out):
    rows = sorted(out.collect(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(ROWS))
    for r in rows:
        assert r["result"] == expected(r["text"]), r
        assert r["error_message"] is None, r


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
        check(out)
        assert sim.stats()["ok"] == sum(1 for i in range(ROWS) if i % 9 != 8)


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


def test_a_job_wide_rpm_holds(spark, reviews):
    # 4 partitions, 2 tasks at a time, against a server allowing 1200/min:
    # each task sends at 600/min, so together they stay within the limit.
    with aiq.Simulator(rpm=1200) as sim:
        out = aiq.spark.score(reviews, endpoint=sim.url, model="m", prompt="Summarize: {{text}}", rpm=1200)
        check(out)
        stats = sim.stats()
    assert stats["rate_limited"] <= 0.05 * stats["requests"], stats


def test_the_journal_answers_a_second_run(spark, reviews, tmp_path):
    journal = str(tmp_path / "calls")
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="Summarize: {{text}}", journal=journal)
        check(aiq.spark.score(reviews, **settings))
        first = sim.stats()["requests"]
        check(aiq.spark.score(reviews, **settings))
        assert sim.stats()["requests"] - first <= 1, sim.stats()


def test_a_task_failing_mid_partition_is_retried_without_paying_again(spark, reviews, tmp_path):
    journal = str(tmp_path / "calls")
    sent = sum(1 for i in range(ROWS) if i % 9 != 8)
    with aiq.Simulator(latency_ms=20) as sim:
        out = aiq.spark.score(
            reviews,
            endpoint=sim.url,
            model="m",
            prompt="Summarize: {{text}}",
            journal=journal,
            concurrency=2,
            _inject_failure=(1, 4),
        )
        check(out)
        stats = sim.stats()
    # Every row paid once; at most the calls in flight when the task
    # failed (2) are paid twice.
    assert sent <= stats["ok"] <= sent + 2, stats

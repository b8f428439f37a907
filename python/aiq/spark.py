"""Score a Spark DataFrame with aiq: each partition streams through aiq's
Rust core on the executors, as one reader, so requests stay in flight
across Arrow batch boundaries.

    import aiq.spark
    scored = aiq.spark.score(df, endpoint="databricks-meta-llama-3-3-70b-instruct",
                             prompt="Summarize: {{text}}", rpm=2000,
                             journal="/Volumes/main/default/aiq/calls")

The result has ``df``'s columns, then aiq's result columns with the names
and types ``aiq run`` writes (``result``, ``error_message``, usage, cost,
latency, ...). Settings are the same as ``aiq.run``'s.

Limits (``rpm``, ``tpm``, ``itpm``, ``otpm``, ``qph``) are for the whole
job: each task sends ``1/workers`` of them, ``workers`` being the number of
tasks that run at once (by default the smaller of the partition count and
``spark.sparkContext.defaultParallelism``). Each task still adapts to 429s
on its own. With ``journal=`` (a folder every executor can reach), every
answered call is kept by request content, one file per task attempt, so a
retried task, a speculative copy or a re-run of the job pays only for the
calls not answered yet (README "Scaling out").
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional

__all__ = ["score"]


def score(df: Any, *, journal: Optional[str] = None, workers: Optional[int] = None, **settings: Any) -> Any:
    """``df`` scored by aiq, lazily: a ``pyspark.sql.DataFrame`` with
    ``df``'s columns plus aiq's result columns (see the module doc)."""
    import aiq

    spark = df.sparkSession
    large = _conf_true(spark, "spark.sql.execution.arrow.useLargeVarTypes")
    in_schema = _plain(_to_arrow(df.schema, large))
    if workers is None:
        workers = _concurrent_tasks(spark, df)
    if workers < 1:
        raise aiq.ConfigError("workers must be at least 1")
    task_settings = dict(settings, workers=int(workers))
    inject = task_settings.pop("_inject_failure", None)  # tests only: (partition, rows)

    # The declared schema is the core's own answer for this input: a job
    # over no rows, checked as any job is (a template naming a missing
    # column fails here, on the driver, before any task starts).
    out_schema = _output_schema(in_schema, task_settings)
    out_spark = _from_arrow(out_schema)
    declared = _to_arrow(out_spark, large)

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        return _score_partition(batches, task_settings, journal, declared, inject)

    return df.mapInArrow(run, out_spark)


def _score_partition(
    batches: Iterator[Any], settings: dict, journal: Optional[str], declared: Any, inject: Any = None
) -> Iterator[Any]:
    """One task: the partition's batches through one aiq run, in order, cast
    to the declared types. Runs on an executor."""
    import pyarrow as pa

    import aiq

    from pyspark import TaskContext

    ctx = TaskContext.get()
    partition = ctx.partitionId() if ctx is not None else 0
    mine = dict(settings)
    if journal is not None:
        # One folder per partition: a retried or speculative attempt of
        # this partition reads only the answers meant for it.
        mine["call_journal"] = os.path.join(os.fspath(journal), f"partition-{partition:05d}")
    batches = (_plain_batch(b) for b in batches)
    first = next(batches, None)
    if first is None:
        return
    reader = pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))
    rows = 0
    for out in aiq.score(reader, quiet=True, **mine):
        rows += out.num_rows
        yield _cast(out, declared)
        if inject is not None and inject[0] == partition and ctx is not None and ctx.attemptNumber() == 0 and rows >= inject[1]:
            raise RuntimeError(f"aiq.spark: failure injected in partition {partition} after {rows} rows")


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _conf_true(spark: Any, key: str) -> bool:
    return str(spark.conf.get(key, "false")).lower() == "true"


def _concurrent_tasks(spark: Any, df: Any) -> int:
    """Tasks of this DataFrame that can run at once: one per core, at most
    one per partition."""
    import aiq

    try:
        cores = spark.sparkContext.defaultParallelism
        partitions = df.rdd.getNumPartitions()
    except Exception as e:  # Spark Connect has neither
        raise aiq.ConfigError(
            f"aiq.spark: cannot count the tasks that run at once on this session ({type(e).__name__}): "
            "give workers=N, the number of tasks scoring at the same time"
        ) from None
    return max(1, min(cores, partitions))


def _to_arrow(schema: Any, large: bool) -> Any:
    from pyspark.sql.pandas.types import to_arrow_schema

    # Spark checks mapInArrow's output against UTC timestamps.
    try:
        return to_arrow_schema(schema, timezone="UTC", prefers_large_types=large)
    except TypeError:  # PySpark before 4.0 has no large types
        return to_arrow_schema(schema, timezone="UTC")


def _from_arrow(schema: Any) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _output_schema(in_schema: Any, settings: dict) -> Any:
    import pyarrow as pa

    import aiq

    empty = pa.RecordBatchReader.from_batches(in_schema, iter(()))
    stream = aiq.score(empty, quiet=True, **settings)
    schema = stream.schema
    # Let the empty run end on its own (dropped unfinished, it would stop
    # as an interrupt does, and say so).
    for _ in stream:
        pass
    return schema


def _plain_type(t: Any) -> Any:
    """Spark hands strings as string, large_string (useLargeVarTypes) or
    string_view; the core reads them as plain strings (and binaries alike).
    The output is cast back to the declared types."""
    import pyarrow as pa

    if pa.types.is_large_string(t) or _is(t, "is_string_view"):
        return pa.string()
    if pa.types.is_large_binary(t) or _is(t, "is_binary_view"):
        return pa.binary()
    return t


def _is(t: Any, name: str) -> bool:
    import pyarrow as pa

    check = getattr(pa.types, name, None)
    return bool(check and check(t))


def _plain(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema([f.with_type(_plain_type(f.type)) for f in schema], metadata=schema.metadata)


def _plain_batch(batch: Any) -> Any:
    target = _plain(batch.schema)
    return batch if target.equals(batch.schema) else batch.cast(target)


def _cast(batch: Any, declared: Any) -> Any:
    """The output batch in exactly the declared types: Spark refuses any
    difference (RESULT_COLUMN_TYPES_MISMATCH), e.g. string vs large_string,
    or a timestamp's zone."""
    import pyarrow as pa

    if batch.schema.equals(declared, check_metadata=False):
        return batch
    columns = [batch.column(i).cast(declared.field(i).type) for i in range(batch.num_columns)]
    return pa.RecordBatch.from_arrays(columns, schema=declared)

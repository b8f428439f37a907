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

Credentials: the endpoint is resolved on the driver before any task
starts, so a missing host, token or key is one ``aiq.ConfigError`` there.
The tasks then resolve it again on the executors, from the executors'
environment (``spark.executorEnv.NAME``, the cluster's variables) and
``~/.databrickscfg``: variables set in the driver's Python process after
the Spark session started never reach them, and ``score`` refuses to start
when it sees that (``pass_credentials=None``, the default). Two ways out:

- set them where the executors read them, or before the session starts;
- ``pass_credentials=True``: the driver hands the tasks the credentials it
  resolved (``DATABRICKS_HOST`` with the token or the OAuth client id and
  secret, or the API key). The secrets then travel inside every task's
  serialized closure: over Spark's RPC (encrypted only with
  ``spark.network.crypto.enabled`` or SSL), into each executor's memory,
  and readable by any code that runs there. aiq never prints or logs them.

``pass_credentials=False`` skips the check: the executors have their own.

Straight into a Delta table: ``output=`` with ``output_format="delta"``
(and ``write_mode``, ``merge_key`` as for ``aiq.run``) runs the job at once
instead of returning a DataFrame::

    summary = aiq.spark.score(df, output="s3://bucket/scores", output_format="delta",
                              write_mode="merge", merge_key="id", endpoint=..., prompt=...)

Each task writes its partition as one shard of the job (``shard`` =
partition/partitions): its own journal and writer lock beside the table,
and one commit to it, which Delta's optimistic concurrency lets land beside
the other tasks'. A task that fails before its commit is retried by Spark
and resumes from its journal. Each commit carries a Delta application
transaction naming the call and the partition (``work_id``), so a task
retried after its commit, on another executor with none of its state,
finds its rows in the table: it sends nothing and appends nothing. Every
row lands once, with ``write_mode="append"`` as with ``"merge"``
(``"overwrite"`` is refused: each task would replace the others' rows).
Returns a summary dict (``rows``, ``ok``, ``failed``, ``shared``,
``usage``, ``cost_usd``, ..., summed over the tasks, and ``tasks``: each
task's own).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable, Iterator, Optional

__all__ = ["score"]


def score(
    df: Any,
    *,
    journal: Optional[str] = None,
    workers: Optional[int] = None,
    pass_credentials: Optional[bool] = None,
    output: Optional[str] = None,
    **settings: Any,
) -> Any:
    """``df`` scored by aiq, lazily: a ``pyspark.sql.DataFrame`` with
    ``df``'s columns plus aiq's result columns (see the module doc, also
    for ``pass_credentials``). With ``output=`` (a Delta table), the rows
    are written there at once and a summary dict is returned."""
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
    task_settings = _for_tasks(task_settings, pass_credentials, lambda names: _unseen_by_spark(spark, names), "spark")
    if output is not None:
        return _write(df, os.fspath(output), task_settings, journal, inject)
    out_spark = _from_arrow(out_schema)
    declared = _to_arrow(out_spark, large)

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        return _score_partition(batches, task_settings, journal, declared, inject)

    return df.mapInArrow(run, out_spark)


# Settings that say how an output is written: not for a run that hands its
# rows back.
_TABLE_KEYS = ("output_format", "write_mode", "merge_key")


def _check_table_write(settings: dict, engine: str) -> None:
    """``output=`` from a Spark or Ray job: a Delta table that every task
    appends or merges its own rows into."""
    import aiq

    if settings.get("output_format") != "delta":
        raise aiq.ConfigError(
            f"aiq.{engine}.score: output= writes a Delta table (each task commits its rows beside the "
            "others'); give output_format=\"delta\", or leave output out for a dataset"
        )
    if settings.get("write_mode") == "overwrite":
        raise aiq.ConfigError(
            f"aiq.{engine}.score: write_mode=\"overwrite\" would leave only the last task's rows "
            "(each task commits on its own): give \"append\" or \"merge\""
        )


def _write(df: Any, output: str, settings: dict, journal: Optional[str], inject: Any = None) -> dict:
    """Every partition into the Delta table ``output``, one shard per task;
    the tasks' summaries, summed."""
    _check_table_write(settings, "spark")
    partitions = df.rdd.getNumPartitions()
    # Names this call's work: a retried task's commit is found in the table
    # under it; the next call (another night's rows) is other work.
    run_id = uuid.uuid4().hex

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        return _write_partition(batches, settings, journal, output, partitions, run_id, inject)

    rows = df.mapInArrow(run, "partition INT, summary STRING").collect()
    tasks = sorted((json.loads(r["summary"]) for r in rows), key=lambda t: t["partition"])
    return _sum_summaries(tasks, output)


def _write_partition(
    batches: Iterator[Any],
    settings: dict,
    journal: Optional[str],
    output: str,
    partitions: int,
    run_id: str,
    inject: Any = None,
) -> Iterator[Any]:
    """One task: the partition's rows into the table as shard
    partition/partitions (its own journal, lock and commit). Runs on an
    executor; yields one row, the task's summary."""
    import pyarrow as pa

    import aiq

    from pyspark import TaskContext

    ctx = TaskContext.get()
    partition = ctx.partitionId() if ctx is not None else 0
    mine = dict(settings, shard=f"{partition}/{partitions}")
    if journal is not None:
        mine["call_journal"] = os.path.join(os.fspath(journal), f"partition-{partition:05d}")
    batches = (_plain_batch(b) for b in batches)
    first = next(batches, None)
    summary: dict = {"rows": 0}
    if first is not None:
        reader = pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))
        summary = aiq.run(reader, output=output, quiet=True, work_id=f"{run_id}/{partition}", **mine)
    if inject is not None and inject[0] == partition and ctx is not None and ctx.attemptNumber() == 0:
        raise RuntimeError(f"aiq.spark: failure injected in partition {partition} after its commit")
    summary["partition"] = partition
    yield pa.record_batch([pa.array([partition], pa.int32()), pa.array([json.dumps(summary)])], names=["partition", "summary"])


def _sum_summaries(tasks: list, output: str) -> dict:
    """The job's summary: the tasks' counts added up, and each task's own."""
    total: dict = {"output": output, "tasks": tasks}
    # The tasks ran side by side: the job took as long as the longest.
    total["elapsed_secs"] = max((t.get("elapsed_secs", 0.0) for t in tasks), default=0.0)
    for t in tasks:
        for key, value in t.items():
            if key in ("partition", "elapsed_secs") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict) and key == "usage":
                usage = total.setdefault(key, {})
                for k, v in value.items():
                    usage[k] = usage.get(k, 0) + v
    return total


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


# Per engine: when its workers took their environment, and where to set a
# variable for them.
_WORKERS_ENV = {
    "spark": (
        "the Spark session started",
        "spark.executorEnv.NAME or the cluster's environment variables, before the session starts",
    ),
    "ray": ("ray.init()", "before ray.init(), or in the cluster's environment"),
}


def _for_tasks(settings: dict, pass_credentials: Optional[bool], unseen: Callable[[list], list], engine: str) -> dict:
    """The settings the tasks (or actors) run with. The endpoint is resolved
    here first: missing credentials raise here, before any task starts.
    ``pass_credentials=True`` adds the credentials resolved here;
    ``None`` refuses when variables the endpoint reads are set in this
    process but ``unseen`` by the workers; ``False`` leaves the workers to
    resolve their own."""
    import aiq

    if settings.get("credentials") is not None:  # given explicitly
        return settings
    plain = {k: v for k, v in settings.items() if k != "job"}
    job = settings.get("job")
    try:
        encoded = json.dumps(plain)
    except (TypeError, ValueError) as e:
        raise aiq.ConfigError(f"settings: {e}") from None
    handed = aiq._core.handover(encoded, None if job is None else os.fspath(job))
    if pass_credentials:
        return dict(settings, credentials=handed)
    if pass_credentials is None:
        # The variables of this process the endpoint was resolved from
        # (the environment wins over a profile, name by name).
        missing = unseen([n for n in handed if os.environ.get(n)])
        if missing:
            where, fix = _WORKERS_ENV[engine]
            them = ", ".join(missing)
            raise aiq.ConfigError(
                f"aiq.{engine}: {them} {'is' if len(missing) == 1 else 'are'} set in this process but not "
                f"in the environment of the {engine} workers (set after {where}?): the tasks would not "
                f"find the endpoint's credentials. Set {'it' if len(missing) == 1 else 'them'} for the "
                f"workers ({fix}), or give pass_credentials=True to hand the tasks the credentials "
                f"resolved here (the secrets then travel inside every task: see help(aiq.{engine})); "
                "pass_credentials=False skips this check"
            )
    return settings


def _unseen_by_spark(spark: Any, names: list) -> list:
    """Of ``names`` (set in this process), those Spark would not give its
    Python workers with the same value: in neither the JVM's environment
    (taken when the session started; the workers inherit it) nor
    ``spark.executorEnv.NAME``. Spark Connect shows neither: nothing is
    checked there."""
    if not names:
        return []
    try:
        sc = spark.sparkContext
        system = sc._jvm.java.lang.System
        conf = sc.getConf()
    except Exception:
        return []
    return [n for n in names if os.environ[n] not in (system.getenv(n), conf.get(f"spark.executorEnv.{n}"))]


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
    asked = {k: v for k, v in settings.items() if k not in _TABLE_KEYS}
    stream = aiq.score(empty, quiet=True, **asked)
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

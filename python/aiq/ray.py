"""Score a Ray Dataset with aiq: ``map_batches`` over a pool of actors,
one aiq scorer per actor, Arrow in and out.

    import aiq.ray
    scored = aiq.ray.score(ds, endpoint="http://vllm:8000/v1", model="m",
                           prompt="Summarize: {{text}}", rpm=6000, journal="/shared/calls")

The result has the dataset's columns, then aiq's result columns with the
names and types ``aiq run`` writes. Settings are the same as ``aiq.run``'s.

Limits (``rpm``, ``tpm``, ``itpm``, ``otpm``, ``qph``) are for the whole
job: ``workers`` actors score at once (by default as many as the cluster
has CPUs; they reserve none, see ``score``) and each sends ``1/workers`` of
them, adapting to 429s on its own. With ``journal=`` (a folder
every node can reach), answered calls are kept by request content, one
file per actor, so a re-run or a retried batch pays only for the calls not
answered yet (README "Scaling out").

Credentials: the endpoint is resolved on the driver before any actor
starts, so a missing host, token or key is one ``aiq.ConfigError`` there.
The actors then resolve it again on their nodes, from their own
environment (what the cluster, or the local Ray that ``ray.init()``
started, was given, plus ``runtime_env={"env_vars": ...}``) and
``~/.databrickscfg``: variables set in the driver after ``ray.init()``
never reach them, and ``score`` refuses to start when a worker does not
see them (``pass_credentials=None``, the default: one worker is asked for a
digest of each such variable; the values stay on the driver). Two ways out:

- set them where the workers read them: before ``ray.init()``, or in its
  ``runtime_env`` (Ray keeps runtime_env variables in its metadata, shown
  by its dashboard: no place for secrets);
- ``pass_credentials=True``: the driver hands the actors the credentials it
  resolved (``DATABRICKS_HOST`` with the token or the OAuth client id and
  secret, or the API key), in their constructor arguments. The secrets then
  travel pickled through Ray's object store to every node that runs an
  actor, and are readable by any code there. aiq never prints or logs them.

``pass_credentials=False`` skips the check: the workers have their own.

Straight into a Delta table: ``output=`` with ``output_format="delta"``
(and ``write_mode``, ``merge_key`` as for ``aiq.run``) runs the job at once
instead of returning a Dataset::

    summary = aiq.ray.score(ds, output="s3://bucket/scores", output_format="delta",
                            endpoint=..., prompt=...)

The dataset is executed into Ray's object store (``to_arrow_refs``), then
one Ray task per block, ``workers`` at a time, scores the block as one
shard of the job (``shard`` = block/blocks: its own journal and writer
lock beside the table) and commits it to the table; Delta's optimistic
concurrency lets the commits land side by side. Each commit carries a Delta
application transaction naming the call and the block (``work_id``): a
task Ray retries after its commit (its worker lost before Ray heard back)
finds its rows in the table and sends and appends nothing. Every row lands
once, with ``write_mode="append"`` as with ``"merge"`` (``"overwrite"`` is
refused: each task would replace the others' rows). Returns a summary dict
as ``aiq.spark.score`` does (the tasks' counts summed, and ``tasks``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator, Optional

__all__ = ["score"]

# Rows each actor scores per call: large enough that requests overlap
# across many rows, small enough to keep an actor's memory modest.
DEFAULT_BATCH_ROWS = 4096


class _Scorer:
    """One per actor, for the actor's whole life: one aiq run, fed the
    batches Ray hands over one after another. Requests of one batch overlap
    the next's, and the run's 429 adaptation (its learned pace) and call
    journal file carry over from batch to batch; a run per batch would
    start cold each time and leave one journal file per batch.

    The run reads from a queue: each call puts its batch in and takes
    exactly as many output rows back, in input order."""

    def __init__(self, settings: dict) -> None:
        import threading

        self.settings = settings
        # Calls take their rows back in the order they put them in: one at
        # a time, even on an actor given max_concurrency > 1.
        self._lock = threading.Lock()
        self._inbox: Any = None
        self._outputs: Any = None
        self._schema: Any = None
        self._carry: list = []

    def _open(self, schema: Any) -> None:
        import queue

        import pyarrow as pa

        import aiq

        self._close()
        inbox: Any = queue.Queue()

        def feed() -> Iterator[Any]:
            while True:
                batch = inbox.get()
                if batch is None:
                    return
                yield batch

        reader = pa.RecordBatchReader.from_batches(schema, feed())
        self._outputs = aiq.score(reader, quiet=True, **self.settings)
        self._inbox, self._schema, self._carry = inbox, schema, []

    def _close(self, drain: bool = True) -> None:
        """End the run's input and let it finish: every row given was taken
        back, so it ends at once (dropping it unfinished would stop it as
        an interrupt does, and say so). ``drain=False`` drops it: it stops
        sending."""
        inbox, outputs = self._inbox, self._outputs
        self._inbox = self._outputs = self._schema = None
        self._carry = []
        if inbox is not None:
            inbox.put(None)
        if outputs is not None and drain:
            try:
                for _ in outputs:
                    pass
            except Exception:  # the run had failed: __call__ raised that already
                pass

    def _take(self, rows: int) -> list:
        """The next ``rows`` output rows, as batches."""
        out, have = [], 0
        while have < rows:
            batch = self._carry.pop(0) if self._carry else next(self._outputs, None)
            if batch is None:
                raise RuntimeError(f"aiq.ray: the run ended {rows - have} rows short")
            if have + batch.num_rows > rows:
                keep = rows - have
                self._carry.insert(0, batch.slice(keep))
                batch = batch.slice(0, keep)
            out.append(batch)
            have += batch.num_rows
        return out

    def __call__(self, batch: Any) -> Any:
        with self._lock:
            return self._score(batch)

    def _score(self, batch: Any) -> Any:
        import pyarrow as pa

        table = _plain_table(batch)
        if self._schema is None or not table.schema.equals(self._schema):
            self._open(table.schema)
        for b in table.to_batches():
            self._inbox.put(b)
        try:
            out = self._take(table.num_rows)
        except BaseException:
            # The run failed (or this call was interrupted): the next batch,
            # or Ray's retry of this one, starts a new run.
            self._close(drain=False)
            raise
        return pa.Table.from_batches(out, schema=self._outputs.schema)

    def __del__(self) -> None:
        self._close()


def _check(ds: Any, settings: dict) -> None:
    """Check the settings against the dataset's schema on the driver, as a
    job over no rows, when Ray knows the schema without running anything:
    a template naming a missing column fails here, not in every actor."""
    import pyarrow as pa

    from aiq.spark import _output_schema, _plain

    known = ds.schema(fetch_if_missing=False)
    base = getattr(known, "base_schema", None)
    if isinstance(base, pa.Schema):
        _output_schema(_plain(base), settings)


def _digest(value: Optional[str]) -> Optional[str]:
    """A variable's value compared without moving it: its SHA-256."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def _digests(names: list) -> dict:
    """On a worker: the digest of each variable of ``names`` there."""
    return {n: _digest(os.environ.get(n)) for n in names}


def _unseen_by_ray(names: list, remote: dict) -> list:
    """Of ``names`` (set in this process), those a worker started as the
    actors will be (their ``runtime_env``) sees with another value or not
    at all."""
    import ray

    if not names:
        return []
    env = {k: v for k, v in remote.items() if k == "runtime_env"}
    probe = ray.remote(_digests).options(num_cpus=0, **env)
    seen = ray.get(probe.remote(names))
    return [n for n in names if seen.get(n) != _digest(os.environ[n])]


def _plain_table(batch: Any) -> Any:
    """The batch as a table with the string and binary kinds the core reads
    (Ray hands large_string for some sources)."""
    import pyarrow as pa

    from aiq.spark import _plain

    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    target = _plain(table.schema)
    return table if target.equals(table.schema) else table.cast(target)


def score(
    ds: Any,
    *,
    journal: Optional[str] = None,
    workers: Optional[int] = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    ray_remote_args: Optional[dict] = None,
    pass_credentials: Optional[bool] = None,
    output: Optional[str] = None,
    **settings: Any,
) -> Any:
    """``ds`` scored by aiq, lazily: a ``ray.data.Dataset`` (see the module
    doc, also for ``pass_credentials``). ``ray_remote_args`` go to the
    actors (``num_cpus``, ``resources``, ``scheduling_strategy``...), or to
    the tasks with ``output=``: then the rows are written to that Delta
    table at once and a summary dict is returned."""
    import ray

    import aiq
    from aiq.spark import _for_tasks

    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if workers < 1:
        raise aiq.ConfigError("workers must be at least 1")
    task_settings = dict(settings, workers=int(workers))
    inject = task_settings.pop("_inject_failure", None)  # tests only: (block, marker file)
    if journal is not None:
        task_settings["call_journal"] = os.fspath(journal)
    _check(ds, task_settings)
    # An actor waits on the network: it reserves no CPU by default. One
    # that reserved a whole CPU would starve the tasks that feed it (reads,
    # repartitions) once the pool holds every CPU: on a one-CPU Ray the
    # job never starts.
    remote = {"num_cpus": 0, **(ray_remote_args or {})}
    task_settings = _for_tasks(task_settings, pass_credentials, lambda names: _unseen_by_ray(names, remote), "ray")
    if output is not None:
        return _write(ds, os.fspath(output), task_settings, int(workers), remote, inject)
    return ds.map_batches(
        _Scorer,
        fn_constructor_kwargs={"settings": task_settings},
        batch_format="pyarrow",
        batch_size=batch_rows,
        compute=ray.data.ActorPoolStrategy(size=int(workers)),
        **remote,
    )


def _write(ds: Any, output: str, settings: dict, workers: int, remote: dict, inject: Any = None) -> dict:
    """Every block of ``ds`` into the Delta table ``output``, one shard per
    Ray task, at most ``workers`` tasks at once; the tasks' summaries,
    summed."""
    import uuid

    import ray

    from aiq.spark import _check_table_write, _sum_summaries

    _check_table_write(settings, "ray")
    blocks = ds.to_arrow_refs()
    # Names this call's work: a retried task's commit is found in the table
    # under it; the next call (another night's rows) is other work.
    run_id = uuid.uuid4().hex
    write = ray.remote(_write_block).options(**remote)
    tasks, pending = [], []
    for k, block in enumerate(blocks):
        if len(pending) >= workers:
            done, pending = ray.wait(pending, num_returns=1)
            tasks.extend(ray.get(done))
        pending.append(write.remote(block, k, len(blocks), run_id, output, settings, inject))
    tasks.extend(ray.get(pending))
    return _sum_summaries(sorted(tasks, key=lambda t: t["partition"]), output)


def _write_block(
    block: Any, k: int, blocks: int, run_id: str, output: str, settings: dict, inject: Any = None
) -> dict:
    """One Ray task: block ``k`` into the table as shard k/blocks (its own
    journal, lock and commit); its summary."""
    import aiq

    table = _plain_table(block)
    summary: dict = {"rows": 0}
    if table.num_rows:
        mine = dict(settings, shard=f"{k}/{blocks}")
        summary = aiq.run(table, output=output, quiet=True, work_id=f"{run_id}/{k}", **mine)
    if inject is not None and inject[0] == k and not os.path.exists(inject[1]):
        # Tests only: the worker dies after the commit, before Ray hears
        # back (once: the marker file says it did), and Ray runs it again.
        open(inject[1], "w").close()
        os._exit(1)
    summary["partition"] = k
    return summary

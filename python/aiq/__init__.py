"""aiq: batch scoring of datasets with large language models.

Score a table with one call::

    import aiq, pyarrow as pa
    reviews = pa.table({"text": ["Great phone.", "Broke in a week."]})
    out = aiq.run(reviews, endpoint="simulator", prompt="Summarize: {{text}}")
    print(out.select(["text", "result", "error_message"]))

The settings are the job file's keys with the same names, values and checks
(``endpoint``, ``prompt``, ``system``, ``model``, ``concurrency``, ``rpm``,
``return_type``, ``params={...}``, ...; see ``aiq run --help``). The work is
done by the same Rust core as the ``aiq`` command, with the GIL released.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

from aiq import _core
from aiq._core import ConfigError, Error, JobError

__all__ = [
    "run",
    "score",
    "sql",
    "Simulator",
    "Error",
    "ConfigError",
    "JobError",
    "OUTCOME_COLUMNS",
]
__version__: str = _core.__version__
# The columns every output ends with, after the input's, in order.
OUTCOME_COLUMNS: list[str] = list(_core.OUTCOME_COLUMNS)

PathLike = Union[str, "os.PathLike[str]"]

# No aiq thread may be running when the process forks (multiprocessing,
# PySpark's workers): an idle runtime is stopped first and built again on
# the next call. Registering starts nothing.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_core.before_fork)

def _arrow(data: Any) -> tuple[Any, str, Optional[int]]:
    """An object with ``__arrow_c_stream__`` for ``data``, a label naming
    it in messages, and its row count when known (for progress)."""
    kind = type(data)
    label = f"{kind.__module__.split('.')[0]}.{kind.__name__}"
    if kind.__module__.startswith("pandas") and kind.__name__ == "DataFrame":
        import pyarrow as pa

        # The index is not a column of the data: input order is kept anyway.
        data = pa.Table.from_pandas(data, preserve_index=False)
    elif kind.__module__.startswith("pyarrow") and kind.__name__ == "RecordBatch":
        import pyarrow as pa

        data = pa.Table.from_batches([data])
    elif not hasattr(data, "__arrow_c_stream__") and isinstance(data, Iterable):
        # An iterator of pyarrow.RecordBatch (Spark's mapInArrow, Ray):
        # streamed, the first batch gives the schema.
        import pyarrow as pa

        batches = iter(data)
        try:
            first = next(batches)
        except StopIteration:
            raise ConfigError(
                "data: an empty iterator of batches has no columns"
            ) from None
        data = pa.RecordBatchReader.from_batches(
            first.schema, itertools.chain([first], batches)
        )
        label = "iterator of pyarrow.RecordBatch"
    if not hasattr(data, "__arrow_c_stream__"):
        raise ConfigError(
            f"data: cannot read a {label}: give a pyarrow.Table, a pyarrow.RecordBatchReader, "
            "a pandas.DataFrame, an object with __arrow_c_stream__ (Polars, DuckDB, ...), "
            "or the path of a .parquet or .jsonl file"
        )
    rows = getattr(data, "num_rows", None)
    if rows is None:
        rows = getattr(data, "height", None)  # Polars
    return data, f"<{label}>", rows if isinstance(rows, int) else None


# What `run` can return without `output`: `as_=` names one; by default the
# caller's own kind comes back.
_RETURN_KINDS = ("arrow", "pandas", "polars")


def _kind_of(data: Any) -> str:
    """The kind `run` returns for `data` by default: pandas for a pandas
    DataFrame, Polars for a Polars DataFrame, Arrow for everything else."""
    kind = type(data)
    package = kind.__module__.split(".")[0]
    if package in ("pandas", "polars") and kind.__name__ == "DataFrame":
        return package
    return "arrow"


def _returned(table: Any, kind: str, data: Any) -> Any:
    """`table` (a pyarrow.Table) as `kind`. A pandas result from pandas
    data keeps its index: one output row per input row, in input order, so
    ``df.join(out[["result"]])`` lines up."""
    if kind == "pandas":
        frame = table.to_pandas()
        if _kind_of(data) == "pandas" and len(data.index) == len(frame):
            frame.index = data.index
        return frame
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    return table


def _start(
    data: Any,
    job: Optional[PathLike],
    output: Optional[PathLike],
    restart: bool,
    quiet: bool,
    settings: Mapping[str, Any],
    credentials: Optional[Mapping[str, str]] = None,
    work: Optional[str] = None,
) -> "_core.Job":
    settings = dict(settings)
    if credentials is not None:
        if not isinstance(credentials, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in credentials.items()
        ):
            raise ConfigError("credentials: give a mapping of variable names to strings")
        credentials = dict(credentials)
    if isinstance(data, (str, os.PathLike)):
        if "input" in settings:
            raise ConfigError("give the input as `data` or as `input=`, not both")
        settings["input"] = os.fspath(data)
        stream, label, rows = None, "", None
    elif data is None:
        stream, label, rows = None, "", None
    else:
        stream, label, rows = _arrow(data)
    try:
        encoded = json.dumps(settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"settings: {e}") from None
    return _core.start(
        stream,
        label,
        rows,
        encoded,
        job=None if job is None else os.fspath(job),
        output=None if output is None else os.fspath(output),
        restart=restart,
        quiet=quiet,
        credentials=credentials,
        work=work,
    )


def run(
    data: Any = None,
    *,
    output: Optional[PathLike] = None,
    job: Optional[PathLike] = None,
    restart: bool = False,
    quiet: bool = False,
    credentials: Optional[Mapping[str, str]] = None,
    as_: Optional[str] = None,
    work_id: Optional[str] = None,
    **settings: Any,
) -> Any:
    """Score every row of ``data``: one request per row, one output row per
    input row, in input order.

    ``data`` is a ``pyarrow.Table``, a ``pyarrow.RecordBatchReader``, a
    ``pandas.DataFrame``, any object with ``__arrow_c_stream__`` (Polars,
    DuckDB, ...), an iterator of ``pyarrow.RecordBatch``, or the path of a
    Parquet or JSONL file; ``None`` takes the job file's ``input``. It is
    read batch by batch.

    Without ``output``, returns the input columns, then ``result``,
    ``error_message``, usage and cost columns, as ``aiq run`` writes them,
    in the caller's kind: a ``pandas.DataFrame`` for a pandas DataFrame
    (with its index), a ``polars.DataFrame`` for a Polars one, a
    ``pyarrow.Table`` for anything else. ``as_="arrow"``, ``"pandas"`` or
    ``"polars"`` asks for one kind whatever the input. With ``output="out.parquet"``, writes that file exactly as
    ``aiq run`` does (journaled: the same call again resumes;
    ``restart=True`` discards the journal) and returns a summary dict
    (``rows``, ``ok``, ``failed``, ``null``, ``usage``, ``cost_usd``,
    ``output``, ...).

    ``job="jobs/x.toml"`` loads a job file; keyword settings override it.
    ``quiet=True`` hides the progress bar (shown only on a terminal).
    ``credentials={"DATABRICKS_HOST": ..., "DATABRICKS_TOKEN": ...}`` (or
    the API key variable) are read in place of the process's environment
    and ``~/.databrickscfg`` to find the endpoint's credentials.

    ``work_id="run-42/part-3"`` names the rows of ``data`` (the same name
    must mean the same rows): appended to a Delta table (``output_format=
    "delta"``) that holds them already under that name, they are neither
    sent nor appended again, so a retried task of a distributed job lands
    its rows once. A file is named by itself (its path, size and time).

    Raises ``ConfigError`` for mistakes found before any request (a
    template naming a missing column names it) and ``JobError`` when the
    job fails; Ctrl-C raises ``KeyboardInterrupt`` within about two seconds,
    after the calls in flight are journaled when there is an ``output``.
    """
    if as_ is not None and as_ not in _RETURN_KINDS:
        raise ConfigError(f"as_={as_!r}: give one of {', '.join(map(repr, _RETURN_KINDS))}")
    if as_ is not None and output is not None:
        raise ConfigError("as_= is the kind of the returned table: with output= a summary is returned")
    kind = as_ or _kind_of(data)
    if work_id is not None and not isinstance(work_id, str):
        raise ConfigError("work_id: give a string that names the rows of data")
    job_ = _start(data, job, output, restart, quiet, settings, credentials, work_id)
    if output is None:
        import pyarrow as pa

        return _returned(pa.Table.from_batches(list(job_), schema=job_.schema), kind, data)
    return json.loads(job_.wait())


def score(
    data: Any,
    *,
    job: Optional[PathLike] = None,
    quiet: bool = True,
    credentials: Optional[Mapping[str, str]] = None,
    **settings: Any,
) -> Iterator[Any]:
    """Score ``data`` as a stream: yields output ``pyarrow.RecordBatch``es
    (input columns + result columns) in input order, as they complete,
    while later input is still being read. ``data`` is any kind ``run``
    takes; an iterator of ``pyarrow.RecordBatch`` is consumed lazily (what
    Spark's ``mapInArrow`` and Ray's ``map_batches`` hand over). Nothing is
    written to disk. Stopping early (closing the iterator) stops sending.
    ``credentials`` as for ``run``.
    """
    job_ = _start(data, job, None, False, quiet, settings, credentials)
    return iter(job_)


def sql(
    query: str,
    *,
    tables: Optional[Mapping[str, Any]] = None,
    output: Optional[PathLike] = None,
    restart: bool = False,
    quiet: bool = True,
    dry_run: bool = False,
    **settings: Any,
) -> Any:
    """Run a SQL query with ``ai_query(...)`` and the AI functions
    (``ai_classify``, ``ai_summarize``, ...) on DataFusion, as ``aiq sql``.

    ``tables`` maps table names to data of any kind ``run`` takes (paths
    are read by DataFusion; in-memory data is held in memory for the
    query). The settings are ``aiq sql``'s flags with the same names,
    values and checks (``endpoint`` for the task functions, ``model``,
    ``concurrency``, ``rpm``, ``tpm``, ``max_retries``, ``timeout``,
    ``api_key_env``, ``profile``, ``context_tokens``; see ``aiq sql
    --help``). Returns a ``pyarrow.Table``; with ``output`` the
    result is written to that Parquet file instead (calls journaled beside
    it, so a rerun does not pay twice) and ``None`` is returned. With
    ``dry_run=True`` nothing is sent: the report of how many AI calls each
    AI function may make at most is returned as a string.
    """
    files, data = [], []
    for name, value in (tables or {}).items():
        if isinstance(value, (str, os.PathLike)):
            files.append((name, os.fspath(value)))
        else:
            data.append((name, _arrow(value)[0]))
    try:
        encoded = json.dumps(dict(settings, dry_run=dry_run))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"settings: {e}") from None
    batches, summary = _core.sql(
        query,
        data,
        files,
        encoded,
        output=None if output is None else os.fspath(output),
        restart=restart,
        quiet=quiet,
    )
    report = json.loads(summary).get("dry_run")
    if report is not None:
        return report
    if output is not None:
        return None
    import pyarrow as pa

    return pa.Table.from_batches(batches) if batches else pa.table({})


class Simulator:
    """The built-in OpenAI/Databricks-compatible simulator, on 127.0.0.1,
    for tests and notebooks::

        with aiq.Simulator(latency_ms=50) as sim:
            aiq.run(table, endpoint=sim.url, prompt="{{text}}")

    Knobs are ``aiq simulate``'s flags (``latency_ms``, ``itl_ms``,
    ``ttft_ms``, ``output_tokens``, ``rpm``, ``tpm``, ``fault_rate``,
    ``fail_first``, ``seed``, ...; see ``aiq simulate --help``).
    """

    def __init__(self, **knobs: Any) -> None:
        flags = []
        for key, value in knobs.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                flags.append(flag)
            elif value is not None and value is not False:
                flags.append(f"{flag}={value}")
        self._sim = _core.Simulator(flags)

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``),
        to give as ``endpoint=``."""
        return self._sim.url + "/v1"

    def stats(self) -> dict:
        """Requests served so far, by outcome."""
        return json.loads(self._sim.stats())

    def close(self) -> None:
        """Stop serving (requests in progress finish)."""
        self._sim.close()

    def __enter__(self) -> "Simulator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _console() -> None:
    """The ``aiq`` console command: the same CLI as the Rust binary."""
    # The CLI handles Ctrl-C itself (journal the calls in flight, a second
    # one quits): Python's handler would only add a traceback afterwards.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_core.main(["aiq", *sys.argv[1:]]))

"""Type stubs for aiq._core, the extension module (see aiq/__init__.py)."""

from typing import Any, Iterator, Mapping, Optional, Sequence

import pyarrow as pa

__version__: str
OUTCOME_COLUMNS: list[str]

class Error(Exception): ...
class ConfigError(Error): ...
class JobError(Error): ...

class Job(Iterator[pa.RecordBatch]):
    """A running job: iterate for output batches (no output=), or wait()."""
    @property
    def schema(self) -> pa.Schema: ...
    def __iter__(self) -> "Job": ...
    def __next__(self) -> pa.RecordBatch: ...
    def wait(self) -> str:
        """The summary as JSON, once the job has ended."""

def start(
    data: Optional[Any],
    label: str,
    total_rows: Optional[int],
    settings: str,
    job: Optional[str] = None,
    output: Optional[str] = None,
    restart: bool = False,
    quiet: bool = False,
    credentials: Optional[Mapping[str, str]] = None,
    work: Optional[str] = None,
) -> Job:
    """Start a job over an Arrow stream (or the settings' input file when None);
    `settings` is JSON with the job file's keys; `credentials` are variables
    the endpoint's credentials resolve from instead of the environment; `work`
    names the rows of the stream (the same name, the same rows)."""

def handover(settings: str, job: Optional[str] = None) -> dict[str, str]:
    """The settings' endpoint resolved here: the variables that give its
    credentials anywhere (secrets)."""

def main(argv: Sequence[str]) -> int:
    """The aiq command line; returns its exit code."""

def sql(
    query: str,
    tables: Sequence[tuple[str, Any]],
    files: Sequence[tuple[str, str]],
    settings: str,
    output: Optional[str] = None,
    restart: bool = False,
    quiet: bool = False,
) -> tuple[list[pa.RecordBatch], str]:
    """Run a query; `settings` is JSON with `aiq sql`'s other flags
    (`context_tokens`, `dry_run`, ...). Returns the result's batches and the
    summary as JSON (with `dry_run`'s report)."""

def before_fork() -> None:
    """Stop the idle runtime so that no aiq thread exists at os.fork()."""

class Simulator:
    def __init__(self, flags: Sequence[str]) -> None: ...
    @property
    def url(self) -> str: ...
    def stats(self) -> str: ...
    def close(self) -> None: ...

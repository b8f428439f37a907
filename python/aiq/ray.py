"""Score a Ray Dataset with aiq: ``map_batches`` over a pool of actors,
one aiq scorer per actor, Arrow in and out.

    import aiq.ray
    scored = aiq.ray.score(ds, endpoint="http://vllm:8000/v1", model="m",
                           prompt="Summarize: {{text}}", rpm=6000, journal="/shared/calls")

The result has the dataset's columns, then aiq's result columns with the
names and types ``aiq run`` writes. Settings are the same as ``aiq.run``'s.

Limits (``rpm``, ``tpm``, ``itpm``, ``otpm``, ``qph``) are for the whole
job: ``workers`` actors score at once (by default one per CPU of the
cluster) and each sends ``1/workers`` of them. With ``journal=`` (a folder
every node can reach), answered calls are kept by request content, one
file per actor, so a re-run or a retried batch pays only for the calls not
answered yet (README "Scaling out").
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["score"]

# Rows each actor scores per call: large enough that requests overlap
# across many rows, small enough to keep an actor's memory modest.
DEFAULT_BATCH_ROWS = 4096


class _Scorer:
    """One per actor: scores the batches Ray hands it, one at a time."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings

    def __call__(self, batch: Any) -> Any:
        import aiq

        return aiq.run(batch, quiet=True, **self.settings)


def score(
    ds: Any,
    *,
    journal: Optional[str] = None,
    workers: Optional[int] = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    **settings: Any,
) -> Any:
    """``ds`` scored by aiq, lazily: a ``ray.data.Dataset`` (see the module doc)."""
    import ray

    import aiq

    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if workers < 1:
        raise aiq.ConfigError("workers must be at least 1")
    task_settings = dict(settings, workers=int(workers))
    if journal is not None:
        task_settings["call_journal"] = str(journal)
    return ds.map_batches(
        _Scorer,
        fn_constructor_kwargs={"settings": task_settings},
        batch_format="pyarrow",
        batch_size=batch_rows,
        concurrency=int(workers),
        # Waiting on the network takes no CPU: one actor per CPU slot.
        num_cpus=1,
    )

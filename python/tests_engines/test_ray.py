"""aiq.ray.score on a one-CPU local Ray, against the built-in simulator:
exact results per row over several blocks, and the call journal across
runs. One Ray instance serves the whole module (~5 s to start)."""

import pyarrow as pa
import pytest

import aiq
import aiq.ray

ray = pytest.importorskip("ray")

ROWS = 30


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def dataset():
    table = pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": [f"review {i}" for i in range(ROWS)]})
    return ray.data.from_arrow(table).repartition(3)


def check(ds):
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(ROWS))
    for r in rows:
        assert r["result"] == f"echo: {r['text']}", r
        assert r["error_message"] is None


def test_exact_results_per_row(tmp_path):
    with aiq.Simulator() as sim:
        out = aiq.ray.score(dataset(), endpoint=sim.url, model="m", prompt="{{text}}", batch_rows=8)
        check(out)
        assert sim.stats()["ok"] == ROWS


def test_the_journal_answers_a_second_run(tmp_path):
    journal = str(tmp_path / "calls")
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="{{text}}", journal=journal, batch_rows=8)
        check(aiq.ray.score(dataset(), **settings))
        first = sim.stats()["requests"]
        check(aiq.ray.score(dataset(), **settings))
        assert sim.stats()["requests"] == first

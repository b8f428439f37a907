"""aiq.run into a Delta table: read back with delta-rs's own Python package
and with Polars (every row, values, types, history), and merged by key so
that a second run pays only for the new and the changed rows."""

import deltalake
import pytest
import polars as pl
import pyarrow as pa

import aiq


def tickets(texts: dict) -> pa.Table:
    ids = sorted(texts)
    return pa.table({"id": pa.array(ids, pa.int64()), "text": [texts[i] for i in ids]})


def test_run_merges_into_a_delta_table_and_pays_for_new_and_changed_rows_only(tmp_path):
    table = str(tmp_path / "scores")
    first = {i: f"ticket {i}" for i in range(10)}
    second = {**first, 2: "ticket 2, edited", 7: "ticket 7, edited", 10: "ticket 10", 11: "ticket 11"}
    with aiq.Simulator() as sim:
        settings = dict(
            endpoint=sim.url, model="m", prompt="Classify: {{text}}", quiet=True,
            output_format="delta", write_mode="merge", merge_key="id",
        )
        summary = aiq.run(tickets(first), output=table, **settings)
        assert summary["rows"] == 10
        assert sim.stats()["ok"] == 10
        aiq.run(tickets(second), output=table, **settings)
        # Two changed, two new: the other eight stand in the table.
        assert sim.stats()["ok"] == 14, sim.stats()

    got = pl.read_delta(table).sort("id")
    assert got["id"].to_list() == list(range(12)), "one row per key"
    for r in got.iter_rows(named=True):
        assert r["result"] == f"echo: Classify: {second[r['id']]}", r
        assert r["error_message"] is None
    assert got.schema["id"] == pl.Int64
    assert got.schema["result"] == pl.String
    assert got.schema["prompt_tokens"] == pl.Int64
    assert got.schema["request_fingerprint"] == pl.String
    assert got.columns[2:] == aiq.OUTCOME_COLUMNS

    dt = deltalake.DeltaTable(table)
    assert dt.version() == 1, "one version per run"
    assert len(dt.history()) == 2
    assert dt.to_pyarrow_table().num_rows == 12
    # The first version, read as it was: the first run's ten rows.
    assert deltalake.DeltaTable(table, version=0).to_pyarrow_table().num_rows == 10


def test_rows_named_by_work_id_are_appended_once(tmp_path):
    table = str(tmp_path / "scores")
    data = tickets({i: f"ticket {i}" for i in range(6)})
    with aiq.Simulator() as sim:
        settings = dict(endpoint=sim.url, model="m", prompt="{{text}}", quiet=True, output_format="delta")
        first = aiq.run(data, output=table, work_id="night-1/part-0", **settings)
        assert first["rows"] == 6
        # The same rows under the same name again (a retried task; its
        # state is gone with the first attempt): neither sent nor appended.
        again = aiq.run(data, output=table, work_id="night-1/part-0", **settings)
        assert again["rows"] == 6 and again["resumed"] == 6, again
        assert sim.stats()["ok"] == 6
        # Another name is other work; rows with no name are appended
        # every time (they may be other rows of the same shape).
        aiq.run(data, output=table, work_id="night-2/part-0", **settings)
        aiq.run(data, output=table, **settings)
        aiq.run(data, output=table, **settings)
        assert sim.stats()["ok"] == 24
        path = tmp_path / "in.parquet"
        import pyarrow.parquet as pq

        pq.write_table(data, path)
        with pytest.raises(aiq.ConfigError, match="work_id"):
            aiq.run(str(path), output=table, work_id="night-3", **settings)
    dt = deltalake.DeltaTable(table)
    assert dt.to_pyarrow_table().num_rows == 24
    assert len(dt.history()) == 4

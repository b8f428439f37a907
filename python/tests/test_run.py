"""aiq.run and aiq.score: every input kind, result types and order,
output files, resume, and errors found before any request."""

import json

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aiq

OUTCOME_COLUMNS = aiq.OUTCOME_COLUMNS

SETTINGS = dict(endpoint="simulator", prompt="Summarize: {{text}}", quiet=True)


def as_reader(t: pa.Table) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=4))


def to_parquet(t: pa.Table) -> str:
    pq.write_table(t, "in.parquet")
    return "in.parquet"


def to_jsonl(t: pa.Table) -> str:
    with open("in.jsonl", "w") as f:
        for row in t.to_pylist():
            f.write(json.dumps(row) + "\n")
    return "in.jsonl"


KINDS = {
    "pyarrow.Table": lambda t: t,
    "pyarrow.RecordBatchReader": as_reader,
    "pyarrow.RecordBatch": lambda t: t.combine_chunks().to_batches()[0],
    "pandas.DataFrame": lambda t: t.to_pandas(),
    "polars.DataFrame (__arrow_c_stream__)": lambda t: pl.from_arrow(t),
    "iterator of RecordBatch": lambda t: iter(t.to_batches(max_chunksize=3)),
    "Parquet path": to_parquet,
    "JSONL path": to_jsonl,
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_input_kind(kind, reviews):
    out = aiq.run(KINDS[kind](reviews), batch_rows=8, as_="arrow", **SETTINGS)
    assert isinstance(out, pa.Table)
    assert out.column_names == ["id", "text", *OUTCOME_COLUMNS]
    assert out["id"].to_pylist() == list(range(reviews.num_rows))
    assert out["error_message"].null_count == reviews.num_rows
    assert all(isinstance(r, str) and r for r in out["result"].to_pylist())
    assert out.schema.field("result").type == pa.string()
    assert out.schema.field("prompt_tokens").type == pa.int64()
    assert out.schema.field("attempts").type == pa.int32()


def test_types_and_input_order_under_concurrency(reviews):
    # Small batches, many calls in flight, a jittery server: the output
    # still comes back in input order, typed as asked.
    with aiq.Simulator(latency_ms=20, fault_rate=0.2, faults="500", seed=7) as sim:
        out = aiq.run(
            reviews,
            endpoint=sim.url,
            model="m",
            prompt="Rate: {{text}}",
            return_type="STRUCT<score: INT, tags: ARRAY<STRING>>",
            concurrency=8,
            batch_rows=3,
            backoff_ms=1,
            quiet=True,
        )
    assert out["id"].to_pylist() == list(range(reviews.num_rows))
    result = out.schema.field("result").type
    assert pa.types.is_struct(result)
    assert result.field("score").type == pa.int32()
    assert pa.types.is_list(result.field("tags").type)
    assert all(isinstance(r["score"], int) for r in out["result"].to_pylist())
    assert out["error_message"].null_count == reviews.num_rows
    assert max(out["attempts"].to_pylist()) >= 1


def test_same_output_as_the_cli_file(reviews):
    # Without output= the table is what `aiq run` writes to its file.
    in_memory = aiq.run(reviews, **SETTINGS)
    summary = aiq.run(reviews, output="out.parquet", **SETTINGS)
    written = pq.read_table("out.parquet")
    assert written.schema == in_memory.schema
    assert written["result"].to_pylist() == in_memory["result"].to_pylist()
    assert summary["rows"] == reviews.num_rows
    assert summary["ok"] == reviews.num_rows
    assert summary["failed"] == 0 and summary["null"] == 0
    assert summary["usage"]["prompt_tokens"] > 0
    assert summary["output"] == "out.parquet"


def test_output_resumes_after_a_budget_stop(reviews, tmp_path):
    settings = dict(SETTINGS, concurrency=1, batch_rows=4)
    with pytest.raises(aiq.JobError, match="resume|budget|tokens"):
        aiq.run(reviews, output="out.parquet", max_tokens_total=200, **settings)
    journal = tmp_path / "out.parquet.aiq" / "journal.jsonl"
    done = len(journal.read_text().splitlines())
    assert 0 < done < reviews.num_rows
    assert not (tmp_path / "out.parquet").exists()
    summary = aiq.run(reviews, output="out.parquet", **settings)
    assert summary["resumed"] >= done
    assert summary["rows"] == reviews.num_rows
    out = pq.read_table("out.parquet")
    assert out["id"].to_pylist() == list(range(reviews.num_rows))
    assert out["error_message"].null_count == reviews.num_rows


def test_a_changed_input_resumes_with_the_new_rows(reviews):
    # Resuming is by row content: the answers of unchanged requests are
    # kept, and every output row holds the input as it is now.
    with pytest.raises(aiq.JobError):
        aiq.run(reviews, output="out.parquet", max_tokens_total=50, concurrency=1, **SETTINGS)
    other = reviews.append_column("extra", pa.array([1] * reviews.num_rows))
    summary = aiq.run(other, output="out.parquet", concurrency=1, **SETTINGS)
    assert summary["rows"] == reviews.num_rows
    out = pq.read_table("out.parquet")
    assert out["extra"].to_pylist() == [1] * reviews.num_rows
    assert out["id"].to_pylist() == reviews["id"].to_pylist()


def test_typo_in_a_column_is_a_config_error_before_any_request(reviews):
    with aiq.Simulator() as sim:
        with pytest.raises(aiq.ConfigError, match="txet") as e:
            aiq.run(reviews, endpoint=sim.url, model="m", prompt="Summarize: {{txet}}", quiet=True)
        assert isinstance(e.value, aiq.Error)
        assert sim.stats()["requests"] == 0


def test_unknown_setting_is_a_config_error(reviews):
    with pytest.raises(aiq.ConfigError, match="concurency"):
        aiq.run(reviews, concurency=4, **SETTINGS)
    with pytest.raises(aiq.ConfigError, match="return_type="):
        aiq.run(reviews, return_type="STRUNG", **SETTINGS)


def test_a_failing_endpoint_is_a_job_error(reviews):
    with aiq.Simulator(fail_first=1000) as sim:
        with pytest.raises(aiq.JobError, match="in a row") as e:
            aiq.run(reviews, endpoint=sim.url, model="m", prompt="{{text}}", max_retries=0, concurrency=1, quiet=True)
        assert isinstance(e.value, aiq.Error)
        assert not isinstance(e.value, aiq.ConfigError)
        # Stopped early: a handful of requests, not one per row.
        assert sim.stats()["requests"] < reviews.num_rows


def test_job_file_with_keyword_overrides(repo, tmp_path):
    summary = aiq.run(
        job=repo / "jobs" / "review-summaries.toml",
        input=str(repo / "examples" / "reviews.jsonl"),
        output=tmp_path / "summaries.parquet",
        simulator={"latency_ms": 0},
        quiet=True,
    )
    assert summary["rows"] == 200
    assert summary["ok"] + summary["null"] == 200


def test_score_streams_batches_in_order():
    reviews = pa.table({"id": list(range(400)), "text": [f"r{i}" for i in range(400)]})
    produced = []

    def batches():
        for b in reviews.to_batches(max_chunksize=5):
            produced.append(b.num_rows)
            yield b

    out = aiq.score(batches(), batch_rows=5, **SETTINGS)
    first = next(out)
    # Streaming: the first output batch arrives before the input is used up.
    assert sum(produced) < reviews.num_rows
    rest = list(out)
    table = pa.Table.from_batches([first, *rest])
    assert table["id"].to_pylist() == list(range(reviews.num_rows))
    assert table.column_names[-len(OUTCOME_COLUMNS):] == OUTCOME_COLUMNS


def test_a_bad_data_kind_is_a_config_error():
    with pytest.raises(aiq.ConfigError, match="cannot read"):
        aiq.run(42, **SETTINGS)


def test_input_columns_cross_the_boundary_without_copies():
    # The output's input columns are the caller's Arrow buffers, sliced
    # into batches (the Arrow C stream interface both ways), not copies.
    table = pa.table({"text": [f"review {i}" for i in range(100)]})
    values = table["text"].chunks[0].buffers()[2].address
    out = aiq.run(table, batch_rows=30, **SETTINGS)
    chunks = out["text"].chunks
    assert len(chunks) == 4
    assert all(c.buffers()[2].address == values for c in chunks)
    assert out["text"].to_pylist() == table["text"].to_pylist()


# What run() returns by default for each input kind: the caller's own.
RETURNED = {
    "pandas.DataFrame": pd.DataFrame,
    "polars.DataFrame (__arrow_c_stream__)": pl.DataFrame,
}


def column(out, name):
    """A column of a pyarrow, pandas or Polars table, as a list."""
    c = out[name]
    return c.to_pylist() if isinstance(c, pa.ChunkedArray) else c.to_list()


@pytest.mark.parametrize("kind", KINDS)
def test_the_callers_kind_comes_back(kind, reviews):
    out = aiq.run(KINDS[kind](reviews), batch_rows=8, **SETTINGS)
    assert type(out) is RETURNED.get(kind, pa.Table)
    assert list(out.columns if not isinstance(out, pa.Table) else out.column_names) == [
        "id",
        "text",
        *OUTCOME_COLUMNS,
    ]
    assert column(out, "id") == list(range(reviews.num_rows))
    assert all(isinstance(r, str) and r for r in column(out, "result"))


def test_pandas_keeps_its_index_so_results_join_back(reviews):
    df = reviews.to_pandas()
    df.index = [f"r{i}" for i in range(len(df))]
    out = aiq.run(df[df["id"] % 2 == 0], **SETTINGS)
    assert list(out.index) == [f"r{i}" for i in range(0, len(df), 2)]
    joined = df.join(out[["result"]])
    assert joined["result"].notna().sum() == len(out)
    assert joined.loc["r4", "result"] == out.loc["r4", "result"]


def test_as_asks_for_a_kind_whatever_the_input(reviews):
    assert isinstance(aiq.run(reviews, as_="pandas", **SETTINGS), pd.DataFrame)
    assert isinstance(aiq.run(reviews.to_pandas(), as_="polars", **SETTINGS), pl.DataFrame)
    assert isinstance(aiq.run(pl.from_arrow(reviews), as_="arrow", **SETTINGS), pa.Table)
    with pytest.raises(aiq.ConfigError, match=r"as_='csv': give one of 'arrow', 'pandas', 'polars'"):
        aiq.run(reviews, as_="csv", **SETTINGS)


def test_as_with_output_is_a_mistake(reviews, tmp_path):
    with pytest.raises(aiq.ConfigError, match="with output= a summary is returned"):
        aiq.run(reviews, output=tmp_path / "out.parquet", as_="pandas", **SETTINGS)
    assert not (tmp_path / "out.parquet").exists()

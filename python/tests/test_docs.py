"""The Python guide's examples run: every ```python block of
docs/guide/python.md, in order and in one namespace (as a reader pastes
them), in a temporary folder, against the built-in simulator; then what
they made is checked."""

import re

import pandas as pd
import polars as pl
import pyarrow as pa


def guide_blocks(repo):
    text = (repo / "docs" / "guide" / "python.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_python_guide_runs(repo, tmp_path, monkeypatch):
    blocks = guide_blocks(repo)
    assert len(blocks) >= 4, "the guide's examples were not found"
    monkeypatch.chdir(tmp_path)
    names = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/guide/python.md block {i + 1}", "exec"), names)

    # Classification: one of the labels per ticket, in a pandas frame.
    labeled = names["labeled"]
    assert isinstance(labeled, pd.DataFrame)
    assert labeled["error_message"].isna().all()
    assert set(labeled["result"]) <= {"shipping", "technical", "billing"}

    # pandas round trip: scored rows join back by index; the 5-star one was not sent.
    reviews = names["reviews"]
    assert isinstance(reviews, pl.DataFrame)  # the Polars block came last
    scored = names["scored"]
    assert isinstance(scored, pl.DataFrame)
    assert scored["result"].struct.field("score").dtype == pl.Int32
    assert isinstance(names["as_arrow"], pa.Table)


def test_the_pandas_round_trip_joins_by_index(repo, tmp_path, monkeypatch):
    (_, pandas_block, *_) = [b for b in guide_blocks(repo) if "pandas" in b]
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(pandas_block, "docs/guide/python.md pandas block", "exec"), names)
    reviews = names["reviews"]
    assert list(reviews.index) == ["a17", "b03", "c88"]
    assert pd.isna(reviews.loc["a17", "result"])  # 5 stars: not sent
    assert reviews.loc["b03", "result"].startswith("echo: ")
    assert reviews["error_message"].isna().all()

"""Settings: aiq.run takes every job-file key and aiq.sql every `aiq sql`
flag, through the same checks as the command line, and the type stubs list
each of them exactly once."""

import ast
import re
from pathlib import Path

import pyarrow as pa
import pytest

import aiq

STUB = Path(aiq.__file__).with_name("__init__.pyi")


def stub_keys(cls: str) -> list[str]:
    """The keys of the TypedDict `cls` in the installed stub, in order."""
    tree = ast.parse(STUB.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]


def stub_keyword_params(func: str) -> set[str]:
    """Keyword-only parameters of every definition (overload) of `func`."""
    tree = ast.parse(STUB.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func]
    assert defs, func
    return {a.arg for d in defs for a in d.args.kwonlyargs}


def job_file_keys() -> set[str]:
    """The job file's keys, as the Rust core lists them when given one it
    does not know (serde's `deny_unknown_fields` on JobSettings)."""
    with pytest.raises(aiq.ConfigError) as e:
        aiq.run(pa.table({"text": ["x"]}), endpoint="simulator", prompt="x", no_such_key=1)
    message = str(e.value)
    assert "no_such_key" in message and "expected one of" in message, message
    return set(re.findall(r"`(\w+)`", message.split("expected one of", 1)[1]))


def test_stub_lists_every_job_file_key_once():
    keys = stub_keys("RunSettings")
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    # `output` is a parameter of run() rather than a setting.
    assert set(keys) == job_file_keys() - {"output"}
    assert "output" in stub_keyword_params("run")


def test_run_takes_the_keys_that_only_job_files_had():
    # Keys whose values are tables or lists in TOML arrive as JSON: they
    # must mean the same.
    table = pa.table({"text": ["my parcel never came", "great"]})
    out = aiq.run(
        table,
        endpoint="simulator",
        prompt="{{text}}",
        function="ai_classify",
        labels=["delivery", "quality"],
        params={"temperature": 0},
        simulator={"latency_ms": 0},
        max_repairs=0,
        call_journal="calls",
        quiet=True,
    )
    assert out["error_message"].null_count == 2
    assert set(out["result"].to_pylist()) <= {"delivery", "quality"}
    assert Path("calls").is_dir()


def test_a_wrong_type_names_the_setting_and_labels_take_commas():
    # Issue 27.3: as on the command line, labels="a,b" is a list of labels.
    table = pa.table({"text": ["my parcel never came"]})
    out = aiq.run(
        table,
        endpoint="simulator",
        prompt="{{text}}",
        function="ai_classify",
        labels="delivery, quality",
        simulator={"latency_ms": 0},
        quiet=True,
    )
    assert set(out["result"].to_pylist()) <= {"delivery", "quality"}
    with pytest.raises(aiq.ConfigError) as e:
        aiq.run(table, endpoint="simulator", prompt="{{text}}", concurrency="many")
    assert str(e.value).startswith("setting `concurrency`: invalid type"), str(e.value)


def test_errors_name_python_keywords():
    # Issue 27.2: a Python caller is told prompt=, with an example that fits
    # the function, not the command line's --prompt.
    table = pa.table({"text": ["my parcel never came"]})
    with pytest.raises(aiq.ConfigError) as e:
        aiq.run(table, endpoint="simulator", function="ai_classify", labels=["a", "b"])
    message = str(e.value)
    assert "--" not in message, message
    assert "function=ai_classify needs the text to work on" in message, message
    assert "prompt=TEMPLATE, e.g. prompt='{{text}}'" in message, message


def sql_settings() -> set[str]:
    """aiq.sql's settings, as the Rust core lists them for one it does not
    know (every `aiq sql` flag that is not one of aiq.sql's parameters)."""
    with pytest.raises(aiq.ConfigError) as e:
        aiq.sql("SELECT 1", no_such_key=1)
    message = str(e.value)
    assert "no_such_key" in message, message
    return {k.strip() for k in message.split("it takes", 1)[1].split(",")}


def test_stub_lists_every_sql_flag_once():
    keys = stub_keys("SqlSettings")
    assert len(keys) == len(set(keys)), keys
    params = stub_keyword_params("sql") - {"tables", "output", "restart", "quiet"}
    assert not params & set(keys), "a setting is both a parameter and a key"
    assert set(keys) | params == sql_settings()
    assert {"context_tokens", "dry_run", "concurrency", "endpoint"} <= sql_settings()


def test_sql_dry_run_and_context_tokens_are_the_commands():
    table = pa.table({"text": [f"review {i} " + "words " * 40 for i in range(30)]})
    query = "SELECT ai_summarize_agg(text) AS s FROM t"
    with aiq.Simulator() as sim:
        wide = aiq.sql(query, tables={"t": table}, endpoint=sim.url, model="m", dry_run=True)
        narrow = aiq.sql(
            query, tables={"t": table}, endpoint=sim.url, model="m", dry_run=True, context_tokens=1000
        )
        assert sim.stats()["requests"] == 0, "a dry run sends nothing"
    assert isinstance(wide, str) and wide.startswith("dry run: nothing sent"), wide
    assert "--context-tokens 8192" in wide, wide
    assert "--context-tokens 1000" in narrow, narrow

    def most(report):
        return int(re.search(r"total: at most (\d+) AI calls", report).group(1))

    # A smaller context splits the group's values into more calls.
    assert most(narrow) > most(wide) >= 1


def test_sql_settings_are_checked_as_the_commands():
    t = {"t": pa.table({"text": ["a"]})}
    with pytest.raises(aiq.ConfigError, match="context_tokens= must be at least 1"):
        aiq.sql("SELECT text FROM t", tables=t, context_tokens=0)
    with pytest.raises(aiq.ConfigError, match="^setting `concurrency`: invalid type"):
        aiq.sql("SELECT text FROM t", tables=t, concurrency="many")
    # A wrong kind of value names its setting.
    with pytest.raises(aiq.ConfigError, match="^setting `model`: invalid type: sequence"):
        aiq.sql("SELECT text FROM t", tables=t, model=["a", "b"])
    with pytest.raises(aiq.ConfigError, match="has no setting `show`"):
        aiq.sql("SELECT text FROM t", tables=t, show=5)
    # A setting left at None is the command's default.
    assert aiq.sql("SELECT text FROM t", tables=t, rpm=None).num_rows == 1


def test_stub_lists_every_simulator_knob_once(capfd):
    assert aiq._core.main(["aiq", "simulate", "--help"]) == 0
    flags = set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", capfd.readouterr().out, re.M))
    knobs = {f.replace("-", "_") for f in flags} - {"help", "quiet", "verbose"}
    tree = ast.parse(STUB.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Simulator"]
    (init,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    listed = [a.arg for a in init.args.kwonlyargs]
    assert len(listed) == len(set(listed)), listed
    # A new `aiq simulate` flag belongs in python/aiq/__init__.pyi too.
    assert set(listed) == knobs, (knobs - set(listed), set(listed) - knobs)

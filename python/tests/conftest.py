"""Fixtures for the aiq Python package's tests (run by tests/all.sh after
building the package into the test venv; every test drives the real
package against the built-in simulator on 127.0.0.1)."""

import os
from pathlib import Path

import pyarrow as pa
import pytest

import aiq

REPO = Path(__file__).resolve().parents[2]


def pytest_sessionfinish(session, exitstatus):
    # A suite that ran nothing, or skipped anything, has not shown that the
    # package works: fail rather than pass quietly (pytest's own "no tests"
    # exit code 5 is turned into 1 too, so no caller can mistake it).
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if session.testscollected == 0 or skipped:
        session.exitstatus = 1


@pytest.fixture
def reviews() -> pa.Table:
    """Twenty-five rows with an id to check the order by."""
    n = 25
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": [f"review number {i}" for i in range(n)],
        }
    )


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _no_stray_output(tmp_path, monkeypatch):
    # Relative paths of a test land in its own folder.
    monkeypatch.chdir(tmp_path)
    yield

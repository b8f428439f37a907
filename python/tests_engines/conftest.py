"""Fixtures and rules for the engine tests (aiq.spark, aiq.ray), run by
tests/all.sh after the package's own tests, with pyspark and ray from
tests/requirements-engines.txt in the same venv.

Every test has a time limit (pytest-timeout): a hung Spark or Ray job
fails its test within minutes instead of holding CI until its limit. A
missing engine is an error, never a skip."""

import os

import pytest

try:
    import pytest_timeout  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "the engine tests need pytest-timeout, pyspark and ray: run tests/all.sh, "
        "or pip install -r tests/requirements-engines.txt"
    ) from e

# Seconds per test, setup included (a Spark session starts in ~10 s, Ray in
# ~5 s; the slowest test runs in well under a minute).
TIMEOUT = int(os.environ.get("AIQ_ENGINE_TEST_TIMEOUT", "240"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT))


def pytest_sessionfinish(session, exitstatus):
    # As python/tests: a run that ran nothing or skipped anything fails.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if session.testscollected == 0 or skipped:
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _no_stray_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield

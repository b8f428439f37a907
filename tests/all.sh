#!/usr/bin/env bash
# Every test aiq has, as CI runs it (.ci/run calls exactly this).
#
# 1. A venv with the real servers the tests start on 127.0.0.1 (pinned in
#    tests/requirements.txt; installed once, again only when the list
#    changes). Rust tests find its Python through AIQ_TEST_PYTHON.
# 2. The Rust tests, `aiq sql` included.
# 3. The Python package and its tests (below).
# 4. The Spark and Ray tests of aiq.spark / aiq.ray (below).
# Dependencies compile once: every cargo step here uses the dev profile
# and this clone's target folder.
set -euo pipefail
cd "$(dirname "$0")/.."

# No pip cache: the venv is kept between runs, so a cache only doubles what
# is on disk (PySpark comes as a 450 MB source archive that pip turns into a
# 450 MB wheel, and would keep both). CI's disk has run out here before.
export PIP_NO_CACHE_DIR=1
# Each step says where it is and how much disk is left, for CI's log.
step() { echo "== tests/all.sh: $1 ($(df -h --output=avail . | tail -1 | tr -d ' ') free)"; }

step "1/4 test venv"
venv="${AIQ_TEST_VENV:-$PWD/target/test-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Installed once; again only when either list changes. The second list is
# installed without its dependencies (see its header).
wanted="$(cat tests/requirements.txt tests/requirements-nodeps.txt)"
if [ "$wanted" != "$(cat "$venv/.requirements" 2>/dev/null)" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r tests/requirements-nodeps.txt
    printf '%s' "$wanted" > "$venv/.requirements"
fi
export AIQ_TEST_PYTHON="$venv/bin/python"

step "2/4 Rust tests"
# `delta` (Delta Lake) turns `sql` on too; python/Cargo.toml asks for the
# same features, so step 3 compiles no dependency again.
cargo test --locked --features sql,delta

# 3. The Python package (pyproject.toml) into the same venv, built by maturin
#    with the dev profile into this target folder: it reuses every
#    dependency the tests above compiled (the features are kept identical,
#    see Cargo.toml's dev-dependencies), so only the bindings compile. Then
#    its pytest suite, against the built-in simulator. The suite fails when
#    it runs no test or skips one (python/tests/conftest.py).
# (maturin's build backend runs the `maturin` on PATH: the venv's.)
step "3/4 Python package"
PATH="$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps --force-reinstall .
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests

# 4. The engines: aiq.spark and aiq.ray on a local Spark (local[2], UI off)
#    and a one-CPU Ray, against the built-in simulator (python/tests_engines).
#    pyspark and ray go into the same venv, resolved together with the pins
#    above (no second venv, no second build of the package); installed once,
#    again only when either list changes. Every test has a time limit
#    (python/tests_engines/conftest.py); `timeout` is the backstop for a
#    hang outside a test.
step "4/4 Spark and Ray"
if ! cat tests/requirements.txt tests/requirements-engines.txt | cmp -s - "$venv/.requirements-engines"; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -r tests/requirements.txt -r tests/requirements-engines.txt
    cat tests/requirements.txt tests/requirements-engines.txt >"$venv/.requirements-engines"
fi
timeout --kill-after=30 1200 "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests_engines

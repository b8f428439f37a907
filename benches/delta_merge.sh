#!/usr/bin/env bash
# The nightly merge (docs/guide/delta.md): a re-run over a Delta results
# table of ROWS rows whose input has grown by NEW_PCT percent new rows.
#
#   bash benches/delta_merge.sh                     # 1,000,000 rows, 1% new
#   ROWS=100000 NEW_PCT=5 bash benches/delta_merge.sh
#   AIQ=target/debug/aiq bash benches/delta_merge.sh   # a binary built apart
#
# Without AIQ it takes an optimised binary that is already there (the
# `profiling` build, then `release`, under CARGO_TARGET_DIR), so a figure is
# never a debug build's by accident; with neither it builds `profiling`
# (an hour on two shared cores: DataFusion and delta-rs optimised). A
# binary found there may be older than the source: rebuild it first
# (`cargo build --profile profiling --features sql,delta --bin aiq`) to
# measure the tree as it is.
#
# 1. scores ROWS rows into a fresh table (`--write-mode merge --merge-key id`)
#    against `aiq simulate` (no latency; a separate process);
# 2. times deciding what the re-run sends: `aiq run --dry-run` over the
#    grown input reads the table's keys and fingerprints and renders every
#    input row, sending nothing (wall seconds, peak RSS from /usr/bin/time);
# 3. runs the merge for real and prints the calls it sent and the calls
#    the table saved (aiq's summary: HTTP requests, and the simulator
#    injects no faults, so no retries).
#
# Goals (issue 28): under 10 s and under 300 MiB for step 2 at 1,000,000
# rows on the 2-core machine, and exactly the new rows sent in step 3.
# Needs `--features delta` in the binary, and python3 with pyarrow (the
# test venv's: AIQ_TEST_PYTHON) to write the inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
NEW_PCT=${NEW_PCT:-1}
CONCURRENCY=${CONCURRENCY:-128}
PYTHON=${AIQ_TEST_PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${AIQ:-}" ]; then
    for built in "$CARGO_TARGET_DIR/profiling/aiq" "$CARGO_TARGET_DIR/release/aiq"; do
        [ -x "$built" ] && AIQ="$built" && break
    done
fi
. benches/common/aiq.sh
built_aiq profiling sql,delta
echo "aiq: $AIQ"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aiq-delta-merge.XXXXXX")
trap 'kill "$SIM_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$AIQ" simulate --port 0 > "$WORK/sim.out" &
SIM_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/sim.out" && break; sleep 0.1; done
URL="$(awk '/listening/ {print $NF}' "$WORK/sim.out")"

NEW=$((ROWS * NEW_PCT / 100))
"$PYTHON" - "$ROWS" "$NEW" "$WORK" <<'PY'
import sys
import pyarrow as pa, pyarrow.parquet as pq
rows, new, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def table(n):
    ids = pa.array(range(n), pa.int64())
    return pa.table({"id": ids, "text": [f"ticket {i}: the product arrived late" for i in range(n)]})
pq.write_table(table(rows), f"{work}/base.parquet")
pq.write_table(table(rows + new), f"{work}/grown.parquet")
PY

# One command line for every step (an array, so that /usr/bin/time can run
# it: time runs programs, not shell functions).
JOB=("$AIQ" run --output "$WORK/scores" --output-format delta
    --write-mode merge --merge-key id --endpoint "$URL/v1" --model sim
    --prompt '{{text}}' --param max_tokens=8 --concurrency "$CONCURRENCY" --no-warmup
    --price-in 3 --price-out 15)

start=$(date +%s.%N)
OPENAI_API_KEY=x "${JOB[@]}" --input "$WORK/base.parquet" -q
echo "table of $ROWS rows written in $(echo "$(date +%s.%N) - $start" | bc) s"

OPENAI_API_KEY=x /usr/bin/time -v -o "$WORK/time.txt" "${JOB[@]}" --input "$WORK/grown.parquet" --dry-run > "$WORK/dry.txt"
grep '^rows' "$WORK/dry.txt"
awk -F': ' '
    /Elapsed \(wall clock\)/ { split($2, t, ":"); wall = (length(t) == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
    /Maximum resident/ { rss = $2 }
    END { printf "deciding what to send: %.1f s wall, %.1f MiB peak RSS\n", wall, rss / 1024 }
' "$WORK/time.txt"

OPENAI_API_KEY=x "${JOB[@]}" --input "$WORK/grown.parquet" 2> "$WORK/run.txt"
grep -E '^(requests|saved)' "$WORK/run.txt" || cat "$WORK/run.txt"
echo "new rows: $NEW"

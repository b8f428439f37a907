#!/usr/bin/env bash
# aiq's own speed budget, end to end: `aiq run` against the simulator with no
# latency (so aiq, not the "model", is the bottleneck), in a separate process
# so aiq's CPU time is its own.
#
#   bash benches/e2e.sh            # 100k, 200k and 1M rows (about a minute on 2 cores)
#   ROWS="20000" bash benches/e2e.sh
#   AIQ=target/profiling/aiq bash benches/e2e.sh   # a binary built apart
#   (cargo build --profile profiling --bin aiq: no LTO, affordable on 2 cores)
#
# Prints, per input size: rows/s at concurrency 256, peak memory (max RSS of
# aiq, from /usr/bin/time -v) and CPU time per row ((user+sys)/rows).
# Budget: under 50 µs CPU per row, under 200 MiB peak, and peak memory flat
# in the input size (the 1M-row run should use about what the 100k-row run does).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-"100000 200000 1000000"}
CONCURRENCY=${CONCURRENCY:-256}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
. benches/common/aiq.sh
built_aiq release
WORK=$(mktemp -d)
trap 'kill "$SIM_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$AIQ" simulate --port 0 > "$WORK/sim.out" &
SIM_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/sim.out" && break; sleep 0.1; done
URL="$(awk '/listening/ {print $NF}' "$WORK/sim.out")/v1"

printf '%10s %10s %12s %14s %10s\n' rows seconds rows/s "peak MiB" "µs CPU/row"
for n in $ROWS; do
    python3 - "$n" "$WORK/in-$n.jsonl" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write('{"id": %d, "product": "%s", "text": "Review %d: arrived on time, works as described, battery lasts two days."}\n'
                % (i, "phone" if i % 2 else "laptop", i))
PY
    /usr/bin/time -v -o "$WORK/time-$n.txt" "$AIQ" run -q --input "$WORK/in-$n.jsonl" --output "$WORK/out-$n.parquet" \
        --endpoint "$URL" --model sim --concurrency "$CONCURRENCY" --no-warmup \
        --prompt "Summarize this {{product}} review: {{text}}" --param max_tokens=16
    awk -v n="$n" -F': ' '
        /Elapsed \(wall clock\)/ { split($2, t, ":"); wall = (length(t) == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
        /User time/ { user = $2 } /System time/ { sys = $2 } /Maximum resident/ { rss = $2 }
        END { printf "%10d %10.1f %12.0f %14.1f %10.1f\n", n, wall, n / wall, rss / 1024, (user + sys) * 1e6 / n }
    ' "$WORK/time-$n.txt"
    rm -f "$WORK/in-$n.jsonl" "$WORK/out-$n.parquet"
done

#!/usr/bin/env bash
# Peak memory and CPU per row by row width: `aiq run` against `aiq simulate`
# (no latency, a separate process, so aiq's CPU time and RSS are its own),
# on JSONL inputs of 100-byte, 4 KB and 64 KB rows generated here.
#
#   bash benches/memory.sh                       # the three widths, 10x the issue's row counts
#   CASES="4096:40000" bash benches/memory.sh    # bytes:rows pairs
#   CONCURRENCY=256 bash benches/memory.sh
#
# Prints, per case: rows, bytes per row, wall seconds, rows/s, peak RSS of
# aiq (max RSS from /usr/bin/time -v) and CPU µs per row ((user+sys)/rows).
# Budget: peak under 200 MiB for every width and row count; CPU at most
# 25 µs per 100-byte row and 60 µs per 4 KB row.
#
# The default counts (1,000,000 x 100 B, 400,000 x 4 KB, 20,000 x 64 KB:
# 0.1, 1.6 and 1.3 GB of input) keep the whole run to a few minutes on two
# cores; the 64 KB case has half of 10x the issue's 40,000 rows, for disk
# and time, which does not matter for a bound that must not grow with rows.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-"100:1000000 4096:400000 65536:20000"}
CONCURRENCY=${CONCURRENCY:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
. benches/common/aiq.sh
built_aiq release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aiq-memory.XXXXXX")
trap 'kill "$SIM_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$AIQ" simulate --port 0 > "$WORK/sim.out" &
SIM_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/sim.out" && break; sleep 0.1; done
URL="$(awk '/listening/ {print $NF}' "$WORK/sim.out")/v1"

printf '%10s %8s %9s %10s %10s %11s\n' rows "B/row" seconds rows/s "peak MiB" "µs CPU/row"
for case in $CASES; do
    width=${case%%:*}
    n=${case##*:}
    # Text of `width` bytes per row: words, so zstd compresses it like prose.
    python3 - "$n" "$width" "$WORK/in.jsonl" <<'PY'
import sys, random
n, width, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
words = "the of and to in is that contract party shall agreement term notice payment within days".split()
rng = random.Random(7)
pool = " ".join(rng.choice(words) for _ in range(200_000))
with open(path, "w") as f:
    for i in range(n):
        start = rng.randrange(0, len(pool) - width - 1)
        text = pool[start:start + max(width - 40, 10)]
        f.write('{"id": %d, "product": "%s", "text": "%s"}\n' % (i, "phone" if i % 2 else "laptop", text))
PY
    /usr/bin/time -v -o "$WORK/time.txt" "$AIQ" run -q --input "$WORK/in.jsonl" --output "$WORK/out.parquet" \
        --endpoint "$URL" --model sim --concurrency "$CONCURRENCY" --no-warmup \
        --prompt "Summarize this {{product}} review: {{text}}" --param max_tokens=16
    awk -v n="$n" -v w="$width" -F': ' '
        /Elapsed \(wall clock\)/ { split($2, t, ":"); wall = (length(t) == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
        /User time/ { user = $2 } /System time/ { sys = $2 } /Maximum resident/ { rss = $2 }
        END { printf "%10d %8d %9.1f %10.0f %10.1f %11.1f\n", n, w, wall, n / wall, rss / 1024, (user + sys) * 1e6 / n }
    ' "$WORK/time.txt"
    rm -f "$WORK/in.jsonl" "$WORK/out.parquet"
done

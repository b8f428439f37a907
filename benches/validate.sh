#!/usr/bin/env bash
# The cost of checking the whole input before the first request: time and
# peak memory of `aiq run --explain` (which opens the input exactly as a
# run does — every JSONL line parsed and its columns inferred, every
# Parquet page decoded — then renders two rows and sends nothing) on a
# 1 GB JSON Lines file and a 1 GB Parquet file generated here.
#
#   bash benches/validate.sh                 # release build, 1 GB each
#   AIQ=target/debug/aiq bash benches/validate.sh
#   GB=0.25 bash benches/validate.sh         # smaller files
#   WIDTH=100 bash benches/validate.sh       # JSONL rows of ~100 bytes (default ~1 KB)
#
# Prints, per file: its size, wall seconds, CPU seconds and peak RSS (from
# farm-bench, median of 3 runs; /usr/bin/time -v when farm-bench is
# missing). Goal: under 3 s and 200 MiB for each 1 GB file on two cores.
# The files stay in target/validate-bench/ for reruns (delete to rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."
GB=${GB:-1}
WIDTH=${WIDTH:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
. benches/common/aiq.sh
built_aiq release sql
PYTHON=${PYTHON:-${AIQ_TEST_PYTHON:-python3}}
DIR="$CARGO_TARGET_DIR/validate-bench"
mkdir -p "$DIR"
JSONL="$DIR/in-${GB}gb-${WIDTH}b.jsonl"
PARQUET="$DIR/in-${GB}gb.parquet"

# Rows of about WIDTH bytes: an id, a short label, a number and prose-like text.
if [ ! -s "$JSONL" ]; then
    "$PYTHON" - "$GB" "$JSONL" "$WIDTH" <<'PY'
import json, random, sys
gb, path, width = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
words = "the of and to in is that contract party shall agreement term notice payment within days".split()
rng = random.Random(7)
pool = " ".join(rng.choice(words) for _ in range(400_000))
target, written, i = int(gb * 1e9), 0, 0
with open(path, "w") as f:
    while written < target:
        start = rng.randrange(0, len(pool) - width)
        line = json.dumps({"id": i, "product": "phone" if i % 2 else "laptop",
                           "score": i % 97 / 7, "text": pool[start:start + max(width - 70, 5)]}) + "\n"
        f.write(line)
        written += len(line)
        i += 1
PY
fi
# The same kind of rows as Parquet (pyarrow's defaults: snappy, 1 Mi-row
# groups), enough of them that the file is GB on disk.
if [ ! -s "$PARQUET" ]; then
    "$PYTHON" - "$GB" "$PARQUET" <<'PY'
import random, sys
import pyarrow as pa, pyarrow.parquet as pq
gb, path = float(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
# Random letters compress like dense text: the file's bytes are mostly data.
alphabet = "abcdefghijklmnopqrstuvwxyz      "
pool = "".join(rng.choice(alphabet) for _ in range(2_000_000))
target, i = int(gb * 1e9), 0
with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as w:
    while i * 950 < target:
        n = 100_000
        texts = [pool[(s := rng.randrange(0, len(pool) - 1000)):s + 950] for _ in range(n)]
        w.write_table(pa.table({"id": list(range(i, i + n)), "text": texts}))
        i += n
PY
fi

for input in "$JSONL" "$PARQUET"; do
    size=$(du -m "$input" | cut -f1)
    echo "== $input ($size MiB)"
    args=(run -q --input "$input" --output "$DIR/out.parquet" --endpoint simulator
          --prompt "{{ text }}" --explain)
    if command -v farm-bench > /dev/null; then
        farm-bench -n 3 --warmup 1 --timeout 600 -- "$AIQ" "${args[@]}"
    else
        /usr/bin/time -v -o "$DIR/time.txt" "$AIQ" "${args[@]}" > /dev/null
        grep -E "Elapsed|User time|System time|Maximum resident" "$DIR/time.txt"
    fi
done

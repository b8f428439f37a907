#!/usr/bin/env bash
# Anthropic figures (issue 25): `aiq run --endpoint anthropic` against
# `aiq simulate` (its Messages and Message Batches APIs, `--base-url`).
#
#   bash benches/anthropic.sh                 # both figures
#   AIQ=/path/to/aiq bash benches/anthropic.sh
#
# 1. Cache share: 1,000 rows with a ~1,500-token shared system prompt
#    (aiq marks it `cache_control`; the warm-up writes it once): the share
#    of input tokens read from the cache, and the rows that wrote it.
# 2. Cost of 10,000 rows online, in batch mode, and in batch mode with a
#    deadline that sends the unanswered part online, at Claude Haiku 4.5's
#    list prices (USD per million tokens: input 1.00, output 5.00, cache
#    reads 0.10; batch half of each; Anthropic's pricing page, 2025-10).
#    The token counts are the simulator's (4 bytes a token, a ~10-token
#    answer), so compare the three, not the absolute dollars.
# Prints, per run (from `aiq run --json`): rows, seconds, input tokens,
# cached tokens, cache-write tokens, output tokens and cost.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
. benches/common/aiq.sh
built_aiq dev sql
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aiq-anthropic.XXXXXX")
SIM_PID=
trap 'if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT

. benches/common/reviews.sh

simulate() {
    "$AIQ" simulate --port 0 --token bench "$@" > "$WORK/sim.out" 2>&1 &
    SIM_PID=$!
    for _ in $(seq 100); do grep -qs listening "$WORK/sim.out" && break; sleep 0.1; done
    URL="$(awk '/listening/ {print $NF}' "$WORK/sim.out")"
}

stop() {
    kill "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
    SIM_PID=
}

# aiq run NAME ROWS_FILE PRICE_IN PRICE_OUT PRICE_CACHED EXTRA...
score() {
    local name=$1 input=$2 pin=$3 pout=$4 pcached=$5
    shift 5
    rm -rf "$WORK/out.parquet" "$WORK/out.parquet.aiq"
    ANTHROPIC_API_KEY=bench "$AIQ" run -q --json --input "$input" --output "$WORK/out.parquet" \
        --endpoint anthropic --base-url "$URL" --model claude-haiku-4-5 --concurrency 32 \
        --system "$SYSTEM" --prompt "{{text}}" --param max_tokens=64 \
        --price-in "$pin" --price-out "$pout" --price-cached "$pcached" "$@" > "$WORK/summary.json"
    python3 - "$name" "$WORK/summary.json" "$WORK/out.parquet" <<'PY'
import json, sys
name, path, out = sys.argv[1:]
s = json.loads(open(path).read())
u = s.get("usage", {})
print("%-16s %6d %8.1f %11d %11d %11d %9d %9.4f" % (name, s["ok"], s["elapsed_secs"],
      u.get("prompt_tokens", 0), u.get("cached_tokens", 0), u.get("cache_write_tokens", 0),
      u.get("completion_tokens", 0), s.get("cost_usd") or 0.0))
PY
}

SYSTEM=$(python3 -c 'print("You grade short product reviews carefully and consistently. " * 100)')
printf '%-16s %6s %8s %11s %11s %11s %9s %9s\n' run rows seconds input cached written output cost
reviews 1000 "$WORK/1k.jsonl"
simulate
score "cache-1k" "$WORK/1k.jsonl" 1.00 5.00 0.10
stop

reviews 10000 "$WORK/10k.jsonl"
simulate --batch-turnaround-ms 4000
score "online-10k" "$WORK/10k.jsonl" 1.00 5.00 0.10
score "batch-10k" "$WORK/10k.jsonl" 0.50 2.50 0.05 --mode batch --poll-secs 0.5
# The deadline comes before the batch is done: the rest goes online (its
# rows priced at the online prices would cost more; aiq prices every row
# at the prices given, here the batch ones: see batch-mode.md).
score "deadline-10k" "$WORK/10k.jsonl" 0.50 2.50 0.05 --mode batch --poll-secs 0.5 --deadline 2s
stop

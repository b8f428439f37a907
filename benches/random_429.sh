#!/usr/bin/env bash
# Random 429s: `aiq run` against `aiq simulate` whose refusals are unrelated
# to load (`--faults 429`: `Retry-After: 1`, no rate headers, at any pace),
# not told any limit. The pace must not fall for them (issue 23.4: the job
# ran at about 1 row/s with 40% random faults and ten times slower with 5%
# random 429s than without).
#
#   bash benches/random_429.sh                  # the three scenarios below
#   AIQ=/path/to/aiq-before bash benches/random_429.sh   # another runner
#   SIM=/path/to/aiq bash benches/random_429.sh # the simulator from another build
#   RUNS=3 bash benches/random_429.sh           # repeat each (other seeds)
#
# Scenarios, 300 rows at concurrency 32 and 300 ms calls (the issue's):
#   none       no faults
#   429-5%     5% of requests refused with 429 at random
#   faults-40% 40% of requests fail at random, drawn evenly from 500, 502,
#              503, a reset connection and 429 (8% of requests are 429s)
#   5xx-32%    the same faults without the 429s: what the retries of the
#              other faults cost alone (the least faults-40% can take)
# Prints, per run (from `aiq run --json`): seconds, requests sent
# (retries included), 429s among them, rows answered and rows failed. The runner's dev build is fine: pacing and retries,
# not CPU, set these times (`cargo build --features sql` builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
. benches/common/aiq.sh
built_aiq dev sql
SIM=${SIM:-$AIQ}
ROWS=${ROWS:-300}
RUNS=${RUNS:-1}
SCENARIOS=${SCENARIOS:-"none 429-5% faults-40%"}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aiq-random429.XXXXXX")
SIM_PID=
trap 'if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT

. benches/common/reviews.sh
reviews "$ROWS" "$WORK/in.jsonl"

faults_of() {
    case "$1" in
        none) echo "--fault-rate 0" ;;
        429-5%) echo "--fault-rate 0.05 --faults 429" ;;
        faults-40%) echo "--fault-rate 0.4 --faults 500,502,503,reset,429" ;;
        5xx-32%) echo "--fault-rate 0.32 --faults 500,502,503,reset" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

printf '%-11s %4s %8s %9s %6s %9s %7s\n' scenario run seconds requests "429s" answered failed
for scenario in $SCENARIOS; do
    for run in $(seq "$RUNS"); do
        # shellcheck disable=SC2046
        "$SIM" simulate --port 0 --latency-ms 300 --seed "$run" \
            $(faults_of "$scenario") > "$WORK/sim.out" 2>&1 &
        SIM_PID=$!
        for _ in $(seq 100); do grep -qs listening "$WORK/sim.out" && break; sleep 0.1; done
        URL="$(awk '/listening/ {print $NF}' "$WORK/sim.out")"
        rm -rf "$WORK/out.parquet" "$WORK/out.parquet.aiq"
        OPENAI_API_KEY=bench "$AIQ" run -q --json --input "$WORK/in.jsonl" --output "$WORK/out.parquet" \
            --endpoint "$URL/v1" --model sim --concurrency 32 --no-warmup \
            --prompt "Summarize: {{text}}" --param max_tokens=16 > "$WORK/summary.json" || true
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
        SIM_PID=
        python3 - "$scenario" "$run" "$WORK/summary.json" <<'PY'
import json, sys
scenario, run, path = sys.argv[1:]
text = open(path).read()
if not text.strip():
    sys.exit(print("%-11s %4s  stopped early (no summary)" % (scenario, run)))
s = json.loads(text)
print("%-11s %4s %8.1f %9d %6d %9d %7d" % (scenario, run, s["elapsed_secs"], s["requests"],
      s["rate_limited"], s["ok"], s["failed"]))
PY
    done
done

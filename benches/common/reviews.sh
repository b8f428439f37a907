# Sourced by the bench scripts: `reviews N PATH` writes N one-line
# reviews as JSONL ({"id", "text"}) to PATH, the input they score.
reviews() {
    python3 - "$1" "$2" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write('{"id": %d, "text": "Review %d: arrived on time, works as described."}\n' % (i, i))
PY
}

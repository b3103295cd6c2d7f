#!/usr/bin/env bash
# Redis instructions per task for ballast's two hot paths, counted by callgrind: a batched
# submit of N tasks (`ballast submit --file`, batches of 1,000) and the drain of those N
# tasks by one `ballast worker` of capacity C. An instruction count is the same from run to
# run whatever else the machine does, so it shows a change of a few percent that wall time
# and even `INFO cpu` hide; it does not count the kernel's socket work.
#
# Usage: bench/instructions.sh [N] [C]     (defaults 10000 and 256; about two minutes)
# Needs valgrind (apt-get install -y valgrind) and redis-server >= 7, and builds the
# release binary first.
set -euo pipefail

n=${1:-10000}
capacity=${2:-256}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p ballast-cli
ballast="$root/target/release/ballast"
for tool in valgrind callgrind_control redis-server redis-cli awk; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing" >&2; exit 1; }
done

dir=$(mktemp -d)
server=""
worker=""
# Waits up to $2 seconds for process $1 to end; kills it if it has not.
reap() {
  for _ in $(seq 1 $(($2 * 5))); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  # The worker leaves through Redis, so it goes first.
  if [ -n "$worker" ]; then kill -INT "$worker" 2>/dev/null || true; reap "$worker" 30; fi
  if [ -n "$server" ]; then
    redis-cli -s "$dir/r.sock" shutdown nosave >/dev/null 2>&1 || kill "$server" 2>/dev/null || true
    reap "$server" 30
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "instructions.sh: $*" >&2; exit 1; }

# One task per line (about 100 bytes of payload, as the bench sends):
# {"kind": "noop", "payload": {"i": I, "pad": "xx...x" (80)}}
case $n in '' | *[!0-9]*) fail "N must be a whole number, not '$n'" ;; esac
awk -v n="$n" 'BEGIN {
  pad = sprintf("%80s", ""); gsub(/ /, "x", pad)
  for (i = 0; i < n; i++)
    printf "{\"kind\": \"noop\", \"payload\": {\"i\": %d, \"pad\": \"%s\"}}\n", i, pad
}' >"$dir/tasks.jsonl"

valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
  redis-server --port 0 --unixsocket "$dir/r.sock" --save '' --appendonly no --dir "$dir" \
  >"$dir/server.log" 2>&1 &
server=$!
cli() { redis-cli -s "$dir/r.sock" "$@"; }
# Under callgrind the server takes seconds to start.
for _ in $(seq 1 150); do cli ping >/dev/null 2>&1 && break; sleep 0.2; done
cli ping >/dev/null 2>&1 || fail "redis-server under valgrind did not start (see $dir/server.log)"
url="redis+unix://$dir/r.sock"

# Instructions since the last zeroing (callgrind_control dumps a file per request).
counted() {
  callgrind_control -d "$server" >/dev/null
  grep -hE '^(summary|totals):' "$(ls -t "$dir"/cg.out.* | head -1)" | head -1 | awk '{print $2}'
}

# One task first: loads the function library, which is not what is measured.
"$ballast" submit --redis "$url" --queue ib --kind noop >/dev/null
# Every finished task is kept, so that the count below reaches n + 1.
"$ballast" retention --redis "$url" --queue ib --keep $((n + 1)) >/dev/null
callgrind_control -z "$server" >/dev/null
"$ballast" submit --redis "$url" --queue ib --file "$dir/tasks.jsonl" >/dev/null
submit=$(counted)

callgrind_control -z "$server" >/dev/null
"$ballast" worker --redis "$url" --queue ib --capacity "$capacity" --id ib >/dev/null 2>&1 &
worker=$!
# The drain runs some 50 times slower than natively: allow a generous hour.
deadline=$((SECONDS + 3600))
until [ "$(cli llen 'ballast:{ib}:succeeded' 2>/dev/null || echo 0)" -ge $((n + 1)) ]; do
  kill -0 "$worker" 2>/dev/null || fail "the worker exited before the drain ended"
  [ $SECONDS -lt $deadline ] || fail "the drain did not end within an hour"
  sleep 0.2
done
drain=$(counted)

echo "tasks: $n, worker capacity: $capacity"
echo "submit: $((submit / n)) Redis instructions per task"
echo "drain:  $((drain / n)) Redis instructions per task"

#!/usr/bin/env bash
# Times a restart of isle on a data dir holding MESSAGES queued messages.
# usage: docs/measure-recovery.sh [MESSAGES] [SHARDS] [CPUS]
# Writes the log with server/examples/fill_log.rs (the server's own Log
# code), then starts the release binary on it and reports the time until
# its "isle ready" line and its replay line.
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-10000000}
shards=${2:-1}
cpus=${3:-0}
dir=$(mktemp -d /tmp/isle-recovery.XXXXXX)
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cargo build -q --release -p server --bin isle --example fill_log
target/release/examples/fill_log --data-dir "$dir" --shards "$shards" \
  --accounts 100000 --messages "$messages"
du -sh "$dir"
out="$dir/out" err="$dir/err"
start=$(date +%s.%N)
RUST_LOG=info target/release/isle --data-dir "$dir" --shards "$shards" --cpus "$cpus" \
  --no-tls --plaintext-listen 127.0.0.1:0 --test-numbers +1555:111111 >"$out" 2>"$err" &
pid=$!
until grep -q "isle ready" "$out" 2>/dev/null; do
  kill -0 $pid 2>/dev/null || { tail "$err"; exit 1; }
  sleep 0.01
done
end=$(date +%s.%N)
echo "ready after $(echo "$end - $start" | bc) s; $(grep VmRSS /proc/$pid/status)"
grep replayed "$err" | sed 's/^.*INFO  isle\] //'

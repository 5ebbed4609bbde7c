#!/usr/bin/env bash
# Closed-loop chat throughput of two isle binaries, interleaved in one run so
# that both see the same machine noise. Each round starts a fresh server
# (one shard on CPU 0) and runs the same loadgen (CPU 1) against it.
# Usage: docs/compare-servers.sh OLD_ISLE NEW_ISLE [rounds] [extra isle flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-4}; shift $(( $# < 3 ? $# : 3 ))
steal() { awk '/^cpu /{print $9}' /proc/stat; }
for round in $(seq "$rounds"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    dir=$(mktemp -d)
    "$bin" --data-dir "$dir" --shards 1 --cpus 0 --no-tls --plaintext-listen 127.0.0.1:0 \
        --test-numbers +1555:111111 "$@" >"$dir/ready" 2>/dev/null &
    pid=$!
    while ! grep -q ready "$dir/ready" 2>/dev/null; do sleep 0.05; done
    target=$(grep -o 'plaintext=[^ ]*' "$dir/ready" | cut -d= -f2)
    s0=$(steal)
    result=$(./target/release/loadgen --target "$target" --phones 10000 --duration 15 --warmup 3 \
        --cpus 1 --json 2>/dev/null | tail -1 | python3 -c \
        'import json,sys; d=json.load(sys.stdin); print(round(d["delivered_per_s"]), "lost", d["lost"])')
    echo "round=$round $which delivered_per_s=$result steal_jiffies=$(( $(steal) - s0 ))"
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"
  done
done

#!/usr/bin/env bash
# Server RSS per idle logged-in phone: `loadgen idle` ramps up to as many
# phones as the open-file limit allows and fits RSS against phones.
# Usage: docs/measure-idle-rss.sh [plaintext|tls]   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-plaintext}
dir=$(mktemp -d)
./target/release/isle --data-dir "$dir" --shards 1 --cpus 0 --listen 127.0.0.1:0 \
    --plaintext-listen 127.0.0.1:0 --test-numbers +1555:111111 >"$dir/ready" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
while ! grep -q ready "$dir/ready" 2>/dev/null; do sleep 0.05; done
extra=()
if [ "$mode" = tls ]; then
  target=$(grep -o 'tls=[^ ]*' "$dir/ready" | cut -d= -f2); extra=(--tls)
else
  target=$(grep -o 'plaintext=[^ ]*' "$dir/ready" | cut -d= -f2)
fi
./target/release/loadgen idle --target "$target" "${extra[@]}" --server-pid "$pid" \
    --cpus 1 --hold 2 --json 2>/dev/null | tail -3

#!/usr/bin/env bash
# Presence updates per server core at a ladder of change rates, and what a
# presence storm costs 1:1 chat latency: chat alone, then chat beside
# storms of two sizes, interleaved round by round. Each run gets a fresh
# server (one shard on CPU 0, durable journal); every loadgen is on CPU 1.
# Prints one JSON object per run (loadgen's report, plus "run" and "round").
# Usage: docs/measure-presence.sh [rounds] > results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
isle=./target/release/isle loadgen=./target/release/loadgen

start_server() {
  dir=$(mktemp -d)
  "$isle" --data-dir "$dir/data" --shards 1 --cpus 0 --no-tls --plaintext-listen 127.0.0.1:0 \
      --test-numbers +1555:111111 >"$dir/ready" 2>/dev/null &
  pid=$!
  while ! grep -q ready "$dir/ready" 2>/dev/null; do sleep 0.05; done
  target=$(grep -o 'plaintext=[^ ]*' "$dir/ready" | cut -d= -f2)
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
tag() { python3 -c 'import json,sys; d=json.loads(sys.stdin.readlines()[-1]); d.pop("curves",None); d["run"]=sys.argv[1]; d["round"]=int(sys.argv[2]); print(json.dumps(d))' "$@"; }

presence() { # rate duration first-phone
  "$loadgen" presence --target "$target" --phones 2000 --contacts 8 --rate "$1" \
      --duration "$2" --warmup 3 --cpus 1 --first-phone "$3" --server-pid "$pid" --json
}
chat() {
  "$loadgen" chat --target "$target" --phones 2000 --rate 2000 --duration 15 --warmup 3 \
      --cpus 1 --server-pid "$pid" --json 2>/dev/null
}

for round in $(seq "$rounds"); do
  [ -n "${CHAT_ONLY:-}" ] ||
  for rate in 2000 8000 20000; do
    start_server
    presence "$rate" 15 +15551000000 2>/dev/null | tag "presence-$rate" "$round"
    stop_server
  done
  for storm in 0 2000 8000; do
    start_server
    if [ "$storm" -gt 0 ]; then
      log=$(mktemp)
      presence "$storm" 120 +15559000000 >/dev/null 2>"$log" &
      storm_pid=$!
      while ! grep -q "phones following" "$log"; do sleep 0.1; done
      sleep 3 # past the storm's own warm-up
    fi
    chat | tag "chat-storm-$storm" "$round"
    if [ "$storm" -gt 0 ]; then
      kill "$storm_pid"; wait "$storm_pid" 2>/dev/null || true; rm -f "$log"
    fi
    stop_server
  done
done

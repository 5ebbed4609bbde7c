#!/usr/bin/env bash
# Server RSS per idle logged-in phone, as the slope between two populations.
# Usage: docs/measure-idle-rss.sh [plaintext|tls]   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-plaintext}
rss_at() {
  local phones=$1 dir; dir=$(mktemp -d)
  ./target/release/isle --data-dir "$dir" --shards 1 --cpus 0 --listen 127.0.0.1:0 \
      --plaintext-listen 127.0.0.1:0 --test-numbers +1555:111111 >"$dir/ready" 2>/dev/null &
  local pid=$!
  while ! grep -q ready "$dir/ready" 2>/dev/null; do sleep 0.05; done
  local target extra=()
  if [ "$mode" = tls ]; then
    target=$(grep -o 'tls=[^ ]*' "$dir/ready" | cut -d= -f2); extra=(--tls)
  else
    target=$(grep -o 'plaintext=[^ ]*' "$dir/ready" | cut -d= -f2)
  fi
  # One message per second in total: the phones are idle but logged in.
  ./target/release/loadgen --target "$target" "${extra[@]}" --phones "$phones" --rate 1 \
      --duration 6 --warmup 0 --cpus 1 >/dev/null 2>&1 &
  local lg=$!
  sleep 1; while [ "$(ls /proc/$pid/fd | wc -l)" -lt "$phones" ]; do sleep 0.2; done; sleep 2
  local rss; rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  wait $lg || true; kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
  echo "$rss"
}
low=$(rss_at 1000); high=$(rss_at 18000)
echo "mode=$mode rss_kib_1000=$low rss_kib_18000=$high bytes_per_phone=$(( (high - low) * 1024 / 17000 ))"

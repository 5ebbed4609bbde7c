#!/usr/bin/env bash
# Closed-loop chat throughput with the in-memory journal, the durable log, and
# the log behind a 1 s write-back cache (`delay`), interleaved in one run
# (one shard on CPU 0, loadgen on CPU 1); the log bytes each durable run
# left, and the bytes written to the disk during the load, by the server
# and by the device. Usage: docs/compare-journals.sh (after cargo build
# --release).
set -uo pipefail
cd "$(dirname "$0")/.."
steal() { awk '/^cpu /{print $9}' /proc/stat; }
for round in 1 2 3; do
for j in memory log delay; do
  D=$(mktemp -d)
  target/release/isle --data-dir $D --shards 1 --cpus 0 --no-tls --plaintext-listen 127.0.0.1:0 --test-numbers +1555:111111 $(case $j in delay) echo --journal log --sync-delay-ms 1000;; *) echo --journal $j;; esac) > $D/ready 2>$D/err & SP=$!
  while ! grep -q ready $D/ready 2>/dev/null; do sleep 0.05; done
  T=$(grep -o 'plaintext=[^ ]*' $D/ready | cut -d= -f2)
  s0=$(steal)
  # Bytes the server sent to the disk (all its threads, the segment zeroing
  # and checkpoints included), and sectors the device wrote (ext4's journal
  # included), both over the load only.
  w0=$(awk '/^write_bytes/ {print $2}' /proc/$SP/io)
  d0=$(awk '$3 == "vda" {printf "%.0f", $10 * 512}' /proc/diskstats)
  r=$(target/release/loadgen --target $T --phones 10000 --duration 15 --warmup 3 --cpus 1 --json 2>/dev/null | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['delivered_per_s']), 'lost', d['lost'])")
  w1=$(awk '/^write_bytes/ {print $2}' /proc/$SP/io)
  d1=$(awk '$3 == "vda" {printf "%.0f", $10 * 512}' /proc/diskstats)
  du=$(du -sb $D/log 2>/dev/null | cut -f1)
  kill $SP; wait $SP 2>/dev/null
  # The journal's counters, logged at shutdown: records, batches, syncs, bytes.
  nw=$(grep -o 'messages_stored: [0-9]*\|messages_never_written: [0-9]*' $D/err | head -2 | tr -d ' ' | tr ':' '=' | tr '\n' ' ')
  js=$(grep -o 'journal JournalStats {[^}]*}' $D/err | sed 's/journal JournalStats { //; s/ }//; s/, / /g; s/: /=/g' | head -1)
  echo "round=$round journal=$j delivered_per_s=$r log_bytes=${du:-0} io_write_bytes=$((w1 - w0)) device_write_bytes=$((d1 - d0)) steal=$(( $(steal) - s0 )) $js $nw"
  rm -rf $D
done; done

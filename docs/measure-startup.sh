#!/usr/bin/env bash
# Times isle's first start (an empty data dir) and a restart of the same
# dir, from exec to its "isle ready" line, at several shard counts, for
# one or more builds interleaved round by round.
# usage: docs/measure-startup.sh ROUNDS "SHARDS..." BINARY...
#   e.g. docs/measure-startup.sh 5 "1 2 8 32" /tmp/isle-before /tmp/isle-after
# Prints one line per start: binary, shards, round, first and restart
# seconds, and the segment bytes on disk once ready. The data dir is made
# under $ISLE_MEASURE_DIR (default /var/tmp), on the disk being measured;
# $ISLE_MEASURE_FLAGS are added to every start (`--journal memory` gives
# the floor: a start that writes nothing).
set -euo pipefail
rounds=$1
shard_counts=$2
shift 2
base=${ISLE_MEASURE_DIR:-/var/tmp}
ISLE_MEASURE_FLAGS=${ISLE_MEASURE_FLAGS:-}

# Starts $1 on data dir $2 with $3 shards; leaves the seconds until ready
# in $elapsed and the process id in $pid.
start() {
  local bin=$1 dir=$2 shards=$3 begin end
  rm -f "$dir.out"
  begin=$(date +%s.%N)
  "$bin" --data-dir "$dir" --shards "$shards" --no-tls \
    --plaintext-listen 127.0.0.1:0 $ISLE_MEASURE_FLAGS >"$dir.out" 2>"$dir.err" &
  pid=$!
  until grep -q "isle ready" "$dir.out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail "$dir.err" >&2; exit 1; }
    sleep 0.005
  done
  end=$(date +%s.%N)
  elapsed=$(echo "$end - $begin" | bc)
}

stop() {
  kill -TERM "$pid"
  wait "$pid" || true
}

for round in $(seq 1 "$rounds"); do
  for shards in $shard_counts; do
    for bin in "$@"; do
      dir=$(mktemp -d "$base/isle-startup.XXXXXX")
      start "$bin" "$dir" "$shards"
      first=$elapsed
      bytes=$(find "$dir" -name '*.log' -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s}')
      stop
      start "$bin" "$dir" "$shards"
      again=$elapsed
      stop
      rm -rf "$dir" "$dir.out" "$dir.err"
      echo "$(basename "$bin") shards=$shards round=$round first_s=$first restart_s=$again segment_bytes=$bytes"
    done
  done
done

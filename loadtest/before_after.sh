#!/bin/bash
# Issue 11 point 8: two herald builds measured in one sitting, interleaved, against
# floor_sse and axum_sse (BENCHMARKS.md, "Before and after the connection-core refactor").
# Usage: before_after.sh BEFORE_HERALD AFTER_HERALD LOADTEST FLOOR_SSE AXUM_SSE OUTDIR
# Each run's report lands in OUTDIR as <name>-<port>.txt and .json. Loopback ports from
# 18301 up; about 15 minutes.
set -u
B=$1; A=$2; L=$3; F=$4; X=$5; OUT=$6
mkdir -p $OUT
port=18300
one() { # name cmd... ; then loadtest args after --
  local name=$1; shift
  local args=(); while [ "$1" != "--" ]; do args+=("$1"); shift; done; shift
  port=$((port+1))
  local addr=127.0.0.1:$port
  "${args[@]//ADDR/$addr}" >/dev/null 2>&1 &
  local pid=$!
  sleep 0.5
  timeout 300 $L run --target herald --addr $addr --server-pid $pid --name $name "$@" --json $OUT/$name-$port.json > $OUT/$name-$port.txt 2>&1
  echo "$name $port rc=$?"
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  sleep 1
}
for round in 1 2; do
  one before-idle $B serve --listen ADDR --threads 2 -- --scenario idle --subscribers 10000
  one after-idle $A serve --listen ADDR --threads 2 -- --scenario idle --subscribers 10000
done
for round in 1 2; do
  one floor-spread $F ADDR -- --scenario spread
  one before1-spread $B serve --listen ADDR --threads 1 -- --scenario spread
  one after1-spread $A serve --listen ADDR --threads 1 -- --scenario spread
  one before2-spread $B serve --listen ADDR --threads 2 -- --scenario spread
  one after2-spread $A serve --listen ADDR --threads 2 -- --scenario spread
done
for round in 1 2; do
  one floor-fanout $F ADDR -- --scenario fanout
  one before2-fanout $B serve --listen ADDR --threads 2 -- --scenario fanout
  one after2-fanout $A serve --listen ADDR --threads 2 -- --scenario fanout
done
for round in 1 2; do
  one axum-fanout20 $X ADDR 2 -- --scenario fanout --rate 20 --payload-bytes 64
  one before2-fanout20 $B serve --listen ADDR --threads 2 -- --scenario fanout --rate 20 --payload-bytes 64
  one after2-fanout20 $A serve --listen ADDR --threads 2 -- --scenario fanout --rate 20 --payload-bytes 64
done

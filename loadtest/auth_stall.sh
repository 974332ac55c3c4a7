#!/usr/bin/env bash
# What a stalled or failing auth backend does to the latency of subscribers already
# streaming: herald --auth-url to tests/clients/auth_app.py; loadtest fanout (2,000
# subscribers admitted with token=load, cached, 200 events/s for 10 s) alone, then while 32
# threads keep opening subscriptions whose decision stalls (token=stall: the app sleeps
# 60 s) or fails (token=broken: 500). Rounds interleaved. Needs a release build
# (cargo build --release --workspace --bins); BENCHMARKS.md has the figures.
set -euo pipefail
WT=${WT:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=$WT/target/release
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/auth_stall}
mkdir -p $OUT
python3 $WT/tests/clients/auth_app.py > $OUT/app.port &
APP=$!
sleep 1
APP_PORT=$(awk '{print $2}' $OUT/app.port)
$BIN/herald serve --listen 127.0.0.1:0 --threads 2 --auth-url http://127.0.0.1:$APP_PORT/auth \
  --auth-workers 4 --auth-queue 1024 --auth-timeout-ms 2000 --auth-cache-ms 600000 2> $OUT/herald.err &
HERALD=$!
sleep 1
ADDR=$(grep -o 'http://[0-9.:]*' $OUT/herald.err | head -1 | sed 's|http://||')
trap 'kill $HERALD $APP 2>/dev/null || true' EXIT
run() { # name flood-token
  local name=$1 token=$2 flood=
  # A run that fails writes no report: an older one in $OUT must not stand in for it.
  rm -f "$OUT/$name.json" "$OUT/$name.flood"
  $BIN/loadtest run --sub-url "http://$ADDR/events?topic={topic}&token=load" \
    --pub-url "http://$ADDR/publish?topic={topic}" --server-pid $HERALD --name $name \
    --scenario fanout --subscribers 2000 --rate 200 --duration 10 --per-source 2000 \
    --json $OUT/$name.json > $OUT/$name.txt 2>&1 &
  local load=$!
  if [ "$token" != none ]; then
    # Once the subscribers are in (the cached decision admits them in well under 3 s),
    # 32 threads keep opening subscriptions whose decision stalls or fails.
    sleep 3
    python3 $WT/loadtest/auth_flood.py $ADDR $token 12 32 > $OUT/$name.flood &
    flood=$!
  fi
  wait $load || true
  [ -n "$flood" ] && wait $flood
  python3 - "$OUT/$name.json" "$name" "$OUT/$name.flood" <<'PY'
import json, sys, os
r = json.load(open(sys.argv[1]))
lat = r["latency"]
flood = open(sys.argv[3]).read().strip() if os.path.exists(sys.argv[3]) else "-"
print(sys.argv[2], "p50 %.2f p90 %.2f p99 %.2f max %.1f" % (lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["max_ms"]),
      "cpu/M %.2f" % (r.get("server_cpu_seconds_per_million") or 0),
      "received", r["received"], "of", r["expected"], "connected", r["connected"], "flood", flood, flush=True)
PY
}
for round in $(seq 1 $ROUNDS); do
  run base$round none
  run stall$round stall
  run fail$round broken
done
echo "herald's auth counters over the whole run:"
python3 - "$ADDR" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
print("\n".join(l for l in text.splitlines() if l.startswith("herald_auth_")))
PY

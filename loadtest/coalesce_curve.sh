#!/usr/bin/env bash
# The --coalesce-ms curve (issue 13, point 6): CPU per million deliveries and p50/p99 in the
# spread scenario for herald with one and two loops at N = 0, 1, 2, 5, 10, floor_sse with
# and without its 5 ms window, and nginx + nchan (a `loadtest peers` run against herald one
# loop N = 0), in rotated rounds. Needs a release build (cargo build --release --workspace
# --bins) and nginx with the nchan module; BENCHMARKS.md ("`--coalesce-ms`") has the figures.
set -euo pipefail
WT=${WT:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=$WT/target/release
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/coalesce_curve}
PORT=${PORT:-21000}
mkdir -p "$OUT"

specs=("peers|herald|--threads 1 --coalesce-ms 0")
for loops in 1 2; do
  for n in 0 1 2 5 10; do
    specs+=("herald-${loops}-loop-N$n|herald|--threads $loops --coalesce-ms $n")
  done
done
specs+=("floor_sse|floor|" "floor_sse-5ms|floor|5000")

server=
trap '[ -n "$server" ] && kill $server 2>/dev/null || true' EXIT
count=${#specs[@]}
for round in $(seq 1 "$ROUNDS"); do
  for ((i = 0; i < count; i++)); do
    # Each round starts five rows further on, so no server always runs first.
    IFS='|' read -r name kind args <<< "${specs[$(( (i + (round - 1) * 5) % count ))]}"
    PORT=$((PORT + 1))
    addr=127.0.0.1:$PORT
    if [ "$kind" = herald ]; then
      # shellcheck disable=SC2086 # $args holds several flags
      $BIN/herald serve --listen $addr --demo false $args > /dev/null 2>&1 &
    else
      # shellcheck disable=SC2086 # $args is the window, or nothing
      $BIN/floor_sse $addr $args > /dev/null 2>&1 &
    fi
    server=$!
    sleep 0.7
    json=$OUT/$round-$name.json
    # A run that fails writes no report: an older one in $OUT must not stand in for it.
    rm -f "$json"
    if [ "$name" = peers ]; then
      $BIN/loadtest peers --herald-addr $addr --herald-pid $server --scenario spread \
        --json "$json" > "$OUT/$round-$name.txt" 2>&1 || true
    else
      $BIN/loadtest run --target herald --addr $addr --server-pid $server --scenario spread \
        --json "$json" > "$OUT/$round-$name.txt" 2>&1 || true
    fi
    kill $server 2>/dev/null || true
    wait $server 2>/dev/null || true
    server=
    if [ -s "$json" ]; then
      echo "round $round: $name done" >&2
    else
      echo "round $round: $name wrote no report, left out (see $OUT/$round-$name.txt)" >&2
    fi
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
rows, nchan = {}, {}
for r in range(1, rounds + 1):
    for f in sorted(os.listdir(out)):
        if not (f.startswith(f"{r}-") and f.endswith(".json")):
            continue
        name = f[len(f"{r}-"):-len(".json")]
        try:
            reports = json.load(open(os.path.join(out, f)))
        except (OSError, ValueError):
            print(f"round {r}: {name} left no report (see its .txt)")
            continue
        if name == "peers":
            for report in reports:
                key = "nginx+nchan" if report["target"] == "nchan" else "herald-1-loop-N0 (peers)"
                rows.setdefault(key, []).append((r, report))
                if report["target"] == "nchan":
                    nchan[r] = report["server_cpu_seconds_per_million"]
        else:
            rows.setdefault(name, []).append((r, reports))

print("| server | s per M (rounds) | mean | p50 / p99 ms (median) | lost | / nchan (mean) |")
print("|---|---|---|---|---|---|")
order = ["nginx+nchan", "floor_sse", "floor_sse-5ms", "herald-1-loop-N0 (peers)"]
order += [f"herald-{loops}-loop-N{n}" for loops in (1, 2) for n in (0, 1, 2, 5, 10)]
for name in sorted(rows, key=lambda name: order.index(name) if name in order else len(order)):
    runs = rows[name]
    cpu = [rep["server_cpu_seconds_per_million"] for _, rep in runs]
    p50 = statistics.median(rep["latency"]["p50_ms"] for _, rep in runs)
    p99 = statistics.median(rep["latency"]["p99_ms"] for _, rep in runs)
    lost = sum(rep["lost"] for _, rep in runs)
    # Ratios only within a round, against that round's nchan.
    ratios = [rep["server_cpu_seconds_per_million"] / nchan[r] for r, rep in runs if nchan.get(r)]
    ratio = f"{statistics.mean(ratios):.2f}" if ratios else "-"
    print(f"| {name} | {', '.join(f'{c:.2f}' for c in cpu)} | {statistics.mean(cpu):.2f} "
          f"| {p50:.2f} / {p99:.2f} | {lost} | {ratio} |")
PY

#!/usr/bin/env bash
# Over-budget end-to-end benchmark: a synthetic Qwen3-30B-A3B-shaped model (17.2 GB, Q4_K,
# random weights) decoded with an expert cache of half its expert bytes, the whole process
# confined to a memory limit below the model's size (page cache included).
#
#   benches/overbudget.sh [DIR] [LIMIT] [TOKENS]
#
# DIR holds the generated model (default target/overbudget; about 17.2 GB of disk; made
# once and reused). LIMIT is the cgroup memory limit (default 10G: base weights 0.9 GB +
# budget 8.15 GB fit, the model does not). Needs root and the cgroup v1 memory controller
# (cgroup v2: a memory.max file instead). Runs prefetch off and gate, buffered and
# O_DIRECT reads, then gate with deeper lookahead and more reads in flight, and prints
# each run's report (see benches/overbudget.rs).
#
# With ODMOE_BENCH_SHADOW=PREDICTOR (from `overbudget trace` + `odmoe train-shadow`, see
# docs/performance.md) it instead sweeps prefetch off, gate and shadow with O_DIRECT reads and
# the budget at 25%, 50% and 75% of the expert bytes; LIMIT is then base + budget + 1 GB
# for each budget (still below the model's size).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/overbudget}
LIMIT=${2:-10G}
TOKENS=${3:-48}
MODEL=$DIR/qwen3-30b-a3b-synthetic.Q4_K.gguf

cargo bench --bench overbudget --no-run 2>&1 | tail -1
BIN=$(cargo bench --bench overbudget --no-run --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*overbudget[^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "cannot find the overbudget bench binary" >&2; exit 1; }

mkdir -p "$DIR"
if [ ! -s "$MODEL" ]; then
  echo "generating $MODEL"
  "$BIN" generate "$MODEL.partial"
  mv "$MODEL.partial" "$MODEL"
fi

if [ -d /sys/fs/cgroup/memory ]; then
  CG=/sys/fs/cgroup/memory$(grep ':memory:' /proc/self/cgroup | cut -d: -f3)/odmoe-overbudget
  mkdir -p "$CG"
  echo "$LIMIT" > "$CG/memory.limit_in_bytes"
  LIMIT_FILE=memory.limit_in_bytes PEAK_FILE=memory.max_usage_in_bytes
else
  CG=/sys/fs/cgroup$(grep '^0::' /proc/self/cgroup | cut -d: -f3)/odmoe-overbudget
  mkdir -p "$CG"
  echo "$LIMIT" > "$CG/memory.max"
  LIMIT_FILE=memory.max PEAK_FILE=memory.peak
fi
echo "cgroup $CG: limit $(cat "$CG/$LIMIT_FILE") bytes; model $(stat -c %s "$MODEL") bytes"

if [ -n "${ODMOE_BENCH_SHADOW:-}" ]; then
  EXPERTS=16307453952 BASE=$(( $(stat -c %s "$MODEL") - 16307453952 ))
  for pct in 25 50 75; do
    budget=$(( EXPERTS * pct / 100 ))
    echo $(( BASE + budget + 1000000000 )) > "$CG/$LIMIT_FILE"
    for prefetch in off gate shadow; do
      echo "== budget $pct% ($budget bytes), prefetch $prefetch, direct reads, limit $(cat "$CG/$LIMIT_FILE")"
      [ "$PEAK_FILE" = memory.max_usage_in_bytes ] && echo 0 > "$CG/$PEAK_FILE"
      (echo $BASHPID > "$CG/cgroup.procs"; exec "$BIN" run "$MODEL" "$budget" "$prefetch" direct "$TOKENS")
    done
  done
  rmdir "$CG" 2>/dev/null || true
  exit 0
fi

for io in buffered direct; do
  for prefetch in off gate; do
    echo "== prefetch $prefetch, $io reads"
    [ "$PEAK_FILE" = memory.max_usage_in_bytes ] && echo 0 > "$CG/$PEAK_FILE"
    (echo $BASHPID > "$CG/cgroup.procs"; exec "$BIN" run "$MODEL" half "$prefetch" "$io" "$TOKENS")
    echo "cgroup peak usage (page cache included): $(cat "$CG/$PEAK_FILE" 2>/dev/null || echo n/a) bytes"
  done
done
echo "== prefetch gate, direct reads, 3 layers ahead, 16 readers, 12 prefetches in flight"
(echo $BASHPID > "$CG/cgroup.procs"; ODMOE_BENCH_THREADS=16 ODMOE_BENCH_IN_FLIGHT=12 ODMOE_BENCH_DEPTH=3 exec "$BIN" run "$MODEL" half gate direct "$TOKENS")
rmdir "$CG" 2>/dev/null || true

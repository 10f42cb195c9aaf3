#!/usr/bin/env bash
# Prefetching on the demo model: off, gate (the next layer's router) and shadow (the
# trained predictor), with the expert cache at 25%, 50% and 75% of the expert bytes.
#
#   benches/shadow.sh [CORPUS] [REPS]
#
# Records routing traces over CORPUS (default: the committed Twelfth Night excerpt; the
# numbers in docs/performance.md used the demo model's whole held-out text, made by
# models/train/prepare_corpus.py), trains a predictor on them (lookahead 2), then decodes
# 200 tokens from each of REPS prompts (default 3) per setting, settings interleaved, with
# O_DIRECT expert reads (the config default). Prints, per setting, the median decode
# tokens/s, the hit rate and the prefetched bytes that no layer used, and the held-out
# recall table from training.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-tests/fixtures/corpus/twelfth-night.txt}
REPS=${2:-3}
OUT=${ODMOE_BENCH_DIR:-target/shadow-bench}
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/odmoe
"$BIN" collect --corpus "$CORPUS" --output "$OUT/demo.trace" --max-tokens 40000
"$BIN" train-shadow --traces "$OUT/demo.trace" --output "$OUT/demo.shadow.safetensors" --lookahead 2 | tee "$OUT/train.txt"

EXPERT_BYTES=$("$BIN" info --model models/odmoe-demo-shakespeare-Q8_0.gguf | sed -n 's/.*, \([0-9.]*\) MiB routed experts.*/\1/p')
PROMPTS=("ROMEO:" "HAMLET:" "First Citizen:" "KING LEAR:" "PORTIA:")
declare -A TPS HIT WASTE
for pct in 25 50 75; do
  budget=$(python3 -c "print(f'{$EXPERT_BYTES * $pct / 100:.2f}MiB')")
  for rep in $(seq 1 "$REPS"); do
    for mode in off gate shadow; do
      log=$("$BIN" generate --prompt "${PROMPTS[$(( (rep - 1) % 5 ))]}" --max-tokens 200 --seed "$rep" --temperature 0.8 \
        --cache-budget "$budget" --prefetch "$mode" --shadow "$OUT/demo.shadow.safetensors" 2>&1 >/dev/null)
      TPS[$pct,$mode]+="$(sed -n 's/.*generated: [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tokens\/s).*/\1/p' <<<"$log") "
      HIT[$pct,$mode]+="$(sed -n 's/.*misses (\([0-9.]*\)% hit rate).*/\1/p' <<<"$log") "
      WASTE[$pct,$mode]+="$(sed -n 's/.*served a later demand, \([0-9.]*\) MiB wasted.*/\1/p' <<<"$log" | grep . || echo 0) "
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| budget | prefetch | decode tokens/s (median of $REPS) | vs off | hit rate % | wasted prefetch MiB |"
echo "| --- | --- | --- | --- | --- | --- |"
for pct in 25 50 75; do
  off=$(median <<<"${TPS[$pct,off]}")
  for mode in off gate shadow; do
    t=$(median <<<"${TPS[$pct,$mode]}")
    echo "| $pct% | $mode | $t | $(python3 -c "print(f'{$t / $off:.2f}x')") | $(median <<<"${HIT[$pct,$mode]}") | $(median <<<"${WASTE[$pct,$mode]}") |"
  done
done

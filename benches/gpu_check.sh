#!/bin/bash
# GPU check for a machine with a real GPU and a Vulkan driver: the GPU unit and
# integration tests, the GEMV bandwidth bench, the demo model on `--backend auto` against
# the CPU, the synthetic Qwen3-30B-A3B-shaped decode with every expert resident, and
# batched decode steps of that model on the device.
#
# It runs prebuilt, stripped binaries from BIN (default .gl/bin, gzipped), so the GPU
# machine needs no toolchain. Prepare them here with
#   cargo build --release && cargo test --release --no-run && \
#   cargo bench --no-run --bench gpu_gemv --bench overbudget --bench batch_step
# then strip the odmoe binary, the library's unit-test binary (target/release/deps/odmoe-*
# holding the compute::gpu tests), tests gpu_logits, gpu_matrices, actors' gpu_generate and
# the benches gpu_gemv, overbudget and batch_step into BIN as NAME.gz (gpu_generate expects odmoe at
# target/release/odmoe, which this script puts there). Results go to OUT (default /tmp/out).
# The synthetic model needs ~17 GB of disk and as much GPU memory.
set -u
BIN=${BIN:-.gl/bin}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/b
for f in "$BIN"/*.gz; do gunzip -c "$f" > /tmp/b/"$(basename "$f" .gz)"; done
chmod +x /tmp/b/*
mkdir -p target/release && cp /tmp/b/odmoe target/release/odmoe
( /tmp/b/overbudget generate /tmp/m.gguf > "$OUT"/synth_gen.txt 2>&1 ) &
gen=$!
for t in $(/tmp/b/libtests --list 2>/dev/null | grep '^compute::gpu.*: test' | sed 's/: test$//'); do
  timeout 30 /tmp/b/libtests --exact "$t" > "$OUT/t_$t.txt" 2>&1; echo "$t rc=$?"
done > "$OUT"/libtests.txt
grep -v "rc=0" "$OUT"/libtests.txt
echo "lib gpu tests: $(grep -c 'rc=0' "$OUT"/libtests.txt) passed of $(wc -l < "$OUT"/libtests.txt)"
for t in gpu_matrices gpu_logits gpu_generate; do
  timeout 60 /tmp/b/$t > "$OUT/$t.txt" 2>&1; echo "$t rc=$?"; grep -h "panicked\|test result" -A1 "$OUT/$t.txt" | cut -c1-200
done
timeout 150 /tmp/b/gpu_gemv > "$OUT"/gemv.txt 2>&1; cat "$OUT"/gemv.txt
# every lane layout against the plain one (which layouts products should use)
timeout 200 env ODMOE_BENCH_LAYOUTS=1 ODMOE_BENCH_REPS=200 /tmp/b/gpu_gemv > "$OUT"/layouts.txt 2>&1; grep -v "^  all" "$OUT"/layouts.txt
for be in auto cpu; do
  timeout 60 /tmp/b/odmoe generate --backend $be --max-tokens 256 --temperature 0 --prompt "ROMEO:" > "$OUT/generate_$be.txt" 2> "$OUT/generate_$be.err"
  grep "backend:\|generated" "$OUT/generate_$be.err"
done
cmp "$OUT"/generate_auto.txt "$OUT"/generate_cpu.txt && echo "demo: same text on both backends"
wait $gen
timeout 150 /tmp/b/overbudget gpu /tmp/m.gguf 256 > "$OUT"/decode.txt 2>&1; cat "$OUT"/decode.txt
# batched decode steps of 1, 16 and 64 sequences on the device (expert pairs grouped or
# not, one attention dispatch per layer for all sequences)
timeout 150 env ODMOE_BENCH_BACKEND=gpu ODMOE_BENCH_MODEL=/tmp/m.gguf ODMOE_BENCH_LEVELS=1,16,64 ODMOE_BENCH_STEPS=16 ODMOE_BENCH_REPS=1 /tmp/b/batch_step > "$OUT"/batch_gpu.txt 2>&1; cat "$OUT"/batch_gpu.txt

#!/usr/bin/env bash
# Runs benchmarks and puts their tables into docs/performance.md, between the markers
# <!-- bench:NAME --> and <!-- /bench:NAME -->, with the date and the machine's CPU.
#
#   benches/regen_docs.sh gemv gemv-avx2 load
#
# NAME is one of:
#   gemv       cargo bench --bench gemv (the CPU as it is)
#   gemv-avx2  the same with ODMOE_NO_VNNI=1 (the AVX2 kernels most CPUs take)
#   load       cargo bench -p odmoe-actors --bench load on the demo model
# Extra environment (ODMOE_BENCH_REPS, ODMOE_LOAD_ROUNDS, ...) passes through.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=docs/performance.md
[ $# -gt 0 ] || { sed -n '2,12p' "$0"; exit 2; }
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || true)
for name in "$@"; do
    case "$name" in
        gemv) cmd=(cargo bench --bench gemv) ;;
        gemv-avx2) cmd=(env ODMOE_NO_VNNI=1 cargo bench --bench gemv) ;;
        load) cmd=(cargo bench -p odmoe-actors --bench load) ;;
        *) echo "unknown benchmark: $name" >&2; exit 2 ;;
    esac
    grep -q "<!-- bench:$name -->" "$doc" || { echo "$doc has no <!-- bench:$name --> marker" >&2; exit 1; }
    echo "running: ${cmd[*]}" >&2
    out=$(mktemp)
    # the table is what the bench prints from its first '|' line (and any lines just before)
    "${cmd[@]}" 2>/dev/null | awk 'f || /^\|/ || /^Kernels:/ { f = 1; print }' > "$out"
    [ -s "$out" ] || { echo "$name printed no table" >&2; exit 1; }
    block=$(mktemp)
    { echo "<!-- bench:$name -->"
      echo "\`${cmd[*]}\`, $(date -u +%Y-%m-%d)${cpu:+, $cpu}:"
      echo
      cat "$out"
      echo "<!-- /bench:$name -->"; } > "$block"
    python3 - "$doc" "$name" "$block" <<'PY'
import sys
doc, name, block = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().rstrip("\n")
text = open(doc).read()
begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
a, b = text.index(begin), text.index(end) + len(end)
open(doc, "w").write(text[:a] + block + text[b:])
PY
    rm -f "$out" "$block"
    echo "updated $doc ($name)" >&2
done

#!/usr/bin/env bash
# Benchmark (not a test): are bertbench's numbers repeatable within their stated uncertainty?
# Runs the same grid twice (the three base models, batch 1 and 8, sequence 128, random weights)
# and checks, cell by cell, whether each run's median lies inside the other run's 95%
# confidence interval of the median (the two-level interval across processes when the runs
# timed each cell in several, `--processes K`, bench's default on the CPU; else the
# within-process one), and whether the difference's own interval includes 0
# (scripts/repeatability_table.py says why both). Prints a Markdown table; run it on an idle
# machine.
#
# usage: [BERTBENCH=path/to/bertbench] scripts/bench-repeatability.sh [OUTPUT_DIR] [extra bench flags...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/bench-results/repeatability-$(date +%Y%m%d-%H%M%S)"}
shift || true
# BERTBENCH names a built binary to use (so a build can't change it mid-run); else build one.
if [[ -z "${BERTBENCH:-}" ]]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi
bin=${BERTBENCH:-"$root/target/release/bertbench"}
for run in a b; do
  "$bin" bench --models bert-base-uncased distilbert-base-uncased squeezebert/squeezebert-uncased \
    --batch-sizes 1 8 --sequence-lengths 128 --no-memory --min-time 5 --output-dir "$out/$run" "$@" >/dev/null
done
python3 "$root/scripts/repeatability_table.py" "$out/a/results.csv" "$out/b/results.csv"

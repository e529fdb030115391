#!/usr/bin/env bash
# Benchmark (not a test): are bertbench's numbers repeatable within their stated uncertainty?
# Runs the same grid twice (the three base models, batch 1 and 8, sequence 128, random weights)
# and checks, cell by cell, whether each run's median lies inside the other run's 95%
# confidence interval of the median: the two-level interval across processes when the runs
# timed each cell in several (`--processes K`, bench's default on the CPU), else the
# within-process one. Prints a Markdown table; run it on an idle machine.
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
python3 - "$out/a/results.csv" "$out/b/results.csv" <<'PY'
import csv, sys
def load(path):
    with open(path) as f:
        return {(r["model"], r["mode"], r["batch_size"], r["sequence_length"]): r for r in csv.DictReader(f)}
a, b = load(sys.argv[1]), load(sys.argv[2])
ms = lambda x: f"{float(x) * 1e3:.1f}"
print("| model | batch x seq | run A median [95% CI] ms | run B median [95% CI] ms | difference | B in A's CI | A in B's CI |")
print("|---|---|---|---|---|---|---|")
agree = total = 0
for key, ra in a.items():
    rb = b.get(key)
    if rb is None or ra["status"] != "ok" or rb["status"] != "ok":
        continue
    def level(r):
        # The two-level interval (and its point, the mean of the process medians) when the
        # cell was timed in several processes, else the within-process one.
        if r.get("between_ci95_low_s"):
            return float(r["process_mean_median_s"]), r["between_ci95_low_s"], r["between_ci95_high_s"]
        return float(r["median_s"]), r["median_ci95_low_s"], r["median_ci95_high_s"]
    (ma, la, ha), (mb, lb, hb) = level(ra), level(rb)
    ra = dict(ra, median_ci95_low_s=la, median_ci95_high_s=ha)
    rb = dict(rb, median_ci95_low_s=lb, median_ci95_high_s=hb)
    b_in_a = float(la) <= mb <= float(ha)
    a_in_b = float(lb) <= ma <= float(hb)
    total += 1
    agree += b_in_a and a_in_b
    print(f"| {key[0]} | {key[2]}x{key[3]} | {ms(ma)} [{ms(ra['median_ci95_low_s'])}, {ms(ra['median_ci95_high_s'])}] "
          f"| {ms(mb)} [{ms(rb['median_ci95_low_s'])}, {ms(rb['median_ci95_high_s'])}] | {100 * (mb - ma) / ma:+.1f}% "
          f"| {'yes' if b_in_a else 'no'} | {'yes' if a_in_b else 'no'} |")
procs = {r.get("processes", "1") for r in list(a.values()) + list(b.values())}
print(f"\n{agree} of {total} cells agree both ways (processes per cell: {', '.join(sorted(procs))}).")
PY

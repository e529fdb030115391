"""Compares two bench runs of the same grid cell by cell (scripts/bench-repeatability.sh).

usage: python3 scripts/repeatability_table.py RUN_A/results.csv RUN_B/results.csv

For each cell measured in both: each run's point and 95% interval (the two-level interval
across processes, centred on the mean of the process medians, when the run timed the cell in
several processes; else the pooled median and the within-process interval), and two tests:

- "agree both ways": each run's point lies inside the other's interval (the issue's criterion).
  Even for exact 95% intervals of equal width this holds for a cell with probability 0.83
  (|Z| < 1.96 / sqrt 2), so 5 of 6 cells in a round happen with probability 0.74.
- "consistent": the difference's own 95% interval includes 0, i.e.
  |B - A| <= sqrt(hA^2 + hB^2) with hA, hB the half-widths on the side facing the other run.
  For exact intervals this holds with probability 0.95 per cell.
Prints a Markdown table and the counts.
"""
import csv
import math
import sys


def load(path):
    with open(path) as f:
        return {(r["model"], r["mode"], r["batch_size"], r["sequence_length"]): r for r in csv.DictReader(f)}


def level(r):
    if r.get("between_ci95_low_s"):
        return float(r["process_mean_median_s"]), float(r["between_ci95_low_s"]), float(r["between_ci95_high_s"])
    return float(r["median_s"]), float(r["median_ci95_low_s"]), float(r["median_ci95_high_s"])


def main(path_a, path_b):
    a, b = load(path_a), load(path_b)
    ms = lambda x: f"{x * 1e3:.1f}"
    print("| model | batch x seq | run A median [95% CI] ms | run B median [95% CI] ms | difference "
          "| B in A's CI | A in B's CI | consistent |")
    print("|---|---|---|---|---|---|---|---|")
    agree = consistent = total = 0
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None or ra["status"] != "ok" or rb["status"] != "ok":
            continue
        (ma, la, ha), (mb, lb, hb) = level(ra), level(rb)
        b_in_a = la <= mb <= ha
        a_in_b = lb <= ma <= hb
        half_a = (ha - ma) if mb > ma else (ma - la)
        half_b = (mb - lb) if mb > ma else (hb - mb)
        ok = abs(mb - ma) <= math.hypot(half_a, half_b)
        total += 1
        agree += b_in_a and a_in_b
        consistent += ok
        yn = lambda v: "yes" if v else "no"
        print(f"| {key[0]} | {key[2]}x{key[3]} | {ms(ma)} [{ms(la)}, {ms(ha)}] | {ms(mb)} [{ms(lb)}, {ms(hb)}] "
              f"| {100 * (mb - ma) / ma:+.1f}% | {yn(b_in_a)} | {yn(a_in_b)} | {yn(ok)} |")
    procs = {r.get("processes", "1") for r in list(a.values()) + list(b.values())}
    print(f"\n{agree} of {total} cells agree both ways, {consistent} of {total} consistent "
          f"(processes per cell: {', '.join(sorted(procs))}).")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

#!/usr/bin/env python3
"""Sums Nsight Compute's per-kernel durations by kernel name.

Reads the CSV that `ncu --csv --metrics gpu__time_duration.sum` prints (one
row per launch) and prints, per kernel name, the launches, the total time
and its share, longest first; `--steps N` also divides by N (the decode
steps of the profiled run) to give microseconds per step. `--after KERNEL`
counts only what follows the first launch of KERNEL: the prefill's last
kernel (the sampling kernel), so that what is counted is the decode
steps'.

  ncu --csv --clock-control none --graph-profiling node \
      --metrics gpu__time_duration.sum melt-run ... > ncu.csv
  python3 bench/cuda/kernel_times.py ncu.csv --steps 4 [--after argmaxFinish]
"""
import argparse
import collections
import csv
import json
import re
import sys


def rows(path):
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    return csv.DictReader(lines)


def short(name):
    # Template arguments and parameter lists make names unreadable.
    name = re.sub(r"\(.*", "", name)
    depth, out = 0, []
    for c in name:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif depth == 0:
            out.append(c)
    return "".join(out).replace("void ", "").strip()[:60]


def durations(path, after=None):
    """Microseconds and launches per kernel name; with `after`, only the
    launches that follow the first one whose name contains it."""
    total = collections.Counter()
    launches = collections.Counter()
    waiting = after is not None
    for row in rows(path):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        if waiting:
            waiting = after not in row["Kernel Name"]
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        name = short(row["Kernel Name"])
        total[name] += value * scale
        launches[name] += 1
    if not total:
        sys.exit(f"{path}: no gpu__time_duration.sum rows")
    return total, launches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--label", default="")
    parser.add_argument("--after", metavar="KERNEL",
                        help="count only the launches after the first one of "
                             "this kernel (the prefill's sampling kernel: "
                             "what follows is the decode steps')")
    args = parser.parse_args()
    total, launches = durations(args.csv, args.after)
    grand = sum(total.values())
    for name, us in total.most_common():
        entry = {"label": args.label, "kernel": name, "launches": launches[name],
                 "us": round(us, 1), "share": round(us / grand, 4)}
        if args.steps:
            entry["us_per_step"] = round(us / args.steps, 1)
        print(json.dumps(entry))
    print(json.dumps({"label": args.label, "kernel": "(all)",
                      "us": round(grand, 1),
                      **({"us_per_step": round(grand / args.steps, 1)}
                         if args.steps else {})}))


if __name__ == "__main__":
    main()

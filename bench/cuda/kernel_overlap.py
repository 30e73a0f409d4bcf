#!/usr/bin/env python3
"""Back-to-back launches of one kernel in a CUPTI kernel trace
(bench/cuda/kernel_trace.cpp's JSON lines): for every run of 20 or more
consecutive launches of the same kernel and grid (a benchmark's timed loop),
over its last 23 launches, the median duration, start-to-start interval and
overlap with the launch ahead (its end minus the next one's start: positive
where programmatic dependent launch lets the next one start early).

  python3 bench/cuda/kernel_overlap.py trace.jsonl
"""
import json
import statistics
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: kernel_overlap.py trace.jsonl")
    records = []
    with open(sys.argv[1]) as trace:
        for line in trace:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    records.sort(key=lambda r: r["start"])
    runs, current = [], []
    for r in records:
        key = (r["name"][:60], tuple(r["grid"]))
        if current and current[-1][0] != key:
            runs.append(current)
            current = []
        current.append((key, r))
    if current:
        runs.append(current)
    for run in runs:
        if len(run) < 20:
            continue
        last = [r for _, r in run][-23:]
        pairs = list(zip(last, last[1:]))
        duration = statistics.median((r["end"] - r["start"]) / 1e3 for r in last)
        interval = statistics.median((b["start"] - a["start"]) / 1e3 for a, b in pairs)
        overlap = statistics.median((a["end"] - b["start"]) / 1e3 for a, b in pairs)
        name, grid = run[0][0]
        print(f"{name[:58]:58} grid {grid} n={len(run):6}: duration "
              f"{duration:6.2f} us, start to start {interval:6.2f} us, "
              f"overlap {overlap:6.2f} us")


if __name__ == "__main__":
    main()

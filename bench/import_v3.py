#!/usr/bin/env python3
"""Import benchmark: the full DeepSeek-V3 checkpoint (163 shards, 91,991
tensors, ~689 GB) as sparse files — each shard's real header, the file
extended to its full size without data — imported by melt-import.

Prints JSON lines: wall time and peak RSS of the import (best of --runs),
against the targets of < 10 s and < 1 GB.

  bench/import_v3.py [--bin build/bin] [--work /tmp/melt-v3-sparse] [--runs 3]
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import time

V3_SHARDS = 163


def run_measured(cmd):
    """Runs cmd; returns (seconds, peak RSS in bytes of that child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss is the max over all children so far: measure the import first
    # in a fresh process tree to get its own peak (see main()).
    return seconds, max(before, after) * 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin"))
    p.add_argument("--work", default="/tmp/melt-v3-sparse")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--measure-one", help=argparse.SUPPRESS)
    args = p.parse_args()
    tool = os.path.join(args.bin, "melt-import")

    if args.measure_one:  # child mode: one import, report own children's peak
        seconds, rss = run_measured([tool, args.measure_one, "-o", os.devnull])
        print(json.dumps({"seconds": seconds, "rss": rss}))
        return

    ckpt = os.path.join(args.work, "v3")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    start = time.perf_counter()
    out = subprocess.run([tool, "--synthesize=v3", "--sparse", f"--shards={V3_SHARDS}",
                          "-o", ckpt], check=True, capture_output=True, text=True).stderr
    make_s = time.perf_counter() - start
    m = re.search(r"(\d+) tensors in (\d+) shard\(s\), (\d+) bytes", out)
    tensors, shards, total = map(int, m.groups())
    print(json.dumps({"bench": "import_v3", "step": "make sparse checkpoint", "seconds": round(make_s, 2),
                      "tensors": tensors, "shards": shards, "bytes": total}))

    best = None
    for _ in range(args.runs):
        child = subprocess.run(["python3", __file__, "--bin", args.bin, "--measure-one", ckpt],
                               check=True, capture_output=True, text=True)
        r = json.loads(child.stdout)
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    print(json.dumps({"bench": "import_v3", "step": "melt-import", "seconds": round(best["seconds"], 3),
                      "peak_rss_mb": round(best["rss"] / 2**20, 1),
                      "target_seconds": 10, "ratio_to_time_target": round(best["seconds"] / 10, 3),
                      "target_rss_mb": 1024, "ratio_to_rss_target": round(best["rss"] / 2**30, 3)}))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()

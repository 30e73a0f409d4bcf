"""A kernel's warp-state samples by the stretches between its barriers.

Reads Nsight Compute's per-instruction source page (`ncu -i REP --page
source --csv --print-source sass`, plain or gzipped; one block per profiled
launch) and prints, for the first launch (or --launch N), the share of the
stall samples in each stretch of SASS that ends at a block barrier
(BAR.SYNC / BAR.RED), a cluster barrier's wait (UCGABAR_WAIT) or the
kernel's end, with the stretch's instruction range and executed
instructions: where a latency-bound kernel spends its time, phase by phase.

    python3 bench/cuda/stall_phases.py SOURCE.csv[.gz] [--launch N] [--min PERCENT]
"""
import argparse
import csv
import gzip

ENDS = ("BAR.SYNC", "BAR.RED", "UCGABAR_WAIT")


def launches(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        blocks, current = [], None
        for line in f:
            if line.startswith('"Kernel Name"'):
                current = []
                blocks.append((line.split(",", 1)[1].strip().strip('"'), current))
            elif current is not None and line.strip():
                current.append(line)
    return blocks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("--launch", type=int, default=0)
    parser.add_argument("--min", type=float, default=1.0,
                        help="stretches below this share of samples are left out")
    args = parser.parse_args()
    blocks = launches(args.source)
    if not blocks:
        raise SystemExit(f"{args.source}: no 'Kernel Name' block (not ncu's source page?)")
    name, lines = blocks[args.launch]
    rows = list(csv.reader(lines))
    header, data = rows[0], rows[1:]
    try:
        source = header.index("Source")
        samples = header.index("Warp Stall Sampling (All Samples)")
        executed = header.index("Instructions Executed")
    except ValueError as e:
        raise SystemExit(f"{args.source}: {e} (run ncu with --set full)")
    number = lambda s: int(s.replace(",", "")) if s.replace(",", "").isdigit() else 0
    total = sum(number(r[samples]) for r in data) or 1
    print(f"{name[:100]}: {len(data)} instructions, {total} samples")
    start, got, ran = 0, 0, 0
    for i, r in enumerate(data):
        got += number(r[samples])
        ran += number(r[executed])
        text = r[source].strip()
        if any(end in text for end in ENDS) or i == len(data) - 1:
            share = 100 * got / total
            if share >= args.min:
                print(f"  {start:5d}-{i:5d} {share:5.1f}%  executed {ran:9d}  ends at {text[:40]}")
            start, got, ran = i + 1, 0, 0


if __name__ == "__main__":
    main()

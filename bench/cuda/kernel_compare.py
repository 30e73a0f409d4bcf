#!/usr/bin/env python3
"""Per-kernel times of two traced runs side by side, the slower ones named.

An A/B switch compares two code paths of one build: a loss that both paths
share (a kernel that got slower for every caller) does not show in it. This
compares a run against a saved one kernel by kernel, as
`kernel_timeline.py --json` summarizes them (scripts/gpu/prefill-kernels.sh
writes them to prefill_kernels.json; sessions keep theirs in
bench/results/).

Each file holds JSON lines, one per traced burst or graph: by_kernel (each
kernel's name, launches and running_us), span_us, and where given model,
sequences and tokens. A line of NEW is compared with the line of OLD of the
same model, sequences and tokens (with the only line of OLD where each
file holds one).

  kernel_compare.py OLD.json NEW.json [--top N] [--min-us US]
                    [--fail-slower PERCENT]

--fail-slower: exit 1 where a kernel that ran at least --min-us in OLD
(default 50) is slower than that in NEW, or a kernel of OLD is missing.
"""
import argparse
import json
import sys


def lines_of(path):
    """The JSON objects of a file of JSON lines (exits 2 naming the line)."""
    runs = []
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    run = json.loads(line)
                except ValueError as e:
                    sys.exit(f"{path}:{number}: not JSON: {e}")
                if not isinstance(run, dict) or not isinstance(
                        run.get("by_kernel"), list):
                    sys.exit(f"{path}:{number}: no 'by_kernel' list (is it "
                             "kernel_timeline.py --json's output?)")
                runs.append(run)
    except OSError as e:
        sys.exit(f"{path}: cannot read it: {e.strerror}")
    if not runs:
        sys.exit(f"{path}: no run in it")
    return runs


def key(run):
    return (run.get("model"), run.get("sequences"), run.get("tokens"))


def title(run):
    model, sequences, tokens = key(run)
    shape = f" {sequences}x{tokens}" if sequences and tokens else ""
    return f"{model or 'run'}{shape}"


def pairs(old, new):
    """(old run, new run) for each run of NEW that has one in OLD."""
    if len(old) == 1 and len(new) == 1:
        return [(old[0], new[0])]
    by_key = {key(run): run for run in old}
    return [(by_key[key(run)], run) for run in new if key(run) in by_key]


def change(old, new):
    return f"{100.0 * (new - old) / old:+.1f}%" if old else "new"


def compare(old, new, top, min_us, fail_percent):
    """Prints one comparison; returns the kernels slower than allowed."""
    before = {k["kernel"]: k for k in old["by_kernel"]}
    after = {k["kernel"]: k for k in new["by_kernel"]}
    names = sorted(set(before) | set(after),
                   key=lambda n: -max(before.get(n, {}).get("running_us", 0),
                                      after.get(n, {}).get("running_us", 0)))
    print(f"{title(new)}: span {old.get('span_us', 0):.1f} -> "
          f"{new.get('span_us', 0):.1f} us "
          f"({change(old.get('span_us', 0), new.get('span_us', 0))}), "
          f"kernels {old.get('kernels', '?')} -> {new.get('kernels', '?')}")
    print(f"  {'kernel':48} {'launches':>10} {'old us':>10} {'new us':>10}"
          f" {'change':>8}")
    slower = []
    for i, name in enumerate(names):
        was, now = before.get(name), after.get(name)
        old_us = was["running_us"] if was else 0.0
        new_us = now["running_us"] if now else 0.0
        if was and old_us >= min_us and (
                not now or 100.0 * (new_us - old_us) / old_us > fail_percent):
            slower.append(f"{name} ({change(old_us, new_us) if now else 'gone'})")
        if i < top:
            launches = (f"{was['launches'] if was else 0} -> "
                        f"{now['launches'] if now else 0}")
            shown = change(old_us, new_us) if now else "gone"
            print(f"  {name[:48]:48} {launches:>10} {old_us:10.1f} "
                  f"{new_us:10.1f} {shown:>8}")
    return slower


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--top", type=int, default=25,
                        help="kernels listed per run (default 25)")
    parser.add_argument("--min-us", type=float, default=50.0,
                        help="kernels that ran less in OLD are not judged")
    parser.add_argument("--fail-slower", type=float, default=None,
                        metavar="PERCENT",
                        help="exit 1 where a judged kernel got slower by more")
    args = parser.parse_args()
    matched = pairs(lines_of(args.old), lines_of(args.new))
    if not matched:
        sys.exit(f"{args.new}: no run of the same model, sequences and "
                 f"tokens as one of {args.old}")
    limit = args.fail_slower if args.fail_slower is not None else 3.0
    failed = False
    for old, new in matched:
        slower = compare(old, new, args.top, args.min_us, limit)
        if slower:
            print(f"  slower by more than {limit:g}%: " + ", ".join(slower))
            failed = True
    return 1 if failed and args.fail_slower is not None else 0


if __name__ == "__main__":
    sys.exit(main())

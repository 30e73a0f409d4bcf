#!/usr/bin/env python3
"""Where a replayed CUDA graph's time goes, from a kernel_trace.cpp trace.

Each replay of a recorded graph (a decode step) is the kernels with one
(graph id, launch correlation id); a graph is a step's shape. For each graph
replayed at least --min-replays times, over its replays (medians):

- span: first kernel's start to last kernel's end;
- busy: the time some kernel of the replay runs (the union of their
  intervals), and idle = span - busy: the GPU waiting between kernels;
- per kernel name: launches a replay, time running, and the idle time just
  before it starts (since the replay's last kernel to end before it ended):
  what launching it costs on the step's critical path;
- between replays: from one replay's last kernel's end to the next one's
  first kernel's start (the host's turn between steps), and how much of it
  kernels outside any graph run (a step's pick, its router choices' copies).

  CUDA_INJECTION64_PATH=build-gpu/lib/libmelt-kernel-trace.so \\
  MELT_KERNEL_TRACE=trace.jsonl build-gpu/bin/melt-run MODEL --device cuda:0 ...
  python3 bench/cuda/kernel_timeline.py trace.jsonl [--top 20] [--json]

--burst --host (a trace with MELT_KERNEL_TRACE_API=1) says what the host
did around the last burst: from the launch of its first kernel to the
return of the call that waited for its last, the kernels that started only
after the host launched them (the GPU waiting on the host), the host's
calls by total time, and those in the milliseconds before the first launch.

--order lists instead, for each graph, its kernels in the order they start
(by graph node: the same kernel in every replay), with medians of: start
and end after the replay's first start, and the time the kernel moves the
replay's end forward (its end past every earlier kernel's end): what it
adds to the span, the sum of which is the span.
"""
import argparse
import collections
import json
import re
import statistics
import sys


def short(name):
    """A kernel's name without its namespaces, template arguments and
    parameters."""
    name = re.sub(r"^void ", "", name)
    depth, kept = 0, ""
    for c in name:
        if c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        elif depth == 0:
            kept += c
    return kept.split("::")[-1] or name


def replays(path, calls=None):
    """({graph id: [[kernel, ...] per replay]}, kernels of no graph), each
    list by start; the host's API calls appended to `calls` (or skipped)."""
    runs = collections.defaultdict(list)
    loose = []
    try:
        f = open(path)
    except OSError as e:
        sys.exit(f"{path}: {e.strerror}")
    with f:
        for number, line in enumerate(f, 1):
            try:
                k = json.loads(line)
                if "api" in k or "memory" in k:
                    k["start"], k["end"], k["correlation"]
                    if calls is not None:
                        calls.append(k)
                    continue
                k["start"], k["end"], k["name"], k["correlation"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{number}: not a kernel record ({e})")
            if k.get("graph"):
                runs[(k["graph"], k["correlation"])].append(k)
            else:
                loose.append(k)
    graphs = collections.defaultdict(list)
    for (graph, _), kernels in runs.items():
        graphs[graph].append(sorted(kernels, key=lambda k: k["start"]))
    for kernel_lists in graphs.values():
        kernel_lists.sort(key=lambda kernels: kernels[0]["start"])
    return graphs, sorted(loose, key=lambda k: k["start"])


def between(kernel_lists, loose):
    """Medians over consecutive replays (ns): the gap between them, and the
    time kernels of no graph run inside it; with those kernels' names."""
    gaps, outside, names = [], [], collections.Counter()
    for before, after in zip(kernel_lists, kernel_lists[1:]):
        start, end = before[-1]["end"], after[0]["start"]
        gaps.append(max(0, end - start))
        running = 0
        for k in loose:
            if k["end"] <= start or k["start"] >= end:
                continue
            running += min(k["end"], end) - max(k["start"], start)
            names[short(k["name"])] += 1
        outside.append(running)
    if not gaps:
        return None
    return {"gap_us": statistics.median(gaps) / 1e3,
            "other_kernels_us": statistics.median(outside) / 1e3,
            "other_kernels": {name: count / len(gaps)
                              for name, count in names.most_common()}}


def replay_times(kernels):
    """(span, busy, {name: [launches, running, idle before]}) of a replay."""
    span = kernels[-1]["end"] - kernels[0]["start"]
    busy, ended = 0, kernels[0]["start"]
    per = collections.defaultdict(lambda: [0, 0, 0])
    for k in kernels:
        idle = max(0, k["start"] - ended)
        busy += max(0, k["end"] - max(k["start"], ended))
        ended = max(ended, k["end"])
        entry = per[short(k["name"])]
        entry[0] += 1
        entry[1] += k["end"] - k["start"]
        entry[2] += idle
    return span, busy, per


def summary(kernel_lists):
    spans, busies, names = [], [], collections.defaultdict(list)
    for kernels in kernel_lists:
        span, busy, per = replay_times(kernels)
        spans.append(span)
        busies.append(busy)
        for name, entry in per.items():
            names[name].append(entry)
    n = len(kernel_lists)

    def median_of(entries, i):
        values = [e[i] for e in entries] + [0] * (n - len(entries))
        return statistics.median(values)

    rows = [{"kernel": name,
             "launches": median_of(entries, 0),
             "running_us": median_of(entries, 1) / 1e3,
             "idle_before_us": median_of(entries, 2) / 1e3}
            for name, entries in names.items()]
    span, busy = statistics.median(spans), statistics.median(busies)
    return {"replays": n, "kernels": len(kernel_lists[0]),
            "span_us": span / 1e3, "busy_us": busy / 1e3,
            "idle_us": (span - busy) / 1e3, "by_kernel": rows}


def in_order(kernel_lists, by_position=False):
    """Per kernel of a replay, in start order (matched across replays by
    graph node, or with by_position by place: kernels of no graph): name,
    grid, and medians (us) of start, end and the span added."""
    by_node = collections.defaultdict(lambda: collections.defaultdict(list))
    names, grids, first_seen = {}, {}, {}
    for kernels in kernel_lists:
        origin, ended = kernels[0]["start"], kernels[0]["start"]
        for position, k in enumerate(kernels):
            node = position if by_position else k.get("node", position)
            names[node] = short(k["name"])
            grids[node] = k.get("grid")
            first_seen.setdefault(node, position)
            entry = by_node[node]
            entry["start"].append((k["start"] - origin) / 1e3)
            entry["end"].append((k["end"] - origin) / 1e3)
            entry["adds"].append(max(0, k["end"] - ended) / 1e3)
            ended = max(ended, k["end"])
    rows = []
    for node, entry in by_node.items():
        rows.append({"kernel": names[node], "grid": grids[node],
                     **{key: statistics.median(values)
                        for key, values in entry.items()}})
    rows.sort(key=lambda r: r["start"])
    return rows


def bursts(loose, gap_ns):
    """Kernels of no graph (by start) split where nothing runs for gap_ns."""
    groups, ended = [], None
    for k in loose:
        if ended is None or k["start"] - ended >= gap_ns:
            groups.append([])
        groups[-1].append(k)
        ended = k["end"] if ended is None else max(ended, k["end"])
    return groups


def host_report(burst, records, before_ms, top):
    """What the host did around a burst of kernels (times in us from the
    launch of its first kernel), and the memsets and copies among them."""
    calls = sorted((r for r in records if "api" in r),
                   key=lambda c: c["start"])
    memory = [r for r in records if "memory" in r]
    # The call that launched each kernel (its correlation id: a runtime
    # call, or a driver call where a library launched it that way).
    launched = {c["correlation"]: c for c in calls}
    first = launched.get(burst[0]["correlation"])
    if first is None:
        sys.exit("no API call launched the burst's first kernel: "
                 "trace with MELT_KERNEL_TRACE_API=1")
    origin = first["start"]
    last_end = max(k["end"] for k in burst)
    waits = [c for c in calls if c["start"] <= last_end <= c["end"]]
    returned = max((c["end"] for c in waits), default=last_end)

    def us(t):
        return (t - origin) / 1e3

    print(f"first launch 0.0, its kernel starts {us(burst[0]['start']):.1f}, "
          f"the last kernel ends {us(last_end):.1f}, the call waiting for it "
          f"returns {us(returned):.1f} us")
    # Kernels whose launch came after the GPU had gone idle: (kernel, the
    # idle behind the host).
    kernels = sorted(burst, key=lambda k: k["start"])
    behind, ended = [], kernels[0]["start"]
    for k in kernels:
        call = launched.get(k["correlation"])
        if call and k["start"] > ended and call["end"] > ended:
            behind.append((k, k["start"] - max(ended, call["start"])))
        ended = max(ended, k["end"])
    print(f"kernels launched after the GPU went idle: {len(behind)}, "
          f"{sum(idle for _, idle in behind) / 1e3:.1f} us of idle behind "
          f"the host")
    inside = [c for c in calls if origin <= c["start"] <= returned]
    totals = collections.defaultdict(lambda: [0, 0])
    for c in inside:
        totals[c["api"]][0] += 1
        totals[c["api"]][1] += c["end"] - c["start"]
    print("host calls from the first launch to the return (count, us):")
    for name, (n, t) in sorted(totals.items(), key=lambda e: -e[1][1])[:top]:
        print(f"  {name:<44} {n:6d} {t / 1e3:10.1f}")
    work = [m for m in memory
            if burst[0]["start"] <= m["start"] <= last_end]
    print(f"memsets and copies on the device among the kernels: {len(work)}, "
          f"{sum(m['end'] - m['start'] for m in work) / 1e3:.1f} us")
    for m in work[:top]:
        ahead = [k for k in kernels if k["end"] <= m["start"]]
        after = [k for k in kernels if k["start"] >= m["end"]]
        print(f"  {us(m['start']):10.1f} {(m['end'] - m['start']) / 1e3:7.1f}"
              f" us {m['memory']} {m['bytes']} bytes, after "
              f"{short(ahead[-1]['name']) if ahead else '-'}, before "
              f"{short(after[0]['name']) if after else '-'}")
    print("kernels whose start waited on the host (start, us idle, kernel):")
    for k, idle in behind[:top]:
        print(f"  {us(k['start']):10.1f} {idle / 1e3:7.1f}  {short(k['name'])}")
    syncs = [c for c in calls if "Synchronize" in c["api"]
             and origin <= c["start"] <= returned]
    print("waits (start, us long): " + ", ".join(
        f"{us(c['start']):.1f} {(c['end'] - c['start']) / 1e3:.1f}"
        for c in syncs))
    print(f"host calls in the {before_ms:g} ms before the first launch "
          f"(start, us long):")
    for c in calls:
        if origin - before_ms * 1e6 <= c["start"] < origin:
            print(f"  {us(c['start']):10.1f} {(c['end'] - c['start']) / 1e3:9.1f}"
                  f"  {c['api']}")


def print_summary(s, top):
    for key, title in (("running_us", "running"),
                       ("idle_before_us", "idle before")):
        print(f"  by {title} (us a replay, medians):")
        for row in sorted(s["by_kernel"], key=lambda r: -r[key])[:top]:
            print(f"    {row['kernel']:<40} {row['launches']:>5g} x "
                  f"running {row['running_us']:8.1f}  idle before "
                  f"{row['idle_before_us']:8.1f}")


def print_order(title, kernel_lists, by_position=False):
    print(f"{title}, kernels in order (us, medians: start, end, span added)")
    for r in in_order(kernel_lists, by_position):
        grid = "x".join(str(g) for g in r["grid"]) if r["grid"] else ""
        print(f"  {r['start']:8.1f} {r['end']:8.1f} {r['adds']:6.1f}"
              f"  {r['kernel']:<32} {grid}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--min-replays", type=int, default=3)
    parser.add_argument("--json", action="store_true",
                        help="one JSON line per graph instead of tables")
    parser.add_argument("--order", action="store_true",
                        help="each graph's (with --burst, the burst's) "
                        "kernels in order, with the span each adds")
    parser.add_argument("--burst", action="store_true",
                        help="the last long burst of kernels of no graph "
                        "(a prefill) instead of the graphs")
    parser.add_argument("--host", action="store_true",
                        help="with --burst: the host's calls around it "
                        "(a trace with MELT_KERNEL_TRACE_API=1)")
    parser.add_argument("--before-ms", type=float, default=3.0)
    parser.add_argument("--burst-gap-ms", type=float, default=2.0)
    parser.add_argument("--min-burst-ms", type=float, default=1.0)
    args = parser.parse_args()
    calls = []
    graphs, loose = replays(args.trace, calls)
    if args.burst:
        long = [b for b in bursts(loose, args.burst_gap_ms * 1e6)
                if b[-1]["end"] - b[0]["start"] >= args.min_burst_ms * 1e6]
        if not long:
            sys.exit(f"{args.trace}: no burst of kernels of {args.min_burst_ms}"
                     f" ms or longer outside graphs")
        if args.host:
            host_report(long[-1], calls, args.before_ms, args.top)
            return
        if args.order:
            print_order(f"burst {len(long)} of kernels of no graph",
                        [long[-1]], by_position=True)
            return
        s = summary([long[-1]])
        if args.json:
            print(json.dumps(dict(burst=len(long), **s)))
            return
        print(f"burst {len(long)} of kernels of no graph: {s['kernels']} "
              f"kernels; span {s['span_us']:.1f} us, kernels running "
              f"{s['busy_us']:.1f} us, idle {s['idle_us']:.1f} us")
        print_summary(s, args.top)
        return
    if not graphs:
        sys.exit(f"{args.trace}: no kernel of a replayed graph")
    for graph, kernel_lists in sorted(graphs.items()):
        if len(kernel_lists) < args.min_replays:
            continue
        if args.order:
            print_order(f"graph {graph}: {len(kernel_lists)} replays",
                        kernel_lists)
            continue
        s = summary(kernel_lists)
        s["between_replays"] = between(kernel_lists, loose)
        if args.json:
            print(json.dumps(dict(graph=graph, **s)))
            continue
        print(f"graph {graph}: {s['replays']} replays of {s['kernels']} "
              f"kernels; span {s['span_us']:.1f} us, kernels running "
              f"{s['busy_us']:.1f} us, idle {s['idle_us']:.1f} us")
        gap = s["between_replays"]
        if gap:
            others = ", ".join(f"{name} {count:g}" for name, count in
                               gap["other_kernels"].items()) or "none"
            print(f"  between replays (medians): {gap['gap_us']:.1f} us, "
                  f"other kernels running {gap['other_kernels_us']:.1f} us "
                  f"of it (a gap: {others})")
        print_summary(s, args.top)


if __name__ == "__main__":
    main()

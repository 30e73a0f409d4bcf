#!/usr/bin/env python3
"""Compares two series of scripts/gpu/mini-model.sh's decode runs.

Reads the JSON lines of mini_melt.json and, for each model and batch asked
for, prints how many of the first greedy tokens two runs share and their
decode speeds. A series is KEY=VALUE (the field mini-model.sh adds to a
re-run, e.g. fold=off) or `default` (the run with none of those fields).
Only the runs with a 128-token prompt are compared.

  python3 bench/cuda/compare_tokens.py mini_melt.json --label "folds on/off" \\
      --model mini-fp8.melt --batch 1 --batch 64 default fold=off
"""
import argparse
import json

# The fields mini-model.sh adds to the runs it repeats with other settings.
SERIES_FIELDS = ("mla", "fold", "fp8", "silu_mul", "deterministic", "overlap",
                 "side_stream", "latent_append", "fp8_few_tokens", "logit_rows",
                 "steps_per_call", "record_ahead")


def matches(row, series):
    if series == "default":
        return not any(field in row for field in SERIES_FIELDS)
    field, value = series.split("=", 1)
    return str(row.get(field)) == value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--label", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--batch", action="append", type=int, required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.json)
            if line.startswith("{")]
    for model in args.model:
        for batch in args.batch:
            runs = [r for r in rows if r["model"] == model and
                    r["batch"] == batch and r["prompt_tokens"] == 128]
            a = next((r for r in runs if matches(r, args.first)), None)
            b = next((r for r in runs if matches(r, args.second)), None)
            if not a or not b:
                continue
            x, y = a["generated"], b["generated"]
            same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q),
                        len(x))
            print(f"{args.label}, {model} batch {batch}: first {same} of "
                  f"{len(x)} tokens the same; decode "
                  f"{a['decode_tokens_per_s']:.0f} vs "
                  f"{b['decode_tokens_per_s']:.0f} tok/s")


if __name__ == "__main__":
    main()

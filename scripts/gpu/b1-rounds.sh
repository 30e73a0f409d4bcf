#!/usr/bin/env bash
# On the GPU machine: variants (switches) of a model's batch-1 decode as
# melt-run measures it end to end (prompt 128, 64 new tokens, --bench
# --warmup, calls of 64 steps: the README's batch-1 figure), ROUNDS rounds
# (default 3) alternating the variants so that the machine's drift falls
# on all of them alike. Each run prints its tokens/s, its share of the
# weight-bandwidth roofline (melt-run's own: the step's weight bytes over
# the copy bandwidth measured in the same process) and the md5 of its
# greedy tokens (where two variants differ, their numerics do). ab-timeline.sh
# measures the same switches by the traced step's span instead.
#   scripts/gpu/b1-rounds.sh MODEL.melt VARIANT...
# VARIANT: "default" or NAME=VALUE[,NAME=VALUE]. MELT_B1_DEVICE: the
# device (cuda:0); MELT_B1_PROMPT_IDS: the prompt (common.sh's 128 ids over
# mini's vocabulary). A JSON line a run goes to $OUT/b1_rounds.json.
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: scripts/gpu/b1-rounds.sh MODEL.melt VARIANT..." >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
model=$1
shift
check_variants b1-rounds.sh "$@"
[ -n "${MELT_B1_SKIP_BUILD:-}" ] || build_gpu melt-run
melt_run=${MELT_RUN:-build-gpu/bin/melt-run}
prompt=${MELT_B1_PROMPT_IDS:-$(prompt_ids 128)}
for round in $(seq "${ROUNDS:-3}"); do
  for variant in "$@"; do
    variant_settings "$variant"
    env "${settings[@]}" "$melt_run" "$carry/models/$model" --random-weights \
      --device "${MELT_B1_DEVICE:-cuda:0}" --bench --warmup \
      --prompt-ids "$prompt" --max-new 64 2> "$out/b1_rounds_stderr.txt" |
      python3 -c '
import hashlib, json, sys
model, variant, rnd, log = sys.argv[1:]
found = False
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    found = True
    md5 = hashlib.md5(str(d["generated"]).encode()).hexdigest()[:12]
    share = d.get("decode_roofline_share")
    print("%s b1 %s round %s: %.1f tok/s, %s of the roofline, tokens md5 %s"
          % (model, variant, rnd, d["decode_tokens_per_s"],
             "%.2f%%" % (100 * share) if share else "no figure", md5))
    d.update({"model": model, "variant": variant, "round": int(rnd)})
    with open(log, "a") as f:
        f.write(json.dumps(d) + "\n")
if not found:
    print("%s b1 %s round %s: melt-run printed no result" % (model, variant, rnd))
' "$model" "$variant" "$round" "$out/b1_rounds.json"
  done
done

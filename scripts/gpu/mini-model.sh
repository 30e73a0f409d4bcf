#!/usr/bin/env bash
# On the GPU machine: the `mini` model (../shared/bench/BASELINES.md) with
# random weights in a session on the GPU (melt-run --device cuda:0
# --random-weights --batch ...) beside transformers' own mini run
# (hf_baseline.py env copy hf) in the same command: decode at batch 1, 16
# and 64 (prompt 128, 64 new) and prefill 1x1024 and 8x1024, for the bf16
# and deepseek-v3 precision policies. The artifacts come from here:
# scripts/gpu/prepare.sh --mini compiles them into .device-carry/models/.
# Each of melt's figures is the median of three timed runs, each in a
# session of its own (melt-run --repeat 3: a single 1x1024 prefill moved by
# up to 1.7x from run to run), every run's rates beside it in the JSON.
# JSON lines go to $OUT (or build-gpu/results); bench/cuda/plot_mini.py
# charts them. MELT_COMPARE_MLA=1 adds the prefills with MLA on the split
# kernel, MELT_COMPARE_FOLDS=1 the FP8 decode with the quantize pairs kept,
# MELT_COMPARE_SILU_MUL=1 the FP8 decode at batch 1 with the SiLU-muls as
# kernels of their own (speed, and whether the greedy tokens agree: the
# products' values are the same, and the experts sum in a fixed order),
# MELT_COMPARE_LATENT_APPEND=1 the decode at batch 1 and 64 with MLA's
# latent append in one kernel (MELT_CUDA_FUSED_LATENT_APPEND=1),
# MELT_COMPARE_MLA_DECOMPRESSED=1 the prefills with MLA absorbed
# (MELT_CUDA_MLA_DECOMPRESSED=0) beside the default decompressed form,
# MELT_COMPARE_DEVICE_GROUPING=1 the bf16 prefills with the experts grouped
# on the host (MELT_CUDA_DEVICE_GROUPING=0) beside the default (on the GPU),
# MELT_COMPARE_FP8_GROUPED_WGMMA=1 the FP8 prefills with the grouped gate
# and up widened to BF16 (MELT_CUDA_FP8_GROUPED_WGMMA=0) beside the default
# (on FP8 tensor cores),
# MELT_COMPARE_LOGIT_ROWS=1 the prefills with every kernel on every row
# (MELT_LOGIT_ROWS_ONLY=0) beside the default (the last layer's query side
# on the rows whose logits are wanted only),
# MELT_COMPARE_LATENT_CACHE=1 the decode with the BF16 latent cache (the
# default) and the F32 one (MELT_CUDA_BF16_LATENT_CACHE=0), at 128 and at
# 4000 prompt tokens,
# MELT_COMPARE_SIDE_STREAM=1 the decode at batch 1, 16 and 64 without the
# side branches on a second stream (MELT_CUDA_SIDE_STREAM=0) and with (the
# default), twice each, and whether their greedy tokens agree,
# MELT_COMPARE_FEW_TOKENS=1 the FP8 decode at batch 1 with and without the
# few-tokens FP8 kernel (MELT_CUDA_FP8_FEW_TOKENS=0), twice each,
# MELT_COMPARE_DETERMINISTIC=1 the decode at batch 1 and 64 twice more
# (the experts' sums in a fixed order, the default: the two runs' tokens
# must agree) and once with F32 atomics (MELT_CUDA_DETERMINISTIC_EXPERTS=0,
# for the speed), MELT_COMPARE_FP8_PATHS=1 the FP8 runs again
# without the padded FP8
# weights and the row-wise FP8 experts (MELT_CUDA_FP8_PAD_K=0
# MELT_CUDA_FP8_EXPERT_ROWS=0), MELT_COMPARE_OVERLAP=1
# the decode with every kernel launched after the one ahead ended;
# MELT_COMPARE_STEPS_PER_CALL=1 the decode a step a call (melt-run
# --steps-per-call 1) beside the default calls of 64 steps;
# MELT_COMPARE_RECORD_AHEAD=1 the decode with each session's first decode
# step recorded once the prefill is queued (MELT_RECORD_AHEAD=1), twice,
# alternating with the default (recorded at that step);
# MELT_SKIP_BASELINE=1 leaves transformers out.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_gpu melt-run
# (melt-run's stderr is kept too: a run of the same inputs whose greedy
# tokens differ from the run before says so there, counted at the end.)
run() { build-gpu/bin/melt-run "$carry/models/$1" --random-weights \
  --device cuda:0 --bench --warmup --repeat 3 "${@:2}" \
  2> >(tee -a "$out/melt_run_stderr.txt" >&2) |
  sed "s/^{/{\"model\": \"$1\", /"; }
: > "$out/mini_melt.json"
: > "$out/melt_run_stderr.txt"

for model in mini-bf16.melt mini-fp8.melt; do
  echo "== melt: $model on cuda:0 =="
  {
    run "$model" --prompt-ids "$(prompt_ids 128)" --max-new 64 --batch 1,16,64
    run "$model" --prompt-ids "$(prompt_ids 1024)" --max-new 1 --batch 1,8
    # MELT_COMPARE_MLA=1: the prefill again with its MLA on the F32 split
    # kernel instead of the tensor cores melt-compile chose (BF16 attention).
    if [ "${MELT_COMPARE_MLA:-}" = 1 ]; then
      MELT_CUDA_MLA_TENSOR_CORES=0 run "$model" --prompt-ids "$(prompt_ids 1024)" \
        --max-new 1 --batch 1,8 | sed 's/^{/{"mla": "split", /'
    fi
    # MELT_COMPARE_MLA_DECOMPRESSED=1: the prefills with MLA absorbed
    # (MELT_CUDA_MLA_DECOMPRESSED=0) where the compiler's cost model asks
    # for the decompressed form (K and V per head, then the fused attention).
    if [ "${MELT_COMPARE_MLA_DECOMPRESSED:-}" = 1 ]; then
      MELT_CUDA_MLA_DECOMPRESSED=0 run "$model" --prompt-ids "$(prompt_ids 1024)" \
        --max-new 1 --batch 1,8 | sed 's/^{/{"mla": "absorbed", /'
    fi
    # MELT_COMPARE_DEVICE_GROUPING=1: the bf16 prefills with the experts
    # grouped on the host (MELT_CUDA_DEVICE_GROUPING=0).
    if [ "${MELT_COMPARE_DEVICE_GROUPING:-}" = 1 ] && [ "$model" = mini-bf16.melt ]; then
      MELT_CUDA_DEVICE_GROUPING=0 run "$model" --prompt-ids "$(prompt_ids 1024)" \
        --max-new 1 --batch 1,8 | sed 's/^{/{"grouping": "host", /'
    fi
    # MELT_COMPARE_FP8_GROUPED_WGMMA=1: the FP8 prefills with the experts'
    # gate and up widened to BF16 (MELT_CUDA_FP8_GROUPED_WGMMA=0).
    if [ "${MELT_COMPARE_FP8_GROUPED_WGMMA:-}" = 1 ] && [ "$model" = mini-fp8.melt ]; then
      MELT_CUDA_FP8_GROUPED_WGMMA=0 run "$model" --prompt-ids "$(prompt_ids 1024)" \
        --max-new 1 --batch 1,8 | sed 's/^{/{"fp8_grouped": "widened", /'
    fi
    # MELT_COMPARE_LOGIT_ROWS=1: the prefills with every kernel on every
    # row (MELT_LOGIT_ROWS_ONLY=0).
    if [ "${MELT_COMPARE_LOGIT_ROWS:-}" = 1 ]; then
      MELT_LOGIT_ROWS_ONLY=0 run "$model" --prompt-ids "$(prompt_ids 1024)" \
        --max-new 1 --batch 1,8 | sed 's/^{/{"logit_rows": "all rows", /'
    fi
    # MELT_COMPARE_FOLDS=1: FP8 decode again with the quantize/dequantize
    # pairs its FP8 products make redundant kept (MELT_FOLD_QUANTIZE=0).
    if [ "${MELT_COMPARE_FOLDS:-}" = 1 ] && [ "$model" = mini-fp8.melt ]; then
      MELT_FOLD_QUANTIZE=0 run "$model" --prompt-ids "$(prompt_ids 128)" \
        --max-new 64 --batch 1,64 | sed 's/^{/{"fold": "off", /'
    fi
    if [ "${MELT_COMPARE_SILU_MUL:-}" = 1 ] && [ "$model" = mini-fp8.melt ]; then
      MELT_FUSE_SILU_MUL=0 run "$model" --prompt-ids "$(prompt_ids 128)" \
        --max-new 64 --batch 1 | sed 's/^{/{"silu_mul": "apart", /'
    fi
    if [ "${MELT_COMPARE_DETERMINISTIC:-}" = 1 ]; then
      for round in 1 2; do
        run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1,64 | sed "s/^{/{\"deterministic\": $round, /"
      done
      MELT_CUDA_DETERMINISTIC_EXPERTS=0 run "$model" --prompt-ids "$(prompt_ids 128)" \
        --max-new 64 --batch 1,64 | sed 's/^{/{"experts": "atomic", /'

    fi
    if [ "${MELT_COMPARE_FP8_PATHS:-}" = 1 ] && [ "$model" = mini-fp8.melt ]; then
      for args in "$(prompt_ids 128) --max-new 64 --batch 1,64" "$(prompt_ids 1024) --max-new 1 --batch 1,8"; do
        # shellcheck disable=SC2086 # the prompt and the batches as words
        MELT_CUDA_FP8_PAD_K=0 MELT_CUDA_FP8_EXPERT_ROWS=0 run "$model" \
          --prompt-ids $args | sed 's/^{/{"fp8": "unpadded, grouped", /'
      done
    fi
    # MELT_COMPARE_FEW_TOKENS=1: FP8 decode at batch 1 again with every FP8
    # product of a few tokens on the split-K kernel (MELT_CUDA_FP8_FEW_TOKENS=0),
    # then with the few-tokens kernel once more (runs alternate: the
    # machine's load moves the batch-1 figure by several percent).
    if [ "${MELT_COMPARE_FEW_TOKENS:-}" = 1 ] && [ "$model" = mini-fp8.melt ]; then
      for round in 1 2; do
        MELT_CUDA_FP8_FEW_TOKENS=0 run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1 | sed "s/^{/{\"fp8_few_tokens\": \"off $round\", /"
        run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1 | sed "s/^{/{\"fp8_few_tokens\": \"on $round\", /"
      done
    fi
    # MELT_COMPARE_LATENT_APPEND=1: decode with MLA's latent append, its
    # norm and rope in one kernel (experimental, MELT_CUDA_FUSED_LATENT_APPEND=1).
    if [ "${MELT_COMPARE_LATENT_APPEND:-}" = 1 ]; then
      MELT_CUDA_FUSED_LATENT_APPEND=1 run "$model" --prompt-ids "$(prompt_ids 128)" \
        --max-new 64 --batch 1,64 | sed 's/^{/{"latent_append": "one kernel", /'
    fi
    # MELT_COMPARE_SIDE_STREAM=1: decode with every side branch in order on
    # one stream (MELT_CUDA_SIDE_STREAM=0), runs alternating with the
    # default (the shared experts and queries on a second stream).
    if [ "${MELT_COMPARE_SIDE_STREAM:-}" = 1 ]; then
      for round in 1 2; do
        MELT_CUDA_SIDE_STREAM=0 run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1,16,64 | sed "s/^{/{\"side_stream\": \"off $round\", /"
        run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1,16,64 | sed "s/^{/{\"side_stream\": \"on $round\", /"
      done
    fi
    if [ "${MELT_COMPARE_LATENT_CACHE:-}" = 1 ]; then
      # The F32 latent cache against the default BF16 one, at the prompt
      # above and over 4000 cached tokens.
      for cache in 1 0; do
        MELT_CUDA_BF16_LATENT_CACHE=$cache run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1,64 | sed "s/^{/{\"latent_cache\": \"$cache\", /"
        MELT_CUDA_BF16_LATENT_CACHE=$cache run "$model" --prompt-ids "$(prompt_ids 4000)" \
          --max-new 32 --batch 1,8,32 | sed "s/^{/{\"latent_cache\": \"$cache\", /"
      done
    fi
    # MELT_COMPARE_STEPS_PER_CALL=1: greedy decode a step a call (the host
    # waiting for each pick) beside the default calls of 64 steps.
    if [ "${MELT_COMPARE_STEPS_PER_CALL:-}" = 1 ]; then
      run "$model" --prompt-ids "$(prompt_ids 128)" --max-new 64 --batch 1,16,64 \
        --steps-per-call 1 | sed 's/^{/{"steps_per_call": 1, /'
    fi
    # MELT_COMPARE_RECORD_AHEAD=1: the first decode step's graph recorded
    # once the prefill is queued (MELT_RECORD_AHEAD=1), alternating with the
    # default (recorded at that step).
    if [ "${MELT_COMPARE_RECORD_AHEAD:-}" = 1 ]; then
      for round in 1 2; do
        MELT_RECORD_AHEAD=1 run "$model" --prompt-ids "$(prompt_ids 128)" \
          --max-new 64 --batch 1,16,64 | sed "s/^{/{\"record_ahead\": \"on $round\", /"
        run "$model" --prompt-ids "$(prompt_ids 128)" --max-new 64 \
          --batch 1,16,64 | sed "s/^{/{\"record_ahead\": \"off $round\", /"
      done
    fi
    if [ "${MELT_COMPARE_OVERLAP:-}" = 1 ]; then
      MELT_CUDA_OVERLAP_KERNELS=0 run "$model" --prompt-ids "$(prompt_ids 128)" \
        --max-new 64 --batch 1,16,64 | sed 's/^{/{"overlap": "off", /'
    fi
  } | tee -a "$out/mini_melt.json" | sed 's/"generated": \[[0-9,]*\], //'
done
compare() { python3 bench/cuda/compare_tokens.py "$out/mini_melt.json" "$@"; }
# Two runs with the experts' sums in a fixed order: the same tokens.
[ "${MELT_COMPARE_DETERMINISTIC:-}" = 1 ] &&
  compare --label "experts summed in a fixed order, two runs" \
    --model mini-bf16.melt --model mini-fp8.melt --batch 1 --batch 64 \
    deterministic=1 deterministic=2
# The SiLU-muls fused and apart (the products' values are bit for bit the
# same, and the experts sum in a fixed order: the same tokens).
[ "${MELT_COMPARE_SILU_MUL:-}" = 1 ] &&
  compare --label "SiLU-mul fused / apart" --model mini-fp8.melt --batch 1 \
    default silu_mul=apart
# With and without the folds (the same arithmetic up to the rounding of a
# scale: they agree unless a near-tie flips).
[ "${MELT_COMPARE_FOLDS:-}" = 1 ] &&
  compare --label "folds on/off" --model mini-fp8.melt --batch 1 --batch 64 \
    default fold=off
# The shared experts beside the routed ones: the same kernels on another
# stream (the same tokens).
[ "${MELT_COMPARE_SIDE_STREAM:-}" = 1 ] &&
  compare --label "shared experts on a second stream / in order" \
    --model mini-bf16.melt --model mini-fp8.melt --batch 1 --batch 64 \
    "side_stream=on 1" "side_stream=off 1"
# Recorded ahead or at the step: the same graphs (the same tokens).
[ "${MELT_COMPARE_RECORD_AHEAD:-}" = 1 ] &&
  compare --label "recorded ahead / at the first step" \
    --model mini-bf16.melt --model mini-fp8.melt --batch 1 --batch 64 \
    "record_ahead=on 1" "record_ahead=off 1"
# What the runs said: repeats of the same inputs must agree (session 34
# found a race so, bench/results/mla_early_reads_race_s34_h200.txt).
echo "melt-run: runs whose greedy tokens differed from the run before:" \
  "$(grep -c "other tokens than the run before" "$out/melt_run_stderr.txt")"
[ "${MELT_SKIP_BASELINE:-}" = 1 ] && exit 0
echo "== transformers: mini =="
# Bounded (MELT_BASELINE_SECONDS, default 300): its batched_mm experts can
# run out of memory and take long; what it printed by then is kept.
BASELINE_OUT=$out timeout "${MELT_BASELINE_SECONDS:-300}" \
  python3 "$carry/hf_baseline.py" env copy hf | tee "$out/mini_torch.json" || true
if python3 -c "import matplotlib" 2>/dev/null; then
  python3 bench/cuda/plot_mini.py "$out/mini_melt.json" "$out/mini_torch.json" \
    "$out/mini.png"
fi

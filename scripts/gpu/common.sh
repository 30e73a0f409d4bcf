# Sourced by the scripts of scripts/gpu/ on the GPU machine: the repository
# root, the carried headers and models (.device-carry, made here by
# prepare.sh), the results folder ($OUT, where the device tool collects
# files), and the runtime's standalone build configured against the carried
# headers (the GPU machine has neither MLIR nor flatc).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
carry=$root/.device-carry
out=${OUT:-$root/build-gpu/results}
mkdir -p "$out"
# MELT_RESULTS_ARCHIVE=1: on exit (a failure or a time limit too), the
# results are packed into $out/results.tgz alone (for a collector that takes
# few files), by the outermost script only (one that another runs, e.g.
# mini-model.sh from a call's script, leaves its files to it).
if [ "${MELT_RESULTS_ARCHIVE:-}" = 1 ] && [ -z "${MELT_RESULTS_PACKER:-}" ]; then
  export MELT_RESULTS_PACKER=$$
  pack_results() {
    local tmp
    tmp=$(mktemp -d)
    mv "$out"/* "$tmp"/ 2>/dev/null || true
    tar czf "$out/results.tgz" -C "$tmp" . && rm -rf "$tmp"
  }
  trap pack_results EXIT
fi

# prompt_ids N: the benchmarks' prompt of N token ids (spread over mini's
# vocabulary), comma-separated, as melt-run --prompt-ids takes it.
prompt_ids() {
  python3 -c "import sys; n=int(sys.argv[1]); print(','.join(str((i * 7919) % 129280) for i in range(n)))" "$1"
}

# build_gpu TARGET...: configures build-gpu once and builds the targets.
build_gpu() {
  cmake -S runtime -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DMELT_SCHEMA_HEADER_DIR="$carry/schema" \
    -DMELT_FLATBUFFERS_INCLUDE_DIR="$carry/flatbuffers" >/dev/null
  ninja -C build-gpu "$@" >/dev/null
}

# golden_models: MELT_TEST_MODELS for the sessions' tests (artifact:checkpoint
# [:bound of the logit range], ';'-separated) of the golden models
# prepare.sh compiles: v3-tiny, v2-lite-tiny and v3-tiny-fp8 against the CPU
# (FP32); v3-tiny's bf16 and deepseek-v3 policies against the CPU's same
# policy (GEMMs of rounded operands in another order: 2%); and the golden
# model at DeepSeek's MLA dims (test/golden/v3-mla512) in each policy,
# where compiled.
golden_models() {
  local models="" m policy name bound
  for m in v3-tiny v2-lite-tiny v3-tiny-fp8; do
    models="$models${models:+;}$carry/models/$m.melt:test/golden/$m/checkpoint"
  done
  for policy in bf16 deepseek-v3; do
    models="$models;$carry/models/v3-tiny-$policy.melt:test/golden/v3-tiny/checkpoint:0.02"
  done
  for policy in :0.001 -bf16:0.02 -deepseek-v3:0.05; do
    name=${policy%%:*} bound=${policy##*:}
    [ -f "$carry/models/v3-mla512$name.melt" ] &&
      models="$models;$carry/models/v3-mla512$name.melt:test/golden/v3-mla512/checkpoint:$bound"
  done
  echo "$models"
}

# A/B scripts (prefill-ab.sh, decode-ab.sh): ab_arguments NAME=VALUE...
# [-- MODEL.melt...] sets the arrays `switches` (the NAME=VALUEs) and
# `models` (the models after --, else those in $AB_DEFAULT_MODELS).
ab_arguments() {
  switches=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    switches+=("$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  if [ $# -eq 0 ]; then
    read -r -a models <<< "$AB_DEFAULT_MODELS"
  else
    models=("$@")
  fi
}

# ab_melt MODEL SWITCHES-ON(0|1) ARGS...: melt-run on MODEL (random
# weights, cuda:0) with the switches or without, within $AB_TIMEOUT seconds
# (default 120).
ab_melt() {
  local model=$1 on=$2
  shift 2
  if [ "$on" = 1 ]; then
    timeout "${AB_TIMEOUT:-120}" env "${switches[@]}" build-gpu/bin/melt-run \
      "$carry/models/$model" --random-weights --device cuda:0 "$@"
  else
    timeout "${AB_TIMEOUT:-120}" build-gpu/bin/melt-run \
      "$carry/models/$model" --random-weights --device cuda:0 "$@"
  fi
}

# check_variants SCRIPT VARIANT...: exits 2 (naming SCRIPT) where a variant
# is neither "default" nor NAME=VALUE[,NAME=VALUE] (ab-timeline.sh,
# b1-rounds.sh); variant_settings VARIANT: its NAME=VALUEs into the array
# `settings` (none for "default"), for env.
check_variants() {
  local script=$1 variant
  shift
  for variant in "$@"; do
    if [ "$variant" != default ] && ! [[ $variant =~ ^[A-Z0-9_]+=[^,]*(,[A-Z0-9_]+=[^,]*)*$ ]]; then
      echo "$script: error: variant '$variant' is neither 'default' nor NAME=VALUE[,NAME=VALUE]" >&2
      exit 2
    fi
  done
}
variant_settings() {
  settings=()
  [ "$1" != default ] && IFS=, read -r -a settings <<< "$1"
  return 0
}

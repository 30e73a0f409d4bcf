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
# few files).
if [ "${MELT_RESULTS_ARCHIVE:-}" = 1 ]; then
  pack_results() {
    local tmp
    tmp=$(mktemp -d)
    mv "$out"/* "$tmp"/ 2>/dev/null || true
    tar czf "$out/results.tgz" -C "$tmp" . && rm -rf "$tmp"
  }
  trap pack_results EXIT
fi

# build_gpu TARGET...: configures build-gpu once and builds the targets.
build_gpu() {
  cmake -S runtime -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DMELT_SCHEMA_HEADER_DIR="$carry/schema" \
    -DMELT_FLATBUFFERS_INCLUDE_DIR="$carry/flatbuffers" >/dev/null
  ninja -C build-gpu "$@" >/dev/null
}

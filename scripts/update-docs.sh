#!/usr/bin/env bash
# Regenerates docs/ from the ODS definitions (dialect and passes).
# The ctest `docs.up-to-date` fails when docs/ is stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MELT_BUILD_DIR:-$root/build}
cmake --build "$build" --target mlir-doc >/dev/null
for f in MeltDialect.md MeltPasses.md; do
  cp "$build/docs/$f" "$root/docs/$f"
done
echo "docs/ updated from $build/docs"

// melt-fuse-mla rejects bad options.
// RUN: not melt-opt %s '--melt-fuse-mla=prefill=sometimes' 2>&1 | FileCheck %s --check-prefix=PREFILL
// RUN: not melt-opt %s '--melt-fuse-mla=prefill-threshold=-5' 2>&1 | FileCheck %s --check-prefix=THRESHOLD
// PREFILL: error: melt-fuse-mla: prefill must be auto, absorbed or decompressed, not 'sometimes'
// THRESHOLD: error: melt-fuse-mla: prefill-threshold must be >= 0, got -5
module {}

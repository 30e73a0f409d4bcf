//===- ScratchLayout.h - carving one scratch buffer into parts --*- C++ -*-===//
//
// Kernels that take one scratch buffer lay their parts out in it one after
// the other, each starting 256-byte aligned (what cudaMalloc gives, and
// more than any vector load needs).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_SCRATCHLAYOUT_H
#define MELT_RUNTIME_CUDA_SCRATCHLAYOUT_H

#include <cstddef>

namespace melt::rt::cuda {

/// `bytes` rounded up to the next part's alignment.
constexpr size_t scratchPartBytes(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_SCRATCHLAYOUT_H

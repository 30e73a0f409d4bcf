//===- ResidentBlocks.h - a kernel's blocks resident at once ---*- C++ -*-===//
//
// Kernels that run in one wave of blocks (each block taking several rows
// or tiles in turn) size their grid by how many of their blocks the GPU
// holds at once: blocks an SM (the occupancy calculator, at least 1) times
// the SMs.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_RESIDENTBLOCKS_H
#define MELT_RUNTIME_CUDA_RESIDENTBLOCKS_H

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

namespace melt::rt::cuda {

/// The SMs of the current device (1 where it cannot be asked), once.
inline int deviceMultiprocessors() {
  static const int multiprocessors = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                               device) != cudaSuccess)
      return 1;
    return std::max(count, 1);
  }();
  return multiprocessors;
}

/// Blocks of `kernel` (`threads` threads, `sharedBytes` of dynamic shared
/// memory) resident at once on the device, at least one an SM.
template <class Kernel>
int residentBlocks(Kernel kernel, int threads, size_t sharedBytes) {
  int perSm = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, threads,
                                                    sharedBytes) != cudaSuccess)
    perSm = 1;
  return std::max(perSm, 1) * deviceMultiprocessors();
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_RESIDENTBLOCKS_H

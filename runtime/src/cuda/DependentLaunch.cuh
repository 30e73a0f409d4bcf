//===- DependentLaunch.cuh - kernels that start early ----------*- CUDA -*-===//
//
// A decode step is a chain of ~150 short kernels; at batch 1 each waits for
// the last to end, then pays its own launch and ramp-up, a few microseconds
// that add up to a large part of the step. Hopper's programmatic dependent
// launch lets a kernel's blocks start while the kernel ahead of it in the
// stream still runs: they do what needs nothing from it (weights are
// constant: fetch them towards L2, load a norm's gammas), then wait for it
// to end (griddepcontrol.wait: the kernel ahead finished and its writes are
// visible), then let the kernel after them start in turn.
//
// The contract, for every kernel launched with launchOverlapped: it calls
// awaitPriorKernels() before it reads or writes any memory that another
// kernel of the step writes or reads (activations, caches, scratch, flags),
// and only weights before that (every kernel here calls it, and none is
// launched with <<< >>>: scripts/lint/check_kernel_launches.py, a ctest).
// Recorded into a CUDA graph, such launches become programmatic edges. MELT_CUDA_OVERLAP_KERNELS=0 launches them the
// plain way (the waits are then no-ops).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_DEPENDENTLAUNCH_CUH
#define MELT_RUNTIME_CUDA_DEPENDENTLAUNCH_CUH

#include "cuda/LaunchCount.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace melt::rt::cuda {

/// Waits until the kernel ahead in the stream has ended and its writes are
/// visible; then lets the kernel after this one begin to launch.
__device__ __forceinline__ void awaitPriorKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Asks for `bytes` (a multiple of 16, 16-byte aligned start) of constant
/// data to be brought into L2 without waiting for them: one thread, one
/// bulk (TMA) prefetch.
__device__ __forceinline__ void prefetchToL2(const void *p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (bytes > 0)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p),
                 "r"(bytes)
                 : "memory");
#endif
}

/// The most weight bytes a kernel prefetches before the one ahead of it
/// ends: half of the H200's 50 MB L2, the rest for what the step reads.
constexpr size_t kPrefetchBudget = 24u << 20;

/// Whether launchOverlapped lets kernels start early
/// (MELT_CUDA_OVERLAP_KERNELS=0: no).
inline bool kernelsOverlap() {
  static const bool overlap = [] {
    const char *v = std::getenv("MELT_CUDA_OVERLAP_KERNELS");
    return !v || std::strcmp(v, "0") != 0;
  }();
  return overlap;
}

namespace detail {
/// kernel<<<grid, block, shared, stream>>>(args...) in clusters of
/// `clusterX` blocks along x (0: no cluster attribute), allowed to start
/// early where kernelsOverlap().
template <typename... Params, typename... Args>
cudaError_t launchWith(void (*kernel)(Params...), dim3 grid, dim3 block,
                       size_t shared, cudaStream_t stream, unsigned clusterX,
                       Args &&...args) {
  cudaLaunchAttribute attributes[2] = {};
  unsigned count = 0;
  if (clusterX > 0) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = clusterX;
    attributes[count].val.clusterDim.y = 1;
    attributes[count].val.clusterDim.z = 1;
    ++count;
  }
  if (kernelsOverlap()) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = count;
  overlappedLaunchCount().fetch_add(1, std::memory_order_relaxed);
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}
} // namespace detail

/// kernel<<<grid, block, shared, stream>>>(args...), allowed to start while
/// the kernel ahead of it runs (see the contract above).
template <typename... Params, typename... Args>
cudaError_t launchOverlapped(void (*kernel)(Params...), dim3 grid, dim3 block,
                             size_t shared, cudaStream_t stream,
                             Args &&...args) {
  return detail::launchWith(kernel, grid, block, shared, stream, 0,
                            std::forward<Args>(args)...);
}

/// launchOverlapped in thread-block clusters of `clusterX` blocks along x
/// (grid.x a multiple of it; sm_90).
template <typename... Params, typename... Args>
cudaError_t launchOverlappedInClusters(void (*kernel)(Params...), dim3 grid,
                                       dim3 block, size_t shared,
                                       cudaStream_t stream, unsigned clusterX,
                                       Args &&...args) {
  return detail::launchWith(kernel, grid, block, shared, stream, clusterX,
                            std::forward<Args>(args)...);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_DEPENDENTLAUNCH_CUH

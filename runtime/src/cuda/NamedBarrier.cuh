//===- NamedBarrier.cuh - barriers between warpgroups ---------*- CUDA -*-===//
//
// A block's 16 hardware barriers by number (0 is __syncthreads'): a group
// of warps that produces something for another arrives at a barrier and
// goes on; the consumers sync on it, waiting until `kThreads` threads (the
// producers' and their own) have come. Writes before the arrival are
// visible to the consumers after their sync. Numbers and counts are
// compile-time constants, as the instructions want them.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_NAMEDBARRIER_CUH
#define MELT_RUNTIME_CUDA_NAMEDBARRIER_CUH

namespace melt::rt::cuda {

/// Waits at barrier `kId` until `kThreads` threads arrived or synced there.
template <int kId, int kThreads>
__device__ __forceinline__ void syncNamedBarrier() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}

/// Counts this thread at barrier `kId` (of `kThreads`) without waiting.
template <int kId, int kThreads>
__device__ __forceinline__ void arriveAtNamedBarrier() {
  asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_NAMEDBARRIER_CUH

//===- AsyncCopy.cuh - cp.async copies into shared memory -------*- CUDA
//-*-===//
//
// Global to shared copies that run while the thread goes on (sm_80+), in
// commit groups: a thread waits for its own groups; a barrier then shows
// the copied bytes to the other threads of the block.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ASYNCCOPY_CUH
#define MELT_RUNTIME_CUDA_ASYNCCOPY_CUH

#include <cstdint>

namespace melt::rt::cuda {

__device__ __forceinline__ uint32_t sharedAddress(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// 16 bytes, both addresses 16-byte aligned; past L1 (streamed data).
__device__ __forceinline__ void copyAsync16(void *sharedDst,
                                            const void *globalSrc) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                   sharedAddress(sharedDst)),
               "l"(globalSrc));
}

/// 4 bytes, both addresses 4-byte aligned.
__device__ __forceinline__ void copyAsync4(void *sharedDst,
                                           const void *globalSrc) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(
                   sharedAddress(sharedDst)),
               "l"(globalSrc));
}

/// Closes the group of the copies this thread started since the last one.
__device__ __forceinline__ void commitCopies() {
  asm volatile("cp.async.commit_group;\n" ::);
}

/// Waits until at most `kPending` of this thread's groups are in flight.
template <int kPending> __device__ __forceinline__ void awaitCopies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ASYNCCOPY_CUH

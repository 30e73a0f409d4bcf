//===- BulkTensorCopy.cuh - TMA tile loads and their barriers --*- CUDA -*-===//
//
// Hopper's tensor memory accelerator copies a box of a 2-D tensor (named by
// a CUtensorMap made on the host) into shared memory, swizzled as the map
// says, on one thread's request; a shared-memory barrier (mbarrier) counts
// the bytes as they land, and the threads that need them wait on its phase.
// One thread asks for 72 KB with nine instructions where cp.async needs
// every thread's eighteen, and the copy does not hold the threads'
// registers or load slots.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_BULKTENSORCOPY_CUH
#define MELT_RUNTIME_CUDA_BULKTENSORCOPY_CUH

#include "cuda/AsyncCopy.cuh"

#include <cuda.h>

#include <cstdint>

namespace melt::rt::cuda {

/// A barrier that one arrival (with the bytes expected) completes.
__device__ __forceinline__ void initLoadBarrier(uint64_t *barrier) {
  asm volatile(
      "mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(sharedAddress(barrier))
      : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

/// A barrier that `count` plain arrivals complete (a stage given back by
/// its readers).
__device__ __forceinline__ void initArrivalBarrier(uint64_t *barrier,
                                                   uint32_t count) {
  asm volatile(
      "mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(sharedAddress(barrier)),
      "r"(count)
      : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

/// One arrival on `barrier`.
__device__ __forceinline__ void arriveAt(uint64_t *barrier) {
  asm volatile(
      "mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(sharedAddress(barrier))
      : "memory");
}

/// Arrives on `barrier` expecting `bytes` to land before its phase ends.
__device__ __forceinline__ void expectBytes(uint64_t *barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   sharedAddress(barrier)),
               "r"(bytes)
               : "memory");
}

/// Waits until the phase of parity `parity` of `barrier` has completed.
__device__ __forceinline__ void awaitBarrier(uint64_t *barrier,
                                             uint32_t parity) {
  asm volatile("{\n.reg .pred done;\n"
               "waiting:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra waiting;\n}\n" ::"r"(sharedAddress(barrier)),
               "r"(parity)
               : "memory");
}

/// The box of `map` at (x, y) (x the inner coordinate) into `to`
/// (aligned as the map's swizzle needs), counted on `barrier`.
__device__ __forceinline__ void loadTile2d(void *to, const CUtensorMap *map,
                                           int x, int y, uint64_t *barrier) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::"
               "complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
                   sharedAddress(to)),
               "l"(map), "r"(x), "r"(y), "r"(sharedAddress(barrier))
               : "memory");
}

/// The box of a 3-D `map` at (x, y, z) (x the inner coordinate) into `to`,
/// counted on `barrier`.
__device__ __forceinline__ void loadTile3d(void *to, const CUtensorMap *map,
                                           int x, int y, int z,
                                           uint64_t *barrier) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::"
               "complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
                   sharedAddress(to)),
               "l"(map), "r"(x), "r"(y), "r"(z), "r"(sharedAddress(barrier))
               : "memory");
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_BULKTENSORCOPY_CUH

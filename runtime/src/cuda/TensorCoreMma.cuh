//===- TensorCoreMma.cuh - BF16 mma.sync and ldmatrix -----------*- CUDA
//-*-===//
//
// The warp-level tensor-core pieces melt's BF16 kernels share: the
// m16n8k16 product with FP32 accumulation (and its FP16 form), its fragments
// loaded from shared memory by ldmatrix (plain or transposed), and two floats
// packed as a BF16 pair.
//
// Fragments (lane = 4 g + t): A rows g and g + 8, columns 2t, 2t + 1 and
// 2t + 8, 2t + 9; B column g, rows likewise; C rows g and g + 8, columns
// 2t and 2t + 1 (c0, c1 row g; c2, c3 row g + 8).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_TENSORCOREMMA_CUH
#define MELT_RUNTIME_CUDA_TENSORCOREMMA_CUH

#include "cuda/AsyncCopy.cuh"

#include <cuda_bf16.h>

#include <cstdint>

namespace melt::rt::cuda {

/// acc += A[16x16] * B[16x8] (A row-major, B column-major fragments).
__device__ __forceinline__ void
mma16816(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// The same with FP16 operands (a0..a3 and b0, b1 as the fragments above).
__device__ __forceinline__ void mma16816Half(float (&acc)[4], uint32_t a0,
                                             uint32_t a1, uint32_t a2,
                                             uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// Four 8x8 BF16 matrices from shared memory; lane i names row i%8 of
/// matrix i/8. `.trans` hands out their transposes.
__device__ __forceinline__ void loadMatrices(uint32_t (&r)[4],
                                             const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(sharedAddress(row)));
}
__device__ __forceinline__ void loadMatricesTransposed(uint32_t (&r)[4],
                                                       const void *row) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(sharedAddress(row)));
}

/// `lo` in the low half, `hi` in the high half, each rounded to BF16.
__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_TENSORCOREMMA_CUH

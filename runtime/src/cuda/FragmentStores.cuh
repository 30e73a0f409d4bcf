//===- FragmentStores.cuh - BF16 rows 16 bytes a lane ----------*- CUDA -*-===//
//
// An MMA accumulator fragment (Wgmma.cuh, TensorCoreMma.cuh) gives each
// quad of a warp (lanes 4 g .. 4 g + 3) one row: lane t holds columns
// 8 j + 2 t and + 1 for each j. Packed to BF16 and stored as they are, a
// warp's store covers 16 bytes of each of 8 rows: half of each 32-byte
// sector, the other half written by the next store (four stores a row's 64
// bytes). Exchanged inside the quad first (two rounds of shuffles: a 4 x 4
// transpose of its packed pairs), lane t holds columns 8 t .. 8 t + 7 of
// each 32 and stores them as 16 bytes: a warp's store covers whole sectors,
// 64 bytes of each of its 8 rows, with a quarter of the store instructions.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_FRAGMENTSTORES_CUH
#define MELT_RUNTIME_CUDA_FRAGMENTSTORES_CUH

#include <cuda_bf16.h>

#include <cstdint>

namespace melt::rt::cuda {

/// Lane t of a quad, given p[s] = its row's columns 8 s + 2 t, + 1 (four
/// BF16 pairs, s = 0..3), returns columns 8 t .. 8 t + 7: what lane s held
/// as its p[t], for each s. Every lane of the quad takes part (`quadMask`
/// names them); the quad's lanes need not be the warp's only active ones.
__device__ __forceinline__ uint4 quadTransposed(uint32_t p0, uint32_t p1,
                                                uint32_t p2, uint32_t p3, int t,
                                                unsigned quadMask) {
  uint32_t p[4] = {p0, p1, p2, p3};
  // Round 1 swaps the lanes' high bit with the pairs': lane t sends the
  // pairs whose high bit is not its own to lane t ^ 2, which keeps them in
  // the same places. Round 2 does the same with the low bits (lane t ^ 1).
  // After both, lane t's p[u] is lane u's p[t].
  const bool high = t & 2, low = t & 1;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const uint32_t sent = high ? p[c] : p[2 + c];
    const uint32_t got = __shfl_xor_sync(quadMask, sent, 2);
    p[c] = high ? got : p[c];
    p[2 + c] = high ? p[2 + c] : got;
  }
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const uint32_t sent = low ? p[2 * c] : p[2 * c + 1];
    const uint32_t got = __shfl_xor_sync(quadMask, sent, 1);
    p[2 * c] = low ? got : p[2 * c];
    p[2 * c + 1] = low ? p[2 * c + 1] : got;
  }
  return make_uint4(p[0], p[1], p[2], p[3]);
}

/// Stores a quad's row of 128 BF16 columns at `row` (its first column, 64-
/// byte aligned): `pairs[j]` this lane's columns 8 j + 2 t, + 1 (lane 4 g +
/// t); 16 bytes a lane, each row's 64-byte pieces whole.
__device__ __forceinline__ void
storeFragmentRow(__nv_bfloat16 *row, const uint32_t (&pairs)[16], int lane) {
  const int t = lane % 4;
  const unsigned quadMask = 0xfu << (lane & ~3);
#pragma unroll
  for (int q = 0; q < 4; ++q)
    *reinterpret_cast<uint4 *>(row + 32 * q + 8 * t) =
        quadTransposed(pairs[4 * q], pairs[4 * q + 1], pairs[4 * q + 2],
                       pairs[4 * q + 3], t, quadMask);
}

/// The same row 16 bytes a lane where `wide`, else 4 bytes a lane as the
/// fragment holds it (the kernels' switch between the two ways).
__device__ __forceinline__ void storeFragmentRow(__nv_bfloat16 *row,
                                                 const uint32_t (&pairs)[16],
                                                 int lane, bool wide) {
  if (wide) {
    storeFragmentRow(row, pairs, lane);
    return;
  }
#pragma unroll
  for (int j = 0; j < 16; ++j)
    *reinterpret_cast<uint32_t *>(row + 8 * j + 2 * (lane % 4)) = pairs[j];
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_FRAGMENTSTORES_CUH

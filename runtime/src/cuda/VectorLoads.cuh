//===- VectorLoads.cuh - 16-byte weight loads in device code ---*- CUDA -*-===//
//
// Kernels that stream weights (few tokens: each weight is read once and used
// for a handful of products) are bound by memory; 16-byte loads, several in
// flight per thread, are what reach the copy bandwidth. A load brings 8
// BF16 or 4 F32 weights, widened here to F32; activations are F32 and are
// rounded to BF16 first where the weights are BF16 (the CPU device's
// products, whose operands are rounded so, give the same values).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_VECTORLOADS_CUH
#define MELT_RUNTIME_CUDA_VECTORLOADS_CUH

#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

namespace melt::rt::cuda {

/// Weights per 16-byte load.
template <typename W> constexpr int kPerLoad = 16 / int(sizeof(W));

/// Word i (0-7) of 32 bytes held as two 16-byte vectors (with i known at
/// compile time, a register).
__device__ __forceinline__ uint32_t wordOf(const uint4 (&v)[2], int i) {
  const uint4 &u = v[i / 4];
  switch (i % 4) {
  case 0:
    return u.x;
  case 1:
    return u.y;
  case 2:
    return u.z;
  default:
    return u.w;
  }
}

/// A streamed load: read once, not kept in L1.
__device__ __forceinline__ uint4 streamLoad(const void *p) {
  return __ldcs(static_cast<const uint4 *>(p));
}

/// The weights of a 16-byte load, widened.
template <typename W>
__device__ __forceinline__ void widen(uint4 v, float (&out)[kPerLoad<W>]) {
  if constexpr (std::is_same_v<W, __nv_bfloat16>) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // A BF16 is the high half of an F32.
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  } else {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  }
}

/// An activation as the product with a W weight takes it.
template <typename W> __device__ __forceinline__ float asOperand(float v) {
  if constexpr (std::is_same_v<W, __nv_bfloat16>)
    return __bfloat162float(__float2bfloat16(v));
  else
    return v;
}

/// sum_i x[i] * w[i] over the kPerLoad<W> values of one load; x (F32, 16-byte
/// aligned) is read through L1 (it is reused by every weight row).
template <typename W>
__device__ __forceinline__ float dotLoad(const float *x, uint4 packed) {
  float w[kPerLoad<W>];
  widen<W>(packed, w);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLoad<W>; i += 4) {
    float4 v = *reinterpret_cast<const float4 *>(x + i);
    sum += asOperand<W>(v.x) * w[i] + asOperand<W>(v.y) * w[i + 1] +
           asOperand<W>(v.z) * w[i + 2] + asOperand<W>(v.w) * w[i + 3];
  }
  return sum;
}

/// A lane's parts of sum_i xs[r][i] * row[i], r < M, over i < len, the
/// warp's lanes across the row: 16-byte loads of the row, four in flight,
/// where len is a multiple of a load and the row and the x rows are 16-byte
/// aligned (x rows len apart from xs[0]'s alignment); else one weight at a
/// time. Add the lanes' parts with warpSum.
template <typename W, int M>
__device__ __forceinline__ void
rowDotParts(const W *row, const float *const (&xs)[M], int len, int lane,
            float (&acc)[M]) {
  constexpr int V = kPerLoad<W>, kInFlight = 4;
  uintptr_t addresses = reinterpret_cast<uintptr_t>(row);
#pragma unroll
  for (int r = 0; r < M; ++r)
    addresses |= reinterpret_cast<uintptr_t>(xs[r]);
  if (len % V != 0 || addresses % 16 != 0) {
    for (int i = lane; i < len; i += 32) {
      float w;
      if constexpr (std::is_same_v<W, __nv_bfloat16>)
        w = __bfloat162float(row[i]);
      else
        w = row[i];
#pragma unroll
      for (int r = 0; r < M; ++r)
        acc[r] += asOperand<W>(xs[r][i]) * w;
    }
    return;
  }
  const int loads = len / V;
  for (int base = lane; base < loads; base += 32 * kInFlight) {
    uint4 packed[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      int at = base + 32 * u;
      packed[u] = at < loads ? streamLoad(row + size_t(at) * V)
                             : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      int at = base + 32 * u;
      if (at < loads) {
#pragma unroll
        for (int r = 0; r < M; ++r)
          acc[r] += dotLoad<W>(xs[r] + size_t(at) * V, packed[u]);
      }
    }
  }
}

/// A lane's parts of sum_i x[i] * a[i] and sum_i x[i] * b[i] (a gate row
/// and its up row), both rows' loads in flight together: one memory round
/// trip where rowDotPart twice takes two. Each part adds its loads in the
/// order rowDotPart does: the same sums.
template <typename W>
__device__ __forceinline__ void
rowPairDotParts(const W *a, const W *b, const float *x, int len, int lane,
                float &sumA, float &sumB) {
  constexpr int V = kPerLoad<W>, kInFlight = 4;
  const uintptr_t addresses = reinterpret_cast<uintptr_t>(a) |
                              reinterpret_cast<uintptr_t>(b) |
                              reinterpret_cast<uintptr_t>(x);
  if (len % V != 0 || addresses % 16 != 0) {
    const float *const xs[1] = {x};
    float accA[1] = {sumA}, accB[1] = {sumB};
    rowDotParts<W, 1>(a, xs, len, lane, accA);
    rowDotParts<W, 1>(b, xs, len, lane, accB);
    sumA = accA[0], sumB = accB[0];
    return;
  }
  const int loads = len / V;
  for (int base = lane; base < loads; base += 32 * kInFlight) {
    uint4 packedA[kInFlight], packedB[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int at = base + 32 * u;
      packedA[u] =
          at < loads ? streamLoad(a + size_t(at) * V) : make_uint4(0, 0, 0, 0);
      packedB[u] =
          at < loads ? streamLoad(b + size_t(at) * V) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int at = base + 32 * u;
      if (at < loads) {
        sumA += dotLoad<W>(x + size_t(at) * V, packedA[u]);
        sumB += dotLoad<W>(x + size_t(at) * V, packedB[u]);
      }
    }
  }
}

/// The one-row form: a lane's part of sum_i x[i] * row[i].
template <typename W>
__device__ __forceinline__ float rowDotPart(const W *row, const float *x,
                                            int len, int lane) {
  const float *const xs[1] = {x};
  float acc[1] = {0.f};
  rowDotParts<W, 1>(row, xs, len, lane, acc);
  return acc[0];
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_VECTORLOADS_CUH

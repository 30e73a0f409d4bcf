//===- RowNorm.cuh - one row's RMSNorm by a block or a warp ---*- CUDA -*-===//
//
// The RMSNorm of rmsNorm / addRmsNorm (a block a row, or a warp a row for
// many rows of up to 2048 values), in one place for the kernels that
// normalize a row: the norm kernels and MLA's latent append (which writes
// the normalized latent into its cache row). Their values must agree bit
// for bit (the executor does the append's norm in the append's kernel).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ROWNORM_CUH
#define MELT_RUNTIME_CUDA_ROWNORM_CUH

#include "cuda/DependentLaunch.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

#include <type_traits>

namespace melt::rt::cuda {

/// One block of 256 threads per row. A row of up to 8 x 256 values is
/// read once into registers, every load in flight at once (a loop that
/// loads one value at a time waits a memory latency per value); longer
/// rows in such batches, twice.
constexpr int kNormThreads = 256, kNormBatch = 8;

/// A row's value read again (normRow's second pass over a long row): x,
/// or with kAdd the residual sum x + b as add() stored it in `sum`
/// (rounded to BF16 where sum is BF16).
template <bool kAdd>
__device__ __forceinline__ float rowValue(Operand x, Operand b, Result sum,
                                          size_t i) {
  if constexpr (!kAdd) {
    return load(x, i);
  } else {
    float v = load(x, i) + load(b, i);
    return sum.bf16 ? __bfloat162float(__float2bfloat16(v)) : v;
  }
}

/// The RMSNorm of the row of `cols` values at `base` of x (with kAdd, of x
/// + b, written to sumOut), every thread of the block taking part: value c
/// times the reciprocal RMS times gamma[c] goes to write(c, value). Waits
/// for the kernel ahead (awaitPriorKernels) once the gammas of a row held
/// in registers are loaded (they are weights).
///
/// With kAdd, every x and b of a batch is loaded before any of its sums
/// is stored: a loop that stores each value's sum before the next value's
/// loads keeps those loads behind the store (the compiler cannot tell the
/// sum's memory from x's or b's; its PTX: eight loads, store, loads,
/// store...), a memory round trip per value of the thread, where the norms
/// without the add issue all their loads at once. Loading first took mini's
/// batch-1 step from 741 to 722 us (bf16) and 634 to 613 us (FP8) on an
/// H200 (session 38).
///
/// kSumWhereGiven: the sums are stored only where sumOut has memory (the
/// blocks of a product that each normalize the same row: one stores them;
/// the others pass sumOut's `bf16` all the same, which the values follow).
template <bool kAdd, bool kSumWhereGiven = false, class Write>
__device__ __forceinline__ void normRow(Operand x, Operand b, Result sumOut,
                                        Operand gamma, float eps, int cols,
                                        size_t base, Write write) {
  const bool inRegisters = cols <= kNormBatch * kNormThreads;
  float kept[kNormBatch], g[kNormBatch];
  if (inRegisters) {
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u) {
      int c = u * kNormThreads + threadIdx.x;
      g[u] = c < cols ? load(gamma, c) : 0.f;
    }
  }
  awaitPriorKernels();
  float sum = 0.f;
  for (int start = 0; start < cols; start += kNormBatch * kNormThreads) {
    if constexpr (kAdd) {
      float added[kNormBatch];
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u) {
        int c = start + u * kNormThreads + threadIdx.x;
        added[u] = c < cols ? load(x, base + c) + load(b, base + c) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u) {
        int c = start + u * kNormThreads + threadIdx.x;
        if (c < cols && (!kSumWhereGiven || sumOut.data))
          store(sumOut, base + c, added[u]);
        kept[u] = sumOut.bf16 ? __bfloat162float(__float2bfloat16(added[u]))
                              : added[u];
      }
    } else {
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u) {
        int c = start + u * kNormThreads + threadIdx.x;
        kept[u] = c < cols ? load(x, base + c) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u)
      sum += kept[u] * kept[u];
  }
  sum = warpSum(sum);
  __shared__ float partial[32];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0)
    partial[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kNormThreads / 32 ? partial[lane] : 0.f;
    s = warpSum(s);
    if (lane == 0)
      partial[0] = s;
  }
  __syncthreads();
  float scale = rsqrtf(partial[0] / cols + eps);
  for (int start = 0; start < cols; start += kNormBatch * kNormThreads) {
    if (!inRegisters)
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u) {
        int c = start + u * kNormThreads + threadIdx.x;
        g[u] = c < cols ? load(gamma, c) : 0.f;
        kept[u] = c < cols ? rowValue<kAdd>(x, b, sumOut, base + c) : 0.f;
      }
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u) {
      int c = start + u * kNormThreads + threadIdx.x;
      if (c < cols)
        write(c, kept[u] * scale * g[u]);
    }
  }
}

/// Rows of up to kWarpNormCols values in fours (normRowsByWarp), many of
/// them, are normalized a warp a row by warpNormRow: a block a row kept
/// five or six rows an SM in flight, each through three barriers, and a
/// prefill's 8192-row norms ran at 1.1-2 TB/s, latency-bound. The fewest
/// rows keep a block a row: eight warps on a row finish it sooner than one
/// (melt-bench-prefill-rows on an H200, a layer's input norm after the add:
/// 1 row 3.5 us a block a row against 4.7 a warp a row; 64 rows 6.3
/// against 5.6, 1024 16.1 against 12.9, 8192 100 against 63). The warp's sum of
/// squares comes in another order than normRow's, so every kernel whose values
/// must agree with another's asks normRowsByWarp (the host decides, from the
/// shape and the operands' alignment alone).
constexpr int kWarpNormCols = 2048;

/// Whether `rows` rows of `cols` values of x (and b and the sum, where
/// given) are normalized a warp a row: cols a multiple of 4 up to
/// kWarpNormCols, at least MELT_CUDA_NORM_BY_WARP_ROWS rows (default
/// 64), each operand aligned to 4 elements (MELT_CUDA_NORM_BY_WARP=0:
/// never).
bool normRowsByWarp(int rows, int cols, Operand x, const Operand *b = nullptr,
                    const Result *sum = nullptr);

/// The fours of a row a lane holds: ceil(cols / 128) of them, rounded up to
/// a kernel's instance (4, 8 or 16; the unused ones are zeros, which leave
/// the sum of squares as it is).
__host__ __device__ constexpr int warpNormQuads(int cols) {
  return cols <= 512 ? 4 : cols <= 1024 ? 8 : 16;
}

/// normRow's RMSNorm of the row at `base` by one warp (normRowsByWarp),
/// into v: lane l holds the row's fours l, l + 32, ..., v[j] the four at
/// columns 4 (l + 32 j) (zeros past the row). Its sum of squares is each
/// lane's fours in order (fmaf, x y z w), then warpSum. It stores nothing
/// but the sums (with kAdd), so the callers' stores come after every load
/// and their per-four work (a quantize block is the warp's j-th fours) can
/// run for all j at once, not one four's loads and shuffles after
/// another's. With kAdd, addend(w) gives the fours added to x's (b's, or
/// what a combine makes: warpNormRowOfCombined).
template <bool kAdd, int kQuads, class Addend>
__device__ __forceinline__ void
warpNormRowWith(Operand x, Addend addend, Result sumOut, Operand gamma,
                float eps, int cols, size_t base, float4 (&v)[kQuads]) {
  const int lane = threadIdx.x % 32, quads = cols / 4;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  // Every load of the row before any store (the sum may be x's memory); the
  // addend's first (a combine's loads and sums with x's row not yet held).
  float4 w[kQuads];
  if constexpr (kAdd)
    addend(w);
#pragma unroll
  for (int j = 0; j < kQuads; ++j) {
    const int q = lane + 32 * j;
    v[j] = q < quads ? load4(x, base + 4 * size_t(q)) : zero;
  }
  if constexpr (kAdd) {
#pragma unroll
    for (int j = 0; j < kQuads; ++j) {
      const int q = lane + 32 * j;
      if (q >= quads)
        continue;
      float4 s = make_float4(v[j].x + w[j].x, v[j].y + w[j].y, v[j].z + w[j].z,
                             v[j].w + w[j].w);
      store4(sumOut, base + 4 * size_t(q), s);
      if (sumOut.bf16) // the value as stored
        s = make_float4(__bfloat162float(__float2bfloat16(s.x)),
                        __bfloat162float(__float2bfloat16(s.y)),
                        __bfloat162float(__float2bfloat16(s.z)),
                        __bfloat162float(__float2bfloat16(s.w)));
      v[j] = s;
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kQuads; ++j) {
    sum = __fmaf_rn(v[j].x, v[j].x, sum);
    sum = __fmaf_rn(v[j].y, v[j].y, sum);
    sum = __fmaf_rn(v[j].z, v[j].z, sum);
    sum = __fmaf_rn(v[j].w, v[j].w, sum);
  }
  sum = warpSum(sum);
  const float scale = rsqrtf(sum / cols + eps);
  // (No store between these gamma loads: all in flight at once.)
#pragma unroll
  for (int j = 0; j < kQuads; ++j) {
    const int q = lane + 32 * j;
    const float4 g = q < quads ? load4(gamma, 4 * size_t(q)) : zero;
    v[j] = make_float4(v[j].x * scale * g.x, v[j].y * scale * g.y,
                       v[j].z * scale * g.z, v[j].w * scale * g.w);
  }
}

/// warpNormRowWith adding b's row at `base` (with kAdd).
template <bool kAdd, int kQuads>
__device__ __forceinline__ void warpNormRow(Operand x, Operand b, Result sumOut,
                                            Operand gamma, float eps, int cols,
                                            size_t base, float4 (&v)[kQuads]) {
  const int lane = threadIdx.x % 32, quads = cols / 4;
  warpNormRowWith<kAdd>(
      x,
      [&](float4(&w)[kQuads]) {
#pragma unroll
        for (int j = 0; j < kQuads; ++j) {
          const int q = lane + 32 * j;
          w[j] = q < quads ? load4(b, base + 4 * size_t(q))
                           : make_float4(0.f, 0.f, 0.f, 0.f);
        }
      },
      sumOut, gamma, eps, cols, base, v);
}

/// warpNormRow with its instance chosen at run time (warpNormQuads), each
/// of the row's fours then given to write(c, four) (columns c .. c + 3):
/// kernels with other work than the norm (the latent append).
template <class Write>
__device__ __forceinline__ void
warpNormRowOfAnyWidth(Operand x, Operand gamma, float eps, int cols,
                      size_t base, Write write) {
  auto normalize = [&](auto quads) {
    float4 v[decltype(quads)::value];
    warpNormRow<false>(x, x, Result{nullptr, false}, gamma, eps, cols, base, v);
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < decltype(quads)::value; ++j)
      if (4 * (lane + 32 * j) < cols)
        write(4 * (lane + 32 * j), v[j]);
  };
  switch (warpNormQuads(cols)) {
  case 4:
    return normalize(std::integral_constant<int, 4>());
  case 8:
    return normalize(std::integral_constant<int, 8>());
  default:
    return normalize(std::integral_constant<int, 16>());
  }
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ROWNORM_CUH

//===- Elementwise.cu - row-wise and elementwise kernels (CUDA) -----------===//
#include "cuda/Elementwise.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/ExpertCombine.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/RowNorm.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/WarpReduce.cuh"

#include "EnvSwitch.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

using namespace melt::rt::cuda;

namespace {

/// x moved so that row `row`'s values, `xPitch` elements from one row's
/// start to the next, sit where a packed x (`cols` apart) has them: the
/// norms index x as packed (xPitch == cols: x itself).
__device__ __forceinline__ Operand rowPitched(Operand x, int row, int cols,
                                              int xPitch) {
  x.data = static_cast<const char *>(x.data) +
           size_t(row) * size_t(xPitch - cols) * (x.bf16 ? 2 : 4);
  return x;
}

/// With kAdd, the residual add before the norm in the same pass
/// (Device::addRmsNorm).
/// `yBf16` (where given): y's rows in BF16 as well.
template <bool kAdd>
__global__ void __launch_bounds__(kNormThreads)
    rmsNormKernel(Operand x, Operand b, Result sumOut, Operand gamma, float eps,
                  int cols, Result y, __nv_bfloat16 *yBf16, int xPitch) {
  const size_t base = size_t(blockIdx.x) * cols;
  x = rowPitched(x, int(blockIdx.x), cols, xPitch);
  normRow<kAdd>(x, b, sumOut, gamma, eps, cols, base, [&](int c, float v) {
    store(y, base + c, v);
    if (yBf16)
      yBf16[base + c] = __float2bfloat16(v);
  });
}

/// rmsNormKernel into F32 y (where given), then the block quantizes the
/// row in 1 x 128 blocks, a warp a block, with quantizeRowsFp8's
/// arithmetic (BlockQuantize.cuh): the same codes and scales as that
/// kernel reading y. kStaged: the row kept in shared memory for that
/// (cols floats), else read back from y.
template <bool kAdd, bool kStaged>
__global__ void __launch_bounds__(kNormThreads)
    rmsNormQuantizeKernel(Operand x, Operand b, Result sumOut, Operand gamma,
                          float eps, int rows, int cols, float *y,
                          __nv_fp8_e4m3 *q, float *scales, __nv_bfloat16 *yBf16,
                          int xPitch) {
  extern __shared__ float4 stagedRow[];
  float *staged = reinterpret_cast<float *>(stagedRow);
  const size_t base = size_t(blockIdx.x) * cols;
  x = rowPitched(x, int(blockIdx.x), cols, xPitch);
  normRow<kAdd>(x, b, sumOut, gamma, eps, cols, base, [&](int c, float v) {
    if constexpr (kStaged)
      staged[c] = v;
    if (y)
      y[base + c] = v;
  });
  __syncthreads(); // the row written, for every thread of the block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int blk = warp; blk < cols / 128; blk += kNormThreads / 32) {
    // (Past L1: the row was just written through it by other threads.)
    const float4 v =
        kStaged
            ? stagedRow[blk * 32 + lane]
            : __ldcg(reinterpret_cast<const float4 *>(y + base + blk * 128) +
                     lane);
    const float amax =
        fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    const float s = gemmInputScale(warpMax(amax));
    reinterpret_cast<uint32_t *>(q + base + blk * 128)[lane] =
        gemmInputCodes(v.x, v.y, v.z, v.w, 1.f / s);
    if (lane == 0)
      scales[size_t(blk) * rows + blockIdx.x] = s;
    if (yBf16) // the row in BF16 too (a BF16 product's input)
      reinterpret_cast<uint2 *>(yBf16 + base + blk * 128)[lane] =
          make_uint2(packBf16(v.x, v.y), packBf16(v.z, v.w));
  }
}

/// Rows a block of the warp-a-row norms (normRowsByWarp).
constexpr int kWarpNormRowsPerBlock = 4;

/// Four values to y at i, rounded as store() rounds them; one wide store
/// where y's address allows.
__device__ __forceinline__ void storeFour(Result y, size_t i, float4 v) {
  if (alignedFor4(static_cast<char *>(y.data) + i * (y.bf16 ? 2 : 4), y.bf16)) {
    store4(y, i, v);
  } else {
    store(y, i, v.x);
    store(y, i + 1, v.y);
    store(y, i + 2, v.z);
    store(y, i + 3, v.w);
  }
}

/// rmsNormKernel (y where given, and y in BF16 where yBf16 is) and, with
/// kQuantize, rmsNormQuantizeKernel (cols a multiple of 128: y's 1 x 128
/// blocks quantized, q and scales, and y in BF16 where yBf16 is given), a
/// warp a row (warpNormRow). The
/// blocks' largest magnitudes are reduced over the warp for all blocks at
/// once (a block after another waited on five shuffles each). kCombine
/// (with kAdd): b's values are the row's combine of `combined`, summed
/// here as combineExpertRows sums them (ExpertCombine.cuh), b unread.
template <bool kAdd, int kQuads, bool kQuantize, bool kBf16X,
          bool kCombine = false>
__global__ void __launch_bounds__(32 * kWarpNormRowsPerBlock, kCombine ? 3 : 1)
    warpNormKernel(Operand x, Operand b, Result sumOut, Operand gamma,
                   float eps, int rows, int cols, Result y, __nv_fp8_e4m3 *q,
                   float *scales, __nv_bfloat16 *yBf16, int xPitch,
                   CombinedRows combined) {
  awaitPriorKernels();
  const int row = blockIdx.x * kWarpNormRowsPerBlock + threadIdx.x / 32,
            lane = threadIdx.x % 32;
  if (row >= rows)
    return;
  const size_t base = size_t(row) * cols;
  float4 v[kQuads];
  x.bf16 = kBf16X; // (the launch's choice: one load path compiled)
  x = rowPitched(x, row, cols, xPitch);
  const int quads = cols / 4;
  if constexpr (kCombine) {
    static_assert(kAdd, "a combine is an addend");
    warpNormRowWith<true>(
        x,
        [&](float4(&w)[kQuads]) {
#pragma unroll
          for (int j = 0; j < kQuads; ++j)
            w[j] = make_float4(0.f, 0.f, 0.f, 0.f);
          // BF16 rows: two choices' loads in flight at once (a choice at a
          // time, the warp waited a memory round trip per choice: the norm
          // with the combine ran as long as the two kernels it replaced).
          // The sums in the same order.
          int k = 0;
          if (combined.expertOut.bf16)
            for (; k + 1 < combined.choices; k += 2) {
              const int pair = row * combined.choices + k;
              const int from[2] = {combined.rowOfPair[pair],
                                   combined.rowOfPair[pair + 1]};
              uint2 raw[2][kQuads];
#pragma unroll
              for (int c = 0; c < 2; ++c)
#pragma unroll
                for (int j = 0; j < kQuads; ++j)
                  if (from[c] >= 0 && lane + 32 * j < quads)
                    raw[c][j] = *reinterpret_cast<const uint2 *>(
                        static_cast<const __nv_bfloat16 *>(
                            combined.expertOut.data) +
                        size_t(from[c]) * cols + 4 * size_t(lane + 32 * j));
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                if (from[c] < 0) // no row: its expert index was outside
                  continue;
                const float weight = combined.weights[pair + c];
#pragma unroll
                for (int j = 0; j < kQuads; ++j)
                  if (lane + 32 * j < quads)
                    addWeightedFour(w[j], bf16Four(raw[c][j]), weight,
                                    combined.combineBf16);
              }
            }
          for (; k < combined.choices; ++k) {
            const int pair = row * combined.choices + k;
            const int from = combined.rowOfPair[pair];
            if (from < 0) // no row: its expert index was outside
              continue;
            const float weight = combined.weights[pair];
            float4 four[kQuads]; // (every load of the choice out first)
#pragma unroll
            for (int j = 0; j < kQuads; ++j)
              if (lane + 32 * j < quads)
                four[j] =
                    load4(combined.expertOut,
                          size_t(from) * cols + 4 * size_t(lane + 32 * j));
#pragma unroll
            for (int j = 0; j < kQuads; ++j)
              if (lane + 32 * j < quads)
                addWeightedFour(w[j], four[j], weight, combined.combineBf16);
          }
          if (combined.plus.data)
#pragma unroll
            for (int j = 0; j < kQuads; ++j)
              if (lane + 32 * j < quads)
                addFour(w[j],
                        load4(combined.plus, base + 4 * size_t(lane + 32 * j)));
        },
        sumOut, gamma, eps, cols, base, v);
  } else {
    warpNormRow<kAdd>(x, b, sumOut, gamma, eps, cols, base, v);
  }
  if (y.data)
#pragma unroll
    for (int j = 0; j < kQuads; ++j)
      if (lane + 32 * j < quads)
        storeFour(y, base + 4 * size_t(lane + 32 * j), v[j]);
  if (!kQuantize && yBf16) // (quantizing, the loop below writes them)
#pragma unroll
    for (int j = 0; j < kQuads; ++j)
      if (lane + 32 * j < quads)
        storeFour(Result{yBf16, true}, base + 4 * size_t(lane + 32 * j), v[j]);
  if constexpr (kQuantize) {
    const int blocks = cols / 128; // every lane holds a four of each
    float amax[kQuads];
#pragma unroll
    for (int j = 0; j < kQuads; ++j)
      amax[j] = fmaxf(fmaxf(fabsf(v[j].x), fabsf(v[j].y)),
                      fmaxf(fabsf(v[j].z), fabsf(v[j].w)));
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
#pragma unroll
      for (int j = 0; j < kQuads; ++j)
        amax[j] = fmaxf(amax[j], __shfl_xor_sync(0xffffffffu, amax[j], offset));
#pragma unroll
    for (int j = 0; j < kQuads; ++j) {
      if (j >= blocks)
        break;
      const size_t c = base + 128 * size_t(j) + 4 * lane;
      const float s = gemmInputScale(amax[j]);
      *reinterpret_cast<uint32_t *>(q + c) =
          gemmInputCodes(v[j].x, v[j].y, v[j].z, v[j].w, 1.f / s);
      if (lane == j % 32)
        scales[size_t(j) * rows + row] = s;
      if (yBf16)
        *reinterpret_cast<uint2 *>(yBf16 + c) =
            make_uint2(packBf16(v[j].x, v[j].y), packBf16(v[j].z, v[j].w));
    }
  }
}

/// Launches warpNormKernel's instance for `cols` (and for `combined`,
/// where given: kCombine).
template <bool kAdd, bool kQuantize>
cudaError_t launchWarpNorm(Operand x, Operand b, Result sum, Operand gamma,
                           float eps, int rows, int cols, Result y,
                           __nv_fp8_e4m3 *q, float *scales,
                           __nv_bfloat16 *yBf16, cudaStream_t stream,
                           int xPitch, const CombinedRows *combined = nullptr) {
  const unsigned blocks =
      unsigned((rows + kWarpNormRowsPerBlock - 1) / kWarpNormRowsPerBlock);
  const CombinedRows combine = combined ? *combined : CombinedRows{};
  auto launch = [&](auto kernel) {
    return launchOverlapped(kernel, blocks, 32 * kWarpNormRowsPerBlock, 0,
                            stream, x, b, sum, gamma, eps, rows, cols, y, q,
                            scales, yBf16, xPitch, combine);
  };
  auto launchOf = [&](auto bf16X, auto combines) {
    constexpr bool kBf16X = decltype(bf16X)::value;
    constexpr bool kCombine = decltype(combines)::value;
    switch (warpNormQuads(cols)) {
    case 4:
      return launch(warpNormKernel<kAdd, 4, kQuantize, kBf16X, kCombine>);
    case 8:
      return launch(warpNormKernel<kAdd, 8, kQuantize, kBf16X, kCombine>);
    default:
      return launch(warpNormKernel<kAdd, 16, kQuantize, kBf16X, kCombine>);
    }
  };
  if constexpr (kAdd) {
    if (combined)
      return x.bf16 ? launchOf(std::true_type(), std::true_type())
                    : launchOf(std::false_type(), std::true_type());
  }
  return x.bf16 ? launchOf(std::true_type(), std::false_type())
                : launchOf(std::false_type(), std::false_type());
}

__device__ __forceinline__ float binaryOf(Binary op, float u, float v) {
  return op == Binary::Add ? u + v : siluTimes(u, v);
}

/// Groups a thread loads before it stores any: a loop of one load at a
/// time kept too few bytes in flight for the copy bandwidth (a prefill's
/// slices of 128 and 64 BF16 values a row ran at half of it).
constexpr int kBatch = 4;

/// Grid-stride over `groups` groups, kBatch a thread at a time: the loads
/// of a batch (load(q)) all in flight before its stores (store(q, v)).
template <class Value, class Load, class Store>
__device__ __forceinline__ void batchedGroups(size_t groups, Load load,
                                              Store store) {
  const size_t first = blockIdx.x * size_t(blockDim.x) + threadIdx.x,
               stride = size_t(gridDim.x) * blockDim.x;
  for (size_t q0 = first; q0 < groups; q0 += kBatch * stride) {
    Value v[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
      if (q0 + k * stride < groups)
        v[k] = load(q0 + k * stride);
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
      if (q0 + k * stride < groups)
        store(q0 + k * stride, v[k]);
  }
}

/// kVector: four values a thread at a time (count a multiple of 4, every
/// operand aligned to 4 elements): the same values, fewer and wider loads.
template <bool kVector>
__global__ void binaryKernel(Binary op, Operand a, Operand b, size_t count,
                             Result y) {
  awaitPriorKernels();
  const size_t first = blockIdx.x * size_t(blockDim.x) + threadIdx.x,
               stride = size_t(gridDim.x) * blockDim.x;
  if constexpr (kVector) {
    for (size_t q = first; q < count / 4; q += stride) {
      const float4 u = load4(a, 4 * q), v = load4(b, 4 * q);
      store4(y, 4 * q,
             make_float4(binaryOf(op, u.x, v.x), binaryOf(op, u.y, v.y),
                         binaryOf(op, u.z, v.z), binaryOf(op, u.w, v.w)));
    }
  } else {
    for (size_t i = first; i < count; i += stride)
      store(y, i, binaryOf(op, load(a, i), load(b, i)));
  }
}

template <bool kVector>
__global__ void convertKernel(Operand x, size_t count, Result y) {
  awaitPriorKernels();
  const size_t first = blockIdx.x * size_t(blockDim.x) + threadIdx.x,
               stride = size_t(gridDim.x) * blockDim.x;
  if constexpr (kVector) {
    for (size_t q = first; q < count / 4; q += stride)
      store4(y, 4 * q, load4(x, 4 * q));
  } else {
    for (size_t i = first; i < count; i += stride)
      store(y, i, load(x, i));
  }
}

__global__ void roundToBf16Kernel(float *x, size_t count) {
  awaitPriorKernels();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x)
    x[i] = __bfloat162float(__float2bfloat16(x[i]));
}

/// Blocks of 256 threads for an elementwise kernel over `count` values
/// (grid-stride loops beyond 8192 blocks).
unsigned elementwiseBlocks(size_t count) {
  const size_t blocks = (count + 255) / 256;
  return unsigned(blocks < 8192 ? blocks : 8192);
}

/// Blocks for batchedGroups over `groups` groups.
unsigned batchedBlocks(size_t groups) {
  return elementwiseBlocks((groups + kBatch - 1) / kBatch);
}

/// Word: the unit of a copy (uint4, uint32_t or uint8_t); pitches and the
/// run's length in words. A thread a word, the runs' words numbered one
/// after the other (32-bit: at most 2^31 of them), kBatch words a thread
/// in flight: a warp a run left half a warp idle on runs of 16 words and
/// one load in flight per lane.
template <typename Word>
__global__ void copyRunsKernel(Word *to, size_t toPitch, const Word *from,
                               size_t fromPitch, uint32_t runWords,
                               uint32_t words) {
  awaitPriorKernels();
  batchedGroups<Word>(
      words,
      [&](size_t w) {
        const uint32_t i = uint32_t(w);
        return from[size_t(i / runWords) * fromPitch + i % runWords];
      },
      [&](size_t w, const Word &v) {
        const uint32_t i = uint32_t(w);
        to[size_t(i / runWords) * toPitch + i % runWords] = v;
      });
}

template <typename Word>
cudaError_t launchCopyRuns(void *to, size_t toPitch, const void *from,
                           size_t fromPitch, size_t runBytes, size_t rows,
                           cudaStream_t stream) {
  constexpr size_t w = sizeof(Word);
  const size_t words = runBytes / w * rows;
  if (words > (size_t(1) << 31))
    return cudaErrorInvalidValue;
  return launchOverlapped(copyRunsKernel<Word>, batchedBlocks(words), 256, 0,
                          stream, static_cast<Word *>(to), toPitch / w,
                          static_cast<const Word *>(from), fromPitch / w,
                          uint32_t(runBytes / w), uint32_t(words));
}

/// A block a part: part blockIdx.x's words to its offset.
__global__ void gatherPartsKernel(GatheredParts parts, uint32_t *to) {
  awaitPriorKernels();
  const int p = blockIdx.x;
  const uint32_t *from = static_cast<const uint32_t *>(parts.from[p]);
  for (uint32_t i = threadIdx.x; i < parts.words[p]; i += blockDim.x)
    to[size_t(parts.offset[p]) + i] = from[i];
}

} // namespace

cudaError_t melt::rt::cuda::gatherParts(const GatheredParts &parts, void *to,
                                        cudaStream_t stream) {
  if (parts.count < 0 || parts.count > kMaxGatheredParts)
    return cudaErrorInvalidValue;
  if (parts.count == 0)
    return cudaSuccess;
  return launchOverlapped(gatherPartsKernel, dim3(parts.count), 256, 0, stream,
                          parts, static_cast<uint32_t *>(to));
}

cudaError_t melt::rt::cuda::roundToBf16(float *x, size_t count,
                                        cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  return launchOverlapped(roundToBf16Kernel, elementwiseBlocks(count), 256, 0,
                          stream, x, count);
}

cudaError_t melt::rt::cuda::convert(Operand x, size_t count, Result y,
                                    cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  if (count % 4 == 0 && alignedFor4(x.data, x.bf16) &&
      alignedFor4(y.data, y.bf16))
    return launchOverlapped(convertKernel<true>, elementwiseBlocks(count / 4),
                            256, 0, stream, x, count, y);
  return launchOverlapped(convertKernel<false>, elementwiseBlocks(count), 256,
                          0, stream, x, count, y);
}

namespace {
/// Whether rows of x `xPitch` elements apart keep every row as aligned as
/// the first (the warp-a-row norms' four-value loads), and the pitch is
/// one (0: packed, or at least cols).
bool pitchKeepsRows(Operand x, int cols, int xPitch) {
  return xPitch == cols ||
         (xPitch > cols && size_t(xPitch) * (x.bf16 ? 2 : 4) % 16 == 0);
}
} // namespace

cudaError_t melt::rt::cuda::rmsNorm(Operand x, Operand gamma, float eps,
                                    int rows, int cols, Result y,
                                    cudaStream_t stream, __nv_bfloat16 *yBf16,
                                    int xPitch) {
  if (rows <= 0 || cols <= 0)
    return rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  xPitch = xPitch ? xPitch : cols;
  if (xPitch < cols)
    return cudaErrorInvalidValue;
  if (pitchKeepsRows(x, cols, xPitch) && normRowsByWarp(rows, cols, x))
    return launchWarpNorm<false, false>(x, x, Result{nullptr, false}, gamma,
                                        eps, rows, cols, y, nullptr, nullptr,
                                        yBf16, stream, xPitch);
  return launchOverlapped(rmsNormKernel<false>, rows, kNormThreads, 0, stream,
                          x, x, Result{nullptr, false}, gamma, eps, cols, y,
                          yBf16, xPitch);
}

cudaError_t melt::rt::cuda::rmsNormQuantizeRowsFp8(
    Operand x, const Operand *b, Result sum, Operand gamma, float eps, int rows,
    int cols, float *y, __nv_fp8_e4m3 *q, float *scales, cudaStream_t stream,
    __nv_bfloat16 *yBf16, int xPitch, const CombinedRows *combined) {
  if (rows <= 0 || cols <= 0)
    return rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  xPitch = xPitch ? xPitch : cols;
  if (xPitch < cols || (b && xPitch != cols) || (combined && !b))
    return cudaErrorInvalidValue;
  const size_t stagedBytes = sizeof(float) * size_t(cols);
  const bool staged = normRowsStage(cols);
  if (cols % 128 != 0 || reinterpret_cast<uintptr_t>(y) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(yBf16) % 8 != 0 || (!y && !staged))
    return cudaErrorInvalidValue;
  if (combined)
    return normTakesCombinedRows(rows, cols, x, sum, *combined)
               ? launchWarpNorm<true, true>(x, *b, sum, gamma, eps, rows, cols,
                                            Result{y, false}, q, scales, yBf16,
                                            stream, cols, combined)
               : cudaErrorInvalidValue;
  if (b ? normRowsByWarp(rows, cols, x, b, &sum)
        : pitchKeepsRows(x, cols, xPitch) && normRowsByWarp(rows, cols, x))
    return b ? launchWarpNorm<true, true>(x, *b, sum, gamma, eps, rows, cols,
                                          Result{y, false}, q, scales, yBf16,
                                          stream, cols)
             : launchWarpNorm<false, true>(x, x, Result{nullptr, false}, gamma,
                                           eps, rows, cols, Result{y, false}, q,
                                           scales, yBf16, stream, xPitch);
  auto launch = [&](auto kernel) {
    return b ? launchOverlapped(kernel, rows, kNormThreads,
                                staged ? stagedBytes : 0, stream, x, *b, sum,
                                gamma, eps, rows, cols, y, q, scales, yBf16,
                                cols)
             : launchOverlapped(kernel, rows, kNormThreads,
                                staged ? stagedBytes : 0, stream, x, x,
                                Result{nullptr, false}, gamma, eps, rows, cols,
                                y, q, scales, yBf16, xPitch);
  };
  if (b)
    return staged ? launch(rmsNormQuantizeKernel<true, true>)
                  : launch(rmsNormQuantizeKernel<true, false>);
  return staged ? launch(rmsNormQuantizeKernel<false, true>)
                : launch(rmsNormQuantizeKernel<false, false>);
}

bool melt::rt::cuda::normRowsByWarp(int rows, int cols, Operand x,
                                    const Operand *b, const Result *sum) {
  static const bool byWarp = envSwitch("MELT_CUDA_NORM_BY_WARP", true);
  static const long long fewestRows =
      envInt("MELT_CUDA_NORM_BY_WARP_ROWS", 64, 1, 1 << 30);
  return byWarp && rows >= fewestRows && cols > 0 && cols % 4 == 0 &&
         cols <= kWarpNormCols && alignedFor4(x.data, x.bf16) &&
         (!b || alignedFor4(b->data, b->bf16)) &&
         (!sum || alignedFor4(sum->data, sum->bf16));
}

bool melt::rt::cuda::normTakesCombinedRows(int rows, int cols, Operand x,
                                           Result sum,
                                           const CombinedRows &combined) {
  return normRowsByWarp(rows, cols, x, &combined.expertOut, &sum) &&
         combined.rowOfPair && combined.weights && combined.choices > 0 &&
         (!combined.plus.data ||
          alignedFor4(combined.plus.data, combined.plus.bf16));
}

bool melt::rt::cuda::normRowsStage(int cols) {
  // (Within the 48 KB a block has without asking: DeepSeek-V3's 7168
  // columns take 28.)
  return cols > 0 && sizeof(float) * size_t(cols) <= 48 * 1024;
}

cudaError_t melt::rt::cuda::addRmsNorm(Operand a, Operand b, Operand gamma,
                                       float eps, int rows, int cols,
                                       Result sum, Result y,
                                       cudaStream_t stream,
                                       __nv_bfloat16 *yBf16,
                                       const CombinedRows *combined) {
  if (rows <= 0 || cols <= 0)
    return rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  if (combined)
    return normTakesCombinedRows(rows, cols, a, sum, *combined)
               ? launchWarpNorm<true, false>(a, b, sum, gamma, eps, rows, cols,
                                             y, nullptr, nullptr, yBf16, stream,
                                             cols, combined)
               : cudaErrorInvalidValue;
  if (normRowsByWarp(rows, cols, a, &b, &sum))
    return launchWarpNorm<true, false>(a, b, sum, gamma, eps, rows, cols, y,
                                       nullptr, nullptr, yBf16, stream, cols);
  return launchOverlapped(rmsNormKernel<true>, rows, kNormThreads, 0, stream, a,
                          b, sum, gamma, eps, cols, y, yBf16, cols);
}

cudaError_t melt::rt::cuda::binary(Binary op, Operand a, Operand b,
                                   size_t count, Result y,
                                   cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  if (count % 4 == 0 && alignedFor4(a.data, a.bf16) &&
      alignedFor4(b.data, b.bf16) && alignedFor4(y.data, y.bf16))
    return launchOverlapped(binaryKernel<true>, elementwiseBlocks(count / 4),
                            256, 0, stream, op, a, b, count, y);
  return launchOverlapped(binaryKernel<false>, elementwiseBlocks(count), 256, 0,
                          stream, op, a, b, count, y);
}

cudaError_t melt::rt::cuda::copyRuns(void *to, size_t toPitch, const void *from,
                                     size_t fromPitch, size_t runBytes,
                                     size_t rows, cudaStream_t stream) {
  if (runBytes == 0 || rows == 0)
    return cudaSuccess;
  const auto all = [&](size_t unit) {
    return reinterpret_cast<uintptr_t>(to) % unit == 0 &&
           reinterpret_cast<uintptr_t>(from) % unit == 0 &&
           toPitch % unit == 0 && fromPitch % unit == 0 && runBytes % unit == 0;
  };
  if (all(16))
    return launchCopyRuns<uint4>(to, toPitch, from, fromPitch, runBytes, rows,
                                 stream);
  if (all(4))
    return launchCopyRuns<uint32_t>(to, toPitch, from, fromPitch, runBytes,
                                    rows, stream);
  return launchCopyRuns<uint8_t>(to, toPitch, from, fromPitch, runBytes, rows,
                                 stream);
}

//===- SmallMGemm.cu - products of a few rows with wide weights -----------===//
#include "cuda/SmallMGemm.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/RowNorm.cuh"
#include "cuda/Silu.cuh"
#include "cuda/VectorLoads.cuh"

#include "EnvSwitch.h"

#include <cstdint>

using namespace melt::rt::cuda;

namespace {

constexpr int kWarps = 8;
/// Loads each lane has in flight.
constexpr int kUnroll = 4;

/// The block's weight rows (contiguous) towards L2 while the kernel ahead
/// still runs, within the prefetch budget.
template <typename W>
__device__ __forceinline__ void prefetchBlockRows(const W *w, int n, int k,
                                                  int split) {
  if (threadIdx.x == 0) {
    const size_t rowBytes = size_t(k) * sizeof(W);
    const int first = blockIdx.x * (kWarps / split);
    const int count = min(kWarps / split, n - first);
    if (count > 0 && (size_t(first) + count) * rowBytes <= kPrefetchBudget)
      prefetchToL2(reinterpret_cast<const char *>(w) + first * rowBytes,
                   uint32_t(count * rowBytes));
  }
}

/// A warp's weight row and its 16-byte loads [begin, end) of it.
struct WarpSlice {
  int row, slice, begin, end;
};
template <typename W>
__device__ __forceinline__ WarpSlice warpSliceOf(int k, int split) {
  const int warp = threadIdx.x / 32;
  WarpSlice s;
  s.row = blockIdx.x * (kWarps / split) + warp / split;
  s.slice = warp % split;
  const int loads = k / kPerLoad<W>, perSlice = (loads + split - 1) / split;
  s.begin = s.slice * perSlice;
  s.end = min(loads, s.begin + perSlice);
  return s;
}

/// The block's product rows, after the wait: kWarps / split weight rows,
/// each split over `split` warps along K (the warp's part: `at`). Each
/// warp streams its part of a row, kUnroll 16-byte loads per lane in
/// flight, and keeps the M partial sums; the warps of a row add theirs in
/// shared memory. x may be in shared memory.
template <typename W, int M>
__device__ __forceinline__ void productRows(const float *x, const W *w, int n,
                                            int k, int split, WarpSlice at,
                                            Result y) {
  constexpr int V = kPerLoad<W>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = at.row, slice = at.slice, begin = at.begin, end = at.end;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m)
    acc[m] = 0.f;
  if (row < n) {
    const char *wRow = reinterpret_cast<const char *>(w + size_t(row) * k);
    for (int base = begin + lane; base < end; base += 32 * kUnroll) {
      uint4 packed[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        int at = base + u * 32;
        packed[u] = at < end ? streamLoad(wRow + size_t(at) * 16)
                             : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        int at = base + u * 32;
        if (at < end) {
#pragma unroll
          for (int m = 0; m < M; ++m)
            acc[m] += dotLoad<W>(x + size_t(m) * k + size_t(at) * V, packed[u]);
        }
      }
    }
  }
  __shared__ float partial[kWarps][M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float s = warpSum(acc[m]);
    if (lane == 0)
      partial[warp][m] = s;
  }
  __syncthreads();
  if (slice == 0 && lane < M && row < n) {
    float sum = 0.f;
    for (int j = 0; j < split; ++j)
      sum += partial[warp + j][lane];
    store(y, size_t(lane) * n + row, sum);
  }
}

/// A block of kWarps warps over kWarps / split weight rows (productRows).
template <typename W, int M>
__global__ void __launch_bounds__(kWarps * 32)
    smallMGemmKernel(const float *x, const W *w, int n, int k, int split,
                     Result y) {
  const WarpSlice at = warpSliceOf<W>(k, split);
  prefetchBlockRows(w, n, k, split);
  awaitPriorKernels();
  productRows<W, M>(x, w, n, k, split, at, y);
}

/// silu(gate) * up of one row x (smallMGemmSiluMulOfPair): productRows'
/// block, warp slices and order, for two weights at once.
template <typename W>
__global__ void __launch_bounds__(kWarps * 32)
    siluMulOfRowPairsKernel(const float *x, const W *gate, const W *up, int n,
                            int k, int split, bool roundProducts, float *y) {
  constexpr int V = kPerLoad<W>;
  const WarpSlice at = warpSliceOf<W>(k, split);
  prefetchBlockRows(gate, n, k, split);
  prefetchBlockRows(up, n, k, split);
  awaitPriorKernels();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float a = 0.f, b = 0.f;
  if (at.row < n) {
    const char *gateRow =
        reinterpret_cast<const char *>(gate + size_t(at.row) * k);
    const char *upRow = reinterpret_cast<const char *>(up + size_t(at.row) * k);
    for (int base = at.begin + lane; base < at.end; base += 32 * kUnroll) {
      uint4 packedGate[kUnroll], packedUp[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * 32;
        packedGate[u] = i < at.end ? streamLoad(gateRow + size_t(i) * 16)
                                   : make_uint4(0, 0, 0, 0);
        packedUp[u] = i < at.end ? streamLoad(upRow + size_t(i) * 16)
                                 : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * 32;
        if (i < at.end) {
          a += dotLoad<W>(x + size_t(i) * V, packedGate[u]);
          b += dotLoad<W>(x + size_t(i) * V, packedUp[u]);
        }
      }
    }
  }
  __shared__ float partial[kWarps][2];
  a = warpSum(a), b = warpSum(b);
  if (lane == 0)
    partial[warp][0] = a, partial[warp][1] = b;
  __syncthreads();
  if (at.slice == 0 && lane == 0 && at.row < n) {
    float gateSum = 0.f, upSum = 0.f;
    for (int j = 0; j < split; ++j)
      gateSum += partial[warp + j][0], upSum += partial[warp + j][1];
    y[at.row] = roundProducts ? siluTimesOfBf16(gateSum, upSum)
                              : siluTimes(gateSum, upSum);
  }
}

/// smallMGemmKernel of one row that an RMSNorm makes first: every block
/// normalizes the row itself (normRow, the norm kernel's arithmetic) into
/// shared memory, block 0 also storing the residual sum and y, then
/// multiplies it.
static_assert(kWarps * 32 == kNormThreads, "normRow's block");
template <typename W, bool kAdd>
__global__ void __launch_bounds__(kWarps * 32)
    smallMGemmAfterNormKernel(RowNormOperands norm, const W *w, int n, int k,
                              int split, Result y) {
  extern __shared__ float4 normedRow[];
  float *normed = reinterpret_cast<float *>(normedRow);
  const WarpSlice at = warpSliceOf<W>(k, split);
  prefetchBlockRows(w, n, k, split);
  const bool first = blockIdx.x == 0;
  const Result sum = first ? norm.sum : Result{nullptr, norm.sum.bf16};
  normRow<kAdd, true>(norm.x, norm.b, sum, norm.gamma, norm.eps, k, 0,
                      [&](int c, float v) {
                        normed[c] = v;
                        if (first)
                          store(norm.y, c, v);
                      });
  __syncthreads(); // the whole row, for every warp
  productRows<W, 1>(normed, w, n, k, split, at, y);
}

template <typename W, int M>
void launch(const float *x, const void *w, int n, int k, int split, Result y,
            cudaStream_t stream) {
  int rowsPerBlock = kWarps / split;
  launchOverlapped(smallMGemmKernel<W, M>,
                   (n + rowsPerBlock - 1) / rowsPerBlock, kWarps * 32, 0,
                   stream, x, static_cast<const W *>(w), n, k, split, y);
}

template <typename W>
void launchRows(const float *x, const void *w, int m, int n, int k, int split,
                Result y, cudaStream_t stream) {
  switch (m) {
  case 1:
    return launch<W, 1>(x, w, n, k, split, y, stream);
  case 2:
    return launch<W, 2>(x, w, n, k, split, y, stream);
  case 3:
    return launch<W, 3>(x, w, n, k, split, y, stream);
  case 4:
    return launch<W, 4>(x, w, n, k, split, y, stream);
  case 5:
    return launch<W, 5>(x, w, n, k, split, y, stream);
  case 6:
    return launch<W, 6>(x, w, n, k, split, y, stream);
  case 7:
    return launch<W, 7>(x, w, n, k, split, y, stream);
  default:
    return launch<W, 8>(x, w, n, k, split, y, stream);
  }
}

/// Rows split over more warps until about 32 warps per multiprocessor
/// stream the weights, each slice keeping at least two loads per lane:
/// more loads in flight at once where N is small. Rows of 1024 loads or
/// more (the dense MLP's down product: K 10944) a block a row, an eighth
/// of it a warp: as split 4 (two rows a block, 1024 blocks) mini's down
/// took 18.8 us alone, 16.8 so (melt-bench-decode-kernels), and its
/// batch-1 step 3.8 us less (MELT_CUDA_SMALLM_WIDE_K_SPLIT=0: as before;
/// docs/CudaBackend.md, "Session 41").
int splitOf(int n, int k, bool bf16Weights, int multiprocessors) {
  const int loads = k / (bf16Weights ? 8 : 4);
  static const bool wideKSplit =
      melt::rt::envSwitch("MELT_CUDA_SMALLM_WIDE_K_SPLIT", true);
  if (wideKSplit && loads >= 32 * 32)
    return kWarps;
  int split = 1;
  while (split < kWarps && int64_t(n) * split < 32LL * multiprocessors &&
         loads / (2 * split) >= 2 * 32)
    split *= 2;
  return split;
}

bool aligned16(const void *p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

} // namespace

bool melt::rt::cuda::smallMGemmFits(const float *x, const void *w,
                                    bool bf16Weights, int m, int k) {
  // (K in 8s is a whole 16-byte load of either weight type.)
  (void)bf16Weights;
  return m >= 1 && m <= kSmallMMaxRows && k % 8 == 0 && aligned16(x) &&
         aligned16(w);
}

bool melt::rt::cuda::smallMGemmPays(int m, int n, int k, bool bf16Weights) {
  double weightBytes = double(n) * k * (bf16Weights ? 2 : 4);
  return m == 1 || m * weightBytes <= 40e6;
}

cudaError_t melt::rt::cuda::smallMGemm(const float *x, const void *w,
                                       bool bf16Weights, int m, int n, int k,
                                       Result y, int multiprocessors,
                                       cudaStream_t stream) {
  if (!smallMGemmFits(x, w, bf16Weights, m, k) || n < 0)
    return cudaErrorInvalidValue;
  if (n == 0)
    return cudaSuccess;
  const int split = splitOf(n, k, bf16Weights, multiprocessors);
  if (bf16Weights)
    launchRows<__nv_bfloat16>(x, w, m, n, k, split, y, stream);
  else
    launchRows<float>(x, w, m, n, k, split, y, stream);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::smallMGemmSiluMulOfPair(
    const float *x, const void *wGate, const void *wUp, bool bf16Weights, int n,
    int k, bool roundProducts, float *y, int multiprocessors,
    cudaStream_t stream) {
  if (!smallMGemmFits(x, wGate, bf16Weights, 1, k) ||
      !smallMGemmFits(x, wUp, bf16Weights, 1, k) || n < 0)
    return cudaErrorInvalidValue;
  if (n == 0)
    return cudaSuccess;
  const int split = splitOf(n, k, bf16Weights, multiprocessors);
  const int rowsPerBlock = kWarps / split;
  const unsigned blocks = unsigned((n + rowsPerBlock - 1) / rowsPerBlock);
  if (bf16Weights)
    launchOverlapped(
        siluMulOfRowPairsKernel<__nv_bfloat16>, blocks, kWarps * 32, 0, stream,
        x, static_cast<const __nv_bfloat16 *>(wGate),
        static_cast<const __nv_bfloat16 *>(wUp), n, k, split, roundProducts, y);
  else
    launchOverlapped(siluMulOfRowPairsKernel<float>, blocks, kWarps * 32, 0,
                     stream, x, static_cast<const float *>(wGate),
                     static_cast<const float *>(wUp), n, k, split,
                     roundProducts, y);
  return cudaGetLastError();
}

int melt::rt::cuda::smallMGemmAfterNormBlocks(int n, int k, bool bf16Weights,
                                              int multiprocessors) {
  const int rowsPerBlock = kWarps / splitOf(n, k, bf16Weights, multiprocessors);
  return (n + rowsPerBlock - 1) / rowsPerBlock;
}

bool melt::rt::cuda::smallMGemmAfterNormFits(const void *w, bool bf16Weights,
                                             int k) {
  (void)bf16Weights; // (as smallMGemmFits)
  return k > 0 && k % 8 == 0 && aligned16(w) &&
         size_t(k) * sizeof(float) <= kMaxNormedRowBytes;
}

cudaError_t melt::rt::cuda::smallMGemmAfterNorm(const RowNormOperands &norm,
                                                const void *w, bool bf16Weights,
                                                int n, int k, Result y,
                                                int multiprocessors,
                                                cudaStream_t stream) {
  if (!smallMGemmAfterNormFits(w, bf16Weights, k) || n <= 0)
    return cudaErrorInvalidValue;
  const int split = splitOf(n, k, bf16Weights, multiprocessors);
  const int blocks =
      smallMGemmAfterNormBlocks(n, k, bf16Weights, multiprocessors);
  const size_t shared = size_t(k) * sizeof(float);
  auto launch = [&](auto kernel, auto weights) {
    return launchOverlapped(kernel, blocks, kWarps * 32, shared, stream, norm,
                            weights, n, k, split, y);
  };
  const bool add = norm.b.data != nullptr;
  if (bf16Weights) {
    const auto *weights = static_cast<const __nv_bfloat16 *>(w);
    return add ? launch(smallMGemmAfterNormKernel<__nv_bfloat16, true>, weights)
               : launch(smallMGemmAfterNormKernel<__nv_bfloat16, false>,
                        weights);
  }
  const auto *weights = static_cast<const float *>(w);
  return add ? launch(smallMGemmAfterNormKernel<float, true>, weights)
             : launch(smallMGemmAfterNormKernel<float, false>, weights);
}

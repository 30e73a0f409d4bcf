// The warpgroup MMA pieces (Wgmma.cuh) against a plain product on the same
// BF16 values: the two operand forms the MLA decode kernel reads from one
// swizzled tile (K-major, over several 64-wide blocks of K, with N offset
// inside a block; and MN-major over several 64-wide blocks of N), and the
// accumulator fragments' layout. Skips without a device.
#include "cuda/Wgmma.cuh"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

constexpr int kBlockBytes = 64 * kSwizzleRowBytes;

/// Row-major [rows x cols] BF16 (cols a multiple of 64) into `cols / 64`
/// swizzled [rows x 64] blocks, `blockBytes` apart.
__device__ void storeSwizzled(uint8_t *to, const __nv_bfloat16 *from, int rows,
                              int cols, int blockBytes) {
  for (int i = threadIdx.x; i < rows * cols / 8; i += blockDim.x) {
    const int row = i / (cols / 8), chunk = i % (cols / 8);
    *reinterpret_cast<uint4 *>(to + (chunk / 8) * blockBytes +
                               swizzledOffset(row, chunk % 8)) =
        reinterpret_cast<const uint4 *>(from + size_t(row) * cols)[chunk];
  }
}

/// d[64 x 32] = a[64 x 576] b[576 x 32] with b given as its rows' keys
/// ([64 x 576], rows `nOffset` .. nOffset + 31 taken): the scores' form.
__global__ void kMajorProduct(const __nv_bfloat16 *a, const __nv_bfloat16 *b,
                              int nOffset, float *d) {
  extern __shared__ uint8_t raw[];
  uint8_t *shared =
      raw + (kSwizzleAtomBytes - sharedAddress(raw) % kSwizzleAtomBytes) %
                kSwizzleAtomBytes;
  uint8_t *sa = shared, *sb = shared + 9 * kBlockBytes;
  storeSwizzled(sa, a, 64, 576, kBlockBytes);
  storeSwizzled(sb, b, 64, 576, kBlockBytes);
  fenceSharedForWgmma();
  __syncthreads();
  float acc[16] = {};
  wgmmaFence();
  for (int step = 0; step < 36; ++step) {
    const int block = step / 4, within = (step % 4) * 32;
    wgmma64x32(acc, kMajorDescriptor(sa + block * kBlockBytes + within),
               kMajorDescriptor(sb + block * kBlockBytes +
                                nOffset * kSwizzleRowBytes + within),
               step > 0);
  }
  wgmmaCommit();
  wgmmaWait<0>();
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4,
            t = threadIdx.x % 4;
  for (int i = 0; i < 16; ++i) {
    const int row = 16 * warp + g + 8 * ((i / 2) % 2),
              col = 8 * (i / 4) + 2 * t + i % 2;
    d[row * 32 + col] = acc[i];
  }
}

/// d[64 x 256] = a[64 x 64] v[64 x 256] with v row-major (its rows along
/// K): the weighted sum's form; v is stored as [64 x 512] of which columns
/// `nOffset` .. nOffset + 255 are taken.
__global__ void mnMajorProduct(const __nv_bfloat16 *a, const __nv_bfloat16 *v,
                               int nOffset, float *d) {
  extern __shared__ uint8_t raw[];
  uint8_t *shared =
      raw + (kSwizzleAtomBytes - sharedAddress(raw) % kSwizzleAtomBytes) %
                kSwizzleAtomBytes;
  uint8_t *sa = shared, *sv = shared + kBlockBytes;
  storeSwizzled(sa, a, 64, 64, kBlockBytes);
  storeSwizzled(sv, v, 64, 512, kBlockBytes);
  fenceSharedForWgmma();
  __syncthreads();
  float acc[128] = {};
  wgmmaFence();
  for (int step = 0; step < 4; ++step)
    wgmma64x256Transposed(acc, kMajorDescriptor(sa + step * 32),
                          mnMajorDescriptor(sv + (nOffset / 64) * kBlockBytes +
                                                step * 2 * kSwizzleAtomBytes,
                                            kBlockBytes));
  wgmmaCommit();
  wgmmaWait<0>();
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4,
            t = threadIdx.x % 4;
  for (int i = 0; i < 128; ++i) {
    const int row = 16 * warp + g + 8 * ((i / 2) % 2),
              col = 8 * (i / 4) + 2 * t + i % 2;
    d[row * 256 + col] = acc[i];
  }
}

std::vector<__nv_bfloat16> randomBf16(size_t n, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<__nv_bfloat16> v(n);
  for (auto &x : v)
    x = __float2bfloat16(normal(rng));
  return v;
}

double worstError(const std::vector<float> &got,
                  const std::vector<double> &want) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::fabs(got[i] - want[i]));
  return worst;
}

} // namespace

TEST(CudaWgmma, KMajorOperandsOverSeveralBlocks) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(3);
  auto a = randomBf16(64 * 576, rng), b = randomBf16(64 * 576, rng);
  const size_t shared = 18 * kBlockBytes + kSwizzleAtomBytes;
  ASSERT_EQ(cudaFuncSetAttribute(kMajorProduct,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(shared)),
            cudaSuccess);
  for (int nOffset : {0, 32}) {
    float *d = deviceArray<float>(64 * 32);
    __nv_bfloat16 *da = toDevice(a), *db = toDevice(b);
    kMajorProduct<<<1, 128, shared>>>(da, db, nOffset, d);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<double> want(64 * 32);
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < 32; ++n) {
        double sum = 0;
        for (int k = 0; k < 576; ++k)
          sum += double(__bfloat162float(a[m * 576 + k])) *
                 __bfloat162float(b[(nOffset + n) * 576 + k]);
        want[m * 32 + n] = sum;
      }
    // FP32 sums of 576 exact products.
    EXPECT_LE(worstError(toHost(d, 64 * 32), want), 1e-3) << nOffset;
    cudaFree(d);
    cudaFree(da);
    cudaFree(db);
  }
}

TEST(CudaWgmma, MnMajorOperandOverSeveralBlocks) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(4);
  auto a = randomBf16(64 * 64, rng), v = randomBf16(64 * 512, rng);
  const size_t shared = 9 * kBlockBytes + kSwizzleAtomBytes;
  ASSERT_EQ(cudaFuncSetAttribute(mnMajorProduct,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(shared)),
            cudaSuccess);
  for (int nOffset : {0, 256}) {
    float *d = deviceArray<float>(64 * 256);
    __nv_bfloat16 *da = toDevice(a), *dv = toDevice(v);
    mnMajorProduct<<<1, 128, shared>>>(da, dv, nOffset, d);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<double> want(64 * 256);
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < 256; ++n) {
        double sum = 0;
        for (int k = 0; k < 64; ++k)
          sum += double(__bfloat162float(a[m * 64 + k])) *
                 __bfloat162float(v[k * 512 + nOffset + n]);
        want[m * 256 + n] = sum;
      }
    EXPECT_LE(worstError(toHost(d, 64 * 256), want), 1e-3) << nOffset;
    cudaFree(d);
    cudaFree(da);
    cudaFree(dv);
  }
}

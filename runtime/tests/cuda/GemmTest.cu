// The CUDA device's GEMMs (cuBLASLt BF16 and FP8 with DeepSeek-V3 block
// scales) and the FP8 activation quantization, against double-precision
// references on the host. Block scales differ from block to block in both
// dimensions, so a scale read from the wrong place shows. Skips without a
// device.
#include "CudaTestUtil.h"
#include "cuda/Fp8SmallM.h"
#include "cuda/Fp8SplitKWgmma.h"
#include "cuda/Gemm.h"
#include "cuda/Quantize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

float fp8ToFloat(__nv_fp8_e4m3 v) { return float(v); }

std::vector<__nv_bfloat16> randomBf16(size_t n, std::mt19937 &rng,
                                      float spread = 1.f) {
  std::normal_distribution<float> normal(0.f, spread);
  std::vector<__nv_bfloat16> v(n);
  for (auto &x : v)
    x = __float2bfloat16(normal(rng));
  return v;
}

struct Shape {
  int m, n, k;
};

TEST(CudaGemm, Bf16MatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  std::mt19937 rng(3);
  for (Shape s : {Shape{1, 2112, 7168}, Shape{16, 256, 384},
                  Shape{77, 200, 136}, Shape{300, 512, 1536}}) {
    auto x = randomBf16(size_t(s.m) * s.k, rng);
    auto w = randomBf16(size_t(s.n) * s.k, rng, 0.05f);
    __nv_bfloat16 *dx = toDevice(x), *dw = toDevice(w);
    float *dy = deviceArray<float>(size_t(s.m) * s.n);
    __nv_bfloat16 *dyb = deviceArray<__nv_bfloat16>(size_t(s.m) * s.n);
    CudaStatus st = gemm->bf16(dx, dw, dy, true, s.m, s.n, s.k);
    ASSERT_FALSE(st) << st.error;
    st = gemm->bf16(dx, dw, dyb, false, s.m, s.n, s.k);
    ASSERT_FALSE(st) << st.error;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto y = toHost(dy, size_t(s.m) * s.n);
    auto yb = toHost(dyb, size_t(s.m) * s.n);
    double worst = 0, worstBf16 = 0, largest = 0;
    for (int i = 0; i < s.m; ++i)
      for (int j = 0; j < s.n; ++j) {
        double want = 0;
        for (int p = 0; p < s.k; ++p)
          want += double(__bfloat162float(x[size_t(i) * s.k + p])) *
                  __bfloat162float(w[size_t(j) * s.k + p]);
        worst = std::max(worst, std::fabs(y[size_t(i) * s.n + j] - want));
        worstBf16 = std::max(
            worstBf16,
            std::fabs(__bfloat162float(yb[size_t(i) * s.n + j]) - want));
        largest = std::max(largest, std::fabs(want));
      }
    // FP32 accumulation of exact BF16 products; BF16 output rounds to 2^-8.
    EXPECT_LE(worst, 1e-4 * std::max(1.0, largest)) << s.m << "x" << s.n;
    EXPECT_LE(worstBf16, 8e-3 * std::max(1.0, largest)) << s.m << "x" << s.n;
    std::printf("bf16 gemm %dx%dx%d: max abs error %.3g (f32 out), %.3g "
                "(bf16 out), largest %.3g\n",
                s.m, s.n, s.k, worst, worstBf16, largest);
    cudaFree(dx), cudaFree(dw), cudaFree(dy), cudaFree(dyb);
  }
}

// FP32 throughout against a double reference, at small and prefill shapes.
TEST(CudaGemm, F32MatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (Shape s : {Shape{25, 72, 64}, Shape{20, 64, 64}, Shape{5, 96, 32},
                  Shape{300, 2048, 1408}}) {
    std::vector<float> x(size_t(s.m) * s.k), w(size_t(s.n) * s.k);
    for (float &v : x)
      v = normal(rng);
    for (float &v : w)
      v = 0.05f * normal(rng);
    float *dx = toDevice(x), *dw = toDevice(w);
    {
      float *dy = deviceArray<float>(size_t(s.m) * s.n);
      CudaStatus st = gemm->f32(dx, dw, dy, s.m, s.n, s.k);
      ASSERT_FALSE(st) << st.error;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      auto y = toHost(dy, size_t(s.m) * s.n);
      double worst = 0, largest = 0;
      for (int i = 0; i < s.m; ++i)
        for (int j = 0; j < s.n; ++j) {
          double want = 0;
          for (int p = 0; p < s.k; ++p)
            want += double(x[size_t(i) * s.k + p]) * w[size_t(j) * s.k + p];
          worst = std::max(worst, std::fabs(y[size_t(i) * s.n + j] - want));
          largest = std::max(largest, std::fabs(want));
        }
      EXPECT_LE(worst, 1e-5 * std::max(1.0, largest))
          << s.m << "x" << s.n << "x" << s.k;
      std::printf("f32 gemm %dx%dx%d: max abs error %.3g, largest %.3g\n", s.m,
                  s.n, s.k, worst, largest);
      cudaFree(dy);
    }
    cudaFree(dx), cudaFree(dw);
  }
}

/// quantizeRowsFp8 of m BF16 rows against the blockwise reference (one
/// row a warp below 64 rows, four from there).
void checkQuantizeRows(int m) {
  std::mt19937 rng(5);
  const int k = 512, blocks = k / kQuantBlock;
  auto x = randomBf16(size_t(m) * k, rng);
  // Blocks of very different magnitudes, and one all-zero block.
  for (int i = 0; i < m; ++i)
    for (int p = 0; p < k; ++p) {
      float scale = std::ldexp(1.f, (i + p / kQuantBlock) % 9 - 4);
      float v = __bfloat162float(x[size_t(i) * k + p]) * scale;
      x[size_t(i) * k + p] = __float2bfloat16(i == 3 && p < 128 ? 0.f : v);
    }
  __nv_bfloat16 *dx = toDevice(x);
  auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(m) * k);
  float *ds = deviceArray<float>(size_t(m) * blocks);
  ASSERT_EQ(quantizeRowsFp8(dx, m, k, dq, ds, nullptr), cudaSuccess);
  auto q = toHost(dq, size_t(m) * k);
  auto s = toHost(ds, size_t(m) * blocks);
  for (int i = 0; i < m; ++i)
    for (int b = 0; b < blocks; ++b) {
      double amax = 0;
      for (int p = 0; p < kQuantBlock; ++p)
        amax = std::max(amax, std::fabs(double(__bfloat162float(
                                  x[size_t(i) * k + b * kQuantBlock + p]))));
      float scale = s[size_t(b) * m + i];
      if (amax == 0) {
        EXPECT_EQ(scale, 1.f);
        continue;
      }
      EXPECT_NEAR(scale, amax / 448.0, 1e-6 * amax);
      for (int p = 0; p < kQuantBlock; ++p) {
        size_t at = size_t(i) * k + b * kQuantBlock + p;
        double want = __bfloat162float(x[at]);
        double have = double(fp8ToFloat(q[at])) * scale;
        // e4m3 keeps 3 mantissa bits: half an ulp is 1/16 relative, plus
        // the subnormal step (2^-9 of the scale) for tiny values.
        EXPECT_LE(std::fabs(have - want),
                  std::fabs(want) / 16 + std::ldexp(scale, -9) + 1e-12)
            << m << " rows: row " << i << " value " << p;
      }
    }
  cudaFree(dx), cudaFree(dq), cudaFree(ds);
}

TEST(CudaGemm, QuantizeRowsIsBlockwiseE4M3) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  for (int m : {37, 70, 1029})
    checkQuantizeRows(m);
}

// Many rows (a prefill's: the kernel that streams a warp's items, four
// rows each) give each row what it gets alone (fewer than 64 rows: a warp
// a block of one row), bit for bit: the SiLU-mul of BF16 gate and up, with
// the rows shorter than the quantized width (whole fours and not), and F32
// rows.
TEST(CudaGemm, QuantizeRowsOfManyRowsAreEachRowAlone) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(17);
  const int m = 1029, apart = 37;
  for (int kIn : {1408, 1406, 1280}) {
    const int k = (kIn + 127) / 128 * 128 + (kIn == 1280 ? 0 : 128);
    const int blocks = k / 128;
    auto gate = randomBf16(size_t(m) * kIn, rng, 3.f),
         up = randomBf16(size_t(m) * kIn, rng);
    std::vector<float> f32(size_t(m) * kIn);
    for (size_t i = 0; i < f32.size(); ++i)
      f32[i] = __bfloat162float(gate[i]) * 7.f;
    __nv_bfloat16 *dg = toDevice(gate), *du = toDevice(up);
    float *df = toDevice(f32);
    for (bool silu : {true, false}) {
      auto *all = deviceArray<__nv_fp8_e4m3>(size_t(m) * k);
      float *allScales = deviceArray<float>(size_t(blocks) * m);
      auto quantize = [&](int row0, int rows, __nv_fp8_e4m3 *q, float *sc) {
        const size_t at = size_t(row0) * kIn;
        return silu ? siluMulQuantizeRowsFp8Padded(dg + at, du + at, rows, kIn,
                                                   k, q, sc, nullptr)
                    : quantizeRowsFp8Padded(df + at, rows, kIn, k, q, sc,
                                            nullptr);
      };
      ASSERT_EQ(quantize(0, m, all, allScales), cudaSuccess);
      auto *part = deviceArray<__nv_fp8_e4m3>(size_t(apart) * k);
      float *partScales = deviceArray<float>(size_t(blocks) * apart);
      auto q = toHost(all, size_t(m) * k);
      auto scales = toHost(allScales, size_t(blocks) * m);
      int differ = 0;
      for (int row0 = 0; row0 < m; row0 += apart) {
        const int rows = std::min(apart, m - row0);
        ASSERT_EQ(quantize(row0, rows, part, partScales), cudaSuccess);
        auto pq = toHost(part, size_t(rows) * k);
        auto ps = toHost(partScales, size_t(blocks) * apart);
        for (int r = 0; r < rows; ++r) {
          for (int c = 0; c < k; ++c)
            differ += std::memcmp(&pq[size_t(r) * k + c],
                                  &q[size_t(row0 + r) * k + c], 1) != 0;
          for (int b = 0; b < blocks; ++b)
            differ +=
                ps[size_t(b) * rows + r] != scales[size_t(b) * m + row0 + r];
        }
      }
      EXPECT_EQ(differ, 0) << (silu ? "SiLU-mul" : "F32") << ", kIn " << kIn;
      cudaFree(all), cudaFree(allScales), cudaFree(part), cudaFree(partScales);
    }
    cudaFree(dg), cudaFree(du), cudaFree(df);
  }
}

/// Runs y = x W^T (FP8 x with its [K/128, M] scales, FP8 W with its
/// [N/128, K/128] scales) on the device.
using Fp8Product = std::function<void(
    const __nv_fp8_e4m3 *x, const float *xScales, const __nv_fp8_e4m3 *w,
    const float *wScales, __nv_bfloat16 *y, Shape s)>;

/// One FP8 block-scaled GEMM by `product` against the double-precision
/// reference; `path` names it in the messages.
void checkFp8With(const Fp8Product &product, const char *path, Shape s,
                  std::mt19937 &rng) {
  std::uniform_real_distribution<float> scaleDist(0.25f, 4.f);
  const int kBlocks = s.k / 128, nBlocks = (s.n + 127) / 128;
  auto x = randomBf16(size_t(s.m) * s.k, rng);
  // The weight as a checkpoint ships it: e4m3 values, 128x128 scales.
  std::vector<__nv_fp8_e4m3> w(size_t(s.n) * s.k);
  std::normal_distribution<float> normal(0.f, 100.f);
  for (auto &v : w)
    v = __nv_fp8_e4m3(normal(rng));
  std::vector<float> wScales(size_t(nBlocks) * kBlocks);
  for (auto &v : wScales)
    v = scaleDist(rng) * 1e-3f;
  __nv_bfloat16 *dx = toDevice(x);
  __nv_fp8_e4m3 *dw = toDevice(w);
  float *dws = toDevice(wScales);
  auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(s.m) * s.k);
  float *dxs = deviceArray<float>(size_t(s.m) * kBlocks);
  auto *dy = deviceArray<__nv_bfloat16>(size_t(s.m) * s.n);
  ASSERT_EQ(quantizeRowsFp8(dx, s.m, s.k, dq, dxs, nullptr), cudaSuccess);
  ASSERT_NO_FATAL_FAILURE(product(dq, dxs, dw, dws, dy, s));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto q = toHost(dq, size_t(s.m) * s.k);
  auto xs = toHost(dxs, size_t(s.m) * kBlocks);
  auto y = toHost(dy, size_t(s.m) * s.n);
  // Reference: the same FP8 values and scales, in double. Layout 0 is
  // the one GemmRunner documents (input scales [K/128, M], weight scales
  // [N/128, K/128]); the others (scales read transposed) are computed
  // only to name the layout cuBLASLt used should the first not match.
  double worst[4] = {0, 0, 0, 0}, largest = 0;
  for (int i = 0; i < s.m; ++i)
    for (int j = 0; j < s.n; ++j) {
      double want[4] = {0, 0, 0, 0};
      for (int p = 0; p < s.k; ++p) {
        double product = double(fp8ToFloat(q[size_t(i) * s.k + p])) *
                         fp8ToFloat(w[size_t(j) * s.k + p]);
        double xsRow = xs[size_t(i) * kBlocks + p / 128];
        double xsCol = xs[size_t(p / 128) * s.m + i];
        double wsRow = wScales[size_t(j / 128) * kBlocks + p / 128];
        double wsCol = wScales[size_t(p / 128) * nBlocks + j / 128];
        want[0] += product * xsCol * wsRow;
        want[1] += product * xsRow * wsRow;
        want[2] += product * xsCol * wsCol;
        want[3] += product * xsRow * wsCol;
      }
      for (int l = 0; l < 4; ++l)
        worst[l] = std::max(
            worst[l],
            std::fabs(__bfloat162float(y[size_t(i) * s.n + j]) - want[l]));
      largest = std::max(largest, std::fabs(want[0]));
    }
  EXPECT_LE(worst[0], 8e-3 * std::max(1.0, largest))
      << s.m << "x" << s.n << "x" << s.k << " (" << path
      << "): errors if the input scales "
      << "were [M, K/128]: " << worst[1] << ", the weight scales [K/128, "
      << "N/128]: " << worst[2] << ", both: " << worst[3];
  std::printf("fp8 block-scaled gemm %dx%dx%d (%s): max abs error %.3g, "
              "largest %.3g\n",
              s.m, s.n, s.k, path, worst[0], largest);
  cudaFree(dx), cudaFree(dw), cudaFree(dws), cudaFree(dq), cudaFree(dxs),
      cudaFree(dy);
}

/// The runner's FP8 GEMM, which sends M <= `limit` to the small-M kernel.
void checkFp8(GemmRunner &gemm, Shape s, int limit, std::mt19937 &rng) {
  gemm.setSmallMLimit(limit);
  checkFp8With(
      [&](const __nv_fp8_e4m3 *x, const float *xScales, const __nv_fp8_e4m3 *w,
          const float *wScales, __nv_bfloat16 *y, Shape shape) {
        CudaStatus st = gemm.fp8BlockScaled(x, xScales, w, wScales, y, shape.m,
                                            shape.n, shape.k);
        ASSERT_FALSE(st) << st.error;
      },
      s.m <= limit ? "small-M kernel" : "the runner's choice", s, rng);
}

// melt's small-M kernel: a partial 128-row tile (N 2112), tokens not a
// multiple of 8, one and several K splits, 1 to 64 tokens.
TEST(CudaGemm, Fp8SmallMKernelMatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  std::mt19937 rng(11);
  for (Shape s :
       {Shape{1, 2112, 7168}, Shape{5, 2112, 7168}, Shape{8, 4096, 256},
        Shape{37, 2112, 7168}, Shape{64, 256, 1024}})
    checkFp8(*gemm, s, kFp8SmallMMax, rng);
  EXPECT_EQ(gemm->cachedShapes(), 0u);
}

// The split-K wgmma kernel: tokens in each of its four widths (8, 16, 32,
// 64) and not a multiple of 8, a partial 128-row tile (N 2112), K ranges
// of one to eight blocks of a cluster, and ranges left empty (more splits
// than K blocks would give each one).
TEST(CudaGemm, Fp8SplitKWgmmaMatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  int smCount = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&smCount, cudaDevAttrMultiProcessorCount, 0),
            cudaSuccess);
  std::mt19937 rng(23);
  struct Case {
    Shape shape;
    int splits, blocksPerSm = 0;
  };
  // (The plan's three and four blocks an SM: 144 and 192 tiles of W.)
  for (Case c : {Case{{1, 2112, 7168}, 0}, Case{{5, 2112, 7168}, 8},
                 Case{{16, 4096, 256}, 0}, Case{{23, 2112, 1024}, 3},
                 Case{{37, 2112, 7168}, 0}, Case{{64, 256, 1024}, 1},
                 Case{{64, 2048, 7168}, 0}, Case{{9, 1536, 768}, 8},
                 Case{{16, 18432, 1024}, 0}, Case{{12, 24576, 1536}, 0},
                 Case{{30, 2112, 1024}, 5, 3}, Case{{8, 4096, 768}, 6, 4}}) {
    const std::string path = "split-K wgmma, splits " +
                             std::to_string(c.splits) + ", blocks an SM " +
                             std::to_string(c.blocksPerSm);
    checkFp8With(
        [&](const __nv_fp8_e4m3 *x, const float *xScales,
            const __nv_fp8_e4m3 *w, const float *wScales, __nv_bfloat16 *y,
            Shape s) {
          ASSERT_EQ(fp8SplitKWgmma(x, xScales, w, wScales, y, s.m, s.n, s.k,
                                   smCount, nullptr, c.splits, c.blocksPerSm),
                    cudaSuccess);
        },
        path.c_str(), c.shape, rng);
  }
}

// The split-K kernel's plan on an H200's 132 SMs (host arithmetic: runs
// without a device). More tiles than SMs: every block resident, the fewest
// K blocks on the busiest SM, ties to fewer blocks an SM. Fewer: as many
// ranges as fill two blocks an SM.
TEST(CudaGemm, Fp8SplitKWgmmaPlanEvensOutTheSms) {
  struct Case {
    int m, n, k, splits, blocksPerSm;
  };
  for (Case c : {
           // 144 tiles: one range put two blocks of 56 K blocks on 12 SMs;
           // three ranges of 19, four blocks on the busiest SM (76).
           Case{16, 18432, 7168, 3, 4},
           // 192 tiles of 12 K blocks: two ranges, three blocks an SM.
           Case{16, 24576, 1536, 2, 3},
           // 171 tiles (mini's dense gate/up).
           Case{16, 21888, 2048, 2, 3},
           // 64 tokens never share an SM three ways (their registers).
           Case{64, 18432, 7168, 1, 2},
           // Fewer tiles than SMs: 17, 56 and 16 tiles.
           Case{1, 2112, 7168, 8, 2},
           Case{16, 7168, 16384, 4, 2},
           Case{32, 2048, 7168, 8, 2},
           // Fewer K blocks than ranges would fill.
           Case{9, 256, 384, 3, 2},
       }) {
    const Fp8SplitKPlan plan = fp8SplitKWgmmaPlan(c.m, c.n, c.k, 132);
    EXPECT_EQ(plan.splits, c.splits) << c.m << "x" << c.n << "x" << c.k;
    EXPECT_EQ(plan.blocksPerSm, c.blocksPerSm)
        << c.m << "x" << c.n << "x" << c.k;
  }
}

// The runner, its split-K rows at 64, sends 9 to 64 tokens to the split-K
// wgmma kernel (no cuBLASLt plan made), K/128 not a multiple of 4 included
// (which cuBLASLt's block scales refuse), and more tokens to cuBLASLt.
TEST(CudaGemm, Fp8RunnerTakesSplitKWgmmaUpTo64Tokens) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  gemm->setSplitKRows(kFp8SplitKWgmmaMax);
  std::mt19937 rng(37);
  for (Shape s : {Shape{9, 2112, 7168}, Shape{64, 2048, 384}})
    checkFp8(*gemm, s, 8, rng);
  EXPECT_EQ(gemm->cachedShapes(), 0u);
  checkFp8(*gemm, Shape{65, 256, 512}, 8, rng);
  EXPECT_EQ(gemm->cachedShapes(), 1u);
}

// The same product twice gives the same bits (the partial sums are added
// in the cluster's rank order, not as they arrive).
TEST(CudaGemm, Fp8SplitKWgmmaIsTheSameEveryRun) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(29);
  const int m = 48, n = 2112, k = 7168, kBlocks = k / 128;
  auto x = randomBf16(size_t(m) * k, rng);
  std::vector<__nv_fp8_e4m3> w(size_t(n) * k);
  std::normal_distribution<float> normal(0.f, 100.f);
  for (auto &v : w)
    v = __nv_fp8_e4m3(normal(rng));
  std::vector<float> wScales(size_t((n + 127) / 128) * kBlocks, 1e-3f);
  __nv_bfloat16 *dx = toDevice(x);
  __nv_fp8_e4m3 *dw = toDevice(w);
  float *dws = toDevice(wScales);
  auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(m) * k);
  float *dxs = deviceArray<float>(size_t(m) * kBlocks);
  ASSERT_EQ(quantizeRowsFp8(dx, m, k, dq, dxs, nullptr), cudaSuccess);
  std::vector<std::vector<__nv_bfloat16>> runs;
  for (int run = 0; run < 3; ++run) {
    auto *dy = deviceArray<__nv_bfloat16>(size_t(m) * n);
    ASSERT_EQ(fp8SplitKWgmma(dq, dxs, dw, dws, dy, m, n, k, 132, nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    runs.push_back(toHost(dy, size_t(m) * n));
    cudaFree(dy);
  }
  for (int run = 1; run < 3; ++run)
    EXPECT_EQ(std::memcmp(runs[run].data(), runs[0].data(),
                          runs[0].size() * sizeof(__nv_bfloat16)),
              0)
        << "run " << run;
  cudaFree(dx), cudaFree(dw), cudaFree(dws), cudaFree(dq), cudaFree(dxs);
}

// The few-tokens kernel with fewer blocks than 16-row tiles (as on a GPU
// of 4 multiprocessors): each block takes several tiles in turn, its warps'
// rings running on across them. A tile's sums do not depend on the block
// that takes it: the same bits as with a block per tile (which the runner
// uses, and the reference checks above cover), from FP8 and from F32 x.
TEST(CudaGemm, Fp8FewTokensTakeTilesInTurn) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int m = 3, n = 4096, k = 1536, kBlocks = k / 128;
  ASSERT_TRUE(fp8FewTokensFit(m, n, k));
  std::vector<float> x(size_t(m) * k);
  for (float &v : x)
    v = normal(rng);
  std::vector<__nv_fp8_e4m3> w(size_t(n) * k);
  for (auto &v : w)
    v = __nv_fp8_e4m3(normal(rng) * 100.f);
  std::vector<float> wScales(size_t(n / 128) * kBlocks);
  for (float &v : wScales)
    v = (1.f + normal(rng) * 0.1f) * 1e-3f;
  float *dx = toDevice(x), *dws = toDevice(wScales);
  __nv_fp8_e4m3 *dw = toDevice(w);
  auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(m) * k);
  float *dxs = deviceArray<float>(size_t(m) * kBlocks);
  ASSERT_EQ(quantizeRowsFp8Padded(dx, m, k, k, dq, dxs, nullptr), cudaSuccess);
  std::vector<std::vector<float>> results;
  for (int smCount : {n / 16, 4, 1}) {
    auto *y = deviceArray<__nv_bfloat16>(size_t(m) * n);
    float *yF32 = deviceArray<float>(size_t(m) * n);
    ASSERT_EQ(fp8FewTokens(dq, dxs, dw, dws, y, m, n, k, smCount, nullptr),
              cudaSuccess);
    ASSERT_EQ(fp8FewTokensFromF32(dx, nullptr, k, dw, dws, yF32, m, n, k,
                                  smCount, nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto fromFp8 = toHost(y, size_t(m) * n);
    std::vector<float> widened(fromFp8.size());
    for (size_t i = 0; i < widened.size(); ++i)
      widened[i] = __bfloat162float(fromFp8[i]);
    results.push_back(widened);
    results.push_back(toHost(yF32, size_t(m) * n));
    cudaFree(y), cudaFree(yF32);
  }
  for (size_t r = 1; r < results.size(); ++r) {
    int differ = 0;
    for (size_t i = 0; i < results[0].size(); ++i)
      differ += results[r][i] != results[0][i];
    EXPECT_EQ(differ, 0) << "run " << r;
  }
  cudaFree(dx), cudaFree(dws), cudaFree(dw), cudaFree(dq), cudaFree(dxs);
}

// The few-tokens products with the weights in registers, called directly
// (the runner's tests above reach them through fp8FewTokens): K ranges
// longer than the items a lane holds ahead and not a multiple of them (K
// 11264: 11 blocks a warp), warps left idle (K 256), one tile, a partial
// 128-row scale block; and with fewer blocks than tiles (each takes
// several in turn) the same bits as with a block a tile.
TEST(CudaGemm, Fp8FewTokensInRegistersMatchReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  int smCount = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&smCount, cudaDevAttrMultiProcessorCount, 0),
            cudaSuccess);
  std::mt19937 rng(37);
  for (Shape s :
       {Shape{1, 2048, 11264}, Shape{3, 2112, 1536}, Shape{8, 16, 256},
        Shape{1, 10944, 2048}, Shape{5, 2112, 7168}}) {
    ASSERT_TRUE(fp8FewTokensInRegistersFit(s.m, s.n, s.k));
    checkFp8With(
        [&](const __nv_fp8_e4m3 *x, const float *xScales,
            const __nv_fp8_e4m3 *w, const float *wScales, __nv_bfloat16 *y,
            Shape shape) {
          ASSERT_EQ(fp8FewTokensInRegisters(x, xScales, w, wScales, y, shape.m,
                                            shape.n, shape.k, smCount, nullptr),
                    cudaSuccess);
          std::vector<__nv_bfloat16> first;
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          first = toHost(y, size_t(shape.m) * shape.n);
          for (int fewer : {3, 1}) {
            ASSERT_EQ(fp8FewTokensInRegisters(x, xScales, w, wScales, y,
                                              shape.m, shape.n, shape.k, fewer,
                                              nullptr),
                      cudaSuccess);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            auto again = toHost(y, size_t(shape.m) * shape.n);
            EXPECT_EQ(std::memcmp(again.data(), first.data(),
                                  first.size() * sizeof(first[0])),
                      0)
                << "on " << fewer << " multiprocessors";
          }
        },
        "few tokens in registers", s, rng);
  }
  EXPECT_FALSE(fp8FewTokensInRegistersFit(9, 2048, 2048));
  EXPECT_FALSE(fp8FewTokensInRegistersFit(1, 2040, 2048));
  EXPECT_FALSE(fp8FewTokensInRegistersFit(1, 2048, 2000));
}

// The weights-in-registers kernel gives the ring kernel's bits (the same
// lanes' chunks, K split and sums; fp8FewTokens runs the ring from two
// tokens on), from FP8 x and from F32 x, with a K range longer than the
// items a lane holds ahead and a weight with its K padded.
TEST(CudaGemm, Fp8FewTokensInRegistersGiveTheRingsBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  int smCount = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&smCount, cudaDevAttrMultiProcessorCount, 0),
            cudaSuccess);
  std::mt19937 rng(41);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Case {
    int m, n, kIn, k;
  };
  for (Case c : {Case{2, 2048, 10944, 11264}, Case{5, 2112, 2048, 2048},
                 Case{8, 3072, 1536, 1536}}) {
    ASSERT_FALSE(fp8FewTokensTakeRegisters(c.m, c.n, c.k));
    const int kBlocks = c.k / 128;
    std::vector<float> x(size_t(c.m) * c.kIn);
    for (float &v : x)
      v = normal(rng);
    std::vector<__nv_fp8_e4m3> w(size_t(c.n) * c.k);
    for (auto &v : w)
      v = __nv_fp8_e4m3(normal(rng) * 100.f);
    std::vector<float> wScales(size_t((c.n + 127) / 128) * kBlocks);
    for (float &v : wScales)
      v = (1.f + normal(rng) * 0.1f) * 1e-3f;
    float *dx = toDevice(x), *dws = toDevice(wScales);
    __nv_fp8_e4m3 *dw = toDevice(w);
    auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(c.m) * c.k);
    float *dxs = deviceArray<float>(size_t(c.m) * kBlocks);
    ASSERT_EQ(quantizeRowsFp8Padded(dx, c.m, c.kIn, c.k, dq, dxs, nullptr),
              cudaSuccess);
    auto *ring = deviceArray<__nv_bfloat16>(size_t(c.m) * c.n),
         *registers = deviceArray<__nv_bfloat16>(size_t(c.m) * c.n);
    float *ringF32 = deviceArray<float>(size_t(c.m) * c.n),
          *registersF32 = deviceArray<float>(size_t(c.m) * c.n);
    ASSERT_EQ(
        fp8FewTokens(dq, dxs, dw, dws, ring, c.m, c.n, c.k, smCount, nullptr),
        cudaSuccess);
    ASSERT_EQ(fp8FewTokensInRegisters(dq, dxs, dw, dws, registers, c.m, c.n,
                                      c.k, smCount, nullptr),
              cudaSuccess);
    ASSERT_EQ(fp8FewTokensFromF32(dx, nullptr, c.kIn, dw, dws, ringF32, c.m,
                                  c.n, c.k, smCount, nullptr),
              cudaSuccess);
    ASSERT_EQ(fp8FewTokensInRegistersFromF32(dx, nullptr, c.kIn, dw, dws,
                                             registersF32, c.m, c.n, c.k,
                                             smCount, nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto a = toHost(ring, size_t(c.m) * c.n),
         b = toHost(registers, size_t(c.m) * c.n);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])), 0)
        << c.m << "x" << c.n << "x" << c.k << " from FP8";
    EXPECT_EQ(differingBits(toHost(ringF32, size_t(c.m) * c.n),
                            toHost(registersF32, size_t(c.m) * c.n)),
              0)
        << c.m << "x" << c.n << "x" << c.k << " from F32";
    for (void *p : {(void *)dx, (void *)dws, (void *)dw, (void *)dq,
                    (void *)dxs, (void *)ring, (void *)registers,
                    (void *)ringF32, (void *)registersF32})
      cudaFree(p);
  }
}

// cuBLASLt from 9 tokens on (the split-K wgmma kernel declined), on
// zero-padded copies when M is not a multiple of 16; then the small-M
// kernel again after cuBLASLt used the workspace.
TEST(CudaGemm, Fp8CublasLtMatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  gemm->setSplitKRows(0);
  std::mt19937 rng(17);
  for (Shape s : {Shape{37, 2112, 7168}, Shape{64, 256, 1024},
                  Shape{130, 400, 1024}, Shape{512, 1536, 512}})
    checkFp8(*gemm, s, 8, rng);
  // Plans: 48 (37 padded), 64, 144 (130 padded) and 512 tokens.
  EXPECT_EQ(gemm->cachedShapes(), 4u);
  checkFp8(*gemm, Shape{3, 2112, 7168}, 8, rng);
}

/// fp8FromF32 on host x [m, kIn] against quantizeRowsFp8Padded, the
/// block-scaled GEMM and the widening to F32 over W [n, k]: bit for bit.
void expectOneLaunchMatchesQuantizeThenGemm(GemmRunner &gemm,
                                            const std::vector<float> &x,
                                            const std::vector<__nv_fp8_e4m3> &w,
                                            const std::vector<float> &wScales,
                                            int m, int n, int kIn, int k) {
  const int kBlocks = k / 128;
  float *dx = toDevice(x), *dws = toDevice(wScales);
  __nv_fp8_e4m3 *dw = toDevice(w);
  auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(m) * k);
  float *dxs = deviceArray<float>(size_t(m) * kBlocks);
  auto *dy = deviceArray<__nv_bfloat16>(size_t(m) * n);
  float *dyFused = deviceArray<float>(size_t(m) * n);
  ASSERT_EQ(quantizeRowsFp8Padded(dx, m, kIn, k, dq, dxs, nullptr),
            cudaSuccess);
  CudaStatus st = gemm.fp8BlockScaled(dq, dxs, dw, dws, dy, m, n, k);
  ASSERT_FALSE(st) << st.error;
  bool handled = false;
  st = gemm.fp8FromF32(dx, nullptr, kIn, dw, dws, dyFused, m, n, k, handled);
  ASSERT_FALSE(st) << st.error;
  ASSERT_TRUE(handled) << m << " tokens";
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto y = toHost(dy, size_t(m) * n);
  auto fused = toHost(dyFused, size_t(m) * n);
  int differ = 0;
  for (size_t i = 0; i < y.size(); ++i)
    differ += __bfloat162float(y[i]) != fused[i];
  EXPECT_EQ(differ, 0) << m << "x" << n << "x" << kIn << " (" << k << ")";
  cudaFree(dx), cudaFree(dws), cudaFree(dw), cudaFree(dq), cudaFree(dxs),
      cudaFree(dy), cudaFree(dyFused);
}

// One launch for a few tokens (x F32, quantized in the kernel; y F32): the
// same values, bit for bit, as quantizeRowsFp8, the small-M kernel and the
// widening to F32. x has an all-zero block and values far apart.
TEST(CudaGemm, Fp8FromF32MatchesQuantizeThenGemm) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> scaleDist(0.25f, 4.f);
  for (Shape s : {Shape{1, 2112, 7168}, Shape{5, 2112, 7168},
                  Shape{8, 4096, 256}, Shape{3, 16, 128}}) {
    const int kBlocks = s.k / 128, nBlocks = (s.n + 127) / 128;
    std::vector<float> x(size_t(s.m) * s.k);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = normal(rng) * (i % 7 == 0 ? 300.f : 1.f);
    for (int p = 0; p < 128 && s.m > 1; ++p)
      x[size_t(s.k) + p] = 0.f; // token 1's first block
    std::vector<__nv_fp8_e4m3> w(size_t(s.n) * s.k);
    for (auto &v : w)
      v = __nv_fp8_e4m3(normal(rng) * 100.f);
    std::vector<float> wScales(size_t(nBlocks) * kBlocks);
    for (auto &v : wScales)
      v = scaleDist(rng) * 1e-3f;
    expectOneLaunchMatchesQuantizeThenGemm(*gemm, x, w, wScales, s.m, s.n, s.k,
                                           s.k);
  }
  // Beyond 8 tokens: not taken (the caller quantizes and runs the GEMM).
  bool handled = true;
  CudaStatus st = gemm->fp8FromF32(nullptr, nullptr, 7168, nullptr, nullptr,
                                   nullptr, 9, 2112, 7168, handled);
  EXPECT_FALSE(st);
  EXPECT_FALSE(handled);
}

// A weight stored with its K padded to 512 (zeros beyond the model's K)
// times x rows of the model's K: the one launch reads x's shorter rows, bit
// for bit as quantizeRowsFp8Padded, the small-M kernel and the widening.
TEST(CudaGemm, Fp8FromF32TakesRowsShorterThanAPaddedWeight) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  std::mt19937 rng(29);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Padded {
    int m, n, kIn, k;
  };
  for (Padded s : {Padded{1, 2048, 1408, 1536}, Padded{5, 2048, 10944, 11264},
                   Padded{8, 256, 1000, 1024}}) {
    const int kBlocks = s.k / 128, nBlocks = (s.n + 127) / 128;
    std::vector<float> x(size_t(s.m) * s.kIn);
    for (float &v : x)
      v = normal(rng);
    std::vector<__nv_fp8_e4m3> w(size_t(s.n) * s.k, __nv_fp8_e4m3(0.f));
    for (int r = 0; r < s.n; ++r)
      for (int c = 0; c < s.kIn; ++c)
        w[size_t(r) * s.k + c] = __nv_fp8_e4m3(normal(rng) * 100.f);
    std::vector<float> wScales(size_t(nBlocks) * kBlocks, 1e-3f);
    expectOneLaunchMatchesQuantizeThenGemm(*gemm, x, w, wScales, s.m, s.n,
                                           s.kIn, s.k);
  }
}

TEST(CudaGemm, Fp8RejectsUnalignedShapes) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<GemmRunner> gemm;
  ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
  CudaStatus st = gemm->fp8BlockScaled(nullptr, nullptr, nullptr, nullptr,
                                       nullptr, 4, 256, 100);
  EXPECT_TRUE(st);
  EXPECT_NE(st.error.find("multiple of 128"), std::string::npos) << st.error;
  st = gemm->fp8BlockScaled(nullptr, nullptr, nullptr, nullptr, nullptr, 130,
                            400, 768);
  EXPECT_NE(st.error.find("K/128 to be a multiple of 4"), std::string::npos)
      << st.error;
}

TEST(CudaQuantize, RmsNormQuantizeMatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(13);
  const int m = 9, k = 7168, blocks = k / kQuantBlock;
  const float eps = 1e-6f;
  auto x = randomBf16(size_t(m) * k, rng, 3.f);
  auto gamma = randomBf16(k, rng, 0.5f);
  __nv_bfloat16 *dx = toDevice(x), *dg = toDevice(gamma);
  auto *dq = deviceArray<__nv_fp8_e4m3>(size_t(m) * k);
  float *ds = deviceArray<float>(size_t(m) * blocks);
  auto *dy = deviceArray<__nv_bfloat16>(size_t(m) * k);
  ASSERT_EQ(rmsNormQuantizeFp8(dx, dg, eps, m, k, dq, ds, dy, nullptr),
            cudaSuccess);
  auto q = toHost(dq, size_t(m) * k);
  auto s = toHost(ds, size_t(m) * blocks);
  auto y = toHost(dy, size_t(m) * k);
  for (int i = 0; i < m; ++i) {
    double sum = 0;
    for (int p = 0; p < k; ++p) {
      double v = __bfloat162float(x[size_t(i) * k + p]);
      sum += v * v;
    }
    double rstd = 1 / std::sqrt(sum / k + eps);
    for (int p = 0; p < k; ++p) {
      size_t at = size_t(i) * k + p;
      double want = __bfloat162float(x[at]) * rstd * __bfloat162float(gamma[p]);
      double normalized = __bfloat162float(y[at]);
      ASSERT_LE(std::fabs(normalized - want), std::fabs(want) / 128 + 1e-6)
          << "row " << i << " value " << p;
      double scale = s[size_t(p / kQuantBlock) * m + i];
      double dequantized = double(fp8ToFloat(q[at])) * scale;
      ASSERT_LE(std::fabs(dequantized - normalized),
                std::fabs(normalized) / 16 + std::ldexp(scale, -9) + 1e-12)
          << "row " << i << " value " << p;
    }
  }
  cudaFree(dx), cudaFree(dg), cudaFree(dq), cudaFree(ds), cudaFree(dy);
}

} // namespace

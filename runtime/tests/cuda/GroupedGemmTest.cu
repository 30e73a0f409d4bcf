// The grouped BF16 product (GroupedGemm.h) against a double-precision
// product of the same BF16 values: groups of 0, 1, 127, 128, 129 and 300
// rows (padded to 128), several blocks of k, two column tiles, BF16 and
// F32 output, BF16 and FP8 block-scaled weights (against their widened
// BF16 values), gate/up pairs (SiLU(gate) * up), and rows past the last
// group left as they were; given where each group's rows end, its padding
// rows (NaN in x) left as they were too and the rows before them the same;
// BF16 rows 16 bytes a lane the same bits as 4 (GroupedGemmArgs::
// wideStores). Skips without a device.
#include "cuda/GroupedGemm.h"

#include "CudaTestUtil.h"

#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Options {
  bool f32Out = false; // F32 output (else BF16)
  bool fp8 = false;    // FP8 weights with 128x128 block scales (else BF16)
  bool pair = false;   // a gate/up pair: SiLU(x w^T) * (x w2^T)
  bool ends = false;   // the groups' ends given: padding rows left out
};

float roundedBf16(double v) {
  return __bfloat162float(__float2bfloat16(float(v)));
}

/// A group's weights [groups, n, k] as the kernel reads them (BF16, or FP8
/// codes and scales), and the BF16 values they stand for.
struct Weights {
  std::vector<__nv_bfloat16> values;
  std::vector<uint8_t> codes;
  std::vector<float> scales;

  Weights(std::mt19937 &rng, int groups, int n, int k, bool fp8) {
    std::normal_distribution<float> normal(0.f, 1.f);
    values.resize(size_t(groups) * n * k);
    if (!fp8) {
      for (auto &v : values)
        v = __float2bfloat16(normal(rng));
      return;
    }
    // Random e4m3 codes (not the NaN ones) and block scales; the values
    // are what they widen to (code's value times scale, in BF16).
    const int scaleBlocks = (k + 127) / 128;
    codes.resize(values.size());
    scales.resize(size_t(groups) * (n / 128) * scaleBlocks);
    std::uniform_int_distribution<int> code(0, 255);
    std::uniform_real_distribution<float> scaleOf(0.002f, 0.05f);
    for (float &v : scales)
      v = scaleOf(rng);
    for (size_t i = 0; i < codes.size(); ++i) {
      do
        codes[i] = uint8_t(code(rng));
      while ((codes[i] & 0x7f) == 0x7f);
      const size_t e = i / (size_t(n) * k), r = i / k % n, c = i % k;
      __nv_fp8_e4m3 value;
      value.__x = codes[i];
      values[i] = __float2bfloat16(
          float(value) *
          scales[(e * (n / 128) + r / 128) * scaleBlocks + c / 128]);
    }
  }
  const void *toDeviceData() const {
    return codes.empty() ? static_cast<const void *>(toDevice(values))
                         : static_cast<const void *>(toDevice(codes));
  }
  const float *toDeviceScales() const {
    return scales.empty() ? nullptr : toDevice(scales);
  }
};

void runCase(const std::vector<int> &counts, int n, int k, Options o = {}) {
  const int groups = int(counts.size());
  const std::vector<int32_t> starts =
      paddedGroupStarts(counts, kGroupedGemmRows);
  // One spare tile past the last group: its rows must stay untouched.
  const int capacity = starts.back() + kGroupedGemmRows;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<__nv_bfloat16> x(size_t(capacity) * k);
  for (auto &v : x)
    v = __float2bfloat16(normal(rng));
  std::vector<int32_t> ends;
  std::vector<bool> padding(size_t(capacity), false);
  if (o.ends) // padding rows of NaN: no row of interest may depend on them
    for (int e = 0; e < groups; ++e) {
      ends.push_back(starts[size_t(e)] + counts[size_t(e)]);
      for (int r = ends.back(); r < starts[size_t(e) + 1]; ++r) {
        padding[size_t(r)] = true;
        for (int i = 0; i < k; ++i)
          x[size_t(r) * k + i] = __float2bfloat16(NAN);
      }
    }
  const Weights w(rng, groups, n, k, o.fp8);
  const Weights w2(rng, groups, o.pair ? n : 128, o.pair ? k : 64, o.fp8);
  const float untouched = -12345.f;
  std::vector<__nv_bfloat16> y(size_t(capacity) * n,
                               __float2bfloat16(untouched));
  std::vector<float> y32(size_t(capacity) * n, untouched);

  GroupedGemmArgs args;
  args.x = toDevice(x);
  args.w = w.toDeviceData();
  args.wScales = w.toDeviceScales();
  if (o.pair) {
    args.w2 = w2.toDeviceData();
    args.w2Scales = w2.toDeviceScales();
  }
  __nv_bfloat16 *deviceY = o.f32Out ? nullptr : toDevice(y);
  float *deviceY32 = o.f32Out ? toDevice(y32) : nullptr;
  args.y = deviceY;
  args.yF32 = deviceY32;
  args.starts = toDevice(starts);
  if (o.ends)
    args.ends = toDevice(ends);
  args.groups = groups;
  args.capacity = capacity;
  args.n = n;
  args.k = k;
  ASSERT_TRUE(groupedGemmFits(args));
  ASSERT_EQ(groupedGemmBf16(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (o.f32Out) {
    y32 = toHost(deviceY32, y32.size());
  } else {
    y = toHost(deviceY, y.size());
    // The BF16 rows 4 bytes a lane, as the fragments hold them: the same
    // bits, and the same rows left out, as 16 bytes a lane.
    std::vector<__nv_bfloat16> narrow(y.size(), __float2bfloat16(untouched));
    __nv_bfloat16 *deviceNarrow = toDevice(narrow);
    GroupedGemmArgs narrowArgs = args;
    narrowArgs.y = deviceNarrow, narrowArgs.wideStores = false;
    ASSERT_EQ(groupedGemmBf16(narrowArgs, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    narrow = toHost(deviceNarrow, narrow.size());
    cudaFree(deviceNarrow);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_EQ(std::memcmp(&narrow[i], &y[i], sizeof(y[i])), 0)
          << "element " << i << " of 4-byte stores, n " << n << ", k " << k
          << ", pair " << o.pair;
  }
  auto output = [&](size_t i) {
    return o.f32Out ? double(y32[i]) : double(__bfloat162float(y[i]));
  };

  auto product = [&](const Weights &m, int e, int r, int c) {
    double sum = 0;
    for (int i = 0; i < k; ++i)
      sum += double(__bfloat162float(x[size_t(r) * k + i])) *
             __bfloat162float(m.values[(size_t(e) * n + c) * k + i]);
    return sum;
  };
  double worst = 0;
  int nonFinite = 0;
  for (int e = 0; e < groups; ++e)
    for (int r = starts[size_t(e)]; r < starts[size_t(e)] + counts[size_t(e)];
         ++r)
      for (int c = 0; c < n; ++c) {
        double want = product(w, e, r, c), gateSlope = 0;
        if (o.pair) { // each product rounded to BF16, then SiLU(g) * u
          const double g = roundedBf16(want),
                       u = roundedBf16(product(w2, e, r, c));
          const double sigmoid = 1 / (1 + std::exp(-g));
          want = g * sigmoid * u;
          // What a flip of g's BF16 rounding (2^-8 of g) moves SiLU(g) u by.
          gateSlope = std::fabs(sigmoid * (1 + g * (1 - sigmoid)) * g * u);
        }
        const double have = output(size_t(r) * n + c);
        if (!std::isfinite(have))
          ++nonFinite;
        // BF16 output: 2^-8 of the value; either: the FP32 sums' order
        // (a pair: its products' BF16 rounding too, up to 2^-8 of each).
        const double bound =
            o.f32Out ? std::fabs(want) * 1e-4 + 2e-3
            : o.pair ? std::fabs(want) * 0x1p-6 + gateSlope * 0x1p-8 + 5e-2
                     : std::fabs(want) * 0x1p-8 + 1e-2;
        worst = std::max(worst, std::fabs(have - want) / bound);
      }
  EXPECT_EQ(nonFinite, 0) << "n " << n << ", k " << k;
  EXPECT_LE(worst, 1.0) << "n " << n << ", k " << k << ", f32 " << o.f32Out
                        << ", fp8 " << o.fp8 << ", pair " << o.pair;
  const double initial =
      o.f32Out ? double(untouched)
               : double(__bfloat162float(__float2bfloat16(untouched)));
  for (size_t i = size_t(starts.back()) * n; i < y.size(); ++i)
    ASSERT_EQ(output(i), initial)
        << "row " << i / n << " past the last group was written";
  for (size_t i = 0; i < size_t(starts.back()) * n; ++i)
    if (padding[i / size_t(n)])
      ASSERT_EQ(output(i), initial)
          << "padding row " << i / n << " was written";
  cudaFree(const_cast<__nv_bfloat16 *>(args.x));
  cudaFree(const_cast<void *>(args.w));
  cudaFree(const_cast<float *>(args.wScales));
  cudaFree(const_cast<void *>(args.w2));
  cudaFree(const_cast<float *>(args.w2Scales));
  cudaFree(deviceY);
  cudaFree(deviceY32);
  cudaFree(const_cast<int32_t *>(args.starts));
  cudaFree(const_cast<int32_t *>(args.ends));
}

} // namespace

TEST(CudaGroupedGemm, MatchesThePlainProducts) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runCase({0, 1, 127, 128, 129, 300}, 256, 512);
  // One block of k; one group; k of 3 stages' worth and more.
  runCase({200}, 128, 64);
  runCase({5, 0, 0, 40}, 128, 192);
  runCase({64, 64}, 384, 2048);
  Options f32;
  f32.f32Out = true;
  runCase({0, 1, 127, 128, 129, 300}, 256, 512, f32);
  runCase({64, 64}, 384, 2048, f32);
  // FP8 weights: k of one block of 64 (half a scale block), of 11 scale
  // blocks (an expert's intermediate 1408), F32 and BF16 output.
  Options fp8;
  fp8.fp8 = true;
  runCase({0, 1, 127, 128, 129, 300}, 256, 512, fp8);
  runCase({200}, 128, 64, fp8);
  fp8.f32Out = true;
  runCase({70, 0, 131}, 256, 1408, fp8);
}

TEST(CudaGroupedGemm, GateUpPairsGiveSiluTimesUp) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  Options pair;
  pair.pair = true;
  runCase({0, 1, 127, 128, 129, 300}, 256, 512, pair);
  runCase({200}, 128, 64, pair);
  pair.fp8 = true;
  runCase({70, 0, 131}, 256, 1408, pair);
  runCase({5, 0, 0, 40}, 128, 192, pair);
}

TEST(CudaGroupedGemm, LeavesThePaddingRowsOut) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  // Last tiles with 1, 63, 64 (the second warpgroup idle), 65, 127 and 128
  // rows of interest: BF16 and F32 output, a 256-column single product, a
  // pair, FP8 weights; each also without the ends (every row written).
  const std::vector<int> counts = {1, 63, 64, 65, 127, 128, 300};
  for (Options o :
       {Options{false, false, false, true}, Options{true, false, false, true},
        Options{false, false, true, true}, Options{true, true, false, true},
        Options{false, true, true, true}})
    for (bool ends : {true, false}) {
      o.ends = ends;
      runCase(counts, 256, 512, o);
    }
}

TEST(CudaGroupedGemm, RefusesWhatItCannotTake) {
  GroupedGemmArgs args;
  args.groups = 1;
  args.capacity = 128;
  args.n = 128;
  args.k = 64;
  auto *p = reinterpret_cast<__nv_bfloat16 *>(uintptr_t(256));
  auto *scales = reinterpret_cast<const float *>(uintptr_t(512));
  args.x = p, args.w = p, args.y = p;
  args.starts = reinterpret_cast<const int32_t *>(uintptr_t(256));
  EXPECT_TRUE(groupedGemmFits(args));
  args.n = 100; // not a multiple of a column tile
  EXPECT_FALSE(groupedGemmFits(args));
  args.n = 128;
  args.k = 96; // not a multiple of a block of k
  EXPECT_FALSE(groupedGemmFits(args));
  args.k = 64;
  args.capacity = 100; // not a multiple of a row tile
  EXPECT_FALSE(groupedGemmFits(args));
  EXPECT_EQ(groupedGemmBf16(args, nullptr), cudaErrorInvalidValue);
  args.capacity = 128;
  args.yF32 = reinterpret_cast<float *>(uintptr_t(256)); // two outputs
  EXPECT_FALSE(groupedGemmFits(args));
  args.y = nullptr; // the F32 one only
  EXPECT_TRUE(groupedGemmFits(args));
  args.w2 = p; // a pair with an F32 output
  EXPECT_FALSE(groupedGemmFits(args));
  args.yF32 = nullptr, args.y = p;
  EXPECT_TRUE(groupedGemmFits(args));
  args.wScales = scales; // FP8 gate, BF16 up
  EXPECT_FALSE(groupedGemmFits(args));
  args.w2Scales = scales;
  EXPECT_TRUE(groupedGemmFits(args));
  args.w2 = nullptr; // up scales without up weights
  EXPECT_FALSE(groupedGemmFits(args));
  args.yF32 = nullptr; // neither output
  args.y = nullptr, args.w2Scales = nullptr;
  EXPECT_FALSE(groupedGemmFits(args));
}

// The fused causal attention (CausalAttention.h) against a double-precision
// reference over the same BF16-rounded queries, keys and values: runs at
// position 0 and after a cached prefix (more keys than the run reaches),
// query counts that leave a block part-filled, several heads; several runs
// in one launch against their own launches; the queries as the projection
// leaves them against the split and rotated ones; the arguments it
// refuses; and the blocks' order (on the host).
// Kernel cases skip without a device.
#include "CudaTestUtil.h"
#include "cuda/CausalAttention.h"
#include "cuda/CausalAttentionParts.cuh"
#include "cuda/ModelKernels.h"
#include "cuda/Quantize.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

constexpr int kNope = 128, kRope = 64, kValue = 128, kWidth = kNope + kRope;

float roundedToBf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

/// n standard-normal values.
std::vector<float> randoms(std::mt19937 &rng, size_t n) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> v(n);
  for (float &x : v)
    x = normal(rng);
  return v;
}

/// n standard-normal values rounded to BF16.
std::vector<__nv_bfloat16> bf16Randoms(std::mt19937 &rng, size_t n) {
  const std::vector<float> values = randoms(rng, n);
  std::vector<__nv_bfloat16> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = __float2bfloat16(values[i]);
  return v;
}

const char *kernelName(CausalKernel kernel) {
  return kernel == CausalKernel::Warps ? "mma.sync" : "wgmma";
}

struct Case {
  int heads, tokens; // tokens in the step; the run is a slice of them
  CausalRun run;
};

void runCase(const Case &c, CausalKernel kernel) {
  std::mt19937 rng(7);
  const int keys = c.run.keys, heads = c.heads;
  std::vector<float> qNope = randoms(rng, size_t(c.tokens) * heads * kNope);
  std::vector<float> qRope = randoms(rng, size_t(c.tokens) * heads * kRope);
  std::vector<float> k = randoms(rng, size_t(heads) * keys * kWidth);
  std::vector<float> v = randoms(rng, size_t(heads) * keys * kValue);
  std::vector<__nv_bfloat16> kb(k.size()), vb(v.size());
  for (size_t i = 0; i < k.size(); ++i)
    kb[i] = __float2bfloat16(k[i]);
  for (size_t i = 0; i < v.size(); ++i)
    vb[i] = __float2bfloat16(v[i]);
  const float scale = 1.f / std::sqrt(float(kWidth));

  const size_t outCount = size_t(c.tokens) * heads * kValue;
  float *out = deviceArray<float>(outCount);
  // Rows outside the run stay as they were: NaN here.
  std::vector<float> nan(outCount, std::nanf(""));
  ASSERT_EQ(cudaMemcpy(out, nan.data(), outCount * sizeof(float),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  float *dQn = toDevice(qNope), *dQr = toDevice(qRope);
  __nv_bfloat16 *dK = toDevice(kb), *dV = toDevice(vb);
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, dK, dV, c.run, heads, kNope, kRope,
                                kValue, scale, out, nullptr, kernel),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> have = toHost(out, outCount);

  double worst = 0, range = 0;
  for (int i = 0; i < c.run.count; ++i)
    for (int h = 0; h < heads; ++h) {
      const size_t th = size_t(c.run.first + i) * heads + h;
      const int visible = c.run.position + i + 1;
      std::vector<double> p(size_t(visible), 0.0);
      double top = -1e300, sum = 0;
      for (int s = 0; s < visible; ++s) {
        const float *key = &k[(size_t(h) * keys + s) * kWidth];
        double score = 0;
        for (int d = 0; d < kNope; ++d)
          score += double(roundedToBf16(qNope[th * kNope + d])) *
                   roundedToBf16(key[d]);
        for (int d = 0; d < kRope; ++d)
          score += double(roundedToBf16(qRope[th * kRope + d])) *
                   roundedToBf16(key[kNope + d]);
        p[size_t(s)] = score * scale;
        top = std::max(top, p[size_t(s)]);
      }
      for (double &x : p)
        sum += x = std::exp(x - top);
      for (int d = 0; d < kValue; ++d) {
        double want = 0;
        for (int s = 0; s < visible; ++s)
          want += p[size_t(s)] / sum *
                  roundedToBf16(v[(size_t(h) * keys + s) * kValue + d]);
        const float got = have[th * kValue + d];
        worst = std::max(worst, std::fabs(double(got) - want));
        range = std::max(range, std::fabs(want));
      }
    }
  // The probabilities are rounded to BF16 before they weight the values.
  EXPECT_LE(worst, 1e-2 * range)
      << kernelName(kernel) << ": " << c.heads << " heads, " << c.run.count
      << " queries at " << c.run.position << ", " << keys << " keys";
  for (int t = 0; t < c.tokens; ++t)
    if (t < c.run.first || t >= c.run.first + c.run.count)
      EXPECT_TRUE(std::isnan(have[size_t(t) * heads * kValue]))
          << "token " << t << " outside the run was written";
  for (void *p : {static_cast<void *>(out), static_cast<void *>(dQn),
                  static_cast<void *>(dQr), static_cast<void *>(dK),
                  static_cast<void *>(dV)})
    cudaFree(p);
}

/// Random queries of `tokens` tokens (split: nope and rope) and each run's
/// keys and values on the device (BF16; at least one key's rows for an
/// empty run), their memory added to `owned`.
struct RandomRuns {
  float *qNope = nullptr, *qRope = nullptr;
  std::vector<CausalRunOperands> operands;
};
RandomRuns randomRuns(const std::vector<CausalRun> &runs, int heads, int tokens,
                      std::mt19937 &rng, std::vector<void *> &owned) {
  RandomRuns r;
  r.qNope = toDevice(randoms(rng, size_t(tokens) * heads * kNope));
  r.qRope = toDevice(randoms(rng, size_t(tokens) * heads * kRope));
  owned.push_back(r.qNope);
  owned.push_back(r.qRope);
  for (const CausalRun &run : runs) {
    const size_t keys = size_t(std::max(run.keys, 1));
    __nv_bfloat16 *k = toDevice(bf16Randoms(rng, heads * keys * kWidth));
    __nv_bfloat16 *v = toDevice(bf16Randoms(rng, heads * keys * kValue));
    r.operands.push_back({run, k, v});
    owned.push_back(k);
    owned.push_back(v);
  }
  return r;
}

/// The device cases run on both kernels.
class CudaCausalAttentionKernels
    : public ::testing::TestWithParam<CausalKernel> {};

} // namespace

INSTANTIATE_TEST_SUITE_P(BothKernels, CudaCausalAttentionKernels,
                         ::testing::Values(CausalKernel::Warps,
                                           CausalKernel::Warpgroups),
                         [](const auto &info) {
                           return info.param == CausalKernel::Warps
                                      ? std::string("Warps")
                                      : std::string("Warpgroups");
                         });

TEST_P(CudaCausalAttentionKernels, MatchesTheReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const CausalKernel kernel = GetParam();
  runCase({1, 1, {0, 1, 0, 1}}, kernel);         // one query, one key
  runCase({3, 70, {0, 70, 0, 70}}, kernel);      // a second block of 6 queries
  runCase({2, 140, {5, 130, 200, 400}}, kernel); // after a prefix, keys beyond
  runCase({16, 192, {0, 192, 0, 192}},
          kernel);                          // whole blocks, DeepSeek's heads
  runCase({2, 65, {0, 65, 0, 65}}, kernel); // a block of one query
  runCase({1, 300, {0, 300, 37, 400}}, kernel); // blocks across key tiles
  runCase({1, 60, {0, 60, 0, 60}}, kernel);     // a warpgroup with no query
  runCase({2, 700, {0, 700, 0, 700}}, kernel);  // around the ring's stages
}

// Several runs in one launch (a prefill's sequences: different lengths,
// one after a cached prefix, one empty) give each run's output bit for bit
// as its own launch does: the same blocks, scheduled otherwise; so do the
// runs' keys and values side by side in one matrix (headRows).
TEST_P(CudaCausalAttentionKernels, RunsInOneLaunchMatchTheirOwnLaunches) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const CausalKernel kernel = GetParam();
  const int heads = 3, tokens = 300;
  const std::vector<CausalRun> runs = {
      {0, 130, 0, 130}, {130, 0, 0, 0}, {130, 1, 0, 1}, {131, 169, 40, 260}};
  std::mt19937 rng(5);
  std::vector<void *> owned;
  const RandomRuns random = randomRuns(runs, heads, tokens, rng, owned);
  float *dQn = random.qNope, *dQr = random.qRope;
  const std::vector<CausalRunOperands> &operands = random.operands;
  const size_t outCount = size_t(tokens) * heads * kValue;
  float *together = deviceArray<float>(outCount);
  float *apart = deviceArray<float>(outCount);
  owned.push_back(together);
  owned.push_back(apart);
  const float scale = 1.f / std::sqrt(float(kWidth));
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, operands.data(), int(runs.size()),
                                heads, kNope, kRope, kValue, scale, together,
                                nullptr, nullptr, kernel),
            cudaSuccess);
  for (const CausalRunOperands &o : operands)
    ASSERT_EQ(causalAttentionBf16(dQn, dQr, o.keys, o.values, o.run, heads,
                                  kNope, kRope, kValue, scale, apart, nullptr,
                                  kernel),
              cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> a = toHost(together, outCount),
                           b = toHost(apart, outCount);
  // Every token belongs to a run here: the whole outputs compare.
  for (size_t i = 0; i < outCount; ++i)
    ASSERT_EQ(a[i], b[i]) << "token " << i / (heads * kValue) << ", head "
                          << i / kValue % heads;

  // The runs' keys and values side by side in one matrix each (a head's
  // rows of every run, then the next head's), each run at its rows: the
  // same output again.
  int rows = 0;
  for (const CausalRunOperands &o : operands)
    rows += std::max(o.run.keys, 1);
  std::vector<__nv_bfloat16> sharedKeys(size_t(heads) * rows * kWidth),
      sharedValues(size_t(heads) * rows * kValue);
  std::vector<int> rowStart;
  int start = 0;
  for (const CausalRunOperands &o : operands) {
    const int keys = std::max(o.run.keys, 1);
    rowStart.push_back(start);
    const std::vector<__nv_bfloat16> k =
        toHost(o.keys, size_t(heads) * keys * kWidth);
    const std::vector<__nv_bfloat16> v =
        toHost(o.values, size_t(heads) * keys * kValue);
    for (int h = 0; h < heads; ++h) {
      std::copy_n(k.begin() + size_t(h) * keys * kWidth, size_t(keys) * kWidth,
                  sharedKeys.begin() + (size_t(h) * rows + start) * kWidth);
      std::copy_n(v.begin() + size_t(h) * keys * kValue, size_t(keys) * kValue,
                  sharedValues.begin() + (size_t(h) * rows + start) * kValue);
    }
    start += keys;
  }
  __nv_bfloat16 *dSharedKeys = toDevice(sharedKeys),
                *dSharedValues = toDevice(sharedValues);
  owned.push_back(dSharedKeys);
  owned.push_back(dSharedValues);
  std::vector<CausalRunOperands> sharing;
  for (size_t i = 0; i < operands.size(); ++i)
    sharing.push_back({operands[i].run,
                       dSharedKeys + size_t(rowStart[i]) * kWidth,
                       dSharedValues + size_t(rowStart[i]) * kValue, rows});
  float *shared = deviceArray<float>(outCount);
  owned.push_back(shared);
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, sharing.data(), int(sharing.size()),
                                heads, kNope, kRope, kValue, scale, shared,
                                nullptr, nullptr, kernel),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> c = toHost(shared, outCount);
  for (size_t i = 0; i < outCount; ++i)
    ASSERT_EQ(c[i], b[i]) << "sharing one matrix: token "
                          << i / (heads * kValue) << ", head "
                          << i / kValue % heads;
  for (void *p : owned)
    cudaFree(p);
}

// The output's FP8 codes written beside it (CausalOutputCodes): the
// bytes and scales quantizeRowsFp8 makes of the F32 output (a token's heads
// as one row, a head's 128 values a block), the F32 output itself the
// same as without them, and the codes alone (no F32 output) the same
// bytes; runs of several lengths in one launch, rows past the last full
// block of 64 queries among them.
TEST_P(CudaCausalAttentionKernels, WritesItsOutputsCodesAsQuantizeRowsFp8) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const CausalKernel kernel = GetParam();
  const int heads = 3, tokens = 300;
  const std::vector<CausalRun> runs = {
      {0, 130, 0, 130}, {130, 1, 0, 1}, {131, 169, 40, 260}};
  std::mt19937 rng(7);
  std::vector<void *> owned;
  const RandomRuns random = randomRuns(runs, heads, tokens, rng, owned);
  float *dQn = random.qNope, *dQr = random.qRope;
  const std::vector<CausalRunOperands> &operands = random.operands;
  const size_t outCount = size_t(tokens) * heads * kValue;
  float *plain = deviceArray<float>(outCount);
  float *withCodes = deviceArray<float>(outCount);
  auto *codes = deviceArray<uint8_t>(outCount);
  auto *wantCodes = deviceArray<__nv_fp8_e4m3>(outCount);
  float *scales = deviceArray<float>(size_t(heads) * tokens);
  float *wantScales = deviceArray<float>(size_t(heads) * tokens);
  auto *aloneCodes = deviceArray<uint8_t>(outCount);
  float *aloneScales = deviceArray<float>(size_t(heads) * tokens);
  owned.insert(owned.end(), {plain, withCodes, codes, wantCodes, scales,
                             wantScales, aloneCodes, aloneScales});
  const float scale = 1.f / std::sqrt(float(kWidth));
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, operands.data(), int(runs.size()),
                                heads, kNope, kRope, kValue, scale, plain,
                                nullptr, nullptr, kernel),
            cudaSuccess);
  const CausalOutputCodes out{codes, scales, tokens};
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, operands.data(), int(runs.size()),
                                heads, kNope, kRope, kValue, scale, withCodes,
                                nullptr, &out, kernel),
            cudaSuccess);
  ASSERT_EQ(quantizeRowsFp8(withCodes, tokens, heads * kValue, wantCodes,
                            wantScales, nullptr),
            cudaSuccess);
  const CausalOutputCodes alone{aloneCodes, aloneScales, tokens};
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, operands.data(), int(runs.size()),
                                heads, kNope, kRope, kValue, scale, nullptr,
                                nullptr, &alone, kernel),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> a = toHost(plain, outCount),
                           b = toHost(withCodes, outCount);
  for (size_t i = 0; i < outCount; ++i)
    ASSERT_EQ(b[i], a[i]) << "output " << i;
  const std::vector<uint8_t> have = toHost(codes, outCount),
                             want =
                                 toHost(reinterpret_cast<uint8_t *>(wantCodes),
                                        outCount);
  for (size_t i = 0; i < outCount; ++i)
    ASSERT_EQ(have[i], want[i])
        << "code of token " << i / (heads * kValue) << ", head "
        << i / kValue % heads << ", value " << i % kValue;
  const std::vector<float> haveScales = toHost(scales, size_t(heads) * tokens),
                           wantScalesHost =
                               toHost(wantScales, size_t(heads) * tokens);
  for (size_t i = 0; i < haveScales.size(); ++i)
    ASSERT_EQ(haveScales[i], wantScalesHost[i])
        << "scale of head " << i / tokens << ", token " << i % tokens;
  EXPECT_EQ(toHost(aloneCodes, outCount), have) << "the codes alone";
  EXPECT_EQ(toHost(aloneScales, size_t(heads) * tokens), haveScales)
      << "the codes alone";
  for (void *p : owned)
    cudaFree(p);
}

// The output's BF16 rows in place of its F32 ones (CausalOutputCodes::bf16,
// for a BF16 output projection): the F32 output rounded to BF16, bit for
// bit, the same runs.
TEST_P(CudaCausalAttentionKernels, WritesItsOutputInBf16AsTheF32OutputRounded) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const CausalKernel kernel = GetParam();
  const int heads = 3, tokens = 300;
  const std::vector<CausalRun> runs = {
      {0, 130, 0, 130}, {130, 1, 0, 1}, {131, 169, 40, 260}};
  std::mt19937 rng(11);
  std::vector<void *> owned;
  const RandomRuns random = randomRuns(runs, heads, tokens, rng, owned);
  const size_t outCount = size_t(tokens) * heads * kValue;
  float *plain = deviceArray<float>(outCount);
  auto *rows = deviceArray<__nv_bfloat16>(outCount);
  owned.insert(owned.end(), {plain, rows});
  const float scale = 1.f / std::sqrt(float(kWidth));
  ASSERT_EQ(causalAttentionBf16(random.qNope, random.qRope,
                                random.operands.data(), int(runs.size()), heads,
                                kNope, kRope, kValue, scale, plain, nullptr,
                                nullptr, kernel),
            cudaSuccess);
  CausalOutputCodes bf16;
  bf16.bf16 = rows;
  ASSERT_EQ(causalAttentionBf16(random.qNope, random.qRope,
                                random.operands.data(), int(runs.size()), heads,
                                kNope, kRope, kValue, scale, nullptr, nullptr,
                                &bf16, kernel),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> want = toHost(plain, outCount);
  const std::vector<__nv_bfloat16> have = toHost(rows, outCount);
  for (size_t i = 0; i < outCount; ++i)
    ASSERT_EQ(__bfloat162float(have[i]),
              __bfloat162float(__float2bfloat16(want[i])))
        << "token " << i / (heads * kValue) << ", head " << i / kValue % heads
        << ", value " << i % kValue;
  for (void *p : owned)
    cudaFree(p);
}

// Queries as the projection leaves them ([tokens, heads, 192], the rope
// part's interleaved pairs not yet rotated), in F32 and in BF16 (values
// BF16 holds): the kernel's own split and rotation give the output of the
// split queries rotated by the rope kernel (YaRN-like frequencies and
// scale, positions past 4096), bit for bit.
TEST_P(CudaCausalAttentionKernels, ProjectedQueriesAreTheSplitAndRotatedOnes) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const CausalKernel kernel = GetParam();
  const int heads = 3, tokens = 150;
  const CausalRun run{10, 140, 60, 200};
  std::mt19937 rng(11);
  std::vector<float> q = randoms(rng, size_t(tokens) * heads * kWidth);
  std::vector<__nv_bfloat16> qBf16(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    qBf16[i] = __float2bfloat16(q[i]);
    q[i] = __bfloat162float(qBf16[i]);
  }
  std::vector<float> qNope, qRope;
  for (size_t th = 0; th < size_t(tokens) * heads; ++th) {
    qNope.insert(qNope.end(), q.begin() + th * kWidth,
                 q.begin() + th * kWidth + kNope);
    qRope.insert(qRope.end(), q.begin() + th * kWidth + kNope,
                 q.begin() + (th + 1) * kWidth);
  }
  std::vector<int32_t> positions(static_cast<size_t>(tokens));
  for (int t = 0; t < tokens; ++t)
    positions[size_t(t)] = t < run.first ? 0 : 4000 + run.position + t;
  CausalProjectedQuery projected;
  RopeFrequencies freqs{};
  for (int i = 0; i < kRope / 2; ++i) // YaRN-like: a spread of wavelengths
    freqs.inverse[i] = projected.inverse[i] =
        std::pow(10000.0, -2.0 * i / kRope) * (i < 8 ? 1.0 : 0.025);
  projected.mscale = 1.1386;
  __nv_bfloat16 *dK =
      toDevice(bf16Randoms(rng, size_t(heads) * run.keys * kWidth));
  __nv_bfloat16 *dV =
      toDevice(bf16Randoms(rng, size_t(heads) * run.keys * kValue));
  float *dQ = toDevice(q), *dQn = toDevice(qNope), *dQr = toDevice(qRope);
  __nv_bfloat16 *dQBf16 = toDevice(qBf16);
  int32_t *dPositions = toDevice(positions);
  const size_t outCount = size_t(tokens) * heads * kValue;
  float *split = deviceArray<float>(outCount);
  float *fromProjection = deviceArray<float>(outCount);
  float *fromBf16Projection = deviceArray<float>(outCount);
  float *fromRotatedRope = deviceArray<float>(outCount);
  auto *rotated = deviceArray<__nv_bfloat16>(size_t(tokens) * heads * kRope);
  ASSERT_EQ(rope({dQr, false}, dPositions, tokens, heads, kRope,
                 /*interleaved=*/true, freqs, projected.mscale, {dQr, false},
                 nullptr),
            cudaSuccess);
  const float scale = 1.f / std::sqrt(float(kWidth));
  const CausalRunOperands operands{run, dK, dV};
  ASSERT_EQ(causalAttentionBf16(dQn, dQr, &operands, 1, heads, kNope, kRope,
                                kValue, scale, split, nullptr, nullptr, kernel),
            cudaSuccess);
  projected.q = dQ, projected.positions = dPositions;
  ASSERT_EQ(causalAttentionBf16(projected, &operands, 1, heads, kNope, kRope,
                                kValue, scale, fromProjection, nullptr, nullptr,
                                kernel),
            cudaSuccess);
  CausalProjectedQuery inBf16 = projected;
  inBf16.q = nullptr, inBf16.qBf16 = dQBf16;
  ASSERT_EQ(causalAttentionBf16(inBf16, &operands, 1, heads, kNope, kRope,
                                kValue, scale, fromBf16Projection, nullptr,
                                nullptr, kernel),
            cudaSuccess);
  // The rope part rotated ahead, once for every head (the model's form).
  ASSERT_EQ(
      causalRotateQueryRope(inBf16, tokens, heads, kNope, rotated, nullptr),
      cudaSuccess);
  CausalProjectedQuery rotatedAhead = inBf16;
  rotatedAhead.ropeRotated = rotated;
  ASSERT_EQ(causalAttentionBf16(rotatedAhead, &operands, 1, heads, kNope, kRope,
                                kValue, scale, fromRotatedRope, nullptr,
                                nullptr, kernel),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> want = toHost(split, outCount),
                           have = toHost(fromProjection, outCount),
                           haveBf16 = toHost(fromBf16Projection, outCount),
                           haveAhead = toHost(fromRotatedRope, outCount);
  for (int t = run.first; t < run.first + run.count; ++t)
    for (int e = 0; e < heads * kValue; ++e) {
      const size_t i = size_t(t) * heads * kValue + e;
      ASSERT_EQ(have[i], want[i]) << "token " << t << ", head " << e / kValue;
      ASSERT_EQ(haveBf16[i], want[i])
          << "BF16 queries: token " << t << ", head " << e / kValue;
      ASSERT_EQ(haveAhead[i], want[i])
          << "rope rotated ahead: token " << t << ", head " << e / kValue;
    }
  for (void *p : std::vector<void *>{dK, dV, dQ, dQBf16, dQn, dQr, dPositions,
                                     split, fromProjection, fromBf16Projection,
                                     fromRotatedRope, rotated})
    cudaFree(p);
}

// Arguments it refuses before launching anything (no device needed).
TEST(CudaCausalAttention, RefusesWhatItCannotTake) {
  float *none = nullptr;
  const __nv_bfloat16 *noKeys = nullptr;
  EXPECT_FALSE(causalAttentionFits(64, 64, 128));
  EXPECT_TRUE(causalAttentionFits(128, 64, 128));
  EXPECT_EQ(causalAttentionBf16(none, none, noKeys, noKeys, {0, 4, 0, 4}, 1, 64,
                                64, 128, 1.f, none, nullptr),
            cudaErrorInvalidValue)
      << "widths";
  EXPECT_EQ(causalAttentionBf16(none, none, noKeys, noKeys, {0, 4, 10, 12}, 1,
                                128, 64, 128, 1.f, none, nullptr),
            cudaErrorInvalidValue)
      << "fewer keys than the run reaches";
  EXPECT_EQ(causalAttentionBf16(none, none, noKeys, noKeys, {0, 0, 0, 0}, 1,
                                128, 64, 128, 1.f, none, nullptr),
            cudaSuccess)
      << "an empty run";
  const CausalRunOperands many[kCausalMaxRuns + 1] = {};
  EXPECT_EQ(causalAttentionBf16(none, none, many, kCausalMaxRuns + 1, 1, 128,
                                64, 128, 1.f, none, nullptr),
            cudaErrorInvalidValue)
      << "more runs than a launch takes";
  EXPECT_EQ(causalAttentionBf16(none, none, many, kCausalMaxRuns, 1, 128, 64,
                                128, 1.f, none, nullptr),
            cudaSuccess)
      << "empty runs only";
  CausalRunOperands shared = many[0];
  shared.run = {0, 4, 0, 8};
  shared.headRows = 6;
  EXPECT_EQ(causalAttentionBf16(none, none, &shared, 1, 1, 128, 64, 128, 1.f,
                                none, nullptr),
            cudaErrorInvalidValue)
      << "a head's rows fewer than the run's keys";
  shared.headRows = 0;
  shared.keys = reinterpret_cast<const __nv_bfloat16 *>(uintptr_t(258));
  EXPECT_EQ(causalAttentionBf16(none, none, &shared, 1, 1, 128, 64, 128, 1.f,
                                none, nullptr),
            cudaErrorInvalidValue)
      << "keys off 16 bytes (cp.async and TMA read 16-byte pieces)";
  CausalProjectedQuery projected;
  EXPECT_EQ(causalAttentionBf16(projected, many, 1, 1, 128, 64, 128, 1.f, none,
                                nullptr),
            cudaErrorInvalidValue)
      << "projected queries without the queries";
  projected.q = reinterpret_cast<const float *>(uintptr_t(256));
  projected.qBf16 = reinterpret_cast<const __nv_bfloat16 *>(uintptr_t(256));
  projected.positions = reinterpret_cast<const int32_t *>(uintptr_t(256));
  EXPECT_EQ(causalAttentionBf16(projected, many, 1, 1, 128, 64, 128, 1.f, none,
                                nullptr),
            cudaErrorInvalidValue)
      << "projected queries in F32 and in BF16 at once";
  projected.qBf16 = nullptr;
  EXPECT_EQ(causalAttentionBf16(projected, many, 1, 1, 128, 32, 128, 1.f, none,
                                nullptr),
            cudaErrorInvalidValue)
      << "projected queries of another rope width";
  auto *rows = reinterpret_cast<__nv_bfloat16 *>(uintptr_t(256));
  projected.ropeRotated = rows;
  EXPECT_EQ(causalAttentionBf16(projected, many, 1, 1, 128, 64, 128, 1.f, none,
                                nullptr),
            cudaErrorInvalidValue)
      << "a rope part rotated ahead beside F32 queries";
  EXPECT_EQ(causalRotateQueryRope(projected, 4, 1, 128, rows, nullptr),
            cudaErrorInvalidValue)
      << "F32 queries' rope part rotated ahead";
  CausalProjectedQuery noPositions;
  noPositions.qBf16 = rows;
  EXPECT_EQ(causalRotateQueryRope(noPositions, 4, 1, 128, rows, nullptr),
            cudaErrorInvalidValue)
      << "a rope part rotated ahead without positions";
}

// The block order (CausalAttentionParts.cuh's causalBlockAt; no device
// needed): every (query block, head, run) exactly once for any set size;
// each set's blocks one after the other, the most keys first within it; a
// set of every group the order of one heavy-first grid.
TEST(CudaCausalAttention, BlockOrderTakesEveryBlockOnceSetBySet) {
  for (int runs : {1, 3, 8})
    for (int heads : {1, 16})
      for (int blocks : {1, 8}) {
        const int groups = runs * heads, total = groups * blocks;
        for (int together : {0, 1, 3, 7, groups, groups + 5}) {
          CausalRunList list;
          list.count = runs, list.blocks = blocks;
          list.groupsTogether = together;
          std::vector<int> seen(size_t(total), 0);
          int lastSet = 0, lastBlock = blocks;
          for (int i = 0; i < total; ++i) {
            const CausalBlockPlace at = causalBlockAt(list, heads, i);
            ASSERT_TRUE(at.queryBlock >= 0 && at.queryBlock < blocks &&
                        at.head >= 0 && at.head < heads && at.run >= 0 &&
                        at.run < runs)
                << "block " << i;
            const int group = at.run * heads + at.head;
            ++seen[size_t(group * blocks + at.queryBlock)];
            if (together == 0 || together >= groups) {
              EXPECT_EQ(at.queryBlock, blocks - 1 - i / groups);
              EXPECT_EQ(group, i % groups);
              continue;
            }
            const int set = group / together;
            EXPECT_GE(set, lastSet) << "block " << i << " went back a set";
            if (set == lastSet)
              EXPECT_LE(at.queryBlock, lastBlock)
                  << "block " << i << ": more keys after fewer in its set";
            lastSet = set, lastBlock = at.queryBlock;
          }
          for (int b = 0; b < total; ++b)
            EXPECT_EQ(seen[size_t(b)], 1)
                << runs << " runs, " << heads << " heads, " << blocks
                << " blocks, sets of " << together << ": block " << b;
        }
      }
  // mini's 8 x 1024 prefill: keys and values of 1024 x (192 + 128) BF16 a
  // group, 12 MB of them a set.
  EXPECT_EQ(causalGroupsTogether(size_t(1024) * 320 * 2), 19);
  EXPECT_EQ(causalGroupsTogether(size_t(64) << 20), 1);
}

// The routed experts grouped by expert (moeExpertsByExpert, MoeByExpert.h)
// with wide passes (an expert's tokens 16 at a time while more than 8 are
// left) against 8 at a time: the same bits, since a token's sums do not
// depend on the pass or the group of 8 it falls in. FP8 stacks (128 x 128
// block scales) and BF16 stacks on tensor cores; experts with 1-8, 9-16
// and more tokens, one expert with none; the pairs' rows (PairOutput's
// pairRows, the same bits every run) and the combined y. Skips without a
// device.
#include "CudaTestUtil.h"
#include "cuda/MoeByExpert.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

/// Expert e takes about (e + 1)^2 shares of the pairs, expert 3 none:
/// loads from a few tokens to several passes.
std::vector<int32_t> skewedChoices(int tokens, int choices, int experts,
                                   std::mt19937 &rng) {
  std::vector<double> shares(experts);
  for (int e = 0; e < experts; ++e)
    shares[e] = e == 3 ? 0.0 : double(e + 1) * (e + 1);
  std::discrete_distribution<int> pick(shares.begin(), shares.end());
  std::vector<int32_t> indices(size_t(tokens) * choices);
  for (auto &i : indices)
    i = pick(rng);
  return indices;
}

/// y and the pairs' rows of one call, wide passes or not.
struct Outputs {
  std::vector<float> y, pairRows;
};

Outputs runExperts(const ExpertStacks &stacks, const float *x,
                   const int32_t *indices, const float *weights, int tokens,
                   int choices, int experts, int inter, int dim, bool wide) {
  void *scratch = deviceArray<char>(
      moeByExpertScratchBytes(tokens, choices, experts, inter));
  float *y = deviceArray<float>(size_t(tokens) * dim);
  float *pairRows = deviceArray<float>(size_t(tokens) * choices * dim);
  int32_t *bad = deviceArray<int32_t>(1);
  EXPECT_EQ(cudaMemset(bad, 0, 4), cudaSuccess);
  EXPECT_EQ(moeExpertsByExpert(x, indices, weights, stacks, tokens, choices,
                               experts, inter, dim, false, true, scratch, y,
                               bad, nullptr, pairRows, wide),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  Outputs out{toHost(y, size_t(tokens) * dim),
              toHost(pairRows, size_t(tokens) * choices * dim)};
  EXPECT_EQ(toHost(bad, 1)[0], 0);
  cudaFree(scratch), cudaFree(y), cudaFree(pairRows), cudaFree(bad);
  return out;
}

int differing(const std::vector<float> &a, const std::vector<float> &b) {
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i)
    differ += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return differ;
}

TEST(CudaMoeByExpert, WidePassesSumTheSameBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(41);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int experts = 8, inter = 256, dim = 384, choices = 6;
  const size_t gateValues = size_t(experts) * inter * dim;
  for (bool fp8 : {true, false}) {
    ExpertStacks stacks;
    std::vector<void *> owned;
    auto stack = [&](size_t values) -> const void * {
      void *p = nullptr;
      if (fp8) {
        std::vector<__nv_fp8_e4m3> w(values);
        for (auto &v : w)
          v = __nv_fp8_e4m3(normal(rng) * 64.f);
        p = toDevice(w);
      } else {
        std::vector<__nv_bfloat16> w(values);
        for (auto &v : w)
          v = __float2bfloat16(normal(rng) * 0.05f);
        p = toDevice(w);
      }
      owned.push_back(p);
      return p;
    };
    auto scales = [&](int rows, int cols) -> const float * {
      std::vector<float> s(size_t(experts) * ((rows + 127) / 128) *
                           ((cols + 127) / 128));
      for (float &v : s)
        v = (1.f + 0.2f * normal(rng)) * 1e-3f;
      float *p = toDevice(s);
      owned.push_back(p);
      return p;
    };
    stacks.type =
        fp8 ? ExpertStacks::Type::Fp8Blocks : ExpertStacks::Type::BF16;
    stacks.gate = stack(gateValues);
    stacks.up = stack(gateValues);
    stacks.down = stack(gateValues);
    if (fp8) {
      stacks.gateScales = scales(inter, dim);
      stacks.upScales = scales(inter, dim);
      stacks.downScales = scales(dim, inter);
    }
    for (int tokens : {3, 20, 64}) {
      std::vector<float> x(size_t(tokens) * dim),
          weights(size_t(tokens) * choices);
      for (float &v : x)
        v = normal(rng);
      for (float &v : weights)
        v = 0.1f + std::abs(normal(rng));
      auto indices = skewedChoices(tokens, choices, experts, rng);
      float *dx = toDevice(x), *dw = toDevice(weights);
      int32_t *di = toDevice(indices);
      Outputs narrow = runExperts(stacks, dx, di, dw, tokens, choices, experts,
                                  inter, dim, false);
      Outputs wide = runExperts(stacks, dx, di, dw, tokens, choices, experts,
                                inter, dim, true);
      EXPECT_EQ(differing(narrow.pairRows, wide.pairRows), 0)
          << (fp8 ? "FP8" : "BF16") << ", " << tokens << " tokens";
      EXPECT_EQ(differing(narrow.y, wide.y), 0)
          << (fp8 ? "FP8" : "BF16") << ", " << tokens << " tokens";
      cudaFree(dx), cudaFree(dw), cudaFree(di);
    }
    for (void *p : owned)
      cudaFree(p);
  }
}

} // namespace

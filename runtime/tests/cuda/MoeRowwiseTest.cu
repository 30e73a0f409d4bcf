// The routed experts a row at a time (moeExpertsRowwise, ModelKernels.h):
// a warp's gate and up rows' loads together (gateUpTogether) and two
// outputs' down rows together (downPairs) against the rows one after the
// other: the same bits (each row's loads are added in the same order). BF16
// weights with and without a shared expert, F32 weights; one and several
// tokens; mini's 6 choices and DeepSeek-V3's 8
// (+ the shared one), 2 and 31; hidden sizes a multiple of a 16-byte load
// and not (one weight at a time); a pair's expert id out of range (*bad
// set, the pair left out of both).
// Skips without a device.
#include "CudaTestUtil.h"
#include "cuda/ModelKernels.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Case {
  int tokens, choices, experts, inter, dim;
  bool bf16, shared;
};

/// Random weights as the case's type, on the device (freed by the caller).
void *randomWeights(size_t values, bool bf16, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.f, 0.05f);
  if (bf16) {
    std::vector<__nv_bfloat16> w(values);
    for (auto &v : w)
      v = __float2bfloat16(normal(rng));
    return toDevice(w);
  }
  std::vector<float> w(values);
  for (float &v : w)
    v = normal(rng);
  return toDevice(w);
}

/// y and *bad of one call, rows' loads together or not.
struct CallOutput {
  std::vector<float> y;
  int32_t bad;
};

class RowwiseCall {
public:
  RowwiseCall(const Case &c, std::mt19937 &rng) : c_(c) {
    std::normal_distribution<float> normal(0.f, 1.f);
    const size_t gateValues = size_t(c.experts) * c.inter * c.dim;
    gate_ = randomWeights(gateValues, c.bf16, rng);
    up_ = randomWeights(gateValues, c.bf16, rng);
    down_ = randomWeights(gateValues, c.bf16, rng);
    if (c.shared) {
      shared_.inter = c.inter / 2 + 32;
      const size_t values = size_t(shared_.inter) * c.dim;
      shared_.gate = randomWeights(values, true, rng);
      shared_.up = randomWeights(values, true, rng);
      shared_.down = randomWeights(values, true, rng);
      shared_.roundGateUp = shared_.roundDown = true;
    }
    std::vector<float> x(size_t(c.tokens) * c.dim),
        weights(size_t(c.tokens) * c.choices);
    for (float &v : x)
      v = normal(rng);
    for (float &v : weights)
      v = 0.1f + std::abs(normal(rng));
    std::uniform_int_distribution<int> expert(0, c.experts - 1);
    std::vector<int32_t> indices(weights.size());
    for (auto &i : indices)
      i = expert(rng);
    indices[1] = c.experts; // out of range: left out, *bad set
    x_ = toDevice(x), weights_ = toDevice(weights),
    indices_ = toDevice(indices);
  }
  ~RowwiseCall() {
    for (const void *p :
         {gate_, up_, down_, shared_.gate, shared_.up, shared_.down,
          static_cast<const void *>(x_), static_cast<const void *>(weights_),
          static_cast<const void *>(indices_)})
      cudaFree(const_cast<void *>(p));
  }

  CallOutput run(bool together) const {
    const int pairs = c_.tokens * (c_.choices + 1);
    const int inter = std::max(c_.inter, shared_.inter);
    float *scratch = deviceArray<float>(size_t(pairs) * inter);
    float *pairRows = deviceArray<float>(size_t(pairs) * c_.dim);
    float *y = deviceArray<float>(size_t(c_.tokens) * c_.dim);
    int32_t *bad = deviceArray<int32_t>(1);
    EXPECT_EQ(cudaMemset(bad, 0, 4), cudaSuccess);
    // (NaN everywhere first: a value the call leaves unwritten shows.)
    EXPECT_EQ(cudaMemset(y, 0xff, size_t(c_.tokens) * c_.dim * 4), cudaSuccess);
    EXPECT_EQ(
        moeExpertsRowwise(x_, indices_, weights_, gate_, up_, down_, c_.bf16,
                          c_.tokens, c_.choices, c_.experts, c_.inter, c_.dim,
                          true, scratch, y, bad, nullptr, pairRows,
                          c_.shared ? &shared_ : nullptr, together, together),
        cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    CallOutput r{toHost(y, size_t(c_.tokens) * c_.dim), toHost(bad, 1)[0]};
    cudaFree(scratch), cudaFree(pairRows), cudaFree(y), cudaFree(bad);
    return r;
  }

private:
  Case c_;
  const void *gate_ = nullptr, *up_ = nullptr, *down_ = nullptr;
  SharedRowsExpert shared_;
  const float *x_ = nullptr, *weights_ = nullptr;
  const int32_t *indices_ = nullptr;
};

int differing(const std::vector<float> &a, const std::vector<float> &b) {
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i)
    differ += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return differ;
}

} // namespace

TEST(CudaMoeRowwise, RowsLoadedTogetherGiveTheSameBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(7);
  const Case cases[] = {
      // mini's 6 choices and a shared expert, scaled.
      {1, 6, 16, 1408 / 8, 2048 / 8, true, true},
      {1, 6, 16, 192, 256, true, false},
      {3, 8, 12, 96, 104, true, true},   // V3's 8 + the shared one
      {2, 2, 10, 64, 132, false, false}, // F32 weights
      {1, 6, 16, 64, 131, true, true},   // an odd dim: a warp's one output
      {1, 31, 40, 64, 68, true, true},
      {2, 6, 10, 64, 100, true, true}, // dim not in 8s: a weight at a time
  };

  for (const Case &c : cases) {
    RowwiseCall call(c, rng);
    const CallOutput apart = call.run(false), together = call.run(true);
    const std::string what = "tokens " + std::to_string(c.tokens) +
                             ", choices " + std::to_string(c.choices) +
                             ", dim " + std::to_string(c.dim);
    EXPECT_EQ(apart.bad, 1) << what;
    EXPECT_EQ(together.bad, 1) << what;
    EXPECT_EQ(differing(apart.y, together.y), 0) << what;
    for (float v : together.y)
      ASSERT_TRUE(std::isfinite(v)) << what;
  }
}

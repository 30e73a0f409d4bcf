// The routed experts a row at a time (moeExpertsRowwise, ModelKernels.h):
// a warp's gate and up rows' loads together (gateUpTogether) and two
// outputs' down rows together (downPairs) against the rows one after the
// other: the same bits (each row's loads are added in the same order). BF16
// weights with and without a shared expert, F32 weights; one and several
// tokens; mini's 6 choices and DeepSeek-V3's 8
// (+ the shared one), 2 and 31; hidden sizes a multiple of a 16-byte load
// and not (one weight at a time); a pair's expert id out of range (*bad
// set, the pair left out of both). And the gate/up kernel routing its
// token itself against the route kernel (RoutingInTheKernel...).
// Skips without a device.
#include "CudaTestUtil.h"
#include "cuda/ModelKernels.h"

#include "RouteOutputs.h"

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

/// A shared expert of `inter` / 2 + 32 rows, BF16 weights, its products'
/// outputs rounded (freed by the caller).
SharedRowsExpert randomSharedExpert(int inter, int dim, std::mt19937 &rng) {
  SharedRowsExpert shared;
  shared.inter = inter / 2 + 32;
  const size_t values = size_t(shared.inter) * dim;
  shared.gate = randomWeights(values, true, rng);
  shared.up = randomWeights(values, true, rng);
  shared.down = randomWeights(values, true, rng);
  shared.roundGateUp = shared.roundDown = true;
  return shared;
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
    if (c.shared)
      shared_ = randomSharedExpert(c.inter, c.dim, rng);
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
    EXPECT_EQ(differingBits(apart.y, together.y), 0) << what;
    for (float v : together.y)
      ASSERT_TRUE(std::isfinite(v)) << what;
  }
}

namespace {

struct RoutedCase {
  int tokens, experts, inter, dim;
  RouterConfig config;
  bool shared;
};

/// The call's outputs: y, the choices and the weights.
struct RoutedOutput {
  std::vector<float> y, weights;
  std::vector<int32_t> indices;
};

} // namespace

// The gate/up kernel routing its token itself (moeExpertsRowwise's
// `route`) against routeExperts' kernel, then the same call on its
// choices: the same choices, weights and outputs, bit for bit. mini's
// router (64 experts, sigmoid, 8 groups of which 4, top 6, scaled 2.5, a
// bias), DeepSeek-V3's (256 experts, top 8), a softmax greedy one, and
// several tokens; with and without a shared expert.
TEST(CudaMoeRowwise, RoutingInTheKernelGivesTheRouteKernelsBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  const RoutedCase cases[] = {
      {1, 64, 1408 / 8, 2048 / 8, {true, 2, 6, 8, 4, true, 2.5}, true},
      {1, 256, 64, 128, {true, 2, 8, 8, 4, true, 2.5}, true},
      {1, 16, 64, 96, {false, 0, 2, 1, 1, false, 1.0}, false},
      {3, 64, 64, 136, {true, 2, 6, 8, 4, true, 2.5}, false},
  };
  for (const RoutedCase &c : cases) {
    const std::string what = "experts " + std::to_string(c.experts) +
                             ", tokens " + std::to_string(c.tokens);
    ASSERT_TRUE(routesInExpertsFit(c.experts, c.config)) << what;
    const int choices = c.config.topK;
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> logits(size_t(c.tokens) * c.experts), bias(c.experts),
        x(size_t(c.tokens) * c.dim);
    for (float &v : logits)
      v = normal(rng);
    for (float &v : bias)
      v = 0.1f * normal(rng);
    for (float &v : x)
      v = normal(rng);
    const size_t values = size_t(c.experts) * c.inter * c.dim;
    void *gate = randomWeights(values, true, rng),
         *up = randomWeights(values, true, rng),
         *down = randomWeights(values, true, rng);
    const SharedRowsExpert shared =
        c.shared ? randomSharedExpert(c.inter, c.dim, rng) : SharedRowsExpert{};
    const float *dLogits = toDevice(logits), *dBias = toDevice(bias),
                *dX = toDevice(x);
    auto run = [&](bool inKernel) {
      const int pairs = c.tokens * (choices + 1);
      const int inter = std::max(c.inter, shared.inter);
      float *scratch = deviceArray<float>(size_t(pairs) * inter);
      float *pairRows = deviceArray<float>(size_t(pairs) * c.dim);
      float *y = deviceArray<float>(size_t(c.tokens) * c.dim);
      RouteOutputs routed(c.tokens, choices);
      int32_t *indices = routed.indices;
      float *weights = routed.weights;
      int32_t *bad = deviceArray<int32_t>(1);
      EXPECT_EQ(cudaMemset(bad, 0, 4), cudaSuccess);
      RouteInExperts route;
      route.logits = dLogits, route.bias = dBias, route.config = c.config;
      if (!inKernel)
        routed.routeApart(route, c.tokens, c.experts);
      EXPECT_EQ(moeExpertsRowwise(dX, indices, weights, gate, up, down, true,
                                  c.tokens, choices, c.experts, c.inter, c.dim,
                                  true, scratch, y, bad, nullptr, pairRows,
                                  c.shared ? &shared : nullptr, true, true,
                                  inKernel ? &route : nullptr),
                cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      RoutedOutput r{toHost(y, size_t(c.tokens) * c.dim), routed.hostWeights(),
                     routed.hostIndices()};
      EXPECT_EQ(toHost(bad, 1)[0], 0) << what;
      for (void *p :
           {static_cast<void *>(scratch), static_cast<void *>(pairRows),
            static_cast<void *>(y), static_cast<void *>(bad)})
        cudaFree(p);
      return r;
    };
    const RoutedOutput apart = run(false), inKernel = run(true);
    EXPECT_EQ(inKernel.indices, apart.indices) << what;
    EXPECT_EQ(differingBits(inKernel.weights, apart.weights), 0) << what;
    EXPECT_EQ(differingBits(inKernel.y, apart.y), 0) << what;
    for (float v : inKernel.y)
      ASSERT_TRUE(std::isfinite(v)) << what;
    // Each token's choices are distinct experts.
    for (int t = 0; t < c.tokens; ++t) {
      std::vector<int32_t> chosen(inKernel.indices.begin() + t * choices,
                                  inKernel.indices.begin() + (t + 1) * choices);
      std::sort(chosen.begin(), chosen.end());
      EXPECT_EQ(std::adjacent_find(chosen.begin(), chosen.end()), chosen.end())
          << what;
    }
    // A route the kernel does not take is refused before any launch.
    RouteInExperts tooMany;
    tooMany.logits = dLogits;
    tooMany.config = c.config;
    tooMany.config.topK = choices + 1;
    EXPECT_EQ(moeExpertsRowwise(dX, nullptr, nullptr, gate, up, down, true,
                                c.tokens, choices, c.experts, c.inter, c.dim,
                                true, nullptr, nullptr, nullptr, nullptr,
                                nullptr, nullptr, true, true, &tooMany),
              cudaErrorInvalidValue);
    for (const void *p :
         {static_cast<const void *>(dLogits), static_cast<const void *>(dBias),
          static_cast<const void *>(dX), static_cast<const void *>(gate),
          static_cast<const void *>(up), static_cast<const void *>(down),
          shared.gate, shared.up, shared.down})
      cudaFree(const_cast<void *>(p));
  }
}

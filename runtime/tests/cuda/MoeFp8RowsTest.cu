// One token's FP8 experts (moeExpertsFp8Rowwise, MoeFp8Rows.h), a warp per
// row on the CUDA cores and a block per 16-row tile on tensor cores: the
// routed sum against a double-precision reference of its semantics (x and
// the activations rounded to BF16, each 128-wide block's products times
// its scale); with x quantized and with a shared expert, the tiles against
// the rows (the same products in another order), the same bits every run
// and in one wave of blocks (each taking tiles in turn); and the one-wave
// tiles routing their token themselves against the route kernel. Skips
// without a device.
#include "CudaTestUtil.h"
#include "cuda/ModelKernels.h"
#include "cuda/MoeFp8Rows.h"

#include "RouteOutputs.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

float bf16Rounded(float v) { return __bfloat162float(__float2bfloat16(v)); }

/// A stack of `matrices` rows x cols e4m3 matrices (random codes, no NaN)
/// with its 128x128 block scales, on the host and the device.
struct Fp8Stack {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  int rows = 0, cols = 0;
  void *deviceCodes = nullptr;
  float *deviceScales = nullptr;

  Fp8Stack(int matrices, int rows, int cols, std::mt19937 &rng)
      : codes(size_t(matrices) * rows * cols),
        scales(size_t(matrices) * ((rows + 127) / 128) * ((cols + 127) / 128)),
        rows(rows), cols(cols) {
    for (auto &c : codes) {
      c = uint8_t(rng());
      if ((c & 0x7f) == 0x7f) // NaN
        c &= 0xfe;
    }
    std::uniform_real_distribution<float> spread(0.5f, 1.5f);
    for (float &s : scales)
      s = spread(rng) * 2e-3f;
    deviceCodes = toDevice(codes);
    deviceScales = toDevice(scales);
  }
  ~Fp8Stack() { cudaFree(deviceCodes), cudaFree(deviceScales); }

  double value(int e, int r, int c) const {
    static const std::vector<double> ofCode = [] {
      std::vector<double> table(256);
      for (int code = 0; code < 256; ++code) {
        __nv_fp8_e4m3 v;
        const uint8_t byte = uint8_t(code);
        std::memcpy(&v, &byte, 1);
        table[code] = double(float(v));
      }
      return table;
    }();
    return ofCode[codes[(size_t(e) * rows + r) * cols + c]];
  }
  double scale(int e, int r, int c) const {
    const int rowBlocks = (rows + 127) / 128, colBlocks = (cols + 127) / 128;
    return scales[(size_t(e) * rowBlocks + r / 128) * colBlocks + c / 128];
  }
  /// Row r of matrix e dotted with v (BF16 values), per-block scaled.
  double dot(int e, int r, const std::vector<float> &v) const {
    double sum = 0;
    for (int b = 0; b < cols; b += 128) {
      double part = 0;
      for (int c = b; c < std::min(cols, b + 128); ++c)
        part += value(e, r, c) * v[c];
      sum += part * scale(e, r, b);
    }
    return sum;
  }
};

struct Case {
  int experts, inter, dim, tokens;
};

/// A case's routed experts' stacks and a shared expert of the same
/// intermediate size, random, on the device.
struct CaseExperts {
  Fp8Stack gate, up, down, sharedGate, sharedUp, sharedDown;
  ExpertStacks stacks;
  SharedFp8Expert shared;
  CaseExperts(const Case &c, std::mt19937 &rng)
      : gate(c.experts, c.inter, c.dim, rng),
        up(c.experts, c.inter, c.dim, rng),
        down(c.experts, c.dim, c.inter, rng),
        sharedGate(1, c.inter, c.dim, rng), sharedUp(1, c.inter, c.dim, rng),
        sharedDown(1, c.dim, c.inter, rng) {
    stacks = {ExpertStacks::Type::Fp8Blocks,
              gate.deviceCodes,
              up.deviceCodes,
              down.deviceCodes,
              gate.deviceScales,
              up.deviceScales,
              down.deviceScales};
    shared.stacks = {ExpertStacks::Type::Fp8Blocks, sharedGate.deviceCodes,
                     sharedUp.deviceCodes,          sharedDown.deviceCodes,
                     sharedGate.deviceScales,       sharedUp.deviceScales,
                     sharedDown.deviceScales};
    shared.inter = c.inter, shared.gateUpStride = c.dim;
    shared.downStride = c.inter;
  }
};

/// y of one moeExpertsFp8Rowwise call.
std::vector<float> run(const ExpertStacks &stacks, const float *x,
                       const int32_t *indices, const float *weights,
                       const Case &c, int choices,
                       const SharedFp8Expert *shared, bool quantizeX,
                       bool tiles, bool oneWave = false) {
  const int pairs = c.tokens * (choices + (shared ? 1 : 0));
  const int rows = std::max(c.inter, shared ? shared->inter : 0);
  float *scratch = deviceArray<float>(size_t(pairs) * rows);
  float *y = deviceArray<float>(size_t(c.tokens) * c.dim);
  float *pairRows = deviceArray<float>(size_t(pairs) * c.dim);
  int32_t *bad = deviceArray<int32_t>(1);
  EXPECT_EQ(cudaMemset(bad, 0, 4), cudaSuccess);
  EXPECT_EQ(moeExpertsFp8Rowwise(x, indices, weights, stacks, c.tokens, choices,
                                 c.experts, c.inter, c.dim, false, quantizeX,
                                 scratch, y, bad, nullptr, pairRows, shared,
                                 tiles, oneWave),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out = toHost(y, size_t(c.tokens) * c.dim);
  EXPECT_EQ(toHost(bad, 1)[0], 0);
  cudaFree(scratch), cudaFree(y), cudaFree(pairRows), cudaFree(bad);
  return out;
}

TEST(CudaMoeFp8Rows, RowsAndTilesMatchTheReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(29);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int choices = 6;
  // mini's routed experts (x in one round of a row kernel's loads, down's
  // rows part of one); DeepSeek-V3's hidden size (x in four rounds, the
  // last half-full); several tokens, and K not in 128s (a last scale block
  // part-filled).
  for (const Case &c :
       {Case{8, 1408, 2048, 1}, Case{7, 2048, 7168, 1}, Case{8, 272, 400, 3}}) {
    const CaseExperts experts(c, rng);
    const Fp8Stack &gate = experts.gate, &up = experts.up, &down = experts.down;
    const ExpertStacks &stacks = experts.stacks;
    const SharedFp8Expert &shared = experts.shared;

    std::vector<float> x(size_t(c.tokens) * c.dim),
        weights(size_t(c.tokens) * choices);
    for (float &v : x)
      v = normal(rng);
    for (float &v : weights)
      v = 0.1f + std::abs(normal(rng));
    std::vector<int32_t> indices(size_t(c.tokens) * choices);
    for (size_t i = 0; i < indices.size(); ++i)
      indices[i] = int32_t((i * 5 + i / choices) % c.experts);
    float *dx = toDevice(x), *dw = toDevice(weights);
    int32_t *di = toDevice(indices);
    const std::string shape = std::to_string(c.inter) + " x " +
                              std::to_string(c.dim) + ", " +
                              std::to_string(c.tokens) + " tokens";

    // The routed sum against its reference, on the CUDA cores and on
    // tensor cores.
    for (bool tiles : {false, true}) {
      std::vector<float> y =
          run(stacks, dx, di, dw, c, choices, nullptr, false, tiles);
      double worst = 0, norm = 0;
      for (int t = 0; t < c.tokens; ++t) {
        std::vector<float> xt(c.dim), act(c.inter);
        for (int k = 0; k < c.dim; ++k)
          xt[k] = bf16Rounded(x[size_t(t) * c.dim + k]);
        std::vector<double> want(c.dim, 0.0);
        for (int k = 0; k < choices; ++k) {
          const int e = indices[size_t(t) * choices + k];
          for (int i = 0; i < c.inter; ++i) {
            const double a = gate.dot(e, i, xt), b = up.dot(e, i, xt);
            act[i] = bf16Rounded(float(a / (1.0 + std::exp(-a)) * b));
          }
          for (int j = 0; j < c.dim; ++j)
            want[j] += weights[size_t(t) * choices + k] * down.dot(e, j, act);
        }
        for (int j = 0; j < c.dim; ++j) {
          worst = std::max(worst, std::abs(want[j] - y[size_t(t) * c.dim + j]));
          norm = std::max(norm, std::abs(want[j]));
        }
      }
      ASSERT_GT(norm, 0.0) << shape;
      EXPECT_LE(worst, 1e-2 * norm) << shape << (tiles ? ", tiles" : "");
    }

    // x quantized and the shared expert (an FP8 linear's input): tensor
    // cores against the CUDA cores (the same products in another order),
    // and the same bits every run.
    for (bool quantizeX : {false, true})
      for (const SharedFp8Expert *withShared :
           {static_cast<const SharedFp8Expert *>(nullptr),
            static_cast<const SharedFp8Expert *>(&shared)}) {
        const std::string what = shape + (quantizeX ? ", x quantized" : "") +
                                 (withShared ? ", shared expert" : "");
        std::vector<float> rows =
            run(stacks, dx, di, dw, c, choices, withShared, quantizeX, false);
        std::vector<float> first =
            run(stacks, dx, di, dw, c, choices, withShared, quantizeX, true);
        std::vector<float> second =
            run(stacks, dx, di, dw, c, choices, withShared, quantizeX, true);
        std::vector<float> oneWave = run(stacks, dx, di, dw, c, choices,
                                         withShared, quantizeX, true, true);
        double worst = 0, norm = 0;
        int differ = 0, differOneWave = 0;
        for (size_t i = 0; i < first.size(); ++i) {
          worst = std::max(worst, double(std::abs(first[i] - rows[i])));
          norm = std::max(norm, double(std::abs(rows[i])));
          differ += std::memcmp(&first[i], &second[i], sizeof(float)) != 0;
          differOneWave +=
              std::memcmp(&first[i], &oneWave[i], sizeof(float)) != 0;
        }
        ASSERT_GT(norm, 0.0) << what;
        EXPECT_LE(worst, 1e-2 * norm) << what;
        EXPECT_EQ(differ, 0) << what;
        EXPECT_EQ(differOneWave, 0) << what << ", one wave";
      }
    cudaFree(dx), cudaFree(dw), cudaFree(di);
  }
}

// The one-wave gate/up tiles routing their token themselves
// (moeExpertsFp8Rowwise's `route`) against the route kernel, then the
// same call on its choices: the same choices, weights and outputs, bit for
// bit (x quantized and a shared expert, as a one-token FP8 step runs it):
// 16 experts in 4 groups, and DeepSeek-V3's 256 in 8 with top 8. A route
// without the one-wave tiles is refused.
TEST(CudaMoeFp8Rows, RoutingInTheTilesGivesTheRouteKernelsBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Routed {
    Case c;
    RouterConfig config;
  };
  for (const Routed &r :
       {Routed{{16, 272, 400, 1}, {true, 2, 6, 4, 2, true, 2.5}},
        Routed{{256, 64, 128, 1}, {true, 2, 8, 8, 4, true, 2.5}}}) {
    const Case &c = r.c;
    const int choices = r.config.topK;
    const CaseExperts experts(c, rng);
    const ExpertStacks &stacks = experts.stacks;
    const SharedFp8Expert &shared = experts.shared;
    std::vector<float> x(size_t(c.tokens) * c.dim),
        logits(size_t(c.tokens) * c.experts), bias(c.experts);
    for (float &v : x)
      v = normal(rng);
    for (float &v : logits)
      v = normal(rng);
    for (float &v : bias)
      v = 0.1f * normal(rng);
    float *dx = toDevice(x), *dLogits = toDevice(logits),
          *dBias = toDevice(bias);
    const std::string what = std::to_string(c.experts) + " experts";
    struct Out {
      std::vector<float> y, weights;
      std::vector<int32_t> indices;
    };
    auto call = [&](bool inTiles) {
      const int pairs = c.tokens * (choices + 1);
      float *scratch = deviceArray<float>(size_t(pairs) * c.inter);
      float *y = deviceArray<float>(size_t(c.tokens) * c.dim);
      float *pairRows = deviceArray<float>(size_t(pairs) * c.dim);
      RouteOutputs routed(c.tokens, choices);
      int32_t *indices = routed.indices;
      float *weights = routed.weights;
      int32_t *bad = deviceArray<int32_t>(1);
      EXPECT_EQ(cudaMemset(bad, 0, 4), cudaSuccess);
      RouteInExperts route;
      route.logits = dLogits, route.bias = dBias, route.config = r.config;
      if (!inTiles)
        routed.routeApart(route, c.tokens, c.experts);
      EXPECT_EQ(moeExpertsFp8Rowwise(
                    dx, indices, weights, stacks, c.tokens, choices, c.experts,
                    c.inter, c.dim, false, true, scratch, y, bad, nullptr,
                    pairRows, &shared, true, true, inTiles ? &route : nullptr),
                cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      Out out{toHost(y, size_t(c.tokens) * c.dim), routed.hostWeights(),
              routed.hostIndices()};
      EXPECT_EQ(toHost(bad, 1)[0], 0) << what;
      // Not on the one-wave tiles: refused, nothing launched.
      if (inTiles)
        EXPECT_EQ(moeExpertsFp8Rowwise(dx, indices, weights, stacks, c.tokens,
                                       choices, c.experts, c.inter, c.dim,
                                       false, true, scratch, y, bad, nullptr,
                                       pairRows, &shared, true, false, &route),
                  cudaErrorInvalidValue);
      cudaFree(scratch), cudaFree(y), cudaFree(pairRows), cudaFree(bad);
      return out;
    };
    const Out apart = call(false), inTiles = call(true);
    EXPECT_EQ(inTiles.indices, apart.indices) << what;
    EXPECT_EQ(differingBits(inTiles.weights, apart.weights), 0) << what;
    EXPECT_EQ(differingBits(inTiles.y, apart.y), 0) << what;
    for (float v : inTiles.y)
      ASSERT_TRUE(std::isfinite(v)) << what;
    cudaFree(dx), cudaFree(dLogits), cudaFree(dBias);
  }
}

} // namespace

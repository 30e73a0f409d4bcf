//===- KernelParams.cpp - parameters and math every device shares ---------===//
#include "KernelParams.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

using namespace melt::rt;

namespace {
double yarnMscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}
} // namespace

std::vector<double> melt::rt::ropeInverseFrequencies(const RopeParams &p,
                                                     int64_t dim) {
  std::vector<double> inv(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i)
    inv[i] = 1.0 / std::pow(p.theta, double(2 * i) / dim);
  if (!p.yarn || p.factor <= 1.0)
    return inv;
  auto correctionDim = [&](double rotations) {
    return dim * std::log(p.originalMax / (rotations * 2 * M_PI)) /
           (2 * std::log(p.theta));
  };
  double low = std::max(0.0, std::floor(correctionDim(p.betaFast)));
  double high = std::min(double(dim - 1), std::ceil(correctionDim(p.betaSlow)));
  if (low == high)
    high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    double extrapolate = 1.0 - ramp;
    inv[i] = inv[i] / p.factor * (1.0 - extrapolate) + inv[i] * extrapolate;
  }
  return inv;
}

double melt::rt::ropeOutputScale(const RopeParams &p) {
  return p.yarn ? yarnMscale(p.factor, p.mscale) /
                      yarnMscale(p.factor, p.mscaleAllDim)
                : 1.0;
}

bool melt::rt::validRouting(const RouterParams &p, int64_t experts) {
  return p.topK >= 1 && p.topK <= experts && p.nGroup >= 1 &&
         experts % p.nGroup == 0 && p.topkGroup >= 1 &&
         p.topkGroup <= p.nGroup && p.method >= 0 && p.method <= 2;
}

void melt::rt::routeToken(const float *logits, int64_t E, const float *bias,
                          const RouterParams &p, int64_t *indices,
                          float *weights) {
  std::vector<float> scores(E), choice(E);
  if (p.sigmoid) {
    for (int64_t e = 0; e < E; ++e)
      scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  } else {
    float m = *std::max_element(logits, logits + E), sum = 0.0f;
    for (int64_t e = 0; e < E; ++e)
      sum += scores[e] = std::exp(logits[e] - m);
    for (float &s : scores)
      s /= sum;
  }
  for (int64_t e = 0; e < E; ++e)
    choice[e] = scores[e] + (bias && p.method == 2 ? bias[e] : 0.0f);
  // Group-limited selection: keep topk_group groups, mask the rest with
  // -inf (DeepSeek's reference; transformers uses 0.0).
  int64_t perGroup = E / p.nGroup;
  if (p.method != 0 && p.nGroup > 1) {
    std::vector<float> groupScore(p.nGroup);
    for (int64_t g = 0; g < p.nGroup; ++g) {
      std::vector<float> members(choice.begin() + g * perGroup,
                                 choice.begin() + (g + 1) * perGroup);
      std::sort(members.begin(), members.end(), std::greater<float>());
      groupScore[g] = p.method == 2
                          ? members[0] + (perGroup > 1 ? members[1] : 0.0f)
                          : members[0];
    }
    std::vector<int64_t> groups(p.nGroup);
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(), [&](int64_t a, int64_t b) {
      return groupScore[a] > groupScore[b];
    });
    for (int64_t i = p.topkGroup; i < p.nGroup; ++i)
      for (int64_t e = 0; e < perGroup; ++e)
        choice[groups[i] * perGroup + e] = -INFINITY;
  }
  std::vector<int64_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
  double sum = 0.0;
  for (int64_t k = 0; k < p.topK; ++k)
    sum += scores[order[k]];
  for (int64_t k = 0; k < p.topK; ++k) {
    double w = scores[order[k]];
    if (p.normalize)
      w /= sum + 1e-20;
    indices[k] = order[k];
    weights[k] = static_cast<float>(w * p.scale);
  }
}

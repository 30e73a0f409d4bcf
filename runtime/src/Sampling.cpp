//===- Sampling.cpp - temperature, top-k and top-p sampling ---------------===//
#include "Sampling.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

using namespace melt::rt;

Status melt::rt::checkSampling(const SamplingParams &params, const char *what) {
  if (!std::isfinite(params.temperature) || params.temperature < 0)
    return invalidArgument(std::string(what) +
                           ": temperature must be finite and >= 0, got " +
                           std::to_string(params.temperature));
  if (!(params.topP > 0.0f && params.topP <= 1.0f))
    return invalidArgument(std::string(what) + ": top_p must be in (0, 1], got " +
                           std::to_string(params.topP));
  if (params.topK < 0)
    return invalidArgument(std::string(what) + ": top_k must be >= 0, got " +
                           std::to_string(params.topK));
  return Status::ok();
}

int32_t melt::rt::sampleToken(const float *logits, size_t n,
                              const SamplingParams &params, uint64_t draw) {
  // Candidates by descending logit (the lower index first on ties), cut
  // by top_k.
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i)
    order[i] = i;
  size_t keep =
      params.topK > 0 ? std::min(n, static_cast<size_t>(params.topK)) : n;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](size_t a, size_t b) {
                      return logits[a] > logits[b] ||
                             (logits[a] == logits[b] && a < b);
                    });
  order.resize(keep);
  double maxLogit = logits[order[0]];
  std::vector<double> p(keep);
  for (size_t i = 0; i < keep; ++i)
    p[i] = std::exp((logits[order[i]] - maxLogit) / params.temperature);
  return static_cast<int32_t>(
      order[pickInNucleus(p, keep, params.topP, draw)]);
}

//===- RouteInBlock.cuh - one token's MoE route by a block ---*- CUDA -*-===//
//
// routeToken's choice (Device.h's routeExperts) for one token, made by the
// threads of one block: the route kernel's (a block a token), and that of
// the one-token expert kernels that route their token themselves
// (RouteInExperts, ModelKernels.h), with the same arithmetic: the same
// choices and weights, bit for bit.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ROUTEINBLOCK_CUH
#define MELT_RUNTIME_CUDA_ROUTEINBLOCK_CUH

#include "cuda/ModelKernels.h"
#include "cuda/WarpReduce.cuh"

#include <cstdint>

namespace melt::rt::cuda {

/// How many of `values` come before `own` (at index `self`) in routeToken's
/// stable order: larger first, ties to the lower index.
__device__ __forceinline__ int rankAmong(const float *values, int count,
                                         float own, int self) {
  int rank = 0;
  for (int o = 0; o < count; ++o) {
    const float v = values[o];
    rank += v > own || (v == own && o < self);
  }
  return rank;
}

/// A block's working memory for routing one token over at most kExperts
/// experts (kMaxRouterExperts for routeKernel; kRouteInExpertsMax where an
/// experts kernel routes its token itself).
template <int kExperts> struct RouteShared {
  float choice[kExperts];
  float groupScore[kMaxRouterGroups], chosenScore[kMaxRouterTopK];
  float slots[kExperts / 32];
  int32_t expert[kMaxRouterTopK]; // the choices in rank order
  float weight[kMaxRouterTopK];   // and their weights
};

/// routeToken's choice for the token whose logits are `logits` ([experts]),
/// by every thread of the block (at least max(experts, nGroup) of them;
/// ones past the experts idle), with every expert's rank counted at once (a
/// chain of top-k rounds was most of a decode step's routing time): scores
/// (softmax or sigmoid), the bias for choosing, each group's score (a
/// thread per group), the groups kept by rank, the experts chosen by rank;
/// the weights from the chosen scores in rank order. On return (after a
/// barrier) s.expert[k] and s.weight[k], k < topK, hold the choices.
template <int kExperts>
__device__ inline void routeInBlock(const float *logits, const float *bias,
                                    int experts, const RouterConfig &cfg,
                                    RouteShared<kExperts> &s) {
  const int e = threadIdx.x;
  const bool real = e < experts;
  const float logit = real ? logits[e] : 0.f;
  float score;
  if (cfg.sigmoid) {
    score = 1.f / (1.f + expf(-logit));
  } else {
    const float top = blockReduce<true>(real ? logit : -INFINITY, s.slots);
    const float raised = real ? expf(logit - top) : 0.f;
    score = raised / blockReduce<false>(raised, s.slots);
  }
  float mine = score + (real && bias && cfg.method == 2 ? bias[e] : 0.f);
  if (real)
    s.choice[e] = mine;
  __syncthreads();
  if (cfg.method != 0 && cfg.nGroup > 1) {
    const int perGroup = experts / cfg.nGroup;
    if (e < cfg.nGroup) {
      // The group's two best choices (routeToken sorts its members).
      float first = -INFINITY, second = -INFINITY;
      for (int m = e * perGroup; m < (e + 1) * perGroup; ++m) {
        const float v = s.choice[m];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      s.groupScore[e] =
          cfg.method == 2 ? first + (perGroup > 1 ? second : 0.f) : first;
    }
    __syncthreads();
    if (real) {
      const int g = e / perGroup;
      if (rankAmong(s.groupScore, cfg.nGroup, s.groupScore[g], g) >=
          cfg.topkGroup)
        mine = -INFINITY;
    }
    __syncthreads(); // every group scored before the masking
    if (real)
      s.choice[e] = mine;
    __syncthreads();
  }
  if (real) {
    const int rank = rankAmong(s.choice, experts, mine, e);
    if (rank < cfg.topK) {
      s.chosenScore[rank] = score;
      s.expert[rank] = e;
    }
  }
  __syncthreads();
  if (e < cfg.topK) {
    double sum = 0;
    for (int k = 0; k < cfg.topK; ++k)
      sum += s.chosenScore[k];
    double w = s.chosenScore[e];
    if (cfg.normalize)
      w /= sum + 1e-20;
    s.weight[e] = float(w * cfg.scale);
  }
  __syncthreads();
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ROUTEINBLOCK_CUH

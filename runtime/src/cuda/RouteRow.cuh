//===- RouteRow.cuh - one token's expert choice by a block -------*- CUDA
//-*-===//
//
// KernelParams' routeToken on the GPU, for the route kernel (a block a
// token) and for the router's product, whose last block routes its row.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ROUTEROW_CUH
#define MELT_RUNTIME_CUDA_ROUTEROW_CUH

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

/// One token's routeToken choice by a block of at least max(experts,
/// groups) threads, a thread per expert, every expert's rank counted at
/// once (a chain of top-k rounds was most of a decode step's routing
/// time): scores (softmax or sigmoid), the bias for choosing, each group's
/// score (a thread per group), the groups kept by rank, the experts chosen
/// by rank; the weights from the chosen scores in rank order. `logits` is
/// read past L1 (__ldcg): other blocks of the same kernel may have written
/// it (the router's product routing in its last block).
__device__ __forceinline__ void routeRow(const float *logits, const float *bias,
                                         int experts, const RouterConfig &cfg,
                                         int32_t *indices, float *weights) {
  __shared__ float choice[kMaxRouterExperts];
  __shared__ float groupScore[kMaxRouterGroups], chosenScore[kMaxRouterTopK];
  __shared__ float slots[kMaxRouterExperts / 32];
  const int e = threadIdx.x;
  const bool real = e < experts;
  const float logit = real ? __ldcg(logits + e) : 0.f;
  float score;
  if (cfg.sigmoid) {
    score = 1.f / (1.f + expf(-logit));
  } else {
    const float top = blockReduce<true>(real ? logit : -INFINITY, slots);
    const float raised = real ? expf(logit - top) : 0.f;
    score = raised / blockReduce<false>(raised, slots);
  }
  float mine = score + (real && bias && cfg.method == 2 ? bias[e] : 0.f);
  if (real)
    choice[e] = mine;
  __syncthreads();
  if (cfg.method != 0 && cfg.nGroup > 1) {
    const int perGroup = experts / cfg.nGroup;
    if (e < cfg.nGroup) {
      // The group's two best choices (routeToken sorts its members).
      float first = -INFINITY, second = -INFINITY;
      for (int m = e * perGroup; m < (e + 1) * perGroup; ++m) {
        const float v = choice[m];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      groupScore[e] =
          cfg.method == 2 ? first + (perGroup > 1 ? second : 0.f) : first;
    }
    __syncthreads();
    if (real) {
      const int g = e / perGroup;
      if (rankAmong(groupScore, cfg.nGroup, groupScore[g], g) >= cfg.topkGroup)
        mine = -INFINITY;
    }
    __syncthreads(); // every group scored before the masking
    if (real)
      choice[e] = mine;
    __syncthreads();
  }
  if (real) {
    const int rank = rankAmong(choice, experts, mine, e);
    if (rank < cfg.topK) {
      chosenScore[rank] = score;
      indices[rank] = e;
    }
  }
  __syncthreads();
  if (e < cfg.topK) {
    double sum = 0;
    for (int k = 0; k < cfg.topK; ++k)
      sum += chosenScore[k];
    double w = chosenScore[e];
    if (cfg.normalize)
      w /= sum + 1e-20;
    weights[e] = float(w * cfg.scale);
  }
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ROUTEROW_CUH

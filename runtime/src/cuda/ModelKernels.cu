//===- ModelKernels.cu - embedding, RoPE and routing (CUDA) ---------------===//
#include "cuda/ModelKernels.h"

#include <cuda_bf16.h>

using namespace melt::rt::cuda;

namespace {

__device__ __forceinline__ float load(Operand o, size_t i) {
  return o.bf16
             ? __bfloat162float(static_cast<const __nv_bfloat16 *>(o.data)[i])
             : static_cast<const float *>(o.data)[i];
}

__device__ __forceinline__ void store(Result r, size_t i, float v) {
  if (r.bf16)
    static_cast<__nv_bfloat16 *>(r.data)[i] = __float2bfloat16(v);
  else
    static_cast<float *>(r.data)[i] = v;
}

__global__ void embeddingKernel(const int32_t *ids, Operand table, int vocab,
                                int hidden, Result y, int32_t *badId) {
  int t = blockIdx.x;
  int id = ids[t];
  bool valid = id >= 0 && id < vocab;
  if (!valid && threadIdx.x == 0)
    *badId = 1;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x)
    store(y, size_t(t) * hidden + h,
          valid ? load(table, size_t(id) * hidden + h) : 0.f);
}

/// One thread per rotated pair.
__global__ void ropeKernel(Operand x, const int32_t *positions, int rows,
                           int dim, bool interleaved, RopeFrequencies freqs,
                           double mscale, size_t pairs, Result y) {
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= pairs)
    return;
  int half = dim / 2;
  int pair = int(i % half);
  size_t row = i / half; // token * rows + r
  int token = int(row / rows);
  double s, c;
  sincos(double(positions[token]) * freqs.inverse[pair], &s, &c);
  c *= mscale;
  s *= mscale;
  size_t base = row * dim;
  int a = interleaved ? 2 * pair : pair;
  int b = interleaved ? 2 * pair + 1 : pair + half;
  float xa = load(x, base + a), xb = load(x, base + b);
  store(y, base + a, float(xa * c - xb * s));
  store(y, base + b, float(xb * c + xa * s));
}

/// One block per token: scores in parallel, then thread 0 chooses as
/// routeToken does (group scores, stable order, top k, weights).
__global__ void routeKernel(const float *logits, const float *bias, int experts,
                            RouterConfig cfg, int32_t *indices,
                            float *weights) {
  __shared__ float scores[kMaxRouterExperts], choice[kMaxRouterExperts];
  __shared__ bool taken[kMaxRouterExperts];
  const float *row = logits + size_t(blockIdx.x) * experts;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    scores[e] = cfg.sigmoid ? 1.f / (1.f + expf(-row[e])) : row[e];
    taken[e] = false;
  }
  __syncthreads();
  if (threadIdx.x != 0)
    return;
  if (!cfg.sigmoid) {
    float m = scores[0], sum = 0.f;
    for (int e = 1; e < experts; ++e)
      m = fmaxf(m, scores[e]);
    for (int e = 0; e < experts; ++e)
      sum += scores[e] = expf(scores[e] - m);
    for (int e = 0; e < experts; ++e)
      scores[e] /= sum;
  }
  for (int e = 0; e < experts; ++e)
    choice[e] = scores[e] + (bias && cfg.method == 2 ? bias[e] : 0.f);
  int perGroup = experts / cfg.nGroup;
  if (cfg.method != 0 && cfg.nGroup > 1) {
    float groupScore[64];
    bool keep[64];
    for (int g = 0; g < cfg.nGroup; ++g) {
      float first = -INFINITY, second = -INFINITY;
      for (int e = g * perGroup; e < (g + 1) * perGroup; ++e) {
        float v = choice[e];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      groupScore[g] =
          cfg.method == 2 ? first + (perGroup > 1 ? second : 0.f) : first;
      keep[g] = false;
    }
    // The topk_group best groups, ties to the lower group (stable order).
    for (int k = 0; k < cfg.topkGroup; ++k) {
      int best = -1;
      for (int g = 0; g < cfg.nGroup; ++g)
        if (!keep[g] && (best < 0 || groupScore[g] > groupScore[best]))
          best = g;
      keep[best] = true;
    }
    for (int g = 0; g < cfg.nGroup; ++g)
      if (!keep[g])
        for (int e = g * perGroup; e < (g + 1) * perGroup; ++e)
          choice[e] = -INFINITY;
  }
  int32_t chosen[64];
  double sum = 0;
  for (int k = 0; k < cfg.topK; ++k) {
    int best = -1;
    for (int e = 0; e < experts; ++e)
      if (!taken[e] && (best < 0 || choice[e] > choice[best]))
        best = e;
    taken[best] = true;
    chosen[k] = best;
    sum += scores[best];
  }
  for (int k = 0; k < cfg.topK; ++k) {
    double w = scores[chosen[k]];
    if (cfg.normalize)
      w /= sum + 1e-20;
    indices[size_t(blockIdx.x) * cfg.topK + k] = chosen[k];
    weights[size_t(blockIdx.x) * cfg.topK + k] = float(w * cfg.scale);
  }
}

} // namespace

cudaError_t melt::rt::cuda::embedding(const int32_t *ids, int tokens,
                                      Operand table, int vocab, int hidden,
                                      Result y, int32_t *badId,
                                      cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  embeddingKernel<<<tokens, 256, 0, stream>>>(ids, table, vocab, hidden, y,
                                              badId);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::rope(Operand x, const int32_t *positions,
                                 int tokens, int rows, int dim,
                                 bool interleaved, const RopeFrequencies &freqs,
                                 double mscale, Result y, cudaStream_t stream) {
  if (dim % 2 != 0 || dim / 2 > kMaxRopePairs)
    return cudaErrorInvalidValue;
  size_t pairs = size_t(tokens) * rows * (dim / 2);
  if (pairs == 0)
    return cudaSuccess;
  ropeKernel<<<unsigned((pairs + 255) / 256), 256, 0, stream>>>(
      x, positions, rows, dim, interleaved, freqs, mscale, pairs, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::routeExperts(const float *logits, const float *bias,
                                         int tokens, int experts,
                                         const RouterConfig &config,
                                         int32_t *indices, float *weights,
                                         cudaStream_t stream) {
  if (experts > kMaxRouterExperts || config.nGroup > 64 || config.topK > 64)
    return cudaErrorInvalidValue;
  if (tokens == 0)
    return cudaSuccess;
  routeKernel<<<tokens, 256, 0, stream>>>(logits, bias, experts, config,
                                          indices, weights);
  return cudaGetLastError();
}

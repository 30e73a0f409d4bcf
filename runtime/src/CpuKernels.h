//===- CpuKernels.h - the kernels of the CPU device -------------*- C++ -*-===//
//
// One function per kernel kind. Operands, in the order the artifact lists
// them (schema/artifact.fbs):
//
//   Embedding      in [ids]                 w [table]          -> [h]
//   RMSNorm        in [x]                   w [scale]  f [eps] -> [y]
//   Linear/Logits  in [x]                   w [W: out x in]    -> [y]
//   Rope           in [x, positions]  i [interleaved, yarn, original_max]
//                  f [theta, factor, beta_fast, beta_slow, mscale,
//                     mscale_all_dim]                          -> [y]
//   Attention      in [q, k, v, positions]  i [causal] f [scale] -> [o]
//   KVCacheAppend  in [cache, k, v, positions]                 -> [cache]
//   KVCacheRead    in [cache]                                  -> [k, v]
//   SiluMul, Add   in [a, b]                                   -> [y]
//   Concat         in [x...]  i [axis]  -> [y];  Split in [x] i [axis] -> [y...]
//   Reshape, BroadcastHeads, Convert  in [x]                   -> [y]
//   MoERouter      in [x]  w [gate, bias?]  i [scoring, method, top_k,
//                  n_group, topk_group, norm] f [scale]        -> [idx, w]
//   MoEExperts     in [x, idx, w]  w [gate, up, down]
//                  i [combine_bf16]? (absent: f32)             -> [y]
//   MTPCombine     in [embedded, hidden]  w [enorm, hnorm, eh_proj] f [eps]
//
// Every kernel checks the shapes it is given and returns an error rather
// than reading out of bounds. Compute is f32 throughout.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CPUKERNELS_H
#define MELT_RUNTIME_CPUKERNELS_H

#include "KernelParams.h"
#include "PagePool.h"
#include "Status.h"
#include "Tensor.h"

#include <vector>

namespace melt::rt::cpu {

Status embedding(const Tensor &ids, const WeightData &table, Tensor &out);
Status rmsNorm(const Tensor &x, const WeightData &scale, double eps,
               Tensor &out);
Status linear(const Tensor &x, const WeightData &w, Tensor &out);

using RopeParams = rt::RopeParams;
Status rope(const Tensor &x, const Tensor &positions, const RopeParams &p,
            Tensor &out);
/// Attention of each sequence of a batch: query rows `querySegments[b]` on
/// key/value rows `k.segments[b]` (all rows when k has no segments).
Status attention(const Tensor &q, const Tensor &k, const Tensor &v,
                 const Tensor &positions, bool causal, double scale,
                 const std::vector<int64_t> &querySegments, Tensor &out);
/// Writes rows [begin, end) of k and v at their positions.
Status cacheAppend(CacheView &cache, const Tensor &k, const Tensor &v,
                   const Tensor &positions, int64_t begin, int64_t end);
/// Reads every cached key and value of each view, concatenated, with the
/// rows of each in `segments`.
Status cacheRead(std::vector<CacheView *> &caches, Tensor &k, Tensor &v);
/// Writes rows [begin, end) of the normalized latent and the rotated RoPE
/// key into a latent cache (a view of heads 1, key latent, value rope).
Status latentCacheAppend(CacheView &cache, const Tensor &latent,
                         const Tensor &ropeKey, const Tensor &positions,
                         int64_t begin, int64_t end);
/// Multi-head latent attention of each sequence of a batch over its latent
/// cache. Up to `prefillThreshold` queries of a sequence run absorbed
/// (W_UK into the query, W_UV into the output: an MQA over the latent);
/// longer prefills decompress K/V per head first. Both compute the same.
Status mla(const Tensor &queryNope, const Tensor &queryRope,
           std::vector<CacheView *> &caches, const Tensor &positions,
           const WeightData &wUk, const WeightData &wUv, double scale,
           int64_t prefillThreshold, const std::vector<int64_t> &segments,
           Tensor &out);
/// FP8 e4m3 in [1 x block] tiles of the last dimension of a [T, K] tensor:
/// scale = amax / 448 per tile, q = fp8(x / scale). q is kept as the float
/// values of the FP8 grid; dequantize multiplies them back.
Status quantize(const Tensor &x, int64_t blockRows, int64_t blockCols,
                Tensor &q, Tensor &scales);
Status dequantize(const Tensor &q, const Tensor &scales, int64_t blockRows,
                  int64_t blockCols, Tensor &out);
/// Rounds `count` values to FP8 in 128x128-style blocks of a [rows, cols]
/// matrix (weights stored in FP8 for an FP8 GEMM).
void quantizeMatrixBlocks(float *data, int64_t rows, int64_t cols,
                          int64_t blockRows, int64_t blockCols);
Status siluMul(const Tensor &gate, const Tensor &up, Tensor &out);
Status add(const Tensor &a, const Tensor &b, Tensor &out);
Status concat(const std::vector<const Tensor *> &parts, int64_t axis,
              const std::vector<int64_t> &outShape, Tensor &out);
Status split(const Tensor &x, int64_t axis,
             const std::vector<std::vector<int64_t>> &shapes,
             std::vector<Tensor *> &outs);
Status reshape(const Tensor &x, const std::vector<int64_t> &shape,
               Tensor &out);
Status broadcastHeads(const Tensor &x, int64_t heads, Tensor &out);

using RouterParams = rt::RouterParams;
Status moeRouter(const Tensor &x, const WeightData &gate,
                 const WeightData *bias, const RouterParams &p,
                 Tensor &indices, Tensor &weights);
/// `combineBf16`: expert outputs are rounded to bf16 before the weighted
/// sum, as when they come back from other devices in BF16.
Status moeExperts(const Tensor &x, const Tensor &indices,
                  const Tensor &weights, const WeightData &gate,
                  const WeightData &up, const WeightData &down,
                  bool combineBf16, Tensor &out);
Status mtpCombine(const Tensor &embedded, const Tensor &hidden,
                  const WeightData &enorm, const WeightData &hnorm,
                  const WeightData &ehProj, double eps, Tensor &out);

} // namespace melt::rt::cpu

#endif // MELT_RUNTIME_CPUKERNELS_H

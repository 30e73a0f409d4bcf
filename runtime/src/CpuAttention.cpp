//===- CpuAttention.cpp - the CPU device's paged caches and attention -----===//
//
// Cache appends, per-head attention and absorbed MLA over the paged caches
// of a batch (CacheLayout in Device.h), for the CPU device. A latent cache
// may be BF16 (Device::latentCacheType): appends round into it, and MLA
// reads a sequence's rows as F32.
//
//===----------------------------------------------------------------------===//
#include "CpuDevice.h"
#include "EnvSwitch.h"

#include "CpuTensorAccess.h"
#include "MlaMath.h"
#include "VectorMath.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

using namespace melt;
using namespace melt::rt;
using cpu::floats;
using cpu::ints;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

/// The cache rows of a batch's sequences.
class PagedRows {
public:
  PagedRows(const CacheLayout &layout, const DeviceTensor &cache)
      : pages_(ints(layout.pages)), perSequence_(layout.pages.shape[1]),
        sequences_(layout.pages.shape[0]), rows_(cache.shape[0]) {}

  /// The row of `position` of sequence b, or -1 without a page.
  int64_t row(int64_t b, int64_t position) const {
    if (b < 0 || b >= sequences_ || position < 0 ||
        position / kPageTokens >= perSequence_)
      return -1;
    int64_t page = pages_[b * perSequence_ + position / kPageTokens];
    int64_t r = page * kPageTokens + position % kPageTokens;
    return page < 0 || r >= rows_ ? -1 : r;
  }
  /// Whether positions [0, count) of sequence b all have pages.
  bool covers(int64_t b, int64_t count) const {
    for (int64_t p = 0; p < count; p += kPageTokens)
      if (row(b, p) < 0)
        return false;
    return count <= 0 || row(b, count - 1) >= 0;
  }

private:
  const int32_t *pages_;
  int64_t perSequence_, sequences_, rows_;
};

Status noPage(const char *kernel, int64_t b, int64_t position) {
  return {MELT_RESOURCE_EXHAUSTED, std::string(kernel) + ": position " +
                                       str(position) + " of sequence " +
                                       str(b) + " has no cache page"};
}

/// How many positions of its sequence token t sees.
int64_t visibleOf(const CacheLayout &layout, int64_t t, bool causal) {
  int64_t b = ints(layout.sequences)[t];
  return causal ? int64_t(ints(layout.positions)[t]) + 1
                : int64_t(ints(layout.lengths)[b]);
}

} // namespace

Status CpuDevice::cacheAppend(const DeviceTensor &first,
                              const DeviceTensor &second,
                              const CacheLayout &layout, DeviceTensor &cache) {
  MELT_RETURN_IF_ERROR(check::cacheAppend(first, second, layout, cache));
  PagedRows rows(layout, cache);
  int64_t T = first.rows(), a = first.cols(), width = cache.shape[1];
  int64_t b = width - a;
  for (int64_t t = 0; t < T; ++t) {
    int64_t seq = ints(layout.sequences)[t], pos = ints(layout.positions)[t];
    int64_t r = rows.row(seq, pos);
    if (r < 0)
      return noPage("cache_append", seq, pos);
    const float *x = floats(first) + t * a, *y = floats(second) + t * b;
    if (cache.dtype == DType::BF16) {
      uint16_t *to = static_cast<uint16_t *>(cache.data) + r * width;
      for (int64_t i = 0; i < a; ++i)
        to[i] = floatToBF16(x[i]);
      for (int64_t i = 0; i < b; ++i)
        to[a + i] = floatToBF16(y[i]);
      continue;
    }
    float *c = floats(cache);
    std::memcpy(c + r * width, x, size_t(a) * sizeof(float));
    std::memcpy(c + r * width + a, y, size_t(b) * sizeof(float));
  }
  return Status::ok();
}

/// F32 whatever the compiler chose: the CPU is the reference device, its
/// activations F32 in every policy (a GEMM's operands are rounded, not
/// what it writes), the cache's rows too. MELT_CPU_BF16_LATENT_CACHE=1
/// keeps them in BF16 (comparisons: how far a BF16 cache's rounding alone
/// moves a model: a CPU with BF16 caches against the H200's F32 ones moved
/// v3-tiny's deepseek-v3 prefill by 28% of its logit range, through its
/// FP8 activation blocks and routers; the reference does not round).
DType CpuDevice::latentCacheType(const DeviceTensor &, DType) const {
  return envSwitch("MELT_CPU_BF16_LATENT_CACHE", false) ? DType::BF16
                                                        : DType::F32;
}

Status CpuDevice::attention(const DeviceTensor &q, const DeviceTensor &cache,
                            const CacheLayout &layout, int64_t kvHeads,
                            bool causal, float scale, DeviceTensor &out) {
  MELT_RETURN_IF_ERROR(check::attention(q, cache, layout, kvHeads, out));
  PagedRows rows(layout, cache);
  int64_t T = q.shape[0], H = q.shape[1], D = q.shape[2], Dv = out.shape[2],
          group = H / kvHeads, width = cache.shape[1];
  const float *c = floats(cache), *qs = floats(q);
  float *os = floats(out);
  std::vector<float> scores;
  std::vector<const float *> rowOf;
  for (int64_t t = 0; t < T; ++t) {
    int64_t b = ints(layout.sequences)[t],
            visible = visibleOf(layout, t, causal);
    if (visible <= 0)
      return invalidArgument("attention: token " + str(t) + " sees no key");
    rowOf.resize(size_t(visible));
    for (int64_t s = 0; s < visible; ++s) {
      int64_t r = rows.row(b, s);
      if (r < 0)
        return noPage("attention", b, s);
      rowOf[size_t(s)] = c + r * width;
    }
    scores.resize(size_t(visible));
    for (int64_t h = 0; h < H; ++h) {
      const float *qv = qs + (t * H + h) * D;
      int64_t kh = h / group;
      float top = -INFINITY;
      for (int64_t s = 0; s < visible; ++s) {
        scores[size_t(s)] = dot(qv, rowOf[size_t(s)] + kh * D, D) * scale;
        top = std::max(top, scores[size_t(s)]);
      }
      float sum = 0.f;
      for (float &v : scores)
        sum += v = std::exp(v - top);
      float *o = os + (t * H + h) * Dv;
      std::fill(o, o + Dv, 0.f);
      for (int64_t s = 0; s < visible; ++s)
        axpy(scores[size_t(s)] / sum, rowOf[size_t(s)] + kvHeads * D + kh * Dv,
             o, Dv);
    }
  }
  return Status::ok();
}

Status CpuDevice::mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
                      const DeviceTensor &cache, const CacheLayout &layout,
                      const DeviceTensor &wUk, const DeviceTensor &wUv,
                      float scale, int64_t decompressAbove, DeviceTensor &out) {
  MELT_RETURN_IF_ERROR(check::mla(qNope, qRope, cache, layout, wUk, wUv, out));
  if (!wUk.data || !wUv.data)
    return invalidArgument("mla: W_UK or W_UV has no values");
  PagedRows rows(layout, cache);
  int64_t T = qNope.shape[0], H = qNope.shape[1], N = qNope.shape[2],
          R = qRope.shape[2], L = wUk.shape[2], V = wUv.shape[1],
          width = cache.shape[1], B = layout.pages.shape[0];
  const float *uk = floats(wUk), *uv = floats(wUv);
  const int32_t *seq = ints(layout.sequences), *pos = ints(layout.positions);
  // The queries of each sequence, and how far each sequence is read.
  std::vector<std::vector<int64_t>> queries(static_cast<size_t>(B));
  std::vector<int64_t> reach(size_t(B), 0);
  for (int64_t t = 0; t < T; ++t) {
    int64_t b = seq[t];
    if (b < 0 || b >= B)
      return invalidArgument("mla: token " + str(t) + " of sequence " + str(b) +
                             " of " + str(B));
    if (pos[t] < 0)
      return invalidArgument("mla: token " + str(t) + " at position " +
                             str(pos[t]));
    queries[size_t(b)].push_back(t);
    reach[size_t(b)] = std::max<int64_t>(reach[size_t(b)], pos[t] + 1);
  }
  MlaHeadScratch head;
  std::vector<float> kNope, values, scores, latents, widened;
  for (int64_t b = 0; b < B; ++b) {
    int64_t S = reach[size_t(b)];
    if (queries[size_t(b)].empty())
      continue;
    if (!rows.covers(b, S))
      return noPage("mla", b, S - 1);
    // The sequence's rows as F32: the cache's own, or a BF16 cache's
    // widened once for all its queries.
    const bool bf16 = cache.dtype == DType::BF16;
    const float *c = floats(cache);
    if (bf16) {
      widened.resize(size_t(S * width));
      const uint16_t *bits = static_cast<const uint16_t *>(cache.data);
      for (int64_t s = 0; s < S; ++s)
        for (int64_t i = 0; i < width; ++i)
          widened[size_t(s * width + i)] =
              bf16ToFloat(bits[rows.row(b, s) * width + i]);
    }
    auto latent = [&](int64_t s) {
      return bf16 ? widened.data() + s * width : c + rows.row(b, s) * width;
    };
    auto ropeKey = [&](int64_t s) { return latent(s) + L; };
    bool decompress = int64_t(queries[size_t(b)].size()) > decompressAbove;
    if (decompress) {
      // K_nope[h, s] = W_UK[h] c[s], V[h, s] = W_UV[h] c[s], once for all
      // the queries of a long prefill: a GEMM per head over the gathered
      // latents where the weights have prepacked ones (a loaded model),
      // else dot products.
      kNope.assign(size_t(H * S * N), 0.f);
      values.assign(size_t(H * S * V), 0.f);
      const WeightData *k = cpu::weightOf(wUk), *v = cpu::weightOf(wUv);
      if (k && v && int64_t(k->gemms.size()) == H &&
          int64_t(v->gemms.size()) == H) {
        latents.resize(size_t(S * L));
        for (int64_t s = 0; s < S; ++s)
          std::memcpy(latents.data() + s * L, latent(s),
                      size_t(L) * sizeof(float));
        for (int64_t h = 0; h < H; ++h) {
          MELT_RETURN_IF_ERROR(k->gemms[size_t(h)]->multiply(
              latents.data(), S, kNope.data() + h * S * N));
          MELT_RETURN_IF_ERROR(v->gemms[size_t(h)]->multiply(
              latents.data(), S, values.data() + h * S * V));
        }
      } else {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t s = 0; s < S; ++s) {
            for (int64_t n = 0; n < N; ++n)
              kNope[size_t((h * S + s) * N + n)] =
                  dot(latent(s), uk + (h * N + n) * L, L);
            for (int64_t c = 0; c < V; ++c)
              values[size_t((h * S + s) * V + c)] =
                  dot(latent(s), uv + (h * V + c) * L, L);
          }
      }
    }
    for (int64_t t : queries[size_t(b)]) {
      int64_t visible = int64_t(pos[t]) + 1;
      for (int64_t h = 0; h < H; ++h) {
        const float *q = floats(qNope) + (t * H + h) * N;
        const float *qr = floats(qRope) + (t * H + h) * R;
        float *o = floats(out) + (t * H + h) * V;
        if (!decompress) {
          absorbedMlaHead(q, qr, uk + h * N * L, uv + h * V * L, N, R, L, V,
                          visible, scale, latent, ropeKey, head, o);
          continue;
        }
        scores.resize(size_t(visible));
        float top = -INFINITY;
        for (int64_t s = 0; s < visible; ++s) {
          float score = dot(q, kNope.data() + (h * S + s) * N, N) +
                        dot(qr, ropeKey(s), R);
          scores[size_t(s)] = score * scale;
          top = std::max(top, scores[size_t(s)]);
        }
        float sum = 0.f;
        for (float &v : scores)
          sum += v = std::exp(v - top);
        std::fill(o, o + V, 0.f);
        for (int64_t s = 0; s < visible; ++s)
          axpy(scores[size_t(s)] / sum, values.data() + (h * S + s) * V, o, V);
      }
    }
  }
  return Status::ok();
}

//===- CpuKernels.cpp - the kernels of the CPU device -----------*- C++ -*-===//
#include "CpuKernels.h"

#include "MlaMath.h"
#include "VectorMath.h"
#include "melt/numerics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

using namespace melt;
using namespace melt::rt;
using namespace melt::rt::cpu;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

Status shapeError(const char *kernel, const std::string &what) {
  return invalidArgument(std::string(kernel) + ": " + what);
}

void resize(Tensor &t, std::vector<int64_t> shape) {
  t.shape = std::move(shape);
  t.isInt = false;
  t.ints.clear();
  t.segments.clear();
  t.data.assign(static_cast<size_t>(t.numel()), 0.0f);
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

/// scores[0, n) -> exp(score - max); returns their sum.
float expShifted(std::vector<float> &scores, int64_t n, float maxScore) {
  float sum = 0.0f;
  for (int64_t s = 0; s < n; ++s) {
    scores[s] = std::exp(scores[s] - maxScore);
    sum += scores[s];
  }
  return sum;
}

/// y[t, n] = sum_k x[t, k] W[n, k], accumulated in f32.
void matmulRows(const float *x, int64_t rows, int64_t in, const float *w,
                int64_t out, float *y) {
  for (int64_t t = 0; t < rows; ++t) {
    const float *xr = x + t * in;
    for (int64_t n = 0; n < out; ++n)
      y[t * out + n] = dot(xr, w + n * in, in);
  }
}

void rmsNormRow(const float *x, const float *scale, int64_t n, double eps,
                float *y) {
  double sum = dot(x, x, n); // 16 f32 partial sums: vectorized
  float inv = static_cast<float>(1.0 / std::sqrt(sum / n + eps));
  for (int64_t i = 0; i < n; ++i)
    y[i] = scale[i] * (x[i] * inv);
}

} // namespace

Status cpu::embedding(const Tensor &ids, const WeightData &table, Tensor &out) {
  if (!ids.isInt || ids.rank() != 1 || table.shape.size() != 2)
    return shapeError("embedding", "expects 1-D ids and a 2-D table");
  int64_t vocab = table.shape[0], hidden = table.shape[1];
  resize(out, {ids.dim(0), hidden});
  for (int64_t t = 0; t < ids.dim(0); ++t) {
    int64_t id = ids.ints[t];
    if (id < 0 || id >= vocab)
      return invalidArgument("token id " + str(id) + " is outside the "
                             "vocabulary of " + str(vocab));
    std::copy_n(table.data.data() + id * hidden, hidden,
                out.data.data() + t * hidden);
  }
  return Status::ok();
}

Status cpu::rmsNorm(const Tensor &x, const WeightData &scale, double eps,
                    Tensor &out) {
  if (x.rank() < 1 || scale.shape.size() != 1 ||
      scale.shape[0] != x.shape.back())
    return shapeError("rms_norm", "scale does not match the last dimension");
  int64_t n = x.shape.back();
  resize(out, x.shape);
  for (int64_t r = 0; r < (n ? x.numel() / n : 0); ++r)
    rmsNormRow(x.data.data() + r * n, scale.data.data(), n, eps,
               out.data.data() + r * n);
  return Status::ok();
}

Status cpu::linear(const Tensor &x, const WeightData &w, Tensor &out) {
  if (x.rank() < 1 || w.shape.size() != 2 || w.shape[1] != x.shape.back())
    return shapeError("linear", "weight [" + str(w.shape.empty() ? 0 : w.shape[0]) +
                                    ", ...] does not match input width " +
                                    str(x.rank() ? x.shape.back() : 0));
  int64_t in = w.shape[1], outDim = w.shape[0];
  std::vector<int64_t> shape = x.shape;
  shape.back() = outDim;
  resize(out, shape);
  int64_t rows = in ? x.numel() / in : 0;
  if (!w.gemms.empty())
    return w.gemms[0]->multiply(x.data.data(), rows, out.data.data());
  if (w.data.size() != static_cast<size_t>(in * outDim))
    return shapeError("linear", "weight data is missing");
  matmulRows(x.data.data(), rows, in, w.data.data(), outDim, out.data.data());
  return Status::ok();
}

Status cpu::rope(const Tensor &x, const Tensor &positions, const RopeParams &p,
                 Tensor &out) {
  if ((x.rank() != 2 && x.rank() != 3) || !positions.isInt ||
      positions.rank() != 1 || positions.dim(0) != x.dim(0) ||
      x.shape.back() % 2 != 0)
    return shapeError("rope", "expects [T, D] or [T, H, D] and T positions");
  int64_t dim = x.shape.back(), rows = x.numel() / dim / std::max<int64_t>(x.dim(0), 1);
  std::vector<double> inv = ropeInverseFrequencies(p, dim);
  double mscale = ropeOutputScale(p);
  resize(out, x.shape);
  // cos and sin once per token (in double: positions reach 10^5 and
  // more), then every head of it.
  std::vector<double> cosines(dim / 2), sines(dim / 2);
  for (int64_t t = 0; t < x.dim(0); ++t) {
    double pos = static_cast<double>(positions.ints[t]);
    for (int64_t i = 0; i < dim / 2; ++i) {
      cosines[i] = std::cos(pos * inv[i]) * mscale;
      sines[i] = std::sin(pos * inv[i]) * mscale;
    }
    for (int64_t h = 0; h < rows; ++h) {
      const float *src = x.data.data() + (t * rows + h) * dim;
      float *dst = out.data.data() + (t * rows + h) * dim;
      for (int64_t i = 0; i < dim / 2; ++i) {
        // Interleaved: pairs (2i, 2i+1); else (i, i + dim/2).
        int64_t a = p.interleaved ? 2 * i : i,
                b = p.interleaved ? 2 * i + 1 : i + dim / 2;
        dst[a] = static_cast<float>(src[a] * cosines[i] - src[b] * sines[i]);
        dst[b] = static_cast<float>(src[b] * cosines[i] + src[a] * sines[i]);
      }
    }
  }
  return Status::ok();
}

Status cpu::attention(const Tensor &q, const Tensor &k, const Tensor &v,
                      const Tensor &positions, bool causal, double scale,
                      const std::vector<int64_t> &querySegments, Tensor &out) {
  if (q.rank() != 3 || k.rank() != 3 || v.rank() != 3 ||
      q.dim(2) != k.dim(2) || k.dim(0) != v.dim(0) || k.dim(1) != v.dim(1) ||
      k.dim(1) == 0 || q.dim(1) % k.dim(1) != 0 || !positions.isInt ||
      positions.dim(0) != q.dim(0))
    return shapeError("attention", "inconsistent q, k, v or positions");
  int64_t H = q.dim(1), D = q.dim(2), Hk = k.dim(1), Dv = v.dim(2),
          group = H / Hk;
  std::vector<int64_t> qSeg = querySegments, kSeg = k.segments;
  if (qSeg.empty())
    qSeg = {0, q.dim(0)};
  if (kSeg.empty())
    kSeg = {0, k.dim(0)};
  if (qSeg.size() != kSeg.size() || qSeg.back() != q.dim(0) ||
      kSeg.back() != k.dim(0))
    return shapeError("attention", "queries and keys of different batches");
  resize(out, {q.dim(0), H, Dv});
  std::vector<float> scores;
  for (size_t b = 0; b + 1 < qSeg.size(); ++b) {
    int64_t k0 = kSeg[b], S = kSeg[b + 1] - kSeg[b];
    scores.resize(std::max<int64_t>(S, 1));
    for (int64_t t = qSeg[b]; t < qSeg[b + 1]; ++t) {
      int64_t visible =
          causal ? std::min<int64_t>(S, positions.ints[t] + 1) : S;
      if (visible <= 0)
        return invalidArgument("attention: query at position " +
                               str(positions.ints[t]) + " sees no key");
      for (int64_t h = 0; h < H; ++h) {
        const float *qv = q.data.data() + (t * H + h) * D;
        int64_t kh = h / group;
        float maxScore = -INFINITY;
        for (int64_t s = 0; s < visible; ++s) {
          const float *kv = k.data.data() + ((k0 + s) * Hk + kh) * D;
          scores[s] = static_cast<float>(dot(qv, kv, D) * scale);
          maxScore = std::max(maxScore, scores[s]);
        }
        float sum = expShifted(scores, visible, maxScore);
        float *o = out.data.data() + (t * H + h) * Dv;
        for (int64_t s = 0; s < visible; ++s) {
          const float *vv = v.data.data() + ((k0 + s) * Hk + kh) * Dv;
          axpy(scores[s] / sum, vv, o, Dv);
        }
      }
    }
  }
  return Status::ok();
}

Status cpu::cacheAppend(CacheView &cache, const Tensor &k, const Tensor &v,
                        const Tensor &positions, int64_t begin, int64_t end) {
  if (k.rank() != 3 || v.rank() != 3 || k.dim(1) != cache.heads ||
      k.dim(2) != cache.keyDim || v.dim(1) != cache.heads ||
      v.dim(2) != cache.valueDim || k.dim(0) != v.dim(0) ||
      !positions.isInt || positions.dim(0) != k.dim(0) || begin < 0 ||
      end > k.dim(0))
    return shapeError("kv_cache_append", "keys or values do not fit the cache");
  int64_t kRow = cache.heads * cache.keyDim, vRow = cache.heads * cache.valueDim;
  int64_t capacity = static_cast<int64_t>(cache.pages->size()) * kPageTokens;
  for (int64_t t = begin; t < end; ++t) {
    int64_t pos = positions.ints[t];
    if (pos < 0 || pos >= capacity)
      return {MELT_RESOURCE_EXHAUSTED,
              "position " + str(pos) + " is beyond the " + str(capacity) +
                  " cached tokens the sequence holds pages for"};
    std::copy_n(k.data.data() + t * kRow, kRow, cache.key(pos));
    std::copy_n(v.data.data() + t * vRow, vRow, cache.value(pos));
    *cache.length = std::max(*cache.length, pos + 1);
  }
  return Status::ok();
}

Status cpu::cacheRead(std::vector<CacheView *> &caches, Tensor &k, Tensor &v) {
  int64_t heads = caches[0]->heads, kd = caches[0]->keyDim,
          vd = caches[0]->valueDim, rows = 0;
  std::vector<int64_t> segments{0};
  for (CacheView *c : caches) {
    rows += *c->length;
    segments.push_back(rows);
  }
  resize(k, {rows, heads, kd});
  resize(v, {rows, heads, vd});
  k.segments = v.segments = segments;
  int64_t row = 0;
  for (CacheView *c : caches)
    for (int64_t p = 0; p < *c->length; ++p, ++row) {
      std::copy_n(c->key(p), heads * kd, k.data.data() + row * heads * kd);
      std::copy_n(c->value(p), heads * vd, v.data.data() + row * heads * vd);
    }
  return Status::ok();
}

Status cpu::latentCacheAppend(CacheView &cache, const Tensor &latent,
                              const Tensor &ropeKey, const Tensor &positions,
                              int64_t begin, int64_t end) {
  if (latent.rank() != 2 || ropeKey.rank() != 2 || cache.heads != 1 ||
      latent.dim(1) != cache.keyDim || ropeKey.dim(1) != cache.valueDim ||
      latent.dim(0) != ropeKey.dim(0) || !positions.isInt ||
      positions.dim(0) != latent.dim(0) || begin < 0 || end > latent.dim(0))
    return shapeError("latent_cache_append",
                      "latent or RoPE key does not fit the cache");
  int64_t capacity = static_cast<int64_t>(cache.pages->size()) * kPageTokens;
  for (int64_t t = begin; t < end; ++t) {
    int64_t pos = positions.ints[t];
    if (pos < 0 || pos >= capacity)
      return {MELT_RESOURCE_EXHAUSTED,
              "position " + str(pos) + " is beyond the " + str(capacity) +
                  " cached tokens the sequence holds pages for"};
    std::copy_n(latent.data.data() + t * cache.keyDim, cache.keyDim,
                cache.key(pos));
    std::copy_n(ropeKey.data.data() + t * cache.valueDim, cache.valueDim,
                cache.value(pos));
    *cache.length = std::max(*cache.length, pos + 1);
  }
  return Status::ok();
}

Status cpu::mla(const Tensor &qn, const Tensor &qr,
                std::vector<CacheView *> &caches, const Tensor &positions,
                const WeightData &wUk, const WeightData &wUv, double scale,
                int64_t threshold, const std::vector<int64_t> &segmentsIn,
                Tensor &out) {
  if (qn.rank() != 3 || qr.rank() != 3 || qn.dim(0) != qr.dim(0) ||
      qn.dim(1) != qr.dim(1) || wUk.shape.size() != 3 ||
      wUv.shape.size() != 3 || caches.empty() || !positions.isInt ||
      positions.dim(0) != qn.dim(0))
    return shapeError("mla", "inconsistent queries, weights or positions");
  int64_t T = qn.dim(0), H = qn.dim(1), N = qn.dim(2), R = qr.dim(2);
  int64_t L = caches[0]->keyDim, V = wUv.shape[1];
  if (wUk.shape != std::vector<int64_t>{H, N, L} || wUv.shape[0] != H ||
      wUv.shape[2] != L || caches[0]->valueDim != R ||
      wUk.data.size() != static_cast<size_t>(H * N * L) ||
      wUv.data.size() != static_cast<size_t>(H * V * L))
    return shapeError("mla", "W_UK/W_UV do not match the queries and cache");
  std::vector<int64_t> segments = segmentsIn;
  if (segments.empty())
    segments = {0, T};
  if (segments.size() != caches.size() + 1 || segments.back() != T)
    return shapeError("mla", "queries and caches of different batches");
  resize(out, {T, H, V});
  std::vector<float> scores;
  MlaHeadScratch head;
  for (size_t b = 0; b < caches.size(); ++b) {
    CacheView &cache = *caches[b];
    int64_t S = *cache.length, queries = segments[b + 1] - segments[b];
    scores.resize(std::max<int64_t>(S, 1));
    bool decompress = queries > threshold;
    // Decompressed form: K_nope[s, h] = W_UK[h] c[s], V[s, h] = W_UV[h] c[s].
    std::vector<float> kNope, values;
    if (decompress) {
      kNope.assign(S * H * N, 0.0f);
      values.assign(S * H * V, 0.0f);
      for (int64_t s = 0; s < S; ++s) {
        const float *c = cache.key(s);
        for (int64_t h = 0; h < H; ++h) {
          matmulRows(c, 1, L, wUk.data.data() + h * N * L, N,
                     kNope.data() + (s * H + h) * N);
          matmulRows(c, 1, L, wUv.data.data() + h * V * L, V,
                     values.data() + (s * H + h) * V);
        }
      }
    }
    for (int64_t t = segments[b]; t < segments[b + 1]; ++t) {
      int64_t visible = std::min<int64_t>(S, positions.ints[t] + 1);
      if (visible <= 0)
        return invalidArgument("mla: query at position " +
                               str(positions.ints[t]) + " sees no key");
      for (int64_t h = 0; h < H; ++h) {
        const float *q = qn.data.data() + (t * H + h) * N;
        const float *qrope = qr.data.data() + (t * H + h) * R;
        float *o = out.data.data() + (t * H + h) * V;
        if (!decompress) {
          absorbedMlaHead(
              q, qrope, wUk.data.data() + h * N * L,
              wUv.data.data() + h * V * L, N, R, L, V, visible, scale,
              [&](int64_t s) { return cache.key(s); },
              [&](int64_t s) { return cache.value(s); }, head, o);
          continue;
        }
        // Decompressed: scores on K_nope, output from the per-head values.
        float maxScore = -INFINITY;
        for (int64_t s = 0; s < visible; ++s) {
          float score = dot(q, kNope.data() + (s * H + h) * N, N);
          score += dot(qrope, cache.value(s), R);
          scores[s] = static_cast<float>(score * scale);
          maxScore = std::max(maxScore, scores[s]);
        }
        float sum = expShifted(scores, visible, maxScore);
        for (int64_t s = 0; s < visible; ++s)
          axpy(scores[s] / sum, values.data() + (s * H + h) * V, o, V);
      }
    }
  }
  return Status::ok();
}

void cpu::quantizeMatrixBlocks(float *data, int64_t rows, int64_t cols,
                               int64_t br, int64_t bc) {
  for (int64_t r0 = 0; r0 < rows; r0 += br)
    for (int64_t c0 = 0; c0 < cols; c0 += bc) {
      int64_t r1 = std::min(rows, r0 + br), c1 = std::min(cols, c0 + bc);
      float amax = 0.0f;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          amax = std::max(amax, std::fabs(data[r * cols + c]));
      float scale = std::max(amax, 1e-12f) / kFp8E4M3Max;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          data[r * cols + c] =
              fp8E4M3ToFloat(floatToFp8E4M3(data[r * cols + c] / scale)) *
              scale;
    }
}

Status cpu::quantize(const Tensor &x, int64_t br, int64_t bc, Tensor &q,
                     Tensor &scales) {
  if (x.rank() != 2 || br != 1 || bc <= 0)
    return shapeError("quantize", "expects [T, K] in 1 x N blocks");
  int64_t T = x.dim(0), K = x.dim(1), blocks = (K + bc - 1) / bc;
  resize(q, {T, K});
  resize(scales, {T, blocks});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      int64_t c0 = b * bc, c1 = std::min(K, c0 + bc);
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c)
        amax = std::max(amax, std::fabs(x.data[t * K + c]));
      float scale = std::max(amax, 1e-12f) / kFp8E4M3Max;
      scales.data[t * blocks + b] = scale;
      for (int64_t c = c0; c < c1; ++c)
        q.data[t * K + c] = fp8E4M3ToFloat(floatToFp8E4M3(x.data[t * K + c] / scale));
    }
  return Status::ok();
}

Status cpu::dequantize(const Tensor &q, const Tensor &scales, int64_t br,
                       int64_t bc, Tensor &out) {
  if (q.rank() != 2 || br != 1 || bc <= 0 || scales.rank() != 2 ||
      scales.dim(0) != q.dim(0) || scales.dim(1) != (q.dim(1) + bc - 1) / bc)
    return shapeError("dequantize", "scales do not match the tensor");
  int64_t T = q.dim(0), K = q.dim(1), blocks = scales.dim(1);
  resize(out, {T, K});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < K; ++c)
      out.data[t * K + c] = q.data[t * K + c] * scales.data[t * blocks + c / bc];
  return Status::ok();
}

Status cpu::siluMul(const Tensor &gate, const Tensor &up, Tensor &out) {
  if (gate.shape != up.shape)
    return shapeError("silu_mul", "operands differ in shape");
  resize(out, gate.shape);
  for (size_t i = 0; i < out.data.size(); ++i)
    out.data[i] = static_cast<float>(silu(gate.data[i])) * up.data[i];
  return Status::ok();
}

Status cpu::add(const Tensor &a, const Tensor &b, Tensor &out) {
  if (a.shape != b.shape)
    return shapeError("add", "operands differ in shape");
  resize(out, a.shape);
  for (size_t i = 0; i < out.data.size(); ++i)
    out.data[i] = a.data[i] + b.data[i];
  return Status::ok();
}

Status cpu::concat(const std::vector<const Tensor *> &parts, int64_t axis,
                   const std::vector<int64_t> &outShape, Tensor &out) {
  std::vector<int64_t> shape = parts[0]->shape;
  if (axis < 0 || axis >= static_cast<int64_t>(shape.size()))
    return shapeError("concat", "axis out of range");
  shape[axis] = 0;
  for (const Tensor *p : parts) {
    if (p->rank() != static_cast<int>(shape.size()))
      return shapeError("concat", "parts differ in rank");
    for (int d = 0; d < p->rank(); ++d)
      if (d != axis && p->dim(d) != parts[0]->dim(d))
        return shapeError("concat", "parts differ outside the axis");
    shape[axis] += p->dim(axis);
  }
  for (size_t d = 1; d < outShape.size() && d < shape.size(); ++d)
    if (outShape[d] != shape[d])
      return shapeError("concat", "result shape differs from the program's");
  resize(out, shape);
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d)
    outer *= shape[d];
  int64_t offset = 0, outRow = out.numel() / std::max<int64_t>(outer, 1);
  for (const Tensor *p : parts) {
    int64_t row = p->numel() / std::max<int64_t>(outer, 1);
    for (int64_t o = 0; o < outer; ++o)
      std::copy_n(p->data.data() + o * row, row,
                  out.data.data() + o * outRow + offset);
    offset += row;
  }
  return Status::ok();
}

Status cpu::split(const Tensor &x, int64_t axis,
                  const std::vector<std::vector<int64_t>> &shapes,
                  std::vector<Tensor *> &outs) {
  if (axis < 0 || axis >= x.rank())
    return shapeError("split", "axis out of range");
  int64_t total = 0;
  for (const auto &s : shapes) {
    if (static_cast<int>(s.size()) != x.rank())
      return shapeError("split", "parts differ in rank");
    total += s[axis];
  }
  if (total != x.dim(axis))
    return shapeError("split", "parts do not add up to the input");
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d)
    outer *= x.dim(d);
  int64_t inRow = outer ? x.numel() / outer : 0, offset = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    std::vector<int64_t> shape = x.shape;
    shape[axis] = shapes[i][axis];
    resize(*outs[i], shape);
    int64_t row = outer ? outs[i]->numel() / outer : 0;
    for (int64_t o = 0; o < outer; ++o)
      std::copy_n(x.data.data() + o * inRow + offset, row,
                  outs[i]->data.data() + o * row);
    offset += row;
  }
  return Status::ok();
}

Status cpu::reshape(const Tensor &x, const std::vector<int64_t> &shape,
                    Tensor &out) {
  std::vector<int64_t> full = shape;
  if (x.rank() < 1 || full.empty())
    return shapeError("reshape", "needs a token dimension");
  full[0] = x.dim(0);
  int64_t n = 1;
  for (int64_t d : full)
    n *= d;
  if (n != x.numel())
    return shapeError("reshape", "element counts differ");
  out.shape = full;
  out.isInt = false;
  out.data = x.data;
  return Status::ok();
}

Status cpu::broadcastHeads(const Tensor &x, int64_t heads, Tensor &out) {
  if (x.rank() != 2 || heads <= 0)
    return shapeError("broadcast_heads", "expects [T, D]");
  int64_t T = x.dim(0), D = x.dim(1);
  resize(out, {T, heads, D});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h)
      std::copy_n(x.data.data() + t * D, D, out.data.data() + (t * heads + h) * D);
  return Status::ok();
}

Status cpu::moeRouter(const Tensor &x, const WeightData &gate,
                      const WeightData *bias, const RouterParams &p,
                      Tensor &indices, Tensor &weights) {
  if (x.rank() != 2 || gate.shape.size() != 2 || gate.shape[1] != x.dim(1))
    return shapeError("moe_router", "gate does not match the input");
  int64_t T = x.dim(0), E = gate.shape[0];
  if (!validRouting(p, E) ||
      (bias && (bias->shape.size() != 1 || bias->shape[0] != E)))
    return shapeError("moe_router", "inconsistent routing parameters");
  indices.shape = {T, p.topK};
  indices.isInt = true;
  indices.data.clear();
  indices.ints.assign(T * p.topK, 0);
  resize(weights, {T, p.topK});
  std::vector<float> logits(E);
  for (int64_t t = 0; t < T; ++t) {
    matmulRows(x.data.data() + t * x.dim(1), 1, x.dim(1), gate.data.data(), E,
               logits.data());
    routeToken(logits.data(), E, bias ? bias->data.data() : nullptr, p,
               indices.ints.data() + t * p.topK,
               weights.data.data() + t * p.topK);
  }
  return Status::ok();
}

Status cpu::moeExperts(const Tensor &x, const Tensor &indices,
                       const Tensor &weights, const WeightData &gate,
                       const WeightData &up, const WeightData &down,
                       bool combineBf16, Tensor &out) {
  if (x.rank() != 2 || gate.shape.size() != 3 || gate.shape != up.shape ||
      down.shape.size() != 3 || gate.shape[2] != x.dim(1) ||
      down.shape[0] != gate.shape[0] || down.shape[1] != x.dim(1) ||
      down.shape[2] != gate.shape[1] || !indices.isInt ||
      indices.shape != weights.shape || indices.dim(0) != x.dim(0))
    return shapeError("moe_experts", "expert weights do not match the input");
  int64_t T = x.dim(0), H = x.dim(1), E = gate.shape[0], I = gate.shape[1],
          K = indices.dim(1);
  bool packed = static_cast<int64_t>(gate.gemms.size()) == E &&
                static_cast<int64_t>(up.gemms.size()) == E &&
                static_cast<int64_t>(down.gemms.size()) == E;
  if (!packed && (gate.data.size() != static_cast<size_t>(E * I * H) ||
                  up.data.size() != gate.data.size() ||
                  down.data.size() != gate.data.size()))
    return shapeError("moe_experts", "expert weight data is missing");
  resize(out, {T, H});
  // Tokens grouped by expert: one GEMM per active expert over all its
  // tokens, then a weighted scatter-add.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      int64_t e = indices.ints[t * K + k];
      if (e < 0 || e >= E)
        return invalidArgument("moe_experts: expert " + str(e) + " of " +
                               str(E));
      routed[e].push_back({t, weights.data[t * K + k]});
    }
  std::vector<float> xs, g, u, y;
  for (int64_t e = 0; e < E; ++e) {
    int64_t m = routed[e].size();
    if (m == 0)
      continue;
    xs.resize(m * H);
    g.resize(m * I);
    u.resize(m * I);
    y.resize(m * H);
    for (int64_t r = 0; r < m; ++r)
      std::copy_n(x.data.data() + routed[e][r].first * H, H,
                  xs.data() + r * H);
    if (packed) {
      MELT_RETURN_IF_ERROR(gate.gemms[e]->multiply(xs.data(), m, g.data()));
      MELT_RETURN_IF_ERROR(up.gemms[e]->multiply(xs.data(), m, u.data()));
    } else {
      matmulRows(xs.data(), m, H, gate.data.data() + e * I * H, I, g.data());
      matmulRows(xs.data(), m, H, up.data.data() + e * I * H, I, u.data());
    }
    for (int64_t i = 0; i < m * I; ++i)
      g[i] = static_cast<float>(silu(g[i])) * u[i];
    if (packed)
      MELT_RETURN_IF_ERROR(down.gemms[e]->multiply(g.data(), m, y.data()));
    else
      matmulRows(g.data(), m, I, down.data.data() + e * H * I, H, y.data());
    if (combineBf16)
      for (float &v : y)
        v = bf16ToFloat(floatToBF16(v));
    for (int64_t r = 0; r < m; ++r) {
      auto [t, w] = routed[e][r];
      for (int64_t h = 0; h < H; ++h)
        out.data[t * H + h] += w * y[r * H + h];
    }
  }
  return Status::ok();
}

Status cpu::mtpCombine(const Tensor &embedded, const Tensor &hidden,
                       const WeightData &enorm, const WeightData &hnorm,
                       const WeightData &ehProj, double eps, Tensor &out) {
  if (embedded.rank() != 2 || embedded.shape != hidden.shape)
    return shapeError("mtp_combine", "embedded and hidden differ");
  int64_t T = embedded.dim(0), H = embedded.dim(1);
  if (enorm.shape != std::vector<int64_t>{H} ||
      hnorm.shape != std::vector<int64_t>{H} ||
      ehProj.shape != std::vector<int64_t>{H, 2 * H})
    return shapeError("mtp_combine", "weights do not match the hidden size");
  Tensor both;
  resize(both, {T, 2 * H});
  for (int64_t t = 0; t < T; ++t) {
    rmsNormRow(embedded.data.data() + t * H, enorm.data.data(), H, eps,
               both.data.data() + t * 2 * H);
    rmsNormRow(hidden.data.data() + t * H, hnorm.data.data(), H, eps,
               both.data.data() + t * 2 * H + H);
  }
  return linear(both, ehProj, out);
}

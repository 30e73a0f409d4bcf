//===- CpuDevice.cpp - the CPU device -------------------------------------===//
#include "CpuDevice.h"

#include "MlaMath.h"
#include "VectorMath.h"
#include "melt/numerics.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include <unistd.h>

using namespace melt;
using namespace melt::rt;

namespace {

float load(const DeviceTensor &t, int64_t i) {
  switch (t.dtype) {
  case DType::F32:
    return static_cast<const float *>(t.data)[i];
  case DType::BF16:
    return bf16ToFloat(static_cast<const uint16_t *>(t.data)[i]);
  case DType::FP8E4M3:
    return fp8E4M3ToFloat(static_cast<const uint8_t *>(t.data)[i]);
  case DType::I32:
    return float(static_cast<const int32_t *>(t.data)[i]);
  }
  return 0.f;
}

void store(DeviceTensor &t, int64_t i, float v) {
  switch (t.dtype) {
  case DType::F32:
    static_cast<float *>(t.data)[i] = v;
    break;
  case DType::BF16:
    static_cast<uint16_t *>(t.data)[i] = floatToBF16(v);
    break;
  case DType::FP8E4M3:
    static_cast<uint8_t *>(t.data)[i] = floatToFp8E4M3(v);
    break;
  case DType::I32:
    static_cast<int32_t *>(t.data)[i] = static_cast<int32_t>(v);
    break;
  }
}

/// Rows of a tensor as f32, converted once.
std::vector<float> toFloats(const DeviceTensor &t) {
  std::vector<float> out(size_t(t.numel()));
  if (t.dtype == DType::F32)
    std::memcpy(out.data(), t.data, out.size() * sizeof(float));
  else
    for (int64_t i = 0; i < t.numel(); ++i)
      out[size_t(i)] = load(t, i);
  return out;
}

Status elementwise(const char *kernel, const DeviceTensor &a,
                   const DeviceTensor &b, DeviceTensor &y,
                   float (*op)(float, float)) {
  MELT_RETURN_IF_ERROR(check::floatType(kernel, "a", a));
  MELT_RETURN_IF_ERROR(check::floatType(kernel, "b", b));
  MELT_RETURN_IF_ERROR(check::floatType(kernel, "y", y));
  MELT_RETURN_IF_ERROR(check::sameShape(kernel, a, b));
  MELT_RETURN_IF_ERROR(check::sameShape(kernel, a, y));
  for (int64_t i = 0; i < a.numel(); ++i)
    store(y, i, op(load(a, i), load(b, i)));
  return Status::ok();
}

} // namespace

std::string CpuDevice::description() const {
  return "cpu (" + std::to_string(std::thread::hardware_concurrency()) +
         " threads)";
}

Status CpuDevice::allocate(DType type, std::vector<int64_t> shape,
                           DeviceTensor &out) {
  DeviceTensor t;
  t.dtype = type;
  t.shape = std::move(shape);
  uint64_t bytes = dtypeBytes(type);
  for (int64_t d : t.shape) {
    if (d < 0)
      return invalidArgument("allocate: negative dimension");
    if (__builtin_mul_overflow(bytes, uint64_t(d), &bytes))
      return {MELT_OUT_OF_MEMORY, "cpu: allocation size overflows"};
  }
  // More than the machine has is refused up front (malloc would promise
  // it and fail later, in the page fault).
  uint64_t physical =
      uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(sysconf(_SC_PAGE_SIZE));
  if (bytes > physical)
    return {MELT_OUT_OF_MEMORY, "cpu: out of memory allocating " +
                                    std::to_string(bytes) + " bytes (" +
                                    std::to_string(physical >> 20) +
                                    " MiB in this machine)"};
  t.data = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t(64),
                          std::nothrow);
  if (!t.data)
    return {MELT_OUT_OF_MEMORY,
            "cpu: cannot allocate " + std::to_string(bytes) + " bytes"};
  out = std::move(t);
  return Status::ok();
}

void CpuDevice::release(DeviceTensor &tensor) {
  if (tensor.data)
    ::operator delete(tensor.data, std::align_val_t(64));
  tensor.data = nullptr;
}

Status CpuDevice::upload(const void *host, DeviceTensor &tensor) {
  std::memcpy(tensor.data, host, tensor.bytes());
  return Status::ok();
}

Status CpuDevice::download(const DeviceTensor &tensor, void *host) {
  std::memcpy(host, tensor.data, tensor.bytes());
  return Status::ok();
}

Status CpuDevice::rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma,
                          float eps, DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::rmsNorm(x, gamma, y));
  int64_t rows = x.rows(), cols = x.cols();
  std::vector<float> g = toFloats(gamma);
  for (int64_t r = 0; r < rows; ++r) {
    float sum = 0.f;
    for (int64_t c = 0; c < cols; ++c) {
      float v = load(x, r * cols + c);
      sum += v * v;
    }
    float scale = 1.f / std::sqrt(sum / float(cols) + eps);
    for (int64_t c = 0; c < cols; ++c)
      store(y, r * cols + c, load(x, r * cols + c) * scale * g[size_t(c)]);
  }
  return Status::ok();
}

Status CpuDevice::linear(const DeviceTensor &x, const DeviceTensor &w,
                         DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::linear(x, w, y));
  int64_t m = x.rows(), k = x.cols(), n = w.rows();
  std::vector<float> xs = toFloats(x), ws = toFloats(w);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0.f;
      const float *a = xs.data() + i * k, *b = ws.data() + j * k;
      for (int64_t p = 0; p < k; ++p)
        sum += a[p] * b[p];
      store(y, i * n + j, sum);
    }
  return Status::ok();
}

Status CpuDevice::quantizeFp8(const DeviceTensor &x, DeviceTensor &q,
                              DeviceTensor &scales) {
  MELT_RETURN_IF_ERROR(check::quantizeFp8(x, q, scales));
  int64_t m = x.rows(), k = x.cols();
  auto *s = static_cast<float *>(scales.data);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < k / 128; ++b) {
      float amax = 0.f;
      for (int64_t c = b * 128; c < (b + 1) * 128; ++c)
        amax = std::max(amax, std::fabs(load(x, r * k + c)));
      float scale = amax > 0.f ? amax / kFp8E4M3Max : 1.f;
      s[b * m + r] = scale;
      for (int64_t c = b * 128; c < (b + 1) * 128; ++c)
        store(q, r * k + c, load(x, r * k + c) / scale);
    }
  return Status::ok();
}

Status CpuDevice::linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                            const DeviceTensor &w, const DeviceTensor &wScales,
                            DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::linearFp8(q, scales, w, wScales, y));
  int64_t m = q.rows(), k = q.cols(), n = w.rows(), kb = k / 128;
  std::vector<float> xs = toFloats(q), ws = toFloats(w);
  auto *s = static_cast<const float *>(scales.data);
  auto *t = static_cast<const float *>(wScales.data);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0.f;
      for (int64_t b = 0; b < kb; ++b) {
        float block = 0.f;
        for (int64_t p = b * 128; p < (b + 1) * 128; ++p)
          block += xs[size_t(i * k + p)] * ws[size_t(j * k + p)];
        sum += block * s[b * m + i] * t[(j / 128) * kb + b];
      }
      store(y, i * n + j, sum);
    }
  return Status::ok();
}

Status CpuDevice::siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                          DeviceTensor &y) {
  return elementwise("silu_mul", gate, up, y, [](float g, float u) {
    return g / (1.f + std::exp(-g)) * u;
  });
}

Status CpuDevice::add(const DeviceTensor &a, const DeviceTensor &b,
                      DeviceTensor &y) {
  return elementwise("add", a, b, y, [](float u, float v) { return u + v; });
}

Status CpuDevice::embedding(const DeviceTensor &ids, const DeviceTensor &table,
                            DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::embedding(ids, table, y));
  int64_t vocab = table.shape[0], hidden = table.shape[1];
  auto *id = static_cast<const int32_t *>(ids.data);
  for (int64_t t = 0; t < ids.shape[0]; ++t) {
    if (id[t] < 0 || id[t] >= vocab)
      return invalidArgument("embedding: token id " + std::to_string(id[t]) +
                             " is outside the vocabulary of " +
                             std::to_string(vocab));
    for (int64_t h = 0; h < hidden; ++h)
      store(y, t * hidden + h, load(table, int64_t(id[t]) * hidden + h));
  }
  return Status::ok();
}

Status CpuDevice::rope(const DeviceTensor &x, const DeviceTensor &positions,
                       const RopeParams &params, DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::rope(x, positions, params, y));
  int64_t dim = x.shape.back(), tokens = x.shape[0];
  int64_t rows = tokens ? x.numel() / dim / tokens : 0;
  std::vector<double> inv = ropeInverseFrequencies(params, dim);
  double mscale = ropeOutputScale(params);
  auto *pos = static_cast<const int32_t *>(positions.data);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t base = (t * rows + r) * dim;
      for (int64_t i = 0; i < dim / 2; ++i) {
        double c = std::cos(pos[t] * inv[i]) * mscale,
               s = std::sin(pos[t] * inv[i]) * mscale;
        int64_t a = params.interleaved ? 2 * i : i,
                b = params.interleaved ? 2 * i + 1 : i + dim / 2;
        float xa = load(x, base + a), xb = load(x, base + b);
        store(y, base + a, float(xa * c - xb * s));
        store(y, base + b, float(xb * c + xa * s));
      }
    }
  return Status::ok();
}

Status CpuDevice::routeExperts(const DeviceTensor &logits,
                               const DeviceTensor *bias,
                               const RouterParams &params,
                               DeviceTensor &indices, DeviceTensor &weights) {
  MELT_RETURN_IF_ERROR(
      check::routeExperts(logits, bias, params, indices, weights));
  int64_t t = logits.rows(), e = logits.cols(), k = params.topK;
  std::vector<int64_t> chosen(static_cast<size_t>(k));
  for (int64_t i = 0; i < t; ++i) {
    routeToken(static_cast<const float *>(logits.data) + i * e, e,
               bias ? static_cast<const float *>(bias->data) : nullptr, params,
               chosen.data(), static_cast<float *>(weights.data) + i * k);
    for (int64_t j = 0; j < k; ++j)
      static_cast<int32_t *>(indices.data)[i * k + j] = int32_t(chosen[j]);
  }
  return Status::ok();
}

Status CpuDevice::copy(const DeviceTensor &x, DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::copy(x, y));
  std::memmove(y.data, x.data, x.bytes());
  return Status::ok();
}

namespace {
/// Copies `part` to or from its place in `whole` along `axis`.
void copyAxisPart(const DeviceTensor &whole, int axis, int64_t offset,
                  const DeviceTensor &part, bool toWhole) {
  int64_t outer, inner;
  check::axisExtents(whole.shape, axis, outer, inner);
  size_t element = dtypeBytes(whole.dtype);
  size_t run = size_t(part.shape[axis] * inner) * element;
  auto *w = static_cast<char *>(whole.data);
  auto *p = static_cast<char *>(part.data);
  for (int64_t o = 0; o < outer; ++o) {
    char *inWhole =
        w + size_t((o * whole.shape[axis] + offset) * inner) * element;
    char *inPart = p + size_t(o) * run;
    if (toWhole)
      std::memcpy(inWhole, inPart, run);
    else
      std::memcpy(inPart, inWhole, run);
  }
}
} // namespace

Status CpuDevice::slice(const DeviceTensor &x, int axis, int64_t offset,
                        DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::axisPart("slice", x, axis, offset, y));
  copyAxisPart(x, axis, offset, y, false);
  return Status::ok();
}

Status CpuDevice::place(const DeviceTensor &x, int axis, int64_t offset,
                        DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::axisPart("place", y, axis, offset, x));
  copyAxisPart(y, axis, offset, x, true);
  return Status::ok();
}

Status CpuDevice::latentCacheAppend(const DeviceTensor &latent,
                                    const DeviceTensor &ropeKey,
                                    const DeviceTensor &positions,
                                    DeviceTensor &cache) {
  MELT_RETURN_IF_ERROR(
      check::latentCacheAppend(latent, ropeKey, positions, cache));
  int64_t t = latent.rows(), l = latent.cols(), width = cache.shape[1];
  int64_t r = width - l, capacity = cache.shape[0];
  auto *pos = static_cast<const int32_t *>(positions.data);
  auto *c = static_cast<float *>(cache.data);
  for (int64_t i = 0; i < t; ++i) {
    if (pos[i] < 0 || pos[i] >= capacity)
      return {MELT_RESOURCE_EXHAUSTED,
              "latent_cache_append: position " + std::to_string(pos[i]) +
                  " is outside the cache of " + std::to_string(capacity)};
    std::memcpy(c + pos[i] * width,
                static_cast<const float *>(latent.data) + i * l,
                size_t(l) * sizeof(float));
    std::memcpy(c + pos[i] * width + l,
                static_cast<const float *>(ropeKey.data) + i * r,
                size_t(r) * sizeof(float));
  }
  return Status::ok();
}

Status CpuDevice::mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
                      const DeviceTensor &cache, const DeviceTensor &positions,
                      const DeviceTensor &wUk, const DeviceTensor &wUv,
                      float scale, DeviceTensor &out) {
  MELT_RETURN_IF_ERROR(
      check::mla(qNope, qRope, cache, positions, wUk, wUv, out));
  int64_t T = qNope.shape[0], H = qNope.shape[1], N = qNope.shape[2],
          R = qRope.shape[2], L = wUk.shape[2], V = wUv.shape[1],
          width = cache.shape[1];
  auto *pos = static_cast<const int32_t *>(positions.data);
  auto *c = static_cast<const float *>(cache.data);
  MlaHeadScratch head;
  for (int64_t t = 0; t < T; ++t) {
    int64_t visible = int64_t(pos[t]) + 1;
    if (visible <= 0 || visible > cache.shape[0])
      return invalidArgument("mla: position " + std::to_string(pos[t]) +
                             " is outside the cache");
    for (int64_t h = 0; h < H; ++h)
      absorbedMlaHead(
          static_cast<const float *>(qNope.data) + (t * H + h) * N,
          static_cast<const float *>(qRope.data) + (t * H + h) * R,
          static_cast<const float *>(wUk.data) + h * N * L,
          static_cast<const float *>(wUv.data) + h * V * L, N, R, L, V, visible,
          scale, [&](int64_t s) { return c + s * width; },
          [&](int64_t s) { return c + s * width + L; }, head,
          static_cast<float *>(out.data) + (t * H + h) * V);
  }
  return Status::ok();
}

Status CpuDevice::moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                             const DeviceTensor &weights,
                             const DeviceTensor &gate, const DeviceTensor &up,
                             const DeviceTensor &down, bool combineBf16,
                             DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(
      check::moeExperts(x, indices, weights, gate, up, down, y));
  int64_t T = x.shape[0], D = x.shape[1], E = gate.shape[0], I = gate.shape[1],
          K = indices.shape[1];
  auto *xs = static_cast<const float *>(x.data);
  auto *idx = static_cast<const int32_t *>(indices.data);
  auto *w = static_cast<const float *>(weights.data);
  auto *g = static_cast<const float *>(gate.data);
  auto *u = static_cast<const float *>(up.data);
  auto *d = static_cast<const float *>(down.data);
  auto *ys = static_cast<float *>(y.data);
  std::vector<float> act(I), out(D);
  std::fill(ys, ys + T * D, 0.f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      int64_t e = idx[t * K + k];
      if (e < 0 || e >= E)
        return invalidArgument("moe_experts: expert " + std::to_string(e) +
                               " is outside the " + std::to_string(E) +
                               " experts");
      const float *xt = xs + t * D;
      for (int64_t i = 0; i < I; ++i) {
        float a = dot(xt, g + (e * I + i) * D, D);
        act[i] = a / (1.f + std::exp(-a)) * dot(xt, u + (e * I + i) * D, D);
      }
      for (int64_t j = 0; j < D; ++j) {
        out[j] = dot(act.data(), d + (e * D + j) * I, I);
        if (combineBf16)
          out[j] = bf16ToFloat(floatToBF16(out[j]));
      }
      axpy(w[t * K + k], out.data(), ys + t * D, D);
    }
  return Status::ok();
}

//===- CpuDevice.cpp - the CPU device -------------------------------------===//
#include "CpuDevice.h"

#include "CpuTensorAccess.h"
#include "Greedy.h"
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

using cpu::floats;
using cpu::load;
using cpu::store;

namespace {

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

/// y[t, n] = sum_k x[t, k] W[n, k], accumulated in f32.
void matmulRows(const float *x, int64_t rows, int64_t in, const float *w,
                int64_t out, float *y) {
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t n = 0; n < out; ++n)
      y[t * out + n] = dot(x + t * in, w + n * in, in);
}

void rmsNormRow(const float *x, const float *scale, int64_t n, float eps,
                float *y) {
  double sum = dot(x, x, n);
  float inv = static_cast<float>(1.0 / std::sqrt(sum / double(n) + eps));
  for (int64_t i = 0; i < n; ++i)
    y[i] = scale[i] * (x[i] * inv);
}

/// y = x W^T for f32 x and y: the weight's prepacked GEMM where it has one.
Status multiply(const float *x, int64_t m, int64_t k, const DeviceTensor &w,
                int64_t matrix, float *y) {
  int64_t n = w.shape[w.shape.size() - 2];
  const WeightData *weight = cpu::weightOf(w);
  if (weight && int64_t(weight->gemms.size()) > matrix)
    return weight->gemms[size_t(matrix)]->multiply(x, m, y);
  if (w.dtype == DType::BF16 && w.data) {
    // BF16 operands: x rounded, W widened, f32 accumulation.
    std::vector<float> xs(x, x + m * k), ws(size_t(n * k));
    for (float &v : xs)
      v = bf16ToFloat(floatToBF16(v));
    for (int64_t i = 0; i < n * k; ++i)
      ws[size_t(i)] = load(w, matrix * n * k + i);
    matmulRows(xs.data(), m, k, ws.data(), n, y);
    return Status::ok();
  }
  const float *values = floats(w);
  if (!values)
    return invalidArgument("linear: the weight has neither values nor a "
                           "prepared GEMM");
  matmulRows(x, m, k, values + matrix * n * k, n, y);
  return Status::ok();
}

/// y = op(a, b) element by element; `op` a lambda, so that the f32 loop
/// inlines it (and vectorizes where it can).
template <typename Op>
Status elementwise(const char *kernel, const DeviceTensor &a,
                   const DeviceTensor &b, DeviceTensor &y, Op op) {
  MELT_RETURN_IF_ERROR(check::floatType(kernel, "a", a));
  MELT_RETURN_IF_ERROR(check::floatType(kernel, "b", b));
  MELT_RETURN_IF_ERROR(check::floatType(kernel, "y", y));
  MELT_RETURN_IF_ERROR(check::sameShape(kernel, a, b));
  MELT_RETURN_IF_ERROR(check::sameShape(kernel, a, y));
  const float *fa = floats(a), *fb = floats(b);
  if (float *fy = floats(y); fa && fb && fy) {
    for (int64_t i = 0; i < a.numel(); ++i)
      fy[i] = op(fa[i], fb[i]);
    return Status::ok();
  }
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

Status CpuDevice::importWeight(const WeightData &weight, DeviceTensor &out) {
  out = DeviceTensor();
  out.dtype = DType::F32;
  out.shape = weight.shape;
  out.data =
      weight.data.empty() ? nullptr : const_cast<float *>(weight.data.data());
  out.prepared = &weight;
  return Status::ok();
}

void CpuDevice::release(DeviceTensor &tensor) {
  if (tensor.prepared) { // the model's memory
    tensor.data = nullptr;
    return;
  }
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
  // x's rows may lie further apart than its columns (a part left in place).
  const int64_t pitch = x.rowPitch ? x.rowPitch : cols;
  const float *fx = floats(x), *fg = floats(gamma);
  if (float *fy = floats(y); fx && fg && fy) {
    for (int64_t r = 0; r < rows; ++r)
      rmsNormRow(fx + r * pitch, fg, cols, eps, fy + r * cols);
    return Status::ok();
  }
  if (!gamma.data)
    return invalidArgument("rms_norm: gamma has no values");
  std::vector<float> g = toFloats(gamma);
  for (int64_t r = 0; r < rows; ++r) {
    float sum = 0.f;
    for (int64_t c = 0; c < cols; ++c) {
      float v = load(x, r * pitch + c);
      sum += v * v;
    }
    float scale = 1.f / std::sqrt(sum / float(cols) + eps);
    for (int64_t c = 0; c < cols; ++c)
      store(y, r * cols + c, load(x, r * pitch + c) * scale * g[size_t(c)]);
  }
  return Status::ok();
}

Status CpuDevice::linear(const DeviceTensor &x, const DeviceTensor &w,
                         DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::linear(x, w, y));
  int64_t m = x.rows(), k = x.cols(), n = w.rows();
  if (w.dtype == DType::FP8E4M3)
    return invalidArgument("linear: the cpu device keeps fp8 weights in f32 "
                           "(importWeight); an fp8 tensor has no scales");
  if (w.dtype == DType::F32 && (w.data || w.prepared)) {
    // f32 operands in place; others converted around the GEMM.
    std::vector<float> xs, ys;
    const float *in = floats(x);
    if (!in) {
      xs = toFloats(x);
      in = xs.data();
    }
    float *out = floats(y);
    if (!out) {
      ys.resize(size_t(m * n));
      out = ys.data();
    }
    MELT_RETURN_IF_ERROR(multiply(in, m, k, w, 0, out));
    for (size_t i = 0; i < ys.size(); ++i)
      store(y, int64_t(i), ys[i]);
    return Status::ok();
  }
  std::vector<float> xs = toFloats(x), ws = toFloats(w);
  if (w.dtype == DType::BF16) // an f32 input to a bf16 weight: rounded
    for (float &v : xs)
      v = bf16ToFloat(floatToBF16(v));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      store(y, i * n + j, dot(xs.data() + i * k, ws.data() + j * k, k));
  return Status::ok();
}

Status CpuDevice::roundToBf16(DeviceTensor &x) {
  MELT_RETURN_IF_ERROR(check::roundToBf16(x));
  float *values = static_cast<float *>(x.data);
  for (int64_t i = 0; i < x.numel(); ++i)
    values[i] = bf16ToFloat(floatToBF16(values[i]));
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
    const float *row = floats(table), *none = nullptr;
    if (float *out = floats(y); row != none && out) {
      std::memcpy(out + t * hidden, row + int64_t(id[t]) * hidden,
                  size_t(hidden) * sizeof(float));
      continue;
    }
    if (!table.data)
      return invalidArgument("embedding: the table has no values");
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
  // cos and sin once per token (in double: positions reach 10^5 and
  // more), then every head of it.
  std::vector<double> cosines(size_t(dim / 2)), sines(size_t(dim / 2));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < dim / 2; ++i) {
      cosines[size_t(i)] = std::cos(pos[t] * inv[size_t(i)]) * mscale;
      sines[size_t(i)] = std::sin(pos[t] * inv[size_t(i)]) * mscale;
    }
    for (int64_t r = 0; r < rows; ++r) {
      int64_t base = (t * rows + r) * dim;
      for (int64_t i = 0; i < dim / 2; ++i) {
        double c = cosines[size_t(i)], s = sines[size_t(i)];
        int64_t a = params.interleaved ? 2 * i : i,
                b = params.interleaved ? 2 * i + 1 : i + dim / 2;
        float xa = load(x, base + a), xb = load(x, base + b);
        store(y, base + a, float(xa * c - xb * s));
        store(y, base + b, float(xb * c + xa * s));
      }
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
/// Copies `part` to or from its place in `whole` along `axis` (whole's
/// rows `whole.rowPitch` elements apart where it has one: a [rows, cols]
/// part of a wider matrix).
void copyAxisPart(const DeviceTensor &whole, int axis, int64_t offset,
                  const DeviceTensor &part, bool toWhole) {
  int64_t outer, inner;
  check::axisExtents(whole.shape, axis, outer, inner);
  size_t element = dtypeBytes(whole.dtype);
  size_t run = size_t(part.shape[axis] * inner) * element;
  // Elements from one outer index's start to the next's in whole.
  const int64_t stride =
      whole.rowPitch ? whole.rowPitch : whole.shape[axis] * inner;
  auto *w = static_cast<char *>(whole.data);
  auto *p = static_cast<char *>(part.data);
  for (int64_t o = 0; o < outer; ++o) {
    char *inWhole = w + size_t(o * stride + offset * inner) * element;
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

Status CpuDevice::moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                             const DeviceTensor &weights,
                             const DeviceTensor &gate, const DeviceTensor &up,
                             const DeviceTensor &down, bool combineBf16,
                             DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(
      check::moeExperts(x, indices, weights, gate, up, down, y));
  int64_t T = x.shape[0], D = x.shape[1], E = gate.shape[0], I = gate.shape[1],
          K = indices.shape[1];
  const int32_t *idx = cpu::ints(indices);
  const float *w = floats(weights), *xs = floats(x);
  float *ys = floats(y);
  // Tokens grouped by expert: one GEMM per active expert over all its
  // tokens (the prepacked one of each matrix where the weights have them),
  // then a weighted scatter-add.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(
      static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      int64_t e = idx[t * K + k];
      if (e < 0 || e >= E)
        return invalidArgument("moe_experts: expert " + std::to_string(e) +
                               " is outside the " + std::to_string(E) +
                               " experts");
      routed[size_t(e)].push_back({t, w[t * K + k]});
    }
  std::fill(ys, ys + T * D, 0.f);
  std::vector<float> gathered, g, u, out;
  for (int64_t e = 0; e < E; ++e) {
    const auto &tokens = routed[size_t(e)];
    int64_t m = int64_t(tokens.size());
    if (m == 0)
      continue;
    gathered.resize(size_t(m * D));
    g.resize(size_t(m * I));
    u.resize(size_t(m * I));
    out.resize(size_t(m * D));
    for (int64_t r = 0; r < m; ++r)
      std::memcpy(gathered.data() + r * D, xs + tokens[size_t(r)].first * D,
                  size_t(D) * sizeof(float));
    MELT_RETURN_IF_ERROR(multiply(gathered.data(), m, D, gate, e, g.data()));
    MELT_RETURN_IF_ERROR(multiply(gathered.data(), m, D, up, e, u.data()));
    for (int64_t i = 0; i < m * I; ++i)
      g[size_t(i)] =
          g[size_t(i)] / (1.f + std::exp(-g[size_t(i)])) * u[size_t(i)];
    MELT_RETURN_IF_ERROR(multiply(g.data(), m, I, down, e, out.data()));
    if (combineBf16)
      for (float &v : out)
        v = bf16ToFloat(floatToBF16(v));
    for (int64_t r = 0; r < m; ++r)
      axpy(tokens[size_t(r)].second, out.data() + r * D,
           ys + tokens[size_t(r)].first * D, D);
  }
  return Status::ok();
}

Status CpuDevice::quantizeBlocks(const DeviceTensor &x, int64_t block,
                                 DeviceTensor &q, DeviceTensor &scales) {
  MELT_RETURN_IF_ERROR(check::quantizeBlocks(x, block, q, scales));
  int64_t T = x.shape[0], K = x.shape[1], blocks = scales.shape[1];
  const float *xs = floats(x);
  float *s = floats(scales);
  auto *out = static_cast<uint8_t *>(q.data);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      int64_t c0 = b * block, c1 = std::min(K, c0 + block);
      float amax = 0.f;
      for (int64_t c = c0; c < c1; ++c)
        amax = std::max(amax, std::fabs(xs[t * K + c]));
      float scale = std::max(amax, 1e-12f) / kFp8E4M3Max;
      s[t * blocks + b] = scale;
      for (int64_t c = c0; c < c1; ++c)
        out[t * K + c] = floatToFp8E4M3(xs[t * K + c] / scale);
    }
  return Status::ok();
}

Status CpuDevice::dequantizeBlocks(const DeviceTensor &q,
                                   const DeviceTensor &scales, int64_t block,
                                   DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(check::quantizeBlocks(y, block, q, scales));
  int64_t T = q.shape[0], K = q.shape[1], blocks = scales.shape[1];
  const float *s = floats(scales);
  auto *in = static_cast<const uint8_t *>(q.data);
  float *out = floats(y);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < K; ++c)
      out[t * K + c] =
          fp8E4M3ToFloat(in[t * K + c]) * s[t * blocks + c / block];
  return Status::ok();
}

Status CpuDevice::argmaxRows(const DeviceTensor &logits, DeviceTensor &ids) {
  MELT_RETURN_IF_ERROR(check::argmaxRows(logits, ids));
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  const float *x = static_cast<const float *>(logits.data);
  int32_t *out = static_cast<int32_t *>(ids.data);
  for (int64_t r = 0; r < rows; ++r)
    out[r] = int32_t(greedyIndex(x + r * vocab, size_t(vocab)));
  return Status::ok();
}

Status CpuDevice::sampleRows(const DeviceTensor &logits,
                             const SamplingParams &params,
                             const DeviceTensor &draws, DeviceTensor &ids) {
  MELT_RETURN_IF_ERROR(check::sampleRows(logits, params, draws, ids));
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  const float *x = static_cast<const float *>(logits.data);
  const uint32_t *words = static_cast<const uint32_t *>(draws.data);
  int32_t *out = static_cast<int32_t *>(ids.data);
  for (int64_t r = 0; r < rows; ++r) {
    out[r] = sampleToken(x + r * vocab, size_t(vocab), params,
                         drawOfWords(words + 2 * r));
  }
  return Status::ok();
}

//===- Device.cpp - device registry and the kernels' shared checks --------===//
#include "Device.h"

#include "CpuDevice.h"
#ifdef MELT_HAVE_CUDA_DEVICE
#include "cuda/CudaDevice.h"
#endif

using namespace melt::rt;

size_t melt::rt::dtypeBytes(DType type) {
  switch (type) {
  case DType::F32:
  case DType::I32:
    return 4;
  case DType::BF16:
    return 2;
  case DType::FP8E4M3:
    return 1;
  }
  return 0;
}

const char *melt::rt::dtypeName(DType type) {
  switch (type) {
  case DType::F32:
    return "f32";
  case DType::BF16:
    return "bf16";
  case DType::FP8E4M3:
    return "f8E4M3FN";
  case DType::I32:
    return "i32";
  }
  return "?";
}

std::vector<std::string> melt::rt::availableDevices() {
  std::vector<std::string> names = {"cpu"};
#ifdef MELT_HAVE_CUDA_DEVICE
  for (int i = 0, n = cudaDeviceCount(); i < n; ++i)
    names.push_back("cuda:" + std::to_string(i));
#endif
  return names;
}

Status melt::rt::openDevice(const std::string &name,
                            std::unique_ptr<Device> &out) {
  if (name == "cpu") {
    out = std::make_unique<CpuDevice>();
    return Status::ok();
  }
  if (name.rfind("cuda", 0) == 0) {
#ifdef MELT_HAVE_CUDA_DEVICE
    int index = 0;
    if (name.size() > 4) {
      if (name[4] != ':' || name.size() == 5 ||
          name.find_first_not_of("0123456789", 5) != std::string::npos)
        return invalidArgument("device '" + name +
                               "': expected cuda or cuda:N");
      index = std::stoi(name.substr(5));
    }
    return openCudaDevice(index, out);
#else
    return {MELT_UNSUPPORTED,
            "device '" + name + "': this runtime was built without CUDA"};
#endif
  }
  return invalidArgument("unknown device '" + name +
                         "' (devices: cpu, cuda:N)");
}

Status Device::importWeight(const WeightData &weight, DeviceTensor &out) {
  int64_t count = 1;
  for (int64_t d : weight.shape)
    count *= d;
  if (int64_t(weight.data.size()) != count)
    return invalidArgument("a weight of " + std::to_string(count) +
                           " values has no host copy to upload: load the "
                           "model with keepHostData for " +
                           name());
  MELT_RETURN_IF_ERROR(allocate(DType::F32, weight.shape, out));
  Status status = upload(weight.data.data(), out);
  if (status)
    release(out);
  return status;
}

Status Device::linearOfSiluMul(const DeviceTensor &gate, const DeviceTensor &up,
                               const DeviceTensor &w, DeviceTensor &y) {
  DeviceTensor product;
  MELT_RETURN_IF_ERROR(allocate(DType::F32, gate.shape, product));
  Status status = siluMul(gate, up, product);
  if (!status)
    status = linear(product, w, y);
  release(product);
  return status;
}

Status Device::siluMulOfProducts(const DeviceTensor &x,
                                 const DeviceTensor &wGate,
                                 const DeviceTensor &wUp, bool roundProducts,
                                 DeviceTensor &y) {
  if (x.shape.size() != 2 || wGate.shape.size() != 2 ||
      wGate.shape != wUp.shape)
    return invalidArgument("silu_mul of products: x must be [rows, K] and "
                           "gate and up weights of one shape [N, K]");
  DeviceTensor gate, up;
  Status status = allocate(DType::F32, {x.shape[0], wGate.shape[0]}, gate);
  if (!status)
    status = allocate(DType::F32, gate.shape, up);
  if (!status)
    status = linear(x, wGate, gate);
  if (!status)
    status = linear(x, wUp, up);
  if (!status && roundProducts)
    status = roundToBf16(gate);
  if (!status && roundProducts)
    status = roundToBf16(up);
  if (!status)
    status = siluMul(gate, up, y);
  if (gate.data)
    release(gate);
  if (up.data)
    release(up);
  return status;
}

Status Device::quantizedRoundTrip(const DeviceTensor &x,
                                  DeviceTensor &dequantized) {
  if (x.shape.size() != 2)
    return invalidArgument("quantize: x must be [rows, cols]");
  const int64_t rows = x.shape[0], cols = x.shape[1];
  DeviceTensor q, scales;
  Status status = allocate(DType::FP8E4M3, {rows, cols}, q);
  if (!status)
    status = allocate(DType::F32, {rows, (cols + 127) / 128}, scales);
  if (!status)
    status = allocate(DType::F32, {rows, cols}, dequantized);
  if (!status)
    status = quantizeBlocks(x, 128, q, scales);
  if (!status)
    status = dequantizeBlocks(q, scales, 128, dequantized);
  release(q);
  release(scales);
  if (status)
    release(dequantized);
  return status;
}

Status Device::moeExpertsOfQuantized(const DeviceTensor &x,
                                     const DeviceTensor &indices,
                                     const DeviceTensor &weights,
                                     const DeviceTensor &gate,
                                     const DeviceTensor &up,
                                     const DeviceTensor &down, bool combineBf16,
                                     DeviceTensor &y) {
  DeviceTensor dequantized;
  MELT_RETURN_IF_ERROR(quantizedRoundTrip(x, dequantized));
  Status status =
      moeExperts(dequantized, indices, weights, gate, up, down, combineBf16, y);
  release(dequantized);
  return status;
}

Status Device::moeExpertsWithShared(
    const DeviceTensor &x, const DeviceTensor &indices,
    const DeviceTensor &weights, const DeviceTensor &gate,
    const DeviceTensor &up, const DeviceTensor &down, bool combineBf16,
    bool quantizedX, const SharedExpert &shared, DeviceTensor &y) {
  if (!shared.gate || !shared.up || !shared.down)
    return invalidArgument("moe_experts: a shared expert needs its gate, up "
                           "and down weights");
  if (x.shape.size() != 2)
    return invalidArgument("moe_experts: x must be [tokens, hidden]");
  const int64_t T = x.shape[0];
  // Every tensor of the calls below, released together at the end.
  std::vector<DeviceTensor> made;
  auto make = [&](std::vector<int64_t> shape, DeviceTensor *&t) {
    made.emplace_back();
    t = &made.back();
    return allocate(DType::F32, std::move(shape), *t);
  };
  made.reserve(5);
  DeviceTensor *routed = nullptr, *g = nullptr, *u = nullptr, *d = nullptr;
  // A linear as the executor runs it: the output rounded to BF16 where its
  // precision says so and the device kept more.
  auto product = [&](const DeviceTensor &in, const DeviceTensor &w, bool round,
                     DeviceTensor &out) {
    Status s = linear(in, w, out);
    return !s && round && !linearOutputsBf16(w) ? roundToBf16(out) : s;
  };
  Status status = make(x.shape, routed);
  if (!status)
    status = quantizedX ? moeExpertsOfQuantized(x, indices, weights, gate, up,
                                                down, combineBf16, *routed)
                        : moeExperts(x, indices, weights, gate, up, down,
                                     combineBf16, *routed);
  if (!status)
    status = make({T, shared.gate->shape[0]}, g);
  if (!status)
    status = product(x, *shared.gate, shared.roundGateUp, *g);
  if (!status)
    status = make({T, shared.up->shape[0]}, u);
  if (!status)
    status = product(x, *shared.up, shared.roundGateUp, *u);
  if (!status)
    status = make({T, shared.down->shape[0]}, d);
  if (!status && fusesSiluMulInto(*shared.down)) {
    status = linearOfSiluMul(*g, *u, *shared.down, *d);
    if (!status && shared.roundDown && !linearOutputsBf16(*shared.down))
      status = roundToBf16(*d);
  } else if (!status) {
    DeviceTensor *s = nullptr;
    status = make(g->shape, s);
    if (!status)
      status = siluMul(*g, *u, *s);
    if (!status)
      status = product(*s, *shared.down, shared.roundDown, *d);
  }
  if (!status)
    status = add(*routed, *d, y);
  for (DeviceTensor &t : made)
    release(t);
  return status;
}

Status Device::gatherParts(const std::vector<DeviceTensor> &parts,
                           int64_t offset, DeviceTensor &into) {
  DeviceTensor flatInto = into;
  flatInto.shape = {into.numel()};
  for (const DeviceTensor &part : parts) {
    DeviceTensor flat = part;
    flat.shape = {part.numel()};
    MELT_RETURN_IF_ERROR(place(flat, 0, offset, flatInto));
    offset += flat.numel();
  }
  return Status::ok();
}

Status Device::mlaOfQuery(const DeviceTensor &q, int64_t nope,
                          const DeviceTensor &positions, const RopeParams &rope,
                          const DeviceTensor &cache, const CacheLayout &layout,
                          const DeviceTensor &wUk, const DeviceTensor &wUv,
                          float scale, int64_t decompressAbove,
                          DeviceTensor &out) {
  if (q.shape.size() != 3 || nope <= 0 || nope >= q.shape[2])
    return invalidArgument("mla: the query must be [tokens, heads, nope + "
                           "rope] with both parts there");
  const int64_t T = q.shape[0], H = q.shape[1], R = q.shape[2] - nope;
  DeviceTensor qNope, qRope, rotated;
  Status status = allocate(DType::F32, {T, H, nope}, qNope);
  if (!status)
    status = allocate(DType::F32, {T, H, R}, qRope);
  if (!status)
    status = allocate(DType::F32, {T, H, R}, rotated);
  if (!status)
    status = slice(q, 2, 0, qNope);
  if (!status)
    status = slice(q, 2, nope, qRope);
  if (!status)
    status = this->rope(qRope, positions, rope, rotated);
  if (!status)
    status = mla(qNope, rotated, cache, layout, wUk, wUv, scale,
                 decompressAbove, out);
  release(qNope);
  release(qRope);
  release(rotated);
  return status;
}

namespace {

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status expect(bool ok, const char *kernel, const std::string &what) {
  return ok ? Status::ok() : invalidArgument(std::string(kernel) + ": " + what);
}

} // namespace

Status check::sameShape(const char *kernel, const DeviceTensor &a,
                        const DeviceTensor &b) {
  return expect(a.shape == b.shape, kernel,
                "shapes " + shapeString(a.shape) + " and " +
                    shapeString(b.shape) + " differ");
}

Status check::floatType(const char *kernel, const char *operand,
                        const DeviceTensor &t) {
  return expect(t.dtype == DType::F32 || t.dtype == DType::BF16, kernel,
                std::string(operand) + " must be f32 or bf16, not " +
                    dtypeName(t.dtype));
}

Status check::rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma,
                      const DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(floatType("rms_norm", "x", x));
  MELT_RETURN_IF_ERROR(floatType("rms_norm", "gamma", gamma));
  MELT_RETURN_IF_ERROR(floatType("rms_norm", "y", y));
  MELT_RETURN_IF_ERROR(sameShape("rms_norm", x, y));
  return expect(x.shape.size() == 2 && gamma.numel() == x.cols(), "rms_norm",
                "gamma " + shapeString(gamma.shape) + " does not match rows " +
                    shapeString(x.shape));
}

Status check::linear(const DeviceTensor &x, const DeviceTensor &w,
                     const DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(floatType("linear", "x", x));
  MELT_RETURN_IF_ERROR(floatType("linear", "y", y));
  // An f32 input to a bf16 weight is rounded to bf16 first; an f32 or
  // bf16 one to an fp8 weight (a device's imported FP8 weight) quantized in
  // 1x128 blocks.
  MELT_RETURN_IF_ERROR(
      expect(w.dtype == x.dtype ||
                 ((w.dtype == DType::BF16 || w.dtype == DType::FP8E4M3) &&
                  x.dtype == DType::F32) ||
                 (w.dtype == DType::FP8E4M3 && x.dtype == DType::BF16),
             "linear",
             std::string("weight ") + dtypeName(w.dtype) + " and input " +
                 dtypeName(x.dtype) + " differ"));
  return expect(x.shape.size() == 2 && w.shape.size() == 2 &&
                    y.shape.size() == 2 && x.shape[1] == w.shape[1] &&
                    y.shape[0] == x.shape[0] && y.shape[1] == w.shape[0],
                "linear",
                "x " + shapeString(x.shape) + ", w " + shapeString(w.shape) +
                    ", y " + shapeString(y.shape) +
                    " are not [M, K], [N, K], [M, N]");
}

Status check::quantizeFp8(const DeviceTensor &x, const DeviceTensor &q,
                          const DeviceTensor &scales) {
  MELT_RETURN_IF_ERROR(floatType("quantize_fp8", "x", x));
  int64_t m = x.rows(), k = x.cols();
  return expect(
      x.shape.size() == 2 && k % 128 == 0 && q.dtype == DType::FP8E4M3 &&
          q.shape == x.shape && scales.dtype == DType::F32 &&
          scales.shape == std::vector<int64_t>{k / 128, m},
      "quantize_fp8",
      "x " + shapeString(x.shape) +
          " (K a multiple of 128) needs q f8E4M3FN of its shape "
          "and scales f32 [K/128, M], got q " +
          dtypeName(q.dtype) + " " + shapeString(q.shape) + ", scales " +
          dtypeName(scales.dtype) + " " + shapeString(scales.shape));
}

Status check::linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                        const DeviceTensor &w, const DeviceTensor &wScales,
                        const DeviceTensor &y) {
  int64_t m = q.rows(), k = q.cols(), n = w.rows();
  return expect(
      q.dtype == DType::FP8E4M3 && w.dtype == DType::FP8E4M3 &&
          scales.dtype == DType::F32 && wScales.dtype == DType::F32 &&
          y.dtype == DType::BF16 && q.shape.size() == 2 &&
          w.shape.size() == 2 && w.cols() == k && k % 128 == 0 && n % 16 == 0 &&
          scales.shape == std::vector<int64_t>{k / 128, m} &&
          wScales.shape == std::vector<int64_t>{(n + 127) / 128, k / 128} &&
          y.shape == std::vector<int64_t>{m, n},
      "linear_fp8",
      "needs q f8E4M3FN [M, K] (K a multiple of 128), scales f32 "
      "[K/128, M], w f8E4M3FN [N, K] (N a multiple of 16), w "
      "scales f32 [ceil(N/128), K/128], y bf16 [M, N]; got q " +
          shapeString(q.shape) + ", scales " + shapeString(scales.shape) +
          ", w " + shapeString(w.shape) + ", w scales " +
          shapeString(wScales.shape) + ", y " + dtypeName(y.dtype) + " " +
          shapeString(y.shape));
}

Status check::embedding(const DeviceTensor &ids, const DeviceTensor &table,
                        const DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(floatType("embedding", "table", table));
  MELT_RETURN_IF_ERROR(floatType("embedding", "y", y));
  return expect(ids.dtype == DType::I32 && ids.shape.size() == 1 &&
                    table.shape.size() == 2 &&
                    y.shape ==
                        std::vector<int64_t>{ids.shape[0], table.shape[1]},
                "embedding",
                "needs ids i32 [T], a table [V, H] and y [T, H]; got ids " +
                    std::string(dtypeName(ids.dtype)) + " " +
                    shapeString(ids.shape) + ", table " +
                    shapeString(table.shape) + ", y " + shapeString(y.shape));
}

Status check::rope(const DeviceTensor &x, const DeviceTensor &positions,
                   const RopeParams &params, const DeviceTensor &y) {
  MELT_RETURN_IF_ERROR(floatType("rope", "x", x));
  MELT_RETURN_IF_ERROR(floatType("rope", "y", y));
  MELT_RETURN_IF_ERROR(sameShape("rope", x, y));
  MELT_RETURN_IF_ERROR(expect(
      (x.shape.size() == 2 || x.shape.size() == 3) && x.shape.back() % 2 == 0 &&
          positions.dtype == DType::I32 && positions.shape.size() == 1 &&
          positions.shape[0] == x.shape[0],
      "rope",
      "needs x [T, D] or [T, H, D] with D even and i32 positions [T]; got x " +
          shapeString(x.shape) + ", positions " +
          std::string(dtypeName(positions.dtype)) + " " +
          shapeString(positions.shape)));
  return expect(
      params.theta > 0 &&
          (!params.yarn ||
           (params.originalMax > 0 && params.factor >= 1 &&
            params.betaFast > params.betaSlow && params.betaSlow > 0)),
      "rope", "invalid RoPE parameters");
}

Status check::routeExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                           const RouterParams &params,
                           const DeviceTensor &indices,
                           const DeviceTensor &weights) {
  int64_t t = logits.rows(), e = logits.cols();
  MELT_RETURN_IF_ERROR(expect(
      logits.dtype == DType::F32 && logits.shape.size() == 2 &&
          (!bias || (bias->dtype == DType::F32 &&
                     bias->shape == std::vector<int64_t>{e})),
      "route_experts",
      "needs f32 logits [T, E] and an f32 bias [E]; got logits " +
          shapeString(logits.shape) +
          (bias ? ", bias " + shapeString(bias->shape) : std::string())));
  MELT_RETURN_IF_ERROR(
      expect(validRouting(params, e), "route_experts",
             "top_k " + std::to_string(params.topK) + ", n_group " +
                 std::to_string(params.nGroup) + ", topk_group " +
                 std::to_string(params.topkGroup) + " do not fit " +
                 std::to_string(e) + " experts"));
  std::vector<int64_t> out = {t, params.topK};
  return expect(indices.dtype == DType::I32 && indices.shape == out &&
                    weights.dtype == DType::F32 && weights.shape == out,
                "route_experts",
                "needs indices i32 and weights f32 of shape " +
                    shapeString(out));
}

void check::axisExtents(const std::vector<int64_t> &shape, int axis,
                        int64_t &outer, int64_t &inner) {
  outer = inner = 1;
  for (int d = 0; d < axis; ++d)
    outer *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d)
    inner *= shape[d];
}

Status check::copy(const DeviceTensor &x, const DeviceTensor &y) {
  return expect(x.bytes() == y.bytes(), "copy",
                std::string(dtypeName(x.dtype)) + " " + shapeString(x.shape) +
                    " and " + dtypeName(y.dtype) + " " + shapeString(y.shape) +
                    " differ in size");
}

Status check::roundToBf16(const DeviceTensor &x) {
  return expect(x.dtype == DType::F32, "round_to_bf16",
                std::string("x must be f32, not ") + dtypeName(x.dtype));
}

Status check::axisPart(const char *kernel, const DeviceTensor &whole, int axis,
                       int64_t offset, const DeviceTensor &part) {
  bool ok = whole.dtype == part.dtype && axis >= 0 &&
            size_t(axis) < whole.shape.size() &&
            whole.shape.size() == part.shape.size() && offset >= 0 &&
            offset + part.shape[axis] <= whole.shape[axis];
  for (size_t d = 0; ok && d < whole.shape.size(); ++d)
    ok = int(d) == axis || whole.shape[d] == part.shape[d];
  MELT_RETURN_IF_ERROR(expect(ok, kernel,
                              shapeString(part.shape) + " at " +
                                  std::to_string(offset) + " along axis " +
                                  std::to_string(axis) + " does not fit in " +
                                  shapeString(whole.shape)));
  // A part left in place (rows rowPitch apart) is cut along its columns
  // only.
  return expect(!whole.rowPitch || (whole.shape.size() == 2 && axis == 1 &&
                                    whole.rowPitch >= whole.shape[1]),
                kernel,
                "a part left in place (rows " + std::to_string(whole.rowPitch) +
                    " elements apart) cut along axis " + std::to_string(axis) +
                    " of " + shapeString(whole.shape));
}

Status check::cacheLayout(const char *kernel, const CacheLayout &layout,
                          int64_t tokens) {
  const DeviceTensor &p = layout.positions, &s = layout.sequences,
                     &pages = layout.pages, &n = layout.lengths;
  bool ok = p.dtype == DType::I32 && s.dtype == DType::I32 &&
            pages.dtype == DType::I32 && n.dtype == DType::I32 &&
            p.shape == std::vector<int64_t>{tokens} && s.shape == p.shape &&
            pages.shape.size() == 2 &&
            n.shape == std::vector<int64_t>{pages.shape[0]};
  return expect(ok, kernel,
                "needs an i32 cache layout: positions and sequences [" +
                    std::to_string(tokens) +
                    "], pages [B, P], lengths [B]; got positions " +
                    shapeString(p.shape) + ", sequences " +
                    shapeString(s.shape) + ", pages " +
                    shapeString(pages.shape) + ", lengths " +
                    shapeString(n.shape));
}

Status check::cacheAppend(const DeviceTensor &first, const DeviceTensor &second,
                          const CacheLayout &layout,
                          const DeviceTensor &cache) {
  int64_t t = first.rows(), a = first.cols();
  int64_t b = t ? second.numel() / t : 0;
  MELT_RETURN_IF_ERROR(cacheLayout("cache_append", layout, t));
  const bool cacheType =
      cache.dtype == DType::F32 || cache.dtype == DType::BF16;
  return expect(
      first.dtype == DType::F32 && second.dtype == DType::F32 && cacheType &&
          cache.shape.size() == 2 && cache.shape[1] == a + b &&
          second.rows() == t && cache.shape[0] % kPageTokens == 0,
      "cache_append",
      "needs f32 rows [T, A] and [T, B] and an f32 or bf16 cache [pages * " +
          std::to_string(kPageTokens) + ", A + B]; got " +
          shapeString(first.shape) + ", " + shapeString(second.shape) +
          ", cache " + shapeString(cache.shape));
}

Status check::attention(const DeviceTensor &q, const DeviceTensor &cache,
                        const CacheLayout &layout, int64_t kvHeads,
                        const DeviceTensor &out) {
  bool ok = q.dtype == DType::F32 && cache.dtype == DType::F32 &&
            out.dtype == DType::F32 && q.shape.size() == 3 &&
            out.shape.size() == 3 && cache.shape.size() == 2 && kvHeads > 0;
  if (ok) {
    int64_t T = q.shape[0], H = q.shape[1], Dk = q.shape[2], Dv = out.shape[2];
    ok = H % kvHeads == 0 && out.shape[0] == T && out.shape[1] == H &&
         cache.shape[1] == kvHeads * (Dk + Dv) &&
         cache.shape[0] % kPageTokens == 0;
  }
  MELT_RETURN_IF_ERROR(expect(
      ok, "attention",
      "needs f32 q [T, H, Dk], out [T, H, Dv] and a cache [rows, Hk * (Dk + "
      "Dv)] with H a multiple of Hk = " +
          std::to_string(kvHeads) + "; got q " + shapeString(q.shape) +
          ", cache " + shapeString(cache.shape) + ", out " +
          shapeString(out.shape)));
  return cacheLayout("attention", layout, q.shape[0]);
}

Status check::mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
                  const DeviceTensor &cache, const CacheLayout &layout,
                  const DeviceTensor &wUk, const DeviceTensor &wUv,
                  const DeviceTensor &out) {
  bool ok = qNope.shape.size() == 3 && qRope.shape.size() == 3 &&
            wUk.shape.size() == 3 && wUv.shape.size() == 3 &&
            cache.shape.size() == 2 && out.shape.size() == 3;
  for (const DeviceTensor *t : {&qNope, &qRope, &wUk, &wUv, &out})
    ok = ok && t->dtype == DType::F32;
  ok = ok && (cache.dtype == DType::F32 || cache.dtype == DType::BF16);
  if (ok) {
    int64_t T = qNope.shape[0], H = qNope.shape[1], N = qNope.shape[2],
            R = qRope.shape[2], L = wUk.shape[2], V = wUv.shape[1];
    ok = qRope.shape[0] == T && qRope.shape[1] == H &&
         wUk.shape == std::vector<int64_t>{H, N, L} && wUv.shape[0] == H &&
         wUv.shape[2] == L && cache.shape[1] == L + R &&
         cache.shape[0] % kPageTokens == 0 &&
         out.shape == std::vector<int64_t>{T, H, V};
  }
  MELT_RETURN_IF_ERROR(expect(
      ok, "mla",
      "needs f32 q_nope [T, H, N], q_rope [T, H, R], an f32 or bf16 cache "
      "[pages * " +
          std::to_string(kPageTokens) +
          ", L + R], W_UK [H, N, L], W_UV [H, V, L] and out [T, H, V]; got "
          "q_nope " +
          shapeString(qNope.shape) + ", q_rope " + shapeString(qRope.shape) +
          ", cache " + shapeString(cache.shape) + ", W_UK " +
          shapeString(wUk.shape) + ", W_UV " + shapeString(wUv.shape) +
          ", out " + shapeString(out.shape)));
  return cacheLayout("mla", layout, qNope.shape[0]);
}

Status check::quantizeBlocks(const DeviceTensor &x, int64_t block,
                             const DeviceTensor &q,
                             const DeviceTensor &scales) {
  bool ok = x.dtype == DType::F32 && q.dtype == DType::FP8E4M3 &&
            scales.dtype == DType::F32 && x.shape.size() == 2 && block > 0 &&
            q.shape == x.shape;
  if (ok)
    ok = scales.shape ==
         std::vector<int64_t>{x.shape[0], (x.shape[1] + block - 1) / block};
  return expect(ok, "quantize_blocks",
                "needs f32 x [T, K], fp8 q [T, K] and f32 scales [T, "
                "ceil(K / " +
                    std::to_string(block) + ")]; got x " +
                    shapeString(x.shape) + ", q " + shapeString(q.shape) +
                    ", scales " + shapeString(scales.shape));
}

Status check::moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                         const DeviceTensor &weights, const DeviceTensor &gate,
                         const DeviceTensor &up, const DeviceTensor &down,
                         const DeviceTensor &y) {
  bool ok = x.shape.size() == 2 && gate.shape.size() == 3 &&
            gate.shape == up.shape && down.shape.size() == 3 &&
            indices.shape.size() == 2 && weights.shape == indices.shape &&
            indices.dtype == DType::I32 && weights.dtype == DType::F32 &&
            y.shape == x.shape && x.dtype == DType::F32 &&
            y.dtype == DType::F32 &&
            (gate.dtype == DType::F32 || gate.dtype == DType::BF16 ||
             gate.dtype == DType::FP8E4M3) &&
            up.dtype == gate.dtype && down.dtype == gate.dtype;
  if (ok)
    ok = gate.shape[2] == x.shape[1] && down.shape[0] == gate.shape[0] &&
         down.shape[1] == x.shape[1] && down.shape[2] == gate.shape[1] &&
         indices.shape[0] == x.shape[0];
  return expect(
      ok, "moe_experts",
      "needs f32 x [T, D] and y [T, D], gate/up [E, I, D] and down "
      "[E, D, I] (all f32, all bf16 or all fp8), i32 indices and f32 weights "
      "[T, K]; got x " +
          shapeString(x.shape) + ", gate " + shapeString(gate.shape) +
          ", down " + shapeString(down.shape) + ", indices " +
          shapeString(indices.shape));
}

Status check::argmaxRows(const DeviceTensor &logits, const DeviceTensor &ids) {
  bool ok = logits.dtype == DType::F32 && logits.shape.size() == 2 &&
            logits.shape[1] > 0 && ids.dtype == DType::I32 &&
            ids.shape == std::vector<int64_t>{logits.shape[0]};
  return expect(ok, "argmax_rows",
                "needs f32 logits [R, V > 0] and i32 ids [R]; got logits " +
                    shapeString(logits.shape) + ", ids " +
                    shapeString(ids.shape));
}

Status check::sampleRows(const DeviceTensor &logits,
                         const SamplingParams &params,
                         const DeviceTensor &draws, const DeviceTensor &ids) {
  MELT_RETURN_IF_ERROR(checkSampling(params, "sample_rows"));
  if (params.temperature == 0.f)
    return invalidArgument(
        "sample_rows: temperature 0 is greedy (argmax_rows)");
  bool ok = logits.dtype == DType::F32 && logits.shape.size() == 2 &&
            logits.shape[1] > 0 && draws.dtype == DType::I32 &&
            draws.shape == std::vector<int64_t>{logits.shape[0], 2} &&
            ids.dtype == DType::I32 &&
            ids.shape == std::vector<int64_t>{logits.shape[0]};
  return expect(ok, "sample_rows",
                "needs f32 logits [R, V > 0], i32 draws [R, 2] and i32 ids "
                "[R]; got logits " +
                    shapeString(logits.shape) + ", draws " +
                    shapeString(draws.shape) + ", ids " +
                    shapeString(ids.shape));
}

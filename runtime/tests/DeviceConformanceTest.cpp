// The device conformance suite: every kernel of the Device interface, on
// every device present (the CPU always; CUDA GPUs where there are), against
// double-precision references computed here from the same (rounded) inputs,
// with F32 and BF16 operands; and the same clear errors for bad calls on
// every device. A new device passes this suite before the executor uses it.
#include "Device.h"
#include "melt/numerics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

using namespace melt;
using namespace melt::rt;

namespace {

/// Host values of a tensor, kept as the floats the device really gets
/// (rounded to BF16 or FP8 when that is the type).
struct HostTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<float> values;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
      n *= d;
    return n;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out(size_t(numel()) * dtypeBytes(dtype));
    for (size_t i = 0; i < values.size(); ++i) {
      if (dtype == DType::F32)
        std::memcpy(&out[i * 4], &values[i], 4);
      else if (dtype == DType::BF16) {
        uint16_t h = floatToBF16(values[i]);
        std::memcpy(&out[i * 2], &h, 2);
      } else if (dtype == DType::FP8E4M3)
        out[i] = floatToFp8E4M3(values[i]);
    }
    return out;
  }
};

float roundTo(DType dtype, float v) {
  if (dtype == DType::BF16)
    return bf16ToFloat(floatToBF16(v));
  if (dtype == DType::FP8E4M3)
    return fp8E4M3ToFloat(floatToFp8E4M3(v));
  return v;
}

HostTensor random(DType dtype, std::vector<int64_t> shape, std::mt19937 &rng,
                  float spread = 1.f) {
  HostTensor t{dtype, std::move(shape), {}};
  std::normal_distribution<float> normal(0.f, spread);
  t.values.resize(size_t(t.numel()));
  for (float &v : t.values)
    v = roundTo(dtype, normal(rng));
  return t;
}

class DeviceConformance : public ::testing::TestWithParam<std::string> {
protected:
  void SetUp() override {
    Status s = openDevice(GetParam(), device);
    ASSERT_FALSE(s) << s.message();
  }
  void TearDown() override {
    for (DeviceTensor &t : owned)
      device->release(t);
  }

  DeviceTensor put(const HostTensor &h) {
    DeviceTensor t = make(h.dtype, h.shape);
    std::vector<uint8_t> bytes = h.bytes();
    Status s = device->upload(bytes.data(), t);
    EXPECT_FALSE(s) << s.message();
    return t;
  }
  DeviceTensor make(DType dtype, std::vector<int64_t> shape) {
    DeviceTensor t;
    Status s = device->allocate(dtype, std::move(shape), t);
    EXPECT_FALSE(s) << s.message();
    owned.push_back(t);
    return t;
  }
  std::vector<float> get(const DeviceTensor &t) {
    std::vector<uint8_t> bytes(t.bytes());
    Status s = device->download(t, bytes.data());
    EXPECT_FALSE(s) << s.message();
    std::vector<float> out(size_t(t.numel()));
    for (size_t i = 0; i < out.size(); ++i) {
      if (t.dtype == DType::F32)
        std::memcpy(&out[i], &bytes[i * 4], 4);
      else if (t.dtype == DType::BF16) {
        uint16_t h;
        std::memcpy(&h, &bytes[i * 2], 2);
        out[i] = bf16ToFloat(h);
      } else if (t.dtype == DType::FP8E4M3)
        out[i] = fp8E4M3ToFloat(bytes[i]);
    }
    return out;
  }

  /// Largest |have - want| relative to max(1, largest |want|).
  static double relativeError(const std::vector<float> &have,
                              const std::vector<double> &want) {
    double worst = 0, largest = 1;
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, std::fabs(have[i] - want[i]));
      largest = std::max(largest, std::fabs(want[i]));
    }
    return worst / largest;
  }

  /// Tolerance of an output of this type: FP32 math, rounded once at the
  /// end for BF16 (half an ulp: 2^-9).
  static double tolerance(DType out) {
    return out == DType::BF16 ? 8e-3 : 1e-4;
  }

  std::unique_ptr<Device> device;
  std::vector<DeviceTensor> owned;
  std::mt19937 rng{42};
};

TEST_P(DeviceConformance, NamesItself) {
  EXPECT_EQ(device->name(), GetParam());
  EXPECT_FALSE(device->description().empty());
}

TEST_P(DeviceConformance, MemoryRoundTrips) {
  for (DType dtype : {DType::F32, DType::BF16, DType::FP8E4M3}) {
    HostTensor h = random(dtype, {3, 257}, rng);
    DeviceTensor t = put(h);
    EXPECT_EQ(get(t), h.values) << dtypeName(dtype);
  }
  DeviceTensor empty = make(DType::F32, {0, 16});
  EXPECT_EQ(empty.numel(), 0);
}

TEST_P(DeviceConformance, RmsNorm) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    const int64_t rows = 5, cols = 7168;
    HostTensor x = random(dtype, {rows, cols}, rng, 3.f);
    HostTensor gamma = random(dtype, {cols}, rng);
    DeviceTensor dx = put(x), dg = put(gamma), dy = make(dtype, {rows, cols});
    ASSERT_FALSE(device->rmsNorm(dx, dg, 1e-6f, dy));
    std::vector<double> want(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0;
      for (int64_t c = 0; c < cols; ++c)
        sum += double(x.values[r * cols + c]) * x.values[r * cols + c];
      double scale = 1 / std::sqrt(sum / cols + 1e-6);
      for (int64_t c = 0; c < cols; ++c)
        want[r * cols + c] = x.values[r * cols + c] * scale * gamma.values[c];
    }
    EXPECT_LE(relativeError(get(dy), want), tolerance(dtype))
        << dtypeName(dtype);
  }
}

TEST_P(DeviceConformance, Linear) {
  struct Case {
    DType in, out;
    int64_t m, n, k;
  } cases[] = {{DType::F32, DType::F32, 3, 200, 136},
               {DType::BF16, DType::BF16, 1, 2112, 512},
               {DType::BF16, DType::F32, 17, 256, 384}};
  for (const Case &c : cases) {
    HostTensor x = random(c.in, {c.m, c.k}, rng);
    HostTensor w = random(c.in, {c.n, c.k}, rng, 0.05f);
    DeviceTensor dx = put(x), dw = put(w), dy = make(c.out, {c.m, c.n});
    Status s = device->linear(dx, dw, dy);
    ASSERT_FALSE(s) << s.message();
    std::vector<double> want(size_t(c.m * c.n));
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j)
        for (int64_t p = 0; p < c.k; ++p)
          want[i * c.n + j] +=
              double(x.values[i * c.k + p]) * w.values[j * c.k + p];
    EXPECT_LE(relativeError(get(dy), want), tolerance(c.out))
        << dtypeName(c.in) << " -> " << dtypeName(c.out) << " " << c.m << "x"
        << c.n << "x" << c.k;
  }
}

TEST_P(DeviceConformance, QuantizeAndLinearFp8) {
  // 1 token (decode), 24 (cuBLASLt on CUDA, padded), 64.
  for (int64_t m : {1, 24, 64}) {
    const int64_t n = 384, k = 512, kb = k / 128, nb = n / 128;
    HostTensor x = random(DType::BF16, {m, k}, rng, 2.f);
    HostTensor w = random(DType::FP8E4M3, {n, k}, rng, 50.f);
    HostTensor wScales{DType::F32, {nb, kb}, {}};
    for (int64_t i = 0; i < nb * kb; ++i)
      wScales.values.push_back(1e-3f * (1 + i % 5));
    DeviceTensor dx = put(x), dw = put(w), dws = put(wScales);
    DeviceTensor q = make(DType::FP8E4M3, {m, k});
    DeviceTensor s = make(DType::F32, {kb, m});
    DeviceTensor y = make(DType::BF16, {m, n});
    Status st = device->quantizeFp8(dx, q, s);
    ASSERT_FALSE(st) << st.message();
    std::vector<float> qs = get(q), ss = get(s);
    // The quantization: scale = amax / 448 per block, values within e4m3's
    // half ulp (1/16 relative, 2^-9 of the scale near zero).
    for (int64_t r = 0; r < m; ++r)
      for (int64_t b = 0; b < kb; ++b) {
        float amax = 0;
        for (int64_t c = b * 128; c < (b + 1) * 128; ++c)
          amax = std::max(amax, std::fabs(x.values[r * k + c]));
        float scale = ss[b * m + r];
        ASSERT_NEAR(scale, amax / 448.f, 1e-6f * amax) << "row " << r;
        for (int64_t c = b * 128; c < (b + 1) * 128; ++c) {
          float want = x.values[r * k + c], have = qs[r * k + c] * scale;
          ASSERT_LE(std::fabs(have - want),
                    std::fabs(want) / 16 + std::ldexp(scale, -9))
              << "row " << r << " value " << c;
        }
      }
    st = device->linearFp8(q, s, dw, dws, y);
    ASSERT_FALSE(st) << st.message();
    std::vector<double> want(size_t(m * n));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t p = 0; p < k; ++p)
          want[i * n + j] += double(qs[i * k + p]) * ss[(p / 128) * m + i] *
                             w.values[j * k + p] *
                             wScales.values[(j / 128) * kb + p / 128];
    EXPECT_LE(relativeError(get(y), want), tolerance(DType::BF16)) << m;
  }
}

TEST_P(DeviceConformance, SiluMulAndAdd) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    HostTensor a = random(dtype, {4, 1000}, rng, 3.f);
    HostTensor b = random(dtype, {4, 1000}, rng);
    DeviceTensor da = put(a), db = put(b), y = make(dtype, {4, 1000}),
                 z = make(dtype, {4, 1000});
    ASSERT_FALSE(device->siluMul(da, db, y));
    ASSERT_FALSE(device->add(da, db, z));
    std::vector<double> silu(a.values.size()), sum(a.values.size());
    for (size_t i = 0; i < a.values.size(); ++i) {
      double g = a.values[i];
      silu[i] = g / (1 + std::exp(-g)) * b.values[i];
      sum[i] = g + b.values[i];
    }
    EXPECT_LE(relativeError(get(y), silu), tolerance(dtype));
    EXPECT_LE(relativeError(get(z), sum), tolerance(dtype));
  }
}

TEST_P(DeviceConformance, Embedding) {
  HostTensor table = random(DType::BF16, {50, 96}, rng);
  std::vector<int32_t> ids = {3, 0, 49, 3, 17};
  DeviceTensor dt = put(table), di = make(DType::I32, {5}),
               y = make(DType::F32, {5, 96});
  ASSERT_FALSE(device->upload(ids.data(), di));
  Status s = device->embedding(di, dt, y);
  ASSERT_FALSE(s) << s.message();
  std::vector<float> got = get(y);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int h = 0; h < 96; ++h)
      ASSERT_EQ(got[t * 96 + h], table.values[ids[t] * 96 + h]);
  ids[2] = 50;
  ASSERT_FALSE(device->upload(ids.data(), di));
  s = device->embedding(di, dt, y);
  ASSERT_TRUE(s);
  EXPECT_EQ(s.code(), MELT_INVALID_ARGUMENT);
  EXPECT_NE(s.message().find("outside the vocabulary of 50"), std::string::npos)
      << s.message();
}

TEST_P(DeviceConformance, Rope) {
  // DeepSeek-V3's YaRN (factor 40 over 4096 positions), interleaved, on
  // [T, H, 64]; plain RoPE in halves on [T, 64].
  RopeParams yarn;
  yarn.theta = 10000;
  yarn.yarn = true;
  yarn.originalMax = 4096;
  yarn.factor = 40;
  yarn.betaFast = 32;
  yarn.betaSlow = 1;
  yarn.mscale = 1;
  yarn.mscaleAllDim = 0;
  RopeParams plain;
  plain.interleaved = false;
  plain.theta = 500000;
  struct Case {
    RopeParams params;
    std::vector<int64_t> shape;
    DType dtype;
  } cases[] = {{yarn, {6, 4, 64}, DType::F32}, {plain, {6, 64}, DType::BF16}};
  std::vector<int32_t> positions = {0, 1, 7, 100, 4095, 163839};
  for (const Case &c : cases) {
    HostTensor x = random(c.dtype, c.shape, rng);
    DeviceTensor dx = put(x), dp = make(DType::I32, {6}),
                 y = make(c.dtype, c.shape);
    ASSERT_FALSE(device->upload(positions.data(), dp));
    Status s = device->rope(dx, dp, c.params, y);
    ASSERT_FALSE(s) << s.message();
    int64_t dim = c.shape.back(), rows = x.numel() / dim / 6;
    std::vector<double> inv = ropeInverseFrequencies(c.params, dim);
    double mscale = ropeOutputScale(c.params);
    std::vector<double> want(x.values.size());
    for (int64_t t = 0; t < 6; ++t)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < dim / 2; ++i) {
          int64_t base = (t * rows + r) * dim;
          int64_t a = c.params.interleaved ? 2 * i : i,
                  b = c.params.interleaved ? 2 * i + 1 : i + dim / 2;
          double angle = positions[t] * inv[i];
          double co = std::cos(angle) * mscale, si = std::sin(angle) * mscale;
          want[base + a] = x.values[base + a] * co - x.values[base + b] * si;
          want[base + b] = x.values[base + b] * co + x.values[base + a] * si;
        }
    EXPECT_LE(relativeError(get(y), want), tolerance(c.dtype))
        << dtypeName(c.dtype);
  }
}

TEST_P(DeviceConformance, RouteExperts) {
  // DeepSeek-V3 (sigmoid, bias, 8 groups keep 4, top 8 of 256, normalized,
  // scale 2.5), V2-Lite (softmax, greedy, top 6 of 64) and V2 (softmax,
  // group-limited greedy: 8 groups keep 3).
  auto make3 = [](bool sigmoid, int method, int64_t k, int64_t groups,
                  int64_t keep, bool normalize, double scale) {
    RouterParams p;
    p.sigmoid = sigmoid;
    p.method = method;
    p.topK = k;
    p.nGroup = groups;
    p.topkGroup = keep;
    p.normalize = normalize;
    p.scale = scale;
    return p;
  };
  struct Case {
    RouterParams params;
    int64_t experts;
    bool bias;
  } cases[] = {{make3(true, 2, 8, 8, 4, true, 2.5), 256, true},
               {make3(false, 0, 6, 1, 1, false, 1.0), 64, false},
               {make3(false, 1, 6, 8, 3, false, 16.0), 160, false}};
  for (const Case &c : cases) {
    const int64_t tokens = 33, k = c.params.topK;
    HostTensor logits = random(DType::F32, {tokens, c.experts}, rng, 2.f);
    HostTensor bias = random(DType::F32, {c.experts}, rng, 0.1f);
    DeviceTensor dl = put(logits), db = put(bias),
                 idx = make(DType::I32, {tokens, k}),
                 w = make(DType::F32, {tokens, k});
    Status s =
        device->routeExperts(dl, c.bias ? &db : nullptr, c.params, idx, w);
    ASSERT_FALSE(s) << s.message();
    std::vector<int32_t> gotIdx(size_t(tokens * k));
    ASSERT_FALSE(device->download(idx, gotIdx.data()));
    std::vector<float> gotW = get(w);
    std::vector<int64_t> wantIdx(static_cast<size_t>(k));
    std::vector<float> wantW(static_cast<size_t>(k));
    for (int64_t t = 0; t < tokens; ++t) {
      routeToken(logits.values.data() + t * c.experts, c.experts,
                 c.bias ? bias.values.data() : nullptr, c.params,
                 wantIdx.data(), wantW.data());
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(gotIdx[t * k + j], wantIdx[j])
            << "token " << t << " choice " << j << " of " << c.experts;
        ASSERT_NEAR(gotW[t * k + j], wantW[j], 1e-5 * std::fabs(wantW[j]));
      }
    }
  }
}

TEST_P(DeviceConformance, BadCallsAreClearErrors) {
  DeviceTensor x = make(DType::F32, {2, 64}), y = make(DType::F32, {2, 64});
  DeviceTensor w = make(DType::F32, {8, 32}), g = make(DType::F32, {63});
  Status s = device->linear(x, w, y);
  ASSERT_TRUE(s);
  EXPECT_EQ(s.code(), MELT_INVALID_ARGUMENT);
  EXPECT_NE(s.message().find("linear: x [2, 64], w [8, 32]"), std::string::npos)
      << s.message();
  s = device->rmsNorm(x, g, 1e-6f, y);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("gamma [63] does not match"), std::string::npos)
      << s.message();
  DeviceTensor small = make(DType::F32, {2, 32});
  s = device->add(x, small, y);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("add: shapes [2, 64] and [2, 32] differ"),
            std::string::npos)
      << s.message();
  DeviceTensor q = make(DType::FP8E4M3, {2, 64}),
               scales = make(DType::F32, {1, 2});
  s = device->quantizeFp8(x, q, scales);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("K a multiple of 128"), std::string::npos)
      << s.message();
  // The device is still usable after rejected calls.
  EXPECT_FALSE(device->add(x, y, y));
  EXPECT_FALSE(device->synchronize());
}

TEST_P(DeviceConformance, HugeAllocationIsOutOfMemory) {
  DeviceTensor t;
  Status s = device->allocate(DType::F32, {int64_t(1) << 46}, t);
  ASSERT_TRUE(s);
  EXPECT_EQ(s.code(), MELT_OUT_OF_MEMORY) << s.message();
  // Still usable.
  DeviceTensor small = make(DType::F32, {16});
  HostTensor h = random(DType::F32, {16}, rng);
  ASSERT_FALSE(device->upload(h.bytes().data(), small));
  EXPECT_EQ(get(small), h.values);
}

INSTANTIATE_TEST_SUITE_P(Present, DeviceConformance,
                         ::testing::ValuesIn(availableDevices()),
                         [](const ::testing::TestParamInfo<std::string> &info) {
                           std::string name = info.param;
                           for (char &c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c)))
                               c = '_';
                           return name;
                         });

TEST(Devices, UnknownNamesAreClearErrors) {
  std::unique_ptr<Device> device;
  Status s = openDevice("tpu", device);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("unknown device 'tpu'"), std::string::npos);
  s = openDevice("cuda:x", device);
  ASSERT_TRUE(s);
  s = openDevice("cuda:99", device);
  ASSERT_TRUE(s);
  EXPECT_FALSE(device);
}

} // namespace

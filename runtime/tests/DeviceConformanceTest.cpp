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

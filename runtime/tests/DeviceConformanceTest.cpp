// The device conformance suite: every kernel of the Device interface, on
// every device present (the CPU always; CUDA GPUs where there are), against
// double-precision references computed here from the same (rounded) inputs,
// with F32 and BF16 operands; and the same clear errors for bad calls on
// every device. A new device passes this suite before the executor uses it.
#include "Device.h"
#include "Greedy.h"
#include "melt/numerics.h"

#include "DeviceTestNames.h"
#include "cuda/LaunchCount.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
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
public:
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

  DeviceTensor ints(const std::vector<int32_t> &values,
                    std::vector<int64_t> shape) {
    DeviceTensor t = make(DType::I32, std::move(shape));
    Status s = device->upload(values.data(), t);
    EXPECT_FALSE(s) << s.message();
    return t;
  }
  /// x w^T of random x [rows, w.cols()] into an F32 (wide[0]) and a BF16
  /// (narrow[0]) output, and silu(x) * up, up random too, likewise
  /// (linearOfSiluMul: wide[1], narrow[1]).
  void productsInBothTypes(const DeviceTensor &w, int64_t rows,
                           DeviceTensor (&wide)[2], DeviceTensor (&narrow)[2]) {
    const int64_t K = w.shape[1], N = w.shape[0];
    DeviceTensor x = put(random(DType::F32, {rows, K}, rng, 2.f));
    DeviceTensor up = put(random(DType::F32, {rows, K}, rng, 2.f));
    for (int i = 0; i < 2; ++i) {
      wide[i] = make(DType::F32, {rows, N});
      narrow[i] = make(DType::BF16, {rows, N});
    }
    ASSERT_FALSE(device->linear(x, w, wide[0]));
    ASSERT_FALSE(device->linear(x, w, narrow[0]));
    ASSERT_FALSE(device->linearOfSiluMul(x, up, w, wide[1]));
    ASSERT_FALSE(device->linearOfSiluMul(x, up, w, narrow[1]));
  }

  /// The device opened anew with an environment variable set (devices
  /// read their tuning options when they open).
  void reopenWith(const char *variable, const char *value) {
    for (DeviceTensor &t : owned)
      device->release(t);
    owned.clear();
    device.reset();
    setenv(variable, value, 1);
    Status s = openDevice(GetParam(), device);
    unsetenv(variable);
    ASSERT_FALSE(s) << s.message();
  }

  CacheLayout makeLayout(const std::vector<int32_t> &positions,
                         const std::vector<int32_t> &sequences,
                         const std::vector<int32_t> &pages, int64_t perSequence,
                         const std::vector<int32_t> &lengths) {
    CacheLayout layout;
    layout.positions = ints(positions, {int64_t(positions.size())});
    layout.sequences = ints(sequences, {int64_t(sequences.size())});
    layout.pages = ints(pages, {int64_t(lengths.size()), perSequence});
    layout.lengths = ints(lengths, {int64_t(lengths.size())});
    return layout;
  }

  /// Device::mla with decompressAbove 1 against the absorbed form (a
  /// threshold no step reaches), relative error at most `tolerance`, for
  /// H heads of nope N, rope R, latent L and value V.
  void expectDecompressedMlaIsAbsorbed(int64_t H, int64_t N, int64_t R,
                                       int64_t L, int64_t V, double tolerance);

  /// A step's MLA of q [T, H, nope + rope] two ways: q split, its rope
  /// part rotated (`rope`) and mla() on the parts into `split`, and
  /// mlaOfQuery() on q into `projected` ([T, H, V] each; by default the
  /// absorbed form: a decompression threshold no step reaches).
  void mlaBothWays(const DeviceTensor &q, int64_t nope, const RopeParams &rope,
                   const DeviceTensor &cache, const CacheLayout &layout,
                   const DeviceTensor &wUk, const DeviceTensor &wUv,
                   std::vector<float> &split, std::vector<float> &projected,
                   int64_t decompressAbove = int64_t(1) << 30);

  /// mlaBothWays over the paged batches' steps (a BF16 latent cache at
  /// DeepSeek-V3's MLA dims, YaRN, H heads): the same bits both ways.
  void expectMlaOfQueryIsSplitRopeThenMla(int64_t H, int64_t decompressAbove);

  std::unique_ptr<Device> device;
  std::vector<DeviceTensor> owned;
  std::mt19937 rng{42};
};

void DeviceConformance::mlaBothWays(
    const DeviceTensor &q, int64_t nope, const RopeParams &rope,
    const DeviceTensor &cache, const CacheLayout &layout,
    const DeviceTensor &wUk, const DeviceTensor &wUv, std::vector<float> &split,
    std::vector<float> &projected, int64_t decompressAbove) {
  const int64_t T = q.shape[0], H = q.shape[1], R = q.shape[2] - nope,
                V = wUv.shape[1];
  DeviceTensor qn = make(DType::F32, {T, H, nope}),
               qr = make(DType::F32, {T, H, R}),
               rotated = make(DType::F32, {T, H, R}),
               apart = make(DType::F32, {T, H, V}),
               fromQuery = make(DType::F32, {T, H, V});
  const float scale = 1.f / std::sqrt(float(nope + R));
  ASSERT_FALSE(device->slice(q, 2, 0, qn));
  ASSERT_FALSE(device->slice(q, 2, nope, qr));
  ASSERT_FALSE(device->rope(qr, layout.positions, rope, rotated));
  Status s = device->mla(qn, rotated, cache, layout, wUk, wUv, scale,
                         decompressAbove, apart);
  ASSERT_FALSE(s) << s.message();
  s = device->mlaOfQuery(q, nope, layout.positions, rope, cache, layout, wUk,
                         wUv, scale, decompressAbove, fromQuery);
  ASSERT_FALSE(s) << s.message();
  split = get(apart);
  projected = get(fromQuery);
}

/// DeepSeek-V3's YaRN: factor 40 over 4096 positions, interleaved.
RopeParams deepSeekV3Yarn(double mscaleAllDim) {
  RopeParams yarn;
  yarn.theta = 10000;
  yarn.yarn = true;
  yarn.originalMax = 4096;
  yarn.factor = 40;
  yarn.betaFast = 32;
  yarn.betaSlow = 1;
  yarn.mscale = 1;
  yarn.mscaleAllDim = mscaleAllDim;
  return yarn;
}

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
  // (A GPU: a block a row, and a warp a row for 64 rows and more of up
  // to 2048 columns in fours, masked where the row is not a whole number
  // of warps' fours.)
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t cols :
         {int64_t(7168), int64_t(2048), int64_t(1500), int64_t(30)}) {
      const int64_t rows = gpu && (cols == 2048 || cols == 1500) ? 2100 : 5;
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
          << dtypeName(dtype) << ", " << cols;
    }
}

// A Split's part left in place (DeviceTensor::rowPitch: a part of a wider
// matrix's columns, as the executor makes them where the device takes a
// row pitch) normalized and cut as its packed copy is, bit for bit: the
// joint q/kv down projection's query part (columns [0, 1536) of 2112) and
// latent part ([1536, 2112)), F32 and BF16, many rows (a GPU's warp a
// row) and few; the norms for BF16 and FP8 products too, their prepared
// rows with them.
TEST_P(DeviceConformance, PartsLeftInPlaceReadAsTheirCopies) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  const int64_t width = 2112;
  struct Part {
    int64_t offset, cols;
  } parts[] = {{0, 1536}, {1536, 576}};
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t rows : {gpu ? int64_t(2100) : int64_t(70), int64_t(5)})
      for (const Part &p : parts) {
        SCOPED_TRACE(std::string(dtypeName(dtype)) + ", " +
                     std::to_string(rows) + " rows, columns from " +
                     std::to_string(p.offset));
        HostTensor whole = random(dtype, {rows, width}, rng, 3.f);
        HostTensor gamma = random(DType::F32, {p.cols}, rng);
        DeviceTensor dWhole = put(whole), dg = put(gamma),
                     copy = make(dtype, {rows, p.cols});
        ASSERT_FALSE(device->slice(dWhole, 1, p.offset, copy));
        DeviceTensor inPlace = dWhole;
        inPlace.shape = {rows, p.cols};
        inPlace.rowPitch = width;
        inPlace.data = static_cast<char *>(dWhole.data) +
                       size_t(p.offset) * dtypeBytes(dtype);
        DeviceTensor y1 = make(DType::F32, {rows, p.cols}),
                     y2 = make(DType::F32, {rows, p.cols});
        ASSERT_FALSE(device->rmsNorm(inPlace, dg, 1e-6f, y1));
        ASSERT_FALSE(device->rmsNorm(copy, dg, 1e-6f, y2));
        EXPECT_EQ(get(y1), get(y2)) << "rms_norm";
        // Cut again: the latent split of the kv part.
        DeviceTensor cut1 = make(dtype, {rows, 64}),
                     cut2 = make(dtype, {rows, 64});
        ASSERT_FALSE(device->slice(inPlace, 1, p.cols - 64, cut1));
        ASSERT_FALSE(device->slice(copy, 1, p.cols - 64, cut2));
        EXPECT_EQ(get(cut1), get(cut2)) << "slice";
        for (DType weightType : {DType::BF16, DType::FP8E4M3}) {
          DeviceTensor w = make(weightType, {128, p.cols});
          Device::PreparedInput made[2];
          DeviceTensor ys[2] = {make(DType::F32, {rows, p.cols}),
                                make(DType::F32, {rows, p.cols})};
          for (int i = 0; i < 2; ++i) {
            Status st = device->rmsNormForProducts(
                i ? copy : inPlace, dg, 1e-6f, ys[i], w, made[i], true);
            ASSERT_FALSE(st) << st.message();
          }
          EXPECT_EQ(get(ys[0]), get(ys[1])) << dtypeName(weightType);
          for (DeviceTensor Device::PreparedInput::*field :
               {&Device::PreparedInput::bf16, &Device::PreparedInput::q,
                &Device::PreparedInput::scales}) {
            ASSERT_EQ((made[0].*field).data != nullptr,
                      (made[1].*field).data != nullptr);
            if ((made[0].*field).data)
              EXPECT_EQ(get(made[0].*field), get(made[1].*field))
                  << dtypeName(weightType) << "'s prepared rows";
          }
          for (Device::PreparedInput &m : made)
            for (DeviceTensor *t : {&m.bf16, &m.q, &m.scales})
              if (t->data)
                device->release(*t);
        }
      }
}

TEST_P(DeviceConformance, Linear) {
  struct Case {
    DType in, out;
    int64_t m, n, k;
  } cases[] = {{DType::F32, DType::F32, 3, 200, 136},
               {DType::F32, DType::F32, 8, 77, 1024},
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
  // 1 token (decode), 24 (cuBLASLt on CUDA, padded), 64 and 258 (a GPU
  // quantizes from 64 rows on four a warp: 258 leaves two), the last F32.
  for (int64_t m : {1, 24, 64, 258}) {
    const int64_t n = 384, k = 512, kb = k / 128, nb = n / 128;
    HostTensor x = random(m > 64 ? DType::F32 : DType::BF16, {m, k}, rng, 2.f);
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

// A whole number of 4-value vectors (a GPU's vector loads) and not.
TEST_P(DeviceConformance, SiluMulAndAdd) {
  for (auto [dtype, rows, cols] :
       {std::tuple{DType::F32, 4, 1000}, std::tuple{DType::BF16, 4, 1000},
        std::tuple{DType::F32, 3, 333}, std::tuple{DType::BF16, 3, 333}}) {
    HostTensor a = random(dtype, {rows, cols}, rng, 3.f);
    HostTensor b = random(dtype, {rows, cols}, rng);
    DeviceTensor da = put(a), db = put(b), y = make(dtype, {rows, cols}),
                 z = make(dtype, {rows, cols});
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

// The residual add and the norm after it in one call: what add() and
// rmsNorm() give, bit for bit (rows held in registers and longer ones,
// read in one batch and in several, and a warp's rows; F32 and BF16). A
// GPU runs its one-pass kernel.
TEST_P(DeviceConformance, AddRmsNormIsAddThenNorm) {
  reopenWith("MELT_CUDA_FUSED_ADD_NORM", "1");
  if (HasFatalFailure())
    return;
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t cols :
         {int64_t(300), int64_t(2048), int64_t(7168), int64_t(9000)}) {
      const int64_t rows = gpu && cols <= 2048 ? 2100 : 3; // a warp a row
      HostTensor a = random(dtype, {rows, cols}, rng, 3.f);
      HostTensor b = random(dtype, {rows, cols}, rng);
      HostTensor gamma = random(dtype, {cols}, rng);
      DeviceTensor da = put(a), db = put(b), dg = put(gamma),
                   sum = make(dtype, {rows, cols}),
                   y = make(dtype, {rows, cols}),
                   wantSum = make(dtype, {rows, cols}),
                   wantY = make(dtype, {rows, cols});
      Status s = device->addRmsNorm(da, db, dg, 1e-6f, sum, y);
      ASSERT_FALSE(s) << s.message();
      ASSERT_FALSE(device->add(da, db, wantSum));
      ASSERT_FALSE(device->rmsNorm(wantSum, dg, 1e-6f, wantY));
      EXPECT_EQ(get(sum), get(wantSum)) << dtypeName(dtype) << ", " << cols;
      EXPECT_EQ(get(y), get(wantY)) << dtypeName(dtype) << ", " << cols;
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
  if (!s) // a GPU reports it at the next wait
    s = device->synchronize();
  ASSERT_TRUE(s);
  EXPECT_EQ(s.code(), MELT_INVALID_ARGUMENT);
  EXPECT_NE(s.message().find("outside the vocabulary of 50"), std::string::npos)
      << s.message();
}

TEST_P(DeviceConformance, Rope) {
  // DeepSeek-V3's YaRN (factor 40 over 4096 positions), interleaved, on
  // [T, H, 64]; plain RoPE in halves on [T, 64]; and a prefill's query of
  // 1100 tokens x 16 heads (the CUDA device rotates every head of a token
  // in one thread there).
  RopeParams yarn = deepSeekV3Yarn(/*mscaleAllDim=*/0);
  RopeParams plain;
  plain.interleaved = false;
  plain.theta = 500000;
  struct Case {
    RopeParams params;
    std::vector<int64_t> shape;
    DType dtype;
  } cases[] = {{yarn, {6, 4, 64}, DType::F32},
               {plain, {6, 64}, DType::BF16},
               {yarn, {1100, 16, 64}, DType::F32}};
  const int32_t spread[] = {0, 1, 7, 100, 4095, 163839};
  for (const Case &c : cases) {
    const int64_t T = c.shape[0];
    std::vector<int32_t> positions(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t)
      positions[size_t(t)] = spread[t % 6] + int32_t(t / 6);
    HostTensor x = random(c.dtype, c.shape, rng);
    DeviceTensor dx = put(x), dp = make(DType::I32, {T}),
                 y = make(c.dtype, c.shape);
    ASSERT_FALSE(device->upload(positions.data(), dp));
    Status s = device->rope(dx, dp, c.params, y);
    ASSERT_FALSE(s) << s.message();
    int64_t dim = c.shape.back(), rows = x.numel() / dim / T;
    std::vector<double> inv = ropeInverseFrequencies(c.params, dim);
    double mscale = ropeOutputScale(c.params);
    std::vector<double> want(x.values.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < dim / 2; ++i) {
          int64_t base = (t * rows + r) * dim;
          int64_t a = c.params.interleaved ? 2 * i : i,
                  b = c.params.interleaved ? 2 * i + 1 : i + dim / 2;
          double angle = positions[size_t(t)] * inv[i];
          double co = std::cos(angle) * mscale, si = std::sin(angle) * mscale;
          want[base + a] = x.values[base + a] * co - x.values[base + b] * si;
          want[base + b] = x.values[base + b] * co + x.values[base + a] * si;
        }
    EXPECT_LE(relativeError(get(y), want), tolerance(c.dtype))
        << dtypeName(c.dtype) << ", " << T << " tokens";
  }
}

TEST_P(DeviceConformance, RouteExperts) {
  // DeepSeek-V3 (sigmoid, bias, 8 groups keep 4, top 8 of 256, normalized,
  // scale 2.5), V2-Lite (softmax, greedy, top 6 of 64) and V2 (softmax,
  // group-limited greedy: 8 groups keep 3); then logits in steps of 0.5,
  // so that experts and groups tie (the lower index first), with 72
  // experts (no whole number of warps).
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
    bool ties = false;
  } cases[] = {{make3(true, 2, 8, 8, 4, true, 2.5), 256, true},
               {make3(false, 0, 6, 1, 1, false, 1.0), 64, false},
               {make3(false, 1, 6, 8, 3, false, 16.0), 160, false},
               {make3(true, 2, 8, 8, 4, true, 2.5), 256, false, true},
               {make3(false, 1, 5, 8, 3, true, 1.0), 72, false, true}};
  for (const Case &c : cases) {
    const int64_t tokens = 33, k = c.params.topK;
    HostTensor logits = random(DType::F32, {tokens, c.experts}, rng, 2.f);
    if (c.ties)
      for (float &v : logits.values)
        v = std::round(2.f * v) / 2.f;
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

TEST_P(DeviceConformance, CopySliceAndPlace) {
  HostTensor x = random(DType::BF16, {3, 10, 4}, rng);
  DeviceTensor dx = put(x);
  // Split along axis 1 into 6 + 4, concatenate back in the other order.
  DeviceTensor a = make(DType::BF16, {3, 6, 4}),
               b = make(DType::BF16, {3, 4, 4});
  ASSERT_FALSE(device->slice(dx, 1, 0, a));
  ASSERT_FALSE(device->slice(dx, 1, 6, b));
  DeviceTensor swapped = make(DType::BF16, {3, 10, 4});
  ASSERT_FALSE(device->place(b, 1, 0, swapped));
  ASSERT_FALSE(device->place(a, 1, 4, swapped));
  DeviceTensor flat = make(DType::BF16, {30, 4});
  ASSERT_FALSE(device->copy(swapped, flat));
  std::vector<float> got = get(flat);
  for (int o = 0; o < 3; ++o)
    for (int i = 0; i < 10; ++i)
      for (int j = 0; j < 4; ++j) {
        int from = i < 4 ? i + 6 : i - 4;
        ASSERT_EQ(got[(o * 10 + i) * 4 + j], x.values[(o * 10 + from) * 4 + j])
            << o << " " << i << " " << j;
      }
  Status s = device->slice(dx, 1, 7, a);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("does not fit"), std::string::npos) << s.message();
}

// Slices and places whose runs and offsets are not in 16 bytes (a GPU
// copies them 4 bytes or a byte at a time): split along axis 1 at `cut`,
// placed back in the other order.
TEST_P(DeviceConformance, CopySliceAndPlaceOfNarrowRuns) {
  struct Case {
    DType type;
    int64_t outer, middle, inner, cut;
  };
  for (const Case &c : {Case{DType::F32, 4, 3, 5, 1},  // 20-byte runs
                        Case{DType::BF16, 2, 5, 3, 1}, // 6-byte offset
                        Case{DType::BF16, 3, 7, 1, 4}}) {
    HostTensor x = random(c.type, {c.outer, c.middle, c.inner}, rng);
    DeviceTensor dx = put(x);
    DeviceTensor a = make(c.type, {c.outer, c.cut, c.inner}),
                 b = make(c.type, {c.outer, c.middle - c.cut, c.inner});
    ASSERT_FALSE(device->slice(dx, 1, 0, a));
    ASSERT_FALSE(device->slice(dx, 1, c.cut, b));
    DeviceTensor swapped = make(c.type, {c.outer, c.middle, c.inner});
    ASSERT_FALSE(device->place(b, 1, 0, swapped));
    ASSERT_FALSE(device->place(a, 1, c.middle - c.cut, swapped));
    const std::vector<float> got = get(swapped);
    for (int64_t o = 0; o < c.outer; ++o)
      for (int64_t i = 0; i < c.middle; ++i)
        for (int64_t j = 0; j < c.inner; ++j) {
          const int64_t from =
              i < c.middle - c.cut ? i + c.cut : i - (c.middle - c.cut);
          ASSERT_EQ(got[size_t((o * c.middle + i) * c.inner + j)],
                    x.values[size_t((o * c.middle + from) * c.inner + j)])
              << dtypeName(c.type) << " " << o << " " << i << " " << j;
        }
  }
}

/// Two sequences over paged caches of 8 pages: sequence 0 owns pages 2, 0,
/// 4, 5, 6, 7 (not in order), sequence 1 page 3. A prefill of 18 tokens of
/// sequence 0 (crossing a page) and 5 of sequence 1 in one batch, a decode
/// step of both, then 72 more tokens of sequence 0 (a long prefill: some
/// devices read the cache differently for many tokens).
struct PagedBatches {
  static constexpr int64_t kPages = 8, kPerSequence = 6;
  std::vector<int32_t> pages = {2, 0, 4, 5, 6, 7, 3, -1, -1, -1, -1, -1};
  struct Step {
    std::vector<int32_t> positions, sequences, lengths;
  };
  std::vector<Step> steps = {
      {{0,  1,  2,  3,  4,  5,  6, 7, 8, 9, 10, 11,
        12, 13, 14, 15, 16, 17, 0, 1, 2, 3, 4},
       {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1},
       {18, 5}},
      {{18, 5}, {0, 1}, {19, 6}},
      longPrefill()};
  static Step longPrefill() {
    Step step;
    for (int32_t p = 19; p < 91; ++p) {
      step.positions.push_back(p);
      step.sequences.push_back(0);
    }
    step.lengths = {91, 6};
    return step;
  }
  CacheLayout layout(DeviceConformance &test, const Step &step) const {
    return test.makeLayout(step.positions, step.sequences, pages, kPerSequence,
                           step.lengths);
  }
  int64_t rowOf(int32_t sequence, int32_t position) const {
    return pages[size_t(sequence * kPerSequence + position / kPageTokens)] *
               kPageTokens +
           position % kPageTokens;
  }
};

TEST_P(DeviceConformance, PagedCacheAndMla) {
  // A DeepSeek-shaped MLA head set: 4 heads, nope 16, rope 8, latent 32,
  // value 16.
  const int64_t H = 4, N = 16, R = 8, L = 32, V = 16;
  PagedBatches batches;
  const int64_t rows = PagedBatches::kPages * kPageTokens;
  HostTensor wUk = random(DType::F32, {H, N, L}, rng, 0.3f);
  HostTensor wUv = random(DType::F32, {H, V, L}, rng, 0.3f);
  DeviceTensor dUk = put(wUk), dUv = put(wUv);
  DeviceTensor cache = make(DType::F32, {rows, L + R});
  std::vector<float> cacheHost(static_cast<size_t>(rows * (L + R)), 0.f);
  const float scale = 0.2f;
  for (const PagedBatches::Step &step : batches.steps) {
    int64_t T = int64_t(step.positions.size());
    CacheLayout layout = batches.layout(*this, step);
    HostTensor latent = random(DType::F32, {T, L}, rng);
    HostTensor key = random(DType::F32, {T, 1, R}, rng);
    HostTensor qn = random(DType::F32, {T, H, N}, rng);
    HostTensor qr = random(DType::F32, {T, H, R}, rng);
    DeviceTensor dl = put(latent), dk = put(key), dqn = put(qn), dqr = put(qr);
    Status s = device->cacheAppend(dl, dk, layout, cache);
    ASSERT_FALSE(s) << s.message();
    for (int64_t t = 0; t < T; ++t) {
      int64_t row = batches.rowOf(step.sequences[t], step.positions[t]);
      std::copy_n(&latent.values[t * L], L, &cacheHost[row * (L + R)]);
      std::copy_n(&key.values[t * R], R, &cacheHost[row * (L + R) + L]);
    }
    // Reference: the decompressed form, K = W_UK c and V = W_UV c per head.
    std::vector<double> want(static_cast<size_t>(T * H * V));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        int64_t visible = step.positions[t] + 1;
        std::vector<double> p(static_cast<size_t>(visible));
        double top = -1e300, sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          const float *c =
              &cacheHost[batches.rowOf(step.sequences[t], int32_t(j)) *
                         (L + R)];
          double score = 0;
          for (int64_t n = 0; n < N; ++n) {
            double k = 0;
            for (int64_t l = 0; l < L; ++l)
              k += double(wUk.values[(h * N + n) * L + l]) * c[l];
            score += qn.values[(t * H + h) * N + n] * k;
          }
          for (int64_t r = 0; r < R; ++r)
            score += double(qr.values[(t * H + h) * R + r]) * c[L + r];
          p[j] = score * scale;
          top = std::max(top, p[j]);
        }
        for (double &v : p)
          sum += v = std::exp(v - top);
        for (int64_t d = 0; d < V; ++d)
          for (int64_t j = 0; j < visible; ++j) {
            const float *c =
                &cacheHost[batches.rowOf(step.sequences[t], int32_t(j)) *
                           (L + R)];
            double value = 0;
            for (int64_t l = 0; l < L; ++l)
              value += double(wUv.values[(h * V + d) * L + l]) * c[l];
            want[(t * H + h) * V + d] += p[j] / sum * value;
          }
      }
    // Absorbed, and (where a device does it) decompressed for prefills.
    for (int64_t decompressAbove : {int64_t(1) << 30, int64_t(1)}) {
      DeviceTensor out = make(DType::F32, {T, H, V});
      s = device->mla(dqn, dqr, cache, layout, dUk, dUv, scale, decompressAbove,
                      out);
      ASSERT_FALSE(s) << s.message();
      EXPECT_LE(relativeError(get(out), want), tolerance(DType::F32))
          << T << " tokens, decompress above " << decompressAbove;
    }
  }
  // Position 64 of sequence 1 has no page (its one page holds 0-63).
  CacheLayout beyond = makeLayout({64}, {1}, batches.pages,
                                  PagedBatches::kPerSequence, {91, 65});
  DeviceTensor dl = make(DType::F32, {1, L}), dk = make(DType::F32, {1, R});
  // Positions computed on a device are checked by the next synchronize().
  Status s = device->cacheAppend(dl, dk, beyond, cache);
  if (!s)
    s = device->synchronize();
  ASSERT_TRUE(s);
  EXPECT_EQ(s.code(), MELT_RESOURCE_EXHAUSTED) << s.message();
  EXPECT_FALSE(device->synchronize()); // reported once; usable again
}

void DeviceConformance::expectDecompressedMlaIsAbsorbed(int64_t H, int64_t N,
                                                        int64_t R, int64_t L,
                                                        int64_t V,
                                                        double tolerance) {
  PagedBatches batches;
  const int64_t rows = PagedBatches::kPages * kPageTokens;
  DeviceTensor dUk = put(random(DType::F32, {H, N, L}, rng, 0.05f)),
               dUv = put(random(DType::F32, {H, V, L}, rng, 0.05f)),
               cache = make(DType::F32, {rows, L + R});
  for (const PagedBatches::Step &step : batches.steps) {
    const int64_t T = int64_t(step.positions.size());
    CacheLayout layout = batches.layout(*this, step);
    DeviceTensor dl = put(random(DType::F32, {T, L}, rng)),
                 dk = put(random(DType::F32, {T, 1, R}, rng)),
                 dqn = put(random(DType::F32, {T, H, N}, rng)),
                 dqr = put(random(DType::F32, {T, H, R}, rng));
    ASSERT_FALSE(device->cacheAppend(dl, dk, layout, cache));
    DeviceTensor absorbed = make(DType::F32, {T, H, V}),
                 decompressed = make(DType::F32, {T, H, V});
    Status s = device->mla(dqn, dqr, cache, layout, dUk, dUv, 0.07f,
                           int64_t(1) << 30, absorbed);
    ASSERT_FALSE(s) << s.message();
    s = device->mla(dqn, dqr, cache, layout, dUk, dUv, 0.07f, 1, decompressed);
    ASSERT_FALSE(s) << s.message();
    const std::vector<float> want = get(absorbed);
    EXPECT_LE(relativeError(get(decompressed),
                            std::vector<double>(want.begin(), want.end())),
              tolerance)
        << T << " tokens";
  }
}

// MLA in the decompressed form (K and V per head) where a device does it
// (a GPU, unless MELT_CUDA_MLA_DECOMPRESSED=0, where the attention is BF16
// as melt-compile chooses it, here forced by MELT_CUDA_MLA_TENSOR_CORES=1:
// TF32 products, the attention in the fused BF16 kernel at DeepSeek's
// widths, CausalAttention.h, and as TF32 scores, softmax and sums at
// others) is the absorbed form's attention (on a GPU also BF16 for
// prefills: about 2^-9 relative each operand), at DeepSeek's head sizes
// (16 heads, nope 128, rope 64, latent 512, value 128) and small ones, over
// the paged batches' steps: prefills of two sequences, a decode step (one
// query a sequence: absorbed either way) and a long prefill continuing a
// cached prefix.
TEST_P(DeviceConformance, MlaDecompressedIsTheAbsorbedForm) {
  reopenWith("MELT_CUDA_MLA_TENSOR_CORES", "1");
  if (HasFatalFailure())
    return;
  expectDecompressedMlaIsAbsorbed(16, 128, 64, 512, 128, 2e-2);
  expectDecompressedMlaIsAbsorbed(4, 32, 16, 64, 32, 2e-2);
}

// Every device takes a latent cache in BF16 (Device::latentCacheType says
// where a session keeps one): an append rounds each row once and every form
// of the MLA reads the BF16 rows: a prefill of few rows (the split), one of
// many (on the CUDA device, tensor cores as planned), and a decode step
// (token t of sequence t, the layout's host copies given: the CUDA device's
// decode kernel), for 16 heads (a warp kernel) and 128 (wgmma). Against the
// same device over an F32 cache of the rounded rows (the CPU: the same
// values; the CUDA decode kernel: BF16 queries and softmax weights, 2^-9
// relative each).
TEST_P(DeviceConformance, Bf16LatentCacheMatchesF32CacheOfRoundedRows) {
  const int64_t N = 128, R = 64, L = 512, V = 128;
  auto rounded = [](HostTensor t) {
    for (float &v : t.values)
      v = melt::bf16ToFloat(melt::floatToBF16(v));
    return t;
  };
  for (int64_t H : {16, 128}) {
    HostTensor wUk = random(DType::F32, {H, N, L}, rng, 0.05f);
    HostTensor wUv = random(DType::F32, {H, V, L}, rng, 0.05f);
    DeviceTensor dUk = put(wUk), dUv = put(wUv);
    Device::KernelPlan plan;
    plan.variant = 3; // melt-select-kernels' "tensor_cores"
    device->planKernel(dUk, plan);
    PagedBatches batches;
    const int64_t rows = PagedBatches::kPages * kPageTokens;
    DeviceTensor bf16Cache = make(DType::BF16, {rows, L + R});
    DeviceTensor f32Cache = make(DType::F32, {rows, L + R});
    for (const PagedBatches::Step &step : batches.steps) {
      const int64_t T = int64_t(step.positions.size());
      CacheLayout layout = batches.layout(*this, step);
      layout.hostPositions = step.positions.data();
      layout.hostSequences = step.sequences.data();
      HostTensor latent = random(DType::F32, {T, L}, rng);
      HostTensor key = random(DType::F32, {T, R}, rng);
      ASSERT_FALSE(
          device->cacheAppend(put(latent), put(key), layout, bf16Cache));
      ASSERT_FALSE(device->cacheAppend(put(rounded(latent)), put(rounded(key)),
                                       layout, f32Cache));
      DeviceTensor qn = put(random(DType::F32, {T, H, N}, rng));
      DeviceTensor qr = put(random(DType::F32, {T, H, R}, rng));
      DeviceTensor have = make(DType::F32, {T, H, V});
      DeviceTensor want = make(DType::F32, {T, H, V});
      const float scale = 1.f / std::sqrt(float(N + R));
      Status s = device->mla(qn, qr, bf16Cache, layout, dUk, dUv, scale,
                             int64_t(1) << 30, have);
      ASSERT_FALSE(s) << s.message();
      s = device->mla(qn, qr, f32Cache, layout, dUk, dUv, scale,
                      int64_t(1) << 30, want);
      ASSERT_FALSE(s) << s.message();
      std::vector<float> reference = get(want);
      EXPECT_LE(relativeError(get(have), std::vector<double>(reference.begin(),
                                                             reference.end())),
                2e-2)
          << H << " heads, " << T << " tokens";
    }
  }
  ASSERT_FALSE(device->synchronize());
}

// Parts gathered into one tensor (a decode step's router choices; a GPU
// with MELT_CUDA_GATHER_PARTS=1 copies them in one launch): the values of
// placing them one by one; parts past the tensor's end an error.
TEST_P(DeviceConformance, GatherPartsIsPlaceOneByOne) {
  reopenWith("MELT_CUDA_GATHER_PARTS", "1");
  if (HasFatalFailure())
    return;
  std::vector<std::vector<int64_t>> shapes = {{1, 6}, {3, 2}, {7}, {64, 8}};
  std::vector<DeviceTensor> parts;
  int64_t total = 0;
  int32_t next = 1;
  for (const std::vector<int64_t> &shape : shapes) {
    DeviceTensor part = make(DType::I32, shape);
    std::vector<int32_t> values(size_t(part.numel()));
    for (int32_t &v : values)
      v = next++;
    ASSERT_FALSE(device->upload(values.data(), part));
    parts.push_back(part);
    total += part.numel();
  }
  const int64_t offset = 5;
  DeviceTensor have = make(DType::I32, {offset + total + 3});
  DeviceTensor want = make(DType::I32, {offset + total + 3});
  std::vector<int32_t> zeros(size_t(offset + total + 3), 0);
  ASSERT_FALSE(device->upload(zeros.data(), have));
  ASSERT_FALSE(device->upload(zeros.data(), want));
  Status s = device->gatherParts(parts, offset, have);
  ASSERT_FALSE(s) << s.message();
  int64_t at = offset;
  for (const DeviceTensor &part : parts) {
    DeviceTensor flat = part;
    flat.shape = {part.numel()};
    ASSERT_FALSE(device->place(flat, 0, at, want));
    at += part.numel();
  }
  std::vector<int32_t> got(zeros.size()), expected(zeros.size());
  ASSERT_FALSE(device->download(have, got.data()));
  ASSERT_FALSE(device->download(want, expected.data()));
  EXPECT_EQ(got, expected);
  EXPECT_EQ(got[size_t(offset)], 1);
  EXPECT_TRUE(device->gatherParts(parts, offset + 4, have));
}

void DeviceConformance::expectMlaOfQueryIsSplitRopeThenMla(
    int64_t H, int64_t decompressAbove) {
  const int64_t N = 128, R = 64, L = 512, V = 128;
  const RopeParams yarn = deepSeekV3Yarn(/*mscaleAllDim=*/1);
  DeviceTensor dUk = put(random(DType::F32, {H, N, L}, rng, 0.05f));
  DeviceTensor dUv = put(random(DType::F32, {H, V, L}, rng, 0.05f));
  PagedBatches batches;
  const int64_t rows = PagedBatches::kPages * kPageTokens;
  DeviceTensor cache = make(DType::BF16, {rows, L + R});
  for (const PagedBatches::Step &step : batches.steps) {
    const int64_t T = int64_t(step.positions.size());
    CacheLayout layout = batches.layout(*this, step);
    layout.hostPositions = step.positions.data();
    layout.hostSequences = step.sequences.data();
    ASSERT_FALSE(device->cacheAppend(put(random(DType::F32, {T, L}, rng)),
                                     put(random(DType::F32, {T, R}, rng)),
                                     layout, cache));
    // Values BF16 holds, so that a device reading a BF16 projection
    // (mlaOfQueryReadsBf16) is asked for the same again.
    HostTensor values = random(DType::BF16, {T, H, N + R}, rng);
    values.dtype = DType::F32;
    DeviceTensor q = put(values);
    std::vector<float> want, have;
    mlaBothWays(q, N, yarn, cache, layout, dUk, dUv, want, have,
                decompressAbove);
    if (testing::Test::HasFatalFailure())
      return;
    EXPECT_EQ(have, want) << H << " heads, " << T << " tokens";
    if (!device->mlaOfQueryReadsBf16())
      continue;
    values.dtype = DType::BF16;
    DeviceTensor fromBf16 = make(DType::F32, {T, H, V});
    Status s = device->mlaOfQuery(
        put(values), N, layout.positions, yarn, cache, layout, dUk, dUv,
        1.f / std::sqrt(float(N + R)), decompressAbove, fromBf16);
    ASSERT_FALSE(s) << s.message();
    EXPECT_EQ(get(fromBf16), want)
        << "a BF16 query: " << H << " heads, " << T << " tokens";
  }
  ASSERT_FALSE(device->synchronize());
}

// An MLA with its query's split and rope in its call (Device::mlaOfQuery):
// bit for bit the slices, the rope and mla, over a BF16 latent cache at
// DeepSeek-V3's MLA dims (YaRN), for 16 and 128 heads, at the paged
// batches' prefills and their decode step (a GPU with
// MELT_CUDA_FUSED_MLA_QUERY=1 reads and rotates the query in its absorb
// kernel there).
TEST_P(DeviceConformance, MlaOfQueryIsSplitRopeThenMla) {
  reopenWith("MELT_CUDA_FUSED_MLA_QUERY", "1");
  if (HasFatalFailure())
    return;
  expectMlaOfQueryIsSplitRopeThenMla(16, int64_t(1) << 30);
  // (The CPU runs the calls apart: one head count shows it.)
  if (device->name().rfind("cuda", 0) == 0)
    expectMlaOfQueryIsSplitRopeThenMla(128, int64_t(1) << 30);
}

// The same in the decompressed form of a prefill (K and V per head, the
// fused BF16 attention; forced here by MELT_CUDA_MLA_TENSOR_CORES=1 and a
// threshold of one query): with MELT_CUDA_PREFILL_MLA_QUERY=1 a GPU's
// attention kernel splits and rotates the projected query as it reads it,
// bit for bit the split's copies, the rope kernel and mla(), over the paged
// batches' prefills (two sequences; one continuing a cached prefix) and
// their decode step.
TEST_P(DeviceConformance, MlaOfQueryDecompressedIsSplitRopeThenMla) {
  setenv("MELT_CUDA_PREFILL_MLA_QUERY", "1", 1);
  setenv("MELT_CUDA_MLA_TENSOR_CORES", "1", 1);
  reopenWith("MELT_CUDA_FUSED_MLA_QUERY", "1");
  unsetenv("MELT_CUDA_PREFILL_MLA_QUERY");
  unsetenv("MELT_CUDA_MLA_TENSOR_CORES");
  if (HasFatalFailure())
    return;
  expectMlaOfQueryIsSplitRopeThenMla(16, /*decompressAbove=*/1);
}

// A decode step's MLA of a few sequences over a short table as one kernel
// (a GPU's default, MlaDecodeFused.h) against the three kernels of
// MELT_CUDA_FUSED_MLA_DECODE=0: the same values up to the order of their
// sums and the softmax weights' rounding (BF16 queries and cache rows in
// both), through mla() and mlaOfQuery(), at 16 and 128 heads, one to four
// sequences, tables of 4 and 16 pages; and both against the CPU's F32.
TEST_P(DeviceConformance, MlaDecodeFusedIsTheThreeKernels) {
  const int64_t N = 128, R = 64, L = 512, V = 128;
  const RopeParams yarn = deepSeekV3Yarn(/*mscaleAllDim=*/1);
  struct Case {
    int64_t heads, perSequence;
    std::vector<int32_t> positions;
  };
  std::vector<Case> cases = {{16, 4, {200}},
                             {16, 4, {200, 70, 5, 130}},
                             {128, 4, {63, 64}},
                             {16, 16, {1000, 3}}};
  // (The switch is the GPU's: elsewhere one case shows the calls agree.)
  if (device->name().rfind("cuda", 0) != 0)
    cases.resize(1);
  // Each case's inputs on the host, then its outputs by the device opened
  // with the switch off and on.
  struct Inputs {
    HostTensor uk, uv, cache, q;
  };
  std::vector<Inputs> inputs;
  for (const Case &c : cases) {
    const int64_t T = int64_t(c.positions.size());
    const int64_t rows = T * c.perSequence * kPageTokens;
    inputs.push_back({random(DType::F32, {c.heads, N, L}, rng, 0.05f),
                      random(DType::F32, {c.heads, V, L}, rng, 0.05f),
                      random(DType::BF16, {rows, L + R}, rng),
                      random(DType::F32, {T, c.heads, N + R}, rng)});
  }
  auto outputs = [&](std::vector<std::vector<float>> &out) {
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case &c = cases[i];
      const Inputs &in = inputs[i];
      const int64_t T = int64_t(c.positions.size());
      std::vector<int32_t> sequences, pages, lengths;
      for (int64_t t = 0; t < T; ++t) {
        sequences.push_back(int32_t(t));
        lengths.push_back(c.positions[size_t(t)] + 1);
        for (int64_t p = 0; p < c.perSequence; ++p)
          pages.push_back(int32_t(t * c.perSequence + p));
      }
      CacheLayout layout =
          makeLayout(c.positions, sequences, pages, c.perSequence, lengths);
      layout.hostPositions = c.positions.data();
      layout.hostSequences = sequences.data();
      std::vector<float> split, projected;
      mlaBothWays(put(in.q), N, yarn, put(in.cache), layout, put(in.uk),
                  put(in.uv), split, projected);
      if (HasFatalFailure())
        return;
      out.push_back(std::move(split));
      out.push_back(std::move(projected));
    }
  };
  std::vector<std::vector<float>> apart, fused;
  reopenWith("MELT_CUDA_FUSED_MLA_DECODE", "0");
  if (HasFatalFailure())
    return;
  outputs(apart);
  if (HasFatalFailure())
    return;
  reopenWith("MELT_CUDA_FUSED_MLA_DECODE", "1");
  if (HasFatalFailure())
    return;
  outputs(fused);
  if (HasFatalFailure())
    return;
  ASSERT_EQ(fused.size(), apart.size());
  // The CPU's F32 arithmetic (no BF16 query or weights) as the reference
  // both are measured against: the fused kernel keeps its weights in F32
  // where the chunk kernel rounds them to BF16 for its tensor cores, so it
  // must be at least as close.
  const std::string name = device->name();
  std::vector<std::vector<float>> reference;
  if (name != "cpu") {
    for (DeviceTensor &t : owned)
      device->release(t);
    owned.clear();
    device.reset();
    Status s = openDevice("cpu", device);
    ASSERT_FALSE(s) << s.message();
    outputs(reference);
    if (HasFatalFailure())
      return;
  }
  for (size_t i = 0; i < apart.size(); ++i) {
    const Case &c = cases[i / 2];
    auto widened = [](const std::vector<float> &v) {
      return std::vector<double>(v.begin(), v.end());
    };
    const double error = relativeError(fused[i], widened(apart[i]));
    std::printf("%s: mla decode, %lld heads, %zu tokens, table %lld pages "
                "(%s): fused against apart %.2g of the largest output",
                name.c_str(), (long long)c.heads, c.positions.size(),
                (long long)c.perSequence, i % 2 ? "projected" : "split", error);
    EXPECT_LE(error, 2e-2) << c.heads << " heads, " << c.positions.size()
                           << " tokens";
    if (reference.empty()) {
      std::printf("\n");
      continue;
    }
    const double fusedError = relativeError(fused[i], widened(reference[i]));
    const double apartError = relativeError(apart[i], widened(reference[i]));
    std::printf("; against the CPU: fused %.2g, apart %.2g\n", fusedError,
                apartError);
    EXPECT_LE(fusedError, std::max(1.25 * apartError, 1e-4))
        << c.heads << " heads, " << c.positions.size() << " tokens";
  }
}

// MLA's latent append with its norm and rope in one call: the cache rows
// bit for bit those of rmsNorm, rope and cacheAppend (DeepSeek-V3's
// latent 512 and rope 64, YaRN, and a small latent), over the paged
// batches' steps of several sequences.
TEST_P(DeviceConformance, AppendLatentIsNormRopeThenAppend) {
  reopenWith("MELT_CUDA_FUSED_LATENT_APPEND", "1");
  if (HasFatalFailure())
    return;
  const RopeParams yarn = deepSeekV3Yarn(/*mscaleAllDim=*/1);
  for (int64_t L : {int64_t(512), int64_t(32)}) {
    const int64_t R = L == 512 ? 64 : 8;
    PagedBatches batches;
    const int64_t rows = PagedBatches::kPages * kPageTokens;
    HostTensor gamma = random(DType::F32, {L}, rng);
    DeviceTensor dg = put(gamma);
    DeviceTensor fused = make(DType::F32, {rows, L + R}),
                 apart = make(DType::F32, {rows, L + R});
    std::vector<float> zeros(size_t(rows * (L + R)), 0.f);
    ASSERT_FALSE(device->upload(zeros.data(), fused));
    ASSERT_FALSE(device->upload(zeros.data(), apart));
    for (const PagedBatches::Step &step : batches.steps) {
      const int64_t T = int64_t(step.positions.size());
      CacheLayout layout = batches.layout(*this, step);
      HostTensor latent = random(DType::F32, {T, L}, rng, 3.f);
      HostTensor key = random(DType::F32, {T, R}, rng);
      DeviceTensor dl = put(latent), dk = put(key),
                   positions = ints(step.positions, {T}),
                   normed = make(DType::F32, {T, L}),
                   rotated = make(DType::F32, {T, R}),
                   wantNormed = make(DType::F32, {T, L}),
                   wantRotated = make(DType::F32, {T, R});
      Status s = device->appendLatent(dl, dg, 1e-6f, dk, positions, yarn,
                                      layout, normed, rotated, fused);
      ASSERT_FALSE(s) << s.message();
      ASSERT_FALSE(device->rmsNorm(dl, dg, 1e-6f, wantNormed));
      ASSERT_FALSE(device->rope(dk, positions, yarn, wantRotated));
      ASSERT_FALSE(device->cacheAppend(wantNormed, wantRotated, layout, apart));
    }
    std::vector<float> have = get(fused), want = get(apart);
    int differ = 0;
    for (size_t i = 0; i < want.size(); ++i)
      differ += std::memcmp(&have[i], &want[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0) << "latent " << L;
  }
}

TEST_P(DeviceConformance, PagedAttention) {
  // 4 query heads over 2 cached heads (grouped), keys 8, values 6.
  const int64_t H = 4, Hk = 2, Dk = 8, Dv = 6, width = Hk * (Dk + Dv);
  PagedBatches batches;
  const int64_t rows = PagedBatches::kPages * kPageTokens;
  DeviceTensor cache = make(DType::F32, {rows, width});
  std::vector<float> cacheHost(static_cast<size_t>(rows * width), 0.f);
  const float scale = 0.35f;
  for (const PagedBatches::Step &step : batches.steps) {
    int64_t T = int64_t(step.positions.size());
    CacheLayout layout = batches.layout(*this, step);
    HostTensor k = random(DType::F32, {T, Hk, Dk}, rng);
    HostTensor v = random(DType::F32, {T, Hk, Dv}, rng);
    HostTensor q = random(DType::F32, {T, H, Dk}, rng);
    DeviceTensor dk = put(k), dv = put(v), dq = put(q);
    DeviceTensor keys = dk, vals = dv;
    keys.shape = {T, Hk * Dk};
    Status s = device->cacheAppend(keys, vals, layout, cache);
    ASSERT_FALSE(s) << s.message();
    for (int64_t t = 0; t < T; ++t) {
      int64_t row = batches.rowOf(step.sequences[t], step.positions[t]);
      std::copy_n(&k.values[t * Hk * Dk], Hk * Dk, &cacheHost[row * width]);
      std::copy_n(&v.values[t * Hk * Dv], Hk * Dv,
                  &cacheHost[row * width + Hk * Dk]);
    }
    for (bool causal : {true, false}) {
      std::vector<double> want(static_cast<size_t>(T * H * Dv));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
          int64_t b = step.sequences[t], kh = h / (H / Hk);
          int64_t visible = causal ? step.positions[t] + 1 : step.lengths[b];
          std::vector<double> p(static_cast<size_t>(visible));
          double top = -1e300, sum = 0;
          for (int64_t j = 0; j < visible; ++j) {
            const float *row =
                &cacheHost[batches.rowOf(int32_t(b), int32_t(j)) * width];
            double score = 0;
            for (int64_t d = 0; d < Dk; ++d)
              score +=
                  double(q.values[(t * H + h) * Dk + d]) * row[kh * Dk + d];
            p[j] = score * scale;
            top = std::max(top, p[j]);
          }
          for (double &x : p)
            sum += x = std::exp(x - top);
          for (int64_t j = 0; j < visible; ++j) {
            const float *row =
                &cacheHost[batches.rowOf(int32_t(b), int32_t(j)) * width];
            for (int64_t d = 0; d < Dv; ++d)
              want[(t * H + h) * Dv + d] +=
                  p[j] / sum * row[Hk * Dk + kh * Dv + d];
          }
        }
      DeviceTensor out = make(DType::F32, {T, H, Dv});
      s = device->attention(dq, cache, layout, Hk, causal, scale, out);
      ASSERT_FALSE(s) << s.message();
      EXPECT_LE(relativeError(get(out), want), tolerance(DType::F32))
          << T << " tokens, causal " << causal;
    }
  }
}

TEST_P(DeviceConformance, QuantizeBlocks) {
  // 200 columns in tiles of 128: the second tile is 72 wide.
  const int64_t T = 3, K = 200, block = 128;
  HostTensor x = random(DType::F32, {T, K}, rng, 3.f);
  DeviceTensor dx = put(x), q = make(DType::FP8E4M3, {T, K}),
               scales = make(DType::F32, {T, 2}), y = make(DType::F32, {T, K});
  Status s = device->quantizeBlocks(dx, block, q, scales);
  ASSERT_FALSE(s) << s.message();
  s = device->dequantizeBlocks(q, scales, block, y);
  ASSERT_FALSE(s) << s.message();
  std::vector<float> gotScales = get(scales), gotQ = get(q), gotY = get(y);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < 2; ++b) {
      float amax = 0.f;
      for (int64_t c = b * block; c < std::min(K, (b + 1) * block); ++c)
        amax = std::max(amax, std::fabs(x.values[t * K + c]));
      float scale = amax / 448.f;
      EXPECT_FLOAT_EQ(gotScales[t * 2 + b], scale);
      for (int64_t c = b * block; c < std::min(K, (b + 1) * block); ++c) {
        float want = roundTo(DType::FP8E4M3, x.values[t * K + c] / scale);
        EXPECT_EQ(gotQ[t * K + c], want) << t << ", " << c;
        EXPECT_FLOAT_EQ(gotY[t * K + c], want * scale);
      }
    }
  DeviceTensor wrong = make(DType::F32, {T, 1});
  s = device->quantizeBlocks(dx, block, q, wrong);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("scales [T, ceil(K / 128)]"), std::string::npos)
      << s.message();
}

/// Rounds each blockRows x 128 block of a [rows, cols] matrix to its own
/// FP8 grid (scale = the block's amax / 448), as melt-assign-precision and
/// DeepSeek-V3's checkpoints do.
void onFp8Grid(float *v, int64_t rows, int64_t cols, int64_t blockRows) {
  for (int64_t r0 = 0; r0 < rows; r0 += blockRows)
    for (int64_t c0 = 0; c0 < cols; c0 += 128) {
      const int64_t r1 = std::min(rows, r0 + blockRows),
                    c1 = std::min(cols, c0 + 128);
      float amax = 0.f;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          amax = std::max(amax, std::fabs(v[r * cols + c]));
      float scale = amax / kFp8E4M3Max;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          float &x = v[r * cols + c];
          x = roundTo(DType::FP8E4M3, x / scale) * scale;
        }
    }
}

/// sum over a token's choices of weight x down(silu(gate x) * (up x)), in
/// double, for x [T, D], stacks gate/up [E, I, D] and down [E, D, I]:
/// `roundOperands` rounds x and the activations to BF16 (the products of
/// BF16 and FP8 weights), `combineBf16` each expert's output,
/// `quantizeActivations` the activations in 1 x 128 FP8 blocks as the
/// GPU's grouped pair does (gate and up rounded to BF16, then SiLU-mul,
/// rounded; scale amax / 448, codes of v times 1 / scale): a code that
/// flips (an e4m3 step, 1/8 of the value) moves a few of the down
/// product's terms.
std::vector<double>
expertsReference(const std::vector<float> &x, const std::vector<int32_t> &idx,
                 const std::vector<float> &weights,
                 const std::vector<float> &gate, const std::vector<float> &up,
                 const std::vector<float> &down, int64_t T, int64_t K,
                 int64_t I, int64_t D, bool roundOperands, bool combineBf16,
                 bool quantizeActivations = false) {
  auto operand = [&](double v) {
    return roundOperands ? double(roundTo(DType::BF16, float(v))) : v;
  };
  std::vector<double> want(static_cast<size_t>(T * D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = idx[size_t(t * K + k)];
      std::vector<double> act(static_cast<size_t>(I));
      for (int64_t i = 0; i < I; ++i) {
        double a = 0, b = 0;
        for (int64_t d = 0; d < D; ++d) {
          double xv = operand(x[size_t(t * D + d)]);
          a += xv * gate[size_t((e * I + i) * D + d)];
          b += xv * up[size_t((e * I + i) * D + d)];
        }
        if (quantizeActivations) {
          a = roundTo(DType::BF16, float(a));
          b = roundTo(DType::BF16, float(b));
        }
        act[size_t(i)] = operand(a / (1 + std::exp(-a)) * b);
      }
      for (int64_t b = 0; quantizeActivations && b < I; b += 128) {
        const int64_t end = std::min(I, b + 128);
        float amax = 0.f;
        for (int64_t i = b; i < end; ++i)
          amax = std::max(amax, std::fabs(float(act[size_t(i)])));
        const float scale = amax > 0.f ? amax / 448.f : 1.f,
                    inverse = 1.f / scale;
        for (int64_t i = b; i < end; ++i)
          act[size_t(i)] =
              double(roundTo(DType::FP8E4M3, float(act[size_t(i)]) * inverse)) *
              scale;
      }
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t i = 0; i < I; ++i)
          o += act[size_t(i)] * down[size_t((e * D + d) * I + i)];
        if (combineBf16)
          o = roundTo(DType::BF16, float(o));
        want[size_t(t * D + d)] += weights[size_t(t * K + k)] * o;
      }
    }
  return want;
}

/// Routed experts with F32 and BF16 weights, with and without a BF16
/// combine, and an expert index out of range.
/// T tokens, top 2 of 6 experts: 5 (a token choosing one expert twice), or
/// enough that experts get more than 8 tokens (a GPU's kernels take them 8
/// at a time); hidden size D and expert size I (multiples of 32: a GPU's
/// tensor-core kernels).
void checkMoeExperts(DeviceConformance &test, std::mt19937 &rng, int64_t T = 5,
                     int64_t D = 48, int64_t I = 20) {
  Device &device = *test.device;
  const int64_t E = 6, K = 2;
  HostTensor x = random(DType::F32, {T, D}, rng);
  std::vector<int32_t> idx = {0, 5, 3, 3, 1, 2, 4, 0, 5, 1};
  idx.resize(static_cast<size_t>(T * K));
  for (size_t p = 10; p < idx.size(); ++p)
    idx[p] = int32_t((p * 7 + p / 3) % E);
  HostTensor w = random(DType::F32, {T, K}, rng);
  DeviceTensor dx = test.put(x), dw = test.put(w),
               di = test.make(DType::I32, {T, K}),
               y = test.make(DType::F32, {T, D});
  ASSERT_FALSE(device.upload(idx.data(), di));
  for (DType type : {DType::F32, DType::BF16}) {
    HostTensor gate = random(type, {E, I, D}, rng, 0.2f);
    HostTensor up = random(type, {E, I, D}, rng, 0.2f);
    HostTensor down = random(type, {E, D, I}, rng, 0.2f);
    DeviceTensor dg = test.put(gate), du = test.put(up), dd = test.put(down);
    for (bool bf16 : {false, true}) {
      Status s = device.moeExperts(dx, di, dw, dg, du, dd, bf16, y);
      ASSERT_FALSE(s) << s.message();
      // BF16 weights: x and the activations rounded to BF16 too.
      std::vector<double> want =
          expertsReference(x.values, idx, w.values, gate.values, up.values,
                           down.values, T, K, I, D, type == DType::BF16, bf16);
      // BF16 anywhere: rounding of 2^-9 relative.
      bool exact = type == DType::F32 && !bf16;
      EXPECT_LE(DeviceConformance::relativeError(test.get(y), want),
                exact ? 1e-4 : 1e-2)
          << dtypeName(type) << " weights, bf16 combine " << bf16;
    }
    if (type == DType::F32) {
      idx[1] = int32_t(E);
      ASSERT_FALSE(device.upload(idx.data(), di));
      Status s = device.moeExperts(dx, di, dw, dg, du, dd, false, y);
      if (!s)
        s = device.synchronize();
      ASSERT_TRUE(s);
      EXPECT_NE(s.message().find("outside the"), std::string::npos)
          << s.message();
      EXPECT_FALSE(device.synchronize());
      idx[1] = 5;
      ASSERT_FALSE(device.upload(idx.data(), di));
    }
  }
}

TEST_P(DeviceConformance, MoeExperts) { checkMoeExperts(*this, rng); }

TEST_P(DeviceConformance, MoeExpertsOneToken) {
  checkMoeExperts(*this, rng, 1);
}

TEST_P(DeviceConformance, MoeExpertsManyTokensPerExpert) {
  checkMoeExperts(*this, rng, 40, 64, 32);
}

// The same through the path for many tokens (a GPU groups tokens by expert
// for one GEMM each from this many (token, choice) pairs).
TEST_P(DeviceConformance, MoeExpertsGroupedByExpert) {
  reopenWith("MELT_MOE_GROUPED_MIN_PAIRS", "1");
  if (HasFatalFailure())
    return;
  checkMoeExperts(*this, rng);
}

// The same with the choices grouped on a GPU, not on the host, and every
// expert's product in one launch (MELT_CUDA_DEVICE_GROUPING=1: BF16 or FP8
// stacks, hidden and expert sizes in 128s; other shapes and devices run as
// before).
TEST_P(DeviceConformance, MoeExpertsGroupedOnTheDevice) {
  reopenWith("MELT_CUDA_DEVICE_GROUPING", "1");
  if (HasFatalFailure())
    return;
  checkMoeExperts(*this, rng, 300, 256, 128);
}

/// An [N, K] weight the model keeps in FP8 128x128 blocks (values on the
/// e4m3 grid of their block's scale), multiplied only by GEMMs.
WeightData fp8BlockWeight(std::mt19937 &rng, int64_t N, int64_t K) {
  WeightData weight;
  weight.shape = {N, K};
  weight.data = random(DType::F32, {N, K}, rng, 0.05f).values;
  onFp8Grid(weight.data.data(), N, K, 128);
  weight.storage = WeightData::Storage::FP8Blocks;
  weight.gemmOnly = true;
  return weight;
}

/// Such a weight, imported as the device keeps it, times an input already
/// on the 1x128 FP8 grid: the exact product, up to a BF16 output.
/// `fp8OnGpu`: a GPU must hold it in e4m3 bytes (else in F32).
void checkImportedFp8Weight(DeviceConformance &test, std::mt19937 &rng,
                            int64_t M, int64_t K, int64_t N, bool fp8OnGpu) {
  Device &device = *test.device;
  WeightData weight = fp8BlockWeight(rng, N, K);
  HostTensor x = random(DType::F32, {M, K}, rng);
  onFp8Grid(x.values.data(), M, K, 1);
  DeviceTensor w;
  Status s = device.importWeight(weight, w);
  ASSERT_FALSE(s) << s.message();
  if (device.name().rfind("cuda", 0) == 0)
    EXPECT_EQ(w.dtype, fp8OnGpu ? DType::FP8E4M3 : DType::F32)
        << "as the GPU keeps it (K " << K << ")";
  EXPECT_EQ(w.shape, (std::vector<int64_t>{N, K}));
  DeviceTensor dx = test.put(x), y = test.make(DType::F32, {M, N});
  s = device.linear(dx, w, y);
  ASSERT_FALSE(s) << s.message();
  std::vector<double> want(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        want[m * N + n] +=
            double(x.values[m * K + k]) * weight.data[size_t(n * K + k)];
  const double error = DeviceConformance::relativeError(test.get(y), want);
  std::printf("%s: fp8 weight (%s) %lld x %lld x %lld: error %.2g of the "
              "largest output\n",
              device.name().c_str(), dtypeName(w.dtype), (long long)M,
              (long long)K, (long long)N, error);
  EXPECT_LE(error, DeviceConformance::tolerance(DType::BF16))
      << M << " x " << K << " x " << N;
  device.release(w);
}

// (A GPU: e4m3 bytes and scales for its FP8 GEMMs, unless
// MELT_CUDA_FP8_WEIGHTS=0.)
TEST_P(DeviceConformance, ImportedFp8WeightsMultiply) {
  reopenWith("MELT_CUDA_FP8_WEIGHTS", "1");
  if (HasFatalFailure())
    return;
  checkImportedFp8Weight(*this, rng, 3, 512, 32, /*fp8OnGpu=*/true);
}

// K no multiple of 512 (mini's shared experts' 1408, a partial scale block:
// 1000), stored with rows zero-padded to one (a GPU, unless
// MELT_CUDA_FP8_PAD_K=0), for a few tokens and for many; a K that padding
// would more than grow by a quarter (the golden tiny models' shapes: K
// within one block, N over two) stays as it was.
TEST_P(DeviceConformance, ImportedFp8WeightsWithPaddedKMultiply) {
  for (int64_t K : {int64_t(1408), int64_t(1000)})
    for (int64_t M : {int64_t(3), int64_t(100)})
      checkImportedFp8Weight(*this, rng, M, K, 48, /*fp8OnGpu=*/true);
  for (auto [K, N] :
       {std::pair<int64_t, int64_t>{32, 96}, {64, 256}, {256, 64}, {200, 48}})
    for (int64_t M : {int64_t(2), int64_t(25)})
      checkImportedFp8Weight(*this, rng, M, K, N, /*fp8OnGpu=*/false);
}

// An MLP's down projection with its SiLU-mul (a GPU computes it as the FP8
// product quantizes its input, or for a BF16 weight into BF16 rows): the
// values of siluMul then linear, bit for bit, for a decode step's few
// tokens and a prefill's many, K padded and not.
TEST_P(DeviceConformance, LinearOfSiluMulIsSiluMulThenLinear) {
  for (bool bf16 : {false, true})
    for (auto [M, K] : {std::pair<int64_t, int64_t>{1, 1408},
                        {5, 1408},
                        {40, 1408},
                        {100, 1408},
                        {3, 512},
                        {100, 512},
                        {600, 1408}}) {
      const int64_t N = 64;
      // (Kept while w is used: a device may multiply the host copy itself.)
      const WeightData weight = fp8BlockWeight(rng, N, K);
      DeviceTensor w;
      if (bf16) {
        w = put(random(DType::BF16, {N, K}, rng, 0.05f));
      } else {
        Status s = device->importWeight(weight, w);
        ASSERT_FALSE(s) << s.message();
        owned.push_back(w);
      }
      DeviceTensor gate = put(random(DType::F32, {M, K}, rng, 3.f)),
                   up = put(random(DType::F32, {M, K}, rng)),
                   product = make(DType::F32, {M, K}),
                   fused = make(DType::F32, {M, N}),
                   apart = make(DType::F32, {M, N});
      ASSERT_FALSE(device->linearOfSiluMul(gate, up, w, fused));
      ASSERT_FALSE(device->siluMul(gate, up, product));
      ASSERT_FALSE(device->linear(product, w, apart));
      EXPECT_EQ(get(fused), get(apart))
          << M << " x " << K << (bf16 ? ", BF16 weight" : ", FP8 weight");
    }
}

// The same held in F32 where asked (MELT_CUDA_FP8_PAD_K=0).
TEST_P(DeviceConformance, ImportedFp8WeightsWithUnpaddedKMultiply) {
  reopenWith("MELT_CUDA_FP8_PAD_K", "0");
  if (HasFatalFailure())
    return;
  for (int64_t M : {int64_t(3), int64_t(100)})
    checkImportedFp8Weight(*this, rng, M, 1408, 48, /*fp8OnGpu=*/false);
}

/// Expert stacks the model keeps in FP8 128x128 blocks, imported as each
/// device keeps them (a GPU: e4m3 bytes and per-expert scales for its
/// tensor-core expert kernels), for T tokens: against the products of the
/// exact weights with x and the activations rounded to BF16. Sizes with
/// partial blocks (I = 160, D = 288) and values small enough for e4m3's
/// subnormals.
/// FP8 expert stacks gate, up [E, I, D] and down [E, D, I] on their 128x128
/// e4m3 grids, imported into the test's device.
struct Fp8Experts {
  static constexpr int64_t E = 4;
  WeightData gate, up, down;
  DeviceTensor dg, du, dd;
};

void importFp8Experts(DeviceConformance &test, std::mt19937 &rng, int64_t I,
                      int64_t D, Fp8Experts &experts) {
  const int64_t E = Fp8Experts::E;
  auto stack = [&](int64_t rows, int64_t cols) {
    WeightData w;
    w.shape = {E, rows, cols};
    w.data = random(DType::F32, w.shape, rng, 0.1f).values;
    for (size_t i = 0; i < w.data.size(); i += 97)
      w.data[i] *= 1e-4f; // e4m3 subnormals beside the block's largest
    for (int64_t e = 0; e < E; ++e)
      onFp8Grid(w.data.data() + e * rows * cols, rows, cols, 128);
    w.storage = WeightData::Storage::FP8Blocks;
    w.gemmOnly = true;
    return w;
  };
  experts.gate = stack(I, D);
  experts.up = stack(I, D);
  experts.down = stack(D, I);
  for (auto [weight, tensor] : {std::pair{&experts.gate, &experts.dg},
                                std::pair{&experts.up, &experts.du},
                                std::pair{&experts.down, &experts.dd}}) {
    Status s = test.device->importWeight(*weight, *tensor);
    ASSERT_FALSE(s) << s.message();
    test.owned.push_back(*tensor);
    if (test.device->name().rfind("cuda", 0) == 0)
      EXPECT_EQ(tensor->dtype, DType::FP8E4M3) << "kept in fp8 on the GPU";
  }
}

/// Choices of T tokens, K each, spread over the experts.
std::vector<int32_t> spreadChoices(int64_t T, int64_t K, int64_t E) {
  std::vector<int32_t> idx(static_cast<size_t>(T * K));
  for (size_t p = 0; p < idx.size(); ++p)
    idx[p] = int32_t((p * 3 + p / 5) % E);
  return idx;
}

void checkFp8ExpertStacks(DeviceConformance &test, std::mt19937 &rng, int64_t T,
                          int64_t I = 160, int64_t D = 288,
                          bool xOnGrid = false, bool sameBitsTwice = false,
                          bool fp8Activations = false) {
  Device &device = *test.device;
  const int64_t K = 2;
  Fp8Experts experts;
  importFp8Experts(test, rng, I, D, experts);
  if (testing::Test::HasFatalFailure())
    return;
  const WeightData &gate = experts.gate, &up = experts.up, &down = experts.down;
  const DeviceTensor &dg = experts.dg, &du = experts.du, &dd = experts.dd;
  HostTensor x = random(DType::F32, {T, D}, rng);
  if (xOnGrid) // as melt-assign-precision's activation quantization leaves x
    onFp8Grid(x.values.data(), T, D, 1);
  std::vector<int32_t> idx = spreadChoices(T, K, Fp8Experts::E);
  HostTensor w = random(DType::F32, {T, K}, rng);
  DeviceTensor dx = test.put(x), dw = test.put(w),
               di = test.make(DType::I32, {T, K}),
               y = test.make(DType::F32, {T, D});
  ASSERT_FALSE(device.upload(idx.data(), di));
  Status s = device.moeExperts(dx, di, dw, dg, du, dd, true, y);
  ASSERT_FALSE(s) << s.message();
  std::vector<double> want =
      expertsReference(x.values, idx, w.values, gate.data, up.data, down.data,
                       T, K, I, D, /*roundOperands=*/true,
                       /*combineBf16=*/true, fp8Activations);
  // FP8 activations: the gate and up sums' tensor-core accumulation
  // (within 2^-10 of their terms' magnitudes, GroupedGemmFp8Test) moves
  // many activations across an e4m3 step (1/16 to 1/8 of the value) that
  // the reference's exact sums do not cross: 1.4-2.1% of the largest
  // output on the H200 (1e-2 without them). A block lost or scaled wrongly
  // moves it by far more.
  EXPECT_LE(DeviceConformance::relativeError(test.get(y), want),
            fp8Activations ? 3e-2 : 1e-2)
      << T << " tokens" << (fp8Activations ? ", FP8 activations" : "");
  if (sameBitsTwice) {
    DeviceTensor again = test.make(DType::F32, {T, D});
    ASSERT_FALSE(device.moeExperts(dx, di, dw, dg, du, dd, true, again));
    EXPECT_EQ(test.get(again), test.get(y)) << T << " tokens";
  }
}

// FP8 stacks grouped on the device (their tiles widened to BF16 in the
// grouped product), twice the same bits.
TEST_P(DeviceConformance, MoeExpertsFp8GroupedOnTheDevice) {
  reopenWith("MELT_CUDA_FP8_GROUPED_WGMMA", "0");
  if (HasFatalFailure())
    return;
  checkFp8ExpertStacks(*this, rng, 300, /*I=*/256, /*D=*/384,
                       /*xOnGrid=*/true, /*sameBitsTwice=*/true);
  checkFp8ExpertStacks(*this, rng, 70, /*I=*/1408, /*D=*/2048,
                       /*xOnGrid=*/true);
}

// The same with their gate and up on FP8 tensor cores (x quantized per
// token in 1x128 blocks: exact where it is on that grid already), and a
// GPU's down product too, of the activations quantized in 1x128 blocks
// (MELT_CUDA_FP8_GROUPED_DOWN, by default; =0 keeps them BF16).
TEST_P(DeviceConformance, MoeExpertsFp8GroupedOnFp8TensorCores) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  for (const char *fp8Down : {"1", "0"}) {
    reopenWith("MELT_CUDA_FP8_GROUPED_DOWN", fp8Down);
    if (HasFatalFailure())
      return;
    const bool quantized = gpu && fp8Down[0] == '1';
    checkFp8ExpertStacks(*this, rng, 300, /*I=*/256, /*D=*/384,
                         /*xOnGrid=*/true, /*sameBitsTwice=*/true, quantized);
    checkFp8ExpertStacks(*this, rng, 70, /*I=*/1408, /*D=*/2048,
                         /*xOnGrid=*/true, /*sameBitsTwice=*/false, quantized);
  }
}

// The expert kernels' sums the same bits every run (a GPU's default,
// MELT_CUDA_DETERMINISTIC_EXPERTS=1: each pair's row written, a token's rows
// summed in choice order, instead of F32 atomics): the same values, twice
// the same. Row by row and grouped by expert, F32, BF16 and FP8 weights.
TEST_P(DeviceConformance, MoeExpertsSumTheSameBitsWhereAsked) {
  reopenWith("MELT_CUDA_DETERMINISTIC_EXPERTS", "1");
  if (HasFatalFailure())
    return;
  checkMoeExperts(*this, rng, 1);
  checkMoeExperts(*this, rng);
  checkMoeExperts(*this, rng, 40, 64, 32);
  for (int64_t T : {int64_t(1), int64_t(21)})
    checkFp8ExpertStacks(*this, rng, T, 160, 288, /*xOnGrid=*/false,
                         /*sameBitsTwice=*/true);
  checkFp8ExpertStacks(*this, rng, 1, 1408, 2048, /*xOnGrid=*/false,
                       /*sameBitsTwice=*/true);
}

// A norm whose value only FP8 products (or BF16 ones) read, preparing
// their input in its kernel (rmsNormForProducts, addRmsNormForProducts; a
// GPU quantizes the rows it wrote, or writes them in BF16), then the
// products of what it prepared (linearOfPrepared): the same bits as the
// norm and linear() (which quantizes its input itself, or rounds it to
// BF16), the norm's and the add's values too. Rows past a GPU's few-token
// kernel (24 there, 300 from cuBLASLt, its norms a warp a row on a GPU,
// and there 2100 as well, and 300 rows of 7168 columns: a block a row);
// two products of one norm, one K of 1536 (three 512s).
TEST_P(DeviceConformance, NormForProductsIsTheNormThenTheProducts) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  for (bool bf16 : {false, true})
    for (int64_t rows : {int64_t(24), int64_t(300), int64_t(gpu ? 2100 : 0)})
      for (int64_t cols : {int64_t(512), int64_t(1536), int64_t(7168)})
        for (bool add : {false, true}) {
          if (rows == 0 || (cols == 7168 && rows != 300))
            continue;
          HostTensor a = random(DType::F32, {rows, cols}, rng, 3.f);
          HostTensor b = random(DType::F32, {rows, cols}, rng, 3.f);
          HostTensor gamma = random(DType::F32, {cols}, rng);
          std::vector<WeightData> kept;
          kept.reserve(2);
          DeviceTensor w[2];
          for (DeviceTensor &weight : w) {
            if (bf16) {
              weight = put(random(DType::BF16, {256, cols}, rng, 0.05f));
              continue;
            }
            kept.push_back(fp8BlockWeight(rng, 256, cols));
            Status s = device->importWeight(kept.back(), weight);
            ASSERT_FALSE(s) << s.message();
            owned.push_back(weight);
          }
          // (BF16: from cuBLASLt's rows on, past the few-token kernel.)
          if (gpu && (!bf16 || rows >= 300))
            EXPECT_TRUE(device->preparesInNorm(w[0], rows))
                << rows << " rows, K " << cols << (bf16 ? ", BF16" : "");
          DeviceTensor da = put(a), db = put(b), dg = put(gamma);
          DeviceTensor sums[2] = {make(DType::F32, {rows, cols}),
                                  make(DType::F32, {rows, cols})};
          DeviceTensor normed = make(DType::F32, {rows, cols});
          DeviceTensor outs[2][2];
          for (auto &pair : outs)
            for (DeviceTensor &o : pair)
              o = make(DType::F32, {rows, 256});
          // Apart: the norm, then each product quantizing its input.
          Status s =
              add ? device->addRmsNorm(da, db, dg, 1e-6f, sums[0], normed)
                  : device->rmsNorm(da, dg, 1e-6f, normed);
          ASSERT_FALSE(s) << s.message();
          for (int p = 0; p < 2; ++p)
            ASSERT_FALSE(device->linear(normed, w[p], outs[0][p]));
          // Prepared by the norm; then with its rows read by nothing else
          // (a GPU leaves them unwritten: y keeps what it held).
          for (bool rowsRead : {true, false}) {
            const std::string what =
                std::to_string(rows) + " rows, K " + std::to_string(cols) +
                (bf16 ? ", BF16 weights" : ", FP8 weights") +
                (add ? ", add and norm" : ", norm") +
                (rowsRead ? "" : ", rows not read");
            DeviceTensor y = put(random(DType::F32, {rows, cols}, rng));
            const std::vector<float> held = get(y);
            Device::PreparedInput prepared;
            s = add ? device->addRmsNormForProducts(da, db, dg, 1e-6f, sums[1],
                                                    y, w[0], prepared, rowsRead)
                    : device->rmsNormForProducts(da, dg, 1e-6f, y, w[0],
                                                 prepared, rowsRead);
            ASSERT_FALSE(s) << s.message();
            if (gpu) {
              EXPECT_NE(bf16 ? prepared.bf16.data : prepared.q.data, nullptr)
                  << what;
              EXPECT_EQ(prepared.rowsUnwritten, !rowsRead) << what;
            }
            for (int p = 0; p < 2; ++p) {
              s = device->linearOfPrepared(y, prepared, w[p], outs[1][p]);
              ASSERT_FALSE(s) << s.message();
            }
            device->release(prepared.q);
            device->release(prepared.scales);
            device->release(prepared.bf16);
            EXPECT_EQ(get(y), prepared.rowsUnwritten ? held : get(normed))
                << what;
            if (add)
              EXPECT_EQ(get(sums[1]), get(sums[0])) << what;
            for (int p = 0; p < 2; ++p)
              EXPECT_EQ(get(outs[1][p]), get(outs[0][p])) << what;
          }
        }
}

/// A MoE layer's input norm's operands for T tokens of D (K choices each
/// of E experts, spread), and for the norm's two ways (apart, then through
/// what it prepared) its sums, the router's scores and the experts'
/// outputs.
struct MoeNormCase {
  DeviceTensor a, b, gamma, indices, weights, normed;
  DeviceTensor sums[2], scores[2], outs[2];
};
MoeNormCase moeNormCase(DeviceConformance &test, std::mt19937 &rng, int64_t T,
                        int64_t D, int64_t K, int64_t E) {
  MoeNormCase c;
  c.a = test.put(random(DType::F32, {T, D}, rng, 3.f));
  c.b = test.put(random(DType::F32, {T, D}, rng, 3.f));
  c.gamma = test.put(random(DType::F32, {D}, rng));
  c.indices = test.make(DType::I32, {T, K});
  c.weights = test.put(random(DType::F32, {T, K}, rng));
  const std::vector<int32_t> idx = spreadChoices(T, K, E);
  EXPECT_FALSE(test.device->upload(idx.data(), c.indices));
  c.normed = test.make(DType::F32, {T, D});
  for (int i = 0; i < 2; ++i) {
    c.sums[i] = test.make(DType::F32, {T, D});
    c.scores[i] = test.make(DType::F32, {T, E});
    c.outs[i] = test.make(DType::F32, {T, D});
  }
  return c;
}

// A MoE layer's input norm preparing what its router and experts read
// (addRmsNormForExperts, attached to its value), its rows left unwritten
// where only they read them (on a GPU with
// MELT_CUDA_MOE_NORM_ROWS_UNWRITTEN=1): the router's scores and the
// experts' sums the same bits as from the norm's rows, y untouched. A
// device that prepares nothing for experts has nothing to check.
TEST_P(DeviceConformance, MoeNormRowsUnwrittenAreReadThroughWhatItPrepared) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  if (gpu) {
    reopenWith("MELT_CUDA_MOE_NORM_ROWS_UNWRITTEN", "1");
    if (HasFatalFailure())
      return;
  }
  const int64_t T = 256, D = 512, I = 256, K = 2, E = Fp8Experts::E;
  Fp8Experts experts;
  importFp8Experts(*this, rng, I, D, experts);
  if (HasFatalFailure())
    return;
  DeviceTensor router = put(random(DType::BF16, {E, D}, rng, 0.1f));
  if (gpu)
    EXPECT_TRUE(device->preparesForExperts(router, experts.dg, T));
  if (!device->preparesForExperts(router, experts.dg, T))
    GTEST_SKIP() << device->name() << " prepares nothing for experts";
  MoeNormCase c = moeNormCase(*this, rng, T, D, K, E);
  DeviceTensor &da = c.a, &db = c.b, &gamma = c.gamma, &di = c.indices,
               &dw = c.weights, &normed = c.normed;
  DeviceTensor(&sums)[2] = c.sums, (&scores)[2] = c.scores, (&outs)[2] = c.outs;
  // Apart: the norm's rows, read by the router and the experts.
  ASSERT_FALSE(device->addRmsNorm(da, db, gamma, 1e-6f, sums[0], normed));
  ASSERT_FALSE(device->linear(normed, router, scores[0]));
  ASSERT_FALSE(device->moeExpertsOfQuantized(
      normed, di, dw, experts.dg, experts.du, experts.dd, true, outs[0]));
  // Through what the norm prepared, its rows read by nothing else.
  DeviceTensor y = put(random(DType::F32, {T, D}, rng));
  const std::vector<float> held = get(y);
  Device::PreparedInput prepared;
  Status s = device->addRmsNormForExperts(da, db, gamma, 1e-6f, sums[1], y,
                                          experts.dg, prepared,
                                          /*rowsRead=*/false);
  ASSERT_FALSE(s) << s.message();
  if (gpu)
    EXPECT_TRUE(prepared.rowsUnwritten);
  device->attachPrepared(y.data, prepared);
  s = device->linear(y, router, scores[1]);
  EXPECT_FALSE(s) << s.message();
  s = device->moeExpertsOfQuantized(y, di, dw, experts.dg, experts.du,
                                    experts.dd, true, outs[1]);
  EXPECT_FALSE(s) << s.message();
  device->detachPrepared(y.data);
  ASSERT_FALSE(device->synchronize());
  EXPECT_EQ(get(sums[1]), get(sums[0]));
  EXPECT_EQ(get(scores[1]), get(scores[0]));
  EXPECT_EQ(get(outs[1]), get(outs[0]));
  EXPECT_EQ(get(y), prepared.rowsUnwritten ? held : get(normed));
  device->release(prepared.q);
  device->release(prepared.scales);
  device->release(prepared.bf16);
}

// The same for BF16 stacks (256 tokens, two choices each: grouped on a
// GPU): the norm prepares its rows in BF16, which the router's product,
// the experts' gathered rows and a shared expert's BF16 gate run apart
// (linearOfPrepared) read; the same bits as from the norm's F32 rows.
TEST_P(DeviceConformance, MoeNormBf16RowsAreReadByItsReaders) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  if (gpu) {
    reopenWith("MELT_CUDA_MOE_NORM_ROWS_UNWRITTEN", "1");
    if (HasFatalFailure())
      return;
  }
  const int64_t T = 256, D = 512, I = 256, K = 2, E = 4;
  DeviceTensor gate = put(random(DType::BF16, {E, I, D}, rng, 0.1f)),
               up = put(random(DType::BF16, {E, I, D}, rng, 0.1f)),
               down = put(random(DType::BF16, {E, D, I}, rng, 0.1f)),
               sharedGate = put(random(DType::BF16, {I, D}, rng, 0.1f)),
               router = put(random(DType::BF16, {E, D}, rng, 0.1f));
  if (gpu)
    EXPECT_TRUE(device->preparesForExperts(router, gate, T));
  if (!device->preparesForExperts(router, gate, T))
    GTEST_SKIP() << device->name() << " prepares nothing for BF16 experts";
  MoeNormCase c = moeNormCase(*this, rng, T, D, K, E);
  DeviceTensor &da = c.a, &db = c.b, &gamma = c.gamma, &di = c.indices,
               &dw = c.weights, &normed = c.normed;
  DeviceTensor(&sums)[2] = c.sums, (&scores)[2] = c.scores, (&outs)[2] = c.outs;
  DeviceTensor shared[2] = {make(DType::F32, {T, I}), make(DType::F32, {T, I})};
  ASSERT_FALSE(device->addRmsNorm(da, db, gamma, 1e-6f, sums[0], normed));
  ASSERT_FALSE(device->linear(normed, router, scores[0]));
  ASSERT_FALSE(
      device->moeExperts(normed, di, dw, gate, up, down, true, outs[0]));
  ASSERT_FALSE(device->linear(normed, sharedGate, shared[0]));
  DeviceTensor y = put(random(DType::F32, {T, D}, rng));
  const std::vector<float> held = get(y);
  Device::PreparedInput prepared;
  Status s = device->addRmsNormForExperts(da, db, gamma, 1e-6f, sums[1], y,
                                          gate, prepared, /*rowsRead=*/false);
  ASSERT_FALSE(s) << s.message();
  if (gpu) {
    EXPECT_TRUE(prepared.rowsUnwritten);
    EXPECT_NE(prepared.bf16.data, nullptr);
    EXPECT_EQ(prepared.q.data, nullptr);
  }
  device->attachPrepared(y.data, prepared);
  s = device->linear(y, router, scores[1]);
  EXPECT_FALSE(s) << s.message();
  s = device->moeExperts(y, di, dw, gate, up, down, true, outs[1]);
  EXPECT_FALSE(s) << s.message();
  s = device->linearOfPrepared(y, prepared, sharedGate, shared[1]);
  EXPECT_FALSE(s) << s.message();
  device->detachPrepared(y.data);
  ASSERT_FALSE(device->synchronize());
  EXPECT_EQ(get(sums[1]), get(sums[0]));
  EXPECT_EQ(get(scores[1]), get(scores[0]));
  EXPECT_EQ(get(outs[1]), get(outs[0]));
  EXPECT_EQ(get(shared[1]), get(shared[0]));
  EXPECT_EQ(get(y), prepared.rowsUnwritten ? held : get(normed));
  device->release(prepared.bf16);
}

/// Where a device writes an FP8 product in BF16 (linearWritesBf16: the
/// CUDA device past its few-token kernel, for the executor's BF16
/// products), the values are those of its F32 product (BF16 values, or
/// rounded so), the SiLU-mul's product's likewise, and add, addRmsNorm and
/// addRmsNormForProducts take the BF16 operand as its values: the same bits
/// as with the F32 operand; where it reads BF16 activations
/// (readsBf16Activations), so do rmsNorm, rmsNormForProducts, slice and
/// rope.
TEST_P(DeviceConformance, Bf16ProductsAreTheProductsValues) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  const int64_t K = 512, N = 1024;
  for (int64_t rows : {int64_t(1), int64_t(300)}) {
    std::vector<WeightData> kept;
    kept.push_back(fp8BlockWeight(rng, N, K));
    DeviceTensor w;
    Status s = device->importWeight(kept.back(), w);
    ASSERT_FALSE(s) << s.message();
    owned.push_back(w);
    if (gpu)
      EXPECT_EQ(device->linearWritesBf16(w, rows), rows == 300) << rows;
    if (!device->linearWritesBf16(w, rows))
      continue;
    const std::string what = std::to_string(rows) + " rows";
    DeviceTensor wide[2], narrow[2];
    productsInBothTypes(w, rows, wide, narrow);
    if (HasFatalFailure())
      return;
    for (DeviceTensor &t : wide)
      if (!device->linearOutputsBf16(w))
        ASSERT_FALSE(device->roundToBf16(t));
    EXPECT_EQ(get(narrow[0]), get(wide[0])) << what << ", linear";
    EXPECT_EQ(get(narrow[1]), get(wide[1])) << what << ", SiLU-mul's linear";
    // The residual stream plus the product, alone and with the norm.
    DeviceTensor a = put(random(DType::F32, {rows, N}, rng, 3.f));
    DeviceTensor gamma = put(random(DType::F32, {N}, rng));
    DeviceTensor sums[2], normed[2];
    for (int i = 0; i < 2; ++i) {
      sums[i] = make(DType::F32, {rows, N});
      normed[i] = make(DType::F32, {rows, N});
    }
    ASSERT_FALSE(device->add(a, wide[0], sums[0]));
    ASSERT_FALSE(device->add(a, narrow[0], sums[1]));
    EXPECT_EQ(get(sums[1]), get(sums[0])) << what << ", add";
    ASSERT_FALSE(
        device->addRmsNorm(a, wide[0], gamma, 1e-6f, sums[0], normed[0]));
    ASSERT_FALSE(
        device->addRmsNorm(a, narrow[0], gamma, 1e-6f, sums[1], normed[1]));
    EXPECT_EQ(get(sums[1]), get(sums[0])) << what << ", add and norm";
    EXPECT_EQ(get(normed[1]), get(normed[0])) << what << ", add and norm";
    Device::PreparedInput prepared[2];
    for (int i = 0; i < 2; ++i) {
      s = device->addRmsNormForProducts(a, i ? narrow[0] : wide[0], gamma,
                                        1e-6f, sums[i], normed[i], w,
                                        prepared[i], /*rowsRead=*/true);
      ASSERT_FALSE(s) << s.message();
    }
    EXPECT_EQ(get(sums[1]), get(sums[0])) << what << ", for products";
    EXPECT_EQ(get(normed[1]), get(normed[0])) << what << ", for products";
    for (Device::PreparedInput &p : prepared) {
      device->release(p.q);
      device->release(p.scales);
      device->release(p.bf16);
    }
    if (!device->readsBf16Activations())
      continue;
    // The product's BF16 value read by a norm, a norm for products, a rope
    // and a slice: the same as its F32 value (a slice's BF16 part holds
    // the F32 part's values).
    DeviceTensor normedBy[2] = {make(DType::F32, {rows, N}),
                                make(DType::F32, {rows, N})};
    ASSERT_FALSE(device->rmsNorm(wide[0], gamma, 1e-6f, normedBy[0]));
    ASSERT_FALSE(device->rmsNorm(narrow[0], gamma, 1e-6f, normedBy[1]));
    EXPECT_EQ(get(normedBy[1]), get(normedBy[0])) << what << ", norm";
    for (int i = 0; i < 2; ++i) {
      s = device->rmsNormForProducts(i ? narrow[0] : wide[0], gamma, 1e-6f,
                                     normedBy[i], w, prepared[i],
                                     /*rowsRead=*/true);
      ASSERT_FALSE(s) << s.message();
    }
    EXPECT_EQ(get(normedBy[1]), get(normedBy[0])) << what << ", norm for "
                                                  << "products";
    for (Device::PreparedInput &p : prepared) {
      device->release(p.q);
      device->release(p.scales);
      device->release(p.bf16);
    }
    const RopeParams yarn = deepSeekV3Yarn(/*mscaleAllDim=*/0);
    std::vector<int32_t> positions(static_cast<size_t>(rows));
    for (int64_t t = 0; t < rows; ++t)
      positions[size_t(t)] = int32_t(3 * t + 1);
    DeviceTensor dp = make(DType::I32, {rows});
    ASSERT_FALSE(device->upload(positions.data(), dp));
    DeviceTensor keys[2] = {make(DType::F32, {rows, 64}),
                            make(DType::BF16, {rows, 64})};
    DeviceTensor rotated[2] = {make(DType::F32, {rows, 64}),
                               make(DType::F32, {rows, 64})};
    for (int i = 0; i < 2; ++i) {
      ASSERT_FALSE(device->slice(i ? narrow[0] : wide[0], 1, 448, keys[i]));
      ASSERT_FALSE(device->rope(keys[i], dp, yarn, rotated[i]));
    }
    EXPECT_EQ(get(keys[1]), get(keys[0])) << what << ", slice";
    EXPECT_EQ(get(rotated[1]), get(rotated[0])) << what << ", rope";
    // Two products' BF16 values as an MLP's gate and up: the SiLU-mul, and
    // the down product that takes them (linearOfSiluMul), the same as of
    // their F32 values.
    kept.push_back(fp8BlockWeight(rng, 256, N));
    DeviceTensor down;
    s = device->importWeight(kept.back(), down);
    ASSERT_FALSE(s) << s.message();
    owned.push_back(down);
    DeviceTensor gated[2] = {make(DType::F32, {rows, N}),
                             make(DType::F32, {rows, N})};
    DeviceTensor downs[2] = {make(DType::F32, {rows, 256}),
                             make(DType::F32, {rows, 256})};
    for (int i = 0; i < 2; ++i) {
      const DeviceTensor *pair = i ? narrow : wide;
      ASSERT_FALSE(device->siluMul(pair[0], pair[1], gated[i]));
      s = device->linearOfSiluMul(pair[0], pair[1], down, downs[i]);
      ASSERT_FALSE(s) << s.message();
    }
    EXPECT_EQ(get(gated[1]), get(gated[0])) << what << ", SiLU-mul";
    EXPECT_EQ(get(downs[1]), get(downs[0]))
        << what << ", the product of a SiLU-mul";
  }
}

/// T tokens' routed FP8 experts (K choices each) with a shared expert (FP8
/// linears of intermediate size `sharedI`) in one call against the calls
/// the executor makes for them apart: the routed experts of x quantized,
/// the shared expert's gate and up, its down product of their SiLU-mul,
/// each rounded to BF16 where the device keeps more, and the add. The same
/// bits where the device runs those calls (the CPU), and on a GPU for many
/// tokens (the shared products beside the grouped experts from x's codes
/// quantized once, the add in the combine: the same arithmetic); one
/// token's on a GPU reads the shared expert as one more expert of its row
/// kernels (fusesSharedExpert), whose sums run in an order of their own.
void checkSharedExpertInOneCall(DeviceConformance &test, std::mt19937 &rng,
                                int64_t I, int64_t D, int64_t sharedI,
                                int64_t T = 1, int64_t K = 2) {
  Device &device = *test.device;
  Fp8Experts experts;
  importFp8Experts(test, rng, I, D, experts);
  if (testing::Test::HasFatalFailure())
    return;
  DeviceTensor sg, su, sd;
  // (Kept while in use: a device may multiply the host copy itself.)
  std::vector<WeightData> kept;
  kept.reserve(3);
  for (auto [tensor, rows, cols] :
       {std::tuple{&sg, sharedI, D}, {&su, sharedI, D}, {&sd, D, sharedI}}) {
    kept.push_back(fp8BlockWeight(rng, rows, cols));
    Status s = device.importWeight(kept.back(), *tensor);
    ASSERT_FALSE(s) << s.message();
    test.owned.push_back(*tensor);
  }
  Device::SharedExpert shared;
  shared.gate = &sg;
  shared.up = &su;
  shared.down = &sd;
  shared.roundGateUp = shared.roundDown = true;
  const bool gpu = device.name().rfind("cuda", 0) == 0;
  if (gpu)
    EXPECT_TRUE(device.fusesSharedExpert(experts.dg, shared, T))
        << "I " << I << ", shared " << sharedI;
  HostTensor x = random(DType::F32, {T, D}, rng);
  std::vector<int32_t> idx = spreadChoices(T, K, Fp8Experts::E);
  HostTensor w = random(DType::F32, {T, K}, rng);
  DeviceTensor dx = test.put(x), dw = test.put(w),
               di = test.make(DType::I32, {T, K}),
               fused = test.make(DType::F32, {T, D}),
               routed = test.make(DType::F32, {T, D}),
               g = test.make(DType::F32, {T, sharedI}),
               u = test.make(DType::F32, {T, sharedI}),
               d = test.make(DType::F32, {T, D}),
               apart = test.make(DType::F32, {T, D});
  ASSERT_FALSE(device.upload(idx.data(), di));
  Status s = device.moeExpertsWithShared(dx, di, dw, experts.dg, experts.du,
                                         experts.dd, true, true, shared, fused);
  ASSERT_FALSE(s) << s.message();
  auto rounded = [&](const DeviceTensor &weight, DeviceTensor &y) {
    return device.linearOutputsBf16(weight) ? Status::ok()
                                            : device.roundToBf16(y);
  };
  ASSERT_FALSE(device.moeExpertsOfQuantized(dx, di, dw, experts.dg, experts.du,
                                            experts.dd, true, routed));
  ASSERT_FALSE(device.linear(dx, sg, g));
  ASSERT_FALSE(rounded(sg, g));
  ASSERT_FALSE(device.linear(dx, su, u));
  ASSERT_FALSE(rounded(su, u));
  ASSERT_FALSE(device.linearOfSiluMul(g, u, sd, d));
  ASSERT_FALSE(rounded(sd, d));
  ASSERT_FALSE(device.add(routed, d, apart));
  const std::vector<float> have = test.get(fused), want = test.get(apart);
  if (!gpu || T > 1) {
    EXPECT_EQ(have, want) << T << " tokens, I " << I << ", shared " << sharedI
                          << ": relative error "
                          << DeviceConformance::relativeError(
                                 have,
                                 std::vector<double>(want.begin(), want.end()));
    return;
  }
  EXPECT_LE(DeviceConformance::relativeError(
                have, std::vector<double>(want.begin(), want.end())),
            1e-2)
      << "I " << I << ", shared " << sharedI;
}

// A decode step's MoE layer with its shared expert in one call: the shared
// expert's K padded on a GPU (1408, 2816: mini's and V2-Lite's), of the
// routed experts' size and twice it, the sums the same bits or with atomics.
TEST_P(DeviceConformance, MoeExpertsWithSharedIsTheCallsApart) {
  for (const char *deterministic : {"1", "0"}) {
    if (device->name().rfind("cuda", 0) != 0 && *deterministic == '0')
      break; // (a GPU's switch)
    reopenWith("MELT_CUDA_DETERMINISTIC_EXPERTS", deterministic);
    if (HasFatalFailure())
      return;
    checkSharedExpertInOneCall(*this, rng, 1408, 512, 1408);
    checkSharedExpertInOneCall(*this, rng, 1408, 512, 2816);
  }
}

// A prefill's MoE layer with its shared expert in one call: on a GPU the
// grouped FP8 experts' path (fusesSharedExpert for many tokens; the shared
// down product's K padded for 1408), the same bits as the calls apart.
TEST_P(DeviceConformance, ManyTokensMoeExpertsWithSharedIsTheCallsApart) {
  for (int64_t sharedI : {int64_t(1408), int64_t(512)})
    checkSharedExpertInOneCall(*this, rng, 256, 512, sharedI, /*T=*/160,
                               /*K=*/3);
}

/// BF16 routed stacks (E experts of I x D) and a BF16 shared expert of
/// intermediate size sharedI, its products' outputs rounded to BF16 where
/// `rounded` (the bf16 policy's precision), for moeExpertsWithShared.
struct Bf16SharedMoe {
  DeviceTensor gate, up, down, sharedGate, sharedUp, sharedDown;
  Device::SharedExpert shared;
  Bf16SharedMoe(DeviceConformance &test, std::mt19937 &rng, int64_t E,
                int64_t I, int64_t D, int64_t sharedI, bool rounded) {
    gate = test.put(random(DType::BF16, {E, I, D}, rng, 0.1f));
    up = test.put(random(DType::BF16, {E, I, D}, rng, 0.1f));
    down = test.put(random(DType::BF16, {E, D, I}, rng, 0.1f));
    sharedGate = test.put(random(DType::BF16, {sharedI, D}, rng, 0.1f));
    sharedUp = test.put(random(DType::BF16, {sharedI, D}, rng, 0.1f));
    sharedDown = test.put(random(DType::BF16, {D, sharedI}, rng, 0.1f));
    shared.gate = &sharedGate;
    shared.up = &sharedUp;
    shared.down = &sharedDown;
    shared.roundGateUp = shared.roundDown = rounded;
  }
  Bf16SharedMoe(const Bf16SharedMoe &) = delete; // (shared points here)
  /// The calls apart on x's T rows: the routed experts (their rows
  /// rounded to BF16 before the sum with combineBf16), the shared
  /// expert's linears (rounded as its precision says), its SiLU-mul, the
  /// add.
  std::vector<float> apart(DeviceConformance &test, const DeviceTensor &x,
                           const DeviceTensor &indices,
                           const DeviceTensor &weights,
                           bool combineBf16 = true) const {
    Device &device = *test.device;
    const int64_t T = x.shape[0], D = x.shape[1], sharedI = sharedGate.shape[0];
    DeviceTensor routed = test.make(DType::F32, {T, D}),
                 g = test.make(DType::F32, {T, sharedI}),
                 u = test.make(DType::F32, {T, sharedI}),
                 act = test.make(DType::F32, {T, sharedI}),
                 d = test.make(DType::F32, {T, D}),
                 sum = test.make(DType::F32, {T, D});
    auto product = [&](const DeviceTensor &in, const DeviceTensor &w,
                       DeviceTensor &out) {
      Status st = device.linear(in, w, out);
      return !st && shared.roundDown && !device.linearOutputsBf16(w)
                 ? device.roundToBf16(out)
                 : st;
    };
    EXPECT_FALSE(device.moeExperts(x, indices, weights, gate, up, down,
                                   combineBf16, routed));
    EXPECT_FALSE(product(x, sharedGate, g));
    EXPECT_FALSE(product(x, sharedUp, u));
    EXPECT_FALSE(device.siluMul(g, u, act));
    EXPECT_FALSE(product(act, sharedDown, d));
    EXPECT_FALSE(device.add(routed, d, sum));
    return test.get(sum);
  }
};

// The same for BF16 weights (the bf16 policy: the linears' outputs kept
// in F32, or rounded to BF16 where their precision says so), one token; a
// GPU with MELT_CUDA_FUSED_SHARED_EXPERT_BF16=1 reads the shared expert as
// one more expert of its BF16 row kernels.
TEST_P(DeviceConformance, Bf16MoeExpertsWithSharedIsTheCallsApart) {
  reopenWith("MELT_CUDA_FUSED_SHARED_EXPERT_BF16", "1");
  if (HasFatalFailure())
    return;
  const int64_t T = 1, K = 2, E = 4, D = 256;
  for (auto [I, sharedI] : {std::pair<int64_t, int64_t>{128, 128}, {96, 192}})
    for (bool rounded : {false, true}) {
      const Bf16SharedMoe moe(*this, rng, E, I, D, sharedI, rounded);
      if (device->name().rfind("cuda", 0) == 0)
        EXPECT_TRUE(device->fusesSharedExpert(moe.gate, moe.shared, T));
      std::vector<int32_t> idx = spreadChoices(T, K, E);
      DeviceTensor dx = put(random(DType::F32, {T, D}, rng)),
                   dw = put(random(DType::F32, {T, K}, rng)),
                   di = make(DType::I32, {T, K}),
                   fused = make(DType::F32, {T, D});
      ASSERT_FALSE(device->upload(idx.data(), di));
      Status s =
          device->moeExpertsWithShared(dx, di, dw, moe.gate, moe.up, moe.down,
                                       true, false, moe.shared, fused);
      ASSERT_FALSE(s) << s.message();
      const std::vector<float> have = get(fused),
                               want = moe.apart(*this, dx, di, dw);
      if (device->name().rfind("cuda", 0) != 0) {
        EXPECT_EQ(have, want);
        continue;
      }
      EXPECT_LE(
          relativeError(have, std::vector<double>(want.begin(), want.end())),
          1e-2)
          << "I " << I << ", shared " << sharedI << ", rounded " << rounded;
    }
}

// A prefill's BF16 MoE layer with its shared expert in one call: on a GPU
// the grouped experts with the shared expert's products from x's BF16 rows
// and its output added by the combine; the values of the calls apart, x's
// rows as F32 and as a norm's BF16 rows attached to them (never read as
// F32 then). The products' outputs rounded to BF16 (with the experts' rows
// rounded before the sum), and kept in F32 as the bf16 policy's linears
// keep them on one device.
TEST_P(DeviceConformance, ManyTokensBf16MoeExpertsWithSharedIsTheCallsApart) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  const int64_t T = 160, K = 3, E = 4, I = 256, D = 512, sharedI = 512;
  for (bool rounded : {true, false}) {
    const Bf16SharedMoe moe(*this, rng, E, I, D, sharedI, rounded);
    if (gpu)
      EXPECT_TRUE(device->fusesSharedExpert(moe.gate, moe.shared, T))
          << "rounded " << rounded;
    const std::vector<int32_t> idx = spreadChoices(T, K, E);
    DeviceTensor dx = put(random(DType::F32, {T, D}, rng)),
                 dw = put(random(DType::F32, {T, K}, rng)),
                 di = make(DType::I32, {T, K});
    ASSERT_FALSE(device->upload(idx.data(), di));
    const std::vector<float> want = moe.apart(*this, dx, di, dw, rounded);
    const std::vector<double> wanted(want.begin(), want.end());
    for (bool attached : {false, true}) {
      DeviceTensor x = dx, fused = make(DType::F32, {T, D});
      Device::PreparedInput rows;
      if (attached) {
        // x's rows as a norm would leave them: BF16 attached, F32 NaNs.
        x = put(random(DType::F32, {T, D}, rng));
        ASSERT_FALSE(device->allocate(DType::BF16, {T, D}, rows.bf16));
        ASSERT_FALSE(device->copy(dx, x));
        DeviceTensor asBf16 = rows.bf16;
        ASSERT_FALSE(device->roundToBf16(x));
        std::vector<float> host = get(x);
        std::vector<uint16_t> bits(host.size());
        for (size_t i = 0; i < host.size(); ++i) {
          uint32_t word;
          std::memcpy(&word, &host[i], 4);
          bits[i] = uint16_t(word >> 16); // (exact: rounded already)
        }
        ASSERT_FALSE(device->upload(bits.data(), asBf16));
        std::vector<float> nans(host.size(), std::nanf(""));
        ASSERT_FALSE(device->upload(nans.data(), x));
        rows.rowsUnwritten = true;
        device->attachPrepared(x.data, rows);
      }
      Status s =
          device->moeExpertsWithShared(x, di, dw, moe.gate, moe.up, moe.down,
                                       rounded, false, moe.shared, fused);
      if (attached)
        device->detachPrepared(x.data);
      if (attached && !gpu) { // (a CPU has nothing to read them through)
        device->release(rows.bf16);
        continue;
      }
      ASSERT_FALSE(s) << s.message();
      const std::vector<float> have = get(fused);
      EXPECT_LE(relativeError(have, wanted), gpu ? 1e-2 : 0.0)
          << (attached ? "x's BF16 rows attached" : "x's F32 rows")
          << ", rounded " << rounded;
      device->release(rows.bf16);
    }
  }
}

// A MoE layer's output left to the add and norm that read it next
// (Device::leaveCombineToNorm; a GPU's grouped experts then skip their
// combine and the norm's add makes the rows): the same bits as the experts'
// output written and added, for the combine as either operand of the add,
// for the norms that prepare BF16 rows or FP8 codes for their products,
// and with the routed experts alone or their shared expert in the call.
// Any other call first writes the rows (here a download), so a guess that
// proves wrong gives the same values too.
TEST_P(DeviceConformance, MoeCombineLeftToTheNextNormGivesTheSameBits) {
  const int64_t T = 160, K = 3, E = 4, I = 256, D = 512, sharedI = 512;
  const Bf16SharedMoe moe(*this, rng, E, I, D, sharedI, /*rounded=*/true);
  const std::vector<int32_t> idx = spreadChoices(T, K, E);
  DeviceTensor x = put(random(DType::F32, {T, D}, rng)),
               w = put(random(DType::F32, {T, K}, rng)),
               di = make(DType::I32, {T, K}),
               residual = put(random(DType::F32, {T, D}, rng)),
               gamma = put(random(DType::F32, {D}, rng)),
               bf16Weight = put(random(DType::BF16, {128, D}, rng, 0.1f)),
               f32Weight = put(random(DType::F32, {128, D}, rng, 0.1f));
  ASSERT_FALSE(device->upload(idx.data(), di));
  const float eps = 1e-6f;
  // The norm's outputs: the sum, y, and what it prepared (BF16 rows or FP8
  // codes and scales, as bytes).
  struct Outputs {
    std::vector<float> sum, y;
    std::vector<uint8_t> prepared;
    uint64_t launches = 0; // (a GPU's, from the experts call to the norm's)
  };
  auto bytesOf = [&](const DeviceTensor &t) {
    std::vector<uint8_t> bytes(t.bytes());
    if (t.data)
      EXPECT_FALSE(device->download(t, bytes.data()));
    return bytes;
  };
  // norm 0: addRmsNorm; 1: for BF16 products; 2: for FP8 products.
  auto layer = [&](bool shared, bool left, bool combineFirst, int norm,
                   bool readFirst) {
    DeviceTensor out = make(DType::F32, {T, D}), sum = make(DType::F32, {T, D}),
                 y = make(DType::F32, {T, D});
    const uint64_t launched = melt::rt::cuda::overlappedLaunchCount();
    device->leaveCombineToNorm(left);
    Status s = shared ? device->moeExpertsWithShared(x, di, w, moe.gate, moe.up,
                                                     moe.down, true, false,
                                                     moe.shared, out)
                      : device->moeExperts(x, di, w, moe.gate, moe.up, moe.down,
                                           true, out);
    device->leaveCombineToNorm(false);
    EXPECT_FALSE(s) << s.message();
    Outputs o;
    if (readFirst) // (a call that reads the rows before the norm)
      o.prepared = bytesOf(out);
    const DeviceTensor &a = combineFirst ? out : residual,
                       &b = combineFirst ? residual : out;
    Device::PreparedInput prepared;
    s = norm == 0
            ? device->addRmsNorm(a, b, gamma, eps, sum, y)
            : device->addRmsNormForProducts(a, b, gamma, eps, sum, y,
                                            norm == 1 ? bf16Weight : f32Weight,
                                            prepared, true);
    EXPECT_FALSE(s) << s.message();
    o.launches = melt::rt::cuda::overlappedLaunchCount() - launched;
    o.sum = get(sum);
    o.y = get(y);
    for (const DeviceTensor *t :
         {&prepared.bf16, &prepared.q, &prepared.scales}) {
      std::vector<uint8_t> bytes = bytesOf(*t);
      o.prepared.insert(o.prepared.end(), bytes.begin(), bytes.end());
      device->release(*const_cast<DeviceTensor *>(t));
    }
    return o;
  };
  for (bool shared : {false, true})
    for (int norm : {0, 1, 2})
      for (bool combineFirst : {false, true}) {
        const Outputs want = layer(shared, false, combineFirst, norm, false),
                      have = layer(shared, true, combineFirst, norm, false);
        const std::string what =
            std::string(shared ? "with" : "without") + " the shared expert, " +
            (norm == 0   ? "addRmsNorm"
             : norm == 1 ? "BF16 rows"
                         : "FP8 codes") +
            (combineFirst ? ", the combine as a" : ", the combine as b");
        EXPECT_EQ(0, std::memcmp(want.sum.data(), have.sum.data(),
                                 want.sum.size() * 4))
            << what;
        EXPECT_EQ(0,
                  std::memcmp(want.y.data(), have.y.data(), want.y.size() * 4))
            << what;
        EXPECT_EQ(want.prepared, have.prepared) << what;
        // On a GPU the combine's kernel is left out (the grouped experts
        // take these shapes).
        if (device->name().rfind("cuda", 0) == 0)
          EXPECT_EQ(have.launches + 1, want.launches) << what;
      }
  // Read before the norm: written all the same.
  const Outputs want = layer(true, false, false, 0, true),
                have = layer(true, true, false, 0, true);
  EXPECT_EQ(want.prepared, have.prepared);
  EXPECT_EQ(0,
            std::memcmp(want.sum.data(), have.sum.data(), want.sum.size() * 4));
}

// The same values with the sums in F32 atomics where asked (a GPU:
// MELT_CUDA_DETERMINISTIC_EXPERTS=0).
TEST_P(DeviceConformance, MoeExpertsSumWithAtomicsWhereAsked) {
  reopenWith("MELT_CUDA_DETERMINISTIC_EXPERTS", "0");
  if (HasFatalFailure())
    return;
  checkMoeExperts(*this, rng, 1);
  checkMoeExperts(*this, rng);
  for (int64_t T : {int64_t(1), int64_t(21)})
    checkFp8ExpertStacks(*this, rng, T);
}

// The experts of x quantized in 1 x 128 FP8 blocks (moeExpertsOfQuantized:
// where the device quantizes the experts' input itself, the executor folds
// the quantize pair in front of them; a GPU's one-token FP8 experts row by
// row) are the experts of the pair's output, bit for bit (the sums in a
// fixed order): one token (quantized as the kernels stage x) and several
// (the pair run first), a partial last block (D 288) and mini's sizes;
// and many tokens at mini's sizes (a GPU's experts grouped on FP8 tensor
// cores, which quantize x themselves: the same codes but where v / s and
// v * (1 / s) round apart, and scales within an ulp: 1e-3 of the largest
// output).
TEST_P(DeviceConformance, MoeExpertsOfQuantizedAreThePairThenTheExperts) {
  reopenWith("MELT_CUDA_DETERMINISTIC_EXPERTS", "1");
  if (HasFatalFailure())
    return;
  const int64_t K = 2;
  for (auto [I, D] : {std::pair<int64_t, int64_t>{160, 288}, {1408, 2048}}) {
    Fp8Experts experts;
    importFp8Experts(*this, rng, I, D, experts);
    if (HasFatalFailure())
      return;
    for (int64_t T : {int64_t(1), int64_t(5), int64_t(100)}) {
      if (T == 100 && I != 1408)
        continue;
      HostTensor x = random(DType::F32, {T, D}, rng, 3.f);
      HostTensor w = random(DType::F32, {T, K}, rng);
      std::vector<int32_t> idx = spreadChoices(T, K, Fp8Experts::E);
      const int64_t blocks = (D + 127) / 128;
      DeviceTensor dx = put(x), dw = put(w), di = make(DType::I32, {T, K}),
                   q = make(DType::FP8E4M3, {T, D}),
                   scales = make(DType::F32, {T, blocks}),
                   paired = make(DType::F32, {T, D}),
                   want = make(DType::F32, {T, D}),
                   have = make(DType::F32, {T, D});
      ASSERT_FALSE(device->upload(idx.data(), di));
      ASSERT_FALSE(device->quantizeBlocks(dx, 128, q, scales));
      ASSERT_FALSE(device->dequantizeBlocks(q, scales, 128, paired));
      ASSERT_FALSE(device->moeExperts(paired, di, dw, experts.dg, experts.du,
                                      experts.dd, true, want));
      Status s = device->moeExpertsOfQuantized(
          dx, di, dw, experts.dg, experts.du, experts.dd, true, have);
      ASSERT_FALSE(s) << s.message();
      if (T < 100) {
        EXPECT_EQ(get(have), get(want))
            << T << " tokens, I " << I << ", D " << D;
      } else {
        const std::vector<float> wanted = get(want);
        EXPECT_LE(relativeError(get(have), std::vector<double>(wanted.begin(),
                                                               wanted.end())),
                  1e-3)
            << T << " tokens, I " << I << ", D " << D;
      }
    }
  }
}

// One token's FP8 experts row by row (a GPU's default), also at mini's
// sizes.
TEST_P(DeviceConformance, Fp8ExpertStacksOneToken) {
  checkFp8ExpertStacks(*this, rng, 1);
  checkFp8ExpertStacks(*this, rng, 1, /*I=*/1408, /*D=*/2048);
}

// One token's FP8 experts grouped by expert on tensor cores where asked
// (MELT_CUDA_FP8_EXPERT_ROWS=0), the same semantics.
TEST_P(DeviceConformance, Fp8ExpertStacksOneTokenGroupedByExpert) {
  reopenWith("MELT_CUDA_FP8_EXPERT_ROWS", "0");
  if (HasFatalFailure())
    return;
  checkFp8ExpertStacks(*this, rng, 1);
}

TEST_P(DeviceConformance, Fp8ExpertStacksManyTokens) {
  checkFp8ExpertStacks(*this, rng, 21);
}

// Through the path for many tokens (a GPU: each active expert widened to
// BF16 for one GEMM).
TEST_P(DeviceConformance, Fp8ExpertStacksGroupedByExpert) {
  reopenWith("MELT_MOE_GROUPED_MIN_PAIRS", "1");
  if (HasFatalFailure())
    return;
  checkFp8ExpertStacks(*this, rng, 21);
}

// The same with the gate and up products on the FP8 GEMM (a GPU's default
// for experts grouped on the host where the hidden size is in 512s), x on
// its 1x128 FP8 grid as the model leaves it. Grouped on the host: on the
// device the down product reads FP8 activations
// (MoeExpertsFp8GroupedOnFp8TensorCores tests that path, whose bound
// allows for them).
TEST_P(DeviceConformance, Fp8ExpertStacksGroupedOnFp8Gemms) {
  setenv("MELT_CUDA_FP8_EXPERT_GEMMS", "1", 1);
  setenv("MELT_CUDA_DEVICE_GROUPING", "0", 1);
  reopenWith("MELT_MOE_GROUPED_MIN_PAIRS", "1");
  unsetenv("MELT_CUDA_FP8_EXPERT_GEMMS");
  unsetenv("MELT_CUDA_DEVICE_GROUPING");
  if (HasFatalFailure())
    return;
  checkFp8ExpertStacks(*this, rng, 21, /*I=*/128, /*D=*/512,
                       /*xOnGrid=*/true);
}

// An FP8 expert stack whose values are on no e4m3 grid is kept in F32 while
// its siblings stay FP8: a GPU names the mix (and the way out) instead of
// running kernels on mismatched stacks; the CPU keeps all three in F32.
TEST_P(DeviceConformance, MixedExpertStackFormatsAreNamed) {
  const int64_t E = 2, I = 64, D = 128, T = 3, K = 1;
  auto stack = [&](int64_t rows, int64_t cols, bool onGrid) {
    WeightData w;
    w.shape = {E, rows, cols};
    w.data = random(DType::F32, w.shape, rng, 0.1f).values;
    if (onGrid)
      for (int64_t e = 0; e < E; ++e)
        onFp8Grid(w.data.data() + e * rows * cols, rows, cols, 128);
    w.storage = WeightData::Storage::FP8Blocks;
    w.gemmOnly = true;
    return w;
  };
  WeightData gate = stack(I, D, true), up = stack(I, D, false),
             down = stack(D, I, true);
  DeviceTensor dg, du, dd;
  for (auto [weight, tensor] :
       {std::pair{&gate, &dg}, std::pair{&up, &du}, std::pair{&down, &dd}}) {
    ASSERT_FALSE(device->importWeight(*weight, *tensor));
    owned.push_back(*tensor);
  }
  DeviceTensor x = put(random(DType::F32, {T, D}, rng)),
               w = put(random(DType::F32, {T, K}, rng)),
               idx = ints({0, 1, 1}, {T, K}), y = make(DType::F32, {T, D});
  Status s = device->moeExperts(x, idx, w, dg, du, dd, false, y);
  if (dg.dtype == du.dtype) {
    EXPECT_FALSE(s) << s.message();
  } else {
    ASSERT_TRUE(s);
    EXPECT_NE(s.message().find("gate, up and down are kept as"),
              std::string::npos)
        << s.message();
    EXPECT_NE(s.message().find("MELT_CUDA_FP8_WEIGHTS=0"), std::string::npos)
        << s.message();
  }
}

// Where a device writes a BF16 weight's product in BF16 (the CUDA device
// by default, past its small-M kernel: the bf16 policy's products that the
// executor keeps in BF16), the values are its F32 product's rounded to
// BF16, alone and as a SiLU-mul's product (within one BF16 step: the
// library may sum in another order for another output type); with
// MELT_CUDA_BF16_WEIGHT_PRODUCTS=0 the CUDA device keeps them in F32.
TEST_P(DeviceConformance, Bf16WeightProductsInBf16AreTheRoundedProducts) {
  const bool gpu = device->name().rfind("cuda", 0) == 0;
  if (gpu) {
    reopenWith("MELT_CUDA_BF16_WEIGHT_PRODUCTS", "0");
    if (HasFatalFailure())
      return;
    DeviceTensor w = put(random(DType::BF16, {1024, 512}, rng, 0.05f));
    EXPECT_FALSE(device->linearWritesBf16(w, 300));
    reopenWith("MELT_CUDA_BF16_WEIGHT_PRODUCTS", "1");
    if (HasFatalFailure())
      return;
  }
  const int64_t K = 512, N = 1024;
  DeviceTensor w = put(random(DType::BF16, {N, K}, rng, 0.05f));
  for (int64_t rows : {int64_t(1), int64_t(300)}) {
    if (gpu)
      EXPECT_EQ(device->linearWritesBf16(w, rows), rows == 300) << rows;
    if (!device->linearWritesBf16(w, rows))
      continue;
    DeviceTensor wide[2], narrow[2];
    productsInBothTypes(w, rows, wide, narrow);
    if (HasFatalFailure())
      return;
    for (int i = 0; i < 2; ++i) {
      if (!device->linearOutputsBf16(w))
        ASSERT_FALSE(device->roundToBf16(wide[i]));
      const std::vector<float> rounded = get(wide[i]);
      EXPECT_LE(
          relativeError(get(narrow[i]),
                        std::vector<double>(rounded.begin(), rounded.end())),
          1.f / 256)
          << rows << " rows, " << (i ? "SiLU-mul's linear" : "linear");
    }
  }
}

TEST_P(DeviceConformance, LinearRoundsF32InputsForBf16Weights) {
  // Decode-sized (a row split over warps on CUDA; N not a multiple of a
  // block; K of 130 loads), then more rows than the few-row kernel takes.
  struct Shape {
    int64_t m, k, n;
  } shapes[] = {{3, 64, 24}, {1, 2048, 200}, {8, 1040, 131}, {12, 64, 24}};
  for (const Shape &c : shapes) {
    HostTensor x = random(DType::F32, {c.m, c.k}, rng);
    HostTensor w = random(DType::BF16, {c.n, c.k}, rng);
    DeviceTensor dx = put(x), dw = put(w), y = make(DType::F32, {c.m, c.n});
    Status s = device->linear(dx, dw, y);
    ASSERT_FALSE(s) << s.message();
    std::vector<double> want(static_cast<size_t>(c.m * c.n));
    for (int64_t m = 0; m < c.m; ++m)
      for (int64_t n = 0; n < c.n; ++n)
        for (int64_t k = 0; k < c.k; ++k)
          want[m * c.n + n] +=
              double(roundTo(DType::BF16, x.values[m * c.k + k])) *
              w.values[n * c.k + k];
    EXPECT_LE(relativeError(get(y), want), 1e-4)
        << c.m << "x" << c.n << "x" << c.k;
  }
}

// The greedy token of each row, as greedyIndex picks it: the first of tied
// largest values, NaNs passed over, an all-NaN row's last index; rows of a
// vocabulary's length and of lengths around the kernels' strides.
// Side branches (Device::markBranch ... joinBranch; a GPU records them as a
// graph's second branch where MELT_CUDA_SIDE_STREAM=1): a product and a
// SiLU-mul in a branch, a product beside it, their sum after the join give
// what the same calls give in order, bit for bit, run directly and, where
// the device records, recorded and replayed twice.
TEST_P(DeviceConformance, BranchCallsGiveWhatCallsInOrderGive) {
  reopenWith("MELT_CUDA_SIDE_STREAM", "1");
  if (HasFatalFailure())
    return;
  const int64_t T = 4, K = 256, N = 384;
  DeviceTensor x = put(random(DType::F32, {T, K}, rng)),
               w1 = put(random(DType::F32, {N, K}, rng, 0.05f)),
               w2 = put(random(DType::F32, {N, K}, rng, 0.05f));
  auto run = [&](DeviceTensor &a, DeviceTensor &b, DeviceTensor &c,
                 DeviceTensor &z) -> Status {
    MELT_RETURN_IF_ERROR(device->markBranch());
    MELT_RETURN_IF_ERROR(device->enterBranch());
    Status s = device->linear(x, w2, b);
    device->leaveBranch();
    MELT_RETURN_IF_ERROR(s);
    MELT_RETURN_IF_ERROR(device->enterBranch());
    s = device->siluMul(b, b, c);
    device->leaveBranch();
    MELT_RETURN_IF_ERROR(s);
    MELT_RETURN_IF_ERROR(device->linear(x, w1, a));
    MELT_RETURN_IF_ERROR(device->joinBranch());
    return device->add(a, c, z);
  };
  auto outputs = [&] {
    return std::vector<DeviceTensor>{
        make(DType::F32, {T, N}), make(DType::F32, {T, N}),
        make(DType::F32, {T, N}), make(DType::F32, {T, N})};
  };
  std::vector<DeviceTensor> direct = outputs();
  Status s = run(direct[0], direct[1], direct[2], direct[3]);
  ASSERT_FALSE(s) << s.message();
  ASSERT_FALSE(device->synchronize());
  const std::vector<float> want = get(direct[3]);
  if (!device->canCapture())
    return;
  std::vector<DeviceTensor> recorded = outputs();
  ASSERT_FALSE(device->beginCapture());
  Status queued = run(recorded[0], recorded[1], recorded[2], recorded[3]);
  std::unique_ptr<DeviceGraph> graph;
  Status ended = device->endCapture(graph);
  ASSERT_FALSE(queued) << queued.message();
  ASSERT_FALSE(ended) << ended.message();
  for (int round = 0; round < 2; ++round) {
    ASSERT_FALSE(device->replay(*graph));
    ASSERT_FALSE(device->synchronize());
    EXPECT_EQ(get(recorded[3]), want) << "replay " << round;
  }
  graph.reset();
}

TEST_P(DeviceConformance, ArgmaxRowsPickTheGreedyTokens) {
  // A GPU reads long rows in parts (ties across parts: row 1), 16-byte
  // aligned or not (40001).
  for (int64_t vocab : {int64_t(1), int64_t(7), int64_t(2049), int64_t(40001),
                        int64_t(129280)}) {
    const int64_t rows = 6;
    HostTensor logits = random(DType::F32, {rows, vocab}, rng);
    const float nan = std::nanf("");
    float *v = logits.values.data();
    v[vocab - 1] = 5.f; // row 0: the last
    v[vocab + 0] = 5.f; // row 1: a tie, the first wins
    v[vocab + vocab - 1] = 5.f;
    v[2 * vocab] = nan;                 // row 2: NaN first
    for (int64_t i = 0; i < vocab; ++i) // row 3: all NaN
      v[3 * vocab + i] = nan;
    for (int64_t i = 0; i < vocab; ++i) // row 4: all -inf
      v[4 * vocab + i] = -INFINITY;
    std::vector<int32_t> want(static_cast<size_t>(rows)), have(want.size());
    for (int64_t r = 0; r < rows; ++r)
      want[size_t(r)] = int32_t(greedyIndex(v + r * vocab, size_t(vocab)));
    DeviceTensor dl = put(logits), ids = make(DType::I32, {rows});
    Status s = device->argmaxRows(dl, ids);
    ASSERT_FALSE(s) << s.message();
    ASSERT_FALSE(device->download(ids, have.data()));
    EXPECT_EQ(have, want) << vocab << " logits per row";
  }
  DeviceTensor bad = make(DType::F32, {2, 3}), ids = make(DType::I32, {3});
  EXPECT_EQ(device->argmaxRows(bad, ids).code(), MELT_INVALID_ARGUMENT);
}

// Sampled tokens where the logits are, against the host's sampleToken for
// the same draws: top_k within the GPU kernel (1, 50, 1024), beyond it or
// 0 (the logits brought back), a row whose k-th logit is shared by more
// tokens than the kernel holds, temperatures and top_p cuts.
TEST_P(DeviceConformance, SampleRowsDrawTheHostsTokens) {
  const int64_t rows = 6, vocab = 129280;
  HostTensor logits = random(DType::F32, {rows, vocab}, rng);
  float *v = logits.values.data();
  for (int64_t i = 0; i < 5000; ++i) // row 5: 5000 ties at the top
    v[5 * vocab + i * 7] = 4.f;
  uint64_t state = 99;
  std::vector<uint64_t> draws(static_cast<size_t>(rows));
  std::vector<uint32_t> words(2 * draws.size());
  for (size_t r = 0; r < draws.size(); ++r) {
    draws[r] = nextDraw(state);
    wordsOfDraw(draws[r], &words[2 * r]);
  }
  DeviceTensor dl = put(logits), dd = make(DType::I32, {rows, 2}),
               ids = make(DType::I32, {rows});
  ASSERT_FALSE(device->upload(words.data(), dd));
  for (SamplingParams params :
       {SamplingParams{0.7f, 50, 0.9f}, SamplingParams{1.3f, 1, 1.f},
        SamplingParams{0.8f, 1024, 0.95f}, SamplingParams{1.f, 0, 0.9f},
        SamplingParams{2.f, 2000, 1.f}, SamplingParams{0.05f, 8, 0.5f}}) {
    std::vector<int32_t> want(static_cast<size_t>(rows)), have(want.size());
    for (int64_t r = 0; r < rows; ++r)
      want[size_t(r)] =
          sampleToken(v + r * vocab, size_t(vocab), params, draws[size_t(r)]);
    Status s = device->sampleRows(dl, params, dd, ids);
    ASSERT_FALSE(s) << s.message();
    ASSERT_FALSE(device->download(ids, have.data()));
    EXPECT_EQ(have, want) << "temperature " << params.temperature << ", top_k "
                          << params.topK << ", top_p " << params.topP;
  }
  // Greedy is argmax_rows; parameters out of range are named.
  Status s = device->sampleRows(dl, SamplingParams{0.f, 5, 1.f}, dd, ids);
  EXPECT_NE(s.message().find("greedy"), std::string::npos) << s.message();
  s = device->sampleRows(dl, SamplingParams{1.f, 5, 0.f}, dd, ids);
  EXPECT_NE(s.message().find("top_p must be in (0, 1]"), std::string::npos)
      << s.message();
  DeviceTensor wrong = make(DType::I32, {rows});
  s = device->sampleRows(dl, SamplingParams{1.f, 5, 1.f}, wrong, ids);
  EXPECT_NE(s.message().find("draws [R, 2]"), std::string::npos) << s.message();
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
                         deviceTestName);

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

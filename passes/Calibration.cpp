//===- Calibration.cpp - measured GEMM errors for precision auto -*- C++ -*-===//
#include "passes/Calibration.h"

#include "frontends/hf/Checkpoint.h"
#include "frontends/hf/Safetensors.h"
#include "frontends/hf/StrictJson.h"

#include "melt/numerics.h"

#include "llvm/Support/MemoryBuffer.h"

#include <cmath>
#include <cstring>
#include <random>

using namespace mlir::melt;

namespace {

float decode(const char *p, llvm::StringRef dtype) {
  uint8_t b[4] = {};
  std::memcpy(b, p, dtype == "F32" ? 4 : dtype == "F8_E4M3" ? 1 : 2);
  if (dtype == "F32")
    return ::melt::bitsToFloat(b[0] | b[1] << 8 | b[2] << 16 | uint32_t(b[3]) << 24);
  if (dtype == "BF16")
    return ::melt::bf16ToFloat(static_cast<uint16_t>(b[0] | b[1] << 8));
  if (dtype == "F16")
    return ::melt::f16ToFloat(static_cast<uint16_t>(b[0] | b[1] << 8));
  return ::melt::fp8E4M3ToFloat(b[0]);
}

llvm::Expected<std::vector<float>> readTensor(const Checkpoint &ckpt,
                                              llvm::StringRef name) {
  const CheckpointTensor *t = ckpt.find(name);
  if (!t)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "tensor '" + name + "' is not in " +
                                       ckpt.directory());
  auto data = ckpt.readBytes(*t);
  if (!data)
    return fileError(ckpt.path(t->file), "cannot read tensor '" + name + "'");
  unsigned width = safetensorsDTypeBits(t->dtype) / 8;
  std::vector<float> out(t->bytes / width);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = decode((*data)->getBufferStart() + i * width, t->dtype);
  return out;
}

/// Rounds [rows, cols] to FP8 in blocks of br x bc (scale = amax / 448).
void fakeQuantize(std::vector<float> &v, int64_t rows, int64_t cols,
                  int64_t br, int64_t bc) {
  for (int64_t r0 = 0; r0 < rows; r0 += br)
    for (int64_t c0 = 0; c0 < cols; c0 += bc) {
      float amax = 0;
      for (int64_t r = r0; r < std::min(rows, r0 + br); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + bc); ++c)
          amax = std::max(amax, std::fabs(v[r * cols + c]));
      float scale = std::max(amax, 1e-12f) / ::melt::kFp8E4M3Max;
      for (int64_t r = r0; r < std::min(rows, r0 + br); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + bc); ++c)
          v[r * cols + c] = ::melt::fp8E4M3ToFloat(
                                ::melt::floatToFp8E4M3(v[r * cols + c] / scale)) *
                            scale;
    }
}

std::vector<double> multiply(const std::vector<float> &x, int64_t rows,
                             const std::vector<float> &w, int64_t out,
                             int64_t in) {
  std::vector<double> y(rows * out);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t n = 0; n < out; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k)
        acc += double(x[t * in + k]) * w[n * in + k];
      y[t * out + n] = acc;
    }
  return y;
}

double relativeError(const std::vector<double> &y,
                     const std::vector<double> &ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    num += (y[i] - ref[i]) * (y[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

} // namespace

llvm::Expected<std::vector<float>>
mlir::melt::readWeight(const Checkpoint &ckpt, llvm::StringRef name,
                       llvm::StringRef scaleName, int64_t rows, int64_t cols) {
  auto w = readTensor(ckpt, name);
  if (!w)
    return w.takeError();
  if (static_cast<int64_t>(w->size()) != rows * cols)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "tensor '" + name +
                                       "' does not have the weight's shape");
  const CheckpointTensor *t = ckpt.find(name);
  if (t->dtype == "F8_E4M3") {
    auto scales = readTensor(ckpt, scaleName);
    if (!scales)
      return scales.takeError();
    int64_t colBlocks = (cols + 127) / 128;
    if (static_cast<int64_t>(scales->size()) != ((rows + 127) / 128) * colBlocks)
      return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                     "tensor '" + scaleName +
                                         "' does not match its weight");
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        (*w)[r * cols + c] *= (*scales)[(r / 128) * colBlocks + c / 128];
  }
  return w;
}

llvm::Expected<std::vector<float>>
mlir::melt::calibrationInputs(llvm::StringRef path, int64_t cols,
                              int64_t &rows) {
  if (!path.empty()) {
    auto header = readSafetensorsHeader(path);
    if (!header)
      return header.takeError();
    std::string name = "input_" + std::to_string(cols);
    for (const SafetensorsTensor &t : header->tensors)
      if (t.name == name) {
        if (t.dtype != "F32" || t.shape.size() != 2 || t.shape[1] != cols ||
            t.shape[0] < 1)
          return fileError(path, "tensor '" + name + "' must be F32 [rows, " +
                                     std::to_string(cols) + "]");
        auto data = llvm::MemoryBuffer::getFileSlice(
            path, t.end - t.begin, header->dataOffset() + t.begin);
        if (!data)
          return fileError(path, "cannot read tensor '" + name + "'");
        rows = t.shape[0];
        std::vector<float> x(rows * cols);
        std::memcpy(x.data(), (*data)->getBufferStart(), x.size() * 4);
        return x;
      }
  }
  rows = 64;
  std::mt19937 rng(static_cast<uint32_t>(cols));
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> x(rows * cols);
  for (float &v : x)
    v = gauss(rng);
  return x;
}

GemmErrors mlir::melt::measureGemm(const std::vector<float> &x, int64_t rows,
                                   const std::vector<float> &w, int64_t out,
                                   int64_t in, bool weightIsFp8) {
  std::vector<double> ref = multiply(x, rows, w, out, in);
  GemmErrors e;
  std::vector<float> xb = x, wb = w;
  for (float &v : xb)
    v = ::melt::bf16ToFloat(::melt::floatToBF16(v));
  if (!weightIsFp8)
    for (float &v : wb)
      v = ::melt::bf16ToFloat(::melt::floatToBF16(v));
  e.bf16 = relativeError(multiply(xb, rows, wb, out, in), ref);
  std::vector<float> xq = x, wq = w;
  fakeQuantize(xq, rows, in, 1, 128);
  if (!weightIsFp8)
    fakeQuantize(wq, out, in, 128, 128);
  e.fp8 = relativeError(multiply(xq, rows, wq, out, in), ref);
  return e;
}

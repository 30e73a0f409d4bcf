//===- Fp8Blocks.cpp - weights on DeepSeek-V3's FP8 block grid ------------===//
#include "Fp8Blocks.h"

#include "melt/numerics.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

using namespace melt;

void melt::rt::roundToFp8Blocks(float *data, int64_t rows, int64_t cols,
                                int64_t blockRows, int64_t blockCols) {
  for (int64_t r0 = 0; r0 < rows; r0 += blockRows)
    for (int64_t c0 = 0; c0 < cols; c0 += blockCols) {
      int64_t r1 = std::min(rows, r0 + blockRows),
              c1 = std::min(cols, c0 + blockCols);
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

namespace {

constexpr int64_t kBlock = 128;

/// One 128x128 block (fewer at the edges) of a [rows, cols] matrix: its
/// codes written with the first scale that reproduces every value.
bool encodeBlock(const float *values, int64_t rows, int64_t cols, int64_t r0,
                 int64_t c0, uint8_t *codes, float &scale) {
  const int64_t r1 = std::min(rows, r0 + kBlock),
                c1 = std::min(cols, c0 + kBlock);
  float amax = 0.f;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c)
      amax = std::max(amax, std::fabs(values[r * cols + c]));
  const float guess = std::max(amax, 1e-12f) / kFp8E4M3Max;
  const float below = std::nextafter(guess, 0.f),
              above = std::nextafter(guess, INFINITY);
  const float candidates[] = {guess, below, above,
                              std::nextafter(below, 0.f),
                              std::nextafter(above, INFINITY)};
  for (float s : candidates) {
    bool exact = true;
    for (int64_t r = r0; r < r1 && exact; ++r)
      for (int64_t c = c0; c < c1; ++c) {
        const float v = values[r * cols + c];
        const uint8_t code = floatToFp8E4M3(v / s);
        if (fp8E4M3ToFloat(code) * s != v) {
          exact = false;
          break;
        }
        codes[r * cols + c] = code;
      }
    if (exact) {
      scale = s;
      return true;
    }
  }
  return false;
}

} // namespace

bool melt::rt::encodeFp8Blocks(const float *values, int64_t matrices,
                               int64_t rows, int64_t cols, uint8_t *codes,
                               float *scales) {
  const int64_t rowBlocks = (rows + kBlock - 1) / kBlock,
                colBlocks = (cols + kBlock - 1) / kBlock;
  // A task is one row of blocks of one matrix (a mini model's expert
  // stacks hold 1.4 billion values: ~7 ns each on one core since
  // numerics.h's conversions work on the bits; 32 ns through libm,
  // bench/results/fp8_rounding_s24_cpu.txt).
  const int64_t tasks = matrices * rowBlocks;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&] {
    for (int64_t task; !failed && (task = next++) < tasks;) {
      const int64_t m = task / rowBlocks, rb = task % rowBlocks;
      const float *matrix = values + m * rows * cols;
      uint8_t *out = codes + m * rows * cols;
      for (int64_t cb = 0; cb < colBlocks && !failed; ++cb)
        if (!encodeBlock(matrix, rows, cols, rb * kBlock, cb * kBlock, out,
                         scales[(m * rowBlocks + rb) * colBlocks + cb]))
          failed = true;
    }
  };
  const int64_t cores =
      std::max<int64_t>(1, std::thread::hardware_concurrency());
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < std::min(cores, tasks); ++t)
    workers.emplace_back(worker);
  worker();
  for (std::thread &t : workers)
    t.join();
  return !failed;
}

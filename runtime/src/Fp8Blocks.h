//===- Fp8Blocks.h - weights on DeepSeek-V3's FP8 block grid ----*- C++ -*-===//
//
// A weight melt-assign-precision keeps in FP8 (or an FP8 checkpoint's) is
// held on the host in F32, each 128x128 block on the e4m3 grid of its own
// scale, amax / 448. Rounding F32 values onto that grid (random weights of
// such a model), and recovering the e4m3 codes and scales exactly from the
// F32 values (a device that stores the weight in FP8), for matrices and
// stacks of matrices (experts).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_FP8BLOCKS_H
#define MELT_RUNTIME_FP8BLOCKS_H

#include <cstdint>

namespace melt::rt {

/// Rounds each [blockRows, blockCols] block of a [rows, cols] matrix to
/// the e4m3 grid of its own scale (max(amax, 1e-12) / 448).
void roundToFp8Blocks(float *data, int64_t rows, int64_t cols,
                      int64_t blockRows, int64_t blockCols);

/// The e4m3 codes ([matrices, rows, cols]) and the scales ([matrices,
/// ceil(rows / 128), ceil(cols / 128)]) whose products code x scale give
/// `values` back exactly, 128x128 blocks per matrix; false (codes and
/// scales unspecified) when a block is on no such grid. The scale of a
/// block is amax / 448 or, where that amax was itself rounded (448 x scale
/// in F32), an ulp or two beside it. Runs on every core.
bool encodeFp8Blocks(const float *values, int64_t matrices, int64_t rows,
                     int64_t cols, uint8_t *codes, float *scales);

} // namespace melt::rt

#endif // MELT_RUNTIME_FP8BLOCKS_H

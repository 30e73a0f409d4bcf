//===- TensorMaps.h - TMA tensor maps over BF16 and FP8 matrices *- C++ -*-===//
//
// The host side of TMA (BulkTensorCopy.cuh): a CUtensorMap describes a
// matrix in global memory and the box one copy brings into shared memory.
// melt's kernels read row-major BF16 matrices in boxes of 64 columns (128
// bytes) in the 128-byte swizzle, the layout wgmma's descriptors read
// (Wgmma.cuh), and FP8 matrices in plain boxes that threads widen. The driver's
// encoder is reached through the runtime, so that nothing links the driver
// library.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_TENSORMAPS_H
#define MELT_RUNTIME_CUDA_TENSORMAPS_H

#include <cuda.h>

#include <cstdint>

namespace melt::rt::cuda {

/// A map over the row-major BF16 matrix [rows x columns] at `base` (rows
/// `rowStride` elements apart), read in boxes of [boxRows x 64] in the
/// 128-byte swizzle; out-of-range parts of a box read as zeros. False where
/// the driver has no encoder or refuses the shape (alignment: base and
/// rowStride * 2 in 16 bytes; columns a multiple of 8).
bool swizzledBf16Map(CUtensorMap &map, const void *base, uint64_t rows,
                     uint64_t columns, uint64_t rowStride, uint32_t boxRows);

/// A map over `heads` row-major BF16 matrices [rows x columns], the first
/// at `base`, rows `rowStride` and matrices `headStride` elements apart,
/// read in boxes of [boxRows x 64] of one matrix in the 128-byte swizzle;
/// rows past `rows` read as zeros. False as above (headStride * 2 in 16
/// bytes too).
bool swizzledBf16HeadsMap(CUtensorMap &map, const void *base, uint64_t heads,
                          uint64_t rows, uint64_t columns, uint64_t rowStride,
                          uint64_t headStride, uint32_t boxRows);

/// A map over the row-major byte matrix [rows x columns] at `base` (FP8
/// codes; rows `rowStride` bytes apart), read in boxes of [boxRows x 128]
/// in the 128-byte swizzle (wgmma's K-major FP8 operand layout); false as
/// above.
bool swizzledByteMap(CUtensorMap &map, const void *base, uint64_t rows,
                     uint64_t columns, uint64_t rowStride, uint32_t boxRows);

/// A map over the row-major byte matrix [rows x columns] at `base` (FP8
/// codes; rows `rowStride` bytes apart), read in boxes of [boxRows x
/// boxColumns] without a swizzle; out-of-range parts read as zeros. False
/// as above (base and rowStride in 16 bytes, boxColumns a multiple of 16).
bool plainByteMap(CUtensorMap &map, const void *base, uint64_t rows,
                  uint64_t columns, uint64_t rowStride, uint32_t boxRows,
                  uint32_t boxColumns);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_TENSORMAPS_H

//===- TensorMaps.cu - TMA tensor maps over BF16 and FP8 matrices ---------===//
#include "cuda/TensorMaps.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

namespace melt::rt::cuda {
namespace {

/// The driver's tensor-map encoder, or null.
PFN_cuTensorMapEncodeTiled_v12000 tensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void *function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function,
                                         12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      return PFN_cuTensorMapEncodeTiled_v12000(nullptr);
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
  }();
  return encode;
}

/// A map of `rank` (2 or 3) dimensions, innermost first, through the
/// encoder: `dims` and `box` in elements, `strides` the rank - 1 outer
/// strides in elements. False where the encoder is missing or the shape
/// breaks TMA's rules (16-byte aligned base and strides, boxes of at most
/// 256 rows and whole 16-byte pieces).
bool encodeTiled(CUtensorMap &map, CUtensorMapDataType type,
                 uint32_t elementBytes, const void *base, uint32_t rank,
                 const uint64_t *dims, const uint64_t *strides,
                 const uint32_t *box, CUtensorMapSwizzle swizzle) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensorMapEncoder();
  if (!encode || rank < 2 || rank > 3 ||
      reinterpret_cast<uintptr_t>(base) % 16 != 0 ||
      (box[0] * elementBytes) % 16 != 0)
    return false;
  cuuint64_t dimsInElements[3];
  cuuint64_t stridesInBytes[2];
  cuuint32_t boxInElements[3];
  const cuuint32_t elementStrides[3] = {1, 1, 1};
  for (uint32_t d = 0; d < rank; ++d) {
    if (dims[d] == 0 || box[d] == 0 || box[d] > 256)
      return false;
    dimsInElements[d] = dims[d];
    boxInElements[d] = box[d];
  }
  for (uint32_t d = 0; d + 1 < rank; ++d) {
    stridesInBytes[d] = strides[d] * elementBytes;
    if (stridesInBytes[d] % 16 != 0)
      return false;
  }
  return encode(&map, type, rank, const_cast<void *>(base), dimsInElements,
                stridesInBytes, boxInElements, elementStrides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/// A 2-D map of [rows x columns] with rows `rowStride` elements apart.
bool encode2d(CUtensorMap &map, CUtensorMapDataType type, uint32_t elementBytes,
              const void *base, uint64_t rows, uint64_t columns,
              uint64_t rowStride, uint32_t boxRows, uint32_t boxColumns,
              CUtensorMapSwizzle swizzle) {
  const uint64_t dims[2] = {columns, rows};
  const uint64_t strides[1] = {rowStride};
  const uint32_t box[2] = {boxColumns, boxRows};
  return encodeTiled(map, type, elementBytes, base, 2, dims, strides, box,
                     swizzle);
}

} // namespace

bool swizzledBf16HeadsMap(CUtensorMap &map, const void *base, uint64_t heads,
                          uint64_t rows, uint64_t columns, uint64_t rowStride,
                          uint64_t headStride, uint32_t boxRows) {
  const uint64_t dims[3] = {columns, rows, heads};
  const uint64_t strides[2] = {rowStride, headStride};
  const uint32_t box[3] = {64, boxRows, 1};
  return encodeTiled(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, 3, dims,
                     strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
}

bool swizzledBf16Map(CUtensorMap &map, const void *base, uint64_t rows,
                     uint64_t columns, uint64_t rowStride, uint32_t boxRows) {
  return encode2d(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, rows, columns,
                  rowStride, boxRows, 64, CU_TENSOR_MAP_SWIZZLE_128B);
}

bool swizzledByteMap(CUtensorMap &map, const void *base, uint64_t rows,
                     uint64_t columns, uint64_t rowStride, uint32_t boxRows) {
  return encode2d(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, base, rows, columns,
                  rowStride, boxRows, 128, CU_TENSOR_MAP_SWIZZLE_128B);
}

bool plainByteMap(CUtensorMap &map, const void *base, uint64_t rows,
                  uint64_t columns, uint64_t rowStride, uint32_t boxRows,
                  uint32_t boxColumns) {
  return boxColumns <= 256 &&
         encode2d(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, base, rows, columns,
                  rowStride, boxRows, boxColumns, CU_TENSOR_MAP_SWIZZLE_NONE);
}

} // namespace melt::rt::cuda

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

/// A 2-D map (element type `type` of `elementBytes`) through the encoder.
bool encode2d(CUtensorMap &map, CUtensorMapDataType type, uint32_t elementBytes,
              const void *base, uint64_t rows, uint64_t columns,
              uint64_t rowStride, uint32_t boxRows, uint32_t boxColumns,
              CUtensorMapSwizzle swizzle) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensorMapEncoder();
  if (!encode || reinterpret_cast<uintptr_t>(base) % 16 != 0 || rows == 0 ||
      columns == 0 || (rowStride * elementBytes) % 16 != 0 || boxRows == 0 ||
      boxRows > 256 || (boxColumns * elementBytes) % 16 != 0)
    return false;
  const cuuint64_t dims[2] = {columns, rows};
  const cuuint64_t strides[1] = {rowStride * elementBytes};
  const cuuint32_t box[2] = {boxColumns, boxRows};
  const cuuint32_t elementStrides[2] = {1, 1};
  return encode(&map, type, 2, const_cast<void *>(base), dims, strides, box,
                elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

} // namespace

bool swizzledBf16HeadsMap(CUtensorMap &map, const void *base, uint64_t heads,
                          uint64_t rows, uint64_t columns, uint64_t rowStride,
                          uint64_t headStride, uint32_t boxRows) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensorMapEncoder();
  if (!encode || reinterpret_cast<uintptr_t>(base) % 16 != 0 || heads == 0 ||
      rows == 0 || columns == 0 || (rowStride * 2) % 16 != 0 ||
      (headStride * 2) % 16 != 0 || boxRows == 0 || boxRows > 256)
    return false;
  const cuuint64_t dims[3] = {columns, rows, heads};
  const cuuint64_t strides[2] = {rowStride * 2, headStride * 2};
  const cuuint32_t box[3] = {64, boxRows, 1};
  const cuuint32_t elementStrides[3] = {1, 1, 1};
  return encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3,
                const_cast<void *>(base), dims, strides, box, elementStrides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
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

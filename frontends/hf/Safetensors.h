//===- Safetensors.h - safetensors headers: read, validate, write -*- C++ -*-===//
//
// The safetensors format: an 8-byte little-endian header length N, N bytes
// of UTF-8 JSON mapping tensor names to {dtype, shape, data_offsets} (plus an
// optional "__metadata__" map of strings), then the data area. Validation is
// as strict as the reference implementation: bounded header, known dtypes,
// sizes that match shapes (overflow-checked), offsets contiguous from 0,
// non-overlapping and covering the data area exactly, no duplicate names.
// Only headers are read here, never tensor data.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_HF_SAFETENSORS_H
#define MELT_FRONTENDS_HF_SAFETENSORS_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mlir::melt {

/// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

/// Bits per element of a safetensors dtype ("F32" -> 32), 0 if unknown.
unsigned safetensorsDTypeBits(llvm::StringRef dtype);

struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  /// Byte range in the data area (after the header).
  uint64_t begin = 0, end = 0;
  uint64_t numElements() const;
};

struct SafetensorsHeader {
  std::string path;
  uint64_t fileSize = 0;
  uint64_t headerSize = 0;
  std::vector<SafetensorsTensor> tensors; // in header order
  std::map<std::string, std::string> metadata;
  /// Offset of the data area in the file.
  uint64_t dataOffset() const { return 8 + headerSize; }
};

/// Reads and validates the header of `path`. Errors name the file and the
/// tensor or field.
llvm::Expected<SafetensorsHeader> readSafetensorsHeader(llvm::StringRef path);

/// Serializes a header for `tensors` (their begin/end must be laid out
/// already), padded with spaces to a multiple of 8 bytes as transformers
/// does. Returns the 8-byte length prefix followed by the JSON.
std::string
serializeSafetensorsHeader(const std::vector<SafetensorsTensor> &tensors,
                           const std::map<std::string, std::string> &metadata);

} // namespace mlir::melt

#endif // MELT_FRONTENDS_HF_SAFETENSORS_H

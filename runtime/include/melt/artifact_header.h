//===- melt/artifact_header.h - the fixed header of .melt files -*- C++ -*-===//
//
// Every artifact starts with this 64-byte little-endian header, followed by
// the FlatBuffer (schema/artifact.fbs, identifier "MELT") and an optional
// 64-byte aligned weight blob. The compiler writes it, the runtime checks it
// first: magic, version, then sizes and offsets with overflow-safe 64-bit
// arithmetic, then the checksum.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_ARTIFACT_HEADER_H
#define MELT_ARTIFACT_HEADER_H

#include <cstdint>
#include <cstring>

namespace melt {

constexpr char kArtifactMagic[8] = {'M', 'E', 'L', 'T', 'A', 'R', 'T', 'F'};
constexpr uint32_t kArtifactHeaderSize = 64;
constexpr uint64_t kArtifactBlobAlignment = 64;

struct ArtifactHeader {
  uint16_t major = 0, minor = 0;
  uint32_t headerSize = kArtifactHeaderSize;
  uint64_t flatbufferOffset = 0, flatbufferSize = 0;
  uint64_t weightsOffset = 0, weightsSize = 0;
  /// FNV-1a 64 of every byte after the header.
  uint64_t checksum = 0;
};

inline void storeLE(uint8_t *p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i)
    p[i] = static_cast<uint8_t>(v >> (8 * i));
}

inline uint64_t loadLE(const uint8_t *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

inline void encodeArtifactHeader(const ArtifactHeader &h,
                                 uint8_t out[kArtifactHeaderSize]) {
  std::memset(out, 0, kArtifactHeaderSize);
  std::memcpy(out, kArtifactMagic, 8);
  storeLE(out + 8, h.major, 2);
  storeLE(out + 10, h.minor, 2);
  storeLE(out + 12, h.headerSize, 4);
  storeLE(out + 16, h.flatbufferOffset, 8);
  storeLE(out + 24, h.flatbufferSize, 8);
  storeLE(out + 32, h.weightsOffset, 8);
  storeLE(out + 40, h.weightsSize, 8);
  storeLE(out + 48, h.checksum, 8);
}

/// Decodes without judging; the loader checks every field.
inline ArtifactHeader decodeArtifactHeader(const uint8_t *in) {
  ArtifactHeader h;
  h.major = static_cast<uint16_t>(loadLE(in + 8, 2));
  h.minor = static_cast<uint16_t>(loadLE(in + 10, 2));
  h.headerSize = static_cast<uint32_t>(loadLE(in + 12, 4));
  h.flatbufferOffset = loadLE(in + 16, 8);
  h.flatbufferSize = loadLE(in + 24, 8);
  h.weightsOffset = loadLE(in + 32, 8);
  h.weightsSize = loadLE(in + 40, 8);
  h.checksum = loadLE(in + 48, 8);
  return h;
}

/// FNV-1a 64, continued from `hash` (start with kFnvOffset).
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
inline uint64_t fnv1a64(const uint8_t *data, uint64_t size,
                        uint64_t hash = kFnvOffset) {
  for (uint64_t i = 0; i < size; ++i)
    hash = (hash ^ data[i]) * 0x100000001b3ull;
  return hash;
}

} // namespace melt

#endif // MELT_ARTIFACT_HEADER_H

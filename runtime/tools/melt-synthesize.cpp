//===- melt-synthesize.cpp - a random checkpoint for a compiled model -----===//
//
//   melt-synthesize MODEL.melt -o DIR [--seed N]
//
// Writes the checkpoint a compiled model reads, with seeded random weights:
// every file the artifact names, of the size it was compiled against, as
// valid safetensors whose tensors sit at the byte ranges the artifact reads
// (named by index; bytes it does not read are filler tensors). For machines
// without the compiler (the GPU machine has no MLIR, so melt-import
// --synthesize cannot run there): the model then loads through its weight
// recipe (dtype conversions, FP8 block scales, stacked experts, views)
// exactly as from the real checkpoint. Values: uniform with std 0.02;
// 1-D weights (norm scales) 1, biases 0; FP8 weights with block scales that
// give the same spread. Written to a temporary folder, then renamed.
//
//===----------------------------------------------------------------------===//
#include "Artifact.h"
#include "melt/numerics.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

using namespace melt;
using namespace melt::rt;
namespace fs = std::filesystem;

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: melt-synthesize MODEL.melt -o DIR [--seed N]\n"
               "Writes a checkpoint of seeded random weights that MODEL.melt "
               "loads (every file it\nreads, valid safetensors, the sizes it "
               "was compiled against).\n");
}

int fail(const std::string &message) {
  std::fprintf(stderr, "melt-synthesize: error: %s\n", message.c_str());
  return 1;
}

/// A contiguous range of one file to fill: `kind` says with what.
struct Fill {
  uint64_t offset, bytes;
  fb::DType dtype;
  enum Kind { Weight, Ones, Zeros, Scales } kind;
};

const char *safetensorsDType(fb::DType t) {
  switch (t) {
  case fb::DType::F32:
    return "F32";
  case fb::DType::BF16:
    return "BF16";
  case fb::DType::F16:
    return "F16";
  case fb::DType::F8E4M3FN:
    return "F8_E4M3";
  case fb::DType::I32:
    return "I32";
  case fb::DType::I64:
    return "I64";
  }
  return "U8";
}

/// Uniform on [-a, a] has std a / sqrt(3): a = 0.02 sqrt(3).
constexpr float kSpread = 0.0346410f;

class Random {
public:
  explicit Random(uint64_t seed) : x_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  /// Uniform in [-1, 1).
  float next() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 7;
    x_ ^= x_ << 17;
    return float(x_ >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }

private:
  uint64_t x_;
};

void fillBytes(const Fill &f, Random &random, std::vector<uint8_t> &out) {
  out.assign(f.bytes, 0);
  uint64_t width = dtypeBytes(f.dtype);
  for (uint64_t i = 0; i + width <= f.bytes; i += width) {
    // FP8 weights span the e4m3 range; their scales bring them to kSpread.
    float v = f.kind == Fill::Ones             ? 1.0f
              : f.kind == Fill::Zeros          ? 0.0f
              : f.kind == Fill::Scales         ? kSpread / kFp8E4M3Max
              : f.dtype == fb::DType::F8E4M3FN ? random.next() * kFp8E4M3Max
                                               : random.next() * kSpread;
    uint8_t *p = out.data() + i;
    switch (f.dtype) {
    case fb::DType::F32:
      std::memcpy(p, &v, 4);
      break;
    case fb::DType::BF16: {
      uint16_t h = floatToBF16(v);
      std::memcpy(p, &h, 2);
      break;
    }
    case fb::DType::F16: {
      uint16_t h = floatToF16(v);
      std::memcpy(p, &h, 2);
      break;
    }
    case fb::DType::F8E4M3FN:
      *p = floatToFp8E4M3(v);
      break;
    case fb::DType::I32:
    case fb::DType::I64:
      break; // zeros
    }
  }
}

/// The ranges of each file the artifact reads, each once, in order.
std::vector<std::vector<Fill>> rangesByFile(const fb::Model &m) {
  std::vector<std::map<uint64_t, Fill>> byFile(m.files()->size());
  for (const fb::Weight *w : *m.weights()) {
    if (w->embedded())
      continue;
    std::string name = w->name() ? w->name()->str() : "";
    Fill::Kind kind = Fill::Weight;
    if (w->shape() && w->shape()->size() == 1)
      kind = name.find("bias") != std::string::npos ? Fill::Zeros : Fill::Ones;
    if (w->sources())
      for (const fb::TensorRange *r : *w->sources())
        byFile[r->file()][r->offset()] = {r->offset(), r->bytes(), w->dtype(),
                                          kind};
    if (w->scales())
      for (const fb::TensorRange *r : *w->scales())
        byFile[r->file()][r->offset()] = {r->offset(), r->bytes(),
                                          fb::DType::F32, Fill::Scales};
  }
  std::vector<std::vector<Fill>> out;
  for (auto &ranges : byFile) {
    out.emplace_back();
    for (auto &[offset, fill] : ranges)
      out.back().push_back(fill);
  }
  return out;
}

/// Writes one file: a safetensors header padded to the first range, the
/// ranges (and filler between them) up to `size`.
std::string writeFile(const std::string &path, uint64_t size,
                      const std::vector<Fill> &ranges, Random &random) {
  uint64_t dataStart = ranges.empty() ? size : ranges.front().offset;
  // Tensors: the ranges, named by index, and U8 filler for the gaps.
  std::string json = "{";
  uint64_t at = dataStart;
  int index = 0, filler = 0;
  auto entry = [&](const std::string &name, const char *dtype, uint64_t from,
                   uint64_t to, uint64_t elements) {
    if (json.size() > 1)
      json += ",";
    json += "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" +
            std::to_string(elements) + "],\"data_offsets\":[" +
            std::to_string(from - dataStart) + "," +
            std::to_string(to - dataStart) + "]}";
  };
  for (const Fill &f : ranges) {
    if (f.offset < at)
      return path + ": ranges " + std::to_string(f.offset) +
             " and before "
             "overlap";
    if (f.offset > at)
      entry("filler" + std::to_string(filler++), "U8", at, f.offset,
            f.offset - at);
    entry(std::to_string(index++), safetensorsDType(f.dtype), f.offset,
          f.offset + f.bytes, f.bytes / dtypeBytes(f.dtype));
    at = f.offset + f.bytes;
  }
  if (at < size)
    entry("filler" + std::to_string(filler++), "U8", at, size, size - at);
  json += "}";
  if (dataStart < 8 || json.size() > dataStart - 8)
    return path + ": the safetensors header (" + std::to_string(json.size()) +
           " bytes) does not fit before the first tensor at " +
           std::to_string(dataStart);
  json.append(dataStart - 8 - json.size(), ' ');

  std::ofstream out(path, std::ios::binary);
  uint64_t headerBytes = json.size();
  uint8_t length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = uint8_t(headerBytes >> (8 * i));
  out.write(reinterpret_cast<const char *>(length), 8);
  out.write(json.data(), std::streamsize(json.size()));
  std::vector<uint8_t> bytes;
  at = dataStart;
  for (const Fill &f : ranges) {
    if (f.offset > at) { // filler: zeros
      bytes.assign(f.offset - at, 0);
      out.write(reinterpret_cast<const char *>(bytes.data()),
                std::streamsize(bytes.size()));
    }
    fillBytes(f, random, bytes);
    out.write(reinterpret_cast<const char *>(bytes.data()),
              std::streamsize(bytes.size()));
    at = f.offset + f.bytes;
  }
  if (at < size) {
    bytes.assign(size - at, 0);
    out.write(reinterpret_cast<const char *>(bytes.data()),
              std::streamsize(bytes.size()));
  }
  out.close();
  if (!out)
    return path + ": cannot write";
  return "";
}

} // namespace

int main(int argc, char **argv) {
  const char *artifactPath = nullptr, *outDir = nullptr;
  uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage();
      return 0;
    } else if (arg == "-o" && i + 1 < argc) {
      outDir = argv[++i];
    } else if (arg == "--seed" && i + 1 < argc) {
      char *end = nullptr;
      seed = std::strtoull(argv[++i], &end, 10);
      if (!end || *end)
        return fail("--seed takes a non-negative integer");
    } else if (!artifactPath && arg[0] != '-') {
      artifactPath = argv[i];
    } else {
      usage();
      return fail("unknown argument '" + arg + "'");
    }
  }
  if (!artifactPath || !outDir) {
    usage();
    return 1;
  }
  Artifact artifact;
  if (Status s = Artifact::load(artifactPath, artifact))
    return fail(s.message());
  const fb::Model &m = artifact.model();
  if (m.files()->size() == 0)
    return fail(std::string(artifactPath) +
                ": the model embeds its weights; it reads no checkpoint");
  std::error_code ec;
  if (fs::exists(outDir, ec) && !fs::is_empty(outDir, ec))
    return fail(std::string(outDir) + ": exists and is not empty");
  fs::path target = fs::absolute(outDir, ec);
  fs::path temp = target;
  temp += ".tmp-" + std::to_string(::getpid());
  fs::remove_all(temp, ec);
  if (!fs::create_directories(temp, ec))
    return fail(temp.string() + ": cannot create (" + ec.message() + ")");

  std::vector<std::vector<Fill>> ranges = rangesByFile(m);
  Random random(seed);
  uint64_t total = 0;
  for (uint32_t i = 0; i < m.files()->size(); ++i) {
    const fb::CheckpointFile *f = m.files()->Get(i);
    fs::path path = temp / f->path()->str();
    fs::create_directories(path.parent_path(), ec);
    std::string error = writeFile(path.string(), f->size(), ranges[i], random);
    if (!error.empty()) {
      fs::remove_all(temp, ec);
      return fail(error);
    }
    total += f->size();
    std::fprintf(stderr, "melt-synthesize: %s (%llu bytes)\n",
                 f->path()->c_str(), (unsigned long long)f->size());
  }
  fs::remove(target, ec); // an empty folder
  ec.clear();
  fs::rename(temp, target, ec);
  if (ec) {
    fs::remove_all(temp, ec);
    return fail(target.string() + ": cannot rename the result into place");
  }
  std::printf("melt-synthesize: wrote %s: %u file(s), %llu bytes\n", outDir,
              m.files()->size(), (unsigned long long)total);
  return 0;
}

//===- Synthesizer.cpp - deterministic random checkpoints -------*- C++ -*-===//
#include "frontends/hf/Synthesizer.h"

#include "dialects/melt/MeltDialect.h"
#include "frontends/ModelBuilder.h"
#include "frontends/hf/HFConfig.h"
#include "frontends/hf/Importer.h"
#include "frontends/hf/Safetensors.h"
#include "frontends/hf/StrictJson.h"

#include "melt/numerics.h"

#include "llvm/ADT/ScopeExit.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <unistd.h>

using namespace mlir;
using namespace mlir::melt;
using ::melt::floatBits;
using ::melt::floatToBF16;
using ::melt::floatToF16;
using ::melt::floatToFp8E4M3;
using ::melt::kFp8E4M3Max;

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(llvm::StringRef s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s)
    h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

/// The values of one tensor: element i is a pure function of (seed, name,
/// i), so bands of a matrix can be generated in any order, twice if needed.
class TensorValues {
public:
  TensorValues(uint64_t seed, llvm::StringRef name,
               llvm::ArrayRef<int64_t> shape)
      : key(splitmix64(seed ^ fnv1a(name))) {
    int64_t in = shape.empty() ? 1 : shape.back();
    // Norm scales near 1, a small router bias, embeddings with std 0.02,
    // projections uniform in +-1/sqrt(in) so activations stay O(1).
    if (name.ends_with("norm.weight")) {
      center = 1.0f;
      spread = 0.1f;
    } else if (name.ends_with("e_score_correction_bias")) {
      spread = 0.05f;
    } else if (name.contains("embed_tokens") || name.starts_with("lm_head") ||
               name.contains("shared_head.head")) {
      spread = 0.0346f;
    } else {
      spread = 1.0f / std::sqrt(static_cast<float>(in));
    }
  }

  float operator()(uint64_t i) const {
    uint64_t r = splitmix64(key + i);
    float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f); // [0, 1)
    return center + spread * (2.0f * u - 1.0f);
  }

private:
  uint64_t key;
  float center = 0.0f, spread = 1.0f;
};

/// One tensor to write. FP8 weights and their scales are both derived from
/// the f32 values of the weight (`valuesOf`), blockwise.
struct PlannedTensor {
  SafetensorsTensor header;
  std::string valuesOf; // the weight tensor whose values are used
  enum Kind { Plain, Fp8Weight, Fp8Scale } kind = Plain;
  std::vector<int64_t> weightShape; // of valuesOf, for FP8
  int64_t block = 128;
  std::string shard;
};

/// Appends every checkpoint tensor of the model, in the builder's order.
std::vector<PlannedTensor> planTensors(ModuleOp module, int64_t block) {
  std::vector<PlannedTensor> plan;
  for (auto weight : module.getOps<WeightOp>()) {
    RankedTensorType type = weight.getTensorType();
    llvm::ArrayRef<int64_t> shape = type.getShape();
    bool stacked = weight.getSources().size() > 1;
    llvm::ArrayRef<int64_t> slice = stacked ? shape.drop_front() : shape;
    bool fp8 = isFp8Type(type.getElementType());
    for (auto [i, a] : llvm::enumerate(weight.getSources())) {
      auto name = llvm::cast<TensorSourceAttr>(a).getName();
      PlannedTensor t;
      t.header.name = name.str();
      t.header.dtype = safetensorsDTypeOf(type.getElementType());
      t.header.shape.assign(slice.begin(), slice.end());
      t.valuesOf = name.str();
      t.kind = fp8 ? PlannedTensor::Fp8Weight : PlannedTensor::Plain;
      t.weightShape = t.header.shape;
      t.block = block;
      plan.push_back(t);
      if (fp8) {
        auto scaleName = llvm::cast<TensorSourceAttr>(
                             (*weight.getScaleSources())[i])
                             .getName();
        auto scaleType = llvm::cast<RankedTensorType>(*weight.getScaleType());
        llvm::ArrayRef<int64_t> scaleShape =
            stacked ? scaleType.getShape().drop_front() : scaleType.getShape();
        PlannedTensor s = t;
        s.header.name = scaleName.str();
        s.header.dtype = "F32";
        s.header.shape.assign(scaleShape.begin(), scaleShape.end());
        s.kind = PlannedTensor::Fp8Scale;
        plan.push_back(s);
      }
    }
  }
  return plan;
}

uint64_t byteSize(const SafetensorsTensor &t) {
  return t.numElements() * safetensorsDTypeBits(t.dtype) / 8;
}

/// Streams tensor data into a shard file.
class ShardWriter {
public:
  ShardWriter(llvm::raw_fd_ostream &os, uint64_t seed,
              const std::function<void(uint64_t)> &advance)
      : os(os), seed(seed), advance(advance) {}

  void write(const PlannedTensor &t) {
    switch (t.kind) {
    case PlannedTensor::Plain:
      return writePlain(t);
    case PlannedTensor::Fp8Weight:
    case PlannedTensor::Fp8Scale:
      return writeFp8(t);
    }
  }

private:
  void emit(const void *data, size_t bytes) {
    os.write(static_cast<const char *>(data), bytes);
    advance(bytes);
  }

  void writePlain(const PlannedTensor &t) {
    TensorValues values(seed, t.valuesOf, t.weightShape);
    uint64_t n = t.header.numElements();
    const std::string &dtype = t.header.dtype;
    constexpr uint64_t kChunk = 1 << 16;
    std::vector<char> buffer;
    for (uint64_t start = 0; start < n; start += kChunk) {
      uint64_t count = std::min(kChunk, n - start);
      buffer.clear();
      for (uint64_t i = start; i < start + count; ++i) {
        float v = values(i);
        if (dtype == "F32") {
          appendLE(buffer, floatBits(v), 4);
        } else if (dtype == "BF16") {
          appendLE(buffer, floatToBF16(v), 2);
        } else {
          appendLE(buffer, floatToF16(v), 2);
        }
      }
      emit(buffer.data(), buffer.size());
    }
  }

  /// FP8 weight [rows, cols] in bands of `block` rows: scale = amax / 448
  /// per block x block tile, q = x / scale; the scale tensor stores `scale`
  /// (DeepSeek's weight_scale_inv: dequantized = q * scale_inv).
  void writeFp8(const PlannedTensor &t) {
    TensorValues values(seed, t.valuesOf, t.weightShape);
    int64_t rows = t.weightShape[0], cols = t.weightShape[1],
            block = t.block, colBlocks = (cols + block - 1) / block;
    std::vector<float> band;
    std::vector<float> scales(colBlocks);
    std::vector<uint8_t> quantized;
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      int64_t bandRows = std::min(block, rows - r0);
      band.resize(bandRows * cols);
      for (int64_t r = 0; r < bandRows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          band[r * cols + c] = values((r0 + r) * cols + c);
      for (int64_t cb = 0; cb < colBlocks; ++cb) {
        float amax = 0.0f;
        for (int64_t r = 0; r < bandRows; ++r)
          for (int64_t c = cb * block; c < std::min(cols, (cb + 1) * block);
               ++c)
            amax = std::max(amax, std::fabs(band[r * cols + c]));
        scales[cb] = std::max(amax, 1e-12f) / kFp8E4M3Max;
      }
      if (t.kind == PlannedTensor::Fp8Scale) {
        std::vector<char> bytes;
        for (float s : scales)
          appendLE(bytes, floatBits(s), 4);
        emit(bytes.data(), bytes.size());
        continue;
      }
      quantized.resize(band.size());
      for (int64_t r = 0; r < bandRows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          quantized[r * cols + c] =
              floatToFp8E4M3(band[r * cols + c] / scales[c / block]);
      emit(quantized.data(), quantized.size());
    }
  }

  static void appendLE(std::vector<char> &out, uint32_t v, int bytes) {
    for (int i = 0; i < bytes; ++i)
      out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  llvm::raw_fd_ostream &os;
  uint64_t seed;
  const std::function<void(uint64_t)> &advance;
};

llvm::Error writeJson(llvm::StringRef path, const llvm::json::Value &value) {
  return llvm::writeToOutput(path, [&](llvm::raw_ostream &os) {
    os << llvm::formatv("{0:2}", value) << "\n";
    return llvm::Error::success();
  });
}

} // namespace

llvm::Expected<SynthesisSummary>
mlir::melt::synthesizeCheckpoint(MLIRContext &context,
                                 const ModelConfig &config,
                                 llvm::StringRef directory,
                                 const SynthesisOptions &options) {
  if (llvm::sys::fs::exists(directory))
    return fileError(directory, "already exists; refusing to overwrite it");
  llvm::Expected<OwningOpRef<ModuleOp>> module = buildModel(context, config);
  if (!module)
    return module.takeError();
  std::vector<PlannedTensor> plan =
      planTensors(**module, config.weightBlockSize);

  // Shards: consecutive tensors, up to shardBytes each, or split into
  // shardCount shards by where each tensor starts in the whole checkpoint.
  uint64_t total = 0;
  for (const PlannedTensor &t : plan)
    total += byteSize(t.header);
  std::vector<std::vector<PlannedTensor *>> shards(1);
  uint64_t shardSize = 0, position = 0;
  for (PlannedTensor &t : plan) {
    uint64_t bytes = byteSize(t.header);
    bool next =
        options.shardCount
            ? static_cast<uint64_t>(static_cast<double>(position) /
                                    std::max<uint64_t>(total, 1) *
                                    options.shardCount) >= shards.size()
            : shardSize + bytes > options.shardBytes;
    if (shardSize > 0 && next) {
      shards.emplace_back();
      shardSize = 0;
    }
    position += bytes;
    t.header.begin = shardSize;
    t.header.end = shardSize + bytes;
    shardSize += bytes;
    shards.back().push_back(&t);
  }
  auto shardName = [&](size_t i) -> std::string {
    if (shards.size() == 1)
      return "model.safetensors";
    return llvm::formatv("model-{0:5}-of-{1:5}.safetensors", i + 1,
                         shards.size());
  };

  // Everything goes into a temporary sibling directory, renamed at the end.
  llvm::SmallString<256> tmp;
  tmp = (directory.rtrim('/') + llvm::formatv(".tmp-{0}",
                                             llvm::sys::Process::getProcessId()))
            .str();
  if (std::error_code ec = llvm::sys::fs::create_directories(tmp))
    return fileError(tmp, "cannot create: " + ec.message());
  auto cleanup = llvm::make_scope_exit(
      [&] { (void)llvm::sys::fs::remove_directories(tmp); });

  uint64_t written = 0;
  std::function<void(uint64_t)> advance = [&](uint64_t bytes) {
    written += bytes;
    if (options.progress)
      options.progress(written, total);
  };
  llvm::json::Object weightMap;
  for (auto [i, shard] : llvm::enumerate(shards)) {
    std::string name = shardName(i);
    std::vector<SafetensorsTensor> headers;
    for (PlannedTensor *t : shard) {
      headers.push_back(t->header);
      weightMap[t->header.name] = name;
    }
    std::string header = serializeSafetensorsHeader(headers, {{"format", "pt"}});
    llvm::SmallString<256> path(tmp);
    llvm::sys::path::append(path, name);
    std::error_code ec;
    llvm::raw_fd_ostream os(path, ec);
    if (ec)
      return fileError(path, "cannot write: " + ec.message());
    os << header;
    if (options.sparse) {
      // ftruncate extends without allocating: the data area is a hole.
      uint64_t dataBytes = shard.empty() ? 0 : shard.back()->header.end;
      os.close();
      if (os.has_error() ||
          ::truncate(path.c_str(), static_cast<off_t>(header.size() +
                                                      dataBytes)) != 0)
        return fileError(path, "cannot extend to its full size");
      advance(dataBytes);
      continue;
    }
    ShardWriter writer(os, options.seed, advance);
    for (PlannedTensor *t : shard)
      writer.write(*t);
    os.close();
    if (os.has_error())
      return fileError(path, "cannot write: " + os.error().message());
  }

  llvm::SmallString<256> configPath(tmp);
  llvm::sys::path::append(configPath, "config.json");
  if (llvm::Error error = writeJson(configPath, toHFConfig(config)))
    return std::move(error);
  if (shards.size() > 1) {
    llvm::SmallString<256> indexPath(tmp);
    llvm::sys::path::append(indexPath, "model.safetensors.index.json");
    llvm::json::Object index{
        {"metadata", llvm::json::Object{{"total_size", total}}},
        {"weight_map", std::move(weightMap)}};
    if (llvm::Error error = writeJson(indexPath, std::move(index)))
      return std::move(error);
  }
  if (std::error_code ec = llvm::sys::fs::rename(tmp, directory))
    return fileError(directory, "cannot create: " + ec.message());
  cleanup.release();

  SynthesisSummary summary;
  summary.tensors = plan.size();
  summary.shards = shards.size();
  summary.bytes = total;
  return summary;
}

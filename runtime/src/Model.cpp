//===- Model.cpp - weights from the checkpoint ------------------*- C++ -*-===//
#include "Model.h"

#include "Fp8Blocks.h"

#include "melt/numerics.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <thread>

using namespace melt;
using namespace melt::rt;

namespace {

std::string str(uint64_t v) { return std::to_string(v); }

float decode(const uint8_t *p, fb::DType dtype) {
  switch (dtype) {
  case fb::DType::F32: {
    uint32_t u = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
                 uint32_t(p[3]) << 24;
    return bitsToFloat(u);
  }
  case fb::DType::BF16:
    return bf16ToFloat(static_cast<uint16_t>(p[0] | p[1] << 8));
  case fb::DType::F16:
    return f16ToFloat(static_cast<uint16_t>(p[0] | p[1] << 8));
  case fb::DType::F8E4M3FN:
    return fp8E4M3ToFloat(p[0]);
  default:
    return 0.0f;
  }
}

/// Reads weight bytes from checkpoint files, or from the artifact's own
/// blob for embedded weights.
class Files {
public:
  explicit Files(const Artifact &artifact) : artifact(artifact) {}

  Status open(const fb::Model &m, const std::string &dir) {
    if (dir.empty() && m.files()->size() > 0)
      return {MELT_NOT_FOUND, artifact.name() +
                                  ": its weights are read from a checkpoint "
                                  "(" +
                                  m.files()->Get(0)->path()->str() +
                                  ", ...): give the checkpoint directory"};
    for (uint32_t i = 0; i < m.files()->size(); ++i) {
      const fb::CheckpointFile *f = m.files()->Get(i);
      std::string path = dir + "/" + f->path()->str();
      auto stream = std::make_unique<std::ifstream>(path, std::ios::binary |
                                                              std::ios::ate);
      if (!*stream)
        return {MELT_NOT_FOUND,
                path + ": cannot open (files[" + str(i) + "] of the artifact)"};
      uint64_t size = static_cast<uint64_t>(stream->tellg());
      if (size != f->size())
        return {MELT_INVALID_ARTIFACT, path + ": is " + str(size) +
                                           " bytes, the artifact was "
                                           "compiled against " +
                                           str(f->size()) +
                                           " (a different checkpoint?)"};
      sizes.push_back(size);
      streams.push_back(std::move(stream));
    }
    return Status::ok();
  }

  Status read(const fb::TensorRange &r, bool embedded, const std::string &what,
              std::vector<uint8_t> &out) {
    if (embedded) { // the range was checked against the blob at load
      out.assign(artifact.blob() + r.offset(),
                 artifact.blob() + r.offset() + r.bytes());
      return Status::ok();
    }
    uint64_t end = 0;
    if (__builtin_add_overflow(r.offset(), r.bytes(), &end) ||
        end > sizes[r.file()])
      return invalidArtifact(what + " reads bytes [" + str(r.offset()) + ", +" +
                             str(r.bytes()) + ") past the end of a " +
                             str(sizes[r.file()]) + "-byte file");
    out.resize(r.bytes());
    std::ifstream &s = *streams[r.file()];
    s.seekg(static_cast<std::streamoff>(r.offset()));
    if (!s.read(reinterpret_cast<char *>(out.data()),
                static_cast<std::streamsize>(r.bytes())))
      return {MELT_NOT_FOUND, what + ": cannot read"};
    return Status::ok();
  }

private:
  const Artifact &artifact;
  std::vector<std::unique_ptr<std::ifstream>> streams;
  std::vector<uint64_t> sizes;
};

/// Which weights of the artifact are multiplied (GEMM operands) and which
/// are read directly by a kernel.
void weightUses(const fb::Model &m, std::vector<bool> &multiplied,
                std::vector<bool> &read) {
  multiplied.assign(m.weights()->size(), false);
  read.assign(m.weights()->size(), false);
  for (const fb::Kernel *k : *m.kernels())
    for (uint32_t i = 0; i < k->weights()->size(); ++i) {
      // MLA reads W_UK/W_UV per query (absorbed) and multiplies the cache
      // by them per head for long prefills (decompressed): both.
      if (k->kind() == fb::KernelKind::MLA) {
        multiplied[k->weights()->Get(i)] = read[k->weights()->Get(i)] = true;
        continue;
      }
      bool gemm = k->kind() == fb::KernelKind::Linear ||
                  k->kind() == fb::KernelKind::Logits ||
                  k->kind() == fb::KernelKind::MoEExperts ||
                  (k->kind() == fb::KernelKind::MTPCombine && i == 2);
      (gemm ? multiplied : read)[k->weights()->Get(i)] = true;
    }
}

/// The storage the compiled model gives a weight, with its values rounded
/// to it (melt-assign-precision's bf16 or FP8 128x128 blocks).
void applyStorage(const fb::Weight &w, WeightData &data) {
  int64_t rank = int64_t(data.shape.size());
  if (w.storage() == 2 && rank >= 2) {
    data.storage = WeightData::Storage::FP8Blocks;
    int64_t rows = data.shape[rank - 2], cols = data.shape[rank - 1];
    uint64_t matrices =
        data.data.size() / uint64_t(std::max<int64_t>(rows * cols, 1));
    for (uint64_t m = 0; m < matrices; ++m)
      roundToFp8Blocks(data.data.data() + m * rows * cols, rows, cols, 128,
                       128);
    return;
  }
  if (w.storage() == 1) {
    for (float &v : data.data)
      v = bf16ToFloat(floatToBF16(v));
    data.storage = WeightData::Storage::BF16;
    return;
  }
  if (w.dtype() == fb::DType::BF16)
    data.storage = WeightData::Storage::BF16; // the values are bf16 already
}

/// melt-select-kernels' device format (artifact: 1 f32, 2 bf16, 3 FP8).
WeightData::DeviceFormat deviceFormatOf(const fb::Weight &w) {
  switch (w.device_format()) {
  case 1:
    return WeightData::DeviceFormat::F32;
  case 2:
    return WeightData::DeviceFormat::BF16;
  case 3:
    return WeightData::DeviceFormat::Fp8Blocks;
  default:
    return WeightData::DeviceFormat::Unset;
  }
}

} // namespace

Status Model::loadWeights(const std::string &dir) {
  const fb::Model &m = artifact_.model();
  Files files(artifact_);
  MELT_RETURN_IF_ERROR(files.open(m, dir));
  std::vector<uint8_t> bytes, scaleBytes;
  weights_.resize(m.weights()->size());
  // Which weights are multiplied (prepacked for GEMMs) and which are read
  // directly (kept in f32).
  std::vector<bool> multiplied, read;
  weightUses(m, multiplied, read);
  for (uint32_t i = 0; i < m.weights()->size(); ++i) {
    const fb::Weight *w = m.weights()->Get(i);
    std::string what =
        "weights[" + str(i) + "] (" + (w->name() ? w->name()->str() : "") + ")";
    WeightData &data = weights_[i];
    // A view is decoded whole from its source, then sliced.
    bool view = w->view_shape() != nullptr;
    std::vector<int64_t> sourceShape =
        view ? std::vector<int64_t>(w->view_source()->begin(),
                                    w->view_source()->end())
             : std::vector<int64_t>(w->shape()->begin(), w->shape()->end());
    data.shape = sourceShape;
    uint64_t elements = 1;
    for (int64_t d : data.shape)
      elements *= static_cast<uint64_t>(d);
    data.data.resize(elements);
    uint32_t sources = w->sources()->size();
    uint64_t width = dtypeBytes(w->dtype());
    int64_t rank = data.shape.size();
    // Where each source goes, and the rows of its matrices (a concatenation
    // along dimension 0 has parts of different rows).
    const auto *concat = w->concat_rows();
    uint64_t offset = 0;
    for (uint32_t s = 0; s < sources; ++s) {
      int64_t rows =
          concat ? concat->Get(s) : data.shape[rank - 2 < 0 ? 0 : rank - 2];
      uint64_t count = concat ? static_cast<uint64_t>(rows) * data.shape[1]
                              : elements / sources;
      MELT_RETURN_IF_ERROR(
          files.read(*w->sources()->Get(s), w->embedded(), what, bytes));
      float *dst = data.data.data() + offset;
      offset += count;
      for (uint64_t e = 0; e < count; ++e)
        dst[e] = decode(bytes.data() + e * width, w->dtype());
      if (w->dtype() != fb::DType::F8E4M3FN)
        continue;
      // dequantized = q * scale_inv of its block (edge blocks partial).
      MELT_RETURN_IF_ERROR(
          files.read(*w->scales()->Get(s), w->embedded(), what, scaleBytes));
      int64_t cols = data.shape[rank - 1];
      int64_t br = w->block()->Get(0), bc = w->block()->Get(1);
      int64_t colBlocks = (cols + bc - 1) / bc;
      int64_t matrices = static_cast<int64_t>(count) / (rows * cols);
      int64_t rowBlocks = (rows + br - 1) / br;
      for (int64_t mtx = 0; mtx < matrices; ++mtx)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            int64_t block = (mtx * rowBlocks + r / br) * colBlocks + c / bc;
            dst[(mtx * rows + r) * cols + c] *=
                decode(scaleBytes.data() + 4 * block, fb::DType::F32);
          }
    }
    if (view) {
      // [outer, view_shape[axis], inner] -> [outer, shape[axis], inner]
      int64_t axis = w->view_axis();
      const auto *vshape = w->view_shape();
      int64_t outer = 1, inner = 1, size = w->shape()->Get(axis);
      for (int64_t d = 0; d < axis; ++d)
        outer *= vshape->Get(d);
      for (uint32_t d = axis + 1; d < vshape->size(); ++d)
        inner *= vshape->Get(d);
      std::vector<float> slice(outer * size * inner);
      for (int64_t o = 0; o < outer; ++o)
        std::copy_n(data.data.data() +
                        (o * vshape->Get(axis) + w->view_offset()) * inner,
                    size * inner, slice.data() + o * size * inner);
      data.data = std::move(slice);
      data.shape.assign(w->shape()->begin(), w->shape()->end());
      rank = data.shape.size();
      elements = data.data.size();
    }
    // melt-assign-precision: stored narrower than the checkpoint.
    applyStorage(*w, data);
    data.gemmOnly = multiplied[i] && !read[i];
    data.deviceFormat = deviceFormatOf(*w);
    // Loaded for another device: its f32 values are uploaded there, the
    // CPU's prepacked operands would only take memory and time.
    if (!multiplied[i] || rank < 2 || keepHostData_)
      continue;
    // One GEMM operand per [rows, cols] matrix; BF16 checkpoints stay bf16.
    int64_t rows = data.shape[rank - 2], cols = data.shape[rank - 1];
    int64_t matrices = static_cast<int64_t>(elements) / (rows * cols);
    for (int64_t mtx = 0; mtx < matrices; ++mtx) {
      std::unique_ptr<GemmWeight> gemm;
      MELT_RETURN_IF_ERROR(GemmWeight::create(
          data.data.data() + mtx * rows * cols, rows, cols,
          w->dtype() == fb::DType::BF16 || w->storage() == 1, gemm));
      data.gemms.push_back(std::move(gemm));
    }
    if (!read[i])
      std::vector<float>().swap(data.data);
  }
  return Status::ok();
}

uint64_t Model::weightBytes() const {
  uint64_t bytes = 0;
  for (const WeightData &w : weights_) {
    bytes += w.data.size() * sizeof(float);
    for (const auto &g : w.gemms)
      bytes += g->bytes();
  }
  return bytes;
}

Status Model::fromArtifact(Artifact artifact, const std::string &checkpointDir,
                           std::unique_ptr<Model> &out, bool keepHostData) {
  auto model = std::unique_ptr<Model>(new Model());
  model->artifact_ = std::move(artifact);
  model->keepHostData_ = keepHostData;
  MELT_RETURN_IF_ERROR(model->loadWeights(checkpointDir));
  out = std::move(model);
  return Status::ok();
}

Status Model::load(const std::string &artifactPath,
                   const std::string &checkpointDir,
                   std::unique_ptr<Model> &out, bool keepHostData) {
  Artifact artifact;
  MELT_RETURN_IF_ERROR(Artifact::load(artifactPath, artifact));
  return fromArtifact(std::move(artifact), checkpointDir, out, keepHostData);
}

Status Model::loadRandom(const std::string &artifactPath, uint64_t seed,
                         std::unique_ptr<Model> &out) {
  auto model = std::unique_ptr<Model>(new Model());
  MELT_RETURN_IF_ERROR(Artifact::load(artifactPath, model->artifact_));
  model->keepHostData_ = true;
  const fb::Model &m = model->artifact_.model();
  model->weights_.resize(m.weights()->size());
  std::vector<bool> multiplied, read;
  weightUses(m, multiplied, read);
  // Uniform on [-a, a] has std a / sqrt(3): a = 0.02 sqrt(3).
  const float a = 0.0346410f;
  auto fill = [&](uint32_t i) {
    const fb::Weight *w = m.weights()->Get(i);
    WeightData &data = model->weights_[i];
    data.shape.assign(w->shape()->begin(), w->shape()->end());
    uint64_t elements = 1;
    for (int64_t d : data.shape)
      elements *= static_cast<uint64_t>(d);
    data.data.resize(elements);
    std::string name = w->name() ? w->name()->str() : "";
    if (data.shape.size() == 1) {
      bool bias = name.find("bias") != std::string::npos;
      std::fill(data.data.begin(), data.data.end(), bias ? 0.0f : 1.0f);
      return;
    }
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + i + 1;
    for (float &v : data.data) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      v = a * (float(x >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
    applyStorage(*w, data);
    data.gemmOnly = multiplied[i] && !read[i];
    data.deviceFormat = deviceFormatOf(*w);
  };
  // Weights are independent (each seeded by its index): filled by all the
  // cores, a weight at a time (a mini model holds 4.7 B values).
  std::atomic<uint32_t> nextWeight{0};
  auto worker = [&] {
    for (uint32_t i; (i = nextWeight++) < m.weights()->size();)
      fill(i);
  };
  std::vector<std::thread> workers;
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned t = 1; t < cores; ++t)
    workers.emplace_back(worker);
  worker();
  for (std::thread &t : workers)
    t.join();
  out = std::move(model);
  return Status::ok();
}

//===- Artifact.cpp - loading and checking .melt files ----------*- C++ -*-===//
#include "Artifact.h"

#include "melt/artifact_header.h"
#include "melt/version.h"

#include <cstdio>
#include <fstream>
#include <limits>

using namespace melt;
using namespace melt::rt;

uint64_t melt::rt::dtypeBytes(fb::DType dtype) {
  switch (dtype) {
  case fb::DType::F32:
  case fb::DType::I32:
    return 4;
  case fb::DType::BF16:
  case fb::DType::F16:
    return 2;
  case fb::DType::F8E4M3FN:
    return 1;
  case fb::DType::I64:
    return 8;
  }
  return 0;
}

namespace {

std::string str(uint64_t v) { return std::to_string(v); }

/// a * b without overflow; false when it would overflow.
bool mulOk(uint64_t a, uint64_t b, uint64_t &out) {
  return !__builtin_mul_overflow(a, b, &out);
}

struct Arity {
  int inputs, outputs, minWeights, maxWeights, ints, floats;
  /// Trailing ints that newer compilers add and older artifacts lack.
  int optionalInts = 0;
};

/// What each kernel kind needs; -1: one or more.
Arity arityOf(fb::KernelKind kind) {
  switch (kind) {
  case fb::KernelKind::Embedding:
    return {1, 1, 1, 1, 0, 0};
  case fb::KernelKind::RMSNorm:
    return {1, 1, 1, 1, 0, 1};
  case fb::KernelKind::Linear:
    // ints: [output: 0 f32; 1 rounded to BF16 (an FP8 product's, artifact
    // 0.3); 2 BF16 that the runtime may keep in F32 (a BF16 product's)]
    // (absent: f32).
    return {1, 1, 1, 1, 0, 0, 1};
  case fb::KernelKind::Logits:
    return {1, 1, 1, 1, 0, 0};
  case fb::KernelKind::Rope:
    return {2, 1, 0, 0, 3, 6};
  case fb::KernelKind::Attention:
    return {4, 1, 0, 0, 1, 1};
  case fb::KernelKind::KVCacheAppend:
    return {4, 1, 0, 0, 0, 0};
  case fb::KernelKind::KVCacheRead:
    return {1, 2, 0, 0, 0, 0};
  case fb::KernelKind::SiluMul:
  case fb::KernelKind::Add:
    return {2, 1, 0, 0, 0, 0};
  case fb::KernelKind::Concat:
    return {-1, 1, 0, 0, 1, 0};
  case fb::KernelKind::Split:
    return {1, -1, 0, 0, 1, 0};
  case fb::KernelKind::Reshape:
  case fb::KernelKind::BroadcastHeads:
  case fb::KernelKind::Convert:
    return {1, 1, 0, 0, 0, 0};
  case fb::KernelKind::MoERouter:
    return {1, 2, 1, 2, 6, 1};
  case fb::KernelKind::MoEExperts:
    // ints: [combine in bf16] (artifact 0.2; absent in 0.1: f32).
    return {3, 1, 3, 3, 0, 0, 1};
  case fb::KernelKind::MTPCombine:
    return {2, 1, 3, 3, 0, 1};
  case fb::KernelKind::LatentCacheAppend:
    return {4, 1, 0, 0, 0, 0};
  case fb::KernelKind::MLA:
    return {4, 1, 2, 2, 1, 1};
  case fb::KernelKind::Quantize:
    return {1, 2, 0, 0, 2, 0};
  case fb::KernelKind::Dequantize:
    return {2, 1, 0, 0, 2, 0};
  }
  return {-2, -2, -2, -2, -2, -2};
}

template <typename T>
uint32_t count(const flatbuffers::Vector<T> *v) {
  return v ? v->size() : 0;
}

Status checkCount(const std::string &where, const char *field, uint32_t have,
                  int want) {
  if (want == -1 ? have == 0 : have != static_cast<uint32_t>(want))
    return invalidArtifact(where + "." + field + " has " + str(have) +
                           " entries, expected " +
                           (want == -1 ? std::string("at least 1")
                                       : std::to_string(want)));
  return Status::ok();
}

Status checkIndices(const std::string &where, const char *field,
                    const flatbuffers::Vector<uint32_t> *v, uint32_t limit,
                    const char *what) {
  for (uint32_t i = 0; i < count(v); ++i)
    if (v->Get(i) >= limit)
      return invalidArtifact(where + "." + field + "[" + str(i) +
                             "] refers to " + what + " " + str(v->Get(i)) +
                             " of " + str(limit));
  return Status::ok();
}

/// Elements of a shape, overflow-checked; all sizes must be >= 0.
bool elementCount(const flatbuffers::Vector<int64_t> *shape, uint64_t &n) {
  n = 1;
  for (uint32_t i = 0; i < count(shape); ++i) {
    int64_t d = shape->Get(i);
    if (d < 0 || !mulOk(n, static_cast<uint64_t>(d), n))
      return false;
  }
  return true;
}

} // namespace

Status Artifact::checkWeight(uint32_t index) const {
  const fb::Model &m = *model_;
  const fb::Weight *w = m.weights()->Get(index);
  std::string where = "weights[" + str(index) + "]";
  if (dtypeBytes(w->dtype()) == 0 || w->dtype() == fb::DType::I32 ||
      w->dtype() == fb::DType::I64)
    return invalidArtifact(where + " has an unsupported dtype " +
                           str(static_cast<int>(w->dtype())));
  uint64_t elements = 0;
  if (!w->shape() || w->shape()->size() == 0 ||
      !elementCount(w->shape(), elements))
    return invalidArtifact(where + ".shape is empty, negative or too large");
  uint32_t sources = count(w->sources());
  uint64_t slices = w->shape()->Get(0);
  // A view reads one tensor of shape view_source, reshaped and sliced.
  const flatbuffers::Vector<int64_t> *source = w->shape();
  if (w->view_shape() || w->view_source()) {
    const auto *vs = w->view_source(), *vshape = w->view_shape();
    uint64_t sourceElements = 0, shapeElements = 0;
    if (!vs || !vshape || !elementCount(vs, sourceElements) ||
        !elementCount(vshape, shapeElements) || vs->size() == 0 ||
        sourceElements != shapeElements ||
        vshape->size() != w->shape()->size() || sources != 1)
      return invalidArtifact(where + " has an inconsistent view");
    int64_t axis = w->view_axis();
    if (axis < 0 || axis >= static_cast<int64_t>(vshape->size()) ||
        w->view_offset() < 0 ||
        w->view_offset() + w->shape()->Get(axis) > vshape->Get(axis))
      return invalidArtifact(where + " slices outside its view");
    for (uint32_t d = 0; d < vshape->size(); ++d)
      if (static_cast<int64_t>(d) != axis &&
          vshape->Get(d) != w->shape()->Get(d))
        return invalidArtifact(where + " differs from its view shape");
    source = vs;
    elements = sourceElements;
    slices = 1;
  } else if (w->concat_rows()) {
    // Concatenated along dimension 0: one source per part.
    uint64_t rows = 0;
    for (int64_t r : *w->concat_rows())
      rows += r > 0 ? static_cast<uint64_t>(r) : ~uint64_t(0) / 2;
    if (w->shape()->size() != 2 || count(w->concat_rows()) != sources ||
        rows != static_cast<uint64_t>(w->shape()->Get(0)))
      return invalidArtifact(where + " has an inconsistent concatenation");
  } else if (!(sources == 1 ||
               (w->shape()->size() >= 2 && sources == slices))) {
    return invalidArtifact(where + " has " + str(sources) +
                           " sources for shape[0] = " + str(slices));
  }
  // Rows and elements of each source (rows: of its last-two-dims matrix).
  auto sourceElements = [&](uint32_t i) -> uint64_t {
    if (w->concat_rows())
      return w->concat_rows()->Get(i) * w->shape()->Get(1);
    return sources == 1 ? elements : elements / slices;
  };
  uint64_t perSource = sourceElements(0), bytes = 0;
  if (!mulOk(perSource, dtypeBytes(w->dtype()), bytes))
    return invalidArtifact(where + " is too large");
  uint32_t files = count(m.files());
  // Every range inside its file (checked at load) or inside the blob.
  auto located = [&](const fb::TensorRange *r, const std::string &what) {
    if (w->embedded()) {
      uint64_t end = 0;
      if (__builtin_add_overflow(r->offset(), r->bytes(), &end) ||
          end > blobSize_)
        return invalidArtifact(what + " [" + str(r->offset()) + ", +" +
                               str(r->bytes()) + ") is outside the " +
                               str(blobSize_) + "-byte weight blob");
    } else if (r->file() >= files) {
      return invalidArtifact(what + " refers to file " + str(r->file()) +
                             " of " + str(files));
    }
    return Status::ok();
  };
  for (uint32_t i = 0; i < sources; ++i) {
    const fb::TensorRange *r = w->sources()->Get(i);
    MELT_RETURN_IF_ERROR(located(r, where + ".sources[" + str(i) + "]"));
    bytes = sourceElements(i) * dtypeBytes(w->dtype());
    if (r->bytes() != bytes)
      return invalidArtifact(where + ".sources[" + str(i) + "] holds " +
                             str(r->bytes()) + " bytes, its shape needs " +
                             str(bytes));
  }
  bool fp8 = w->dtype() == fb::DType::F8E4M3FN;
  if (!fp8) {
    if (count(w->scales()) != 0)
      return invalidArtifact(where + " has block scales but is not FP8");
    return Status::ok();
  }
  uint32_t rank = source->size();
  if (rank < 2 || count(w->block()) != 2 || w->block()->Get(0) <= 0 ||
      w->block()->Get(1) <= 0)
    return invalidArtifact(where + " is FP8 without a valid 2-D block");
  if (count(w->scales()) != sources)
    return invalidArtifact(where + " has " + str(count(w->scales())) +
                           " scale tensors for " + str(sources) + " sources");
  uint64_t cols = source->Get(rank - 1);
  for (uint32_t i = 0; i < sources; ++i) {
    // Scales of source i: one per block of its [rows, cols] matrices.
    uint64_t rows = w->concat_rows() ? w->concat_rows()->Get(i)
                                     : source->Get(rank - 2);
    uint64_t blocks =
        ((rows + w->block()->Get(0) - 1) / w->block()->Get(0)) *
        ((cols + w->block()->Get(1) - 1) / w->block()->Get(1));
    uint64_t scaleBytes = 0;
    if (!mulOk(blocks, sourceElements(i) / std::max<uint64_t>(rows * cols, 1) * 4,
               scaleBytes))
      return invalidArtifact(where + " has too many scales");
    const fb::TensorRange *r = w->scales()->Get(i);
    MELT_RETURN_IF_ERROR(located(r, where + ".scales[" + str(i) + "]"));
    if (r->bytes() != scaleBytes)
      return invalidArtifact(where + ".scales[" + str(i) + "] holds " +
                             str(r->bytes()) + " bytes, expected " +
                             str(scaleBytes));
  }
  return Status::ok();
}

Status Artifact::checkMeaning() const {
  const fb::Model &m = *model_;
  if (!m.info() || !m.weights() || !m.buffers() || !m.kernels() ||
      !m.functions() || !m.files())
    return invalidArtifact(
        "the model lacks info, files, weights, buffers, kernels or functions");
  if (m.info()->vocab_size() <= 0 || m.info()->hidden_size() <= 0 ||
      m.info()->num_layers() < 0)
    return invalidArtifact("info has a non-positive vocabulary or hidden size");
  for (uint32_t i = 0; i < m.files()->size(); ++i)
    if (!m.files()->Get(i)->path())
      return invalidArtifact("files[" + str(i) + "] has no path");
  for (uint32_t i = 0; i < m.weights()->size(); ++i)
    MELT_RETURN_IF_ERROR(checkWeight(i));

  uint32_t buffers = m.buffers()->size(), weights = m.weights()->size(),
           kernels = m.kernels()->size();
  for (uint32_t i = 0; i < buffers; ++i) {
    const fb::Buffer *b = m.buffers()->Get(i);
    std::string where = "buffers[" + str(i) + "]";
    if (!b->shape() || b->shape()->size() == 0 || b->shape()->size() > 4)
      return invalidArtifact(where + " must have rank 1 to 4");
    for (uint32_t d = 0; d < b->shape()->size(); ++d) {
      int64_t size = b->shape()->Get(d);
      if (size < -1 || size > (int64_t(1) << 32) || (size == -1 && d != 0))
        return invalidArtifact(where + ".shape[" + str(d) + "] is " +
                               std::to_string(size));
    }
    if (dtypeBytes(b->dtype()) == 0)
      return invalidArtifact(where + " has an unknown dtype");
    if (b->kind() == fb::BufferKind::Cache &&
        (b->shape()->size() != 3 || b->shape()->Get(0) <= 0 ||
         b->shape()->Get(1) <= 0 || b->shape()->Get(2) <= 0))
      return invalidArtifact(where + " is a cache without [heads, key, value]");
  }
  // Storage: all buffers planned (ids below the buffer count) or none.
  uint32_t planned = 0;
  for (uint32_t i = 0; i < buffers; ++i) {
    int32_t storage = m.buffers()->Get(i)->storage();
    if (storage >= 0)
      ++planned;
    if (storage < -1 || storage >= static_cast<int32_t>(buffers))
      return invalidArtifact("buffers[" + str(i) + "].storage is " +
                             std::to_string(storage) + " of " + str(buffers));
  }
  if (planned != 0 && planned != buffers)
    return invalidArtifact("only " + str(planned) + " of " + str(buffers) +
                           " buffers have a storage");
  for (uint32_t i = 0; i < kernels; ++i) {
    const fb::Kernel *k = m.kernels()->Get(i);
    std::string where = "kernels[" + str(i) + "]";
    Arity a = arityOf(k->kind());
    if (a.inputs == -2)
      return invalidArtifact(where + " has unknown kind " +
                             str(static_cast<int>(k->kind())));
    MELT_RETURN_IF_ERROR(checkCount(where, "inputs", count(k->inputs()), a.inputs));
    MELT_RETURN_IF_ERROR(checkCount(where, "outputs", count(k->outputs()), a.outputs));
    uint32_t ints = count(k->ints());
    if (ints < static_cast<uint32_t>(a.ints) ||
        ints > static_cast<uint32_t>(a.ints + a.optionalInts))
      return invalidArtifact(where + ".ints has " + str(ints) +
                             " entries, expected " + str(a.ints) +
                             (a.optionalInts
                                  ? " to " + str(a.ints + a.optionalInts)
                                  : std::string()));
    MELT_RETURN_IF_ERROR(checkCount(where, "floats", count(k->floats()), a.floats));
    if (k->kind() == fb::KernelKind::Linear && ints > 0 &&
        (k->ints()->Get(0) < 0 ||
         k->ints()->Get(0) > int64_t(LinearOutput::Bf16MayKeepF32)))
      return invalidArtifact(where + ".ints[0] is " +
                             std::to_string(k->ints()->Get(0)) +
                             ": a linear's output is 0 (f32), 1 (rounded to "
                             "bf16) or 2 (bf16, may be kept in f32)");
    uint32_t w = count(k->weights());
    if (w < static_cast<uint32_t>(a.minWeights) ||
        w > static_cast<uint32_t>(a.maxWeights))
      return invalidArtifact(where + ".weights has " + str(w) +
                             " entries, expected " + str(a.minWeights) +
                             (a.maxWeights != a.minWeights
                                  ? " to " + str(a.maxWeights)
                                  : std::string()));
    MELT_RETURN_IF_ERROR(checkIndices(where, "inputs", k->inputs(), buffers, "buffer"));
    MELT_RETURN_IF_ERROR(checkIndices(where, "outputs", k->outputs(), buffers, "buffer"));
    MELT_RETURN_IF_ERROR(checkIndices(where, "weights", k->weights(), weights, "weight"));
    // An output never shares storage with an input of the same kernel.
    if (planned)
      for (uint32_t o = 0; o < count(k->outputs()); ++o)
        for (uint32_t j = 0; j < count(k->inputs()); ++j) {
          const fb::Buffer *out = m.buffers()->Get(k->outputs()->Get(o));
          const fb::Buffer *in = m.buffers()->Get(k->inputs()->Get(j));
          if (out->kind() != fb::BufferKind::Cache &&
              k->outputs()->Get(o) != k->inputs()->Get(j) &&
              out->storage() == in->storage())
            return invalidArtifact(where + ".outputs[" + str(o) +
                                   "] shares storage with inputs[" + str(j) +
                                   "]");
        }
    // The one input that is a cache, by kind (-1: none).
    int cacheInput = k->kind() == fb::KernelKind::KVCacheAppend ||
                             k->kind() == fb::KernelKind::KVCacheRead ||
                             k->kind() == fb::KernelKind::LatentCacheAppend
                         ? 0
                     : k->kind() == fb::KernelKind::MLA ? 2
                                                        : -1;
    for (uint32_t j = 0; j < count(k->inputs()); ++j) {
      bool isCache = m.buffers()->Get(k->inputs()->Get(j))->kind() ==
                     fb::BufferKind::Cache;
      if (isCache != (static_cast<int>(j) == cacheInput))
        return invalidArtifact(where + ".inputs[" + str(j) + "] " +
                               (isCache ? "is a cache where a tensor is "
                                          "expected"
                                        : "must be a cache"));
    }
  }
  for (uint32_t i = 0; i < m.functions()->size(); ++i) {
    const fb::Function *f = m.functions()->Get(i);
    std::string where = "functions[" + str(i) + "]";
    if (!f->name())
      return invalidArtifact(where + " has no name");
    MELT_RETURN_IF_ERROR(checkIndices(where, "inputs", f->inputs(), buffers, "buffer"));
    MELT_RETURN_IF_ERROR(checkIndices(where, "outputs", f->outputs(), buffers, "buffer"));
    MELT_RETURN_IF_ERROR(checkIndices(where, "kernels", f->kernels(), kernels, "kernel"));
  }
  const fb::Function *forward = function("forward");
  if (!forward || count(forward->inputs()) < 2 || count(forward->outputs()) < 2)
    return invalidArtifact("the model has no @forward(ids, positions, "
                           "caches...) function");
  return Status::ok();
}

const fb::Function *Artifact::function(const std::string &name) const {
  for (const fb::Function *f : *model_->functions())
    if (f->name() && f->name()->str() == name)
      return f;
  return nullptr;
}

Status Artifact::fromBytes(std::vector<uint8_t> bytes, const std::string &name,
                           Artifact &out) {
  auto fail = [&](const std::string &message) {
    return invalidArtifact(name + ": " + message);
  };
  uint64_t size = bytes.size();
  if (size < kArtifactHeaderSize)
    return fail("is " + str(size) + " bytes, shorter than the " +
                str(kArtifactHeaderSize) + "-byte header");
  if (std::memcmp(bytes.data(), kArtifactMagic, 8) != 0)
    return fail("is not a melt artifact (bad magic)");
  ArtifactHeader h = decodeArtifactHeader(bytes.data());
  for (uint32_t i = 56; i < kArtifactHeaderSize; ++i)
    if (bytes[i] != 0)
      return fail("reserved header byte " + str(i) + " is not zero");
  if (!melt_artifact_version_supported(h.major, h.minor))
    return fail("has format version " + str(h.major) + "." + str(h.minor) +
                "; this runtime reads " +
                str(MELT_ARTIFACT_VERSION_MAJOR) + ".0 to " +
                str(MELT_ARTIFACT_VERSION_MAJOR) + "." +
                str(MELT_ARTIFACT_VERSION_MINOR));
  if (h.headerSize != kArtifactHeaderSize ||
      h.flatbufferOffset != kArtifactHeaderSize)
    return fail("has a header of " + str(h.headerSize) +
                " bytes with the program at " + str(h.flatbufferOffset) +
                ", expected " + str(kArtifactHeaderSize));
  uint64_t programEnd = 0;
  if (__builtin_add_overflow(h.flatbufferOffset, h.flatbufferSize,
                             &programEnd) ||
      programEnd > size || h.flatbufferSize < 8)
    return fail("program of " + str(h.flatbufferSize) +
                " bytes does not fit the " + str(size) + "-byte file");
  // The FlatBuffers verifier only asserts its 2 GiB limit.
  if (h.flatbufferSize >= (uint64_t(1) << 31))
    return fail("program is larger than 2 GiB");
  uint64_t end = programEnd;
  if (h.weightsSize != 0) {
    if (h.weightsOffset % kArtifactBlobAlignment != 0 ||
        h.weightsOffset < programEnd ||
        __builtin_add_overflow(h.weightsOffset, h.weightsSize, &end) ||
        end > size)
      return fail("weight blob [" + str(h.weightsOffset) + ", +" +
                  str(h.weightsSize) + ") is misplaced in the " + str(size) +
                  "-byte file");
  } else if (h.weightsOffset != 0) {
    return fail("has a weight offset but no weights");
  }
  if (end != size)
    return fail("has " + str(size - end) + " trailing bytes");
  uint64_t checksum =
      fnv1a64(bytes.data() + kArtifactHeaderSize, size - kArtifactHeaderSize);
  if (checksum != h.checksum)
    return fail("checksum mismatch: the file is damaged");

  flatbuffers::Verifier verifier(bytes.data() + h.flatbufferOffset,
                                 h.flatbufferSize, /*max_depth=*/64,
                                 /*max_tables=*/10'000'000);
  if (!fb::ModelBufferHasIdentifier(bytes.data() + h.flatbufferOffset) ||
      !fb::VerifyModelBuffer(verifier))
    return fail("program fails FlatBuffers verification");

  out.bytes_ = std::move(bytes);
  out.name_ = name;
  out.model_ = fb::GetModel(out.bytes_.data() + h.flatbufferOffset);
  out.blobOffset_ = h.weightsSize ? h.weightsOffset : 0;
  out.blobSize_ = h.weightsSize;
  Status meaning = out.checkMeaning();
  if (meaning)
    return fail(meaning.message());
  return Status::ok();
}

Status Artifact::load(const std::string &path, Artifact &out) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in)
    return {MELT_NOT_FOUND, path + ": cannot open"};
  std::streamoff size = in.tellg();
  if (size < 0)
    return {MELT_NOT_FOUND, path + ": cannot read"};
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char *>(bytes.data()), size))
    return {MELT_NOT_FOUND, path + ": cannot read"};
  return fromBytes(std::move(bytes), path, out);
}

//===- DeviceRunner.cpp - a model's @forward on any Device ----------------===//
#include "DeviceRunner.h"

#include "KernelArgs.h"

#include <algorithm>

using namespace melt;
using namespace melt::rt;

namespace {

std::string kernelName(uint32_t k, const fb::Kernel &kernel) {
  return "kernels[" + std::to_string(k) + "] (" +
         fb::EnumNameKernelKind(kernel.kind()) + ")";
}

/// A view of the same memory with another shape.
DeviceTensor view(const DeviceTensor &t, std::vector<int64_t> shape) {
  DeviceTensor v = t;
  v.shape = std::move(shape);
  return v;
}

/// [..., last] as [rows, last].
DeviceTensor asRows(const DeviceTensor &t) {
  int64_t last = t.shape.empty() ? 1 : t.shape.back();
  return view(t, {last ? t.numel() / last : 0, last});
}

} // namespace

Status DeviceRunner::create(const Model &model, Device &device,
                            int64_t capacity,
                            std::unique_ptr<DeviceRunner> &out) {
  std::unique_ptr<DeviceRunner> runner(new DeviceRunner(model, device));
  const fb::Model &m = model.artifact().model();
  runner->forward_ = model.artifact().function("forward");
  if (!runner->forward_)
    return invalidArtifact("the artifact has no @forward");
  runner->capacity_ = capacity;
  // The weights @forward reads, uploaded as F32.
  for (uint32_t k : *runner->forward_->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (!kernel.weights())
      continue;
    for (uint32_t w : *kernel.weights()) {
      if (runner->weights_.count(w))
        continue;
      const WeightData &data = model.weight(w);
      int64_t count = 1;
      for (int64_t d : data.shape)
        count *= d;
      if (int64_t(data.data.size()) != count)
        return invalidArgument("weights[" + std::to_string(w) +
                               "] has no host copy: load the model with "
                               "keepHostData for a device");
      DeviceTensor t;
      MELT_RETURN_IF_ERROR(device.allocate(DType::F32, data.shape, t));
      runner->weights_[w] = t;
      MELT_RETURN_IF_ERROR(device.upload(data.data.data(), t));
    }
  }
  // One latent cache per cache input: [capacity, latent + rope].
  for (uint32_t id : *runner->forward_->inputs()) {
    const fb::Buffer &b = *m.buffers()->Get(id);
    if (b.kind() != fb::BufferKind::Cache)
      continue;
    if (b.shape()->size() != 3 || b.shape()->Get(0) != 1)
      return {MELT_UNSUPPORTED,
              "buffer " + std::to_string(id) +
                  ": only latent caches run on a device yet (compile with "
                  "melt-fuse-mla)"};
    DeviceTensor cache;
    MELT_RETURN_IF_ERROR(device.allocate(
        DType::F32, {capacity, b.shape()->Get(1) + b.shape()->Get(2)}, cache));
    runner->caches_[id] = cache;
  }
  out = std::move(runner);
  return Status::ok();
}

DeviceRunner::~DeviceRunner() {
  for (auto &[id, t] : weights_)
    device_.release(t);
  for (auto &[id, t] : caches_)
    device_.release(t);
}

Status DeviceRunner::append(const std::vector<int32_t> &tokens,
                            std::vector<float> &logits) {
  if (tokens.empty())
    return invalidArgument("append: no tokens");
  if (length_ + int64_t(tokens.size()) > capacity_)
    return {MELT_RESOURCE_EXHAUSTED,
            "append: " + std::to_string(tokens.size()) + " tokens after " +
                std::to_string(length_) + " exceed the cache of " +
                std::to_string(capacity_)};
  MELT_RETURN_IF_ERROR(run(tokens, logits));
  length_ += int64_t(tokens.size());
  return Status::ok();
}

Status DeviceRunner::run(const std::vector<int32_t> &tokens,
                         std::vector<float> &logits) {
  const fb::Model &m = model_.artifact().model();
  const int64_t T = int64_t(tokens.size());
  // Every value of this run, freed at the end; caches by buffer id (the
  // append's result is the same cache as its input).
  std::map<uint32_t, DeviceTensor> values;
  std::map<uint32_t, DeviceTensor *> cacheOf;
  struct Release {
    Device &device;
    std::map<uint32_t, DeviceTensor> &values;
    ~Release() {
      for (auto &[id, t] : values)
        device.release(t);
    }
  } release{device_, values};

  auto isCache = [&](uint32_t id) {
    return m.buffers()->Get(id)->kind() == fb::BufferKind::Cache;
  };
  auto make = [&](uint32_t id, DType type, std::vector<int64_t> shape,
                  DeviceTensor *&out) -> Status {
    auto it = values.find(id);
    if (it != values.end())
      device_.release(it->second);
    DeviceTensor t;
    MELT_RETURN_IF_ERROR(device_.allocate(type, std::move(shape), t));
    values[id] = t;
    out = &values[id];
    return Status::ok();
  };
  /// The buffer's static shape with the token dimension filled in.
  auto shapeOf = [&](uint32_t id) {
    const auto *s = m.buffers()->Get(id)->shape();
    std::vector<int64_t> shape(s->begin(), s->end());
    if (!shape.empty() && shape[0] < 0)
      shape[0] = T;
    return shape;
  };

  // Inputs: token ids and positions, then the caches.
  std::vector<int32_t> positions(T);
  for (int64_t t = 0; t < T; ++t)
    positions[t] = int32_t(length_ + t);
  size_t next = 0;
  for (uint32_t id : *forward_->inputs()) {
    if (isCache(id)) {
      cacheOf[id] = &caches_.at(id);
      continue;
    }
    DeviceTensor *t = nullptr;
    MELT_RETURN_IF_ERROR(make(id, DType::I32, {T}, t));
    MELT_RETURN_IF_ERROR(
        device_.upload(next++ == 0 ? tokens.data() : positions.data(), *t));
  }

  for (uint32_t k : *forward_->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    auto inId = [&](uint32_t i) { return kernel.inputs()->Get(i); };
    auto outId = [&](uint32_t i) { return kernel.outputs()->Get(i); };
    auto in = [&](uint32_t i) -> DeviceTensor & { return values.at(inId(i)); };
    auto w = [&](uint32_t i) -> DeviceTensor & {
      return weights_.at(kernel.weights()->Get(i));
    };
    auto ints = [&](uint32_t i) {
      return kernel.ints() && i < kernel.ints()->size() ? kernel.ints()->Get(i)
                                                        : 0;
    };
    DeviceTensor *out = nullptr;
    Status status;
    switch (kernel.kind()) {
    case fb::KernelKind::Embedding:
      MELT_RETURN_IF_ERROR(make(outId(0), DType::F32, {T, w(0).shape[1]}, out));
      status = device_.embedding(in(0), w(0), *out);
      break;
    case fb::KernelKind::RMSNorm: {
      MELT_RETURN_IF_ERROR(make(outId(0), DType::F32, in(0).shape, out));
      DeviceTensor y = asRows(*out);
      status = device_.rmsNorm(asRows(in(0)), w(0),
                               float(kernel.floats()->Get(0)), y);
      break;
    }
    case fb::KernelKind::Linear:
    case fb::KernelKind::Logits:
      MELT_RETURN_IF_ERROR(
          make(outId(0), DType::F32, {in(0).rows(), w(0).shape[0]}, out));
      status = device_.linear(asRows(in(0)), w(0), *out);
      break;
    case fb::KernelKind::Rope: {
      RopeParams p = ropeParamsOf(kernel);
      MELT_RETURN_IF_ERROR(make(outId(0), DType::F32, in(0).shape, out));
      status = device_.rope(in(0), in(1), p, *out);
      break;
    }
    case fb::KernelKind::SiluMul:
    case fb::KernelKind::Add:
      MELT_RETURN_IF_ERROR(make(outId(0), DType::F32, in(0).shape, out));
      status = kernel.kind() == fb::KernelKind::Add
                   ? device_.add(in(0), in(1), *out)
                   : device_.siluMul(in(0), in(1), *out);
      break;
    case fb::KernelKind::Reshape:
    case fb::KernelKind::Convert:
      MELT_RETURN_IF_ERROR(make(outId(0), in(0).dtype,
                                kernel.kind() == fb::KernelKind::Reshape
                                    ? shapeOf(outId(0))
                                    : in(0).shape,
                                out));
      status = device_.copy(in(0), *out);
      break;
    case fb::KernelKind::Split: {
      int axis = int(ints(0));
      int64_t offset = 0;
      DeviceTensor source = in(0);
      for (uint32_t i = 0; i < kernel.outputs()->size() && !status; ++i) {
        std::vector<int64_t> shape = source.shape;
        shape[axis] = shapeOf(outId(i))[axis];
        MELT_RETURN_IF_ERROR(make(outId(i), source.dtype, shape, out));
        status = device_.slice(source, axis, offset, *out);
        offset += shape[axis];
      }
      break;
    }
    case fb::KernelKind::Concat: {
      int axis = int(ints(0));
      MELT_RETURN_IF_ERROR(make(outId(0), in(0).dtype, shapeOf(outId(0)), out));
      int64_t offset = 0;
      for (uint32_t i = 0; i < kernel.inputs()->size() && !status; ++i) {
        status = device_.place(in(i), axis, offset, *out);
        offset += in(i).shape[axis];
      }
      break;
    }
    case fb::KernelKind::LatentCacheAppend: {
      DeviceTensor *cache = cacheOf.at(inId(0));
      status = device_.latentCacheAppend(asRows(in(1)), in(2), in(3), *cache);
      cacheOf[outId(0)] = cache;
      break;
    }
    case fb::KernelKind::MLA: {
      const DeviceTensor &qn = in(0);
      MELT_RETURN_IF_ERROR(make(outId(0), DType::F32,
                                {qn.shape[0], qn.shape[1], w(1).shape[1]},
                                out));
      // Absorbed at every length: the same result as the decompressed form
      // the CPU uses for long prefills.
      status = device_.mla(qn, in(1), *cacheOf.at(inId(2)), in(3), w(0), w(1),
                           float(kernel.floats()->Get(0)), *out);
      break;
    }
    case fb::KernelKind::MoERouter: {
      RouterParams p = routerParamsOf(kernel);
      DeviceTensor scores;
      MELT_RETURN_IF_ERROR(
          device_.allocate(DType::F32, {in(0).rows(), w(0).shape[0]}, scores));
      status = device_.linear(asRows(in(0)), w(0), scores);
      DeviceTensor *indices = nullptr, *weights = nullptr;
      if (!status)
        status = make(outId(0), DType::I32, {in(0).rows(), p.topK}, indices);
      if (!status)
        status = make(outId(1), DType::F32, {in(0).rows(), p.topK}, weights);
      if (!status)
        status = device_.routeExperts(
            scores, kernel.weights()->size() > 1 ? &w(1) : nullptr, p, *indices,
            *weights);
      device_.release(scores);
      break;
    }
    case fb::KernelKind::MoEExperts:
      MELT_RETURN_IF_ERROR(make(outId(0), DType::F32, in(0).shape, out));
      status = device_.moeExperts(in(0), in(1), in(2), w(0), w(1), w(2),
                                  ints(0) != 0, *out);
      break;
    default:
      return {MELT_UNSUPPORTED,
              kernelName(k, kernel) + " does not run on a device yet"};
    }
    if (status)
      return Status(status.code(),
                    kernelName(k, kernel) + ": " + status.message());
  }

  // The logits: @forward's first non-cache output.
  for (uint32_t id : *forward_->outputs()) {
    if (isCache(id))
      continue;
    const DeviceTensor &t = values.at(id);
    if (t.shape.size() != 2 || t.shape[0] != T || t.dtype != DType::F32)
      return invalidArtifact("@forward returned logits of the wrong shape");
    logits.resize(size_t(t.numel()));
    return device_.download(t, logits.data());
  }
  return invalidArtifact("@forward returns no logits");
}

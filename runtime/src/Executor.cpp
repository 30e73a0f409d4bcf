//===- Executor.cpp - runs a function of the program ------------*- C++ -*-===//
#include "Executor.h"

#include "CpuKernels.h"
#include "KernelArgs.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>

using namespace melt;
using namespace melt::rt;

namespace {

/// MELT_PROFILE=1: time per kernel kind, printed to stderr at exit.
struct Profile {
  bool enabled = std::getenv("MELT_PROFILE") != nullptr;
  std::mutex mutex;
  double seconds[64] = {};
  uint64_t calls[64] = {};
  ~Profile() {
    if (!enabled)
      return;
    double total = 0;
    for (double s : seconds)
      total += s;
    std::fprintf(stderr, "melt profile (kernel kind: calls, ms, share)\n");
    for (int k = 0; k < 64; ++k)
      if (calls[k])
        std::fprintf(stderr, "  %-16s %8llu %10.2f %5.1f%%\n",
                     fb::EnumNameKernelKind(static_cast<fb::KernelKind>(k)),
                     static_cast<unsigned long long>(calls[k]),
                     seconds[k] * 1e3, 100.0 * seconds[k] / total);
  }
};
Profile profile;


std::vector<int64_t> staticShape(const fb::Buffer &b) {
  return std::vector<int64_t>(b.shape()->begin(), b.shape()->end());
}

} // namespace

Status melt::rt::execute(const Model &model, const fb::Function &function,
                     std::vector<Tensor> inputs, Batch &batch,
                     std::vector<Tensor> &outputs, ExpertLoad *load) {
  const fb::Model &m = model.artifact().model();
  // Values live in storages: planned artifacts reuse one for many values.
  std::vector<Tensor> storages(m.buffers()->size());
  auto valueOf = [&](uint32_t id) -> Tensor & {
    int32_t storage = m.buffers()->Get(id)->storage();
    return storages[storage >= 0 ? storage : id];
  };
  auto isCache = [&](uint32_t id) {
    return m.buffers()->Get(id)->kind() == fb::BufferKind::Cache;
  };
  size_t next = 0;
  for (uint32_t id : *function.inputs()) {
    if (isCache(id)) {
      for (auto &caches : batch.caches)
        if (!caches.count(id))
          return invalidArgument("function '" + function.name()->str() +
                                 "': no cache bound to buffer " +
                                 std::to_string(id));
      continue;
    }
    if (next >= inputs.size())
      return invalidArgument("function '" + function.name()->str() +
                             "' needs more inputs");
    valueOf(id) = std::move(inputs[next++]);
  }

  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    auto in = [&](uint32_t i) -> Tensor & {
      return valueOf(kernel.inputs()->Get(i));
    };
    auto out = [&](uint32_t i) -> Tensor & {
      return valueOf(kernel.outputs()->Get(i));
    };
    auto w = [&](uint32_t i) -> const WeightData & {
      return model.weight(kernel.weights()->Get(i));
    };
    auto outShape = [&](uint32_t i) {
      return staticShape(*m.buffers()->Get(kernel.outputs()->Get(i)));
    };
    // The cache operand, for every sequence of the batch.
    auto cachesOf = [&](std::vector<CacheView *> &views, uint32_t input = 0) {
      views.clear();
      for (auto &caches : batch.caches) {
        auto it = caches.find(kernel.inputs()->Get(input));
        if (it == caches.end())
          return false;
        views.push_back(&it->second);
      }
      return !views.empty();
    };
    std::vector<CacheView *> views;
    Status status;
    auto started = std::chrono::steady_clock::now();
    switch (kernel.kind()) {
    case fb::KernelKind::Embedding:
      status = cpu::embedding(in(0), w(0), out(0));
      break;
    case fb::KernelKind::RMSNorm:
      status = cpu::rmsNorm(in(0), w(0), kernel.floats()->Get(0), out(0));
      break;
    case fb::KernelKind::Linear:
    case fb::KernelKind::Logits:
      status = cpu::linear(in(0), w(0), out(0));
      break;
    case fb::KernelKind::Rope: {
      cpu::RopeParams p = ropeParamsOf(kernel);
      if (!(p.theta > 0) || (p.yarn && (p.originalMax <= 0 || !(p.factor >= 1) ||
                                        !(p.betaFast > p.betaSlow) ||
                                        !(p.betaSlow > 0))))
        return invalidArtifact("kernels[" + std::to_string(k) +
                               "]: invalid RoPE parameters");
      status = cpu::rope(in(0), in(1), p, out(0));
      break;
    }
    case fb::KernelKind::Attention:
      status = cpu::attention(in(0), in(1), in(2), in(3),
                              kernel.ints()->Get(0) != 0,
                              kernel.floats()->Get(0), batch.segments, out(0));
      break;
    case fb::KernelKind::KVCacheAppend:
      if (!cachesOf(views))
        return invalidArtifact("kernels[" + std::to_string(k) +
                               "] appends to a cache that is not an input");
      for (size_t b = 0; b < views.size() && !status; ++b)
        status = cpu::cacheAppend(*views[b], in(1), in(2), in(3),
                                  batch.segments[b], batch.segments[b + 1]);
      break;
    case fb::KernelKind::KVCacheRead:
      if (!cachesOf(views))
        return invalidArtifact("kernels[" + std::to_string(k) +
                               "] reads a cache that is not an input");
      status = cpu::cacheRead(views, out(0), out(1));
      break;
    case fb::KernelKind::LatentCacheAppend:
      if (!cachesOf(views))
        return invalidArtifact("kernels[" + std::to_string(k) +
                               "] appends to a cache that is not an input");
      for (size_t b = 0; b < views.size() && !status; ++b)
        status = cpu::latentCacheAppend(*views[b], in(1), in(2), in(3),
                                        batch.segments[b],
                                        batch.segments[b + 1]);
      break;
    case fb::KernelKind::MLA:
      if (!cachesOf(views, 2))
        return invalidArtifact("kernels[" + std::to_string(k) +
                               "] attends to a cache that is not an input");
      status = cpu::mla(in(0), in(1), views, in(3), w(0), w(1),
                        kernel.floats()->Get(0), kernel.ints()->Get(0),
                        batch.segments, out(0));
      break;
    case fb::KernelKind::Quantize:
      status = cpu::quantize(in(0), kernel.ints()->Get(0),
                             kernel.ints()->Get(1), out(0), out(1));
      break;
    case fb::KernelKind::Dequantize:
      status = cpu::dequantize(in(0), in(1), kernel.ints()->Get(0),
                               kernel.ints()->Get(1), out(0));
      break;
    case fb::KernelKind::SiluMul:
      status = cpu::siluMul(in(0), in(1), out(0));
      break;
    case fb::KernelKind::Add:
      status = cpu::add(in(0), in(1), out(0));
      break;
    case fb::KernelKind::Concat: {
      std::vector<const Tensor *> parts;
      for (uint32_t i = 0; i < kernel.inputs()->size(); ++i)
        parts.push_back(&in(i));
      status = cpu::concat(parts, kernel.ints()->Get(0), outShape(0), out(0));
      break;
    }
    case fb::KernelKind::Split: {
      std::vector<std::vector<int64_t>> shapes;
      std::vector<Tensor *> outs;
      for (uint32_t i = 0; i < kernel.outputs()->size(); ++i) {
        shapes.push_back(outShape(i));
        outs.push_back(&out(i));
      }
      status = cpu::split(in(0), kernel.ints()->Get(0), shapes, outs);
      break;
    }
    case fb::KernelKind::Reshape:
      status = cpu::reshape(in(0), outShape(0), out(0));
      break;
    case fb::KernelKind::BroadcastHeads:
      status = cpu::broadcastHeads(in(0), outShape(0).size() == 3
                                              ? outShape(0)[1]
                                              : 0,
                                   out(0));
      break;
    case fb::KernelKind::Convert:
      // Compute is f32 throughout: a conversion is a copy.
      out(0) = in(0);
      break;
    case fb::KernelKind::MoERouter: {
      cpu::RouterParams p = routerParamsOf(kernel);
      const WeightData *bias = kernel.weights()->size() > 1 ? &w(1) : nullptr;
      status = cpu::moeRouter(in(0), w(0), bias, p, out(0), out(1));
      if (!status && load) {
        RouterLoad &stats = (*load)[k];
        stats.counts.resize(w(0).shape[0]);
        const std::vector<int64_t> &chosen = out(0).ints;
        int64_t topK = p.topK;
        for (size_t t = 0; t * topK < chosen.size(); ++t)
          for (int64_t a = 0; a < topK; ++a) {
            int64_t x = chosen[t * topK + a];
            ++stats.counts[x];
            for (int64_t b = a + 1; b < topK; ++b) {
              int64_t y = chosen[t * topK + b];
              ++stats.pairs[{std::min(x, y), std::max(x, y)}];
            }
          }
      }
      break;
    }
    case fb::KernelKind::MoEExperts:
      status = cpu::moeExperts(in(0), in(1), in(2), w(0), w(1), w(2),
                               kernel.ints() && kernel.ints()->size() > 0 &&
                                   kernel.ints()->Get(0) != 0,
                               out(0));
      break;
    case fb::KernelKind::MTPCombine:
      status = cpu::mtpCombine(in(0), in(1), w(0), w(1), w(2),
                               kernel.floats()->Get(0), out(0));
      break;
    }
    if (profile.enabled) {
      double s = std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - started)
                     .count();
      int kind = static_cast<int>(kernel.kind()) & 63;
      std::lock_guard<std::mutex> lock(profile.mutex);
      profile.seconds[kind] += s;
      ++profile.calls[kind];
    }
    if (status)
      return Status(status.code(), "kernels[" + std::to_string(k) + "] (" +
                                       fb::EnumNameKernelKind(kernel.kind()) +
                                       "): " + status.message());
  }
  outputs.clear();
  for (uint32_t id : *function.outputs())
    if (!isCache(id))
      outputs.push_back(std::move(valueOf(id)));
  return Status::ok();
}

//===- Gemm.cpp - prepacked GEMMs of the CPU device -------------*- C++ -*-===//
#include "Gemm.h"

#include "melt/numerics.h"

#include <map>
#include <mutex>
#include <tuple>

#ifdef MELT_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

using namespace melt;
using namespace melt::rt;

#ifdef MELT_HAVE_DNNL

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

dnnl::engine &engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

/// One in-order CPU stream per thread: making one per call costs more than
/// a small GEMM.
dnnl::stream &stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

/// Matmul primitives by (m, k, n, bf16), shared by all weights of a shape.
/// Bounded: prefills of many lengths must not grow it without end.
class PrimitiveCache {
public:
  dnnl::matmul get(int64_t m, int64_t k, int64_t n, bool bf16,
                   const dnnl::memory::desc &weights) {
    std::lock_guard<std::mutex> lock(mutex);
    auto key = std::make_tuple(m, k, n, bf16);
    auto it = cache.find(key);
    if (it != cache.end())
      return it->second;
    if (cache.size() > 512)
      cache.clear();
    dnnl::memory::desc src({m, k}, bf16 ? dt::bf16 : dt::f32, tag::ab);
    dnnl::memory::desc dst({m, n}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst),
                                    engine());
    return cache.emplace(key, dnnl::matmul(pd)).first->second;
  }

private:
  std::mutex mutex;
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, dnnl::matmul> cache;
};

PrimitiveCache &primitives() {
  static PrimitiveCache cache;
  return cache;
}

} // namespace

struct GemmWeight::Impl {
  bool bf16 = false;
  dnnl::memory packed;
};

Status GemmWeight::create(const float *w, int64_t n, int64_t k, bool bf16,
                          std::unique_ptr<GemmWeight> &out) {
  auto g = std::unique_ptr<GemmWeight>(new GemmWeight());
  g->n_ = n;
  g->k_ = k;
  g->impl_ = std::make_unique<Impl>();
  g->impl_->bf16 = bf16;
  try {
    dt type = bf16 ? dt::bf16 : dt::f32;
    // The layout oneDNN wants for these weights, asked with M = 1.
    dnnl::memory::desc src({1, k}, type, tag::ab);
    dnnl::memory::desc any({k, n}, type, tag::any);
    dnnl::memory::desc dst({1, n}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, any, dst),
                                    engine());
    // W is [n, k] row-major: as the [k, n] matmul operand that is "ba".
    std::vector<uint16_t> halves;
    void *plainData = const_cast<float *>(w);
    if (bf16) {
      halves.resize(static_cast<size_t>(n * k));
      for (size_t i = 0; i < halves.size(); ++i)
        halves[i] = floatToBF16(w[i]);
      plainData = halves.data();
    }
    dnnl::memory plain({{k, n}, type, tag::ba}, engine(), plainData);
    g->impl_->packed = dnnl::memory(pd.weights_desc(), engine());
    dnnl::reorder(plain, g->impl_->packed)
        .execute(stream(), plain, g->impl_->packed);
    stream().wait();
  } catch (const dnnl::error &e) {
    return {MELT_INTERNAL, std::string("oneDNN: packing a weight: ") + e.what()};
  }
  out = std::move(g);
  return Status::ok();
}

Status GemmWeight::multiply(const float *x, int64_t m, float *y) const {
  if (m == 0)
    return Status::ok();
  try {
    bool bf16 = impl_->bf16;
    dnnl::matmul mm = primitives().get(m, k_, n_, bf16,
                                       impl_->packed.get_desc());
    std::vector<uint16_t> halves;
    void *srcData = const_cast<float *>(x);
    if (bf16) {
      halves.resize(static_cast<size_t>(m * k_));
      for (size_t i = 0; i < halves.size(); ++i)
        halves[i] = floatToBF16(x[i]);
      srcData = halves.data();
    }
    dnnl::memory src({{m, k_}, bf16 ? dt::bf16 : dt::f32, tag::ab}, engine(),
                     srcData);
    dnnl::memory dst({{m, n_}, dt::f32, tag::ab}, engine(), y);
    mm.execute(stream(), {{DNNL_ARG_SRC, src},
                          {DNNL_ARG_WEIGHTS, impl_->packed},
                          {DNNL_ARG_DST, dst}});
    stream().wait();
  } catch (const dnnl::error &e) {
    return {MELT_INTERNAL, std::string("oneDNN: matmul: ") + e.what()};
  }
  return Status::ok();
}

uint64_t GemmWeight::bytes() const {
  return impl_->packed.get_desc().get_size();
}

const char *GemmWeight::backend() { return "onednn"; }

#else // !MELT_HAVE_DNNL

struct GemmWeight::Impl {
  std::vector<float> plain;
};

Status GemmWeight::create(const float *w, int64_t n, int64_t k, bool,
                          std::unique_ptr<GemmWeight> &out) {
  auto g = std::unique_ptr<GemmWeight>(new GemmWeight());
  g->n_ = n;
  g->k_ = k;
  g->impl_ = std::make_unique<Impl>();
  g->impl_->plain.assign(w, w + n * k);
  out = std::move(g);
  return Status::ok();
}

Status GemmWeight::multiply(const float *x, int64_t m, float *y) const {
  const float *w = impl_->plain.data();
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < n_; ++j) {
      float acc = 0.0f;
      for (int64_t i = 0; i < k_; ++i)
        acc += x[t * k_ + i] * w[j * k_ + i];
      y[t * n_ + j] = acc;
    }
  return Status::ok();
}

uint64_t GemmWeight::bytes() const { return impl_->plain.size() * 4; }

const char *GemmWeight::backend() { return "reference"; }

#endif

GemmWeight::~GemmWeight() = default;

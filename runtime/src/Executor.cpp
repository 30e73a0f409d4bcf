//===- Executor.cpp - a model's @forward on a Device ----------------------===//
#include "Executor.h"

#include "Bf16Products.h"
#include "EnvSwitch.h"
#include "KernelArgs.h"
#include "NormProductFusions.h"
#include "QuantizeFolds.h"
#include "SideBranches.h"
#include "SiluMulFusions.h"
#include "SplitPartsInPlace.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>

using namespace melt;
using namespace melt::rt;

namespace {

bool profilingRequested() { return std::getenv("MELT_PROFILE") != nullptr; }

} // namespace

/// MELT_PROFILE=1: time per kernel kind, printed to stderr when the session
/// ends (the device is synchronized after every kernel, so that a GPU's
/// time is counted where it is spent; a session of its own, such as
/// melt-run --warmup's, keeps first-call costs out of the timed one).
struct melt::rt::ForwardRunner::Profile {
  std::mutex mutex;
  double seconds[64] = {};
  uint64_t calls[64] = {};
  uint64_t passes = 0;
  ~Profile() {
    double total = 0;
    for (double s : seconds)
      total += s;
    if (total <= 0)
      return;
    std::fprintf(stderr,
                 "melt profile of a session, %llu passes (kernel kind: "
                 "calls, ms, share)\n",
                 static_cast<unsigned long long>(passes));
    for (int k = 0; k < 64; ++k)
      if (calls[k])
        std::fprintf(stderr, "  %-18s %8llu %10.2f %5.1f%%\n",
                     fb::EnumNameKernelKind(static_cast<fb::KernelKind>(k)),
                     static_cast<unsigned long long>(calls[k]),
                     seconds[k] * 1e3, 100.0 * seconds[k] / total);
  }
};

/// MELT_PROFILE_STEPS=1: where the host's time of a decode step goes
/// (graphs still run, unlike MELT_PROFILE), printed to stderr when the
/// session ends, in microseconds a step: the caller's time between steps
/// (the session's bookkeeping, the program's loop), the layout's uploads,
/// the kernels queued (a recorded step: the graph's launch; else every
/// kernel's call), the pick and router choices queued after them, and the
/// wait for the step's results (the device's time the host did not
/// overlap). Steps that record a graph are left out of those; their
/// recordings (the host's capture and instantiation of a decode step's
/// graph, once per shape and session) are counted on a line of their own,
/// and prefills (steps of more tokens than sequences) the same phases on
/// another, in microseconds each.
namespace {
struct StepPhases {
  double upload = 0, queue = 0, pick = 0, wait = 0;
};
} // namespace

struct melt::rt::ForwardRunner::StepTimes {
  using Clock = std::chrono::steady_clock;
  double between = 0;
  StepPhases sum, prefillSum;
  uint64_t steps = 0, replayed = 0, recordings = 0, recordedAhead = 0,
           prefills = 0;
  double recording = 0;
  Clock::time_point lastEnd{};
  ~StepTimes() {
    if (prefills > 0) {
      const double n = double(prefills);
      std::fprintf(stderr,
                   "melt prefill times, %llu prefills, us each: uploads "
                   "%.1f, kernels queued %.1f, pick queued %.1f, wait for "
                   "the results %.1f; total %.1f\n",
                   static_cast<unsigned long long>(prefills),
                   prefillSum.upload / n, prefillSum.queue / n,
                   prefillSum.pick / n, prefillSum.wait / n,
                   (prefillSum.upload + prefillSum.queue + prefillSum.pick +
                    prefillSum.wait) /
                       n);
    }
    if (recordings > 0)
      std::fprintf(stderr,
                   "melt step recordings: %llu, %.1f us each (a decode "
                   "step's graph captured and instantiated; %llu while the "
                   "step before ran)\n",
                   static_cast<unsigned long long>(recordings),
                   recording / double(recordings),
                   static_cast<unsigned long long>(recordedAhead));
    if (steps < 2)
      return;
    const double n = double(steps);
    std::fprintf(stderr,
                 "melt step times, %llu decode steps (%llu replayed), us a "
                 "step: between steps %.1f, uploads %.1f, kernels queued "
                 "%.1f, pick and choices queued %.1f, wait for the results "
                 "%.1f; total %.1f\n",
                 static_cast<unsigned long long>(steps),
                 static_cast<unsigned long long>(replayed), between / (n - 1),
                 sum.upload / n, sum.queue / n, sum.pick / n, sum.wait / n,
                 between / (n - 1) +
                     (sum.upload + sum.queue + sum.pick + sum.wait) / n);
  }
};

/// One step's phases into StepTimes (nothing when null).
class melt::rt::ForwardRunner::StepTimer {
public:
  using Clock = StepTimes::Clock;
  /// `counted`: a decode step (others only mark where they end, or with
  /// `prefill` count on the prefills' line).
  StepTimer(StepTimes *times, bool counted, bool prefill = false)
      : times_(times), counted_(counted), prefill_(prefill && !counted) {
    if (times_ && times_->steps > 0)
      between_ = micros(times_->lastEnd, mark_);
  }
  /// The time since the last mark goes to `phase`.
  void mark(double StepPhases::*phase) {
    const Clock::time_point now = Clock::now();
    phases_.*phase += micros(mark_, now);
    mark_ = now;
  }
  /// collect()'s time: `waited` of it the wait, the rest the pick queued.
  void markCollect(double waited) {
    mark(&StepPhases::pick);
    phases_.pick -= waited;
    phases_.wait += waited;
  }
  void replayed() { replayed_ = true; }
  void leaveOut() { counted_ = false; } // a step that records a graph
  ~StepTimer() {
    if (!times_)
      return;
    times_->lastEnd = Clock::now();
    if (prefill_) {
      for (double StepPhases::*phase : {&StepPhases::upload, &StepPhases::queue,
                                        &StepPhases::pick, &StepPhases::wait})
        times_->prefillSum.*phase += phases_.*phase;
      ++times_->prefills;
    }
    if (!counted_)
      return;
    if (times_->steps > 0)
      times_->between += between_;
    for (double StepPhases::*phase : {&StepPhases::upload, &StepPhases::queue,
                                      &StepPhases::pick, &StepPhases::wait})
      times_->sum.*phase += phases_.*phase;
    ++times_->steps;
    times_->replayed += replayed_ ? 1 : 0;
  }

private:
  static double micros(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double, std::micro>(to - from).count();
  }
  StepTimes *times_;
  bool counted_, prefill_;
  Clock::time_point mark_ = Clock::now();
  double between_ = 0;
  bool replayed_ = false;
  StepPhases phases_;
};

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

/// [T, ...] as [T, rest].
DeviceTensor perToken(const DeviceTensor &t) {
  int64_t tokens = t.shape.empty() ? 0 : t.shape[0];
  return view(t, {tokens, tokens ? t.numel() / tokens : 0});
}

/// Every tensor of one step, released when the step ends. Values live in
/// their buffer's storage: a value the memory plan (melt-plan-memory) puts
/// in the storage of a dead one replaces it, so that a step holds at once
/// only what the plan holds. A value may be a view of another's memory (a
/// reshape, a part of a split that is contiguous): memory is released when
/// the last value that holds it goes (values are never written after they
/// are made).
class StepValues {
public:
  StepValues(Device &device, const fb::Model &model)
      : device_(device), model_(model) {}
  ~StepValues() {
    for (const DeviceTensor &t : kept_)
      drop(t);
    for (auto &[key, t] : values_)
      drop(t);
    for (DeviceTensor &t : scratch_)
      device_.release(t);
  }
  /// A new tensor for value `id` (replacing the one its storage held).
  Status make(uint32_t id, DType type, std::vector<int64_t> shape,
              DeviceTensor *&out) {
    // What the storage held goes first: its memory may serve again.
    auto held = values_.find(keyOf(id));
    if (held != values_.end()) {
      DeviceTensor old = held->second;
      values_.erase(held);
      drop(old);
    }
    DeviceTensor t;
    MELT_RETURN_IF_ERROR(device_.allocate(type, std::move(shape), t));
    held_[t.data] = {t, 1};
    out = &put(id, t);
    return Status::ok();
  }
  /// Value `id` as a view of value `source`'s memory from `offsetBytes` on,
  /// with `shape`, where the step holds that memory and the view lies in
  /// it; false (nothing done) otherwise.
  bool view(uint32_t id, const DeviceTensor &source, std::vector<int64_t> shape,
            DeviceTensor *&out, size_t offsetBytes = 0) {
    DeviceTensor t = source;
    t.shape = std::move(shape);
    const void *base = baseOf(source.data);
    auto held = held_.find(base);
    if (!source.data || held == held_.end() ||
        offsetBytes + t.bytes() > source.bytes())
      return false;
    t.data = static_cast<char *>(source.data) + offsetBytes;
    if (t.data != base)
      interior_[t.data] = base;
    ++held->second.values;
    out = &put(id, t);
    return true;
  }
  /// Keeps t's memory (a value's) while the step replaces values, until
  /// letGo(t).
  void hold(const DeviceTensor &t) {
    auto it = held_.find(baseOf(t.data));
    if (it != held_.end())
      ++it->second.values;
  }
  void letGo(const DeviceTensor &t) { drop(t); }
  /// Keeps value t's memory to the end of the step; a tensor that stays
  /// valid as long (t may be replaced in its storage meanwhile).
  const DeviceTensor *keep(const DeviceTensor &t) {
    hold(t);
    kept_.push_back(t);
    return &kept_.back();
  }
  /// A tensor that is no value of the program, holding `host` if given.
  Status scratch(DType type, std::vector<int64_t> shape, DeviceTensor *&out,
                 const void *host = nullptr) {
    DeviceTensor t;
    MELT_RETURN_IF_ERROR(device_.allocate(type, std::move(shape), t));
    scratch_.push_back(t);
    out = &scratch_.back();
    return host ? device_.upload(host, *out) : Status::ok();
  }
  DeviceTensor *find(uint32_t id) {
    auto it = values_.find(keyOf(id));
    return it == values_.end() ? nullptr : &it->second;
  }

private:
  int64_t keyOf(uint32_t id) const {
    int32_t storage = model_.buffers()->Get(id)->storage();
    return storage >= 0 ? int64_t(storage) : (int64_t(1) << 40) + id;
  }
  /// Stores `t` as value `id`, dropping what its storage held.
  DeviceTensor &put(uint32_t id, const DeviceTensor &t) {
    int64_t key = keyOf(id);
    auto it = values_.find(key);
    if (it != values_.end()) {
      DeviceTensor old = it->second;
      it->second = t;
      drop(old);
      return it->second;
    }
    return values_[key] = t;
  }
  /// The start of the memory that `data` lies in.
  const void *baseOf(const void *data) const {
    auto it = interior_.find(data);
    return it == interior_.end() ? data : it->second;
  }
  /// One value fewer holds t's memory: released with the last.
  void drop(const DeviceTensor &t) {
    const void *base = baseOf(t.data);
    auto it = held_.find(base);
    if (it == held_.end() || --it->second.values > 0)
      return;
    DeviceTensor memory = it->second.tensor;
    held_.erase(it);
    for (auto v = interior_.begin(); v != interior_.end();)
      v = v->second == base ? interior_.erase(v) : std::next(v);
    device_.release(memory);
  }

  Device &device_;
  const fb::Model &model_;
  std::map<int64_t, DeviceTensor> values_;
  /// The memory the step's values hold (by its start), and how many hold
  /// it; views that start inside it, by their start.
  struct Held {
    DeviceTensor tensor;
    int values = 0;
  };
  std::map<const void *, Held> held_;
  std::map<const void *, const void *> interior_;
  std::deque<DeviceTensor> kept_;
  std::deque<DeviceTensor> scratch_;
};

} // namespace

int64_t melt::rt::cacheRowWidth(const fb::Buffer &cache) {
  const auto *s = cache.shape();
  return s && s->size() == 3 ? s->Get(0) * (s->Get(1) + s->Get(2)) : 0;
}

void DeviceModel::findCacheTypes() {
  const fb::Model &m = model_.artifact().model();
  // The cache buffer each latent append's result stands for (an append's
  // result is its cache, in place: often the same id).
  std::map<uint32_t, uint32_t> bufferOf;
  for (uint32_t k : *forward_->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (kernel.kind() == fb::KernelKind::LatentCacheAppend && kernel.inputs() &&
        kernel.inputs()->size() > 0 && kernel.outputs() &&
        kernel.outputs()->size() == 1)
      bufferOf[kernel.outputs()->Get(0)] = kernel.inputs()->Get(0);
  }
  // A buffer is BF16 where every MLA over it says so; any other reader of
  // the cache (none in a melt-fuse-mla model) keeps it F32.
  std::map<uint32_t, bool> bf16;
  for (uint32_t k : *forward_->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (!kernel.inputs())
      continue;
    const bool append = kernel.kind() == fb::KernelKind::LatentCacheAppend;
    for (uint32_t i = append ? 1 : 0; i < kernel.inputs()->size(); ++i) {
      auto buffer = bufferOf.find(kernel.inputs()->Get(i));
      if (buffer == bufferOf.end())
        continue;
      const bool mla = kernel.kind() == fb::KernelKind::MLA && i == 2 &&
                       kernel.weights() && kernel.weights()->size() == 2;
      const fb::Buffer &cache = *m.buffers()->Get(buffer->second);
      const DType compiled =
          cache.dtype() == fb::DType::BF16 ? DType::BF16 : DType::F32;
      const bool wants =
          mla && device_.latentCacheType(weights_.at(kernel.weights()->Get(0)),
                                         compiled) == DType::BF16;
      auto [it, first] = bf16.emplace(buffer->second, wants);
      if (!first)
        it->second = it->second && wants;
    }
  }
  for (const auto &[buffer, isBf16] : bf16)
    if (isBf16)
      cacheTypes_[buffer] = DType::BF16;
}

Status DeviceModel::create(const Model &model, Device &device,
                           std::unique_ptr<DeviceModel> &out) {
  std::unique_ptr<DeviceModel> result(new DeviceModel(model, device));
  const fb::Model &m = model.artifact().model();
  result->forward_ = model.artifact().function("forward");
  if (!result->forward_)
    return invalidArtifact("the artifact has no @forward");
  for (uint32_t k : *result->forward_->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (!kernel.weights())
      continue;
    for (uint32_t w : *kernel.weights()) {
      if (result->weights_.count(w))
        continue;
      DeviceTensor t;
      Status s = device.importWeight(model.weight(w), t);
      if (s)
        return Status(s.code(),
                      "weights[" + std::to_string(w) + "]: " + s.message());
      result->weights_[w] = t;
    }
    // The compiler's choices for the artifact's target, by the weight the
    // kernel multiplies first.
    if (kernel.weights()->size() > 0 &&
        (kernel.small_m_rows() >= 0 || kernel.variant() != 0)) {
      Device::KernelPlan plan;
      plan.smallMRows = kernel.small_m_rows();
      plan.variant = kernel.variant();
      device.planKernel(result->weights_[kernel.weights()->Get(0)], plan);
    }
  }
  // The activation quantization the device's FP8 products do themselves.
  DeviceModel &dm = *result;
  dm.findCacheTypes();
  std::vector<QuantizeFold> folds;
  if (envSwitch("MELT_FOLD_QUANTIZE", true))
    folds = findQuantizeFolds(m, *dm.forward_, [&](uint32_t k) {
      const fb::Kernel &kernel = *m.kernels()->Get(k);
      if (!kernel.weights() || kernel.weights()->size() < 1)
        return false;
      const DeviceTensor &w = dm.weights_.at(kernel.weights()->Get(0));
      return kernel.kind() == fb::KernelKind::MoEExperts
                 ? device.quantizesExpertInput(w)
                 : kernel.weights()->size() == 1 && device.quantizesFp8Input(w);
    });
  for (const QuantizeFold &f : folds) {
    dm.skipped_.insert(f.quantize);
    dm.folded_[f.dequantize] = f.source;
    const fb::Kernel &dequantize = *m.kernels()->Get(f.dequantize);
    dm.unquantized_.insert(dequantize.outputs()->Get(0));
  }
  // The MLPs' SiLU-muls the products compute as they read gate and up.
  if (envSwitch("MELT_FUSE_SILU_MUL", true))
    for (const SiluMulFusion &f :
         findSiluMulFusions(m, *dm.forward_, folds, [&](uint32_t k) {
           const fb::Kernel &kernel = *m.kernels()->Get(k);
           return kernel.weights() && kernel.weights()->size() == 1 &&
                  device.fusesSiluMulInto(
                      dm.weights_.at(kernel.weights()->Get(0)));
         }))
      dm.siluMulFusions_[f.siluMul] = f.products;
  // A product that quantizes its input itself (its one weight FP8).
  auto quantizesItsInput = [&](uint32_t k) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    return kernel.weights() && kernel.weights()->size() == 1 &&
           device.quantizesFp8Input(dm.weights_.at(kernel.weights()->Get(0)));
  };
  // Norms whose value only such products read, or products that round
  // their input to BF16: their kernel may prepare the products' input
  // (decided each step, by its rows).
  auto preparedInput = [&](uint32_t k) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    return quantizesItsInput(k) ||
           (kernel.weights() && kernel.weights()->size() == 1 &&
            device.roundsInputToBf16(dm.weights_.at(kernel.weights()->Get(0))));
  };
  if (envSwitch("MELT_FUSE_NORM_QUANTIZE", true))
    for (NormProductFusion &f :
         findNormProductFusions(m, *dm.forward_, folds, preparedInput))
      dm.normProducts_[f.norm] = std::move(f.products);
  // MLA outputs only such products read: the MLA's call may prepare their
  // input (decided each step, by its rows).
  if (envSwitch("MELT_FUSE_MLA_QUANTIZE", true))
    for (MlaProductFusion &f :
         findMlaProductFusions(m, *dm.forward_, folds, preparedInput))
      dm.mlaProducts_[f.mla] = std::move(f);
  // MoE layers' input norms: their kernel may prepare what the router and
  // the experts read of their value (decided each step, by its rows).
  if (envSwitch("MELT_FUSE_NORM_EXPERTS", true))
    for (const NormExpertFusion &f :
         findNormExpertFusions(m, *dm.forward_, folds))
      dm.normExperts_[f.norm] = f;
  // MoE layers' outputs that only the next add-and-norm call reads.
  dm.combinesInNorm_ = findCombinesInNorm(m, *dm.forward_);
  // MLA's latent appends with their norm and rope, in one call each.
  if (envSwitch("MELT_FUSE_LATENT_APPEND", true))
    for (const LatentAppend &f : findLatentAppends(m, *dm.forward_)) {
      dm.latentAppends_[f.norm] = f;
      dm.skipped_.insert(f.rope);
      dm.skipped_.insert(f.append);
    }
  // MoE layers' routed and shared experts, in one call where the device
  // takes them so for a step's tokens (decided each step).
  if (envSwitch("MELT_FUSE_SHARED_EXPERT", true))
    for (SharedExpertFusion &f :
         findSharedExpertFusions(m, *dm.forward_, folds)) {
      const uint32_t first = f.kernels.front();
      for (uint32_t k : f.kernels)
        dm.sharedExpertGroupOf_[k] = first;
      dm.sharedExperts_[first] = std::move(f);
    }
  // Routers whose choices their experts' call alone reads: the device may
  // make the choice in that call.
  if (envSwitch("MELT_ROUTE_IN_EXPERTS", true))
    dm.routesInExperts_ = findRoutesInExperts(m, *dm.forward_);
  // A MoE norm's other readers, where they are a shared-expert call's gate
  // and up: in a step that takes the call nothing but what the norm
  // prepared is read of its value.
  for (auto &[norm, f] : dm.normExperts_)
    for (const auto &[first, shared] : dm.sharedExperts_)
      if (shared.experts == f.experts && !f.otherReaders.empty() &&
          std::all_of(f.otherReaders.begin(), f.otherReaders.end(),
                      [&, &shared = shared](uint32_t r) {
                        return r == shared.gate || r == shared.up;
                      }))
        f.sharedCall = first;
  // What only the wanted logit rows need.
  if (envSwitch("MELT_LOGIT_ROWS_ONLY", true))
    dm.logitOnly_ = findLogitOnlyKernels(m, *dm.forward_);
  // MLA queries split and rotated in the MLA's call: the three kernels on
  // the same rows (all of them, or the logit rows' alone).
  if (envSwitch("MELT_FUSE_MLA_QUERY", true) && device.fusesMlaQuery())
    for (const MlaQueryFusion &f : findMlaQueryFusions(m, *dm.forward_)) {
      const auto &rowsOnly = dm.logitOnly_.kernels;
      if (rowsOnly.count(f.split) != rowsOnly.count(f.mla) ||
          rowsOnly.count(f.rope) != rowsOnly.count(f.mla))
        continue;
      dm.mlaQuerySplits_[f.split] = f;
      dm.mlaQueries_[f.mla] = f;
      dm.skipped_.insert(f.rope);
    }
  // Products whose readers all read BF16 activations, kept in BF16 where
  // the device writes them so: not those a shared-expert call or the
  // logit rows' kernels make or read (the rows' gathers read F32), nor a
  // query the MLA's call splits unless its mlaOfQuery reads BF16. On by
  // default since session 24's run on the H200 (the same greedy tokens,
  // prefill +1-3%: bench/results/bf16_products_ab_s24_h200.txt);
  // MELT_BF16_PRODUCTS=0 widens every product to F32 as before.
  if (envSwitch("MELT_BF16_PRODUCTS", true) && device.readsBf16Activations()) {
    std::set<uint32_t> excluded = dm.logitOnly_.kernels, excludedValues;
    for (const auto &[first, f] : dm.sharedExperts_)
      excluded.insert(f.kernels.begin(), f.kernels.end());
    const bool queriesInBf16 = device.mlaOfQueryReadsBf16();
    if (!queriesInBf16)
      for (const auto &[split, f] : dm.mlaQuerySplits_)
        excluded.insert(split);
    for (const auto &[value, maker] : dm.logitOnly_.madeBy)
      excludedValues.insert(value);
    dm.bf16Products_ = findBf16Products(
        m, *dm.forward_, excluded, excludedValues,
        [&](uint32_t k) {
          const fb::KernelKind kind = m.kernels()->Get(k)->kind();
          // An MLA whose call reads its query from the projection.
          if (kind == fb::KernelKind::MLA)
            return queriesInBf16 && dm.mlaQueries_.count(k) != 0;
          return kind == fb::KernelKind::Add ||
                 kind == fb::KernelKind::RMSNorm ||
                 kind == fb::KernelKind::Rope ||
                 kind == fb::KernelKind::SiluMul;
        },
        [&](uint32_t k) {
          // Whether it ever does: at a prefill's rows (each step decides
          // by its own).
          constexpr int64_t kManyRows = int64_t(1) << 20;
          return device.linearWritesBf16(
              dm.weights_.at(m.kernels()->Get(k)->weights()->Get(0)),
              kManyRows);
        });
  }
  // Split parts that only norms and Splits read, left in place on a device
  // that takes a row pitch (decided each step: a part of many rows).
  if (envSwitch("MELT_SPLIT_PARTS_IN_PLACE", true) && device.takesRowPitch()) {
    std::set<uint32_t> gathered; // the logit rows' gathers read them packed
    for (const auto &[value, maker] : dm.logitOnly_.madeBy)
      gathered.insert(value);
    dm.partsInPlace_ = findSplitPartsInPlace(
        m, *dm.forward_,
        [&](uint32_t k) {
          return !dm.skips(k) && !dm.latentAppends_.count(k) &&
                 !dm.mlaQuerySplits_.count(k) &&
                 !dm.logitOnly_.kernels.count(k);
        },
        gathered);
  }
  // Work a device may run beside the rest: the shared experts, MLA's
  // queries, the dense MLPs' up products. None with a kernel done in
  // another kernel's call (a latent append's norm writes the cache).
  std::set<uint32_t> inLatentAppends;
  for (const auto &[norm, f] : dm.latentAppends_)
    inLatentAppends.insert({f.norm, f.rope, f.append});
  std::map<uint32_t, uint32_t> views; // folded pairs' values: views of x
  for (const QuantizeFold &f : folds)
    views[m.kernels()->Get(f.dequantize)->outputs()->Get(0)] = f.source;
  if (envSwitch("MELT_SIDE_BRANCHES", true))
    for (const SideBranch &b : findSideBranches(m, *dm.forward_, views)) {
      bool apart = true;
      for (uint32_t k : b.kernels)
        apart &= !inLatentAppends.count(k);
      if (!apart)
        continue;
      dm.branchKernels_.insert(b.kernels.begin(), b.kernels.end());
      dm.branchMarks_.insert(b.markBefore);
      dm.branchJoins_.insert(b.join);
      std::set<uint32_t> made;
      for (uint32_t k : b.kernels)
        if (const auto *outputs = m.kernels()->Get(k)->outputs())
          made.insert(outputs->begin(), outputs->end());
      std::vector<DeviceModel::BranchInput> &inputs =
          dm.branchInputs_[b.markBefore];
      for (uint32_t k : b.kernels)
        if (const auto *read = m.kernels()->Get(k)->inputs())
          for (uint32_t id : *read)
            if (!made.count(id))
              inputs.push_back({k, id});
    }
  // MLPs' gate, up and SiLU-mul a device may run as one call; not a
  // shared expert's, which its experts' call may take.
  if (envSwitch("MELT_FUSE_GATE_UP", true))
    for (const GateUpPair &p : findGateUpPairs(m, *dm.forward_))
      if (!dm.sharedExpertGroupOf_.count(p.gate) &&
          !dm.sharedExpertGroupOf_.count(p.up) &&
          !dm.sharedExpertGroupOf_.count(p.siluMul))
        dm.gateUpPairs_[p.first] = p;
  out = std::move(result);
  return Status::ok();
}

DeviceModel::~DeviceModel() {
  closed_.reset(); // its recordings read the weights
  for (auto &[id, t] : weights_)
    device_.release(t);
}

std::unique_ptr<ClosedSession> DeviceModel::takeClosedSession() const {
  std::lock_guard<std::mutex> lock(closedMutex_);
  return std::move(closed_);
}

void DeviceModel::keepClosedSession(
    std::unique_ptr<ClosedSession> closed) const {
  std::unique_ptr<ClosedSession> dropped;
  {
    std::lock_guard<std::mutex> lock(closedMutex_);
    dropped = std::move(closed_);
    closed_ = std::move(closed);
  }
  // `dropped` is released here, outside the lock.
}

/// The device side of one step: its inputs and values, and when recorded,
/// its graph (declared last: destroyed first, before the memory it uses).
struct ForwardRunner::Pass {
  Pass(Device &device, const fb::Model &model) : values(device, model) {}
  StepValues values;
  CacheLayout layout;
  DeviceTensor *tokens = nullptr, *positions = nullptr, *rows = nullptr;
  uint32_t positionsId = UINT32_MAX;
  const DeviceTensor *logits = nullptr;
  /// Each router's choices, kept to the end of the step (their storage
  /// takes other values later), with its kernel.
  std::vector<const DeviceTensor *> routerChoices;
  std::vector<uint32_t> routerKernels;
  bool recordable = true;
  /// The logit rows are all the step's rows, in order (no gather). Decode
  /// steps, the shapes recorded, always are.
  bool allRows = false;
  /// The logit rows' positions and sequences (a layout of those rows), for
  /// the kernels only they need (DeviceModel::logitOnly); null when the
  /// step runs every kernel on all rows.
  DeviceTensor *rowPositions = nullptr, *rowSequences = nullptr;
  /// The host's copies of the step's positions and sequences, and of the
  /// logit rows' (the layouts point at them: CacheLayout::hostPositions).
  std::vector<int32_t> positionsHost, sequencesHost, rowPositionsHost,
      rowSequencesHost;
  /// A recorded pass's layout as last uploaded (uploadInputs: its scratch
  /// keeps it between replays), with sequencesHost.
  std::vector<int32_t> pagesHost, lengthsHost, rowsHost;
  bool uploaded = false;
  uint64_t lastUsed = 0;
  std::unique_ptr<DeviceGraph> graph;
};

namespace {

/// The step's inputs in the device's memory (allocated once per pass).
Status allocateInputs(const DeviceModel &dm, ForwardRunner::Pass &pass,
                      const StepBatch &batch) {
  const fb::Model &m = dm.model().artifact().model();
  const int64_t T = int64_t(batch.tokens.size());
  const int64_t B = int64_t(batch.lengths.size());
  StepValues &values = pass.values;
  DeviceTensor *t = nullptr;
  MELT_RETURN_IF_ERROR(values.scratch(DType::I32, {T}, t));
  pass.layout.sequences = *t;
  MELT_RETURN_IF_ERROR(
      values.scratch(DType::I32, {B, batch.pagesPerSequence}, t));
  pass.layout.pages = *t;
  MELT_RETURN_IF_ERROR(values.scratch(DType::I32, {B}, t));
  pass.layout.lengths = *t;
  MELT_RETURN_IF_ERROR(
      values.scratch(DType::I32, {int64_t(batch.logitRows.size())}, pass.rows));
  // Every row's logits, in order (a decode step's, or all asked for).
  pass.allRows = int64_t(batch.logitRows.size()) == T;
  for (size_t r = 0; r < batch.logitRows.size() && pass.allRows; ++r)
    pass.allRows = batch.logitRows[r] == int32_t(r);
  pass.rowPositions = pass.rowSequences = nullptr;
  if (!pass.allRows && !dm.logitOnly().kernels.empty()) {
    const int64_t n = int64_t(batch.logitRows.size());
    MELT_RETURN_IF_ERROR(values.scratch(DType::I32, {n}, pass.rowPositions));
    MELT_RETURN_IF_ERROR(values.scratch(DType::I32, {n}, pass.rowSequences));
  }
  // @forward's own inputs: token ids and positions (then the caches).
  size_t next = 0;
  for (uint32_t id : *dm.forward().inputs()) {
    if (m.buffers()->Get(id)->kind() == fb::BufferKind::Cache)
      continue;
    if (next > 1)
      return invalidArtifact("@forward takes more than token ids and "
                             "positions");
    MELT_RETURN_IF_ERROR(values.make(id, DType::I32, {T}, t));
    if (next == 1)
      pass.positionsId = id;
    (next++ == 0 ? pass.tokens : pass.positions) = t;
  }
  if (next != 2)
    return invalidArtifact("@forward does not take token ids and positions");
  pass.layout.positions = *pass.positions;
  return Status::ok();
}

/// The step's inputs into the pass's buffers. A recorded pass gets the
/// layout's tensors (scratch of its own: they keep their values between
/// replays) where they changed since its last upload (each upload is a
/// copy on the device's stream between two replays; a decode step's
/// sequences, pages and logit rows rarely change); token ids and positions
/// (values of @forward, whose storage later values of a step may take)
/// every time. `tokensTaken`: the tokens come from the device (a
/// multi-step call's picks), not from the batch.
Status uploadInputs(Device &device, ForwardRunner::Pass &pass,
                    const StepBatch &batch, bool tokensTaken = false) {
  const bool kept = pass.uploaded && pass.recordable && pass.graph;
  pass.uploaded = false; // until every upload below has been queued
  auto put = [&](const std::vector<int32_t> &values, std::vector<int32_t> &last,
                 DeviceTensor &to) -> Status {
    if (kept && values == last)
      return Status::ok();
    last.clear();
    MELT_RETURN_IF_ERROR(device.upload(values.data(), to));
    last = values;
    return Status::ok();
  };
  if (!tokensTaken)
    MELT_RETURN_IF_ERROR(device.upload(batch.tokens.data(), *pass.tokens));
  MELT_RETURN_IF_ERROR(device.upload(batch.positions.data(), *pass.positions));
  MELT_RETURN_IF_ERROR(
      put(batch.sequences, pass.sequencesHost, pass.layout.sequences));
  MELT_RETURN_IF_ERROR(put(batch.pages, pass.pagesHost, pass.layout.pages));
  MELT_RETURN_IF_ERROR(
      put(batch.lengths, pass.lengthsHost, pass.layout.lengths));
  pass.positionsHost = batch.positions;
  pass.layout.hostPositions = pass.positionsHost.data();
  pass.layout.hostSequences = pass.sequencesHost.data();
  if (pass.rowPositions) {
    std::vector<int32_t> positions, sequences;
    for (int32_t r : batch.logitRows) {
      if (r < 0 || size_t(r) >= batch.tokens.size())
        return invalidArgument("logit row " + std::to_string(r) +
                               " is outside the step's " +
                               std::to_string(batch.tokens.size()) + " rows");
      positions.push_back(batch.positions[size_t(r)]);
      sequences.push_back(batch.sequences[size_t(r)]);
    }
    MELT_RETURN_IF_ERROR(device.upload(positions.data(), *pass.rowPositions));
    MELT_RETURN_IF_ERROR(device.upload(sequences.data(), *pass.rowSequences));
    pass.rowPositionsHost = std::move(positions);
    pass.rowSequencesHost = std::move(sequences);
  }
  MELT_RETURN_IF_ERROR(put(batch.logitRows, pass.rowsHost, *pass.rows));
  pass.uploaded = true;
  return Status::ok();
}

/// Queues every kernel of @forward (nothing is read back: this is what a
/// graph records).
Status enqueue(const DeviceModel &dm, ForwardRunner::Pass &pass, int64_t T,
               ForwardRunner::Profile *profile,
               std::map<uint32_t, DeviceTensor> &caches) {
  Device &device = dm.device();
  const fb::Model &m = dm.model().artifact().model();
  const fb::Function &forward = dm.forward();
  StepValues &values = pass.values;
  auto isCache = [&](uint32_t id) {
    return m.buffers()->Get(id)->kind() == fb::BufferKind::Cache;
  };
  // The rows the kernel at hand runs on: the step's, or the logit rows'.
  int64_t rows = T;
  /// The buffer's static shape with the token dimension filled in.
  auto shapeOf = [&](uint32_t id) {
    const auto *s = m.buffers()->Get(id)->shape();
    std::vector<int64_t> shape(s->begin(), s->end());
    if (!shape.empty() && shape[0] < 0)
      shape[0] = rows;
    return shape;
  };
  // The caches by buffer id (an append's result is the cache it appended
  // to).
  std::map<uint32_t, DeviceTensor *> cacheOf;
  for (uint32_t id : *forward.inputs()) {
    if (!isCache(id))
      continue;
    auto it = caches.find(id);
    if (it == caches.end())
      return invalidArgument("no cache bound to buffer " + std::to_string(id));
    cacheOf[id] = &it->second;
  }
  // KV-cache reads: the keys and values they stand for are the cache's.
  std::map<uint32_t, uint32_t> readOf;
  pass.routerChoices.clear();
  pass.routerKernels.clear();

  // A norm done with the residual add before it (addRmsNorm).
  uint32_t doneNorm = UINT32_MAX;
  // SiLU-muls left to the products that read them (SiluMulFusions.h), by
  // the memory their value stands in (gate's): up, held until the last of
  // those products has run, and how many are still to run.
  struct PendingSiluMul {
    DeviceTensor up;
    uint32_t products = 0;
  };
  struct PendingSiluMuls {
    StepValues &values;
    std::map<const void *, PendingSiluMul> byValue;
    ~PendingSiluMuls() {
      for (auto &entry : byValue)
        values.letGo(entry.second.up);
    }
  } pendingSiluMuls{values, {}};
  // Inputs norms prepared for the products that read their value
  // (NormProductFusions.h), by the memory of that value: what the device
  // prepared and the products still to read it (a product of another
  // value at that memory later is not among them).
  struct PendingPrepared {
    Device::PreparedInput prepared;
    std::set<uint32_t> products;
  };
  struct PendingPreparedInputs {
    Device &device;
    std::map<const void *, PendingPrepared> byValue;
    void drop(std::map<const void *, PendingPrepared>::iterator it) {
      device.detachPrepared(it->first);
      device.release(it->second.prepared.q);
      device.release(it->second.prepared.scales);
      device.release(it->second.prepared.bf16);
      byValue.erase(it);
    }
    /// Kernel k has read the value at `data`: what was prepared of it goes
    /// once its last reader has.
    void readBy(const void *data, uint32_t k) {
      auto it = byValue.find(data);
      if (it != byValue.end() && it->second.products.erase(k) &&
          it->second.products.empty())
        drop(it);
    }
    ~PendingPreparedInputs() {
      while (!byValue.empty())
        drop(byValue.begin());
    }
  } pendingPrepared{device, {}};
  // Whether the device prepares the input of a kernel's products (null:
  // it has none) for `rows` rows, as `prepares` says for each product's
  // weight: in a norm's kernel (preparesInNorm) or an MLA's call
  // (preparesInMla, MlaProductFusions.h).
  using PreparesFor = bool (Device::*)(const DeviceTensor &, int64_t) const;
  // (The products' weights of one type too: what is prepared depends on
  // it, FP8 codes or BF16 rows.)
  auto productWeight = [&](uint32_t p) -> const DeviceTensor & {
    return dm.weight(m.kernels()->Get(p)->weights()->Get(0));
  };
  auto preparesEach = [&](const std::vector<uint32_t> *products, int64_t rows,
                          PreparesFor prepares) {
    if (!products || products->empty())
      return false;
    for (uint32_t p : *products)
      if (productWeight(p).dtype != productWeight(products->front()).dtype ||
          !(device.*prepares)(productWeight(p), rows))
        return false;
    return true;
  };
  auto preparesFor = [&](const std::vector<uint32_t> *products, int64_t rows) {
    return preparesEach(products, rows, &Device::preparesInNorm);
  };
  auto preparesInMlaFor = [&](const std::vector<uint32_t> *products,
                              int64_t rows) {
    return preparesEach(products, rows, &Device::preparesInMla);
  };
  auto keepPrepared = [&](const DeviceTensor &normed,
                          Device::PreparedInput &prepared,
                          const std::vector<uint32_t> &products) {
    if (!prepared.any()) // nothing prepared: the products run as before
      return;
    auto old = pendingPrepared.byValue.find(normed.data);
    if (old != pendingPrepared.byValue.end())
      pendingPrepared.drop(old);
    pendingPrepared.byValue[normed.data] = {
        prepared, std::set<uint32_t>(products.begin(), products.end())};
  };
  // A MoE layer's input norm: whether the device prepares what its router
  // and experts read, for `rows` rows.
  auto preparesForExperts = [&](const NormExpertFusion *f, int64_t rows) {
    return f && device.preparesForExperts(
                    dm.weight(m.kernels()->Get(f->router)->weights()->Get(0)),
                    dm.weight(m.kernels()->Get(f->experts)->weights()->Get(0)),
                    rows);
  };
  // An MLA latent append with its norm and rope (LatentAppends.h): the
  // values made as the three kernels would make them, in their order; the
  // inputs held meanwhile (a value made may take their storage).
  auto appendLatent = [&](const LatentAppend &f) -> Status {
    const fb::Kernel &norm = *m.kernels()->Get(f.norm),
                     &rope = *m.kernels()->Get(f.rope),
                     &append = *m.kernels()->Get(f.append);
    auto cacheIt = cacheOf.find(append.inputs()->Get(0));
    if (cacheIt == cacheOf.end())
      return invalidArtifact(kernelName(f.append, append) +
                             " appends to a cache that is not an input");
    DeviceTensor *latent = values.find(norm.inputs()->Get(0)),
                 *key = values.find(rope.inputs()->Get(0)),
                 *positions = values.find(rope.inputs()->Get(1));
    if (!latent || !key || !positions)
      return invalidArtifact(kernelName(f.norm, norm) +
                             ": an input has no value");
    const DeviceTensor latentIn = *latent, keyIn = *key, at = *positions;
    values.hold(latentIn);
    values.hold(keyIn);
    values.hold(at);
    DeviceTensor *normed = nullptr, *rotated = nullptr;
    Status s =
        values.make(norm.outputs()->Get(0), DType::F32, latentIn.shape, normed);
    if (!s)
      s = values.make(rope.outputs()->Get(0), DType::F32, keyIn.shape, rotated);
    const DeviceTensor &gamma = dm.weight(norm.weights()->Get(0));
    const float eps = float(norm.floats()->Get(0));
    DeviceTensor &cache = *cacheIt->second;
    if (!s) {
      DeviceTensor normedRows = asRows(*normed);
      s = device.appendLatent(asRows(latentIn), gamma, eps, keyIn, at,
                              ropeParamsOf(rope), pass.layout, normedRows,
                              *rotated, cache);
    }
    values.letGo(latentIn);
    values.letGo(keyIn);
    values.letGo(at);
    cacheOf[append.outputs()->Get(0)] = cacheIt->second;
    return s;
  };
  // A step that wants a few rows' logits: the kernels only they need run
  // last, on those rows (rows, layout), reading the values they take from
  // the rest gathered to those rows as soon as they are made (their memory
  // may serve again before the kernels that read them run).
  const LogitOnlyKernels &only = dm.logitOnly();
  bool pruned = pass.rowPositions != nullptr;
  for (const auto &[id, maker] : only.madeBy)
    pruned &= !dm.skips(maker);
  for (uint32_t id : only.inputs)
    pruned &= id == pass.positionsId;
  // (A folded pair's value is a view of its x: not of a gathered copy.)
  for (uint32_t k : only.kernels)
    if (const uint32_t *source = dm.foldedSource(k))
      pruned &= !only.madeBy.count(*source);
  std::vector<uint32_t> order;
  uint32_t logitsKernel = UINT32_MAX;
  for (uint32_t k : *forward.kernels()) {
    if (m.kernels()->Get(k)->kind() == fb::KernelKind::Logits)
      logitsKernel = k;
    if (!pruned || !only.kernels.count(k))
      order.push_back(k);
  }
  if (pruned) {
    order.erase(std::find(order.begin(), order.end(), logitsKernel));
    for (uint32_t k : *forward.kernels())
      if (only.kernels.count(k))
        order.push_back(k);
    order.push_back(logitsKernel);
  }
  bool onRows = false; // running the kernels only the logit rows need
  CacheLayout rowLayout = pass.layout;
  if (pruned) {
    rowLayout.positions = *pass.rowPositions;
    rowLayout.sequences = *pass.rowSequences;
    rowLayout.hostPositions = pass.rowPositionsHost.data();
    rowLayout.hostSequences = pass.rowSequencesHost.data();
  }
  // x's rows whose logits are wanted, in their order, into new memory.
  auto gatherLogitRows = [&](const DeviceTensor &x,
                             DeviceTensor *&to) -> Status {
    MELT_RETURN_IF_ERROR(
        values.scratch(DType::F32, {pass.rows->shape[0], x.cols()}, to));
    return device.embedding(*pass.rows, x, *to);
  };
  std::map<uint32_t, DeviceTensor *> gatheredRows;
  // Whether value `id`'s rows are gathered for the logit rows' kernels as
  // it is made, itself or a view of it (a folded pair's dequantized value,
  // a Reshape's): read then beside its products (a norm whose value only
  // its products read leaves its rows unwritten otherwise).
  auto rowsGathered = [&](uint32_t id) {
    if (!pruned)
      return false;
    for (const auto &[value, maker] : only.madeBy) {
      const fb::Kernel &made = *m.kernels()->Get(maker);
      const uint32_t *source = dm.foldedSource(maker);
      if (value == id || (source && *source == id) ||
          (made.kind() == fb::KernelKind::Reshape && made.inputs() &&
           made.inputs()->size() == 1 && made.inputs()->Get(0) == id))
        return true;
    }
    return false;
  };
  auto gatherMadeBy = [&](uint32_t maker) -> Status {
    if (!pruned)
      return Status::ok();
    for (const auto &[id, by] : only.madeBy) {
      if (by != maker)
        continue;
      DeviceTensor *x = values.find(id);
      if (!x || x->dtype != DType::F32 || x->shape.empty() || x->shape[0] != T)
        return invalidArtifact("buffer " + std::to_string(id) +
                               ": the logit rows' kernels read no F32 rows "
                               "there");
      DeviceTensor *to = nullptr;
      MELT_RETURN_IF_ERROR(gatherLogitRows(asRows(*x), to));
      to->shape = x->shape;
      to->shape[0] = pass.rows->shape[0];
      gatheredRows[id] = to;
    }
    return Status::ok();
  };
  // A MoE layer's routed and shared experts and their add in one device
  // call, where the device takes this step's tokens so and the group's
  // kernels are consecutive in this step's order too: `fused` set, the
  // group's other kernels added to `inCall`.
  std::set<uint32_t> inCall;
  // A value by buffer: on the logit rows, those made by the rest gathered.
  auto findValue = [&](uint32_t id, bool onRows) -> DeviceTensor * {
    if (onRows) {
      auto it = gatheredRows.find(id);
      if (it != gatheredRows.end())
        return it->second;
    }
    return values.find(id);
  };
  auto weightOf = [&](uint32_t kernel, uint32_t i) -> const DeviceTensor & {
    return dm.weight(m.kernels()->Get(kernel)->weights()->Get(i));
  };
  // The shared expert of a call, where its gate and up round alike (the
  // device takes one flag for both); false otherwise.
  auto sharedExpertOf = [&](const SharedExpertFusion &f,
                            Device::SharedExpert &shared) {
    auto roundsOutput = [&](uint32_t kernel) {
      return roundsLinearOutput(*m.kernels()->Get(kernel));
    };
    if (roundsOutput(f.gate) != roundsOutput(f.up))
      return false;
    shared.gate = &weightOf(f.gate, 0);
    shared.up = &weightOf(f.up, 0);
    shared.down = &weightOf(f.down, 0);
    shared.roundGateUp = roundsOutput(f.gate);
    shared.roundDown = roundsOutput(f.down);
    return true;
  };
  // Whether this step's order has the call's kernels one after the other
  // from `at` (they run as one call there).
  auto inOrderAt = [&](const SharedExpertFusion &f, size_t at) {
    return at + f.kernels.size() <= order.size() &&
           std::equal(f.kernels.begin(), f.kernels.end(), order.begin() + at);
  };
  // Whether the shared-expert call that starts at kernel `first` will run
  // as one call this step, on `rows` rows.
  auto takesSharedCall = [&](uint32_t first, int64_t rows) {
    const SharedExpertFusion *f = dm.sharedExpertsFrom(first);
    Device::SharedExpert shared;
    return f && !dm.skips(first) &&
           inOrderAt(*f, size_t(std::find(order.begin(), order.end(), first) -
                                order.begin())) &&
           sharedExpertOf(*f, shared) &&
           device.fusesSharedExpert(weightOf(f->experts, 0), shared, rows);
  };
  auto sharedExpertsInOneCall = [&](const SharedExpertFusion &f, uint32_t at,
                                    bool onRows, bool &fused) -> Status {
    fused = false;
    if (!inOrderAt(f, at))
      return Status::ok();
    const fb::Kernel &experts = *m.kernels()->Get(f.experts);
    DeviceTensor *xIn = findValue(experts.inputs()->Get(0), onRows),
                 *indicesIn = findValue(experts.inputs()->Get(1), onRows),
                 *weightsIn = findValue(experts.inputs()->Get(2), onRows);
    if (!xIn || !indicesIn || !weightsIn) // the kernels say what is missing
      return Status::ok();
    Device::SharedExpert shared;
    if (!sharedExpertOf(f, shared))
      return Status::ok();
    // Copies: making the add's value may replace a value in its storage.
    const DeviceTensor x = asRows(*xIn), indices = *indicesIn,
                       weights = *weightsIn;
    const std::vector<int64_t> shape = xIn->shape;
    if (!device.fusesSharedExpert(weightOf(f.experts, 0), shared, x.rows()))
      return Status::ok();
    fused = true;
    values.hold(x);
    values.hold(indices);
    values.hold(weights);
    const fb::Kernel &add = *m.kernels()->Get(f.add);
    DeviceTensor *out = nullptr;
    Status status = values.make(add.outputs()->Get(0), DType::F32, shape, out);
    if (!status) {
      DeviceTensor y = asRows(*out);
      device.leaveCombineToNorm(dm.combinesInNorm(add.outputs()->Get(0)));
      status = device.moeExpertsWithShared(
          x, indices, weights, weightOf(f.experts, 0), weightOf(f.experts, 1),
          weightOf(f.experts, 2),
          experts.ints() && experts.ints()->size() > 0 &&
              experts.ints()->Get(0) != 0,
          dm.unquantized(experts.inputs()->Get(0)), shared, y);
      device.leaveCombineToNorm(false);
    }
    pendingPrepared.readBy(x.data, f.experts);
    values.letGo(x);
    values.letGo(indices);
    values.letGo(weights);
    inCall.insert(f.kernels.begin() + 1, f.kernels.end());
    if (status)
      return Status(status.code(),
                    kernelName(f.experts, experts) +
                        " with its shared expert: " + status.message());
    return onRows ? Status::ok() : gatherMadeBy(f.add);
  };
  // A Linear kernel's output at `rows` rows: BF16 where its readers read
  // BF16 and the device writes it so (Bf16Products.h), else F32.
  auto productTypeOf = [&](uint32_t k, const DeviceTensor &w, int64_t rows) {
    return dm.writesBf16Product(k) && device.linearWritesBf16(w, rows)
               ? DType::BF16
               : DType::F32;
  };
  // Whether a Linear kernel's F32 output is rounded to BF16 after it: an
  // FP8 product's BF16 output (the compiler's precision, its ints(0)),
  // where the device's product kept more.
  auto roundsOutputToBf16 = [&](const fb::Kernel &kernel,
                                const DeviceTensor &w) {
    return roundsLinearOutput(kernel) && !device.linearOutputsBf16(w);
  };
  // An MLP's gate and up products and their SiLU-mul in one device call
  // (GateUpPairs.h), where the other two come next in this step's order, x
  // has nothing prepared for them, and the device takes them at these
  // rows: the SiLU-mul's value made now, the three kernels left out after.
  auto gateUpInOneCall = [&](const GateUpPair &p, uint32_t at,
                             bool onRows) -> Status {
    const uint32_t second = p.first == p.gate ? p.up : p.gate;
    if (at + 2 >= order.size() || order[at + 1] != second ||
        order[at + 2] != p.siluMul)
      return Status::ok();
    const fb::Kernel &gate = *m.kernels()->Get(p.gate),
                     &up = *m.kernels()->Get(p.up),
                     &silu = *m.kernels()->Get(p.siluMul);
    DeviceTensor *xIn = findValue(gate.inputs()->Get(0), onRows);
    if (!xIn || pendingPrepared.byValue.count(xIn->data) ||
        pendingSiluMuls.byValue.count(xIn->data))
      return Status::ok();
    const DeviceTensor x = asRows(*xIn);
    const DeviceTensor &wGate = dm.weight(gate.weights()->Get(0)),
                       &wUp = dm.weight(up.weights()->Get(0));
    if (!device.takesSiluMulOfProducts(wGate, wUp, x.rows()))
      return Status::ok();
    // Each product's values as its Linear would leave them: BF16 where it
    // writes BF16 or rounds its output to it after.
    auto roundedToBf16 = [&](uint32_t k, const fb::Kernel &kernel,
                             const DeviceTensor &w) {
      return productTypeOf(k, w, x.rows()) == DType::BF16 ||
             roundsOutputToBf16(kernel, w);
    };
    const bool round = roundedToBf16(p.gate, gate, wGate);
    if (round != roundedToBf16(p.up, up, wUp))
      return Status::ok();
    values.hold(x);
    DeviceTensor *out = nullptr;
    Status status = values.make(silu.outputs()->Get(0), DType::F32,
                                {x.rows(), wGate.shape[0]}, out);
    if (!status)
      status = device.siluMulOfProducts(x, wGate, wUp, round, *out);
    values.letGo(x);
    inCall.insert({p.gate, p.up, p.siluMul});
    if (status)
      return Status(status.code(), kernelName(p.gate, gate) +
                                       " with its up product and SiLU-mul: " +
                                       status.message());
    return onRows ? Status::ok() : gatherMadeBy(p.siluMul);
  };
  // MLA queries whose split and rope the MLA's call does
  // (MlaQueryFusions.h): the query projection, by MLA kernel, held from
  // its split on until the MLA has read it (a value made meanwhile may take
  // its storage).
  struct HeldQueries {
    StepValues &values;
    std::map<uint32_t, DeviceTensor> byMla;
    ~HeldQueries() {
      for (auto &entry : byMla)
        values.letGo(entry.second);
    }
  } heldQueries{values, {}};
  // Side branches' kernels whose experts' call takes them (markBranch).
  std::set<uint32_t> inSharedCall;
  for (uint32_t at = 0; at < order.size(); ++at) {
    const uint32_t k = order[at];
    if (pruned && !onRows && (only.kernels.count(k) || k == logitsKernel)) {
      onRows = true;
      rows = pass.rows->shape[0];
      gatheredRows[pass.positionsId] = pass.rowPositions;
    }
    // (Before the fork: a branch whose kernels that call took is not
    // marked.)
    if (const GateUpPair *pair = dm.gateUpPairAt(k); pair && !inCall.count(k))
      MELT_RETURN_IF_ERROR(gateUpInOneCall(*pair, at, onRows));
    if (dm.joinsBranch(k))
      MELT_RETURN_IF_ERROR(device.joinBranch());
    const auto &branchReads = dm.branchInputs(k);
    const bool branchTaken =
        std::all_of(branchReads.begin(), branchReads.end(),
                    [&](const DeviceModel::BranchInput &in) {
                      return inCall.count(in.kernel) != 0;
                    });
    if (dm.marksBranch(k) && !branchTaken) {
      // What the branch's kernels read, but for a shared expert's that its
      // experts' call will run (not in the branch).
      std::vector<DeviceTensor> reads;
      std::map<const SharedExpertFusion *, bool> taken; // (asked once)
      for (const DeviceModel::BranchInput &in : dm.branchInputs(k)) {
        const SharedExpertFusion *group = dm.sharedExpertGroupOf(in.kernel);
        if (group && !taken.count(group))
          taken[group] = takesSharedCall(group->kernels.front(), rows);
        if (group && taken[group]) {
          inSharedCall.insert(in.kernel);
          continue;
        }
        if (const DeviceTensor *t = findValue(in.value, onRows))
          reads.push_back(*t);
      }
      MELT_RETURN_IF_ERROR(device.markBranch(reads));
    }
    if (k == doneNorm)
      MELT_RETURN_IF_ERROR(gatherMadeBy(k));
    if (dm.skips(k) || k == doneNorm || inCall.count(k)) // done elsewhere
      continue;
    if (const MlaQueryFusion *f = dm.mlaQueryOfSplit(k)) {
      const fb::Kernel &split = *m.kernels()->Get(k);
      DeviceTensor *q = findValue(split.inputs()->Get(0), onRows);
      if (!q)
        return invalidArtifact(kernelName(k, split) +
                               ": the query it splits is not there");
      values.hold(*q);
      heldQueries.byMla[f->mla] = *q;
      continue;
    }
    if (const SharedExpertFusion *f = dm.sharedExpertsFrom(k)) {
      bool fused = false;
      MELT_RETURN_IF_ERROR(sharedExpertsInOneCall(*f, at, onRows, fused));
      if (fused)
        continue;
    }
    // A side branch's kernel: its calls beside the ones that follow.
    struct BranchCalls {
      Device *device = nullptr;
      ~BranchCalls() {
        if (device)
          device->leaveBranch();
      }
    } branchCalls;
    if (dm.inBranch(k)) {
      // (Its reads were left out of the fork's: its call was to take it.)
      if (inSharedCall.count(k))
        return {MELT_INTERNAL, kernelName(k, *m.kernels()->Get(k)) +
                                   ": a shared expert's kernel runs in a side "
                                   "branch its experts' call was to take"};
      MELT_RETURN_IF_ERROR(device.enterBranch());
      branchCalls.device = &device;
    }
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    auto inId = [&](uint32_t i) { return kernel.inputs()->Get(i); };
    auto outId = [&](uint32_t i) { return kernel.outputs()->Get(i); };
    DeviceTensor missing;
    auto find = [&](uint32_t id) { return findValue(id, onRows); };
    auto in = [&](uint32_t i) -> DeviceTensor & {
      DeviceTensor *t = find(inId(i));
      return t ? *t : missing;
    };
    auto w = [&](uint32_t i) -> const DeviceTensor & {
      return dm.weight(kernel.weights()->Get(i));
    };
    auto ints = [&](uint32_t i) {
      return kernel.ints() && i < kernel.ints()->size() ? kernel.ints()->Get(i)
                                                        : 0;
    };
    auto cache = [&](uint32_t id) -> DeviceTensor * {
      auto it = cacheOf.find(id);
      return it == cacheOf.end() ? nullptr : it->second;
    };
    DeviceTensor *out = nullptr;
    Status status;
    auto started = std::chrono::steady_clock::now();
    switch (kernel.kind()) {
    case fb::KernelKind::Embedding:
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), DType::F32, {T, w(0).shape[1]}, out));
      status = device.embedding(in(0), w(0), *out);
      break;
    case fb::KernelKind::RMSNorm: {
      if (const LatentAppend *fused = dm.latentAppend(k)) {
        status = appendLatent(*fused);
        break;
      }
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, in(0).shape, out));
      DeviceTensor y = asRows(*out);
      const std::vector<uint32_t> *products = dm.normProducts(k);
      if (preparesFor(products, y.rows())) {
        Device::PreparedInput prepared;
        status = device.rmsNormForProducts(
            asRows(in(0)), w(0), float(kernel.floats()->Get(0)), y,
            productWeight(products->front()), prepared, rowsGathered(outId(0)));
        if (!status)
          keepPrepared(*out, prepared, *products);
        break;
      }
      status = device.rmsNorm(asRows(in(0)), w(0),
                              float(kernel.floats()->Get(0)), y);
      break;
    }
    case fb::KernelKind::Linear: {
      // BF16 where its readers read BF16 and the device writes it so at
      // these rows (Bf16Products.h).
      const DType productType = productTypeOf(k, w(0), asRows(in(0)).rows());
      auto pending = pendingSiluMuls.byValue.find(in(0).data);
      if (pending != pendingSiluMuls.byValue.end()) {
        // silu(gate) * up, computed as the product reads them.
        DeviceTensor gate = asRows(in(0)), up = pending->second.up;
        up.shape = gate.shape;
        values.hold(gate); // its value's storage may take the output
        Status made = values.make(outId(0), productType,
                                  {gate.rows(), w(0).shape[0]}, out);
        if (!made)
          status = device.linearOfSiluMul(gate, up, w(0), *out);
        values.letGo(gate);
        MELT_RETURN_IF_ERROR(made);
        if (--pending->second.products == 0) {
          values.letGo(pending->second.up);
          pendingSiluMuls.byValue.erase(pending);
        }
      } else if (auto prepared = pendingPrepared.byValue.find(in(0).data);
                 prepared != pendingPrepared.byValue.end() &&
                 prepared->second.products.count(k)) {
        // Its input as the norm that made it prepared it.
        MELT_RETURN_IF_ERROR(values.make(
            outId(0), productType, {asRows(in(0)).rows(), w(0).shape[0]}, out));
        status = device.linearOfPrepared(asRows(in(0)),
                                         prepared->second.prepared, w(0), *out);
        prepared->second.products.erase(k);
        if (prepared->second.products.empty())
          pendingPrepared.drop(prepared);
      } else {
        MELT_RETURN_IF_ERROR(values.make(
            outId(0), productType, {asRows(in(0)).rows(), w(0).shape[0]}, out));
        status = device.linear(asRows(in(0)), w(0), *out);
      }
      // An FP8 product's BF16 output (the compiler's precision), where the
      // device's product kept more.
      if (!status && out->dtype == DType::F32 &&
          roundsOutputToBf16(kernel, w(0)))
        status = device.roundToBf16(*out);
      break;
    }
    case fb::KernelKind::Logits: {
      // Only the rows whose logits are wanted.
      int64_t n = pass.rows->shape[0];
      DeviceTensor *gathered = nullptr;
      DeviceTensor x = asRows(in(0));
      // On the logit rows already (in order), or all rows wanted in order.
      if (onRows || (pass.allRows && n == x.rows())) {
        gathered = &x;
      } else {
        status = gatherLogitRows(x, gathered);
        if (status)
          break;
      }
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), DType::F32, {n, w(0).shape[0]}, out));
      status = device.linear(*gathered, w(0), *out);
      break;
    }
    case fb::KernelKind::Rope: {
      RopeParams p = ropeParamsOf(kernel);
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, in(0).shape, out));
      status = device.rope(in(0), in(1), p, *out);
      break;
    }
    case fb::KernelKind::Add: {
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, in(0).shape, out));
      // The RMSNorm right after it, of its sum: one call for both (the
      // operands held meanwhile: the norm's output may take their storage).
      const fb::Kernel *next =
          at + 1 < order.size() ? m.kernels()->Get(order[at + 1]) : nullptr;
      if (next && next->kind() == fb::KernelKind::RMSNorm && next->inputs() &&
          next->inputs()->Get(0) == outId(0) && next->weights() &&
          next->weights()->size() == 1 && next->floats() &&
          next->floats()->size() == 1) {
        DeviceTensor a = in(0), b = in(1), *y = nullptr;
        values.hold(a);
        values.hold(b);
        status = values.make(next->outputs()->Get(0), DType::F32, a.shape, y);
        if (!status) {
          DeviceTensor sumRows = asRows(*values.find(outId(0))),
                       yRows = asRows(*y);
          const std::vector<uint32_t> *products =
              dm.normProducts(order[at + 1]);
          const NormExpertFusion *experts = dm.normExperts(order[at + 1]);
          if (preparesFor(products, yRows.rows())) {
            Device::PreparedInput prepared;
            status = device.addRmsNormForProducts(
                asRows(a), asRows(b), dm.weight(next->weights()->Get(0)),
                float(next->floats()->Get(0)), sumRows, yRows,
                productWeight(products->front()), prepared,
                rowsGathered(next->outputs()->Get(0)));
            if (!status)
              keepPrepared(*y, prepared, *products);
          } else if (preparesForExperts(experts, yRows.rows())) {
            // The router's BF16 rows and the experts' codes, attached to
            // the value until both have read it; its rows read by nothing
            // else where its other readers are none, or the gate and up of
            // a shared-expert call this step takes, and they are not
            // gathered for the logit rows.
            const bool othersRead =
                !experts->otherReaders.empty() &&
                (experts->sharedCall == UINT32_MAX ||
                 !takesSharedCall(experts->sharedCall, yRows.rows()));
            const bool gathered = rowsGathered(next->outputs()->Get(0));
            Device::PreparedInput prepared;
            status = device.addRmsNormForExperts(
                asRows(a), asRows(b), dm.weight(next->weights()->Get(0)),
                float(next->floats()->Get(0)), sumRows, yRows,
                dm.weight(
                    m.kernels()->Get(experts->experts)->weights()->Get(0)),
                prepared, othersRead || gathered);
            if (!status && prepared.any()) {
              // Its other readers' linears (a shared expert's gate and up
              // run apart) read what is attached too, where they run on
              // this value (not on the logit rows gathered from it): it
              // stays until they have.
              std::vector<uint32_t> readers{experts->router, experts->experts};
              if (othersRead && !gathered)
                for (uint32_t r : experts->otherReaders) {
                  const fb::Kernel *reader =
                      r == UINT32_MAX ? nullptr : m.kernels()->Get(r);
                  if (reader && reader->kind() == fb::KernelKind::Linear &&
                      reader->inputs() && reader->inputs()->size() > 0 &&
                      reader->inputs()->Get(0) == next->outputs()->Get(0))
                    readers.push_back(r);
                }
              keepPrepared(*y, prepared, readers);
              device.attachPrepared(y->data, prepared);
            }
          } else {
            status = device.addRmsNorm(
                asRows(a), asRows(b), dm.weight(next->weights()->Get(0)),
                float(next->floats()->Get(0)), sumRows, yRows);
          }
        }
        values.letGo(a);
        values.letGo(b);
        doneNorm = order[at + 1];
        break;
      }
      status = device.add(in(0), in(1), *out);
      break;
    }
    case fb::KernelKind::SiluMul:
      // Left to the products that read it: its value stands in gate's
      // memory, up is held until the last of them has run.
      if (uint32_t products = dm.siluMulProducts(k)) {
        const DeviceTensor gate = in(0), up = in(1);
        if (gate.data && up.data && gate.dtype == up.dtype &&
            (gate.dtype == DType::F32 || gate.dtype == DType::BF16) &&
            gate.shape == up.shape) {
          values.hold(up);
          if (values.view(outId(0), gate, gate.shape, out)) {
            pendingSiluMuls.byValue[out->data] = {up, products};
            break;
          }
          values.letGo(up);
        }
      }
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, in(0).shape, out));
      status = device.siluMul(in(0), in(1), *out);
      break;
    case fb::KernelKind::Reshape:
    case fb::KernelKind::Convert: { // compute is F32 throughout: the same
      std::vector<int64_t> shape = kernel.kind() == fb::KernelKind::Reshape
                                       ? shapeOf(outId(0))
                                       : in(0).shape;
      // A view of the input's memory (no kernel), else a copy.
      if (values.view(outId(0), in(0), shape, out))
        break;
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), in(0).dtype, std::move(shape), out));
      status = device.copy(in(0), *out);
      break;
    }
    case fb::KernelKind::Split: {
      int axis = int(ints(0));
      int64_t offset = 0;
      DeviceTensor source = in(0);
      if (axis < 0 || size_t(axis) >= source.shape.size())
        return invalidArtifact(kernelName(k, kernel) + ": axis " +
                               std::to_string(axis) + " out of range");
      // Parts that are contiguous in the source (nothing outside the axis
      // before it: a decode step's one row) are views where the device
      // takes a tensor starting there; the others are copies.
      int64_t outer = 1, inner = 1;
      for (int d = 0; d < axis; ++d)
        outer *= source.shape[size_t(d)];
      for (size_t d = size_t(axis) + 1; d < source.shape.size(); ++d)
        inner *= source.shape[d];
      for (uint32_t i = 0; i < kernel.outputs()->size() && !status; ++i) {
        std::vector<int64_t> shape = source.shape;
        shape[axis] = shapeOf(outId(i))[axis];
        const size_t at = size_t(offset * inner) * dtypeBytes(source.dtype);
        const int64_t extent = shape[axis];
        if (outer == 1 && at % device.viewAlignment() == 0 &&
            values.view(outId(i), source, shape, out, at)) {
          offset += extent;
          continue;
        }
        // A part of many rows' columns that only norms and splits read:
        // left in place, its rows as far apart as the source's.
        if (outer > 1 && source.shape.size() == 2 && axis == 1 &&
            dm.leavesPartInPlace(outId(i)) &&
            at % device.viewAlignment() == 0 &&
            values.view(outId(i), source, shape, out, at)) {
          out->rowPitch = source.rowPitch ? source.rowPitch : source.shape[1];
          offset += extent;
          continue;
        }
        MELT_RETURN_IF_ERROR(values.make(outId(i), source.dtype, shape, out));
        status = device.slice(source, axis, offset, *out);
        offset += extent;
      }
      break;
    }
    case fb::KernelKind::Concat: {
      int axis = int(ints(0));
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), in(0).dtype, shapeOf(outId(0)), out));
      int64_t offset = 0;
      for (uint32_t i = 0; i < kernel.inputs()->size() && !status; ++i) {
        status = device.place(in(i), axis, offset, *out);
        if (!status)
          offset += in(i).shape[axis];
      }
      break;
    }
    case fb::KernelKind::BroadcastHeads: {
      std::vector<int64_t> shape = shapeOf(outId(0));
      if (shape.size() != 3 || in(0).shape.size() != 2)
        return invalidArtifact(kernelName(k, kernel) +
                               ": expects [T, D] to [T, H, D]");
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, shape, out));
      DeviceTensor row = view(in(0), {rows, 1, in(0).shape[1]});
      for (int64_t h = 0; h < shape[1] && !status; ++h)
        status = device.place(row, 1, h, *out);
      break;
    }
    case fb::KernelKind::KVCacheAppend:
    case fb::KernelKind::LatentCacheAppend: {
      DeviceTensor *c = cache(inId(0));
      if (!c)
        return invalidArtifact(kernelName(k, kernel) +
                               " appends to a cache that is not an input");
      status =
          device.cacheAppend(perToken(in(1)), perToken(in(2)), pass.layout, *c);
      cacheOf[outId(0)] = c;
      break;
    }
    case fb::KernelKind::KVCacheRead:
      if (!cache(inId(0)))
        return invalidArtifact(kernelName(k, kernel) +
                               " reads a cache that is not an input");
      readOf[outId(0)] = readOf[outId(1)] = inId(0);
      break;
    case fb::KernelKind::Attention: {
      auto keys = readOf.find(inId(1)), vals = readOf.find(inId(2));
      if (keys == readOf.end() || vals == readOf.end() ||
          keys->second != vals->second)
        return {MELT_UNSUPPORTED,
                kernelName(k, kernel) +
                    ": attention runs over a KV cache only (its keys and "
                    "values must come from one kv_cache_read)"};
      const fb::Buffer &buffer = *m.buffers()->Get(keys->second);
      int64_t kvHeads = buffer.shape()->Get(0);
      int64_t valueDim = buffer.shape()->Get(2);
      const DeviceTensor &q = in(0);
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), DType::F32,
                      {q.shape.empty() ? 0 : q.shape[0],
                       q.shape.size() > 1 ? q.shape[1] : 0, valueDim},
                      out));
      status =
          device.attention(q, *cache(keys->second), pass.layout, kvHeads,
                           ints(0) != 0, float(kernel.floats()->Get(0)), *out);
      break;
    }
    case fb::KernelKind::MLA: {
      DeviceTensor *c = cache(inId(2));
      if (!c)
        return invalidArtifact(kernelName(k, kernel) +
                               " attends to a cache that is not an input");
      // Its output's FP8 codes (or BF16 rows) for the products that alone
      // read it, where the device's call writes them (asked for this call
      // only); its F32 rows read by nothing else where they are not
      // gathered for the logit rows (itself or the Reshape's view of it).
      const MlaProductFusion *fusion = dm.mlaProducts(k);
      const std::vector<uint32_t> *products =
          fusion ? &fusion->products : nullptr;
      const bool rowsRead =
          fusion && (rowsGathered(outId(0)) || (fusion->view != UINT32_MAX &&
                                                rowsGathered(fusion->view)));
      Device::PreparedInput prepared;
      struct AskedForCall {
        Device &device;
        bool asked = false;
        void ask(Device::PreparedInput &into, bool rowsRead,
                 const DeviceTensor &weight) {
          device.prepareMlaOutput(&into, rowsRead, &weight);
          asked = true;
        }
        ~AskedForCall() {
          if (asked)
            device.prepareMlaOutput(nullptr, true, nullptr);
        }
      } mlaOutput{device};
      auto held = heldQueries.byMla.find(k);
      if (held != heldQueries.byMla.end()) {
        // The query's split and rope in the MLA's call.
        const DeviceTensor q = held->second;
        heldQueries.byMla.erase(held);
        const fb::Kernel &rope = *m.kernels()->Get(dm.mlaQueryOf(k)->rope);
        const DeviceTensor *positions = find(rope.inputs()->Get(1));
        const auto *nopeShape = m.buffers()->Get(inId(0))->shape();
        Status made =
            !positions || q.shape.size() != 3 || !nopeShape ||
                    nopeShape->size() != 3
                ? invalidArtifact(kernelName(k, kernel) +
                                  ": its query or positions are not there")
                : values.make(outId(0), DType::F32,
                              {q.shape[0], q.shape[1], w(1).shape[1]}, out);
        if (!made && preparesInMlaFor(products, q.shape[0]))
          mlaOutput.ask(prepared, rowsRead, productWeight(products->front()));
        if (!made)
          status = device.mlaOfQuery(
              q, nopeShape->Get(2), *positions, ropeParamsOf(rope), *c,
              onRows ? rowLayout : pass.layout, w(0), w(1),
              float(kernel.floats()->Get(0)), ints(0), *out);
        values.letGo(q);
        MELT_RETURN_IF_ERROR(made);
        if (!status && mlaOutput.asked)
          keepPrepared(*out, prepared, *products);
        break;
      }
      const DeviceTensor &qn = in(0);
      if (qn.shape.size() != 3)
        return invalidArtifact(kernelName(k, kernel) + ": q_nope is not 3-D");
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), DType::F32,
                      {qn.shape[0], qn.shape[1], w(1).shape[1]}, out));
      if (preparesInMlaFor(products, qn.shape[0]))
        mlaOutput.ask(prepared, rowsRead, productWeight(products->front()));
      status = device.mla(qn, in(1), *c, onRows ? rowLayout : pass.layout, w(0),
                          w(1), float(kernel.floats()->Get(0)), ints(0), *out);
      if (!status && mlaOutput.asked)
        keepPrepared(*out, prepared, *products);
      break;
    }
    case fb::KernelKind::Quantize: {
      if (ints(0) != 1 || ints(1) <= 0)
        return {MELT_UNSUPPORTED,
                kernelName(k, kernel) + ": only 1 x N activation blocks"};
      DeviceTensor x = perToken(in(0));
      int64_t blocks = (x.cols() + ints(1) - 1) / ints(1);
      DeviceTensor *scales = nullptr;
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::FP8E4M3, x.shape, out));
      MELT_RETURN_IF_ERROR(
          values.make(outId(1), DType::F32, {x.rows(), blocks}, scales));
      status = device.quantizeBlocks(x, ints(1), *out, *scales);
      break;
    }
    case fb::KernelKind::Dequantize: {
      if (ints(0) != 1 || ints(1) <= 0)
        return {MELT_UNSUPPORTED,
                kernelName(k, kernel) + ": only 1 x N activation blocks"};
      // A pair left out: the products read x itself.
      if (const uint32_t *source = dm.foldedSource(k)) {
        DeviceTensor *x = find(*source);
        if (x && values.view(outId(0), *x, x->shape, out))
          break;
        return invalidArtifact(kernelName(k, kernel) +
                               ": the value it stands for is not there");
      }
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, in(0).shape, out));
      status = device.dequantizeBlocks(in(0), in(1), ints(1), *out);
      break;
    }
    case fb::KernelKind::MoERouter: {
      RouterParams p = routerParamsOf(kernel);
      DeviceTensor x = asRows(in(0));
      DeviceTensor *scores = nullptr, *indices = nullptr, *weights = nullptr;
      MELT_RETURN_IF_ERROR(
          values.scratch(DType::F32, {x.rows(), w(0).shape[0]}, scores));
      MELT_RETURN_IF_ERROR(
          values.make(outId(0), DType::I32, {x.rows(), p.topK}, indices));
      MELT_RETURN_IF_ERROR(
          values.make(outId(1), DType::F32, {x.rows(), p.topK}, weights));
      status = device.linear(x, w(0), *scores);
      // (The scores are the step's scratch: they live until the experts'
      // call that may route from them.)
      const DeviceTensor *bias = kernel.weights()->size() > 1 ? &w(1) : nullptr;
      if (!status)
        status =
            dm.routesInExperts(k)
                ? device.routeInExperts(*scores, bias, p, *indices, *weights)
                : device.routeExperts(*scores, bias, p, *indices, *weights);
      pendingPrepared.readBy(x.data, k);
      // The choices kept to the end of the step (their storage takes
      // other values later), without a copy.
      if (!status) {
        pass.routerChoices.push_back(values.keep(*indices));
        pass.routerKernels.push_back(k);
      }
      break;
    }
    case fb::KernelKind::MoEExperts:
      MELT_RETURN_IF_ERROR(values.make(outId(0), DType::F32, in(0).shape, out));
      // x before its folded quantize pair: the experts quantize it.
      device.leaveCombineToNorm(dm.combinesInNorm(outId(0)));
      status =
          dm.unquantized(kernel.inputs()->Get(0))
              ? device.moeExpertsOfQuantized(in(0), in(1), in(2), w(0), w(1),
                                             w(2), ints(0) != 0, *out)
              : device.moeExperts(in(0), in(1), in(2), w(0), w(1), w(2),
                                  ints(0) != 0, *out);
      device.leaveCombineToNorm(false);
      pendingPrepared.readBy(in(0).data, k);
      break;
    default:
      return {MELT_UNSUPPORTED,
              kernelName(k, kernel) + " does not run in a session"};
    }
    if (!status && profile) {
      status = device.synchronize();
      double s = std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - started)
                     .count();
      int kind = static_cast<int>(kernel.kind()) & 63;
      std::lock_guard<std::mutex> lock(profile->mutex);
      profile->seconds[kind] += s;
      ++profile->calls[kind];
    }
    if (status)
      return Status(status.code(),
                    kernelName(k, kernel) + ": " + status.message());
    if (!onRows)
      MELT_RETURN_IF_ERROR(gatherMadeBy(k));
  }

  // The logits: @forward's first non-cache output.
  pass.logits = nullptr;
  for (uint32_t id : *forward.outputs())
    if (!isCache(id)) {
      pass.logits = values.find(id);
      break;
    }
  if (!pass.logits || pass.logits->shape.size() != 2 ||
      pass.logits->shape[0] != pass.rows->shape[0] ||
      pass.logits->dtype != DType::F32)
    return invalidArtifact("@forward returned no logits of the right shape");
  return Status::ok();
}

/// The logits, or with `pick` only each row's token picked on the device,
/// and the routers' choices. The ids and choices are gathered on the device
/// into one buffer and fetched with one download (a download waits for the
/// step: one wait, not one per router); the wait reports a fault of any
/// kernel of the step.
Status collect(const DeviceModel &dm, ForwardRunner::Pass &pass,
               std::vector<float> &logits, std::vector<RouterChoices> *choices,
               DevicePick *pick, double *waitMicroseconds = nullptr) {
  using Clock = std::chrono::steady_clock;
  Device &device = dm.device();
  const fb::Model &m = dm.model().artifact().model();
  if (!pick) {
    logits.resize(size_t(pass.logits->numel()));
    MELT_RETURN_IF_ERROR(device.download(*pass.logits, logits.data()));
  }
  const int64_t rows = pick ? pass.logits->shape[0] : 0;
  const bool sample = pick && pick->sampling && pick->sampling->temperature > 0;
  if (sample && int64_t(pick->draws.size()) != rows)
    return invalidArgument("a sampled step needs a draw per logit row");
  int64_t total = rows;
  if (choices)
    for (const DeviceTensor *chosen : pass.routerChoices)
      total += chosen->numel();
  if (total > 0) {
    DeviceTensor gathered;
    MELT_RETURN_IF_ERROR(device.allocate(DType::I32, {total}, gathered));
    std::vector<int32_t> host(static_cast<size_t>(total));
    Status status;
    if (pick) {
      DeviceTensor ids = gathered; // a view of its first rows
      ids.shape = {rows};
      if (sample) {
        DeviceTensor draws;
        status = device.allocate(DType::I32, {rows, 2}, draws);
        if (!status) {
          std::vector<uint32_t> words(2 * pick->draws.size());
          for (size_t r = 0; r < pick->draws.size(); ++r)
            wordsOfDraw(pick->draws[r], &words[2 * r]);
          status = device.upload(words.data(), draws);
          if (!status)
            status =
                device.sampleRows(*pass.logits, *pick->sampling, draws, ids);
          device.release(draws);
        }
      } else {
        status = device.argmaxRows(*pass.logits, ids);
      }
    }
    int64_t offset = rows;
    if (choices)
      for (const DeviceTensor *chosen : pass.routerChoices) {
        if (status)
          break;
        DeviceTensor flat = *chosen;
        flat.shape = {chosen->numel()};
        status = device.place(flat, 0, offset, gathered);
        offset += chosen->numel();
      }
    if (!status) {
      const Clock::time_point waitStarted = Clock::now();
      status = device.download(gathered, host.data());
      if (waitMicroseconds)
        *waitMicroseconds = std::chrono::duration<double, std::micro>(
                                Clock::now() - waitStarted)
                                .count();
    }
    device.release(gathered);
    MELT_RETURN_IF_ERROR(status);
    if (pick)
      pick->tokens.assign(host.begin(), host.begin() + rows);
    if (choices) {
      choices->resize(pass.routerChoices.size());
      offset = rows;
      for (size_t r = 0; r < pass.routerChoices.size(); ++r) {
        const DeviceTensor &chosen = *pass.routerChoices[r];
        RouterChoices &step = (*choices)[r];
        const fb::Kernel &kernel = *m.kernels()->Get(pass.routerKernels[r]);
        step.kernel = pass.routerKernels[r];
        step.experts = dm.weight(kernel.weights()->Get(0)).shape[0];
        step.topK = chosen.shape[1];
        step.chosen.assign(host.begin() + offset,
                           host.begin() + offset + chosen.numel());
        offset += chosen.numel();
      }
    }
  } else if (choices) {
    choices->clear();
  }
  // A download waited for the step and reported its faults.
  return !pick || total > 0 ? Status::ok() : device.synchronize();
}

} // namespace

void RouterLoad::add(const RouterChoices &step) {
  const size_t experts = size_t(std::max<int64_t>(step.experts, 0));
  counts.resize(experts);
  pairs.resize(experts * experts);
  const size_t topK = size_t(std::max<int64_t>(step.topK, 1));
  for (size_t t = 0; t * topK < step.chosen.size(); ++t)
    for (size_t a = 0; a < topK; ++a) {
      int64_t x = step.chosen[t * topK + a];
      if (x < 0 || size_t(x) >= experts)
        continue;
      ++counts[size_t(x)];
      for (size_t b = a + 1; b < topK; ++b) {
        int64_t y = step.chosen[t * topK + b];
        if (y < 0 || size_t(y) >= experts)
          continue;
        ++pairs[size_t(std::min(x, y)) * experts + size_t(std::max(x, y))];
      }
    }
}

void RouterLoad::merge(const RouterLoad &other) {
  counts.resize(std::max(counts.size(), other.counts.size()));
  pairs.resize(std::max(pairs.size(), other.pairs.size()));
  for (size_t i = 0; i < other.counts.size(); ++i)
    counts[i] += other.counts[i];
  for (size_t i = 0; i < other.pairs.size(); ++i)
    pairs[i] += other.pairs[i];
}

ForwardRunner::ForwardRunner(const DeviceModel &model)
    : model_(model),
      profile_(profilingRequested() ? std::make_unique<Profile>() : nullptr),
      stepTimes_(std::getenv("MELT_PROFILE_STEPS")
                     ? std::make_unique<StepTimes>()
                     : nullptr) {}
ForwardRunner::~ForwardRunner() = default;

void ForwardRunner::giveRecordings(Recordings &into) {
  into.clear();
  into.swap(recorded_);
}

void ForwardRunner::adoptRecordings(Recordings &from) {
  if (recorded_.empty())
    recorded_.swap(from);
  from.clear();
}

ClosedSession::ClosedSession(Device &device) : device(device) {}

ClosedSession::~ClosedSession() {
  recordings.clear(); // their graphs first: they read the caches
  for (auto &[id, cache] : caches)
    device.release(cache);
}

Status ForwardRunner::queueStep(const StepBatch &batch,
                                std::map<uint32_t, DeviceTensor> &caches,
                                const DeviceTensor *tokens,
                                std::unique_ptr<Pass> &scratch, Pass *&pass,
                                StepTimer &timer) {
  Device &device = model_.device();
  const int64_t T = int64_t(batch.tokens.size());
  const int64_t B = int64_t(batch.lengths.size());
  // The step's token ids from the device, in place of batch.tokens.
  auto takeTokens = [&](Pass &p) {
    return tokens && tokens->data != p.tokens->data
               ? device.copy(*tokens, *p.tokens)
               : Status::ok();
  };
  // Every kernel of the step queued one by one, on a pass of its own.
  auto queueKernels = [&]() -> Status {
    scratch = std::make_unique<Pass>(device, model_.model().artifact().model());
    pass = scratch.get();
    MELT_RETURN_IF_ERROR(allocateInputs(model_, *pass, batch));
    MELT_RETURN_IF_ERROR(uploadInputs(device, *pass, batch));
    MELT_RETURN_IF_ERROR(takeTokens(*pass));
    timer.mark(&StepPhases::upload);
    if (profile_)
      ++profile_->passes;
    MELT_RETURN_IF_ERROR(enqueue(model_, *pass, T, profile_.get(), caches));
    timer.mark(&StepPhases::queue);
    return Status::ok();
  };
  // Decode steps are recorded (profiling times kernels one by one).
  bool decode = device.canCapture() && !profile_ && T == B && T > 0;
  if (!decode)
    return queueKernels();
  std::pair<int64_t, int64_t> shape{B, batch.pagesPerSequence};
  if (!recorded_.count(shape) && recorded_.size() >= kMaxRecorded) {
    auto oldest = recorded_.begin();
    for (auto it = recorded_.begin(); it != recorded_.end(); ++it)
      if (it->second->lastUsed < oldest->second->lastUsed)
        oldest = it;
    // Steps queued ahead (a multi-step generation) may still read it.
    MELT_RETURN_IF_ERROR(device.synchronize());
    recorded_.erase(oldest);
  }
  std::unique_ptr<Pass> &slot = recorded_[shape];
  if (!slot) {
    timer.leaveOut();
    MELT_RETURN_IF_ERROR(record(batch, caches, false, slot));
  } else if (slot->recordable) {
    MELT_RETURN_IF_ERROR(uploadInputs(device, *slot, batch, tokens != nullptr));
  }
  slot->lastUsed = ++steps_;
  if (!slot->recordable)
    return queueKernels();
  MELT_RETURN_IF_ERROR(takeTokens(*slot));
  timer.mark(&StepPhases::upload);
  MELT_RETURN_IF_ERROR(device.replay(*slot->graph));
  ++replayed_;
  timer.replayed();
  timer.mark(&StepPhases::queue);
  pass = slot.get();
  return Status::ok();
}

Status ForwardRunner::record(const StepBatch &batch,
                             std::map<uint32_t, DeviceTensor> &caches,
                             bool behindQueued, std::unique_ptr<Pass> &out) {
  Device &device = model_.device();
  const StepTimes::Clock::time_point starts = StepTimes::Clock::now();
  auto recording =
      std::make_unique<Pass>(device, model_.model().artifact().model());
  MELT_RETURN_IF_ERROR(allocateInputs(model_, *recording, batch));
  MELT_RETURN_IF_ERROR(uploadInputs(device, *recording, batch));
  MELT_RETURN_IF_ERROR(device.beginCapture(behindQueued));
  Status queued = enqueue(model_, *recording, int64_t(batch.tokens.size()),
                          nullptr, caches);
  Status recorded = device.endCapture(recording->graph);
  ++recordings_;
  if (stepTimes_) {
    ++stepTimes_->recordings;
    stepTimes_->recordedAhead += behindQueued ? 1 : 0;
    stepTimes_->recording += std::chrono::duration<double, std::micro>(
                                 StepTimes::Clock::now() - starts)
                                 .count();
  }
  if (queued) // the same error a step run kernel by kernel would give
    return queued;
  if (recorded) {
    // This shape runs kernel by kernel from now on.
    recording->recordable = false;
    recording->graph.reset();
  }
  out = std::move(recording);
  return Status::ok();
}

void ForwardRunner::recordAhead(const StepBatch &next,
                                std::map<uint32_t, DeviceTensor> &caches) {
  Device &device = model_.device();
  const int64_t T = int64_t(next.tokens.size());
  const int64_t B = int64_t(next.lengths.size());
  const std::pair<int64_t, int64_t> shape{B, next.pagesPerSequence};
  if (!device.canCapture() || profile_ || T != B || T == 0 ||
      recorded_.count(shape) || recorded_.size() >= kMaxRecorded)
    return;
  std::unique_ptr<Pass> recording;
  // A recording that fails here is the step's to make again (and to
  // report, or to give up on for its shape): nothing is kept.
  if (record(next, caches, true, recording) || !recording->recordable)
    return;
  recorded_[shape] = std::move(recording);
  ++recordedAhead_;
}

Status ForwardRunner::run(const StepBatch &batch,
                          std::map<uint32_t, DeviceTensor> &caches,
                          std::vector<float> &logits,
                          std::vector<RouterChoices> *choices, DevicePick *pick,
                          const StepBatch *next) {
  const int64_t T = int64_t(batch.tokens.size());
  const bool decode = T == int64_t(batch.lengths.size()) && T > 0;
  StepTimer timer(stepTimes_.get(), decode, T > 0 && !decode);
  std::unique_ptr<Pass> scratch;
  Pass *pass = nullptr;
  MELT_RETURN_IF_ERROR(queueStep(batch, caches, nullptr, scratch, pass, timer));
  if (next)
    recordAhead(*next, caches);
  double waited = 0;
  Status status = collect(model_, *pass, logits, choices, pick, &waited);
  timer.markCollect(waited);
  return status;
}

Status
ForwardRunner::runGreedySteps(const std::vector<StepBatch> &batches,
                              std::map<uint32_t, DeviceTensor> &caches,
                              std::vector<std::vector<RouterChoices>> *choices,
                              std::vector<int32_t> &tokens) {
  Device &device = model_.device();
  const fb::Model &m = model_.model().artifact().model();
  const size_t steps = batches.size();
  const int64_t n = steps ? int64_t(batches[0].tokens.size()) : 0;
  if (n == 0)
    return invalidArgument("no decode steps to run");
  // Per step: its n picked ids, then every router's choices (the same
  // shapes each step): one buffer, one download at the end.
  DeviceTensor gathered;
  int64_t perStep = 0;
  std::vector<std::pair<uint32_t, std::vector<int64_t>>> routers;
  auto viewOf = [&](int64_t offset, std::vector<int64_t> shape) {
    DeviceTensor v = gathered;
    v.data = static_cast<int32_t *>(gathered.data) + offset;
    v.shape = std::move(shape);
    return v;
  };
  Status status;
  // Where the step before put its picks: a recorded step's own token ids
  // (the next step of its shape reads them in place), else `gathered`.
  DeviceTensor picked;
  for (size_t s = 0; s < steps && !status; ++s) {
    const StepBatch &batch = batches[s];
    if (int64_t(batch.tokens.size()) != n ||
        int64_t(batch.lengths.size()) != n) {
      status = invalidArgument("a multi-step batch must be one token of "
                               "each of the same sequences every step");
      break;
    }
    StepTimer timer(stepTimes_.get(), true);
    std::unique_ptr<Pass> scratch;
    Pass *pass = nullptr;
    status = queueStep(batch, caches, s > 0 ? &picked : nullptr, scratch, pass,
                       timer);
    if (status)
      break;
    if (s == 0) {
      perStep = n;
      if (choices)
        for (size_t r = 0; r < pass->routerChoices.size(); ++r) {
          routers.push_back(
              {pass->routerKernels[r], pass->routerChoices[r]->shape});
          perStep += pass->routerChoices[r]->numel();
        }
      status =
          device.allocate(DType::I32, {int64_t(steps) * perStep}, gathered);
      if (status)
        break;
    }
    if (choices && pass->routerChoices.size() != routers.size()) {
      status = invalidArtifact("@forward's routers differ between steps");
      break;
    }
    // A recorded pass outlives the step (a scratch one is released at its
    // end): its token ids take the picks, then go to `gathered` with the
    // router choices (one launch, no copy before the next replay).
    const bool inPlace = pass != scratch.get() && pass->tokens &&
                         pass->tokens->dtype == DType::I32 &&
                         pass->tokens->numel() == n;
    picked = inPlace ? *pass->tokens : viewOf(int64_t(s) * perStep, {n});
    status = device.argmaxRows(*pass->logits, picked);
    std::vector<DeviceTensor> parts;
    if (inPlace)
      parts.push_back(picked);
    if (choices)
      for (const DeviceTensor *router : pass->routerChoices)
        parts.push_back(*router);
    if (!status && !parts.empty())
      status = device.gatherParts(
          parts, int64_t(s) * perStep + (inPlace ? 0 : n), gathered);
    timer.markCollect(0);
  }
  std::vector<int32_t> host;
  if (!status) {
    host.resize(size_t(int64_t(steps) * perStep));
    StepTimer timer(stepTimes_.get(), false);
    status = device.download(gathered, host.data());
  }
  if (gathered.data)
    device.release(gathered);
  MELT_RETURN_IF_ERROR(status);
  tokens.assign(size_t(int64_t(steps) * n), 0);
  if (choices)
    choices->assign(steps, {});
  for (size_t s = 0; s < steps; ++s) {
    const int32_t *step = host.data() + int64_t(s) * perStep;
    std::copy(step, step + n, tokens.begin() + int64_t(s) * n);
    int64_t offset = n;
    if (choices)
      for (const auto &[kernel, shape] : routers) {
        RouterChoices one;
        const fb::Kernel &k = *m.kernels()->Get(kernel);
        one.kernel = kernel;
        one.experts = model_.weight(k.weights()->Get(0)).shape[0];
        one.topK = shape.size() > 1 ? shape[1] : 1;
        int64_t count = 1;
        for (int64_t d : shape)
          count *= d;
        one.chosen.assign(step + offset, step + offset + count);
        offset += count;
        (*choices)[s].push_back(std::move(one));
      }
  }
  return Status::ok();
}

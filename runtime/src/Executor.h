//===- Executor.h - a model's @forward on a Device --------------*- C++ -*-===//
//
// Runs the artifact's @forward through the Device interface for a batch of
// sequences over paged caches: the one path by which every session runs,
// on the CPU device and on a GPU alike. Activations are F32; weights are
// as the device imports them (their values at the model's storage
// precision; a GPU keeps BF16 ones in BF16); kernels a device lacks are
// refused with a clear error.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_EXECUTOR_H
#define MELT_RUNTIME_EXECUTOR_H

#include "CombineNormFusions.h"
#include "Device.h"
#include "GateUpPairs.h"
#include "LatentAppends.h"
#include "LogitOnlyKernels.h"
#include "MlaProductFusions.h"
#include "MlaQueryFusions.h"
#include "Model.h"
#include "NormProductFusions.h"
#include "RoutesInExperts.h"
#include "SharedExpertFusions.h"

#include <map>
#include <memory>
#include <mutex>
#include <set>

namespace melt::rt {

struct ClosedSession;

/// A model's weights imported into one device: what every session of the
/// model on that device shares.
class DeviceModel {
public:
  /// Imports the weights @forward reads (Device::importWeight).
  static Status create(const Model &model, Device &device,
                       std::unique_ptr<DeviceModel> &out);
  ~DeviceModel();

  const Model &model() const { return model_; }
  Device &device() const { return device_; }
  const fb::Function &forward() const { return *forward_; }
  const DeviceTensor &weight(uint32_t index) const {
    return weights_.at(index);
  }
  /// Quantize kernels of @forward left out (their product quantizes its
  /// input itself: QuantizeFolds.h; MELT_FOLD_QUANTIZE=0 keeps them all).
  bool skips(uint32_t kernel) const { return skipped_.count(kernel) != 0; }
  /// For a dequantize kernel of such a pair, the buffer it stands for (x);
  /// null otherwise.
  const uint32_t *foldedSource(uint32_t kernel) const {
    auto it = folded_.find(kernel);
    return it == folded_.end() ? nullptr : &it->second;
  }
  size_t foldedPairs() const { return folded_.size(); }
  /// Whether value `id` is a folded pair's: x before its quantization.
  bool unquantized(uint32_t id) const { return unquantized_.count(id) != 0; }
  /// For a SiLU-mul kernel the products compute with (SiluMulFusions.h;
  /// MELT_FUSE_SILU_MUL=0 runs them all), how many products read its value;
  /// 0 otherwise.
  uint32_t siluMulProducts(uint32_t kernel) const {
    auto it = siluMulFusions_.find(kernel);
    return it == siluMulFusions_.end() ? 0 : it->second;
  }

  /// For an RMSNorm whose value only products that quantize their input
  /// read (NormProductFusions.h; MELT_FUSE_NORM_QUANTIZE=0 finds none),
  /// those products; null otherwise. The device decides each step, by its
  /// rows, whether the norm prepares their input (Device::preparesInNorm).
  const std::vector<uint32_t> *normProducts(uint32_t norm) const {
    auto it = normProducts_.find(norm);
    return it == normProducts_.end() ? nullptr : &it->second;
  }
  /// The FP8 products that alone read MLA kernel `mla`'s value (through
  /// its Reshape: MlaProductFusions.h), or null.
  const MlaProductFusion *mlaProducts(uint32_t mla) const {
    auto it = mlaProducts_.find(mla);
    return it == mlaProducts_.end() ? nullptr : &it->second;
  }
  /// For an RMSNorm kernel whose value a MoE router and MoE experts read
  /// (NormProductFusions.h; MELT_FUSE_NORM_EXPERTS=0: none), the two.
  const NormExpertFusion *normExperts(uint32_t norm) const {
    auto it = normExperts_.find(norm);
    return it == normExperts_.end() ? nullptr : &it->second;
  }

  /// Whether Linear kernel k's value is read only by kernels that read BF16
  /// activations, so that the device may write it in BF16 (Bf16Products.h;
  /// none with MELT_BF16_PRODUCTS=0): decided each step by its rows
  /// (Device::linearWritesBf16).
  bool writesBf16Product(uint32_t k) const { return bf16Products_.count(k); }

  /// For the RMSNorm of an MLA latent append done in one call with its
  /// rope and append (LatentAppends.h; both then skipped;
  /// MELT_FUSE_LATENT_APPEND=0 runs the three apart), the three; null
  /// otherwise.
  const LatentAppend *latentAppend(uint32_t norm) const {
    auto it = latentAppends_.find(norm);
    return it == latentAppends_.end() ? nullptr : &it->second;
  }

  /// Whether `value`, a MoE layer's output, is read by nothing but the
  /// add of the next add-and-norm call (CombineNormFusions.h): the
  /// executor lets the device leave its combine to that call
  /// (Device::leaveCombineToNorm).
  bool combinesInNorm(uint32_t value) const {
    return combinesInNorm_.count(value) != 0;
  }

  /// For the first kernel (in @forward's order) of a MoE layer's routed
  /// and shared experts and their add, which a device may run in one call
  /// (SharedExpertFusions.h; MELT_FUSE_SHARED_EXPERT=0 finds none), the
  /// group; null otherwise.
  const SharedExpertFusion *sharedExpertsFrom(uint32_t first) const {
    auto it = sharedExperts_.find(first);
    return it == sharedExperts_.end() ? nullptr : &it->second;
  }
  size_t sharedExpertGroups() const { return sharedExperts_.size(); }
  /// The shared-expert group kernel k belongs to; null if none.
  const SharedExpertFusion *sharedExpertGroupOf(uint32_t k) const {
    auto it = sharedExpertGroupOf_.find(k);
    return it == sharedExpertGroupOf_.end() ? nullptr
                                            : sharedExpertsFrom(it->second);
  }

  /// Whether MoERouter kernel k's choices go through
  /// Device::routeInExperts, its experts' call alone reading them
  /// (RoutesInExperts.h; MELT_ROUTE_IN_EXPERTS=0 finds none).
  bool routesInExperts(uint32_t k) const { return routesInExperts_.count(k); }
  size_t routesInExpertsCount() const { return routesInExperts_.size(); }

  /// Whether value `id`, a part of a Split's input along its last axis,
  /// is read only by RMSNorm kernels (as x) and Splits along the same axis
  /// that run on their own (not in another kernel's call, not on the logit
  /// rows alone) and is no output of @forward: a device that takes a row
  /// pitch (Device::takesRowPitch) reads it in place, not copied out
  /// (MELT_SPLIT_PARTS_IN_PLACE=0 finds none).
  bool leavesPartInPlace(uint32_t id) const {
    return partsInPlace_.count(id) != 0;
  }
  size_t partsLeftInPlace() const { return partsInPlace_.size(); }

  /// An MLA whose query's split and rope the device does in its call
  /// (MlaQueryFusions.h; MELT_FUSE_MLA_QUERY=0 finds none; the rope is then
  /// skipped): by its split or by the MLA; null otherwise.
  const MlaQueryFusion *mlaQueryOfSplit(uint32_t split) const {
    auto it = mlaQuerySplits_.find(split);
    return it == mlaQuerySplits_.end() ? nullptr : &it->second;
  }
  const MlaQueryFusion *mlaQueryOf(uint32_t mla) const {
    auto it = mlaQueries_.find(mla);
    return it == mlaQueries_.end() ? nullptr : &it->second;
  }
  size_t mlaQueryFusions() const { return mlaQueries_.size(); }

  /// Side branches (SideBranches.h; MELT_SIDE_BRANCHES=0 finds none):
  /// whether kernel k is a branch's, whether a branch's fork is marked
  /// before it, whether a branch joins before it.
  bool inBranch(uint32_t k) const { return branchKernels_.count(k) != 0; }
  bool marksBranch(uint32_t k) const { return branchMarks_.count(k) != 0; }
  bool joinsBranch(uint32_t k) const { return branchJoins_.count(k) != 0; }
  size_t sideBranches() const { return branchJoins_.size(); }

  /// The MLP gate/up pair whose first product (in @forward's order) is
  /// kernel k, which a device may run with its SiLU-mul in one call
  /// (GateUpPairs.h; MELT_FUSE_GATE_UP=0 finds none); null otherwise.
  const GateUpPair *gateUpPairAt(uint32_t k) const {
    auto it = gateUpPairs_.find(k);
    return it == gateUpPairs_.end() ? nullptr : &it->second;
  }
  size_t gateUpPairs() const { return gateUpPairs_.size(); }
  /// A value a side branch's kernel reads.
  struct BranchInput {
    uint32_t kernel, value;
  };
  /// The values read by the branch whose fork is marked before kernel k.
  const std::vector<BranchInput> &branchInputs(uint32_t k) const {
    static const std::vector<BranchInput> none;
    auto it = branchInputs_.find(k);
    return it == branchInputs_.end() ? none : it->second;
  }

  /// The kernels whose results reach only the logits (LogitOnlyKernels.h;
  /// MELT_LOGIT_ROWS_ONLY=0 finds none): a step that wants a few rows'
  /// logits runs them last, on those rows.
  const LogitOnlyKernels &logitOnly() const { return logitOnly_; }

  /// The element type cache buffer `id` of @forward is kept in: BF16 for a
  /// latent cache whose every MLA the device keeps so, given the artifact's
  /// type for it (Device::latentCacheType), else F32.
  DType cacheType(uint32_t id) const {
    auto it = cacheTypes_.find(id);
    return it == cacheTypes_.end() ? DType::F32 : it->second;
  }

  /// A closed session's device state (its caches and recorded decode
  /// steps), kept for the next session (Session.h): the one kept is handed
  /// over (null if none), and is the caller's to use or to drop.
  std::unique_ptr<ClosedSession> takeClosedSession() const;
  /// Keeps `closed` for the next session (dropping the one kept before).
  void keepClosedSession(std::unique_ptr<ClosedSession> closed) const;

private:
  DeviceModel(const Model &model, Device &device)
      : model_(model), device_(device) {}
  /// Fills cacheTypes_ from @forward's latent appends and MLAs.
  void findCacheTypes();
  const Model &model_;
  Device &device_;
  const fb::Function *forward_ = nullptr;
  std::map<uint32_t, DeviceTensor> weights_;
  std::set<uint32_t> skipped_;
  std::map<uint32_t, uint32_t> folded_;
  /// The folded pairs' dequantized values (views of their x).
  std::set<uint32_t> unquantized_;
  std::map<uint32_t, uint32_t> siluMulFusions_;
  std::map<uint32_t, std::vector<uint32_t>> normProducts_;
  std::map<uint32_t, MlaProductFusion> mlaProducts_;
  std::map<uint32_t, NormExpertFusion> normExperts_;
  std::set<uint32_t> bf16Products_;
  std::set<uint32_t> partsInPlace_;
  std::map<uint32_t, LatentAppend> latentAppends_;
  std::set<uint32_t> combinesInNorm_;
  std::map<uint32_t, SharedExpertFusion> sharedExperts_;
  std::set<uint32_t> routesInExperts_;
  std::map<uint32_t, GateUpPair> gateUpPairs_;
  std::map<uint32_t, MlaQueryFusion> mlaQuerySplits_, mlaQueries_;
  std::set<uint32_t> branchKernels_, branchMarks_, branchJoins_;
  /// By the kernel a fork is marked before: the values its branch's
  /// kernels read that are made outside it.
  std::map<uint32_t, std::vector<BranchInput>> branchInputs_;
  /// Each kernel of a shared-expert group (sharedExperts_): the group's
  /// first kernel.
  std::map<uint32_t, uint32_t> sharedExpertGroupOf_;
  LogitOnlyKernels logitOnly_;
  std::map<uint32_t, DType> cacheTypes_;
  /// Sessions open and close on any thread (the C API's handles).
  mutable std::mutex closedMutex_;
  mutable std::unique_ptr<ClosedSession> closed_;
};

/// One step of a batch, on the host: the tokens of all sequences and where
/// they go (the CacheLayout of Device.h, flattened).
struct StepBatch {
  std::vector<int32_t> tokens, positions, sequences;
  std::vector<int32_t> pages; // [sequences, pagesPerSequence]
  int64_t pagesPerSequence = 0;
  std::vector<int32_t> lengths;
  /// The token rows whose logits are wanted, in order (e.g. the last token
  /// of each sequence): the logits projection runs on those rows only.
  std::vector<int32_t> logitRows;
};

/// How many token-to-expert assignments each router made, and how often two
/// experts were chosen for the same token: the statistics expert placement
/// (melt-plan-experts) plans from.
/// One router's choices in a step: [tokens, topK] expert ids.
struct RouterChoices {
  uint32_t kernel = 0;
  int64_t experts = 0, topK = 0;
  std::vector<int32_t> chosen;
};
struct RouterLoad {
  std::vector<uint64_t> counts;
  /// pairs[i * experts + j], i <= j: tokens that chose both i and j. Dense
  /// (a step of 64 tokens of DeepSeek-V3 adds 100,000 pairs: a tree of
  /// them took milliseconds per step).
  std::vector<uint64_t> pairs;
  void add(const RouterChoices &step);
  /// Adds another's counts (of as many experts, or none).
  void merge(const RouterLoad &other);
};
using ExpertLoad = std::map<uint32_t, RouterLoad>;

/// Runs @forward for the steps of one session. A decode step (one token
/// per sequence) on a device that records graphs is recorded once per
/// shape (sequences, pages per sequence) and then replayed: the kernels of
/// a step are launched by one call instead of hundreds. Everything else
/// runs kernel by kernel.
/// Tokens picked on the device instead of logits brought back (the logits
/// stay there): each logit row's greedy token (Device::argmaxRows), or
/// with `sampling` (temperature > 0) its token for draws[row]
/// (Device::sampleRows).
struct DevicePick {
  const SamplingParams *sampling = nullptr;
  std::vector<uint64_t> draws;
  std::vector<int32_t> tokens;
};

class ForwardRunner {
public:
  explicit ForwardRunner(const DeviceModel &model);
  ~ForwardRunner();

  /// Runs @forward for `batch` with `caches` (a [pages * kPageTokens,
  /// width] tensor per cache buffer of @forward); `logits` receives
  /// [logitRows, vocab] on the host and `choices` (if given) the routers'
  /// choices. With `pick`, the logits stay on the device: `pick` receives
  /// each logit row's token picked there instead. With `next` (a decode
  /// step of the shape expected next), a device that records steps
  /// records that shape while this step runs, if it has no recording of
  /// it yet (a recording that fails is left to the step itself).
  Status run(const StepBatch &batch, std::map<uint32_t, DeviceTensor> &caches,
             std::vector<float> &logits,
             std::vector<RouterChoices> *choices = nullptr,
             DevicePick *pick = nullptr, const StepBatch *next = nullptr);

  /// Greedy decode steps queued back to back: batches[s] is step s of the
  /// same n sequences, one token each; step s > 0 takes, in place of its
  /// batch's tokens, the ids step s - 1 picked on the device, so that the
  /// host does not wait between steps. `tokens` receives [steps, n] picked
  /// ids, `choices` (if given) each step's routers' choices; one download
  /// at the end (it reports a fault of any step).
  Status runGreedySteps(const std::vector<StepBatch> &batches,
                        std::map<uint32_t, DeviceTensor> &caches,
                        std::vector<std::vector<RouterChoices>> *choices,
                        std::vector<int32_t> &tokens);

  /// Steps replayed from a recording so far (for tests and benchmarks).
  uint64_t replayedSteps() const { return replayed_; }
  /// Decode steps recorded (a graph captured and instantiated) so far.
  uint64_t recordings() const { return recordings_; }
  /// Recordings made while the step before them ran (run()'s `next`).
  uint64_t recordedAhead() const { return recordedAhead_; }
  /// Decode shapes with a recording kept (or marked unrecordable).
  size_t recordedShapes() const { return recorded_.size(); }

  struct Pass;
  struct Profile;
  struct StepTimes;
  class StepTimer;

  /// Recorded decode steps by (sequences, pages per sequence); a null
  /// graph marks a shape that could not be recorded.
  using Recordings =
      std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Pass>>;
  /// The recordings, moved into `into` (this runner records anew), or from
  /// `from` (where this runner has none yet): a closed session's, for the
  /// next session over the same caches (their graphs read those caches).
  /// By reference: a Pass is complete only in Executor.cpp.
  void giveRecordings(Recordings &into);
  void adoptRecordings(Recordings &from);

private:
  /// Queues `batch`'s kernels (a decode step on a device that records:
  /// its recording replayed, recorded first if new) with its token ids
  /// taken from `tokens` on the device where given; `pass` receives the
  /// pass whose values hold the results: a recorded one or `scratch`.
  Status queueStep(const StepBatch &batch,
                   std::map<uint32_t, DeviceTensor> &caches,
                   const DeviceTensor *tokens, std::unique_ptr<Pass> &scratch,
                   Pass *&pass, StepTimer &timer);
  /// Records `batch`'s step into `out` (a pass whose graph is null where
  /// the device could not record it); `behindQueued`: while the kernels
  /// queued before run (Device::beginCapture).
  Status record(const StepBatch &batch,
                std::map<uint32_t, DeviceTensor> &caches, bool behindQueued,
                std::unique_ptr<Pass> &out);
  /// run()'s `next`: its shape recorded now where it has no recording.
  void recordAhead(const StepBatch &next,
                   std::map<uint32_t, DeviceTensor> &caches);

  const DeviceModel &model_;
  /// Each recording keeps its activations in the device's memory: at most
  /// kMaxRecorded shapes, the least recently used dropped first.
  static constexpr size_t kMaxRecorded = 16;
  Recordings recorded_;
  uint64_t replayed_ = 0, steps_ = 0, recordedAhead_ = 0, recordings_ = 0;
  /// MELT_PROFILE: this session's time per kernel kind (null when off).
  std::unique_ptr<Profile> profile_;
  /// MELT_PROFILE_STEPS: where a replayed step's host time goes (null when
  /// off).
  std::unique_ptr<StepTimes> stepTimes_;
};

/// What a closed session leaves on its device for the next session of its
/// model: its caches ([rows, width] per cache buffer, their contents
/// stale) and its recorded decode steps, whose graphs read those caches. A
/// session opened with caches of as many rows takes both, and replays the
/// steps recorded before instead of recording them again (a server's next
/// request; melt-run's timed runs after --warmup). Released by its
/// destructor.
struct ClosedSession {
  // Out of line, as ForwardRunner's: a Pass is complete in Executor.cpp.
  explicit ClosedSession(Device &device);
  ~ClosedSession();
  ClosedSession(const ClosedSession &) = delete;
  ClosedSession &operator=(const ClosedSession &) = delete;
  Device &device;
  int64_t cacheRows = 0;
  std::map<uint32_t, DeviceTensor> caches; // by cache buffer of @forward
  ForwardRunner::Recordings recordings;
};

/// The width of a cache buffer's rows: heads * (key + value) values.
int64_t cacheRowWidth(const fb::Buffer &cache);

} // namespace melt::rt

#endif // MELT_RUNTIME_EXECUTOR_H

//===- Session.h - sequences of a model -------------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_SESSION_H
#define MELT_RUNTIME_SESSION_H

#include "EnvSwitch.h"
#include "Executor.h"

#include <future>
#include <map>
#include <memory>

namespace melt::rt {

/// Several sequences of one model, on the model's device, sharing paged
/// caches of fixed capacity: one device tensor per cache buffer (layer),
/// [pages * kPageTokens, width], allocated when the session is created (on
/// the CPU the OS commits the memory when it is first written). A sequence
/// owns the same pages in every layer and gives them back when it is freed.
/// A step runs tokens of any number of sequences as one batch (prefills and
/// decode steps mixed). Every call either succeeds or leaves all sequences,
/// and the pages, as they were.
///
/// A session that closes leaves its caches and its recorded decode steps
/// to the model (DeviceModel::keepClosedSession, one kept at a time); the
/// next session with caches of as many rows takes them and replays those
/// steps without recording them again (on the H200 a recording of mini's
/// step costs 1.5-7 ms, the GPU idle). One of another size releases them first.
/// MELT_KEEP_CLOSED_SESSION=0 releases a session's memory as it closes.
class Session {
public:
  /// Router choices of a call (tokens x top-k, all routers) from which
  /// they are counted on a thread of their own (countChoices): about a
  /// tenth of a millisecond of counting, a thread's start.
  static constexpr size_t kCountedAsideChoices = 4096;

  static Status create(const DeviceModel &model, int64_t maxContext,
                       int64_t capacityTokens, std::unique_ptr<Session> &out);
  ~Session();

  Status addSequence(int32_t &id);
  /// Frees a sequence and gives its pages back.
  Status removeSequence(int32_t id);

  struct Entry {
    int32_t sequence;
    const int32_t *tokens;
    size_t count;
  };
  /// Appends each entry's tokens to its sequence and computes next-token
  /// logits. `allLogits`, when given, receives the logits of every token
  /// of the batch ([tokens, vocab], in entry order).
  Status step(const Entry *entries, size_t n,
              std::vector<float> *allLogits = nullptr);
  /// The same step, but the logits stay on the device: `next` receives each
  /// entry's greedy next token (picked there; the sequences then have no
  /// logits until their next step).
  Status stepGreedy(const Entry *entries, size_t n, std::vector<int32_t> &next);
  /// The same with each entry's next token drawn as melt_sample draws it
  /// (Sampling.h), picked on the device: one draw of `state` per entry, in
  /// entry order (temperature 0: greedy, no draw); `state` advances only
  /// when the step succeeds.
  Status stepSample(const Entry *entries, size_t n,
                    const SamplingParams &params, uint64_t &state,
                    std::vector<int32_t> &next);
  /// `steps` greedy decode steps of each entry's sequence in one call:
  /// step 0 appends the entry's one token, each later step the token the
  /// step before picked for it, on the device (the host waits once, at the
  /// end; a device that records steps runs them back to back). `next`
  /// receives [steps, n] tokens: what `steps` calls of stepGreedy would
  /// give. Capacity for all the steps is checked first; on a failure no
  /// sequence changes.
  Status generateGreedy(const Entry *entries, size_t n, size_t steps,
                        std::vector<int32_t> &next);
  Status append(int32_t id, const int32_t *tokens, size_t n,
                std::vector<float> *allLogits = nullptr) {
    Entry entry{id, tokens, n};
    return step(&entry, 1, allLogits);
  }

  /// The next-token logits of a sequence (`vocab` values), valid until its
  /// next step.
  Status logits(int32_t id, const float *&out, size_t &vocab) const;
  Status length(int32_t id, int64_t &out) const;
  int64_t maxContext() const { return maxContext_; }
  int64_t usedPages() const { return totalPages_ - int64_t(freePages_.size()); }
  int64_t totalPages() const { return totalPages_; }
  /// Bytes of the caches (every layer's pages), in their element types.
  size_t cacheBytes() const {
    size_t bytes = 0;
    for (const auto &[id, cache] : caches_)
      bytes += cache.bytes();
    return bytes;
  }
  /// Decode steps replayed from a recorded graph (devices that record).
  uint64_t replayedSteps() const { return runner_.replayedSteps(); }
  /// Decode steps recorded (devices that record; a closed session's
  /// recordings taken over are not counted).
  uint64_t recordings() const { return runner_.recordings(); }
  /// Decode shapes recorded while the step before ran (MELT_RECORD_AHEAD).
  uint64_t recordedAhead() const { return runner_.recordedAhead(); }
  size_t recordedShapes() const { return runner_.recordedShapes(); }
  /// Per-expert load counters of every router (the rows each saw: a
  /// prefill's last MoE layer sees its logit rows only,
  /// LogitOnlyKernels.h), as JSON:
  /// {"routers": [{"gate": NAME, "experts": E, "counts": [...],
  ///               "pairs": [[i, j, times chosen together], ...]}, ...]}.
  std::string expertLoadJson() const;

private:
  /// A step's logits, shared by the sequences of the step (each keeps the
  /// step's buffer until its own next step).
  using LogitsBuffer = std::shared_ptr<std::vector<float>>;
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> pages;
    LogitsBuffer logits; // null before the first step and after a pick
    size_t logitsOffset = 0;
    bool pickedOnDevice = false; // the last step left the logits there
  };
  /// A buffer no sequence holds any more, for the next step's logits:
  /// reused, so that a step neither allocates (and faults in) fresh pages
  /// nor copies each sequence's row (a batch of 64 over DeepSeek-V3's
  /// vocabulary is 33 MB of logits per step).
  LogitsBuffer freeLogitsBuffer();
  Status run(const Entry *entries, size_t n, std::vector<float> *allLogits,
             DevicePick *pick);
  /// Checks a batch (its sequences, tokens, the context) for `tokensEach`
  /// tokens a sequence (0: each entry's count) and reserves their pages:
  /// all or none. `seqs` and `pagesBefore` receive the batch's sequences
  /// and their page counts before, for giveBackPages.
  Status admit(const Entry *entries, size_t n, int64_t tokensEach,
               std::vector<Sequence *> &seqs, std::vector<size_t> &pagesBefore);
  void giveBackPages(const std::vector<Sequence *> &seqs,
                     const std::vector<size_t> &pagesBefore);
  /// The step that appends each entry's tokens to its sequence, `ahead`
  /// tokens past its length (the steps of one call before it).
  StepBatch makeBatch(const std::vector<Sequence *> &seqs, const Entry *entries,
                      int64_t ahead, bool allLogits) const;
  /// Pages a sequence in a decode step whose longest sequence uses `used`:
  /// a power of two (one shape for a while: a device that records steps
  /// replays a recording), within the context.
  int64_t decodeTablePages(int64_t used) const;
  /// The decode step after a step of `entries` (each sequence one token
  /// further), for recording ahead: its shape is what makeBatch will give
  /// it; its pages those the sequences hold now, -1 past them (a recording
  /// runs nothing; a replay uploads its own step's).
  StepBatch nextDecodeBatch(const std::vector<Sequence *> &seqs,
                            const Entry *entries) const;
  Session(const DeviceModel &model, int64_t maxContext)
      : model_(model), maxContext_(maxContext), runner_(model) {}

  const DeviceModel &model_;
  int64_t maxContext_;
  ForwardRunner runner_;
  std::map<uint32_t, DeviceTensor> caches_; // by cache buffer of @forward
  int64_t totalPages_ = 0;
  std::vector<int32_t> freePages_;
  std::map<int32_t, Sequence> sequences_;
  int32_t nextId_ = 0;
  /// MELT_EXPERT_LOAD=0: no per-expert load counters (the routers' choices
  /// are then not read back after each step).
  bool countExpertLoad_ = envSwitch("MELT_EXPERT_LOAD", true);
  /// Adds a call's router choices to the counters: a decode step's few
  /// here; many (a prefill's: 8x1024 tokens of mini, 7 routers, took 5.5
  /// ms of the H200's host, a sixth of the prefill) on a thread of their
  /// own into countedAside_, so that the call returns while they are
  /// counted. One such thread at a time: the next joins the last first.
  void countChoices(std::vector<RouterChoices> &&choices);
  /// Waits for the counting thread and adds what it counted.
  void joinCounting() const;
  mutable ExpertLoad expertLoad_, countedAside_;
  mutable std::future<void> counting_;
  /// MELT_RECORD_AHEAD=1: a step that ends in a decode shape not yet
  /// recorded has it recorded after it is queued (ForwardRunner::run's
  /// `next`), else at that shape's first step. Off by default: on the H200
  /// the recording still waits for the queued step (the prefill's time grew
  /// by what the decode's shrank; docs/CudaBackend.md).
  bool recordAhead_ = envSwitch("MELT_RECORD_AHEAD", false);
  /// MELT_KEEP_CLOSED_SESSION=0: the caches and recordings released when
  /// the session closes, not kept for the next one.
  bool keepsWhenClosed_ = envSwitch("MELT_KEEP_CLOSED_SESSION", true);
  /// The last step's router choices (kept: no allocation per step).
  std::vector<RouterChoices> routerChoices_;
  std::vector<LogitsBuffer> logitsBuffers_;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_SESSION_H

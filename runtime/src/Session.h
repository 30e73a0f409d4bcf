//===- Session.h - sequences of a model -------------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_SESSION_H
#define MELT_RUNTIME_SESSION_H

#include "Executor.h"

#include <map>

namespace melt {

/// Several sequences of one model, each with its own caches. Every call
/// either succeeds or leaves all sequences as they were.
class Session {
public:
  Session(const Model &model, int64_t maxContext)
      : model_(model), maxContext_(maxContext) {}

  Status addSequence(int32_t &id);
  Status removeSequence(int32_t id);
  /// Appends `tokens` to sequence `id` (a prefill, or a decode step of one
  /// token) and computes the next-token logits. `allLogits`, when given,
  /// receives the logits of every appended token ([n, vocab]).
  Status append(int32_t id, const int32_t *tokens, size_t n,
                std::vector<float> *allLogits = nullptr);
  Status logits(int32_t id, const std::vector<float> *&out) const;
  Status length(int32_t id, int64_t &out) const;
  int64_t maxContext() const { return maxContext_; }
  /// Per-expert load counters of every router, as JSON:
  /// {"routers": [{"gate": NAME, "experts": E, "counts": [...]}, ...]}.
  std::string expertLoadJson() const;
  void resetExpertLoad() { expertLoad_.clear(); }

private:
  struct Sequence {
    int64_t length = 0;
    CacheSet caches;
    std::vector<float> logits;
  };

  const Model &model_;
  int64_t maxContext_;
  std::map<int32_t, Sequence> sequences_;
  ExpertLoad expertLoad_;
  int32_t nextId_ = 0;
};

} // namespace melt

#endif // MELT_RUNTIME_SESSION_H

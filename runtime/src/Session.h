//===- Session.h - sequences of a model -------------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_SESSION_H
#define MELT_RUNTIME_SESSION_H

#include "Executor.h"

#include <map>

namespace melt::rt {

/// Several sequences of one model sharing a paged KV cache of fixed
/// capacity. A step runs tokens of any number of sequences as one batch
/// (prefills and decode steps mixed). Every call either succeeds or leaves
/// all sequences, and the pool, as they were.
class Session {
public:
  Session(const Model &model, int64_t maxContext, int64_t capacityTokens);

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
  Status append(int32_t id, const int32_t *tokens, size_t n,
                std::vector<float> *allLogits = nullptr) {
    Entry entry{id, tokens, n};
    return step(&entry, 1, allLogits);
  }

  Status logits(int32_t id, const std::vector<float> *&out) const;
  Status length(int32_t id, int64_t &out) const;
  int64_t maxContext() const { return maxContext_; }
  int64_t usedPages() const { return pool_.totalPages() - pool_.freePages(); }
  int64_t totalPages() const { return pool_.totalPages(); }
  /// Per-expert load counters of every router, as JSON:
  /// {"routers": [{"gate": NAME, "experts": E, "counts": [...],
  ///               "pairs": [[i, j, times chosen together], ...]}, ...]}.
  std::string expertLoadJson() const;

private:
  struct Geometry {
    int64_t offset, heads, keyDim, valueDim;
  };
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> pages;
    std::map<uint32_t, int64_t> cacheLengths;
    std::vector<float> logits;
  };

  const Model &model_;
  int64_t maxContext_;
  std::map<uint32_t, Geometry> layout_; // cache buffers of @forward
  PagePool pool_;
  std::map<int32_t, Sequence> sequences_;
  int32_t nextId_ = 0;
  ExpertLoad expertLoad_;
};

/// Floats one page holds for every cache of @forward.
int64_t pageFloatsOf(const Model &model);

} // namespace melt::rt

#endif // MELT_RUNTIME_SESSION_H

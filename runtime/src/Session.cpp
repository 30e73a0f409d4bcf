//===- Session.cpp - sequences of a model -----------------------*- C++ -*-===//
#include "Session.h"

#include <set>

using namespace melt;
using namespace melt::rt;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

/// The cache inputs of @forward with their place in a page.
std::map<uint32_t, CacheView> layoutOf(const Model &model, int64_t &floats) {
  const fb::Model &m = model.artifact().model();
  std::map<uint32_t, CacheView> layout;
  floats = 0;
  for (uint32_t id : *model.artifact().function("forward")->inputs()) {
    const fb::Buffer *b = m.buffers()->Get(id);
    if (b->kind() != fb::BufferKind::Cache)
      continue;
    CacheView view;
    view.offset = floats;
    view.heads = b->shape()->Get(0);
    view.keyDim = b->shape()->Get(1);
    view.valueDim = b->shape()->Get(2);
    floats += view.pageFloats();
    layout[id] = view;
  }
  return layout;
}

} // namespace

int64_t melt::rt::pageFloatsOf(const Model &model) {
  int64_t floats = 0;
  layoutOf(model, floats);
  return floats;
}

Session::Session(const Model &model, int64_t maxContext,
                 int64_t capacityTokens)
    : model_(model), maxContext_(maxContext),
      pool_(std::max<int64_t>(pageFloatsOf(model), 1),
            (capacityTokens + kPageTokens - 1) / kPageTokens) {
  int64_t floats = 0;
  for (const auto &[id, view] : layoutOf(model, floats))
    layout_[id] = {view.offset, view.heads, view.keyDim, view.valueDim};
}

Status Session::addSequence(int32_t &id) {
  id = nextId_++;
  sequences_[id];
  return Status::ok();
}

Status Session::removeSequence(int32_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end())
    return invalidArgument("no sequence " + str(id));
  pool_.release(it->second.pages.data(), it->second.pages.size());
  sequences_.erase(it);
  return Status::ok();
}

Status Session::length(int32_t id, int64_t &out) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end())
    return invalidArgument("no sequence " + str(id));
  out = it->second.length;
  return Status::ok();
}

Status Session::logits(int32_t id, const std::vector<float> *&out) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end())
    return invalidArgument("no sequence " + str(id));
  if (it->second.logits.empty())
    return invalidArgument("sequence " + str(id) + " has no tokens yet");
  out = &it->second.logits;
  return Status::ok();
}

Status Session::step(const Entry *entries, size_t n,
                     std::vector<float> *allLogits) {
  if (!entries || n == 0)
    return invalidArgument("an empty batch");
  int64_t vocab = model_.vocabSize();
  std::vector<Sequence *> seqs;
  std::set<int32_t> seen;
  int64_t pagesNeeded = 0;
  for (size_t e = 0; e < n; ++e) {
    const Entry &entry = entries[e];
    auto it = sequences_.find(entry.sequence);
    if (it == sequences_.end())
      return invalidArgument("no sequence " + str(entry.sequence));
    if (!seen.insert(entry.sequence).second)
      return invalidArgument("sequence " + str(entry.sequence) +
                             " is twice in one batch");
    if (!entry.tokens || entry.count == 0)
      return invalidArgument("no tokens to append to sequence " +
                             str(entry.sequence));
    for (size_t i = 0; i < entry.count; ++i)
      if (entry.tokens[i] < 0 || entry.tokens[i] >= vocab)
        return invalidArgument("token " + str(i) + " is " +
                               str(entry.tokens[i]) +
                               ", outside the vocabulary of " + str(vocab));
    Sequence &seq = it->second;
    int64_t count = static_cast<int64_t>(entry.count);
    if (count > maxContext_ - seq.length)
      return {MELT_RESOURCE_EXHAUSTED,
              "sequence " + str(entry.sequence) + " holds " +
                  str(seq.length) + " tokens; " + str(count) +
                  " more exceed the context of " + str(maxContext_)};
    int64_t pages = (seq.length + count + kPageTokens - 1) / kPageTokens;
    pagesNeeded += pages - static_cast<int64_t>(seq.pages.size());
    seqs.push_back(&seq);
  }
  if (pagesNeeded > pool_.freePages())
    return {MELT_RESOURCE_EXHAUSTED,
            "the KV cache is full: the batch needs " + str(pagesNeeded) +
                " more pages of " + str(kPageTokens) + " tokens, " +
                str(pool_.freePages()) + " of " + str(pool_.totalPages()) +
                " are free"};

  // Pages first (all or none), remembered to undo a failure.
  std::vector<size_t> pagesBefore;
  std::vector<std::map<uint32_t, int64_t>> lengthsBefore;
  for (size_t e = 0; e < n; ++e) {
    Sequence &seq = *seqs[e];
    pagesBefore.push_back(seq.pages.size());
    lengthsBefore.push_back(seq.cacheLengths);
    int64_t pages = (seq.length + static_cast<int64_t>(entries[e].count) +
                     kPageTokens - 1) /
                    kPageTokens;
    pool_.allocate(pages - static_cast<int64_t>(seq.pages.size()), seq.pages);
  }
  auto undo = [&] {
    for (size_t e = 0; e < n; ++e) {
      Sequence &seq = *seqs[e];
      pool_.release(seq.pages.data() + pagesBefore[e],
                    seq.pages.size() - pagesBefore[e]);
      seq.pages.resize(pagesBefore[e]);
      seq.cacheLengths = lengthsBefore[e];
    }
  };

  Tensor ids, positions;
  ids.isInt = positions.isInt = true;
  Batch batch;
  batch.segments.push_back(0);
  for (size_t e = 0; e < n; ++e) {
    Sequence &seq = *seqs[e];
    for (size_t i = 0; i < entries[e].count; ++i) {
      ids.ints.push_back(entries[e].tokens[i]);
      positions.ints.push_back(seq.length + static_cast<int64_t>(i));
    }
    batch.segments.push_back(ids.ints.size());
    std::map<uint32_t, CacheView> views;
    for (const auto &[id, g] : layout_) {
      CacheView view;
      view.pool = &pool_;
      view.pages = &seq.pages;
      view.offset = g.offset;
      view.heads = g.heads;
      view.keyDim = g.keyDim;
      view.valueDim = g.valueDim;
      view.length = &seq.cacheLengths[id];
      views[id] = view;
    }
    batch.caches.push_back(std::move(views));
  }
  ids.shape = positions.shape = {static_cast<int64_t>(ids.ints.size())};

  ExpertLoad load;
  std::vector<Tensor> outputs;
  const fb::Function *forward = model_.artifact().function("forward");
  Status status =
      execute(model_, *forward, {ids, positions}, batch, outputs, &load);
  if (!status && (outputs.empty() || outputs[0].rank() != 2 ||
                  outputs[0].dim(0) != ids.shape[0] ||
                  outputs[0].dim(1) != vocab))
    status = invalidArtifact("@forward returned logits of the wrong shape");
  if (status) {
    undo();
    return status;
  }
  const Tensor &logits = outputs[0];
  for (size_t e = 0; e < n; ++e) {
    Sequence &seq = *seqs[e];
    seq.length += entries[e].count;
    auto last = logits.data.begin() + (batch.segments[e + 1] - 1) * vocab;
    seq.logits.assign(last, last + vocab);
  }
  for (auto &[kernel, stats] : load) {
    RouterLoad &total = expertLoad_[kernel];
    total.counts.resize(stats.counts.size());
    for (size_t e = 0; e < stats.counts.size(); ++e)
      total.counts[e] += stats.counts[e];
    for (const auto &[pair, n] : stats.pairs)
      total.pairs[pair] += n;
  }
  if (allLogits)
    *allLogits = logits.data;
  return Status::ok();
}

std::string Session::expertLoadJson() const {
  const fb::Model &m = model_.artifact().model();
  std::string json = "{\"routers\": [";
  bool first = true;
  for (const auto &[kernel, stats] : expertLoad_) {
    const std::vector<uint64_t> &counts = stats.counts;
    const fb::Kernel *k = m.kernels()->Get(kernel);
    const fb::Weight *gate = m.weights()->Get(k->weights()->Get(0));
    json += first ? "\n  " : ",\n  ";
    first = false;
    json += "{\"gate\": \"" + (gate->name() ? gate->name()->str() : "") +
            "\", \"experts\": " + std::to_string(counts.size()) +
            ", \"counts\": [";
    for (size_t e = 0; e < counts.size(); ++e)
      json += (e ? ", " : "") + std::to_string(counts[e]);
    json += "], \"pairs\": [";
    bool firstPair = true;
    for (const auto &[pair, n] : stats.pairs) {
      json += (firstPair ? "[" : ", [") + std::to_string(pair.first) + ", " +
              std::to_string(pair.second) + ", " + std::to_string(n) + "]";
      firstPair = false;
    }
    json += "]}";
  }
  return json + "\n]}\n";
}

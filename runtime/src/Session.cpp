//===- Session.cpp - sequences of a model -----------------------*- C++ -*-===//
#include "Session.h"

#include <set>
#include <system_error>

using namespace melt;
using namespace melt::rt;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

} // namespace

Status Session::create(const DeviceModel &model, int64_t maxContext,
                       int64_t capacityTokens, std::unique_ptr<Session> &out) {
  std::unique_ptr<Session> session(new Session(model, maxContext));
  session->totalPages_ = (capacityTokens + kPageTokens - 1) / kPageTokens;
  if (session->totalPages_ > INT32_MAX / kPageTokens)
    return invalidArgument("a KV cache of " + str(capacityTokens) +
                           " tokens is too large");
  const int64_t rows = session->totalPages_ * kPageTokens;
  // A closed session's caches of as many rows, and the steps recorded over
  // them; one of another size is released before these are allocated.
  if (std::unique_ptr<ClosedSession> closed = model.takeClosedSession();
      closed && closed->cacheRows == rows && session->keepsWhenClosed_) {
    session->caches_ = std::move(closed->caches);
    session->runner_.adoptRecordings(closed->recordings);
  }
  const fb::Model &m = model.model().artifact().model();
  for (uint32_t id : *model.forward().inputs()) {
    const fb::Buffer &b = *m.buffers()->Get(id);
    if (b.kind() != fb::BufferKind::Cache)
      continue;
    int64_t width = cacheRowWidth(b);
    if (width <= 0) {
      session->keepsWhenClosed_ = false;
      return invalidArtifact("buffers[" + str(id) +
                             "]: a cache must be [heads, key, value]");
    }
    if (session->caches_.count(id))
      continue; // the closed session's
    DeviceTensor cache;
    Status s =
        model.device().allocate(model.cacheType(id), {rows, width}, cache);
    if (s) {
      session->keepsWhenClosed_ = false; // out of memory: give all back
      return Status(s.code(), "the KV cache of " + str(capacityTokens) +
                                  " tokens: " + s.message());
    }
    session->caches_[id] = cache;
  }
  for (int64_t p = session->totalPages_ - 1; p >= 0; --p)
    session->freePages_.push_back(int32_t(p));
  out = std::move(session);
  return Status::ok();
}

Session::~Session() {
  joinCounting();
  if (!keepsWhenClosed_ || caches_.empty()) {
    for (auto &[id, cache] : caches_)
      model_.device().release(cache);
    return;
  }
  auto closed = std::make_unique<ClosedSession>(model_.device());
  closed->cacheRows = totalPages_ * kPageTokens;
  closed->caches = std::move(caches_);
  runner_.giveRecordings(closed->recordings);
  model_.keepClosedSession(std::move(closed));
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
  freePages_.insert(freePages_.end(), it->second.pages.begin(),
                    it->second.pages.end());
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

Status Session::logits(int32_t id, const float *&out, size_t &vocab) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end())
    return invalidArgument("no sequence " + str(id));
  if (it->second.pickedOnDevice)
    return invalidArgument("sequence " + str(id) +
                           ": its last step picked its next token on the "
                           "device and kept no logits");
  if (!it->second.logits)
    return invalidArgument("sequence " + str(id) + " has no tokens yet");
  out = it->second.logits->data() + it->second.logitsOffset;
  vocab = size_t(model_.model().vocabSize());
  return Status::ok();
}

Session::LogitsBuffer Session::freeLogitsBuffer() {
  for (const LogitsBuffer &buffer : logitsBuffers_)
    if (buffer.use_count() == 1)
      return buffer;
  logitsBuffers_.push_back(std::make_shared<std::vector<float>>());
  return logitsBuffers_.back();
}

Status Session::step(const Entry *entries, size_t n,
                     std::vector<float> *allLogits) {
  return run(entries, n, allLogits, nullptr);
}

Status Session::stepGreedy(const Entry *entries, size_t n,
                           std::vector<int32_t> &next) {
  DevicePick pick;
  MELT_RETURN_IF_ERROR(run(entries, n, nullptr, &pick));
  next = std::move(pick.tokens);
  return Status::ok();
}

Status Session::generateGreedy(const Entry *entries, size_t n, size_t steps,
                               std::vector<int32_t> &next) {
  if (steps == 0 || steps > size_t(INT32_MAX))
    return invalidArgument("generate: " + str(int64_t(steps)) +
                           " steps (1 or more)");
  for (size_t e = 0; entries && e < n; ++e)
    if (entries[e].count != 1)
      return invalidArgument("generate: sequence " + str(entries[e].sequence) +
                             " is given " + str(int64_t(entries[e].count)) +
                             " tokens; one token a sequence starts it");
  std::vector<Sequence *> seqs;
  std::vector<size_t> pagesBefore;
  MELT_RETURN_IF_ERROR(admit(entries, n, int64_t(steps), seqs, pagesBefore));
  // Steps after the first take their tokens on the device: these are
  // placeholders.
  std::vector<int32_t> placeholder(n, 0);
  std::vector<Entry> later(n);
  for (size_t e = 0; e < n; ++e)
    later[e] = {entries[e].sequence, &placeholder[e], 1};
  std::vector<StepBatch> batches;
  for (size_t s = 0; s < steps; ++s)
    batches.push_back(
        makeBatch(seqs, s == 0 ? entries : later.data(), int64_t(s), false));
  std::vector<std::vector<RouterChoices>> choices;
  Status status = runner_.runGreedySteps(
      batches, caches_, countExpertLoad_ ? &choices : nullptr, next);
  if (status) {
    giveBackPages(seqs, pagesBefore);
    return status;
  }
  for (Sequence *seq : seqs) {
    seq->length += int64_t(steps);
    seq->pickedOnDevice = true;
    seq->logits = nullptr;
  }
  std::vector<RouterChoices> routers;
  for (std::vector<RouterChoices> &step : choices)
    for (RouterChoices &router : step)
      routers.push_back(std::move(router));
  countChoices(std::move(routers));
  return Status::ok();
}

void Session::countChoices(std::vector<RouterChoices> &&choices) {
  size_t chosen = 0;
  for (const RouterChoices &router : choices)
    chosen += router.chosen.size();
  if (chosen < kCountedAsideChoices) {
    for (const RouterChoices &router : choices)
      expertLoad_[router.kernel].add(router);
    return;
  }
  joinCounting();
  auto all = std::make_shared<std::vector<RouterChoices>>(std::move(choices));
  try {
    counting_ = std::async(std::launch::async, [this, all] {
      for (const RouterChoices &router : *all)
        countedAside_[router.kernel].add(router);
    });
  } catch (const std::system_error &) { // no thread to be had: count here
    for (const RouterChoices &router : *all)
      expertLoad_[router.kernel].add(router);
  }
}

void Session::joinCounting() const {
  if (!counting_.valid())
    return;
  counting_.get();
  for (const auto &[kernel, load] : countedAside_)
    expertLoad_[kernel].merge(load);
  countedAside_.clear();
}

Status Session::stepSample(const Entry *entries, size_t n,
                           const SamplingParams &params, uint64_t &state,
                           std::vector<int32_t> &next) {
  MELT_RETURN_IF_ERROR(checkSampling(params, "step_sample"));
  DevicePick pick;
  pick.sampling = &params;
  uint64_t advanced = state;
  if (params.temperature > 0)
    for (size_t e = 0; e < n; ++e)
      pick.draws.push_back(nextDraw(advanced));
  MELT_RETURN_IF_ERROR(run(entries, n, nullptr, &pick));
  state = advanced;
  next = std::move(pick.tokens);
  return Status::ok();
}

Status Session::admit(const Entry *entries, size_t n, int64_t tokensEach,
                      std::vector<Sequence *> &seqs,
                      std::vector<size_t> &pagesBefore) {
  if (!entries || n == 0)
    return invalidArgument("an empty batch");
  int64_t vocab = model_.model().vocabSize();
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
    int64_t count = tokensEach ? tokensEach : int64_t(entry.count);
    if (count > maxContext_ - seq.length)
      return {MELT_RESOURCE_EXHAUSTED,
              "sequence " + str(entry.sequence) + " holds " + str(seq.length) +
                  " tokens; " + str(count) + " more exceed the context of " +
                  str(maxContext_)};
    int64_t pages = (seq.length + count + kPageTokens - 1) / kPageTokens;
    pagesNeeded += pages - static_cast<int64_t>(seq.pages.size());
    seqs.push_back(&seq);
  }
  int64_t freePages = int64_t(freePages_.size());
  if (pagesNeeded > freePages)
    return {MELT_RESOURCE_EXHAUSTED,
            "the KV cache is full: the batch needs " + str(pagesNeeded) +
                " more pages of " + str(kPageTokens) + " tokens, " +
                str(freePages) + " of " + str(totalPages_) + " are free"};

  // Pages (all or none), remembered to undo a failure.
  for (size_t e = 0; e < n; ++e) {
    Sequence &seq = *seqs[e];
    pagesBefore.push_back(seq.pages.size());
    int64_t count = tokensEach ? tokensEach : int64_t(entries[e].count);
    int64_t pages = (seq.length + count + kPageTokens - 1) / kPageTokens;
    while (int64_t(seq.pages.size()) < pages) {
      seq.pages.push_back(freePages_.back());
      freePages_.pop_back();
    }
  }
  return Status::ok();
}

void Session::giveBackPages(const std::vector<Sequence *> &seqs,
                            const std::vector<size_t> &pagesBefore) {
  for (size_t e = 0; e < seqs.size(); ++e) {
    Sequence &seq = *seqs[e];
    freePages_.insert(freePages_.end(), seq.pages.begin() + pagesBefore[e],
                      seq.pages.end());
    seq.pages.resize(pagesBefore[e]);
  }
}

StepBatch Session::makeBatch(const std::vector<Sequence *> &seqs,
                             const Entry *entries, int64_t ahead,
                             bool allLogits) const {
  const size_t n = seqs.size();
  StepBatch batch;
  bool decode = true;
  // The pages each sequence uses in this step (it may hold more, reserved
  // for the steps after it).
  std::vector<int64_t> used(n);
  for (size_t e = 0; e < n; ++e) {
    used[e] = (seqs[e]->length + ahead + int64_t(entries[e].count) +
               kPageTokens - 1) /
              kPageTokens;
    batch.pagesPerSequence = std::max(batch.pagesPerSequence, used[e]);
    decode = decode && entries[e].count == 1;
  }
  if (decode)
    batch.pagesPerSequence = decodeTablePages(batch.pagesPerSequence);
  batch.pages.assign(size_t(n * batch.pagesPerSequence), -1);
  for (size_t e = 0; e < n; ++e) {
    const Sequence &seq = *seqs[e];
    const int64_t length = seq.length + ahead;
    for (size_t i = 0; i < entries[e].count; ++i) {
      batch.tokens.push_back(entries[e].tokens[i]);
      batch.positions.push_back(int32_t(length + int64_t(i)));
      batch.sequences.push_back(int32_t(e));
    }
    std::copy(seq.pages.begin(), seq.pages.begin() + used[e],
              batch.pages.begin() + int64_t(e) * batch.pagesPerSequence);
    batch.lengths.push_back(int32_t(length + int64_t(entries[e].count)));
    if (!allLogits)
      batch.logitRows.push_back(int32_t(batch.tokens.size() - 1));
  }
  if (allLogits)
    for (size_t t = 0; t < batch.tokens.size(); ++t)
      batch.logitRows.push_back(int32_t(t));
  return batch;
}

int64_t Session::decodeTablePages(int64_t used) const {
  int64_t pages = 1, most = (maxContext_ + kPageTokens - 1) / kPageTokens;
  while (pages < used)
    pages *= 2;
  return std::max(used, std::min(pages, most));
}

StepBatch Session::nextDecodeBatch(const std::vector<Sequence *> &seqs,
                                   const Entry *entries) const {
  const size_t n = seqs.size();
  StepBatch batch;
  std::vector<int64_t> lengths(n);
  for (size_t e = 0; e < n; ++e) {
    lengths[e] = seqs[e]->length + int64_t(entries[e].count);
    batch.pagesPerSequence =
        std::max(batch.pagesPerSequence,
                 (lengths[e] + 1 + kPageTokens - 1) / kPageTokens);
  }
  batch.pagesPerSequence = decodeTablePages(batch.pagesPerSequence);
  batch.pages.assign(size_t(n * batch.pagesPerSequence), -1);
  for (size_t e = 0; e < n; ++e) {
    const std::vector<int32_t> &pages = seqs[e]->pages;
    std::copy(pages.begin(),
              pages.begin() + std::min<int64_t>(int64_t(pages.size()),
                                                batch.pagesPerSequence),
              batch.pages.begin() + int64_t(e) * batch.pagesPerSequence);
    batch.tokens.push_back(0);
    batch.positions.push_back(int32_t(lengths[e]));
    batch.sequences.push_back(int32_t(e));
    batch.lengths.push_back(int32_t(lengths[e] + 1));
    batch.logitRows.push_back(int32_t(e));
  }
  return batch;
}

Status Session::run(const Entry *entries, size_t n,
                    std::vector<float> *allLogits, DevicePick *pick) {
  int64_t vocab = model_.model().vocabSize();
  std::vector<Sequence *> seqs;
  std::vector<size_t> pagesBefore;
  MELT_RETURN_IF_ERROR(admit(entries, n, 0, seqs, pagesBefore));
  auto undo = [&] { giveBackPages(seqs, pagesBefore); };
  StepBatch batch = makeBatch(seqs, entries, 0, allLogits != nullptr);

  std::vector<RouterChoices> &choices = routerChoices_;
  // A step that picks its tokens on the device downloads no logits: no
  // buffer to hold them.
  LogitsBuffer buffer = pick ? nullptr : freeLogitsBuffer();
  std::vector<float> unused;
  std::vector<float> &logits = buffer ? *buffer : unused;
  // The decode step expected next, recorded while this one runs (a
  // context full after this step has none).
  StepBatch next;
  bool recordNext = recordAhead_;
  for (size_t e = 0; e < n && recordNext; ++e)
    recordNext = seqs[e]->length + int64_t(entries[e].count) < maxContext_;
  if (recordNext)
    next = nextDecodeBatch(seqs, entries);
  Status status =
      runner_.run(batch, caches_, logits, countExpertLoad_ ? &choices : nullptr,
                  pick, recordNext ? &next : nullptr);
  if (!status && !pick &&
      logits.size() != batch.logitRows.size() * static_cast<size_t>(vocab))
    status = invalidArtifact("@forward returned logits of the wrong shape");
  if (!status && pick && pick->tokens.size() != n)
    status = invalidArtifact("@forward returned logits of the wrong shape");
  if (status) {
    undo();
    return status;
  }
  int64_t row = 0;
  for (size_t e = 0; e < n; ++e) {
    Sequence &seq = *seqs[e];
    seq.length += entries[e].count;
    row += allLogits ? int64_t(entries[e].count) : 1;
    seq.pickedOnDevice = pick != nullptr;
    seq.logits = pick ? nullptr : buffer;
    seq.logitsOffset = size_t((row - 1) * vocab);
  }
  if (countExpertLoad_)
    countChoices(std::move(choices));
  if (allLogits)
    *allLogits = logits;
  return Status::ok();
}

std::string Session::expertLoadJson() const {
  joinCounting();
  const fb::Model &m = model_.model().artifact().model();
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
    const size_t experts = counts.size();
    for (size_t i = 0; i < experts; ++i)
      for (size_t j = i; j < experts; ++j) {
        uint64_t n = stats.pairs[i * experts + j];
        if (n == 0)
          continue;
        json += (firstPair ? "[" : ", [") + std::to_string(i) + ", " +
                std::to_string(j) + ", " + std::to_string(n) + "]";
        firstPair = false;
      }
    json += "]}";
  }
  return json + "\n]}\n";
}

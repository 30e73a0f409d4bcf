//===- Session.cpp - sequences of a model -----------------------*- C++ -*-===//
#include "Session.h"

using namespace melt;

namespace {
std::string str(int64_t v) { return std::to_string(v); }
} // namespace

Status Session::addSequence(int32_t &id) {
  id = nextId_++;
  sequences_[id];
  return Status::ok();
}

Status Session::removeSequence(int32_t id) {
  if (!sequences_.erase(id))
    return invalidArgument("no sequence " + str(id));
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

Status Session::append(int32_t id, const int32_t *tokens, size_t n,
                       std::vector<float> *allLogits) {
  auto it = sequences_.find(id);
  if (it == sequences_.end())
    return invalidArgument("no sequence " + str(id));
  if (!tokens || n == 0)
    return invalidArgument("no tokens to append");
  Sequence &seq = it->second;
  int64_t vocab = model_.vocabSize();
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      return invalidArgument("token " + str(i) + " is " + str(tokens[i]) +
                             ", outside the vocabulary of " + str(vocab));
  if (static_cast<int64_t>(n) > maxContext_ - seq.length)
    return {MELT_RESOURCE_EXHAUSTED,
            "sequence " + str(id) + " holds " + str(seq.length) +
                " tokens; " + str(n) + " more exceed the context of " +
                str(maxContext_)};

  Tensor ids, positions;
  ids.isInt = positions.isInt = true;
  ids.shape = positions.shape = {static_cast<int64_t>(n)};
  for (size_t i = 0; i < n; ++i) {
    ids.ints.push_back(tokens[i]);
    positions.ints.push_back(seq.length + static_cast<int64_t>(i));
  }
  // Run on a copy of the caches so that a failure changes nothing.
  CacheSet caches = seq.caches;
  ExpertLoad load;
  std::vector<Tensor> outputs;
  const fb::Function *forward = model_.artifact().function("forward");
  MELT_RETURN_IF_ERROR(execute(model_, *forward, {ids, positions}, caches,
                               maxContext_, outputs, &load));
  const Tensor &logits = outputs.at(0);
  if (logits.rank() != 2 || logits.dim(0) != static_cast<int64_t>(n) ||
      logits.dim(1) != vocab)
    return invalidArtifact("@forward returned logits of the wrong shape");
  seq.caches = std::move(caches);
  for (auto &[kernel, counts] : load) {
    std::vector<uint64_t> &total = expertLoad_[kernel];
    total.resize(counts.size());
    for (size_t e = 0; e < counts.size(); ++e)
      total[e] += counts[e];
  }
  seq.length += n;
  seq.logits.assign(logits.data.end() - vocab, logits.data.end());
  if (allLogits)
    *allLogits = logits.data;
  return Status::ok();
}

std::string Session::expertLoadJson() const {
  const fb::Model &m = model_.artifact().model();
  std::string json = "{\"routers\": [";
  bool first = true;
  for (const auto &[kernel, counts] : expertLoad_) {
    const fb::Kernel *k = m.kernels()->Get(kernel);
    const fb::Weight *gate = m.weights()->Get(k->weights()->Get(0));
    json += first ? "\n  " : ",\n  ";
    first = false;
    json += "{\"gate\": \"" + (gate->name() ? gate->name()->str() : "") +
            "\", \"experts\": " + std::to_string(counts.size()) +
            ", \"counts\": [";
    for (size_t e = 0; e < counts.size(); ++e)
      json += (e ? ", " : "") + std::to_string(counts[e]);
    json += "]}";
  }
  return json + "\n]}\n";
}

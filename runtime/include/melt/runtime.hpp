//===- melt/runtime.hpp - a thin C++ wrapper of the C API -------*- C++ -*-===//
//
// RAII handles over melt/runtime.h. Failures throw melt::Error (status and
// message); the C API underneath never throws. Header-only.
//
//   melt::Model model("model.melt", "checkpoint/");
//   melt::Session session(model, {4096, 65536});
//   int seq = session.addSequence();
//   session.append(seq, {1, 2, 3});
//   int next = melt::sampleGreedy(session.logits(seq));
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_HPP
#define MELT_RUNTIME_HPP

#include "melt/runtime.h"

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace melt {

class Error : public std::runtime_error {
public:
  Error(melt_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  melt_status status() const { return status_; }

private:
  melt_status status_;
};

inline void check(melt_status status) {
  if (status != MELT_OK)
    throw Error(status, melt_last_error());
}

/// A loaded model; move-only.
class Model {
public:
  Model(const std::string &artifact, const std::string &checkpoint = "") {
    check(melt_model_load(artifact.c_str(),
                          checkpoint.empty() ? nullptr : checkpoint.c_str(),
                          &handle_));
  }
  Model(Model &&other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)) {}
  Model &operator=(Model &&other) noexcept {
    std::swap(handle_, other.handle_);
    return *this;
  }
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;
  ~Model() {
    if (handle_)
      melt_model_destroy(handle_);
  }

  long long vocabSize() const { return melt_model_vocab_size(handle_); }
  /// Releases what a closed session left with the model (its KV cache and
  /// recorded steps: melt_model_release_closed_session).
  void releaseClosedSession() {
    check(melt_model_release_closed_session(handle_));
  }
  melt_model *get() const { return handle_; }

private:
  melt_model *handle_ = nullptr;
};

/// Sequences of a model with a shared paged KV cache; move-only. Destroy
/// sessions before their model.
class Session {
public:
  Session(Model &model, melt_session_options options) {
    check(melt_session_create(model.get(), &options, &handle_));
  }
  Session(Session &&other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)) {}
  Session &operator=(Session &&other) noexcept {
    std::swap(handle_, other.handle_);
    return *this;
  }
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;
  ~Session() {
    if (handle_)
      melt_session_destroy(handle_);
  }

  int addSequence() {
    int id = 0;
    check(melt_session_add_sequence(handle_, &id));
    return id;
  }
  void removeSequence(int id) {
    check(melt_session_remove_sequence(handle_, id));
  }
  void append(int sequence, const std::vector<int> &tokens) {
    check(melt_session_append(handle_, sequence, tokens.data(), tokens.size(),
                              nullptr));
  }
  void step(const std::vector<melt_batch_entry> &batch) {
    check(melt_session_step(handle_, batch.data(), batch.size()));
  }
  /// melt_session_step_greedy: each entry's greedy next token, picked on the
  /// model's device (the logits stay there).
  std::vector<int> stepGreedy(const std::vector<melt_batch_entry> &batch) {
    std::vector<int> next(batch.size());
    check(melt_session_step_greedy(handle_, batch.data(), batch.size(),
                                   next.data()));
    return next;
  }
  /// melt_session_generate_greedy: `steps` greedy tokens of each entry's
  /// sequence, step-major ([steps][entries]), picked and fed back on the
  /// model's device.
  std::vector<int> generateGreedy(const std::vector<melt_batch_entry> &batch,
                                  size_t steps) {
    std::vector<int> tokens(batch.size() * steps);
    check(melt_session_generate_greedy(handle_, batch.data(), batch.size(),
                                       steps, tokens.data()));
    return tokens;
  }
  /// melt_session_step_sample: each entry's next token drawn with
  /// `params` from `state` (advanced once per entry), on the model's device.
  std::vector<int> stepSample(const std::vector<melt_batch_entry> &batch,
                              const melt_sampling &params,
                              unsigned long long &state) {
    std::vector<int> next(batch.size());
    check(melt_session_step_sample(handle_, batch.data(), batch.size(),
                                   &params, &state, next.data()));
    return next;
  }
  std::vector<float> logits(int sequence) const {
    const float *values = nullptr;
    size_t n = 0;
    check(melt_session_logits(handle_, sequence, &values, &n));
    return std::vector<float>(values, values + n);
  }
  std::string expertLoadJson() const {
    size_t size = 0;
    check(melt_session_expert_load_json(handle_, nullptr, 0, &size));
    std::string json(size, '\0');
    check(melt_session_expert_load_json(handle_, json.data(), size, &size));
    json.resize(size - 1);
    return json;
  }
  melt_session *get() const { return handle_; }

private:
  melt_session *handle_ = nullptr;
};

inline int sampleGreedy(const std::vector<float> &logits) {
  int token = 0;
  check(melt_sample_greedy(logits.data(), logits.size(), &token));
  return token;
}

inline int sample(const std::vector<float> &logits, const melt_sampling &params,
                  unsigned long long &state) {
  int token = 0;
  check(melt_sample(logits.data(), logits.size(), &params, &state, &token));
  return token;
}

} // namespace melt

#endif // MELT_RUNTIME_HPP

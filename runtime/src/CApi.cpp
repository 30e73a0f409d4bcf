//===- CApi.cpp - the C API over Model and Session --------------*- C++ -*-===//
#include "Greedy.h"
#include "Model.h"
#include "Session.h"
#include "StepBytes.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <new>
#include <set>

static_assert(melt::rt::kPageTokens == MELT_KV_PAGE_TOKENS,
              "the C API's page size is the runtime's");

using namespace melt;
using namespace melt::rt;

struct melt_model {
  std::unique_ptr<Model> model;
  std::unique_ptr<Device> device;
  /// The weights in the device's memory, shared by the sessions.
  std::unique_ptr<DeviceModel> onDevice;
  /// A GPU runs one stream: its sessions take turns.
  std::mutex deviceMutex;
  bool serialized = false;
  /// Live sessions of this model (guarded by handlesMutex).
  int sessions = 0;
};
struct melt_session {
  melt_model *owner;
  std::unique_ptr<Session> session;
};

namespace {

thread_local std::string lastError;

/// Live handles: a stale or foreign pointer is reported, not dereferenced.
std::mutex handlesMutex;
std::set<const void *> liveHandles;

bool isLive(const void *handle) {
  std::lock_guard<std::mutex> lock(handlesMutex);
  return handle && liveHandles.count(handle);
}

melt_status fail(melt_status code, std::string message) {
  lastError = std::move(message);
  return code;
}

melt_status report(const Status &status) {
  if (status.isOk()) {
    lastError.clear();
    return MELT_OK;
  }
  return fail(status.code(), status.message());
}

/// Runs `body`, turning anything thrown (std::bad_alloc above all) into a
/// status: nothing crosses the C boundary.
template <typename F> melt_status guarded(F body) {
  try {
    return body();
  } catch (const std::bad_alloc &) {
    return fail(MELT_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception &e) {
    return fail(MELT_INTERNAL, e.what());
  }
}

/// Sessions of a model on a GPU take turns on its stream (so do the
/// calls that create, close or release their state there).
std::unique_lock<std::mutex> takeTurn(melt_model *model) {
  return model->serialized ? std::unique_lock<std::mutex>(model->deviceMutex)
                           : std::unique_lock<std::mutex>();
}
std::unique_lock<std::mutex> takeTurn(melt_session *session) {
  return takeTurn(session->owner);
}

/// A string of a live model, held for the caller until this thread's next
/// call for the same getter ("" for an invalid handle).
template <typename Get>
const char *modelString(const melt_model *model, Get get) {
  static thread_local std::string held;
  if (!isLive(model))
    return "";
  held = get(*model);
  return held.c_str();
}

} // namespace

extern "C" {

const char *melt_last_error(void) { return lastError.c_str(); }

namespace {

/// Loads a model for `deviceName` (its weights from `checkpoint`, or
/// seeded random ones) and imports them into the device.
melt_status loadModel(const char *what, const char *artifactPath,
                      const std::vector<uint8_t> *bytes, const char *checkpoint,
                      const uint64_t *randomSeed, const char *deviceName,
                      melt_model **out) {
  if ((!artifactPath && !bytes) || !out)
    return fail(MELT_INVALID_ARGUMENT,
                std::string(what) + ": null artifact or result");
  *out = nullptr;
  std::string device = deviceName && *deviceName ? deviceName : "cpu";
  // Weights for another device are uploaded from their host values.
  bool keepHostData = device != "cpu";
  return guarded([&] {
    auto handle = std::make_unique<melt_model>();
    Status status = openDevice(device, handle->device);
    if (status.isOk()) {
      if (randomSeed)
        status = Model::loadRandom(artifactPath, *randomSeed, handle->model);
      else if (bytes) {
        Artifact parsed;
        status = Artifact::fromBytes(*bytes, "<memory>", parsed);
        if (status.isOk())
          status = Model::fromArtifact(std::move(parsed), checkpoint,
                                       handle->model, keepHostData);
      } else
        status =
            Model::load(artifactPath, checkpoint, handle->model, keepHostData);
    }
    if (status.isOk())
      status = DeviceModel::create(*handle->model, *handle->device,
                                   handle->onDevice);
    if (status)
      return report(status);
    handle->serialized = device != "cpu";
    std::lock_guard<std::mutex> lock(handlesMutex);
    liveHandles.insert(handle.get());
    *out = handle.release();
    return report(Status::ok());
  });
}

} // namespace

melt_status melt_model_load(const char *artifactPath, const char *checkpoint,
                            melt_model **out) {
  return loadModel("melt_model_load", artifactPath, nullptr,
                   checkpoint ? checkpoint : "", nullptr, "cpu", out);
}

melt_status melt_model_load_on(const char *artifactPath, const char *checkpoint,
                               const char *device, melt_model **out) {
  return loadModel("melt_model_load_on", artifactPath, nullptr,
                   checkpoint ? checkpoint : "", nullptr, device, out);
}

melt_status melt_model_load_random(const char *artifactPath,
                                   unsigned long long seed, const char *device,
                                   melt_model **out) {
  uint64_t value = seed;
  return loadModel("melt_model_load_random", artifactPath, nullptr, "", &value,
                   device, out);
}

melt_status melt_model_load_from_memory(const void *artifact, size_t size,
                                        const char *checkpoint,
                                        melt_model **out) {
  if (!artifact || !out)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_model_load_from_memory: null artifact or result");
  return guarded([&] {
    const auto *bytes = static_cast<const uint8_t *>(artifact);
    std::vector<uint8_t> copy(bytes, bytes + size);
    return loadModel("melt_model_load_from_memory", nullptr, &copy,
                     checkpoint ? checkpoint : "", nullptr, "cpu", out);
  });
}

const char *melt_model_device(const melt_model *model) {
  return modelString(model,
                     [](const melt_model &m) { return m.device->name(); });
}

const char *melt_model_device_description(const melt_model *model) {
  return modelString(
      model, [](const melt_model &m) { return m.device->description(); });
}

const char *melt_model_target(const melt_model *model) {
  return modelString(
      model, [](const melt_model &m) { return m.model->artifact().target(); });
}

melt_status melt_model_destroy(melt_model *model) {
  {
    std::lock_guard<std::mutex> lock(handlesMutex);
    if (!model || !liveHandles.count(model))
      return fail(MELT_INVALID_ARGUMENT,
                  "melt_model_destroy: not a live model handle");
    if (model->sessions > 0)
      return fail(MELT_INVALID_ARGUMENT,
                  "melt_model_destroy: the model still has " +
                      std::to_string(model->sessions) +
                      " session(s); destroy them first");
    liveHandles.erase(model);
  }
  delete model;
  return report(Status::ok());
}

melt_status melt_model_release_closed_session(melt_model *model) {
  if (!isLive(model))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_model_release_closed_session: not a live model handle");
  return guarded([&] {
    std::unique_lock<std::mutex> turn = takeTurn(model);
    model->onDevice->takeClosedSession().reset();
    return report(Status::ok());
  });
}

long long melt_model_vocab_size(const melt_model *model) {
  return isLive(model) ? model->model->vocabSize() : 0;
}

melt_status melt_model_decode_weight_bytes(const melt_model *model,
                                           long long *bytes) {
  if (!isLive(model) || !bytes)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_model_decode_weight_bytes: invalid model or result");
  *bytes =
      static_cast<long long>(decodeStepWeightBytes(model->model->artifact()));
  return report(Status::ok());
}

melt_status melt_model_copy_bandwidth(melt_model *model,
                                      double *gigabytes_per_second) {
  if (!isLive(model) || !gigabytes_per_second)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_model_copy_bandwidth: invalid model or result");
  *gigabytes_per_second = 0;
  return guarded([&] {
    auto turn = takeTurn(model);
    return report(model->device->measureCopyBandwidth(*gigabytes_per_second));
  });
}

melt_status melt_session_create(melt_model *model,
                                const melt_session_options *options,
                                melt_session **out) {
  if (!out)
    return fail(MELT_INVALID_ARGUMENT, "melt_session_create: null result");
  *out = nullptr;
  if (!isLive(model))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_create: not a live model handle");
  if (!options)
    return fail(MELT_INVALID_ARGUMENT, "melt_session_create: null options");
  long long maxContext = options->max_context;
  long long capacity = options->kv_capacity_tokens;
  if (maxContext <= 0 || maxContext > (1ll << 31))
    return fail(MELT_INVALID_ARGUMENT, "melt_session_create: max_context " +
                                           std::to_string(maxContext) +
                                           " is out of range");
  if (capacity < 0 || capacity > (1ll << 40))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_create: kv_capacity_tokens " +
                    std::to_string(capacity) + " is out of range");
  if (capacity == 0)
    capacity = maxContext;
  return guarded([&] {
    auto handle = std::make_unique<melt_session>();
    handle->owner = model;
    std::unique_lock<std::mutex> turn = takeTurn(model);
    Status status = Session::create(*model->onDevice, maxContext, capacity,
                                    handle->session);
    if (turn.owns_lock())
      turn.unlock();
    if (status)
      return report(status);
    std::lock_guard<std::mutex> lock(handlesMutex);
    liveHandles.insert(handle.get());
    ++model->sessions;
    *out = handle.release();
    return report(Status::ok());
  });
}

melt_status melt_session_destroy(melt_session *session) {
  {
    std::lock_guard<std::mutex> lock(handlesMutex);
    if (!session || !liveHandles.erase(session))
      return fail(MELT_INVALID_ARGUMENT,
                  "melt_session_destroy: not a live session handle");
    --session->owner->sessions;
  }
  {
    // Its caches and recordings go back to the device, or to the model for
    // the next session (which may release the one kept before).
    std::unique_lock<std::mutex> turn = takeTurn(session);
    delete session;
  }
  return report(Status::ok());
}

melt_status melt_session_add_sequence(melt_session *session, int *sequence) {
  if (!isLive(session) || !sequence)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_add_sequence: invalid session or result");
  return guarded([&] {
    int32_t id = 0;
    Status status = session->session->addSequence(id);
    *sequence = id;
    return report(status);
  });
}

melt_status melt_session_remove_sequence(melt_session *session, int sequence) {
  if (!isLive(session))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_remove_sequence: not a live session handle");
  return guarded(
      [&] { return report(session->session->removeSequence(sequence)); });
}

melt_status melt_session_append(melt_session *session, int sequence,
                                const int *tokens, size_t n, float *allLogits) {
  if (!isLive(session))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_append: not a live session handle");
  if (!tokens && n)
    return fail(MELT_INVALID_ARGUMENT, "melt_session_append: null tokens");
  return guarded([&] {
    std::vector<float> all;
    auto turn = takeTurn(session);
    Status status = session->session->append(
        sequence, reinterpret_cast<const int32_t *>(tokens), n,
        allLogits ? &all : nullptr);
    if (status.isOk() && allLogits)
      std::memcpy(allLogits, all.data(), all.size() * sizeof(float));
    return report(status);
  });
}

/// The C sampling parameters as the runtime takes them.
static SamplingParams samplingParams(const melt_sampling &p) {
  SamplingParams out;
  out.temperature = p.temperature;
  out.topK = p.top_k;
  out.topP = p.top_p;
  return out;
}

/// The C batch as the session takes it.
static std::vector<Session::Entry>
sessionEntries(const melt_batch_entry *entries, size_t n) {
  std::vector<Session::Entry> batch;
  for (size_t i = 0; i < n; ++i)
    batch.push_back({entries[i].sequence,
                     reinterpret_cast<const int32_t *>(entries[i].tokens),
                     entries[i].n_tokens});
  return batch;
}

melt_status melt_session_step(melt_session *session,
                              const melt_batch_entry *entries, size_t n) {
  if (!isLive(session))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_step: not a live session handle");
  if (!entries || n == 0)
    return fail(MELT_INVALID_ARGUMENT, "melt_session_step: empty batch");
  return guarded([&] {
    std::vector<Session::Entry> batch = sessionEntries(entries, n);
    auto turn = takeTurn(session);
    return report(session->session->step(batch.data(), batch.size()));
  });
}

melt_status melt_session_step_greedy(melt_session *session,
                                     const melt_batch_entry *entries, size_t n,
                                     int *next_tokens) {
  if (!isLive(session))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_step_greedy: not a live session handle");
  if (!entries || n == 0 || !next_tokens)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_step_greedy: empty batch or null result");
  return guarded([&] {
    std::vector<Session::Entry> batch = sessionEntries(entries, n);
    std::vector<int32_t> next;
    auto turn = takeTurn(session);
    Status status = session->session->stepGreedy(batch.data(), n, next);
    if (!status)
      for (size_t i = 0; i < n; ++i)
        next_tokens[i] = next[i];
    return report(status);
  });
}

melt_status melt_session_generate_greedy(melt_session *session,
                                         const melt_batch_entry *entries,
                                         size_t n, size_t steps, int *tokens) {
  if (!isLive(session))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_generate_greedy: not a live session handle");
  if (!entries || n == 0 || !tokens)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_generate_greedy: empty batch or null result");
  return guarded([&] {
    std::vector<Session::Entry> batch = sessionEntries(entries, n);
    std::vector<int32_t> next;
    auto turn = takeTurn(session);
    Status status =
        session->session->generateGreedy(batch.data(), n, steps, next);
    if (!status)
      std::copy(next.begin(), next.end(), tokens);
    return report(status);
  });
}

melt_status melt_session_step_sample(melt_session *session,
                                     const melt_batch_entry *entries, size_t n,
                                     const melt_sampling *params,
                                     unsigned long long *state,
                                     int *next_tokens) {
  if (!isLive(session))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_step_sample: not a live session handle");
  if (!entries || n == 0 || !params || !state || !next_tokens)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_step_sample: empty batch or null parameters, "
                "state or result");
  return guarded([&] {
    std::vector<Session::Entry> batch = sessionEntries(entries, n);
    std::vector<int32_t> next;
    uint64_t draws = *state;
    auto turn = takeTurn(session);
    Status status = session->session->stepSample(
        batch.data(), n, samplingParams(*params), draws, next);
    if (!status) {
      *state = draws;
      for (size_t i = 0; i < n; ++i)
        next_tokens[i] = next[i];
    }
    return report(status);
  });
}

melt_status melt_session_kv_pages(melt_session *session, long long *used,
                                  long long *total) {
  if (!isLive(session) || !used || !total)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_kv_pages: invalid session or result");
  *used = session->session->usedPages();
  *total = session->session->totalPages();
  return report(Status::ok());
}

melt_status melt_session_kv_bytes(melt_session *session, long long *total,
                                  long long *per_page) {
  if (!isLive(session) || !total || !per_page)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_kv_bytes: invalid session or result");
  *total = (long long)session->session->cacheBytes();
  const int64_t pages = session->session->totalPages();
  *per_page = pages > 0 ? *total / pages : 0;
  return report(Status::ok());
}

melt_status melt_session_logits(melt_session *session, int sequence,
                                const float **logits, size_t *vocab) {
  if (!isLive(session) || !logits || !vocab)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_logits: invalid session or result");
  const float *values = nullptr;
  size_t count = 0;
  Status status = session->session->logits(sequence, values, count);
  if (status)
    return report(status);
  *logits = values;
  *vocab = count;
  return report(Status::ok());
}

melt_status melt_session_expert_load_json(melt_session *session, char *buffer,
                                          size_t capacity, size_t *size) {
  if (!isLive(session) || !size || (capacity && !buffer))
    return fail(MELT_INVALID_ARGUMENT,
                "melt_session_expert_load_json: invalid session or buffer");
  return guarded([&] {
    std::string json = session->session->expertLoadJson();
    *size = json.size() + 1;
    if (capacity) {
      size_t n = std::min(capacity - 1, json.size());
      std::memcpy(buffer, json.data(), n);
      buffer[n] = '\0';
    }
    return report(Status::ok());
  });
}

melt_status melt_sample_greedy(const float *logits, size_t n, int *token) {
  if (!logits || n == 0 || !token)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_sample_greedy: empty logits or null result");
  *token = static_cast<int>(greedyIndex(logits, n));
  return report(Status::ok());
}

melt_status melt_sample(const float *logits, size_t n,
                        const melt_sampling *params, unsigned long long *state,
                        int *token) {
  if (!logits || n == 0 || !params || !state || !token)
    return fail(MELT_INVALID_ARGUMENT,
                "melt_sample: empty logits or null parameters, state or "
                "result");
  SamplingParams sampling = samplingParams(*params);
  if (Status bad = checkSampling(sampling, "melt_sample"))
    return report(bad);
  if (sampling.temperature == 0.0f)
    return melt_sample_greedy(logits, n, token);
  return guarded([&] {
    uint64_t draws = *state;
    uint64_t draw = nextDraw(draws);
    *state = draws;
    *token = sampleToken(logits, n, sampling, draw);
    return report(Status::ok());
  });
}

} // extern "C"

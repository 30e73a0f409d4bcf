// Sessions of the C API on every present device (melt_model_load_on), on
// the compiled golden models of the environment: a batch of two sequences
// (prefills of different lengths in one step, then decode steps of both)
// against the CPU session run one sequence at a time (which matches
// transformers, test/unit/GoldenLogitsTest). The models come from
//   MELT_TEST_MODELS="ARTIFACT:CHECKPOINT[:TOLERANCE];..." (';' or '|'
//   between them; the tolerance, of the logit range, defaults to the FP32
//   bound 1e-3: models compiled for bf16 or FP8 policies need more) or
//   MELT_TEST_ARTIFACT and MELT_TEST_CHECKPOINT (test.sh and ctest set
//   these).
#include "Device.h"
#include "Session.h"
#include "melt/runtime.h"

#include "DeviceTestNames.h"
#include "ModelFixture.h"
#include "TestModels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace melt::rt;

namespace {

/// max |a - b| over the range of b.
double errorOfRange(const std::vector<float> &a, const float *b, size_t n) {
  float lo = *std::min_element(b, b + n), hi = *std::max_element(b, b + n);
  double worst = 0;
  for (size_t i = 0; i < n; ++i)
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst / std::max(1e-30, double(hi - lo));
}

/// A model and a session of it, destroyed together.
struct Loaded {
  melt_model *model = nullptr;
  melt_session *session = nullptr;
  ~Loaded() {
    if (session)
      melt_session_destroy(session);
    if (model)
      melt_model_destroy(model);
  }
  std::vector<float> logits(int sequence) const {
    const float *values = nullptr;
    size_t n = 0;
    EXPECT_EQ(melt_session_logits(session, sequence, &values, &n), MELT_OK)
        << melt_last_error();
    return values ? std::vector<float>(values, values + n)
                  : std::vector<float>();
  }
};

void open(const Compiled &c, const std::string &device, long long context,
          long long capacity, Loaded &out) {
  ASSERT_EQ(melt_model_load_on(c.artifact.c_str(), c.checkpoint.c_str(),
                               device.c_str(), &out.model),
            MELT_OK)
      << c.artifact << " on " << device << ": " << melt_last_error();
  melt_session_options options{context, capacity};
  ASSERT_EQ(melt_session_create(out.model, &options, &out.session), MELT_OK)
      << melt_last_error();
}

int argmax(const std::vector<float> &v) {
  return int(std::max_element(v.begin(), v.end()) - v.begin());
}

class SessionOnDevice : public ::testing::TestWithParam<std::string> {};

TEST_P(SessionOnDevice, BatchMatchesTheCpuSequenceBySequence) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  for (const Compiled &c : models) {
    Loaded device, cpu;
    open(c, GetParam(), 128, 3 * MELT_KV_PAGE_TOKENS, device);
    open(c, "cpu", 128, 3 * MELT_KV_PAGE_TOKENS, cpu);
    if (HasFatalFailure())
      return;
    EXPECT_EQ(std::string(melt_model_device(device.model)), GetParam());
    const size_t vocab = size_t(melt_model_vocab_size(cpu.model));
    // Two sequences; their pages interleave as they grow (a prefill of 70
    // crosses a page).
    std::vector<std::vector<int>> tokens = {{1,   17, 42, 99, 3,  250, 7,
                                             128, 5,  6,  9,  11, 12,  13,
                                             14,  15, 16, 18, 19, 20},
                                            {200, 2, 77, 31, 8}};
    for (int i = 0; i < 50; ++i)
      tokens[0].push_back(i * 37 % 250 + 1);
    int ids[2], ref[2];
    for (int i = 0; i < 2; ++i) {
      ASSERT_EQ(melt_session_add_sequence(device.session, &ids[i]), MELT_OK);
      ASSERT_EQ(melt_session_add_sequence(cpu.session, &ref[i]), MELT_OK);
    }
    double worst = 0;
    std::string perStep; // each step's difference, to tell prefill from decode
    for (int step = 0; step < 9; ++step) {
      double stepWorst = 0;
      melt_batch_entry batch[2];
      for (int i = 0; i < 2; ++i) {
        batch[i] = {ids[i], tokens[i].data(), tokens[i].size()};
        ASSERT_EQ(melt_session_append(cpu.session, ref[i], tokens[i].data(),
                                      tokens[i].size(), nullptr),
                  MELT_OK)
            << melt_last_error();
      }
      ASSERT_EQ(melt_session_step(device.session, batch, 2), MELT_OK)
          << c.artifact << " step " << step << ": " << melt_last_error();
      for (int i = 0; i < 2; ++i) {
        std::vector<float> got = device.logits(ids[i]),
                           want = cpu.logits(ref[i]);
        ASSERT_EQ(got.size(), vocab);
        ASSERT_EQ(want.size(), vocab);
        stepWorst = std::max(stepWorst, errorOfRange(got, want.data(), vocab));
        // Greedy, from the device's logits.
        tokens[i] = {argmax(got)};
      }
      worst = std::max(worst, stepWorst);
      char figure[16];
      std::snprintf(figure, sizeof figure, "%s%.2g", step ? " " : "",
                    stepWorst);
      perStep += figure;
    }
    long long used = 0, total = 0;
    ASSERT_EQ(melt_session_kv_pages(device.session, &used, &total), MELT_OK);
    EXPECT_EQ(used, 2 + 1); // 78 and 13 tokens
    std::printf("%s on %s: a batch of 2 (prefills 70 and 5, 8 decode "
                "steps), max abs logit difference %.3g of the range from "
                "the CPU one sequence at a time (by step: %s)\n",
                c.artifact.c_str(), GetParam().c_str(), worst, perStep.c_str());
    // FP32 models: different summation orders and batch shapes (and
    // absorbed vs decompressed MLA) within the FP32 bound against
    // transformers; narrower policies as given.
    EXPECT_LE(worst, c.tolerance) << c.artifact;
  }
}

TEST_P(SessionOnDevice, FullCacheAndBadTokensAreClearErrors) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  Loaded loaded;
  open(models[0], GetParam(), 128, 64, loaded); // one page
  if (HasFatalFailure())
    return;
  int id = 0;
  ASSERT_EQ(melt_session_add_sequence(loaded.session, &id), MELT_OK);
  std::vector<int> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  std::vector<int> sixty(60);
  for (size_t i = 0; i < sixty.size(); ++i)
    sixty[i] = int(i % 10) + 1;
  ASSERT_EQ(melt_session_append(loaded.session, id, sixty.data(), 60, nullptr),
            MELT_OK)
      << melt_last_error();
  std::vector<float> before = loaded.logits(id);
  EXPECT_EQ(melt_session_append(loaded.session, id, ten.data(), 10, nullptr),
            MELT_RESOURCE_EXHAUSTED);
  EXPECT_NE(std::string(melt_last_error()).find("the KV cache is full"),
            std::string::npos)
      << melt_last_error();
  int bad = 1 << 30;
  EXPECT_EQ(melt_session_append(loaded.session, id, &bad, 1, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("outside the vocabulary"),
            std::string::npos)
      << melt_last_error();
  // Unchanged, and it goes on.
  EXPECT_EQ(loaded.logits(id), before);
  EXPECT_EQ(melt_session_append(loaded.session, id, ten.data(), 4, nullptr),
            MELT_OK)
      << melt_last_error();
  long long used = 0, total = 0;
  ASSERT_EQ(melt_session_kv_pages(loaded.session, &used, &total), MELT_OK);
  EXPECT_EQ(used, 1);
  EXPECT_EQ(total, 1);
}

// Benchmarks run without a checkpoint: seeded random weights, finite
// logits, the same ones for the same seed.
TEST_P(SessionOnDevice, RandomWeightsRun) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    Loaded loaded;
    ASSERT_EQ(melt_model_load_random(models[0].artifact.c_str(), 7,
                                     GetParam().c_str(), &loaded.model),
              MELT_OK)
        << melt_last_error();
    melt_session_options options{16, 16};
    ASSERT_EQ(melt_session_create(loaded.model, &options, &loaded.session),
              MELT_OK);
    int id = 0, prompt[3] = {1, 2, 3};
    ASSERT_EQ(melt_session_add_sequence(loaded.session, &id), MELT_OK);
    ASSERT_EQ(melt_session_append(loaded.session, id, prompt, 3, nullptr),
              MELT_OK)
        << melt_last_error();
    std::vector<float> logits = loaded.logits(id);
    for (float v : logits)
      ASSERT_TRUE(std::isfinite(v));
    if (run == 0)
      first = logits;
    else
      EXPECT_EQ(logits, first);
  }
}

// A model's latent caches in BF16 (on the GPU by default for an MLA at
// DeepSeek's dims compiled --target=cuda, MELT_CUDA_BF16_LATENT_CACHE=1;
// MELT_CPU_BF16_LATENT_CACHE=1 on the CPU, any MLA) against F32 ones: half
// the bytes, finite logits over a prompt and 4 decode steps (on the GPU,
// on the decode kernel). How far the logits move is printed, not bounded:
// it measures a model's sensitivity (with random weights mini's routers
// turn on near ties: docs/CudaBackend.md); the bound is that of the
// sessions of small models at these dims against the CPU (tiny-mla,
// v3-mla512: cuda-kernels.sh). MELT_TEST_BF16_CACHE_ARTIFACT names the
// model; MELT_TEST_BF16_CACHE_CHECKPOINT its checkpoint (else seeded
// random weights), MELT_TEST_BF16_CACHE_PROMPT the prompt's tokens (1500).
TEST_P(SessionOnDevice, Bf16LatentCacheHalvesTheCache) {
  const char *artifact = std::getenv("MELT_TEST_BF16_CACHE_ARTIFACT");
  if (!artifact)
    GTEST_SKIP() << "MELT_TEST_BF16_CACHE_ARTIFACT not set";
  const char *checkpoint = std::getenv("MELT_TEST_BF16_CACHE_CHECKPOINT");
  const char *promptTokens = std::getenv("MELT_TEST_BF16_CACHE_PROMPT");
  const size_t promptSize = promptTokens ? std::stoul(promptTokens) : 1500;
  std::vector<float> logits[2];
  long long bytes[2] = {0, 0}, perPage = 0;
  for (int bf16 = 0; bf16 < 2; ++bf16) {
    for (const char *name :
         {"MELT_CUDA_BF16_LATENT_CACHE", "MELT_CPU_BF16_LATENT_CACHE"})
      ::setenv(name, bf16 ? "1" : "0", 1);
    Loaded loaded;
    ASSERT_EQ(checkpoint ? melt_model_load_on(artifact, checkpoint,
                                              GetParam().c_str(), &loaded.model)
                         : melt_model_load_random(
                               artifact, 7, GetParam().c_str(), &loaded.model),
              MELT_OK)
        << melt_last_error();
    const long long vocab = melt_model_vocab_size(loaded.model);
    const long long context = (long long)promptSize + 4;
    melt_session_options options{context, context};
    ASSERT_EQ(melt_session_create(loaded.model, &options, &loaded.session),
              MELT_OK)
        << melt_last_error();
    int id = 0;
    ASSERT_EQ(melt_session_add_sequence(loaded.session, &id), MELT_OK);
    std::vector<int> prompt(promptSize);
    for (size_t i = 0; i < prompt.size(); ++i)
      prompt[i] = int((i * 7919) % size_t(vocab));
    ASSERT_EQ(melt_session_append(loaded.session, id, prompt.data(),
                                  prompt.size(), nullptr),
              MELT_OK)
        << melt_last_error();
    logits[bf16] = loaded.logits(id);
    for (int step = 0; step < 4; ++step) { // the same tokens in both runs
      int token = 11 + step;
      ASSERT_EQ(melt_session_append(loaded.session, id, &token, 1, nullptr),
                MELT_OK)
          << melt_last_error();
      std::vector<float> next = loaded.logits(id);
      logits[bf16].insert(logits[bf16].end(), next.begin(), next.end());
    }
    ASSERT_EQ(melt_session_kv_bytes(loaded.session, &bytes[bf16], &perPage),
              MELT_OK);
  }
  for (const char *name :
       {"MELT_CUDA_BF16_LATENT_CACHE", "MELT_CPU_BF16_LATENT_CACHE"})
    ::unsetenv(name);
  EXPECT_EQ(bytes[0], 2 * bytes[1]);
  ASSERT_EQ(logits[0].size(), logits[1].size());
  for (float v : logits[1])
    ASSERT_TRUE(std::isfinite(v));
  const double worst =
      errorOfRange(logits[1], logits[0].data(), logits[0].size());
  std::printf("%s on %s (%s): BF16 latent cache against F32, %zu tokens and "
              "4 decode steps: max abs logit difference %.3g of the range\n",
              artifact, GetParam().c_str(),
              checkpoint ? checkpoint : "random weights", promptSize, worst);
}

// Greedy steps generated in one call, the device feeding each step's pick
// to the next: the tokens, the expert load and the state after them are
// those of one stepGreedy call a step (70 steps from prompts of 60 and 5:
// across pages, and across a recorded shape's change on a device that
// records). Too many steps for the context, or several tokens to start a
// sequence, change nothing.
TEST_P(SessionOnDevice, GeneratedStepsAreStepsOneByOne) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  const Compiled &c = models[0];
  Loaded generated, stepped;
  open(c, GetParam(), 256, 8 * MELT_KV_PAGE_TOKENS, generated);
  open(c, GetParam(), 256, 8 * MELT_KV_PAGE_TOKENS, stepped);
  if (HasFatalFailure())
    return;
  std::vector<std::vector<int>> prompts = {{}, {200, 2, 77, 31, 8}};
  for (int i = 0; i < 60; ++i)
    prompts[0].push_back(i * 37 % 250 + 1);
  int ids[2], refs[2], first[2];
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(melt_session_add_sequence(generated.session, &ids[i]), MELT_OK);
    ASSERT_EQ(melt_session_add_sequence(stepped.session, &refs[i]), MELT_OK);
    for (melt_session *s : {generated.session, stepped.session})
      ASSERT_EQ(
          melt_session_append(s, s == generated.session ? ids[i] : refs[i],
                              prompts[i].data(), prompts[i].size(), nullptr),
          MELT_OK)
          << melt_last_error();
    first[i] = argmax(stepped.logits(refs[i]));
  }
  const size_t steps = 70;
  std::vector<int> tokens(2 * steps);
  melt_batch_entry batch[2] = {{ids[0], &first[0], 1}, {ids[1], &first[1], 1}};
  ASSERT_EQ(melt_session_generate_greedy(generated.session, batch, 2, steps,
                                         tokens.data()),
            MELT_OK)
      << melt_last_error();
  int next[2] = {first[0], first[1]};
  for (size_t s = 0; s < steps; ++s) {
    melt_batch_entry one[2] = {{refs[0], &next[0], 1}, {refs[1], &next[1], 1}};
    ASSERT_EQ(melt_session_step_greedy(stepped.session, one, 2, next), MELT_OK)
        << melt_last_error();
    EXPECT_EQ(tokens[2 * s], next[0]) << "step " << s;
    EXPECT_EQ(tokens[2 * s + 1], next[1]) << "step " << s;
  }
  // The same caches: one more step of each gives the same logits.
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(
        melt_session_append(generated.session, ids[i], &next[i], 1, nullptr),
        MELT_OK);
    ASSERT_EQ(
        melt_session_append(stepped.session, refs[i], &next[i], 1, nullptr),
        MELT_OK);
    std::vector<float> a = generated.logits(ids[i]),
                       b = stepped.logits(refs[i]);
    EXPECT_LE(errorOfRange(a, b.data(), b.size()), 1e-6) << "sequence " << i;
  }
  std::string generatedLoad, steppedLoad;
  EXPECT_EQ(expertLoadJson(generated.session, generatedLoad), MELT_OK);
  EXPECT_EQ(expertLoadJson(stepped.session, steppedLoad), MELT_OK);
  EXPECT_EQ(generatedLoad, steppedLoad);
  // Past the context of 256: nothing changes (its pages, its logits).
  long long pagesUsed = 0, pagesTotal = 0, usedAfter = 0;
  ASSERT_EQ(melt_session_kv_pages(generated.session, &pagesUsed, &pagesTotal),
            MELT_OK);
  const std::vector<float> logitsBefore = generated.logits(ids[0]);
  melt_batch_entry again[1] = {{ids[0], &next[0], 1}};
  EXPECT_EQ(melt_session_generate_greedy(generated.session, again, 1, 200,
                                         tokens.data()),
            MELT_RESOURCE_EXHAUSTED);
  ASSERT_EQ(melt_session_kv_pages(generated.session, &usedAfter, &pagesTotal),
            MELT_OK);
  EXPECT_EQ(usedAfter, pagesUsed);
  EXPECT_EQ(generated.logits(ids[0]), logitsBefore);
  int two[2] = {1, 2};
  melt_batch_entry twoTokens[1] = {{ids[0], two, 2}};
  EXPECT_EQ(melt_session_generate_greedy(generated.session, twoTokens, 1, 3,
                                         tokens.data()),
            MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("one token a sequence"),
            std::string::npos)
      << melt_last_error();
  EXPECT_EQ(melt_session_generate_greedy(generated.session, again, 1, 0,
                                         tokens.data()),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(
      melt_session_generate_greedy(generated.session, again, 1, 3, nullptr),
      MELT_INVALID_ARGUMENT);
  EXPECT_EQ(generated.logits(ids[0]), logitsBefore);
}

// A compiled model loaded in this process onto a device, for tests that
// use Session directly (its recordings, its counters).
struct OnDevice {
  std::unique_ptr<Device> device;
  std::unique_ptr<Model> host;
  std::unique_ptr<DeviceModel> model;
};

void loadOnDevice(const Compiled &c, const std::string &deviceName,
                  OnDevice &out) {
  ASSERT_FALSE(openDevice(deviceName, out.device));
  ASSERT_FALSE(Model::load(c.artifact, c.checkpoint, out.host,
                           /*keepHostData=*/true));
  ASSERT_FALSE(DeviceModel::create(*out.host, *out.device, out.model));
}

/// The environment's first compiled model, loaded on `deviceName`; the
/// test skipped where the environment has none.
void loadFirstModel(const std::string &deviceName, Compiled &model,
                    OnDevice &loaded) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  model = models[0];
  loadOnDevice(model, deviceName, loaded);
}

// Decode steps on a device that records graphs are replayed from a
// recording after the first of each shape, and give what the steps run
// kernel by kernel give (a prefill of the same tokens, all logits).
TEST_P(SessionOnDevice, DecodeStepsReplayRecordings) {
  Compiled model;
  OnDevice loaded;
  loadFirstModel(GetParam(), model, loaded);
  if (IsSkipped() || HasFatalFailure())
    return;
  Device *device = loaded.device.get();
  DeviceModel *onDevice = loaded.model.get();
  std::unique_ptr<Session> stepped, prefilled;
  ASSERT_FALSE(Session::create(*onDevice, 64, 64, stepped));
  ASSERT_FALSE(Session::create(*onDevice, 64, 64, prefilled));
  int32_t a = 0, b = 0;
  ASSERT_FALSE(stepped->addSequence(a));
  ASSERT_FALSE(prefilled->addSequence(b));
  std::vector<int32_t> tokens = {5, 9, 2, 44, 7, 100, 3, 61, 12, 8};
  ASSERT_FALSE(stepped->append(a, tokens.data(), 2));
  for (size_t t = 2; t < tokens.size(); ++t) {
    Status s = stepped->append(a, &tokens[t], 1);
    ASSERT_FALSE(s) << s.message();
  }
  std::vector<float> all;
  ASSERT_FALSE(prefilled->append(b, tokens.data(), tokens.size(), &all));
  const float *last = nullptr;
  size_t vocab = 0;
  ASSERT_FALSE(stepped->logits(a, last, vocab));
  // An FP32 model: the same arithmetic in another order. A narrower one
  // (BF16 attention: the decode steps' kernel rounds other operands than
  // the prefill's) within its own bound against the CPU.
  const double bound = model.tolerance <= 1e-3 ? 1e-5 : model.tolerance;
  EXPECT_LE(errorOfRange(std::vector<float>(last, last + vocab),
                         all.data() + all.size() - vocab, vocab),
            bound)
      << model.artifact;
  if (device->canCapture())
    // Every decode step: the first is recorded, then replayed like the rest.
    EXPECT_EQ(stepped->replayedSteps(), tokens.size() - 2);
  else
    EXPECT_EQ(stepped->replayedSteps(), 0u);
}

// MELT_RECORD_AHEAD=1: the prefill records the decode step after it once
// it is queued; the steps replay that recording and
// give, bit for bit, what a session that records each shape at its first step
// gives. A device that records nothing runs every step as before.
TEST_P(SessionOnDevice, DecodeRecordedAheadReplaysTheSame) {
  Compiled model;
  OnDevice loaded;
  loadFirstModel(GetParam(), model, loaded);
  if (IsSkipped() || HasFatalFailure())
    return;
  Device *device = loaded.device.get();
  DeviceModel *onDevice = loaded.model.get();
  std::unique_ptr<Session> ahead, atFirstStep;
  ::setenv("MELT_RECORD_AHEAD", "1", 1);
  Status created = Session::create(*onDevice, 256, 512, ahead);
  ::unsetenv("MELT_RECORD_AHEAD");
  ASSERT_FALSE(created) << created.message();
  ASSERT_FALSE(Session::create(*onDevice, 256, 512, atFirstStep));
  // Two sequences: a prefill of 70 and 3 tokens, then decode steps across
  // a page boundary and a table's doubling (2 -> 4 pages).
  std::vector<int32_t> prompt;
  for (int i = 0; i < 70; ++i)
    prompt.push_back(i * 53 % 250 + 1);
  int32_t ids[2][2];
  for (Session *s : {ahead.get(), atFirstStep.get()}) {
    const int which = s == ahead.get() ? 0 : 1;
    ASSERT_FALSE(s->addSequence(ids[which][0]));
    ASSERT_FALSE(s->addSequence(ids[which][1]));
    const Session::Entry prefill[2] = {
        {ids[which][0], prompt.data(), prompt.size()},
        {ids[which][1], prompt.data() + 10, 3}};
    Status status = s->step(prefill, 2);
    ASSERT_FALSE(status) << status.message();
  }
  for (int step = 0; step < 64; ++step) {
    std::vector<float> logits[2];
    for (Session *s : {ahead.get(), atFirstStep.get()}) {
      const int which = s == ahead.get() ? 0 : 1;
      const int32_t token = step * 17 % 240 + 3;
      const Session::Entry one[2] = {{ids[which][0], &token, 1},
                                     {ids[which][1], &token, 1}};
      Status status = s->step(one, 2);
      ASSERT_FALSE(status) << status.message();
      const float *last = nullptr;
      size_t vocab = 0;
      ASSERT_FALSE(s->logits(ids[which][1], last, vocab));
      logits[which].assign(last, last + vocab);
    }
    EXPECT_EQ(logits[0], logits[1]) << "step " << step;
  }
  EXPECT_EQ(ahead->replayedSteps(), atFirstStep->replayedSteps());
  // The shapes recorded ahead were the steps' own: no other recordings.
  EXPECT_EQ(ahead->recordedShapes(), atFirstStep->recordedShapes());
  // Recorded ahead: the first decode shape (by the prefill), the doubled
  // table's (by the step before it).
  EXPECT_EQ(ahead->recordedAhead(), device->canCapture() ? 2u : 0u);
  EXPECT_EQ(atFirstStep->recordedAhead(), 0u);
}

// A session that closes leaves its caches and recorded decode steps to the
// model; the next session of the same cache size takes them: it records
// nothing (every decode step replays the closed session's recordings) and
// gives, bit for bit, the logits the first gave (its caches' stale rows
// are never read). A session of another size, or with
// MELT_KEEP_CLOSED_SESSION=0, starts afresh.
TEST_P(SessionOnDevice, ClosedSessionIsTheNextOnes) {
  Compiled model;
  OnDevice loaded;
  loadFirstModel(GetParam(), model, loaded);
  if (IsSkipped() || HasFatalFailure())
    return;
  Device *device = loaded.device.get();
  DeviceModel *onDevice = loaded.model.get();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 70; ++i)
    prompt.push_back(i * 37 % 250 + 2);
  // A prefill of 70 and 3 tokens, then 12 decode steps: each step's logits
  // of both sequences.
  struct Run {
    std::vector<std::vector<float>> logits;
    uint64_t replayed = 0, recordings = 0;
    size_t shapesAtStart = 0, shapesAtEnd = 0;
  };
  auto run = [&](int64_t capacity, Run &out) {
    std::unique_ptr<Session> s;
    ASSERT_FALSE(Session::create(*onDevice, 256, capacity, s));
    out.shapesAtStart = s->recordedShapes();
    int32_t a = 0, b = 0;
    ASSERT_FALSE(s->addSequence(a));
    ASSERT_FALSE(s->addSequence(b));
    const Session::Entry prefill[2] = {{a, prompt.data(), prompt.size()},
                                       {b, prompt.data() + 20, 3}};
    ASSERT_FALSE(s->step(prefill, 2));
    for (int step = 0; step < 12; ++step) {
      const int32_t token = step * 29 % 240 + 5;
      const Session::Entry one[2] = {{a, &token, 1}, {b, &token, 1}};
      Status status = s->step(one, 2);
      ASSERT_FALSE(status) << status.message();
      for (int32_t id : {a, b}) {
        const float *last = nullptr;
        size_t vocab = 0;
        ASSERT_FALSE(s->logits(id, last, vocab));
        out.logits.emplace_back(last, last + vocab);
      }
    }
    out.replayed = s->replayedSteps();
    out.recordings = s->recordings();
    out.shapesAtEnd = s->recordedShapes();
  };
  Run first, again, otherSize, unkept, afterUnkept;
  run(512, first);
  if (HasFatalFailure())
    return;
  run(512, again);
  if (HasFatalFailure())
    return;
  EXPECT_EQ(first.shapesAtStart, 0u);
  EXPECT_EQ(again.shapesAtStart, first.shapesAtEnd);
  EXPECT_EQ(again.shapesAtEnd, first.shapesAtEnd);
  EXPECT_TRUE(again.logits == first.logits) << "logits differ";
  EXPECT_EQ(again.replayed, first.replayed);
  EXPECT_EQ(again.recordings, 0u);
  if (device->canCapture()) {
    EXPECT_GT(first.shapesAtEnd, 0u);
    EXPECT_GT(first.recordings, 0u); // each shape at its first step
    EXPECT_EQ(again.replayed, 12u);
  }
  run(1024, otherSize);
  if (HasFatalFailure())
    return;
  EXPECT_EQ(otherSize.shapesAtStart, 0u);
  EXPECT_EQ(otherSize.recordings, first.recordings);
  EXPECT_TRUE(otherSize.logits == first.logits) << "logits differ";
  ::setenv("MELT_KEEP_CLOSED_SESSION", "0", 1);
  run(1024, unkept); // takes otherSize's state; keeps nothing
  ::unsetenv("MELT_KEEP_CLOSED_SESSION");
  if (HasFatalFailure())
    return;
  EXPECT_EQ(unkept.shapesAtStart, 0u);
  run(1024, afterUnkept); // nothing was kept
  if (HasFatalFailure())
    return;
  EXPECT_EQ(afterUnkept.shapesAtStart, 0u);
  EXPECT_EQ(afterUnkept.recordings, first.recordings);
  // afterUnkept's state is kept, and once taken (released), no longer.
  EXPECT_NE(onDevice->takeClosedSession(), nullptr);
  EXPECT_EQ(onDevice->takeClosedSession(), nullptr);
  EXPECT_TRUE(afterUnkept.logits == first.logits) << "logits differ";
}

INSTANTIATE_TEST_SUITE_P(Present, SessionOnDevice,
                         ::testing::ValuesIn(availableDevices()),
                         deviceTestName);

} // namespace

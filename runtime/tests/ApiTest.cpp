//===- ApiTest.cpp - C API misuse and session behaviour ---------*- C++ -*-===//
#include "ModelFixture.h"
#include "Session.h"

#include <cmath>
#include <limits>

namespace {

TEST(Api, NullAndStaleHandles) {
  EXPECT_EQ(melt_model_destroy(nullptr), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_destroy(nullptr), MELT_INVALID_ARGUMENT);
  melt_model *bogus = reinterpret_cast<melt_model *>(0x1234);
  EXPECT_EQ(melt_model_destroy(bogus), MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()), "");
  melt_session *session = nullptr;
  melt_session_options options{16, 0};
  EXPECT_EQ(melt_session_create(nullptr, &options, &session),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(session, nullptr);
  EXPECT_EQ(melt_session_create(bogus, &options, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_step(nullptr, nullptr, 0), MELT_INVALID_ARGUMENT);
  int seq = 0;
  EXPECT_EQ(melt_session_add_sequence(nullptr, &seq), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_append(nullptr, 0, &seq, 1, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_vocab_size(nullptr), 0);
  EXPECT_EQ(melt_model_release_closed_session(nullptr), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_release_closed_session(bogus), MELT_INVALID_ARGUMENT);
  melt_model *model = nullptr;
  EXPECT_EQ(melt_model_load(nullptr, "x", &model), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_load("/nonexistent.melt", "/tmp", &model),
            MELT_NOT_FOUND);
  EXPECT_NE(std::string(melt_last_error()).find("/nonexistent.melt"),
            std::string::npos);
}

TEST(Api, DevicesAndRandomWeightsAreChecked) {
  melt_model *model = nullptr;
  EXPECT_EQ(melt_model_load_on(nullptr, "x", "cpu", &model),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_load_on("/nonexistent.melt", "/tmp", "cpu", nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_load_on("/nonexistent.melt", "/tmp", "tpu", &model),
            MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("unknown device 'tpu'"),
            std::string::npos)
      << melt_last_error();
  EXPECT_EQ(model, nullptr);
  EXPECT_EQ(melt_model_load_random(nullptr, 1, nullptr, &model),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_load_random("/nonexistent.melt", 1, "cpu", &model),
            MELT_NOT_FOUND);
  EXPECT_NE(std::string(melt_last_error()).find("/nonexistent.melt"),
            std::string::npos);
  EXPECT_STREQ(melt_model_device(nullptr), "");
  EXPECT_STREQ(melt_model_target(nullptr), "");
  EXPECT_STREQ(melt_model_device_description(nullptr), "");
}

TEST(Api, SamplingParametersAreChecked) {
  float logits[4] = {0.1f, 2.0f, -1.0f, 0.5f};
  unsigned long long state = 1;
  int token = -1;
  melt_sampling p{1.0f, 0, 1.0f};
  p.temperature = std::nanf("");
  EXPECT_EQ(melt_sample(logits, 4, &p, &state, &token), MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("temperature"),
            std::string::npos);
  p.temperature = -1.0f;
  EXPECT_EQ(melt_sample(logits, 4, &p, &state, &token), MELT_INVALID_ARGUMENT);
  p = {1.0f, 0, 1.5f};
  EXPECT_EQ(melt_sample(logits, 4, &p, &state, &token), MELT_INVALID_ARGUMENT);
  p = {1.0f, 0, 0.0f};
  EXPECT_EQ(melt_sample(logits, 4, &p, &state, &token), MELT_INVALID_ARGUMENT);
  p = {1.0f, -2, 1.0f};
  EXPECT_EQ(melt_sample(logits, 4, &p, &state, &token), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_sample(nullptr, 4, &p, &state, &token), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_sample_greedy(logits, 0, &token), MELT_INVALID_ARGUMENT);
}

TEST(Api, GreedyTakesTheFirstLargestAndPassesOverNaNs) {
  auto greedy = [](std::vector<float> logits) {
    int token = -1;
    EXPECT_EQ(melt_sample_greedy(logits.data(), logits.size(), &token),
              MELT_OK);
    return token;
  };
  const float nan = std::nanf("");
  EXPECT_EQ(greedy({1, 3, 2, 3}), 1); // ties: the first
  EXPECT_EQ(greedy({nan, 5, nan, 7}), 3);
  EXPECT_EQ(greedy({5, nan}), 0);
  EXPECT_EQ(greedy({nan, -INFINITY, nan}), 1);
  EXPECT_EQ(greedy({nan, nan}), 1); // all NaN: the last
  EXPECT_EQ(greedy({-INFINITY, -INFINITY}), 0);
  // Lengths around the scan's 8 lanes, the largest in the tail or a lane.
  for (size_t n : {1, 7, 8, 9, 17, 129280})
    for (size_t at : {size_t(0), n / 2, n - 1}) {
      std::vector<float> logits(n);
      for (size_t i = 0; i < n; ++i)
        logits[i] = float((i * 7919) % 1000) * 1e-3f;
      logits[at] = 2.f;
      EXPECT_EQ(greedy(logits), int(at)) << n << " logits, largest at " << at;
    }
}

TEST(Api, SamplingIsSeededAndRespectsTopKAndTopP) {
  float logits[6] = {3.0f, 2.5f, 2.0f, -5.0f, 1.0f, 0.0f};
  int token = -1;
  melt_sampling greedy{0.0f, 0, 1.0f};
  unsigned long long state = 7;
  ASSERT_EQ(melt_sample(logits, 6, &greedy, &state, &token), MELT_OK);
  EXPECT_EQ(token, 0);

  melt_sampling p{1.0f, 2, 1.0f};
  std::vector<int> a, b;
  unsigned long long s1 = 42, s2 = 42;
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(melt_sample(logits, 6, &p, &s1, &token), MELT_OK);
    a.push_back(token);
    EXPECT_TRUE(token == 0 || token == 1); // top_k = 2
    ASSERT_EQ(melt_sample(logits, 6, &p, &s2, &token), MELT_OK);
    b.push_back(token);
  }
  EXPECT_EQ(a, b); // same seed, same tokens
  EXPECT_NE(std::count(a.begin(), a.end(), 1), 0);

  melt_sampling nucleus{1.0f, 0, 0.3f}; // token 0 alone holds > 30%
  unsigned long long s3 = 3;
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(melt_sample(logits, 6, &nucleus, &s3, &token), MELT_OK);
    EXPECT_EQ(token, 0);
  }
}

class SessionTest : public ModelTest {
protected:
  /// Two sessions of the model, each with two sequences whose first step
  /// appends the same prompts: `picked` for steps that pick their tokens
  /// on the device, `plain` for ordinary steps to compare with.
  struct PairedSessions {
    melt_model *model = nullptr;
    melt_session *picked = nullptr, *plain = nullptr;
    int g[2] = {-1, -1}, p[2] = {-1, -1};
    int pa[4] = {1, 2, 3, 4}, pb[2] = {9, 8};
    melt_batch_entry gs[2], ps[2];
    ~PairedSessions() {
      melt_session_destroy(picked);
      melt_session_destroy(plain);
      melt_model_destroy(model);
    }
  };
  void openPaired(PairedSessions &s) {
    ASSERT_EQ(melt_model_load(artifactPath.c_str(), checkpointDir.c_str(),
                              &s.model),
              MELT_OK);
    melt_session_options options{64, 256};
    ASSERT_EQ(melt_session_create(s.model, &options, &s.picked), MELT_OK);
    ASSERT_EQ(melt_session_create(s.model, &options, &s.plain), MELT_OK);
    for (int i = 0; i < 2; ++i) {
      ASSERT_EQ(melt_session_add_sequence(s.picked, &s.g[i]), MELT_OK);
      ASSERT_EQ(melt_session_add_sequence(s.plain, &s.p[i]), MELT_OK);
    }
    s.gs[0] = {s.g[0], s.pa, 4};
    s.gs[1] = {s.g[1], s.pb, 2};
    s.ps[0] = {s.p[0], s.pa, 4};
    s.ps[1] = {s.p[1], s.pb, 2};
  }
};

TEST_F(SessionTest, DoubleDestroyIsAnError) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK)
      << melt_last_error();
  melt_session *session = nullptr;
  melt_session_options options{32, 0};
  ASSERT_EQ(melt_session_create(model, &options, &session), MELT_OK);
  // A model outlives its sessions.
  EXPECT_EQ(melt_model_destroy(model), MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("session"), std::string::npos);
  EXPECT_EQ(melt_session_destroy(session), MELT_OK);
  EXPECT_EQ(melt_session_destroy(session), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
  EXPECT_EQ(melt_model_destroy(model), MELT_INVALID_ARGUMENT);
}

// What a closed session leaves with the model (its cache, its recorded
// steps) can be released before the model goes; a session after that (or
// with nothing kept) opens and runs as any other.
TEST_F(SessionTest, ClosedSessionCanBeReleased) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK)
      << melt_last_error();
  melt_session_options options{32, 0};
  std::vector<float> first;
  for (int round = 0; round < 3; ++round) {
    melt_session *session = nullptr;
    ASSERT_EQ(melt_session_create(model, &options, &session), MELT_OK);
    int seq = -1, tokens[3] = {4, 7, 1};
    ASSERT_EQ(melt_session_add_sequence(session, &seq), MELT_OK);
    ASSERT_EQ(melt_session_append(session, seq, tokens, 3, nullptr), MELT_OK);
    const float *logits = nullptr;
    size_t vocab = 0;
    ASSERT_EQ(melt_session_logits(session, seq, &logits, &vocab), MELT_OK);
    std::vector<float> now(logits, logits + vocab);
    if (round == 0)
      first = now;
    EXPECT_EQ(now, first) << "round " << round;
    ASSERT_EQ(melt_session_destroy(session), MELT_OK);
    // Released after the second: the third opens afresh. Twice: nothing
    // kept the second time, no error.
    if (round == 1) {
      EXPECT_EQ(melt_model_release_closed_session(model), MELT_OK);
      EXPECT_EQ(melt_model_release_closed_session(model), MELT_OK);
    }
  }
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
  EXPECT_EQ(melt_model_release_closed_session(model), MELT_INVALID_ARGUMENT);
}

/// Each router's {sum of counts, sum of pairs} in an expert-load JSON.
std::vector<std::pair<uint64_t, uint64_t>>
expertLoadSums(const std::string &json) {
  std::vector<std::pair<uint64_t, uint64_t>> sums;
  auto sumOf = [&](size_t at) {
    uint64_t sum = 0;
    const size_t end = json.find(']', at);
    for (size_t i = at; i < end; ++i)
      if (json[i] >= '0' && json[i] <= '9') {
        size_t used = 0;
        sum += std::stoull(json.substr(i), &used);
        i += used;
      }
    return sum;
  };
  for (size_t at = json.find("\"counts\": ["); at != std::string::npos;
       at = json.find("\"counts\": [", at + 1)) {
    uint64_t counts = sumOf(at + 11), pairs = 0;
    // "pairs": [[i, j, n], ...]: every third number.
    const size_t from = json.find("\"pairs\": [", at);
    const size_t end = json.find("]]", from);
    for (size_t i = json.find('[', from + 10);
         i < end && i != std::string::npos; i = json.find('[', i + 1)) {
      const size_t last = json.find(']', i);
      pairs += std::stoull(json.substr(json.rfind(' ', last) + 1));
    }
    sums.push_back({counts, pairs});
  }
  return sums;
}

// A prefill of many tokens counts its router choices on a thread of its
// own (the step returns meanwhile): the counts read afterwards are all of
// them (every token's top-2 of each router: 2 choices, 1 pair), and a
// session closed while that thread may still run closes cleanly.
TEST_F(SessionTest, ManyTokensExpertLoadIsCountedAside) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK)
      << melt_last_error();
  melt_session_options options{256, 16 * 256};
  // 16 x 255 tokens, 2 routers of top-2: 8160 choices of the first router
  // (counted aside), then a decode step of the 16 (counted in the call).
  constexpr int kSequences = 16;
  static_assert(kSequences * 255 * 2 >=
                melt::rt::Session::kCountedAsideChoices);
  std::vector<int> prompt(256);
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt[i] = int((i * 37 + 11) % 256);
  for (bool readFirst : {true, false}) {
    melt_session *session = nullptr;
    ASSERT_EQ(melt_session_create(model, &options, &session), MELT_OK);
    std::vector<melt_batch_entry> batch(kSequences);
    int next[kSequences];
    for (int i = 0; i < kSequences; ++i) {
      int id = -1;
      ASSERT_EQ(melt_session_add_sequence(session, &id), MELT_OK);
      batch[size_t(i)] = {id, prompt.data(), 255};
    }
    ASSERT_EQ(melt_session_step_greedy(session, batch.data(), kSequences, next),
              MELT_OK)
        << melt_last_error();
    for (int i = 0; i < kSequences; ++i)
      batch[size_t(i)] = {batch[size_t(i)].sequence, &next[i], 1};
    ASSERT_EQ(melt_session_step_greedy(session, batch.data(), kSequences, next),
              MELT_OK);
    if (readFirst) {
      std::string json;
      ASSERT_EQ(expertLoadJson(session, json), MELT_OK);
      // The first router sees every token; the last only the rows whose
      // logits are wanted (the executor's logit-only kernels).
      const auto sums = expertLoadSums(json);
      ASSERT_EQ(sums.size(), 2u) << json;
      EXPECT_EQ(sums[0].first, kSequences * 256u * 2) << json;
      EXPECT_EQ(sums[0].second, kSequences * 256u) << json;
      for (const auto &[counts, pairs] : sums)
        EXPECT_EQ(counts, 2 * pairs) << json;
    }
    EXPECT_EQ(melt_session_destroy(session), MELT_OK);
  }
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
}

// A multi-step greedy call's choices (16 sequences x 128 steps, counted
// aside) give the counts that the same steps one call each give (a few
// choices a call, counted in the call): the same JSON.
TEST_F(SessionTest, MultiStepExpertLoadIsTheStepsOne) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK)
      << melt_last_error();
  constexpr int kSequences = 16, kSteps = 128;
  static_assert(kSequences * kSteps * 2 >=
                melt::rt::Session::kCountedAsideChoices);
  melt_session_options options{256, kSequences * 256};
  std::string jsons[2];
  std::vector<int> tokens[2];
  for (int multi = 0; multi < 2; ++multi) {
    melt_session *session = nullptr;
    ASSERT_EQ(melt_session_create(model, &options, &session), MELT_OK);
    std::vector<melt_batch_entry> batch(kSequences);
    int prompt[kSequences], next[kSequences];
    for (int i = 0; i < kSequences; ++i) {
      int id = -1;
      ASSERT_EQ(melt_session_add_sequence(session, &id), MELT_OK);
      prompt[i] = (i * 37 + 5) % 256;
      batch[size_t(i)] = {id, &prompt[i], 1};
    }
    if (multi) {
      tokens[1].resize(size_t(kSequences) * kSteps);
      ASSERT_EQ(melt_session_generate_greedy(session, batch.data(), kSequences,
                                             kSteps, tokens[1].data()),
                MELT_OK)
          << melt_last_error();
    } else {
      for (int step = 0; step < kSteps; ++step) {
        ASSERT_EQ(
            melt_session_step_greedy(session, batch.data(), kSequences, next),
            MELT_OK)
            << melt_last_error();
        for (int i = 0; i < kSequences; ++i) {
          tokens[0].push_back(next[i]);
          prompt[i] = next[i];
        }
      }
    }
    EXPECT_EQ(expertLoadJson(session, jsons[multi]), MELT_OK);
    EXPECT_EQ(melt_session_destroy(session), MELT_OK);
  }
  EXPECT_EQ(tokens[1], tokens[0]);
  EXPECT_EQ(jsons[1], jsons[0]);
  EXPECT_NE(jsons[0].find("\"counts\""), std::string::npos) << jsons[0];
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
}

TEST_F(SessionTest, BadTokensAndContextLeaveStateUnchanged) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK);
  long long vocab = melt_model_vocab_size(model);
  melt_session *session = nullptr;
  melt_session *rejected = nullptr;
  melt_session_options bad{0, 0};
  EXPECT_EQ(melt_session_create(model, &bad, &rejected), MELT_INVALID_ARGUMENT);
  bad = {8, -1};
  EXPECT_EQ(melt_session_create(model, &bad, &rejected), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_create(model, nullptr, &rejected),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(rejected, nullptr);
  melt_session_options options{8, 128}; // a page each
  ASSERT_EQ(melt_session_create(model, &options, &session), MELT_OK);
  int seq = 0, other = 0;
  ASSERT_EQ(melt_session_add_sequence(session, &seq), MELT_OK);
  ASSERT_EQ(melt_session_add_sequence(session, &other), MELT_OK);

  int prompt[5] = {1, 2, 3, 4, 5};
  ASSERT_EQ(melt_session_append(session, seq, prompt, 5, nullptr), MELT_OK);
  const float *logits = nullptr;
  size_t n = 0;
  ASSERT_EQ(melt_session_logits(session, seq, &logits, &n), MELT_OK);
  std::vector<float> before(logits, logits + n);

  int outOfVocab[2] = {3, static_cast<int>(vocab)};
  EXPECT_EQ(melt_session_append(session, seq, outOfVocab, 2, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("outside the vocabulary"),
            std::string::npos);
  int negative = -1;
  EXPECT_EQ(melt_session_append(session, seq, &negative, 1, nullptr),
            MELT_INVALID_ARGUMENT);
  // 5 + 4 > 8: the context is exhausted, and nothing changes.
  int more[4] = {6, 7, 8, 9};
  EXPECT_EQ(melt_session_append(session, seq, more, 4, nullptr),
            MELT_RESOURCE_EXHAUSTED);
  EXPECT_EQ(melt_session_append(session, 99, more, 1, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_append(session, seq, more, 0, nullptr),
            MELT_INVALID_ARGUMENT);
  ASSERT_EQ(melt_session_logits(session, seq, &logits, &n), MELT_OK);
  EXPECT_EQ(std::vector<float>(logits, logits + n), before);

  // The sequence goes on exactly as if the failures had not happened: its
  // next step equals a fresh sequence's run over the same tokens.
  ASSERT_EQ(melt_session_append(session, seq, more, 3, nullptr), MELT_OK);
  ASSERT_EQ(melt_session_logits(session, seq, &logits, &n), MELT_OK);
  std::vector<float> continued(logits, logits + n);
  int all[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_EQ(melt_session_append(session, other, all, 8, nullptr), MELT_OK);
  ASSERT_EQ(melt_session_logits(session, other, &logits, &n), MELT_OK);
  std::vector<float> fresh(logits, logits + n);
  for (size_t i = 0; i < n; ++i)
    EXPECT_NEAR(continued[i], fresh[i], 1e-5) << i;

  // A freed sequence is gone; the others are untouched.
  EXPECT_EQ(melt_session_remove_sequence(session, seq), MELT_OK);
  EXPECT_EQ(melt_session_remove_sequence(session, seq), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_logits(session, seq, &logits, &n),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_logits(session, other, &logits, &n), MELT_OK);
  EXPECT_EQ(melt_session_destroy(session), MELT_OK);
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
}

TEST_F(SessionTest, BatchedStepsMatchSingleSequences) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK);
  melt_session_options options{64, 256};
  melt_session *batched = nullptr, *single = nullptr;
  ASSERT_EQ(melt_session_create(model, &options, &batched), MELT_OK);
  ASSERT_EQ(melt_session_create(model, &options, &single), MELT_OK);
  int a = 0, b = 0, c = 0, ref = 0;
  melt_session_add_sequence(batched, &a);
  melt_session_add_sequence(batched, &b);
  melt_session_add_sequence(batched, &c);
  int pa[5] = {1, 2, 3, 4, 5}, pb[2] = {9, 8}, pc[3] = {7, 7, 7};
  // Prefills of three lengths in one batch, then mixed steps.
  melt_batch_entry prefill[3] = {{a, pa, 5}, {b, pb, 2}, {c, pc, 3}};
  ASSERT_EQ(melt_session_step(batched, prefill, 3), MELT_OK)
      << melt_last_error();
  int next[3] = {11, 12, 13};
  melt_batch_entry decode[2] = {{c, &next[2], 1}, {a, &next[0], 1}};
  ASSERT_EQ(melt_session_step(batched, decode, 2), MELT_OK);
  melt_batch_entry more[1] = {{b, next, 3}};
  ASSERT_EQ(melt_session_step(batched, more, 1), MELT_OK);

  // Each sequence alone gives the same logits.
  struct Case {
    int sequence;
    std::vector<int> tokens;
  } cases[3] = {
      {a, {1, 2, 3, 4, 5, 11}}, {b, {9, 8, 11, 12, 13}}, {c, {7, 7, 7, 13}}};
  for (const Case &k : cases) {
    melt_session_add_sequence(single, &ref);
    ASSERT_EQ(melt_session_append(single, ref, k.tokens.data(), k.tokens.size(),
                                  nullptr),
              MELT_OK);
    const float *x = nullptr, *y = nullptr;
    size_t nx = 0, ny = 0;
    ASSERT_EQ(melt_session_logits(single, ref, &x, &nx), MELT_OK);
    ASSERT_EQ(melt_session_logits(batched, k.sequence, &y, &ny), MELT_OK);
    ASSERT_EQ(nx, ny);
    for (size_t i = 0; i < nx; ++i)
      ASSERT_NEAR(x[i], y[i], 1e-4) << "sequence " << k.sequence << " " << i;
  }
  melt_batch_entry twice[2] = {{a, next, 1}, {a, next, 1}};
  EXPECT_EQ(melt_session_step(batched, twice, 2), MELT_INVALID_ARGUMENT);
  melt_session_destroy(batched);
  melt_session_destroy(single);
  melt_model_destroy(model);
}

// Greedy steps pick on the device what melt_sample_greedy picks from the
// logits; those sequences keep no logits until their next ordinary step.
TEST_F(SessionTest, GreedyStepsPickTheGreedyTokens) {
  PairedSessions s;
  openPaired(s);
  if (HasFatalFailure())
    return;
  melt_session *greedy = s.picked, *plain = s.plain;
  int next[2] = {-1, -1}, want[2] = {-1, -1};
  for (int step = 0; step < 4; ++step) {
    ASSERT_EQ(melt_session_step_greedy(greedy, s.gs, 2, next), MELT_OK)
        << melt_last_error();
    ASSERT_EQ(melt_session_step(plain, s.ps, 2), MELT_OK);
    for (int i = 0; i < 2; ++i) {
      const float *x = nullptr;
      size_t n = 0;
      ASSERT_EQ(melt_session_logits(plain, s.p[i], &x, &n), MELT_OK);
      ASSERT_EQ(melt_sample_greedy(x, n, &want[i]), MELT_OK);
      EXPECT_EQ(next[i], want[i]) << "step " << step << ", sequence " << i;
    }
    const float *x = nullptr;
    size_t n = 0;
    EXPECT_EQ(melt_session_logits(greedy, s.g[0], &x, &n),
              MELT_INVALID_ARGUMENT);
    EXPECT_NE(std::string(melt_last_error()).find("kept no logits"),
              std::string::npos);
    for (int i = 0; i < 2; ++i) {
      s.gs[i] = {s.g[i], &next[i], 1};
      s.ps[i] = {s.p[i], &want[i], 1};
    }
  }
  EXPECT_EQ(melt_session_step_greedy(greedy, s.gs, 2, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_step_greedy(nullptr, s.gs, 2, next),
            MELT_INVALID_ARGUMENT);
  // An ordinary step brings the logits back.
  ASSERT_EQ(melt_session_step(greedy, s.gs, 2), MELT_OK);
  const float *x = nullptr;
  size_t n = 0;
  EXPECT_EQ(melt_session_logits(greedy, s.g[0], &x, &n), MELT_OK);
}

// Sampled steps pick the tokens that a plain step and melt_sample on each
// entry's logits in turn pick, from the same state; temperature 0 is
// greedy; a failed step leaves the state as it was.
TEST_F(SessionTest, SampledStepsDrawMeltSamplesTokens) {
  PairedSessions s;
  openPaired(s);
  if (HasFatalFailure())
    return;
  melt_session *sampled = s.picked, *plain = s.plain;
  const melt_sampling settings[] = {
      {0.8f, 5, 0.9f}, {1.5f, 0, 1.f}, {0.f, 0, 1.f}, {1.f, 3, 0.5f}};
  unsigned long long state = 7, hostState = 7;
  int next[2] = {-1, -1}, want[2] = {-1, -1};
  for (const melt_sampling &params : settings) {
    ASSERT_EQ(
        melt_session_step_sample(sampled, s.gs, 2, &params, &state, next),
        MELT_OK)
        << melt_last_error();
    ASSERT_EQ(melt_session_step(plain, s.ps, 2), MELT_OK);
    for (int i = 0; i < 2; ++i) {
      const float *x = nullptr;
      size_t n = 0;
      ASSERT_EQ(melt_session_logits(plain, s.p[i], &x, &n), MELT_OK);
      ASSERT_EQ(melt_sample(x, n, &params, &hostState, &want[i]), MELT_OK);
      EXPECT_EQ(next[i], want[i])
          << "temperature " << params.temperature << ", sequence " << i;
    }
    EXPECT_EQ(state, hostState);
    for (int i = 0; i < 2; ++i) {
      s.gs[i] = {s.g[i], &next[i], 1};
      s.ps[i] = {s.p[i], &want[i], 1};
    }
  }
  // A bad token: nothing changes, the state included.
  int badToken = -3;
  melt_batch_entry bad[1] = {{s.g[0], &badToken, 1}};
  const unsigned long long before = state;
  EXPECT_EQ(melt_session_step_sample(sampled, bad, 1, &settings[0], &state,
                                     next),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(state, before);
  const melt_sampling wrong{1.f, -2, 1.f};
  EXPECT_EQ(melt_session_step_sample(sampled, s.gs, 2, &wrong, &state, next),
            MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("top_k must be >= 0"),
            std::string::npos)
      << melt_last_error();
  EXPECT_EQ(melt_session_step_sample(sampled, s.gs, 2, nullptr, &state, next),
            MELT_INVALID_ARGUMENT);
}

TEST_F(SessionTest, FullKVCacheLeavesEverySequenceUnchanged) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK);
  // 3 pages of 64 tokens.
  melt_session_options options{256, 192};
  melt_session *session = nullptr;
  ASSERT_EQ(melt_session_create(model, &options, &session), MELT_OK);
  long long used = 0, total = 0;
  ASSERT_EQ(melt_session_kv_pages(session, &used, &total), MELT_OK);
  EXPECT_EQ(total, 3);
  long long bytes = 0, perPage = 0;
  ASSERT_EQ(melt_session_kv_bytes(session, &bytes, &perPage), MELT_OK);
  EXPECT_GT(perPage, 0);
  EXPECT_EQ(bytes, 3 * perPage);
  EXPECT_EQ(melt_session_kv_bytes(session, nullptr, &perPage),
            MELT_INVALID_ARGUMENT);
  int a = 0, b = 0;
  melt_session_add_sequence(session, &a);
  melt_session_add_sequence(session, &b);
  std::vector<int> eighty(80, 3), ten(10, 4);
  ASSERT_EQ(melt_session_append(session, a, eighty.data(), 80, nullptr),
            MELT_OK);
  melt_session_kv_pages(session, &used, &total);
  EXPECT_EQ(used, 2);
  const float *x = nullptr;
  size_t n = 0;
  ASSERT_EQ(melt_session_logits(session, a, &x, &n), MELT_OK);
  std::vector<float> before(x, x + n);

  // 80 more tokens for b need 2 pages; 1 is free.
  std::vector<int> more(80, 5);
  melt_batch_entry batch[2] = {{a, ten.data(), 1}, {b, more.data(), 80}};
  EXPECT_EQ(melt_session_step(session, batch, 2), MELT_RESOURCE_EXHAUSTED);
  EXPECT_NE(std::string(melt_last_error()).find("the KV cache is full"),
            std::string::npos);
  melt_session_kv_pages(session, &used, &total);
  EXPECT_EQ(used, 2);
  ASSERT_EQ(melt_session_logits(session, a, &x, &n), MELT_OK);
  EXPECT_EQ(std::vector<float>(x, x + n), before);
  EXPECT_EQ(melt_session_logits(session, b, &x, &n), MELT_INVALID_ARGUMENT);

  // Freeing a sequence returns its pages; then b fits.
  EXPECT_EQ(melt_session_remove_sequence(session, a), MELT_OK);
  melt_session_kv_pages(session, &used, &total);
  EXPECT_EQ(used, 0);
  EXPECT_EQ(melt_session_append(session, b, more.data(), 80, nullptr), MELT_OK);
  melt_session_kv_pages(session, &used, &total);
  EXPECT_EQ(used, 2);
  melt_session_destroy(session);
  melt_model_destroy(model);
}

TEST_F(SessionTest, LoadsOnTheCpuDeviceByName) {
  melt_model *model = nullptr;
  ASSERT_EQ(melt_model_load_on(artifactPath.c_str(), checkpointDir.c_str(),
                               nullptr, &model),
            MELT_OK)
      << melt_last_error();
  EXPECT_STREQ(melt_model_device(model), "cpu");
  EXPECT_STREQ(melt_model_target(model), "cpu"); // compiled for the CPU
  EXPECT_NE(std::string(melt_model_device_description(model)).find("cpu"),
            std::string::npos);
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
}

// The KV pool is reserved when the session is created: one larger than the
// device is a clear error then, not a crash later.
TEST_F(SessionTest, KvPoolBeyondTheDeviceIsOutOfMemory) {
  melt_model *model = nullptr;
  ASSERT_EQ(
      melt_model_load(artifactPath.c_str(), checkpointDir.c_str(), &model),
      MELT_OK)
      << melt_last_error();
  melt_session *session = nullptr;
  melt_session_options options{4096, 2147483584ll}; // the most pages
  EXPECT_EQ(melt_session_create(model, &options, &session), MELT_OUT_OF_MEMORY);
  EXPECT_EQ(session, nullptr);
  EXPECT_NE(std::string(melt_last_error()).find("the KV cache of"),
            std::string::npos)
      << melt_last_error();
  EXPECT_EQ(melt_model_destroy(model), MELT_OK); // no session left behind
}

TEST_F(SessionTest, ChangedCheckpointIsRefused) {
  melt_model *model = nullptr;
  EXPECT_EQ(melt_model_load(artifactPath.c_str(), "/nonexistent-dir", &model),
            MELT_NOT_FOUND);
  EXPECT_NE(std::string(melt_last_error()).find("cannot open"),
            std::string::npos);
}

} // namespace

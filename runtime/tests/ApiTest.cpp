//===- ApiTest.cpp - C API misuse and session behaviour ---------*- C++ -*-===//
#include "ModelFixture.h"

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
  EXPECT_EQ(melt_session_create(nullptr, 16, &session), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(session, nullptr);
  EXPECT_EQ(melt_session_create(bogus, 16, nullptr), MELT_INVALID_ARGUMENT);
  int seq = 0;
  EXPECT_EQ(melt_session_add_sequence(nullptr, &seq), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_session_append(nullptr, 0, &seq, 1, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_vocab_size(nullptr), 0);
  melt_model *model = nullptr;
  EXPECT_EQ(melt_model_load(nullptr, "x", &model), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_load("/nonexistent.melt", "/tmp", &model),
            MELT_NOT_FOUND);
  EXPECT_NE(std::string(melt_last_error()).find("/nonexistent.melt"),
            std::string::npos);
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

class SessionTest : public ModelTest {};

TEST_F(SessionTest, DoubleDestroyIsAnError) {
  melt_model *model = nullptr;
  ASSERT_EQ(melt_model_load(artifactPath.c_str(), checkpointDir.c_str(),
                            &model),
            MELT_OK)
      << melt_last_error();
  melt_session *session = nullptr;
  ASSERT_EQ(melt_session_create(model, 32, &session), MELT_OK);
  // A model outlives its sessions.
  EXPECT_EQ(melt_model_destroy(model), MELT_INVALID_ARGUMENT);
  EXPECT_NE(std::string(melt_last_error()).find("session"), std::string::npos);
  EXPECT_EQ(melt_session_destroy(session), MELT_OK);
  EXPECT_EQ(melt_session_destroy(session), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_destroy(model), MELT_OK);
  EXPECT_EQ(melt_model_destroy(model), MELT_INVALID_ARGUMENT);
}

TEST_F(SessionTest, BadTokensAndContextLeaveStateUnchanged) {
  melt_model *model = nullptr;
  ASSERT_EQ(melt_model_load(artifactPath.c_str(), checkpointDir.c_str(),
                            &model),
            MELT_OK);
  long long vocab = melt_model_vocab_size(model);
  melt_session *session = nullptr;
  melt_session *rejected = nullptr;
  EXPECT_EQ(melt_session_create(model, 0, &rejected), MELT_INVALID_ARGUMENT);
  EXPECT_EQ(rejected, nullptr);
  ASSERT_EQ(melt_session_create(model, 8, &session), MELT_OK);
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

TEST_F(SessionTest, ChangedCheckpointIsRefused) {
  melt_model *model = nullptr;
  EXPECT_EQ(melt_model_load(artifactPath.c_str(), "/nonexistent-dir", &model),
            MELT_NOT_FOUND);
  EXPECT_NE(std::string(melt_last_error()).find("cannot open"),
            std::string::npos);
}

} // namespace

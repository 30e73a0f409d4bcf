//===- CppWrapperTest.cpp - the C++ wrapper ---------------------*- C++ -*-===//
#include "ModelFixture.h"

#include "melt/runtime.hpp"

namespace {

class CppWrapper : public ModelTest {};

TEST_F(CppWrapper, GeneratesAndThrowsOnErrors) {
  melt::Model model(artifactPath, checkpointDir);
  melt::Session session(model, {64, 3 * MELT_KV_PAGE_TOKENS}); // 3 sequences
  int seq = session.addSequence();
  session.append(seq, {1, 17, 42});
  int token = melt::sampleGreedy(session.logits(seq));
  EXPECT_GE(token, 0);
  EXPECT_LT(token, model.vocabSize());
  try {
    session.append(seq, {static_cast<int>(model.vocabSize())});
    FAIL() << "a token outside the vocabulary must throw";
  } catch (const melt::Error &e) {
    EXPECT_EQ(e.status(), MELT_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"),
              std::string::npos);
  }
  EXPECT_NE(session.expertLoadJson().find("\"routers\""), std::string::npos);
  // A greedy step returns the token the logits would have given.
  int in[1] = {token};
  int second = session.addSequence();
  session.append(second, {1, 17, 42, token});
  int want = melt::sampleGreedy(session.logits(second));
  std::vector<int> next = session.stepGreedy({{seq, in, 1}});
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0], want);
  EXPECT_THROW(session.logits(seq), melt::Error); // stayed on the device
  // A sampled step: top_k 1 takes the largest logit, and draws once.
  int third = session.addSequence();
  session.append(third, {1, 17, 42});
  unsigned long long state = 3;
  std::vector<int> sampled =
      session.stepSample({{third, in, 1}}, melt_sampling{0.7f, 1, 1.f}, state);
  ASSERT_EQ(sampled.size(), 1u);
  EXPECT_EQ(sampled[0], want);
  EXPECT_NE(state, 3ull);
  EXPECT_THROW(
      session.stepSample({{third, in, 1}}, melt_sampling{-1.f, 0, 1.f}, state),
      melt::Error);
  // Greedy steps in one call: the first is the greedy step's token.
  session.removeSequence(third); // its page for the next one
  int fourth = session.addSequence();
  session.append(fourth, {1, 17, 42});
  std::vector<int> generated = session.generateGreedy({{fourth, in, 1}}, 3);
  ASSERT_EQ(generated.size(), 3u);
  EXPECT_EQ(generated[0], want);
  EXPECT_THROW(session.generateGreedy({{fourth, in, 1}}, 0), melt::Error);
  // Nothing kept yet (the session is open): releasing is no error.
  EXPECT_NO_THROW(model.releaseClosedSession());
}

TEST(CppWrapperNoModel, LoadFailureThrows) {
  EXPECT_THROW(melt::Model("/nonexistent.melt", "/tmp"), melt::Error);
}

} // namespace

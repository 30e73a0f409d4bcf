//===- ArtifactFuzzTest.cpp - damaged artifacts never crash -----*- C++ -*-===//
//
// Every truncation length, and every single-byte flip of the first 4 KiB,
// of a small artifact either loads and computes the same logits or fails
// with a clear error. test.sh runs this under ASan+UBSan.
//
//===----------------------------------------------------------------------===//
#include "ModelFixture.h"

#include <algorithm>

namespace {

class ArtifactFuzz : public ModelTest {
protected:
  /// Loads `data`; on success returns the logits after a fixed prompt.
  melt_status run(const std::vector<char> &data, std::vector<float> &logits) {
    melt_model *model = nullptr;
    melt_status status = melt_model_load_from_memory(
        data.data(), data.size(), checkpointDir.c_str(), &model);
    if (status != MELT_OK) {
      EXPECT_NE(std::string(melt_last_error()), "");
      return status;
    }
    melt_session *session = nullptr;
    melt_session_options options{16, 0};
    EXPECT_EQ(melt_session_create(model, &options, &session), MELT_OK);
    int seq = 0, prompt[3] = {5, 17, 3};
    melt_session_add_sequence(session, &seq);
    status = melt_session_append(session, seq, prompt, 3, nullptr);
    if (status == MELT_OK) {
      const float *values = nullptr;
      size_t n = 0;
      melt_session_logits(session, seq, &values, &n);
      logits.assign(values, values + n);
    }
    melt_session_destroy(session);
    melt_model_destroy(model);
    return status;
  }
};

TEST_F(ArtifactFuzz, TruncationsAndByteFlips) {
  std::vector<float> expected;
  ASSERT_EQ(run(bytes, expected), MELT_OK) << melt_last_error();

  size_t loaded = 0, refused = 0;
  auto check = [&](const std::vector<char> &damaged, const std::string &what) {
    std::vector<float> logits;
    melt_status status = run(damaged, logits);
    if (status == MELT_OK) {
      ++loaded;
      EXPECT_EQ(logits, expected) << what << " loaded but computes otherwise";
    } else {
      ++refused;
    }
  };
  for (size_t length = 0; length < bytes.size(); ++length)
    check(std::vector<char>(bytes.begin(), bytes.begin() + length),
          "truncation to " + std::to_string(length));
  size_t limit = std::min<size_t>(bytes.size(), 4096);
  for (size_t offset = 0; offset < limit; ++offset)
    for (unsigned char mask : {0x01, 0x80, 0xff}) {
      std::vector<char> damaged = bytes;
      damaged[offset] = static_cast<char>(damaged[offset] ^ mask);
      check(damaged, "flip at " + std::to_string(offset));
    }
  std::printf("damaged artifacts: %zu refused with an error, %zu loaded and "
              "computed the same logits\n",
              refused, loaded);
}

} // namespace

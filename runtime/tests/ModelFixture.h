//===- ModelFixture.h - a compiled model for runtime tests ------*- C++ -*-===//
//
// The runtime builds without the compiler, so tests that need a model take
// a compiled artifact and its checkpoint from the environment:
// MELT_TEST_ARTIFACT and MELT_TEST_CHECKPOINT (test.sh and ctest set them to
// test/golden/v3-tiny-fp8). Without them those tests are skipped.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_MODELFIXTURE_H
#define MELT_RUNTIME_TESTS_MODELFIXTURE_H

#include "melt/runtime.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

class ModelTest : public ::testing::Test {
protected:
  void SetUp() override {
    const char *artifact = std::getenv("MELT_TEST_ARTIFACT");
    const char *checkpoint = std::getenv("MELT_TEST_CHECKPOINT");
    if (!artifact || !checkpoint)
      GTEST_SKIP() << "MELT_TEST_ARTIFACT / MELT_TEST_CHECKPOINT not set";
    artifactPath = artifact;
    checkpointDir = checkpoint;
    std::ifstream in(artifactPath, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
    ASSERT_FALSE(bytes.empty()) << artifactPath;
  }

  std::string artifactPath, checkpointDir;
  std::vector<char> bytes;
};

/// A session's expert-load JSON through the C API (its size asked first):
/// the first call's status that is not MELT_OK, else MELT_OK.
inline melt_status expertLoadJson(melt_session *session, std::string &json) {
  size_t size = 0;
  if (melt_status s = melt_session_expert_load_json(session, nullptr, 0, &size);
      s != MELT_OK)
    return s;
  json.assign(size, '\0');
  return melt_session_expert_load_json(session, json.data(), size, &size);
}

#endif // MELT_RUNTIME_TESTS_MODELFIXTURE_H

//===- TestModels.h - the compiled golden models a test run names -------===//
//
// MELT_TEST_MODELS: `artifact:checkpoint[:tolerance]` entries separated by
// ';' (or '|'); else MELT_TEST_ARTIFACT and MELT_TEST_CHECKPOINT. The
// tolerance is a test's bound against the CPU (of the logit range).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_TESTMODELS_H
#define MELT_RUNTIME_TESTS_TESTMODELS_H

#include "Model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace melt::rt {

struct Compiled {
  std::string artifact, checkpoint;
  double tolerance = 1e-3;
};

inline std::vector<Compiled> modelsFromEnvironment() {
  std::vector<Compiled> models;
  if (const char *list = std::getenv("MELT_TEST_MODELS")) {
    std::string text = list;
    std::replace(text.begin(), text.end(), '|', ';');
    std::stringstream entries(text);
    std::string entry;
    while (std::getline(entries, entry, ';')) {
      size_t colon = entry.find(':');
      if (colon == std::string::npos)
        continue;
      Compiled c{entry.substr(0, colon), entry.substr(colon + 1)};
      size_t second = c.checkpoint.find(':');
      if (second != std::string::npos) {
        c.tolerance = std::atof(c.checkpoint.c_str() + second + 1);
        c.checkpoint.resize(second);
      }
      models.push_back(c);
    }
  } else if (std::getenv("MELT_TEST_ARTIFACT") &&
             std::getenv("MELT_TEST_CHECKPOINT")) {
    models.push_back({std::getenv("MELT_TEST_ARTIFACT"),
                      std::getenv("MELT_TEST_CHECKPOINT")});
  }
  return models;
}

/// The compiled model with its checkpoint (host data kept), or null after
/// a failed expectation.
inline std::unique_ptr<Model> loadCompiled(const Compiled &c) {
  std::unique_ptr<Model> model;
  Status s = Model::load(c.artifact, c.checkpoint, model,
                         /*keepHostData=*/true);
  EXPECT_FALSE(s) << c.artifact << ": " << s.message();
  return s ? nullptr : std::move(model);
}

} // namespace melt::rt

#endif // MELT_RUNTIME_TESTS_TESTMODELS_H

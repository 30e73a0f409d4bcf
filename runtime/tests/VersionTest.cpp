//===- VersionTest.cpp - versions and status names --------------*- C++ -*-===//
#include "melt/runtime.h"

#include <gtest/gtest.h>

#include <string>

TEST(Version, MatchesHeader) {
  EXPECT_EQ(std::string(melt_runtime_version()), MELT_VERSION_STRING);
}

TEST(Version, ArtifactCompatibility) {
  EXPECT_TRUE(melt_artifact_version_supported(MELT_ARTIFACT_VERSION_MAJOR,
                                              MELT_ARTIFACT_VERSION_MINOR));
  EXPECT_TRUE(melt_artifact_version_supported(MELT_ARTIFACT_VERSION_MAJOR, 0));
  EXPECT_FALSE(melt_artifact_version_supported(MELT_ARTIFACT_VERSION_MAJOR,
                                               MELT_ARTIFACT_VERSION_MINOR + 1));
  EXPECT_FALSE(
      melt_artifact_version_supported(MELT_ARTIFACT_VERSION_MAJOR + 1, 0));
}

TEST(Status, EveryCodeHasAName) {
  for (int code = MELT_OK; code <= MELT_INTERNAL; ++code)
    EXPECT_NE(std::string(melt_status_name(code)),
              "unknown status");
  EXPECT_EQ(std::string(melt_status_name(999)),
            "unknown status");
}

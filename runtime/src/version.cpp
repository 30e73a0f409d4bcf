//===- version.cpp - runtime and artifact versions --------------*- C++ -*-===//
#include "melt/runtime.h"

extern "C" const char *melt_runtime_version(void) {
  return MELT_VERSION_STRING;
}

extern "C" int melt_artifact_version_supported(unsigned major,
                                               unsigned minor) {
  // Same major; older or equal minor (newer minors may add what we ignore
  // wrongly, so they are refused).
  return major == MELT_ARTIFACT_VERSION_MAJOR &&
         minor <= MELT_ARTIFACT_VERSION_MINOR;
}

//===- DeviceTestNames.h - names of device tests ----------------*- C++ -*-===//
#ifndef MELT_RUNTIME_TESTS_DEVICETESTNAMES_H
#define MELT_RUNTIME_TESTS_DEVICETESTNAMES_H

#include <gtest/gtest.h>

#include <cctype>
#include <string>

/// "cuda:0" -> "cuda_0": a device name as a test name.
inline std::string
deviceTestName(const ::testing::TestParamInfo<std::string> &info) {
  std::string name = info.param;
  for (char &c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)))
      c = '_';
  return name;
}

#endif // MELT_RUNTIME_TESTS_DEVICETESTNAMES_H

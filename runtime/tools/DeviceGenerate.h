//===- DeviceGenerate.h - melt-run on a device ------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_TOOLS_DEVICEGENERATE_H
#define MELT_RUNTIME_TOOLS_DEVICEGENERATE_H

#include <string>
#include <vector>

struct GenerateOptions {
  std::string artifact, checkpoint, device;
  std::vector<int> prompt;
  long maxNew = 32;
  bool bench = false;
  /// Seeded random weights instead of the checkpoint (benchmarks).
  bool randomWeights = false;
};

/// Greedy generation through the Device interface (DeviceRunner: one
/// sequence, F32) on `options.device`; prints what melt-run prints, and on a
/// GPU with NVML the energy per decoded token. Returns the exit code.
int generateOnDevice(const GenerateOptions &options);

#endif // MELT_RUNTIME_TOOLS_DEVICEGENERATE_H

//===- Energy.h - GPU energy readings through NVML --------------*- C++ -*-===//
//
// The energy a GPU used, from NVML's total-energy counter (millijoules
// since the driver loaded; Volta and later). NVML is loaded at run time
// (dlopen of libnvidia-ml.so.1, which comes with the driver): building
// needs no NVML header or library, and a machine without it reports
// "unavailable" instead of failing.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ENERGY_H
#define MELT_RUNTIME_CUDA_ENERGY_H

#include <memory>
#include <string>

namespace melt::rt::cuda {

class EnergyMeter {
public:
  /// The meter of CUDA device `cudaIndex` (matched to NVML's device by PCI
  /// bus id); null with `why` set when NVML or the counter is missing.
  static std::unique_ptr<EnergyMeter> open(int cudaIndex, std::string &why);
  ~EnergyMeter();

  /// Joules used since the driver loaded; negative when the read fails.
  double joules() const;

private:
  EnergyMeter() = default;
  struct Nvml;
  std::unique_ptr<Nvml> nvml_;
};

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ENERGY_H

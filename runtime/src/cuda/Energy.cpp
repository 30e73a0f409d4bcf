//===- Energy.cpp - GPU energy readings through NVML ----------------------===//
#include "cuda/Energy.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

using namespace melt::rt::cuda;

namespace {
// The few NVML declarations used (nvml.h's, ABI-stable since NVML 5).
using NvmlReturn = int;
using NvmlDevice = struct NvmlDeviceOpaque *;
constexpr NvmlReturn kNvmlSuccess = 0;
} // namespace

struct EnergyMeter::Nvml {
  void *library = nullptr;
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*byPciBusId)(const char *, NvmlDevice *) = nullptr;
  NvmlReturn (*totalEnergy)(NvmlDevice, unsigned long long *) = nullptr;
  NvmlDevice device = nullptr;
  bool initialized = false;

  ~Nvml() {
    if (initialized && shutdown)
      shutdown();
    if (library)
      dlclose(library);
  }
};

std::unique_ptr<EnergyMeter> EnergyMeter::open(int cudaIndex,
                                               std::string &why) {
  auto nvml = std::make_unique<Nvml>();
  nvml->library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!nvml->library) {
    why = "NVML unavailable (libnvidia-ml.so.1 not found)";
    return nullptr;
  }
  auto symbol = [&](const char *name) { return dlsym(nvml->library, name); };
  nvml->init = reinterpret_cast<NvmlReturn (*)()>(symbol("nvmlInit_v2"));
  nvml->shutdown = reinterpret_cast<NvmlReturn (*)()>(symbol("nvmlShutdown"));
  nvml->byPciBusId =
      reinterpret_cast<NvmlReturn (*)(const char *, NvmlDevice *)>(
          symbol("nvmlDeviceGetHandleByPciBusId_v2"));
  nvml->totalEnergy =
      reinterpret_cast<NvmlReturn (*)(NvmlDevice, unsigned long long *)>(
          symbol("nvmlDeviceGetTotalEnergyConsumption"));
  if (!nvml->init || !nvml->shutdown || !nvml->byPciBusId ||
      !nvml->totalEnergy) {
    why = "NVML lacks the energy counter functions";
    return nullptr;
  }
  if (nvml->init() != kNvmlSuccess) {
    why = "nvmlInit failed";
    return nullptr;
  }
  nvml->initialized = true;
  char busId[32] = {};
  if (cudaDeviceGetPCIBusId(busId, sizeof(busId), cudaIndex) != cudaSuccess ||
      nvml->byPciBusId(busId, &nvml->device) != kNvmlSuccess) {
    why = "NVML does not know CUDA device " + std::to_string(cudaIndex);
    return nullptr;
  }
  unsigned long long millijoules = 0;
  if (nvml->totalEnergy(nvml->device, &millijoules) != kNvmlSuccess) {
    why = "this GPU has no NVML energy counter";
    return nullptr;
  }
  std::unique_ptr<EnergyMeter> meter(new EnergyMeter());
  meter->nvml_ = std::move(nvml);
  return meter;
}

EnergyMeter::~EnergyMeter() = default;

double EnergyMeter::joules() const {
  unsigned long long millijoules = 0;
  if (nvml_->totalEnergy(nvml_->device, &millijoules) != kNvmlSuccess)
    return -1;
  return millijoules * 1e-3;
}

//===- CudaDevice.h - the CUDA device ---------------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_CUDA_CUDADEVICE_H
#define MELT_RUNTIME_CUDA_CUDADEVICE_H

#include "Device.h"

namespace melt::rt {

/// GPUs the CUDA runtime sees (0 when there is none or no driver).
int cudaDeviceCount();
/// Opens GPU `index`: "no CUDA device: <reason>" when there is none.
Status openCudaDevice(int index, std::unique_ptr<Device> &out);

} // namespace melt::rt

#endif // MELT_RUNTIME_CUDA_CUDADEVICE_H

//===- KernelArgs.h - a kernel's parameters from the artifact ---*- C++ -*-===//
//
// The ints and floats of a RoPE or router kernel (schema/artifact.fbs) as
// KernelParams, for every executor that runs them.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_KERNELARGS_H
#define MELT_RUNTIME_KERNELARGS_H

#include "Artifact.h"
#include "KernelParams.h"

namespace melt::rt {

/// ints [interleaved, yarn, original_max], floats [theta, factor,
/// beta_fast, beta_slow, mscale, mscale_all_dim].
inline RopeParams ropeParamsOf(const fb::Kernel &kernel) {
  RopeParams p;
  p.interleaved = kernel.ints()->Get(0) != 0;
  p.yarn = kernel.ints()->Get(1) != 0;
  p.originalMax = kernel.ints()->Get(2);
  p.theta = kernel.floats()->Get(0);
  p.factor = kernel.floats()->Get(1);
  p.betaFast = kernel.floats()->Get(2);
  p.betaSlow = kernel.floats()->Get(3);
  p.mscale = kernel.floats()->Get(4);
  p.mscaleAllDim = kernel.floats()->Get(5);
  return p;
}

/// ints [scoring (0 sigmoid), method, top_k, n_group, topk_group, norm],
/// floats [routed_scaling_factor].
inline RouterParams routerParamsOf(const fb::Kernel &kernel) {
  RouterParams p;
  p.sigmoid = kernel.ints()->Get(0) == 0;
  p.method = static_cast<int>(kernel.ints()->Get(1));
  p.topK = kernel.ints()->Get(2);
  p.nGroup = kernel.ints()->Get(3);
  p.topkGroup = kernel.ints()->Get(4);
  p.normalize = kernel.ints()->Get(5) != 0;
  p.scale = kernel.floats()->Get(0);
  return p;
}

} // namespace melt::rt

#endif // MELT_RUNTIME_KERNELARGS_H

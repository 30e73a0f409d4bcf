//===- KernelParams.h - math every device shares ----------------*- C++ -*-===//
//
// RoPE (with DeepSeek's YaRN) and MoE routing as the artifact describes
// them, and the parts of their math that must be the same on every device:
// the rotary frequencies (computed on the host in double) and the choice
// of experts from router logits (ties to the lower expert index).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_KERNELPARAMS_H
#define MELT_RUNTIME_KERNELPARAMS_H

#include <cstdint>
#include <vector>

namespace melt::rt {

struct RopeParams {
  bool interleaved = true;
  double theta = 10000.0;
  bool yarn = false;
  int64_t originalMax = 0;
  double factor = 1.0, betaFast = 32.0, betaSlow = 1.0, mscale = 1.0,
         mscaleAllDim = 0.0;
};

/// The dim / 2 inverse frequencies: theta^(-2i/dim), interpolated by YaRN
/// below the beta_slow correction dimension, extrapolated above beta_fast,
/// a linear ramp between.
std::vector<double> ropeInverseFrequencies(const RopeParams &p, int64_t dim);
/// What cos and sin are multiplied by (YaRN's mscale ratio; 1 without).
double ropeOutputScale(const RopeParams &p);

struct RouterParams {
  bool sigmoid = true;
  int method = 2; // 0 greedy, 1 group_limited_greedy, 2 noaux_tc
  int64_t topK = 1, nGroup = 1, topkGroup = 1;
  bool normalize = false;
  double scale = 1.0;
};

/// Whether the parameters fit `experts` experts (and a bias of that many).
bool validRouting(const RouterParams &p, int64_t experts);
/// One token's experts from its router logits (`experts` of them): scores
/// by sigmoid or softmax, bias added for the choice (noaux_tc), groups kept
/// by their best (greedy) or best-two (noaux_tc) scores, then the top k;
/// weights are the unbiased scores, normalized if asked, times the scale.
void routeToken(const float *logits, int64_t experts, const float *bias,
                const RouterParams &p, int64_t *indices, float *weights);

} // namespace melt::rt

#endif // MELT_RUNTIME_KERNELPARAMS_H

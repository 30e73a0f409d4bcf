//===- Generation.h - melt-run's decoding loop and report --------*- C++ -*-===//
//
// What melt-run does with a session of the C API on any device: prefill
// the prompts of a batch in one step, decode them (greedily, or sampled)
// in steps of one token per sequence, the tokens picked on the model's
// device, time both, and print the result as text or one JSON line.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TOOLS_GENERATION_H
#define MELT_RUNTIME_TOOLS_GENERATION_H

#include "melt/runtime.h"

#include <functional>
#include <string>
#include <vector>

struct Generated {
  /// The tokens of the first sequence.
  std::vector<int> tokens;
  /// Tokens per second over all sequences.
  double prefillTokensPerS = 0, decodeTokensPerS = 0;
  /// The prefill's and the decode's seconds together: what moving work
  /// from one to the other cannot change.
  double generationSeconds = 0;
};

/// How the next tokens are picked: greedily (temperature 0), or drawn as
/// melt_sample draws them from a state seeded with `seed`.
struct Picking {
  melt_sampling sampling{0.f, 0, 1.f};
  unsigned long long seed = 0;
  /// Greedy decoding in calls of up to this many steps
  /// (melt_session_generate_greedy: each pick fed back on the device, one
  /// wait a call); 1: a melt_session_step_greedy call a step. 64 by
  /// default: on the H200, mini's FP8 decode at batch 1 went from
  /// 1043-1112 to 1151 tokens/s (bench/results/steps_per_call_h200.txt).
  long stepsPerCall = 64;
  /// Decode step s (from 1) of sequence i reads prompts[i][(s - 1) %
  /// length] instead of its last pick (a call a step): inputs that do not
  /// depend on the numerics, so that two runs (kernels, switches) decode
  /// the same tokens. With random weights a pick that moves by one last
  /// bit sends the rest of a free generation elsewhere, and a MoE layer's
  /// time follows where its rows are routed.
  bool forced = false;
};

/// `prompts` (one per sequence) prefilled in one step, then `maxNew` tokens
/// decoded for each; `decodeStarts` (if set) runs between the two. Prints
/// "melt-run: error: prefill|decode: ..." and returns false on failure.
bool generate(melt_session *session,
              const std::vector<std::vector<int>> &prompts, long maxNew,
              const Picking &picking, Generated &out,
              const std::function<void()> &decodeStarts = {});

/// What a report holds besides the tokens and rates; each field is printed
/// only when set.
struct ReportExtras {
  std::string deviceName, deviceDescription;
  /// The device kind the artifact was compiled for (melt-compile --target).
  std::string target;
  size_t batch = 1;
  /// The process's peak resident memory on the host.
  double peakMemoryMB = -1;
  /// The session's KV cache in its device's memory, and one token's share
  /// of it over all layers.
  double kvCacheMB = -1, kvBytesPerToken = -1;
  double joulesPerToken = -1;
  std::string energyUnavailable;
  /// Seconds the model took to load (weights read or made, then put on
  /// the device).
  double loadSeconds = -1;
  /// The weight bytes a one-sequence decode step reads
  /// (melt_model_decode_weight_bytes) and the device's copy bandwidth in
  /// GB/s (melt_model_copy_bandwidth): at batch 1 the decode's roofline.
  double stepWeightBytes = -1, copyGBps = -1;
  /// Every run's rates where the generation was timed several times (the
  /// report's rates are then their medians).
  std::vector<double> prefillRuns, decodeRuns, generationSecondsRuns;
};

/// Text ("generated: ..." lines) or, with `json`, one JSON line.
void printReport(bool json, size_t promptTokens, const Generated &generated,
                 const ReportExtras &extras);

#endif // MELT_RUNTIME_TOOLS_GENERATION_H

//===- Generation.cpp - melt-run's greedy loop and report ----------------===//
#include "Generation.h"

#include "melt/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

bool generateGreedy(Sequence &sequence, const std::vector<int> &prompt,
                    long maxNew, Generated &out,
                    const std::function<void()> &decodeStarts) {
  using Clock = std::chrono::steady_clock;
  std::string error;
  auto t0 = Clock::now();
  if (!sequence.append(prompt, error)) {
    std::fprintf(stderr, "melt-run: error: prefill: %s\n", error.c_str());
    return false;
  }
  auto t1 = Clock::now();
  if (decodeStarts)
    decodeStarts();
  out.tokens.clear();
  for (long i = 0; i < maxNew; ++i) {
    size_t vocab = 0;
    const float *logits = sequence.logits(vocab);
    int token = 0;
    if (!logits || melt_sample_greedy(logits, vocab, &token) != MELT_OK) {
      std::fprintf(stderr, "melt-run: error: sampling: %s\n",
                   melt_last_error());
      return false;
    }
    out.tokens.push_back(token);
    if (i + 1 == maxNew)
      break;
    if (!sequence.append({token}, error)) {
      std::fprintf(stderr, "melt-run: error: decode: %s\n", error.c_str());
      return false;
    }
  }
  auto t2 = Clock::now();
  double prefillS = std::chrono::duration<double>(t1 - t0).count();
  double decodeS = std::chrono::duration<double>(t2 - t1).count();
  out.prefillTokensPerS = prompt.size() / std::max(prefillS, 1e-9);
  out.decodeTokensPerS = out.tokens.size() > 1
                             ? (out.tokens.size() - 1) / std::max(decodeS, 1e-9)
                             : 0.0;
  return true;
}

void printReport(bool json, size_t promptTokens, const Generated &generated,
                 const ReportExtras &extras) {
  std::string ids;
  for (size_t i = 0; i < generated.tokens.size(); ++i)
    ids += (i ? "," : "") + std::to_string(generated.tokens[i]);
  if (json) {
    std::string head, tail;
    if (!extras.deviceName.empty())
      head = "\"device\": \"" + extras.deviceName + "\", ";
    char number[64];
    if (extras.peakMemoryMB >= 0) {
      std::snprintf(number, sizeof(number), "%.1f", extras.peakMemoryMB);
      tail += std::string(", \"peak_memory_mb\": ") + number;
    }
    if (extras.joulesPerToken >= 0)
      tail += ", \"decode_joules_per_token\": " +
              std::to_string(extras.joulesPerToken);
    else if (!extras.energyUnavailable.empty())
      tail += ", \"energy\": \"" + extras.energyUnavailable + "\"";
    std::printf("{%s\"prompt_tokens\": %zu, \"generated\": [%s], "
                "\"prefill_tokens_per_s\": %.2f, \"decode_tokens_per_s\": "
                "%.2f%s}\n",
                head.c_str(), promptTokens, ids.c_str(),
                generated.prefillTokensPerS, generated.decodeTokensPerS,
                tail.c_str());
    return;
  }
  std::printf("generated: %s\n", ids.c_str());
  if (!extras.deviceDescription.empty())
    std::printf("device: %s\n", extras.deviceDescription.c_str());
  std::printf("prefill: %zu tokens, %.1f tokens/s\n", promptTokens,
              generated.prefillTokensPerS);
  std::printf("decode: %zu tokens, %.1f tokens/s\n", generated.tokens.size(),
              generated.decodeTokensPerS);
  if (extras.peakMemoryMB >= 0)
    std::printf("peak memory: %.1f MB\n", extras.peakMemoryMB);
  if (extras.joulesPerToken >= 0)
    std::printf("energy: %.3f J per decoded token\n", extras.joulesPerToken);
}

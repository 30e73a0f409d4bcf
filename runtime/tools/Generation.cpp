//===- Generation.cpp - melt-run's decoding loop and report --------------===//
#include "Generation.h"

#include "melt/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

bool generate(melt_session *session,
              const std::vector<std::vector<int>> &prompts, long maxNew,
              const Picking &picking, Generated &out,
              const std::function<void()> &decodeStarts) {
  using Clock = std::chrono::steady_clock;
  size_t n = prompts.size();
  std::vector<int> ids(n), next(n), input(n);
  std::vector<melt_batch_entry> entries(n);
  size_t promptTokens = 0;
  for (size_t i = 0; i < n; ++i) {
    if (melt_session_add_sequence(session, &ids[i]) != MELT_OK) {
      std::fprintf(stderr, "melt-run: error: %s\n", melt_last_error());
      return false;
    }
    entries[i] = {ids[i], prompts[i].data(), prompts[i].size()};
    promptTokens += prompts[i].size();
  }
  // Tokens are picked on the model's device: only the ids come back.
  unsigned long long state = picking.seed;
  auto step = [&] {
    return picking.sampling.temperature > 0.f
               ? melt_session_step_sample(session, entries.data(), n,
                                          &picking.sampling, &state,
                                          next.data())
               : melt_session_step_greedy(session, entries.data(), n,
                                          next.data());
  };
  auto t0 = Clock::now();
  if (step() != MELT_OK) {
    std::fprintf(stderr, "melt-run: error: prefill: %s\n", melt_last_error());
    return false;
  }
  const auto prefillEnds = Clock::now();
  // Out of both timings: the caller's reading at the decode's start (NVML's
  // energy counter takes milliseconds to read).
  if (decodeStarts)
    decodeStarts();
  auto t1 = Clock::now();
  out.tokens.clear();
  if (picking.sampling.temperature <= 0.f && picking.stepsPerCall > 1 &&
      !picking.forced && maxNew > 0) {
    out.tokens.push_back(next[0]);
    std::vector<int> picked;
    for (long left = maxNew - 1; left > 0;) {
      const long steps = std::min(left, picking.stepsPerCall);
      for (size_t i = 0; i < n; ++i) {
        input[i] = next[i];
        entries[i] = {ids[i], &input[i], 1};
      }
      picked.resize(size_t(steps) * n);
      if (melt_session_generate_greedy(session, entries.data(), n,
                                       size_t(steps),
                                       picked.data()) != MELT_OK) {
        std::fprintf(stderr, "melt-run: error: decode: %s\n",
                     melt_last_error());
        return false;
      }
      for (long s = 0; s < steps; ++s)
        out.tokens.push_back(picked[size_t(s) * n]);
      std::copy(picked.end() - long(n), picked.end(), next.begin());
      left -= steps;
    }
  }
  for (long made = long(out.tokens.size()); made < maxNew; ++made) {
    out.tokens.push_back(next[0]);
    if (made + 1 == maxNew)
      break;
    for (size_t i = 0; i < n; ++i) {
      input[i] = picking.forced ? prompts[i][size_t(made) % prompts[i].size()]
                                : next[i];
      entries[i] = {ids[i], &input[i], 1};
    }
    if (step() != MELT_OK) {
      std::fprintf(stderr, "melt-run: error: decode: %s\n", melt_last_error());
      return false;
    }
  }
  auto t2 = Clock::now();
  double prefillS = std::chrono::duration<double>(prefillEnds - t0).count();
  double decodeS = std::chrono::duration<double>(t2 - t1).count();
  out.prefillTokensPerS = promptTokens / std::max(prefillS, 1e-9);
  out.generationSeconds = prefillS + decodeS;
  out.decodeTokensPerS =
      out.tokens.size() > 1
          ? double(n * (out.tokens.size() - 1)) / std::max(decodeS, 1e-9)
          : 0.0;
  return true;
}

/// Batch 1's decode roofline: steps a second at which the copy bandwidth
/// reads a step's weights (0 where either is unknown, batch > 1 or nothing
/// was decoded).
static double rooflineTokensPerS(const ReportExtras &extras,
                                 const Generated &generated) {
  if (extras.batch != 1 || extras.stepWeightBytes <= 0 ||
      extras.copyGBps <= 0 || generated.decodeTokensPerS <= 0)
    return 0;
  return extras.copyGBps * 1e9 / extras.stepWeightBytes;
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
    head += "\"batch\": " + std::to_string(extras.batch) + ", ";
    char number[64];
    if (extras.peakMemoryMB >= 0) {
      std::snprintf(number, sizeof(number), "%.1f", extras.peakMemoryMB);
      tail += std::string(", \"peak_memory_mb\": ") + number;
    }
    if (extras.loadSeconds >= 0) {
      std::snprintf(number, sizeof(number), "%.2f", extras.loadSeconds);
      tail += std::string(", \"load_seconds\": ") + number;
    }
    if (extras.kvCacheMB >= 0) {
      std::snprintf(number, sizeof(number), "%.2f", extras.kvCacheMB);
      tail += std::string(", \"kv_cache_mb\": ") + number;
      std::snprintf(number, sizeof(number), "%.0f", extras.kvBytesPerToken);
      tail += std::string(", \"kv_bytes_per_token\": ") + number;
    }
    if (extras.stepWeightBytes >= 0) {
      std::snprintf(number, sizeof(number), "%.0f", extras.stepWeightBytes);
      tail += std::string(", \"decode_step_weight_bytes\": ") + number;
    }
    if (extras.copyGBps > 0) {
      std::snprintf(number, sizeof(number), "%.1f", extras.copyGBps);
      tail += std::string(", \"copy_GBps\": ") + number;
    }
    if (const double roofline = rooflineTokensPerS(extras, generated);
        roofline > 0) {
      std::snprintf(number, sizeof(number), "%.1f", roofline);
      tail += std::string(", \"decode_roofline_tokens_per_s\": ") + number;
      std::snprintf(number, sizeof(number), "%.4f",
                    generated.decodeTokensPerS / roofline);
      tail += std::string(", \"decode_roofline_share\": ") + number;
    }
    auto list = [](const std::vector<double> &values) {
      std::string text;
      char number[64];
      for (size_t i = 0; i < values.size(); ++i) {
        std::snprintf(number, sizeof(number), "%.2f", values[i]);
        text += (i ? ", " : "") + std::string(number);
      }
      return "[" + text + "]";
    };
    if (!extras.prefillRuns.empty())
      tail += ", \"prefill_tokens_per_s_runs\": " + list(extras.prefillRuns) +
              ", \"decode_tokens_per_s_runs\": " + list(extras.decodeRuns);
    std::snprintf(number, sizeof(number), "%.6f", generated.generationSeconds);
    tail += std::string(", \"generation_seconds\": ") + number;
    if (!extras.generationSecondsRuns.empty()) {
      std::string runs;
      for (size_t i = 0; i < extras.generationSecondsRuns.size(); ++i) {
        std::snprintf(number, sizeof(number), "%.6f",
                      extras.generationSecondsRuns[i]);
        runs += (i ? ", " : "") + std::string(number);
      }
      tail += ", \"generation_seconds_runs\": [" + runs + "]";
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
  if (!extras.target.empty() && extras.target != "cpu")
    std::printf("compiled for: %s\n", extras.target.c_str());
  if (extras.batch > 1)
    std::printf("batch: %zu sequences (generated: the first one's)\n",
                extras.batch);
  std::printf("prefill: %zu tokens, %.1f tokens/s\n",
              promptTokens * extras.batch, generated.prefillTokensPerS);
  std::printf("decode: %zu tokens, %.1f tokens/s\n",
              generated.tokens.size() * extras.batch,
              generated.decodeTokensPerS);
  std::printf("prefill and decode: %.2f ms\n",
              generated.generationSeconds * 1e3);
  if (!extras.prefillRuns.empty())
    std::printf("(medians of %zu runs)\n", extras.prefillRuns.size());
  if (extras.peakMemoryMB >= 0)
    std::printf("peak memory: %.1f MB\n", extras.peakMemoryMB);
  if (extras.loadSeconds >= 0)
    std::printf("model loaded in %.2f s\n", extras.loadSeconds);
  if (extras.kvCacheMB >= 0)
    std::printf("KV cache: %.2f MB (%.0f bytes a token)\n", extras.kvCacheMB,
                extras.kvBytesPerToken);
  if (extras.joulesPerToken >= 0)
    std::printf("energy: %.3f J per decoded token\n", extras.joulesPerToken);
  if (const double roofline = rooflineTokensPerS(extras, generated);
      roofline > 0)
    std::printf("roofline: a step reads %.3f GB of weights, at the %.1f GB/s "
                "copy bandwidth %.1f tokens/s (this decode: %.1f%%)\n",
                extras.stepWeightBytes / 1e9, extras.copyGBps, roofline,
                100 * generated.decodeTokensPerS / roofline);
}

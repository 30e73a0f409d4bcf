//===- Generation.h - melt-run's greedy loop and report ------*- C++ -*-===//
//
// What melt-run does the same whatever runs the model (the C API's session
// on the CPU, or the device path): prefill the prompt, decode greedily,
// time both, and print the result as text or one JSON line.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TOOLS_GENERATION_H
#define MELT_RUNTIME_TOOLS_GENERATION_H

#include <functional>
#include <string>
#include <vector>

/// One sequence of some model.
class Sequence {
public:
  virtual ~Sequence() = default;
  /// Appends tokens; false with `error` set when it fails.
  virtual bool append(const std::vector<int> &tokens, std::string &error) = 0;
  /// The next-token logits after the last append.
  virtual const float *logits(size_t &vocab) = 0;
};

struct Generated {
  std::vector<int> tokens;
  double prefillTokensPerS = 0, decodeTokensPerS = 0;
};

/// Prefills `prompt` and decodes `maxNew` tokens greedily; `decodeStarts`
/// (if set) runs between the two. Prints "melt-run: error: prefill|decode:
/// ..." and returns false on failure.
bool generateGreedy(Sequence &sequence, const std::vector<int> &prompt,
                    long maxNew, Generated &out,
                    const std::function<void()> &decodeStarts = {});

/// What a report holds besides the tokens and rates; each field is printed
/// only when set.
struct ReportExtras {
  std::string deviceName, deviceDescription;
  double peakMemoryMB = -1;
  double joulesPerToken = -1;
  std::string energyUnavailable;
};

/// Text ("generated: ..." lines) or, with `json`, one JSON line.
void printReport(bool json, size_t promptTokens, const Generated &generated,
                 const ReportExtras &extras);

#endif // MELT_RUNTIME_TOOLS_GENERATION_H

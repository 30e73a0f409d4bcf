//===- melt-run.cpp - generate from a compiled model ------------*- C++ -*-===//
//
//   melt-run model.melt --checkpoint DIR --prompt-ids 1,2,3 --max-new 32
//
// Greedy generation of one sequence; prints the generated ids, prefill and
// decode tokens/s and the peak memory; --bench prints the same as JSON.
// On the CPU it uses the C API only, like any embedding program; with
// --device (cuda:0, or cpu for the same path on the CPU device) it runs
// the model through the Device interface (DeviceGenerate.cpp) and reports
// the GPU's energy per decoded token from NVML.
//
//===----------------------------------------------------------------------===//
#include "DeviceGenerate.h"
#include "Generation.h"
#include "melt/runtime.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/resource.h>
#include <vector>

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: melt-run MODEL.melt [--checkpoint DIR] --prompt-ids "
               "1,2,3 [--max-new N] [--max-context N] [--bench]\n"
               "       [--expert-stats FILE]  (per-expert load counters as "
               "JSON)\n"
               "       [--device cpu|cuda:N]  (run through the device "
               "interface: one sequence, F32)\n"
               "       [--random-weights]  (with --device: seeded random "
               "weights, no checkpoint; for benchmarks)\n"
               "Generates greedily from a compiled melt model and reports "
               "tokens/s and peak memory.\n");
}

int fail(const char *what) {
  std::fprintf(stderr, "melt-run: error: %s: %s\n", what, melt_last_error());
  return 1;
}

bool parseIds(const char *text, std::vector<int> &ids) {
  std::string s(text);
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    std::string item = s.substr(
        start, comma == std::string::npos ? std::string::npos : comma - start);
    char *end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0 || v > 0x7fffffff)
      return false;
    ids.push_back(static_cast<int>(v));
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }
  return !ids.empty();
}

/// A sequence of a C API session.
class SessionSequence final : public Sequence {
public:
  explicit SessionSequence(melt_session *session) : session_(session) {
    melt_session_add_sequence(session_, &id_);
  }
  bool append(const std::vector<int> &tokens, std::string &error) override {
    if (melt_session_append(session_, id_, tokens.data(), tokens.size(),
                            nullptr) == MELT_OK)
      return true;
    error = melt_last_error();
    return false;
  }
  const float *logits(size_t &vocab) override {
    const float *logits = nullptr;
    return melt_session_logits(session_, id_, &logits, &vocab) == MELT_OK
               ? logits
               : nullptr;
  }

private:
  melt_session *session_;
  int id_ = 0;
};

double peakMemoryMB() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

} // namespace

int main(int argc, char **argv) {
  const char *artifact = nullptr, *checkpoint = nullptr;
  std::vector<int> prompt;
  long maxNew = 32, maxContext = 4096;
  bool bench = false;
  const char *expertStats = nullptr, *device = nullptr;
  bool randomWeights = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> const char * {
      return i + 1 < argc ? argv[++i] : nullptr;
    };
    if (arg == "--help" || arg == "-h") {
      usage();
      return 0;
    } else if (arg == "--checkpoint") {
      checkpoint = value();
    } else if (arg == "--prompt-ids") {
      const char *v = value();
      if (!v || !parseIds(v, prompt)) {
        std::fprintf(stderr, "melt-run: error: --prompt-ids takes comma-"
                             "separated non-negative token ids\n");
        return 1;
      }
    } else if (arg == "--max-new") {
      const char *v = value();
      maxNew = v ? std::strtol(v, nullptr, 10) : -1;
    } else if (arg == "--max-context") {
      const char *v = value();
      maxContext = v ? std::strtol(v, nullptr, 10) : -1;
    } else if (arg == "--expert-stats") {
      expertStats = value();
      if (!expertStats) {
        usage();
        return 1;
      }
    } else if (arg == "--bench") {
      bench = true;
    } else if (arg == "--random-weights") {
      randomWeights = true;
    } else if (arg == "--device") {
      device = value();
      if (!device) {
        usage();
        return 1;
      }
    } else if (!artifact && arg[0] != '-') {
      artifact = argv[i];
    } else {
      std::fprintf(stderr, "melt-run: error: unknown argument '%s'\n",
                   arg.c_str());
      usage();
      return 1;
    }
  }
  if (!artifact || prompt.empty() || maxNew < 0 || maxContext <= 0) {
    usage();
    return 1;
  }

  if (randomWeights && !device) {
    std::fprintf(stderr, "melt-run: error: --random-weights needs --device\n");
    return 1;
  }
  if (device) {
    if (expertStats) {
      std::fprintf(stderr, "melt-run: error: --expert-stats is not available "
                           "with --device yet\n");
      return 1;
    }
    GenerateOptions options;
    options.artifact = artifact;
    options.checkpoint = checkpoint ? checkpoint : "";
    options.device = device;
    options.prompt = prompt;
    options.maxNew = maxNew;
    options.bench = bench;
    options.randomWeights = randomWeights;
    return generateOnDevice(options);
  }

  melt_model *model = nullptr;
  if (melt_model_load(artifact, checkpoint, &model) != MELT_OK)
    return fail("loading the model");
  melt_session *session = nullptr;
  melt_session_options options{maxContext, maxContext};
  if (melt_session_create(model, &options, &session) != MELT_OK)
    return fail("creating a session");
  SessionSequence sequence(session);
  Generated generated;
  if (!generateGreedy(sequence, prompt, maxNew, generated))
    return 1;
  ReportExtras extras;
  extras.peakMemoryMB = peakMemoryMB();
  printReport(bench, prompt.size(), generated, extras);
  if (expertStats) {
    size_t size = 0;
    melt_session_expert_load_json(session, nullptr, 0, &size);
    std::string json(size, '\0');
    melt_session_expert_load_json(session, json.data(), size, &size);
    json.resize(size - 1);
    std::string tmp = std::string(expertStats) + ".tmp";
    FILE *f = std::fopen(tmp.c_str(), "wb");
    if (!f || std::fwrite(json.data(), 1, json.size(), f) != json.size() ||
        std::fclose(f) != 0 || std::rename(tmp.c_str(), expertStats) != 0) {
      std::fprintf(stderr, "melt-run: error: cannot write %s\n", expertStats);
      return 1;
    }
  }
  melt_session_destroy(session);
  melt_model_destroy(model);
  return 0;
}

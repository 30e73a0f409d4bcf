//===- melt-run.cpp - generate from a compiled model ------------*- C++ -*-===//
//
//   melt-run model.melt --checkpoint DIR --prompt-ids 1,2,3 --max-new 32
//
// Greedy (or sampled) generation; prints the generated ids, prefill and decode
// tokens/s and the peak memory; --bench prints the same as JSON. It uses the C
// API only, like any embedding program, on the CPU or (--device cuda:N) a GPU,
// where it also reports the energy per decoded token from NVML. --batch N
// runs N sequences together (sequence i's prompt is the given one with
// every id offset by i, modulo the vocabulary, so that they differ); a
// list (--batch 1,16,64) runs each in turn on the model loaded once, a
// report for each.
//
//===----------------------------------------------------------------------===//
#include "Generation.h"
#ifdef MELT_HAVE_CUDA_DEVICE
#include "cuda/Energy.h"
#endif
#include "melt/runtime.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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
               "       [--device cpu|cuda:N]  (where the model runs; "
               "default cpu)\n"
               "       [--batch N[,N...]]  (N sequences decoded together; "
               "a list runs each; default 1)\n"
               "       [--random-weights]  (seeded random weights, no "
               "checkpoint; for benchmarks)\n"
               "       [--warmup]  (an untimed generation of each batch "
               "first: plans, caches, recorded decode steps, which the "
               "timed sessions take over; for benchmarks)\n"
               "       [--repeat N]  (the timed generation N times, each in "
               "a session of its own: the median rates, and every run's "
               "with --bench; default 1)\n"
               "       [--temperature T] [--top-k K] [--top-p P] [--seed S]  "
               "(sampling, as melt_sample: T 0 is greedy, the default; K 0 "
               "and P 1 keep every token)\n"
               "       [--steps-per-call N]  (greedy decoding N steps a "
               "call, each pick fed back on the device: "
               "melt_session_generate_greedy; default 64, 1: a call a step)\n"
               "       [--forced-decode]  (each decode step's input is the "
               "sequence's prompt again, token after token, not its last "
               "pick: the same inputs whatever the numerics, to compare "
               "the speed and the picks of two runs; a call a step)\n"
               "Generates from a compiled melt model (the tokens picked on "
               "its device) and reports tokens/s of the prefill and the "
               "decode, their time together, peak memory and, on a GPU, "
               "joules per decoded token (--bench: as one JSON line a "
               "batch; on a GPU also the weight bytes a step reads, the "
               "copy bandwidth measured before the runs and, at batch 1, "
               "the decode's share of that roofline).\n"
               "Environment: MELT_PROFILE=1 prints time per kernel kind; "
               "the MELT_* switches that compare the runtime's choices are "
               "listed in the README.\n");
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

/// Joules the device used, where it can tell (NVML on a GPU); negative
/// elsewhere.
class Energy {
public:
  explicit Energy(const std::string &device) {
#ifdef MELT_HAVE_CUDA_DEVICE
    if (device.rfind("cuda", 0) == 0) {
      int index = device.size() > 5 ? std::atoi(device.c_str() + 5) : 0;
      meter_ = melt::rt::cuda::EnergyMeter::open(index, why_);
    }
#else
    (void)device;
#endif
  }
  double joules() const {
#ifdef MELT_HAVE_CUDA_DEVICE
    if (meter_)
      return meter_->joules();
#endif
    return -1;
  }
  const std::string &why() const { return why_; }

private:
  std::string why_ = "no energy counter on this device";
#ifdef MELT_HAVE_CUDA_DEVICE
  std::unique_ptr<melt::rt::cuda::EnergyMeter> meter_;
#endif
};

/// The middle value (the mean of the middle two for an even count).
double median(std::vector<double> values) {
  if (values.empty())
    return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

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
  std::vector<int> batches = {1};
  bool bench = false;
  const char *expertStats = nullptr, *device = nullptr;
  bool randomWeights = false, warmup = false;
  int repeats = 1;
  Picking picking;
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
    } else if (arg == "--batch") {
      const char *v = value();
      batches.clear();
      bool ok = v && parseIds(v, batches);
      for (int b : batches)
        ok = ok && b >= 1 && b <= 4096;
      if (!ok) {
        std::fprintf(stderr, "melt-run: error: --batch takes 1 to 4096 "
                             "sequences (or a comma-separated list)\n");
        return 1;
      }
    } else if (arg == "--expert-stats") {
      expertStats = value();
      if (!expertStats) {
        usage();
        return 1;
      }
      const char *counting = std::getenv("MELT_EXPERT_LOAD");
      if (counting && std::string(counting) == "0")
        std::fprintf(stderr,
                     "melt-run: warning: MELT_EXPERT_LOAD=0 counts "
                     "no expert load: %s will list no routers\n",
                     expertStats);
    } else if (arg == "--temperature" || arg == "--top-p") {
      const char *v = value();
      char *end = nullptr;
      float f = v ? std::strtof(v, &end) : -1.f;
      bool temperature = arg == "--temperature";
      if (!v || *end || !std::isfinite(f) ||
          (temperature ? f < 0.f : !(f > 0.f && f <= 1.f))) {
        std::fprintf(stderr, "melt-run: error: %s takes %s\n", arg.c_str(),
                     temperature ? "a finite number >= 0"
                                 : "a number in (0, 1]");
        return 1;
      }
      (temperature ? picking.sampling.temperature : picking.sampling.top_p) = f;
    } else if (arg == "--top-k" || arg == "--seed") {
      const char *v = value();
      char *end = nullptr;
      long long n = v ? std::strtoll(v, &end, 10) : -1;
      if (!v || *end || n < 0 || (arg == "--top-k" && n > (1 << 30))) {
        std::fprintf(stderr,
                     "melt-run: error: %s takes a non-negative "
                     "integer\n",
                     arg.c_str());
        return 1;
      }
      if (arg == "--top-k")
        picking.sampling.top_k = int(n);
      else
        picking.seed = (unsigned long long)n;
    } else if (arg == "--steps-per-call") {
      const char *v = value();
      char *end = nullptr;
      long n = v ? std::strtol(v, &end, 10) : 0;
      if (!v || *end || n < 1 || n > (1 << 20)) {
        std::fprintf(stderr, "melt-run: error: --steps-per-call takes a "
                             "whole number from 1 to 1048576\n");
        return 1;
      }
      picking.stepsPerCall = n;
    } else if (arg == "--forced-decode") {
      picking.forced = true;
    } else if (arg == "--bench") {
      bench = true;
    } else if (arg == "--warmup") {
      warmup = true;
    } else if (arg == "--repeat") {
      const char *v = value();
      char *end = nullptr;
      long n = v ? std::strtol(v, &end, 10) : 0;
      if (!v || *end || n < 1 || n > 1000) {
        std::fprintf(stderr, "melt-run: error: --repeat takes 1 to 1000 "
                             "runs\n");
        return 1;
      }
      repeats = int(n);
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

  std::string deviceName = device ? device : "cpu";
  melt_model *model = nullptr;
  const auto loadStarts = std::chrono::steady_clock::now();
  melt_status loaded = randomWeights
                           ? melt_model_load_random(artifact, /*seed=*/1,
                                                    deviceName.c_str(), &model)
                           : melt_model_load_on(artifact, checkpoint,
                                                deviceName.c_str(), &model);
  if (loaded != MELT_OK)
    return fail("loading the model");
  const double loadSeconds = std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - loadStarts)
                                 .count();
  long long vocab = melt_model_vocab_size(model);
  // The batch-1 roofline's terms: a step's weight bytes, and with --bench on
  // a device that measures it, the copy bandwidth (once, before the runs).
  long long stepWeightBytes = -1;
  if (melt_model_decode_weight_bytes(model, &stepWeightBytes) != MELT_OK)
    stepWeightBytes = -1;
  double copyGBps = -1;
  if (bench && device && melt_model_copy_bandwidth(model, &copyGBps) != MELT_OK)
    copyGBps = -1;
  Energy energy(deviceName);
  melt_session *session = nullptr;
  for (int batch : batches) {
    std::vector<std::vector<int>> prompts;
    for (int i = 0; i < batch; ++i) {
      prompts.push_back(prompt);
      if (i > 0) // the first is the given prompt, checked as it is
        for (int &id : prompts.back())
          id = int((id + i) % std::max(vocab, 1ll));
    }
    long long perSequence =
        std::min<long long>(maxContext, (long long)prompt.size() + maxNew);
    constexpr long long kPage = MELT_KV_PAGE_TOKENS;
    melt_session_options options{
        maxContext, batch * ((perSequence + kPage - 1) / kPage * kPage)};
    // The last batch's session closes first: the warmup's session then
    // leaves this batch's state (caches, recorded steps) to the timed runs
    // (melt_session_destroy keeps one closed session's).
    if (session)
      melt_session_destroy(session);
    session = nullptr;
    if (warmup) { // the same shapes once, untimed, in a session of its own
      melt_session *first = nullptr;
      Generated ignored;
      if (melt_session_create(model, &options, &first) != MELT_OK)
        return fail("creating a session");
      bool ok =
          generate(first, prompts, std::min(maxNew, 4l), picking, ignored);
      melt_session_destroy(first);
      if (!ok)
        return 1;
    }
    // The timed generation, `repeats` times, each in a fresh session (the
    // same pages, caches and graphs to start from); the last session stays
    // for --expert-stats.
    Generated generated;
    std::vector<double> prefillRates, decodeRates, generationSeconds,
        joulesPerToken;
    bool energyRead = false;
    size_t decoded = 0;
    for (int run = 0; run < repeats; ++run) {
      if (session)
        melt_session_destroy(session);
      session = nullptr;
      if (melt_session_create(model, &options, &session) != MELT_OK)
        return fail("creating a session");
      Generated thisRun;
      double joulesBefore = -1;
      if (!generate(session, prompts, maxNew, picking, thisRun,
                    [&] { joulesBefore = energy.joules(); }))
        return 1;
      double joulesAfter = energy.joules();
      // Runs of the same inputs agree unless the device sums in an order
      // of its own (MELT_CUDA_DETERMINISTIC_EXPERTS=0) and a near tie
      // flips: said, not failed.
      if (run > 0 && thisRun.tokens != generated.tokens)
        std::fprintf(stderr,
                     "melt-run: warning: run %d of batch %d generated other "
                     "tokens than the run before (reported: the last run's)\n",
                     run + 1, batch);
      generated = thisRun;
      prefillRates.push_back(thisRun.prefillTokensPerS);
      decodeRates.push_back(thisRun.decodeTokensPerS);
      generationSeconds.push_back(thisRun.generationSeconds);
      decoded = generated.tokens.size() > 1
                    ? (generated.tokens.size() - 1) * size_t(batch)
                    : 0;
      energyRead = joulesBefore >= 0;
      if (energyRead && joulesAfter > joulesBefore && decoded)
        joulesPerToken.push_back((joulesAfter - joulesBefore) / decoded);
    }
    generated.prefillTokensPerS = median(prefillRates);
    generated.decodeTokensPerS = median(decodeRates);
    generated.generationSeconds = median(generationSeconds);
    ReportExtras extras;
    if (repeats > 1) {
      extras.prefillRuns = prefillRates;
      extras.decodeRuns = decodeRates;
      extras.generationSecondsRuns = generationSeconds;
    }
    extras.batch = size_t(batch);
    extras.peakMemoryMB = peakMemoryMB();
    extras.loadSeconds = loadSeconds;
    extras.stepWeightBytes = double(stepWeightBytes);
    extras.copyGBps = copyGBps;
    long long kvBytes = 0, kvPageBytes = 0;
    if (session &&
        melt_session_kv_bytes(session, &kvBytes, &kvPageBytes) == MELT_OK) {
      extras.kvCacheMB = double(kvBytes) / (1 << 20);
      extras.kvBytesPerToken = double(kvPageBytes) / MELT_KV_PAGE_TOKENS;
    }
    if (device) {
      extras.deviceName = melt_model_device(model);
      extras.deviceDescription = melt_model_device_description(model);
      extras.target = melt_model_target(model);
      if (!joulesPerToken.empty())
        extras.joulesPerToken = median(joulesPerToken);
      else if (!energyRead)
        extras.energyUnavailable = energy.why();
      else if (!decoded)
        extras.energyUnavailable = "no decode steps to measure";
      else // NVML's counter advances every few milliseconds
        extras.energyUnavailable = "the decode steps ran too briefly for "
                                   "the energy counter";
    }
    printReport(bench, prompt.size(), generated, extras);
    std::fflush(stdout);
  }
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

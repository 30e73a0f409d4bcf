//===- DeviceGenerate.cpp - melt-run on a device
//-----------------------------===//
#include "DeviceGenerate.h"

#include "DeviceRunner.h"
#ifdef MELT_HAVE_CUDA_DEVICE
#include "cuda/Energy.h"
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>

using namespace melt::rt;

namespace {

int fail(const char *what, const Status &s) {
  std::fprintf(stderr, "melt-run: error: %s: %s\n", what, s.message().c_str());
  return 1;
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

} // namespace

int generateOnDevice(const GenerateOptions &o) {
  std::unique_ptr<Device> device;
  if (Status s = openDevice(o.device, device))
    return fail("opening the device", s);
  std::unique_ptr<Model> model;
  Status loaded = o.randomWeights
                      ? Model::loadRandom(o.artifact, /*seed=*/1, model)
                      : Model::load(o.artifact, o.checkpoint, model,
                                    /*keepHostData=*/true);
  if (loaded)
    return fail("loading the model", loaded);
  std::unique_ptr<DeviceRunner> runner;
  if (Status s = DeviceRunner::create(
          *model, *device, int64_t(o.prompt.size()) + o.maxNew + 1, runner))
    return fail("preparing the model on the device", s);
  Energy energy(o.device);

  using Clock = std::chrono::steady_clock;
  std::vector<float> logits;
  std::vector<int32_t> tokens(o.prompt.begin(), o.prompt.end());
  auto t0 = Clock::now();
  if (Status s = runner->append(tokens, logits))
    return fail("prefill", s);
  auto t1 = Clock::now();
  double joulesBefore = energy.joules();
  const size_t vocab = logits.size() / tokens.size();
  std::vector<int> generated;
  for (long i = 0; i < o.maxNew; ++i) {
    auto last = logits.end() - long(vocab);
    int token = int(std::max_element(last, logits.end()) - last);
    generated.push_back(token);
    if (i + 1 == o.maxNew)
      break;
    if (Status s = runner->append({token}, logits))
      return fail("decode", s);
  }
  auto t2 = Clock::now();
  double joulesAfter = energy.joules();
  double prefillS = std::chrono::duration<double>(t1 - t0).count();
  double decodeS = std::chrono::duration<double>(t2 - t1).count();
  size_t decoded = generated.size() > 1 ? generated.size() - 1 : 0;
  double prefillTps = o.prompt.size() / std::max(prefillS, 1e-9);
  double decodeTps = decoded ? decoded / std::max(decodeS, 1e-9) : 0.0;
  double joulesPerToken =
      joulesBefore >= 0 && joulesAfter > joulesBefore && decoded
          ? (joulesAfter - joulesBefore) / decoded
          : -1;

  std::string ids;
  for (size_t i = 0; i < generated.size(); ++i)
    ids += (i ? "," : "") + std::to_string(generated[i]);
  if (o.bench) {
    std::string energyField =
        joulesPerToken >= 0
            ? ", \"decode_joules_per_token\": " + std::to_string(joulesPerToken)
            : ", \"energy\": \"" + energy.why() + "\"";
    std::printf("{\"device\": \"%s\", \"prompt_tokens\": %zu, \"generated\": "
                "[%s], \"prefill_tokens_per_s\": %.2f, "
                "\"decode_tokens_per_s\": %.2f%s}\n",
                device->name().c_str(), o.prompt.size(), ids.c_str(),
                prefillTps, decodeTps, energyField.c_str());
  } else {
    std::printf("generated: %s\n", ids.c_str());
    std::printf("device: %s\n", device->description().c_str());
    std::printf("prefill: %zu tokens, %.1f tokens/s\n", o.prompt.size(),
                prefillTps);
    std::printf("decode: %zu tokens, %.1f tokens/s\n", generated.size(),
                decodeTps);
    if (joulesPerToken >= 0)
      std::printf("energy: %.3f J per decoded token\n", joulesPerToken);
  }
  return 0;
}

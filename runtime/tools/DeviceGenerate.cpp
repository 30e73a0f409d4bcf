//===- DeviceGenerate.cpp - melt-run on a device -------------------------===//
#include "DeviceGenerate.h"

#include "DeviceRunner.h"
#ifdef MELT_HAVE_CUDA_DEVICE
#include "cuda/Energy.h"
#endif

#include "Generation.h"

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

/// The one sequence of a DeviceRunner.
class DeviceSequence final : public Sequence {
public:
  explicit DeviceSequence(DeviceRunner &runner) : runner_(runner) {}
  bool append(const std::vector<int> &tokens, std::string &error) override {
    Status s = runner_.append(
        std::vector<int32_t>(tokens.begin(), tokens.end()), logits_);
    if (s) {
      error = s.message();
      return false;
    }
    rows_ = tokens.size();
    return true;
  }
  const float *logits(size_t &vocab) override {
    // The logits of every appended token: the last row is the next token's.
    vocab = rows_ ? logits_.size() / rows_ : 0;
    return rows_ ? logits_.data() + logits_.size() - vocab : nullptr;
  }

private:
  DeviceRunner &runner_;
  std::vector<float> logits_;
  size_t rows_ = 0;
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

  DeviceSequence sequence(*runner);
  Generated generated;
  double joulesBefore = -1;
  if (!generateGreedy(sequence, o.prompt, o.maxNew, generated,
                      [&] { joulesBefore = energy.joules(); }))
    return 1;
  double joulesAfter = energy.joules();
  size_t decoded =
      generated.tokens.size() > 1 ? generated.tokens.size() - 1 : 0;
  ReportExtras extras;
  extras.deviceName = device->name();
  extras.deviceDescription = device->description();
  if (joulesBefore >= 0 && joulesAfter > joulesBefore && decoded)
    extras.joulesPerToken = (joulesAfter - joulesBefore) / decoded;
  else
    extras.energyUnavailable = energy.why();
  printReport(o.bench, o.prompt.size(), generated, extras);
  return 0;
}

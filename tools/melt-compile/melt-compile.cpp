//===- melt-compile.cpp - models into .melt artifacts -----------*- C++ -*-===//
//
//   melt-compile CHECKPOINT_DIR [--target=cpu|cuda] -o model.melt
//   melt-compile model.mlir --checkpoint DIR -o model.melt
//   melt-compile --builtin=NAME --checkpoint DIR -o model.melt
//
// The checkpoint resolves every weight to a byte range of its shard; the
// runtime reads those ranges at load time, from the directory it is given.
// --target=cuda adds the device's weight formats and kernel choices
// (melt-select-kernels) and checks that the weights fit the device; any
// device runs the artifact.
//
//===----------------------------------------------------------------------===//
#include "backends/ArtifactWriter.h"
#include "dialects/melt/MeltDialect.h"
#include "frontends/ModelBuilder.h"
#include "frontends/hf/Checkpoint.h"
#include "frontends/hf/Importer.h"
#include "passes/Passes.h"
#include "passes/Pipelines.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/WithColor.h"

namespace cl = llvm::cl;
using namespace mlir;
using namespace mlir::melt;

static cl::OptionCategory category("melt-compile options");
static cl::opt<std::string> input(cl::Positional,
                                  cl::desc("<model.mlir | checkpoint-dir>"),
                                  cl::cat(category));
static cl::opt<std::string> builtinName("builtin",
                                        cl::desc("Compile a built-in model"),
                                        cl::value_desc("name"),
                                        cl::cat(category));
static cl::opt<std::string> checkpointDir(
    "checkpoint",
    cl::desc("Checkpoint whose tensors the weights are read from (implied "
             "when the input is a checkpoint directory)"),
    cl::value_desc("dir"), cl::cat(category));
static cl::opt<std::string> target(
    "target",
    cl::desc("Target device: cpu (default) or cuda (H100/H200: the weight "
             "formats and kernels of the CUDA runtime chosen per op and "
             "shape, and a check that the weights fit --device-memory)"),
    cl::init("cpu"), cl::cat(category));
static cl::opt<double> deviceMemory(
    "device-memory",
    cl::desc("--target=cuda: GiB of device memory the weights must fit "
             "(default 139.8, an H200)"),
    cl::init(139.8), cl::cat(category));
static cl::opt<std::string> kernelReport(
    "kernel-report",
    cl::desc("--target=cuda: where to write the kernel selection report "
             "('-' for stderr; default none)"),
    cl::value_desc("file"), cl::init(""), cl::cat(category));
static cl::opt<bool> fuseMLA(
    "fuse-mla",
    cl::desc("Run attention on the latent cache with W_UK/W_UV absorbed "
             "(melt-fuse-mla; default on, --fuse-mla=false for the per-head "
             "cache)"),
    cl::init(true), cl::cat(category));
static cl::opt<std::string> mlaPrefill(
    "mla-prefill",
    cl::desc("MLA prefill form: auto (cost model), absorbed, decompressed"),
    cl::init("auto"), cl::cat(category));
static cl::opt<std::string> precision(
    "precision",
    cl::desc("Precision policy: fp32 (default), bf16, deepseek-v3 (FP8 "
             "GEMMs with 1x128 / 128x128 block scales) or auto (FP8 where "
             "the measured error fits --precision-budget)"),
    cl::init("fp32"), cl::cat(category));
static cl::opt<std::string> bf16Overrides(
    "bf16",
    cl::desc("Keep these ops in BF16 rather than FP8: comma list of weight "
             "name fragments and layers.N-M"),
    cl::value_desc("list"), cl::cat(category));
static cl::opt<std::string> precisionFile(
    "precision-file",
    cl::desc("JSON precision policy: {\"policy\", \"bf16\": [names], "
             "\"bf16_ops\": [linear|moe_experts], \"budget\"}"),
    cl::value_desc("file"), cl::cat(category));
static cl::opt<double> precisionBudget(
    "precision-budget",
    cl::desc("--precision=auto: largest relative FP8 error of a GEMM output "
             "(default 0.05)"),
    cl::init(0.05), cl::cat(category));
static cl::opt<std::string> calibration(
    "calibration",
    cl::desc("--precision=auto: safetensors file of calibration inputs "
             "(input_<K> tensors of shape [rows, K])"),
    cl::value_desc("file"), cl::cat(category));
static cl::opt<std::string> precisionReport(
    "precision-report",
    cl::desc("--precision=auto: where to write the per-op report (default "
             "stderr)"),
    cl::value_desc("file"), cl::init("-"), cl::cat(category));
static cl::opt<int64_t>
    devices("devices",
            cl::desc("Place experts on this many devices (default 1)"),
            cl::init(1), cl::cat(category));
static cl::opt<int64_t>
    redundant("redundant", cl::desc("Replicas of hot experts for placement"),
              cl::init(0), cl::cat(category));
static cl::opt<std::string> expertStats(
    "expert-stats",
    cl::desc("Expert load statistics (melt-run --expert-stats) to place by"),
    cl::value_desc("file"), cl::cat(category));
static cl::opt<std::string>
    expertPolicy("expert-policy",
                 cl::desc("Placement policy: balanced or affinity"),
                 cl::init("balanced"), cl::cat(category));
static cl::opt<std::string> compileTo(
    "compile-to",
    cl::desc("Stop after this phase and write its IR (model, fuse-mla, "
             "plan-experts, assign-precision, plan-memory; default: artifact)"),
    cl::init("artifact"), cl::cat(category));
static cl::opt<bool> embedWeights(
    "embed-weights",
    cl::desc("Pack the weights into the artifact (self-contained; no "
             "checkpoint needed at load time)"),
    cl::cat(category));
static cl::opt<std::string> outputFile("o", cl::desc("Output artifact"),
                                       cl::value_desc("file"),
                                       cl::cat(category));

static int fail(const llvm::Twine &message) {
  llvm::WithColor::error(llvm::errs(), "melt-compile") << message << "\n";
  return 1;
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(
      argc, argv,
      "melt-compile: compile a model into a .melt artifact\n\n"
      "  melt-compile CHECKPOINT_DIR [--target=cpu|cuda] -o model.melt\n"
      "  melt-compile model.mlir --checkpoint DIR -o model.melt\n");
  if (input.empty() == builtinName.empty())
    return fail("give exactly one of <model.mlir | checkpoint-dir> or "
                "--builtin=NAME");
  if (outputFile.empty())
    return fail("no output file (-o model.melt)");
  if (target != "cpu" && target != "cuda")
    return fail("--target: '" + target + "' is not available (targets: " +
                "cpu, cuda; hip is not built yet)");

  MLIRContext context;
  context.loadDialect<MeltDialect, func::FuncDialect>();
  OwningOpRef<ModuleOp> module;
  std::string ckptPath = checkpointDir;
  if (!input.empty() && llvm::sys::fs::is_directory(input)) {
    if (!ckptPath.empty() && ckptPath != input)
      return fail("--checkpoint differs from the checkpoint directory given");
    ckptPath = input;
    auto imported = importCheckpoint(context, input);
    if (!imported)
      return fail(llvm::toString(imported.takeError()));
    for (const std::string &w : imported->warnings)
      llvm::WithColor::warning(llvm::errs(), "melt-compile") << w << "\n";
    module = std::move(imported->module);
  } else if (!input.empty()) {
    llvm::SourceMgr sources;
    module = parseSourceFile<ModuleOp>(input, sources, &context);
    if (!module)
      return fail("cannot parse '" + input + "'");
  } else {
    auto config = getBuiltinModel(builtinName);
    if (!config)
      return fail(llvm::toString(config.takeError()));
    auto built = buildModel(context, *config);
    if (!built)
      return fail(llvm::toString(built.takeError()));
    module = std::move(*built);
  }
  if (ckptPath.empty())
    return fail("the weights need a checkpoint: give --checkpoint DIR");
  if (failed(verify(*module)))
    return fail("the model does not verify");

  // The compile pipeline (melt-default-pipeline), up to --compile-to.
  std::optional<CompilePhase> last = parseCompilePhase(compileTo);
  if (!last)
    return fail("--compile-to: unknown phase '" + compileTo +
                "' (phases: " + compilePhaseNames() + ")");
  DefaultPipelineOptions pipeline;
  pipeline.precision = precision.getValue();
  pipeline.bf16 = bf16Overrides.getValue();
  pipeline.precisionFile = precisionFile.getValue();
  pipeline.precisionBudget = precisionBudget.getValue();
  pipeline.checkpoint = ckptPath;
  pipeline.calibration = calibration.getValue();
  pipeline.precisionReport = precisionReport.getValue();
  pipeline.fuseMLA = fuseMLA.getValue();
  pipeline.mlaPrefill = mlaPrefill.getValue();
  pipeline.devices = devices.getValue();
  pipeline.redundant = redundant.getValue();
  pipeline.expertStats = expertStats.getValue();
  pipeline.expertPolicy = expertPolicy.getValue();
  pipeline.target = target.getValue();
  pipeline.deviceMemory = deviceMemory.getValue();
  if (!kernelReport.empty())
    pipeline.kernelReport = kernelReport.getValue();
  PassManager pm(&context);
  buildDefaultPipeline(pm, pipeline, *last);
  if (failed(pm.run(*module)))
    return fail("the compile pipeline failed");
  if (*last != CompilePhase::Artifact) {
    if (llvm::Error error =
            llvm::writeToOutput(outputFile, [&](llvm::raw_ostream &os) {
              module->print(os);
              os << "\n";
              return llvm::Error::success();
            }))
      return fail("cannot write '" + outputFile +
                  "': " + llvm::toString(std::move(error)));
    return 0;
  }

  auto ckpt = Checkpoint::open(ckptPath);
  if (!ckpt)
    return fail(llvm::toString(ckpt.takeError()));
  ArtifactOptions options;
  options.embedWeights = embedWeights;
  auto bytes = buildArtifact(*module, *ckpt, options);
  if (!bytes)
    return fail(llvm::toString(bytes.takeError()));
  if (llvm::Error error =
          llvm::writeToOutput(outputFile, [&](llvm::raw_ostream &os) {
            os << *bytes;
            return llvm::Error::success();
          }))
    return fail("cannot write '" + outputFile +
                "': " + llvm::toString(std::move(error)));
  return 0;
}

//===- melt-import.cpp - models into melt IR --------------------*- C++ -*-===//
//
//   melt-import <checkpoint-dir> -o model.mlir     import a HF checkpoint
//   melt-import --builtin=NAME -o model.mlir       a built-in model
//   melt-import --synthesize=NAME|config.json -o DIR [--dtype=bf16|fp8]
//                                              write a random checkpoint
//
//===----------------------------------------------------------------------===//
#include "dialects/melt/MeltDialect.h"
#include "frontends/ModelBuilder.h"
#include "frontends/hf/HFConfig.h"
#include "frontends/hf/Importer.h"
#include "frontends/hf/Synthesizer.h"

#include "mlir/Bytecode/BytecodeWriter.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>

namespace cl = llvm::cl;
using namespace mlir;
using namespace mlir::melt;

static cl::OptionCategory category("melt-import options");

static cl::opt<std::string> checkpointDir(cl::Positional,
                                          cl::desc("<checkpoint-dir>"),
                                          cl::cat(category));
static cl::opt<std::string> builtinName(
    "builtin",
    cl::desc("Build a built-in model: tiny, mini, v2-lite, v2, v3, tiny-mla"),
    cl::value_desc("name"), cl::cat(category));
static cl::opt<bool> listBuiltins("list-builtins",
                                  cl::desc("List the built-in models and exit"),
                                  cl::cat(category));
static cl::opt<std::string> outputFile(
    "o", cl::desc("Output: the .mlir file ('-' for stdout), or the checkpoint "
                  "directory with --synthesize"),
    cl::value_desc("path"), cl::init("-"), cl::cat(category));
static cl::opt<bool> emitBytecode("emit-bytecode",
                                  cl::desc("Write MLIR bytecode, not text"),
                                  cl::cat(category));
static cl::opt<bool> noCheckScales(
    "no-check-scales",
    cl::desc("Do not read FP8 scale tensors to check them for NaN"),
    cl::cat(category));

static cl::OptionCategory synthCategory("Synthetic checkpoints");
static cl::opt<std::string> synthesize(
    "synthesize",
    cl::desc("Write a deterministic random checkpoint of a built-in model "
             "or of a config.json to the -o directory"),
    cl::value_desc("name|config.json"), cl::cat(synthCategory));
static cl::opt<std::string>
    synthDType("dtype", cl::desc("Weight storage: bf16 (default), fp8 "
                                 "(e4m3 with 128x128 block scales), f16, f32"),
               cl::value_desc("type"), cl::init(""), cl::cat(synthCategory));
static cl::opt<uint64_t> seed("seed", cl::desc("Random seed (default 0)"),
                              cl::init(0), cl::cat(synthCategory));
static cl::opt<uint64_t>
    shardBytes("shard-size",
               cl::desc("Start a new shard past this many bytes "
                        "(default 4 GiB)"),
               cl::init(4ull << 30), cl::cat(synthCategory));
static cl::opt<uint64_t>
    shardCount("shards",
               cl::desc("Write exactly this many shards of about equal size "
                        "(instead of --shard-size)"),
               cl::init(0), cl::cat(synthCategory));
static cl::opt<bool> sparse(
    "sparse",
    cl::desc("Write headers only and extend files to full size without data "
             "(for import benchmarks)"),
    cl::cat(synthCategory));

static int fail(const llvm::Twine &message) {
  llvm::WithColor::error(llvm::errs(), "melt-import") << message << "\n";
  return 1;
}

static int writeModule(ModuleOp module) {
  // writeToOutput writes a temporary file and renames it: no half-written
  // output is left behind when anything fails.
  llvm::Error error = llvm::writeToOutput(
      outputFile, [&](llvm::raw_ostream &os) -> llvm::Error {
        if (emitBytecode) {
          if (failed(writeBytecodeToFile(module, os)))
            return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                           "cannot write bytecode");
          return llvm::Error::success();
        }
        module->print(os);
        os << "\n";
        return llvm::Error::success();
      });
  if (error)
    return fail("cannot write '" + outputFile +
                "': " + llvm::toString(std::move(error)));
  return 0;
}

static int runSynthesize(MLIRContext &context) {
  llvm::Expected<ModelConfig> config =
      llvm::StringRef(synthesize).ends_with(".json")
          ? readHFConfig(synthesize)
          : getBuiltinModel(synthesize);
  if (!config)
    return fail(llvm::toString(config.takeError()));
  if (!synthDType.empty()) {
    if (synthDType == "bf16")
      config->weightFormat = WeightFormat::BF16;
    else if (synthDType == "fp8")
      config->weightFormat = WeightFormat::FP8Block;
    else if (synthDType == "f16")
      config->weightFormat = WeightFormat::F16;
    else if (synthDType == "f32")
      config->weightFormat = WeightFormat::F32;
    else
      return fail("--dtype: unknown type '" + synthDType +
                  "' (expected bf16, fp8, f16 or f32)");
  }
  if (outputFile == "-")
    return fail("--synthesize needs an output directory (-o DIR)");
  if (shardBytes == 0)
    return fail("--shard-size must be positive");

  SynthesisOptions options;
  options.seed = seed;
  options.shardBytes = shardBytes;
  options.shardCount = shardCount;
  options.sparse = sparse;
  // Progress on long runs: a line per 10% once there is over 256 MB to write.
  int lastDecile = -1;
  auto start = std::chrono::steady_clock::now();
  options.progress = [&](uint64_t done, uint64_t total) {
    if (total < (256u << 20))
      return;
    int decile = static_cast<int>(done * 10 / total);
    if (decile == lastDecile)
      return;
    lastDecile = decile;
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    llvm::errs() << llvm::formatv("melt-import: {0,3}% {1:f1} / {2:f1} GB "
                                  "({3:f1} s)\n",
                                  decile * 10, done / 1e9, total / 1e9,
                                  seconds);
  };
  auto summary = synthesizeCheckpoint(context, *config, outputFile, options);
  if (!summary)
    return fail(llvm::toString(summary.takeError()));
  llvm::errs() << llvm::formatv("melt-import: wrote {0}: {1} tensors in {2} "
                                "shard(s), {3} bytes\n",
                                outputFile, summary->tensors, summary->shards,
                                summary->bytes);
  return 0;
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions({&category, &synthCategory});
  cl::ParseCommandLineOptions(
      argc, argv,
      "melt-import: DeepSeek-V2/V3 models into melt IR\n\n"
      "  melt-import CHECKPOINT_DIR -o model.mlir\n"
      "  melt-import --builtin=tiny -o tiny.mlir\n"
      "  melt-import --synthesize=tiny --dtype=fp8 -o tiny-ckpt/\n"
      "  melt-import --list-builtins\n");

  if (listBuiltins) {
    for (const std::string &name : builtinModelNames()) {
      ModelConfig config = llvm::cantFail(getBuiltinModel(name));
      llvm::outs() << llvm::formatv(
          "{0,-8} {1} layers, hidden {2}, {3} routed experts (top-{4}), "
          "{5} MTP layer(s)\n",
          name, config.numHiddenLayers, config.hiddenSize,
          config.nRoutedExperts, config.numExpertsPerTok,
          config.numNextnPredictLayers);
    }
    return 0;
  }

  MLIRContext context;
  context.loadDialect<MeltDialect, func::FuncDialect>();
  int modes = !builtinName.empty() + !checkpointDir.empty() +
              !synthesize.empty();
  if (modes != 1)
    return fail("give exactly one of <checkpoint-dir>, --builtin=NAME or "
                "--synthesize=NAME (see --help)");
  if (!synthesize.empty())
    return runSynthesize(context);

  if (!builtinName.empty()) {
    llvm::Expected<ModelConfig> config = getBuiltinModel(builtinName);
    if (!config)
      return fail(llvm::toString(config.takeError()));
    auto module = buildModel(context, *config);
    if (!module)
      return fail(llvm::toString(module.takeError()));
    return writeModule(**module);
  }

  ImportOptions options;
  options.checkScales = !noCheckScales;
  auto imported = importCheckpoint(context, checkpointDir, options);
  if (!imported)
    return fail(llvm::toString(imported.takeError()));
  for (const std::string &warning : imported->warnings)
    llvm::WithColor::warning(llvm::errs(), "melt-import") << warning << "\n";
  return writeModule(*imported->module);
}

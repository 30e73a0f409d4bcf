//===- melt-import.cpp - models into melt IR --------------------*- C++ -*-===//
//
// Writes the model-form melt IR of a built-in model configuration
// (--builtin=NAME). Importing Hugging Face checkpoint directories goes
// through the same model builder.
//
//===----------------------------------------------------------------------===//
#include "dialects/melt/MeltDialect.h"
#include "frontends/ModelBuilder.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Bytecode/BytecodeWriter.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

namespace cl = llvm::cl;

static cl::OptionCategory category("melt-import options");

static cl::opt<std::string> checkpointDir(cl::Positional,
                                          cl::desc("<checkpoint-dir>"),
                                          cl::cat(category));
static cl::opt<std::string>
    builtinName("builtin",
                cl::desc("Build a built-in model: tiny, mini, v2-lite, v2, v3"),
                cl::value_desc("name"), cl::cat(category));
static cl::opt<bool> listBuiltins("list-builtins",
                                  cl::desc("List the built-in models and exit"),
                                  cl::cat(category));
static cl::opt<std::string> outputFile("o", cl::desc("Output file ('-' for "
                                                     "stdout)"),
                                       cl::value_desc("file"), cl::init("-"),
                                       cl::cat(category));
static cl::opt<bool> emitBytecode("emit-bytecode",
                                  cl::desc("Write MLIR bytecode, not text"),
                                  cl::cat(category));

static int fail(const llvm::Twine &message) {
  llvm::WithColor::error(llvm::errs(), "melt-import") << message << "\n";
  return 1;
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(
      argc, argv,
      "melt-import: write the melt IR of a model\n\n"
      "  melt-import --builtin=tiny -o tiny.mlir\n"
      "  melt-import --list-builtins\n");

  if (listBuiltins) {
    for (const std::string &name : mlir::melt::builtinModelNames()) {
      mlir::melt::ModelConfig config = llvm::cantFail(mlir::melt::getBuiltinModel(name));
      llvm::outs() << llvm::formatv(
          "{0,-8} {1} layers, hidden {2}, {3} routed experts (top-{4}), "
          "{5} MTP layer(s)\n",
          name, config.numHiddenLayers, config.hiddenSize,
          config.nRoutedExperts, config.numExpertsPerTok,
          config.numNextnPredictLayers);
    }
    return 0;
  }
  if (builtinName.empty() == checkpointDir.empty())
    return fail("give exactly one of <checkpoint-dir> or --builtin=NAME "
                "(see --help)");
  if (!checkpointDir.empty())
    return fail("'" + checkpointDir +
                "': importing checkpoint directories is not available in "
                "this build yet; use --builtin=NAME");

  llvm::Expected<mlir::melt::ModelConfig> config =
      mlir::melt::getBuiltinModel(builtinName);
  if (!config)
    return fail(llvm::toString(config.takeError()));

  mlir::MLIRContext context;
  context.loadDialect<mlir::melt::MeltDialect, mlir::func::FuncDialect>();
  auto module = mlir::melt::buildModel(context, *config);
  if (!module)
    return fail(llvm::toString(module.takeError()));

  // writeToOutput writes a temporary file and renames it: no half-written
  // output is left behind when anything fails.
  llvm::Error error = llvm::writeToOutput(
      outputFile, [&](llvm::raw_ostream &os) -> llvm::Error {
        if (emitBytecode) {
          if (mlir::failed(mlir::writeBytecodeToFile(**module, os)))
            return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                           "cannot write bytecode");
          return llvm::Error::success();
        }
        (*module)->print(os);
        os << "\n";
        return llvm::Error::success();
      });
  if (error)
    return fail("cannot write '" + outputFile +
                "': " + llvm::toString(std::move(error)));
  return 0;
}

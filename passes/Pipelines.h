//===- Pipelines.h - the compile pipeline of melt ---------------*- C++ -*-===//
//
// One pipeline, built in C++ and registered by name, so that
// `melt-opt --pass-pipeline='builtin.module(melt-default-pipeline{...})'`
// reproduces what melt-compile runs. Phases let a compile stop early.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_PASSES_PIPELINES_H
#define MELT_PASSES_PIPELINES_H

#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassOptions.h"

#include <optional>
#include <string>

namespace mlir::melt {

/// The phases of a compile, in order; --compile-to=<phase> stops after one.
enum class CompilePhase {
  Model,
  FuseMLA,
  PlanExperts,
  AssignPrecision,
  PlanMemory,
  Artifact
};
std::optional<CompilePhase> parseCompilePhase(llvm::StringRef name);
/// "model, fuse-mla, plan-experts, assign-precision, plan-memory, artifact"
const char *compilePhaseNames();

struct DefaultPipelineOptions
    : public PassPipelineOptions<DefaultPipelineOptions> {
  Option<std::string> precision{
      *this, "precision",
      llvm::cl::desc("precision policy: fp32, bf16, deepseek-v3 or auto"),
      llvm::cl::init("fp32")};
  Option<std::string> bf16{
      *this, "bf16",
      llvm::cl::desc("ops kept in BF16 rather than FP8: name fragments and "
                     "layers.N-M"),
      llvm::cl::init("")};
  Option<std::string> precisionFile{
      *this, "precision-file",
      llvm::cl::desc("JSON precision policy (policy, bf16, bf16_ops, budget)"),
      llvm::cl::init("")};
  Option<double> precisionBudget{
      *this, "precision-budget",
      llvm::cl::desc("auto: largest relative FP8 error of a GEMM output"),
      llvm::cl::init(0.05)};
  Option<std::string> checkpoint{
      *this, "checkpoint",
      llvm::cl::desc("auto: the checkpoint directory to measure weights in"),
      llvm::cl::init("")};
  Option<std::string> calibration{
      *this, "calibration",
      llvm::cl::desc("auto: safetensors file of calibration inputs"),
      llvm::cl::init("")};
  Option<std::string> precisionReport{
      *this, "precision-report",
      llvm::cl::desc("auto: where to write the per-op report ('-' for "
                     "stderr)"),
      llvm::cl::init("-")};
  Option<bool> fuseMLA{*this, "fuse-mla",
                       llvm::cl::desc("MLA on the latent cache"),
                       llvm::cl::init(true)};
  Option<std::string> mlaPrefill{
      *this, "mla-prefill",
      llvm::cl::desc("MLA prefill form: auto, absorbed, decompressed"),
      llvm::cl::init("auto")};
  Option<int64_t> devices{*this, "devices",
                          llvm::cl::desc("devices to place experts on (1: no "
                                         "placement)"),
                          llvm::cl::init(1)};
  Option<int64_t> redundant{*this, "redundant",
                            llvm::cl::desc("replicas of hot experts"),
                            llvm::cl::init(0)};
  Option<std::string> expertStats{
      *this, "expert-stats",
      llvm::cl::desc("expert load statistics for placement"),
      llvm::cl::init("")};
  Option<bool> planMemory{*this, "plan-memory",
                          llvm::cl::desc("reuse activation buffers"),
                          llvm::cl::init(true)};
  Option<std::string> target{
      *this, "target",
      llvm::cl::desc("target device: cpu or cuda (melt-select-kernels)"),
      llvm::cl::init("cpu")};
  Option<double> deviceMemory{
      *this, "device-memory",
      llvm::cl::desc("cuda: GiB of device memory the weights must fit"),
      llvm::cl::init(139.8)};
  Option<std::string> kernelReport{
      *this, "kernel-report",
      llvm::cl::desc("cuda: where melt-select-kernels writes its report"),
      llvm::cl::init("/dev/null")};
  Option<std::string> expertPolicy{
      *this, "expert-policy",
      llvm::cl::desc("placement policy: balanced or affinity"),
      llvm::cl::init("balanced")};
};

/// Adds the passes of the phases up to `last` (Artifact: all of them).
void buildDefaultPipeline(OpPassManager &pm,
                          const DefaultPipelineOptions &options,
                          CompilePhase last = CompilePhase::Artifact);

/// Registers melt-default-pipeline with melt-opt.
void registerMeltPipelines();

} // namespace mlir::melt

#endif // MELT_PASSES_PIPELINES_H

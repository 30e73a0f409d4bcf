//===- Pipelines.cpp - the compile pipeline of melt -------------*- C++ -*-===//
#include "passes/Pipelines.h"

#include "passes/Passes.h"

#include "mlir/Pass/PassRegistry.h"
#include "llvm/ADT/StringSwitch.h"

using namespace mlir;
using namespace mlir::melt;

std::optional<CompilePhase>
mlir::melt::parseCompilePhase(llvm::StringRef name) {
  return llvm::StringSwitch<std::optional<CompilePhase>>(name)
      .Case("model", CompilePhase::Model)
      .Case("fuse-mla", CompilePhase::FuseMLA)
      .Case("plan-experts", CompilePhase::PlanExperts)
      .Case("assign-precision", CompilePhase::AssignPrecision)
      .Case("plan-memory", CompilePhase::PlanMemory)
      .Case("artifact", CompilePhase::Artifact)
      .Default(std::nullopt);
}

const char *mlir::melt::compilePhaseNames() {
  return "model, fuse-mla, plan-experts, assign-precision, plan-memory, "
         "artifact";
}

void mlir::melt::buildDefaultPipeline(OpPassManager &pm,
                                      const DefaultPipelineOptions &options,
                                      CompilePhase last) {
  if (last >= CompilePhase::FuseMLA && options.fuseMLA) {
    FuseMLAPassOptions mla;
    mla.prefill = options.mlaPrefill;
    pm.addPass(createFuseMLAPass(mla));
  }
  if (last >= CompilePhase::PlanExperts &&
      (options.devices > 1 || !options.expertStats.empty())) {
    PlanExpertsPassOptions plan;
    plan.devices = options.devices;
    plan.redundant = options.redundant;
    plan.stats = options.expertStats;
    plan.policy = options.expertPolicy;
    pm.addPass(createPlanExpertsPass(plan));
  }
  // After fusion, so that the fused projections get their precision, and
  // after placement, which decides whether MoE dispatch and combine cross
  // devices (FP8 dispatch, BF16 combine).
  if (last >= CompilePhase::AssignPrecision &&
      (options.precision != "fp32" || !options.precisionFile.empty())) {
    AssignPrecisionPassOptions precision;
    precision.policy = options.precision;
    precision.bf16 = options.bf16;
    precision.policyFile = options.precisionFile;
    precision.budget = options.precisionBudget;
    precision.checkpoint = options.checkpoint;
    precision.calibration = options.calibration;
    precision.report = options.precisionReport;
    pm.addPass(createAssignPrecisionPass(precision));
  }
  if (last >= CompilePhase::PlanMemory && options.planMemory) {
    // Quiet here: melt-opt --melt-plan-memory prints the report.
    PlanMemoryPassOptions memory;
    memory.report = "/dev/null";
    pm.addPass(createPlanMemoryPass(memory));
  }
  // After precision (the device formats follow the storage it chose) and
  // the memory plan (the device's buffer plan takes its sizes).
  if (last >= CompilePhase::PlanMemory && options.target != "cpu") {
    SelectKernelsPassOptions kernels;
    kernels.target = options.target;
    kernels.report = options.kernelReport;
    kernels.deviceMemory = options.deviceMemory;
    pm.addPass(createSelectKernelsPass(kernels));
  }
}

void mlir::melt::registerMeltPipelines() {
  PassPipelineRegistration<DefaultPipelineOptions>(
      "melt-default-pipeline",
      "melt's compile pipeline (what melt-compile runs): fuse MLA, place "
      "experts when devices > 1 or statistics are given, assign precision, "
      "select the target's kernels (target=cuda), plan memory",
      [](OpPassManager &pm, const DefaultPipelineOptions &options) {
        buildDefaultPipeline(pm, options);
      });
}

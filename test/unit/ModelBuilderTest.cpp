//===- ModelBuilderTest.cpp - built models verify and round-trip -*- C++ -*-===//
#include "dialects/melt/MeltDialect.h"
#include "frontends/ModelBuilder.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace mlir::melt;

namespace {

struct Counts {
  int64_t weights = 0, parameters = 0, fp8Weights = 0, scaled = 0;
  int64_t experts = 0, routers = 0, caches = 0, functions = 0;
};

Counts count(ModuleOp module) {
  Counts c;
  for (auto w : module.getOps<WeightOp>()) {
    ++c.weights;
    c.parameters += w.getTensorType().getNumElements();
    c.fp8Weights += isFp8Type(w.getTensorType().getElementType());
    c.scaled += w.hasBlockScales();
  }
  module.walk([&](Operation *op) {
    c.experts += isa<MoEExpertsOp>(op);
    c.routers += isa<MoERouterOp>(op);
    c.caches += isa<KVCacheAppendOp>(op);
    c.functions += isa<func::FuncOp>(op);
  });
  return c;
}

OwningOpRef<ModuleOp> build(MLIRContext &ctx, llvm::StringRef name) {
  auto config = getBuiltinModel(name);
  EXPECT_TRUE(static_cast<bool>(config));
  auto module = buildModel(ctx, *config);
  if (!module) {
    ADD_FAILURE() << llvm::toString(module.takeError());
    return {};
  }
  return std::move(*module);
}

TEST(ModelBuilder, EveryBuiltinVerifies) {
  for (const std::string &name : builtinModelNames()) {
    MLIRContext ctx;
    OwningOpRef<ModuleOp> module = build(ctx, name);
    ASSERT_TRUE(module) << name;
    EXPECT_TRUE(succeeded(verify(*module))) << name;
  }
}

TEST(ModelBuilder, V3HasTheShapeOfTheRealModel) {
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module = build(ctx, "v3");
  ASSERT_TRUE(module);
  Counts c = count(*module);
  // 61 layers + 1 MTP layer, each with one cache; 58 + 1 MoE layers.
  EXPECT_EQ(c.caches, 62);
  EXPECT_EQ(c.routers, 59);
  EXPECT_EQ(c.experts, 59);
  EXPECT_EQ(c.functions, 2); // forward and mtp_0
  // DeepSeek-V3 has 671B parameters in the main model and 14B in MTP (its
  // embedding and head are separate tensors of the checkpoint): 685B.
  EXPECT_GT(c.parameters, 684'000'000'000);
  EXPECT_LT(c.parameters, 686'000'000'000);
  // FP8 weights always carry their scales.
  EXPECT_EQ(c.fp8Weights, c.scaled);
  EXPECT_GT(c.fp8Weights, 0);
}

TEST(ModelBuilder, V2LiteHasNoQueryCompression) {
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module = build(ctx, "v2-lite");
  ASSERT_TRUE(module);
  SymbolTable symbols(*module);
  EXPECT_TRUE(symbols.lookup("model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(symbols.lookup("model.layers.0.self_attn.q_a_proj"));
  // 2 shared experts are stored as one MLP twice as wide.
  auto shared = symbols.lookup<WeightOp>("model.layers.1.mlp.shared_experts.up_proj");
  ASSERT_TRUE(shared);
  EXPECT_EQ(shared.getTensorType().getDimSize(0), 2 * 1408);
  // ~15.7B parameters.
  Counts c = count(*module);
  EXPECT_GT(c.parameters, 15'000'000'000);
  EXPECT_LT(c.parameters, 16'500'000'000);
}

TEST(ModelBuilder, MiniMatchesTheBaselineModel) {
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module = build(ctx, "mini");
  ASSERT_TRUE(module);
  // shared/bench/BASELINES.md: 4.657 B parameters.
  Counts c = count(*module);
  EXPECT_NEAR(static_cast<double>(c.parameters) / 1e9, 4.657, 0.001);
}

TEST(ModelBuilder, PrintedModelParsesBack) {
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module = build(ctx, "tiny");
  ASSERT_TRUE(module);
  std::string text;
  llvm::raw_string_ostream os(text);
  module->print(os);
  OwningOpRef<ModuleOp> parsed = parseSourceString<ModuleOp>(text, &ctx);
  ASSERT_TRUE(parsed);
  std::string again;
  llvm::raw_string_ostream os2(again);
  parsed->print(os2);
  EXPECT_EQ(text, again);
}

TEST(ModelBuilder, InvalidConfigIsAnErrorNotACrash) {
  MLIRContext ctx;
  ModelConfig config = llvm::cantFail(getBuiltinModel("tiny"));
  config.nGroup = 3;
  auto module = buildModel(ctx, config);
  ASSERT_FALSE(static_cast<bool>(module));
  EXPECT_NE(llvm::toString(module.takeError()).find("'n_group'"),
            std::string::npos);
}

TEST(ModelBuilder, FilesComeFromTheCallback) {
  MLIRContext ctx;
  ModelConfig config = llvm::cantFail(getBuiltinModel("tiny"));
  BuildOptions options;
  options.fileOf = [](llvm::StringRef name) {
    return name.starts_with("lm_head") ? std::string("b.safetensors")
                                       : std::string("a.safetensors");
  };
  auto module = buildModel(ctx, config, options);
  ASSERT_TRUE(static_cast<bool>(module));
  auto head = SymbolTable((**module)).lookup<WeightOp>("lm_head");
  ASSERT_TRUE(head);
  auto source = llvm::cast<TensorSourceAttr>(head.getSources()[0]);
  EXPECT_EQ(source.getFile(), "b.safetensors");
  EXPECT_EQ(source.getName(), "lm_head.weight");
}

} // namespace

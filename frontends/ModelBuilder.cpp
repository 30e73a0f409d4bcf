//===- ModelBuilder.cpp - model configuration -> melt IR --------*- C++ -*-===//
#include "frontends/ModelBuilder.h"

#include "dialects/melt/MeltDialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mlir::melt;

namespace {

constexpr int64_t kDyn = ShapedType::kDynamic;

/// What a weight is used for decides its storage type: FP8 checkpoints
/// quantize only the GEMMs of attention and MLPs (DeepSeek-V3 §3.3).
enum class WeightRole {
  Gemm,       // attention projections, dense MLPs, experts
  Norm,       // RMSNorm scales
  Embedding,  // embedding, output head, MTP eh_proj, router gate
  Bias,       // e_score_correction_bias: always f32
};

class ModelBuilder {
public:
  ModelBuilder(MLIRContext &ctx, const ModelConfig &config,
               const BuildOptions &options)
      : ctx(ctx), c(config), options(options), b(&ctx),
        loc(NameLoc::get(StringAttr::get(&ctx, "model"))) {
    switch (c.weightFormat) {
    case WeightFormat::F16:
      act = b.getF16Type();
      break;
    case WeightFormat::F32:
      act = b.getF32Type();
      break;
    default:
      act = b.getBF16Type();
    }
  }

  OwningOpRef<ModuleOp> build();

private:
  // Types.
  RankedTensorType tokens(ArrayRef<int64_t> rest, Type element) {
    SmallVector<int64_t> shape{kDyn};
    shape.append(rest.begin(), rest.end());
    return RankedTensorType::get(shape, element);
  }
  RankedTensorType acts(ArrayRef<int64_t> rest) { return tokens(rest, act); }
  KVCacheType cacheType() {
    return KVCacheType::get(&ctx, c.numAttentionHeads, c.qkHeadDim(),
                            c.vHeadDim, act);
  }
  Type storageType(WeightRole role, StringRef tensorName);

  // Weights.
  TensorSourceAttr source(StringRef tensorName);
  FlatSymbolRefAttr weight(StringRef tensorName, ArrayRef<int64_t> shape,
                           WeightRole role);
  FlatSymbolRefAttr stackedWeight(StringRef prefix, StringRef proj,
                                  int64_t count, ArrayRef<int64_t> shape);
  void addScales(WeightOp op, ArrayRef<StringRef> tensorNames,
                 ArrayRef<int64_t> shape);

  // Blocks.
  Value linear(Value x, StringRef tensorName, int64_t out, int64_t in);
  Value rmsNorm(Value x, StringRef tensorName, int64_t dim);
  Value mlp(Value x, StringRef prefix, int64_t inter);
  Value attention(Value h, Value positions, Value &cache, StringRef prefix);
  Value moe(Value x, StringRef prefix);
  Value decoderLayer(Value h, Value positions, Value &cache, int64_t layer);

  void buildForward(ModuleOp module);
  void buildMTP(ModuleOp module, int64_t index);

  MLIRContext &ctx;
  const ModelConfig &c;
  const BuildOptions &options;
  OpBuilder b;
  Location loc;
  Type act;
  /// Weights are declared before the function that first uses them, in
  /// the order the model reads them.
  Operation *firstFunction = nullptr;
};

Type ModelBuilder::storageType(WeightRole role, StringRef tensorName) {
  bool fixedFp8 = role == WeightRole::Gemm &&
                  c.weightFormat == WeightFormat::FP8Block;
  if (!fixedFp8 && options.elementTypeOf)
    if (Type type = options.elementTypeOf(tensorName))
      return type;
  if (role == WeightRole::Bias)
    return b.getF32Type();
  switch (c.weightFormat) {
  case WeightFormat::BF16:
    return b.getBF16Type();
  case WeightFormat::F16:
    return b.getF16Type();
  case WeightFormat::F32:
    return b.getF32Type();
  case WeightFormat::FP8Block:
    return role == WeightRole::Gemm ? Type(b.getType<Float8E4M3FNType>())
                                    : Type(b.getBF16Type());
  }
  llvm_unreachable("unknown weight format");
}

TensorSourceAttr ModelBuilder::source(StringRef tensorName) {
  std::string file = options.fileOf ? options.fileOf(tensorName) : "";
  return TensorSourceAttr::get(&ctx, tensorName, file);
}

/// The symbol of a weight is its tensor name without ".weight".
static std::string symbolFor(StringRef tensorName) {
  tensorName.consume_back(".weight");
  return tensorName.str();
}

void ModelBuilder::addScales(WeightOp op, ArrayRef<StringRef> tensorNames,
                             ArrayRef<int64_t> shape) {
  int64_t block = c.weightBlockSize;
  SmallVector<int64_t> scaleShape(shape.begin(), shape.end());
  size_t rank = scaleShape.size();
  scaleShape[rank - 2] = (shape[rank - 2] + block - 1) / block;
  scaleShape[rank - 1] = (shape[rank - 1] + block - 1) / block;
  SmallVector<Attribute> sources;
  for (StringRef name : tensorNames)
    sources.push_back(source((name + "_scale_inv").str()));
  op.setScaleTypeAttr(
      TypeAttr::get(RankedTensorType::get(scaleShape, b.getF32Type())));
  op.setBlockSize(ArrayRef<int64_t>{block, block});
  op.setScaleSourcesAttr(b.getArrayAttr(sources));
}

FlatSymbolRefAttr ModelBuilder::weight(StringRef tensorName,
                                       ArrayRef<int64_t> shape,
                                       WeightRole role) {
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPoint(firstFunction);
  std::string symbol = symbolFor(tensorName);
  auto type = RankedTensorType::get(shape, storageType(role, tensorName));
  auto op = b.create<WeightOp>(loc, symbol, type,
                               b.getArrayAttr({source(tensorName)}),
                               /*concat=*/nullptr,
                               /*scale_type=*/nullptr, /*block_size=*/nullptr,
                               /*scale_sources=*/nullptr, /*view=*/nullptr);
  if (isFp8Type(type.getElementType()))
    addScales(op, {tensorName}, shape);
  return FlatSymbolRefAttr::get(&ctx, symbol);
}

FlatSymbolRefAttr ModelBuilder::stackedWeight(StringRef prefix, StringRef proj,
                                              int64_t count,
                                              ArrayRef<int64_t> shape) {
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPoint(firstFunction);
  std::string symbol = (prefix + "." + proj).str();
  SmallVector<std::string> names;
  SmallVector<Attribute> sources;
  for (int64_t e = 0; e < count; ++e) {
    names.push_back(llvm::formatv("{0}.{1}.{2}.weight", prefix, e, proj));
    sources.push_back(source(names.back()));
  }
  SmallVector<int64_t> stacked{count};
  stacked.append(shape.begin(), shape.end());
  auto type =
      RankedTensorType::get(stacked, storageType(WeightRole::Gemm, names[0]));
  auto op = b.create<WeightOp>(loc, symbol, type, b.getArrayAttr(sources),
                               nullptr, nullptr, nullptr, nullptr, nullptr);
  if (isFp8Type(type.getElementType())) {
    SmallVector<StringRef> refs(names.begin(), names.end());
    addScales(op, refs, stacked);
  }
  return FlatSymbolRefAttr::get(&ctx, symbol);
}

Value ModelBuilder::linear(Value x, StringRef tensorName, int64_t out,
                           int64_t in) {
  FlatSymbolRefAttr w = weight(tensorName, {out, in}, WeightRole::Gemm);
  return b.create<LinearOp>(loc, acts({out}), x, w, nullptr);
}

Value ModelBuilder::rmsNorm(Value x, StringRef tensorName, int64_t dim) {
  FlatSymbolRefAttr w = weight(tensorName, {dim}, WeightRole::Norm);
  return b.create<RMSNormOp>(loc, x.getType(), x, w,
                             b.getF64FloatAttr(c.rmsNormEps), nullptr);
}

Value ModelBuilder::mlp(Value x, StringRef prefix, int64_t inter) {
  int64_t hidden = c.hiddenSize;
  Value gate = linear(x, (prefix + ".gate_proj.weight").str(), inter, hidden);
  Value up = linear(x, (prefix + ".up_proj.weight").str(), inter, hidden);
  Value a = b.create<SiluMulOp>(loc, gate, up);
  return linear(a, (prefix + ".down_proj.weight").str(), hidden, inter);
}

Value ModelBuilder::attention(Value h, Value positions, Value &cache,
                              StringRef prefix) {
  int64_t heads = c.numAttentionHeads, nope = c.qkNopeHeadDim,
          rope = c.qkRopeHeadDim, vDim = c.vHeadDim, hidden = c.hiddenSize,
          qkDim = c.qkHeadDim(), lora = c.kvLoraRank;
  auto p = [&](StringRef s) { return (prefix + "." + s).str(); };

  // Query: compressed through q_lora_rank (V2, V3) or one projection.
  Value q;
  if (c.qLoraRank) {
    int64_t rank = *c.qLoraRank;
    Value qa = linear(h, p("q_a_proj.weight"), rank, hidden);
    qa = rmsNorm(qa, p("q_a_layernorm.weight"), rank);
    q = linear(qa, p("q_b_proj.weight"), heads * qkDim, rank);
  } else {
    q = linear(h, p("q_proj.weight"), heads * qkDim, hidden);
  }
  q = b.create<ReshapeOp>(loc, acts({heads, qkDim}), q);
  auto qSplit = b.create<SplitOp>(
      loc, TypeRange{acts({heads, nope}), acts({heads, rope})}, q,
      b.getI64IntegerAttr(2));

  YarnAttr yarn;
  if (c.yarn)
    yarn = YarnAttr::get(&ctx, llvm::APFloat(c.yarn->factor),
                         c.yarn->originalMaxPositionEmbeddings,
                         llvm::APFloat(c.yarn->betaFast),
                         llvm::APFloat(c.yarn->betaSlow),
                         llvm::APFloat(c.yarn->mscale),
                         llvm::APFloat(c.yarn->mscaleAllDim));
  auto applyRope = [&](Value x) -> Value {
    return b.create<RopeOp>(loc, x.getType(), x, positions,
                            b.getF64FloatAttr(c.ropeTheta),
                            c.ropeInterleave ? b.getUnitAttr() : nullptr, yarn,
                            nullptr);
  };
  Value qRope = applyRope(qSplit.getResult(1));

  // Keys and values: one projection to the latent and the shared RoPE key.
  Value kva = linear(h, p("kv_a_proj_with_mqa.weight"), lora + rope, hidden);
  auto kvSplit = b.create<SplitOp>(loc, TypeRange{acts({lora}), acts({rope})},
                                   kva, b.getI64IntegerAttr(1));
  Value latent = rmsNorm(kvSplit.getResult(0), p("kv_a_layernorm.weight"), lora);
  Value kRope = applyRope(kvSplit.getResult(1));
  Value kv = linear(latent, p("kv_b_proj.weight"), heads * (nope + vDim), lora);
  kv = b.create<ReshapeOp>(loc, acts({heads, nope + vDim}), kv);
  auto kvHeads = b.create<SplitOp>(
      loc, TypeRange{acts({heads, nope}), acts({heads, vDim})}, kv,
      b.getI64IntegerAttr(2));
  Value kRopeHeads =
      b.create<BroadcastHeadsOp>(loc, acts({heads, rope}), kRope);
  Value key = b.create<ConcatOp>(loc, acts({heads, qkDim}),
                                 ValueRange{kvHeads.getResult(0), kRopeHeads},
                                 b.getI64IntegerAttr(2));
  Value query = b.create<ConcatOp>(loc, acts({heads, qkDim}),
                                   ValueRange{qSplit.getResult(0), qRope},
                                   b.getI64IntegerAttr(2));

  // The naive per-head cache; melt-fuse-mla turns it into the latent one.
  cache = b.create<KVCacheAppendOp>(loc, cache, key, kvHeads.getResult(1),
                                    positions);
  auto read = b.create<KVCacheReadOp>(loc, acts({heads, qkDim}),
                                      acts({heads, vDim}), cache);
  Value o = b.create<AttentionOp>(loc, acts({heads, vDim}), query,
                                  read.getKeys(), read.getValues(), positions,
                                  b.getF64FloatAttr(c.softmaxScale()),
                                  b.getUnitAttr(), nullptr);
  o = b.create<ReshapeOp>(loc, acts({heads * vDim}), o);
  return linear(o, p("o_proj.weight"), hidden, heads * vDim);
}

Value ModelBuilder::moe(Value x, StringRef prefix) {
  int64_t hidden = c.hiddenSize, experts = c.nRoutedExperts,
          inter = c.moeIntermediateSize, k = c.numExpertsPerTok;
  FlatSymbolRefAttr gate = weight((prefix + ".gate.weight").str(),
                                  {experts, hidden}, WeightRole::Embedding);
  FlatSymbolRefAttr bias;
  TopkMethod method = TopkMethod::greedy;
  if (c.topkMethod == "noaux_tc") {
    method = TopkMethod::noaux_tc;
    bias = weight((prefix + ".gate.e_score_correction_bias").str(), {experts},
                  WeightRole::Bias);
  } else if (c.topkMethod == "group_limited_greedy") {
    method = TopkMethod::group_limited_greedy;
  }
  ScoringFunc scoring = c.scoringFunc == "sigmoid" ? ScoringFunc::sigmoid
                                                   : ScoringFunc::softmax;
  auto router = b.create<MoERouterOp>(
      loc, tokens({k}, b.getI32Type()), tokens({k}, b.getF32Type()), x, gate,
      bias, ScoringFuncAttr::get(&ctx, scoring),
      TopkMethodAttr::get(&ctx, method), b.getI64IntegerAttr(k),
      b.getI64IntegerAttr(c.nGroup), b.getI64IntegerAttr(c.topkGroup),
      b.getBoolAttr(c.normTopkProb),
      b.getF64FloatAttr(c.routedScalingFactor), nullptr);
  std::string expertsPrefix = (prefix + ".experts").str();
  Value routed = b.create<MoEExpertsOp>(
      loc, x.getType(), x, router.getIndices(), router.getWeights(),
      stackedWeight(expertsPrefix, "gate_proj", experts, {inter, hidden}),
      stackedWeight(expertsPrefix, "up_proj", experts, {inter, hidden}),
      stackedWeight(expertsPrefix, "down_proj", experts, {hidden, inter}),
      nullptr, nullptr, nullptr, nullptr);
  if (c.nSharedExperts == 0)
    return routed;
  // The shared experts are stored as one MLP n_shared_experts times wider.
  Value shared = mlp(x, (prefix + ".shared_experts").str(),
                     inter * c.nSharedExperts);
  return b.create<AddOp>(loc, routed, shared);
}

Value ModelBuilder::decoderLayer(Value h, Value positions, Value &cache,
                                 int64_t layer) {
  std::string prefix = llvm::formatv("model.layers.{0}", layer);
  loc = NameLoc::get(StringAttr::get(&ctx, prefix));
  int64_t hidden = c.hiddenSize;
  Value x = rmsNorm(h, prefix + ".input_layernorm.weight", hidden);
  h = b.create<AddOp>(loc, h,
                      attention(x, positions, cache, prefix + ".self_attn"));
  x = rmsNorm(h, prefix + ".post_attention_layernorm.weight", hidden);
  Value ffn = c.isMoELayer(layer) ? moe(x, prefix + ".mlp")
                                  : mlp(x, prefix + ".mlp", c.intermediateSize);
  return b.create<AddOp>(loc, h, ffn);
}

void ModelBuilder::buildForward(ModuleOp module) {
  int64_t layers = c.numHiddenLayers, hidden = c.hiddenSize,
          vocab = c.vocabSize;
  SmallVector<Type> inputs{tokens({}, b.getI32Type()),
                           tokens({}, b.getI64Type())};
  SmallVector<Type> results{tokens({vocab}, b.getF32Type()), acts({hidden})};
  for (int64_t i = 0; i < layers; ++i) {
    inputs.push_back(cacheType());
    results.push_back(cacheType());
  }
  b.setInsertionPointToEnd(module.getBody());
  auto func = b.create<func::FuncOp>(loc, "forward",
                                     b.getFunctionType(inputs, results));
  firstFunction = func;
  Block *body = func.addEntryBlock();
  b.setInsertionPointToStart(body);

  Value ids = body->getArgument(0), positions = body->getArgument(1);
  Value h = b.create<EmbeddingOp>(
      loc, acts({hidden}), ids,
      weight("model.embed_tokens.weight", {vocab, hidden},
             WeightRole::Embedding));
  SmallVector<Value> caches;
  for (int64_t i = 0; i < layers; ++i) {
    Value cache = body->getArgument(2 + i);
    h = decoderLayer(h, positions, cache, i);
    caches.push_back(cache);
  }
  loc = NameLoc::get(StringAttr::get(&ctx, "model"));
  Value normed = rmsNorm(h, "model.norm.weight", hidden);
  StringRef headName = c.tieWordEmbeddings ? "model.embed_tokens.weight"
                                           : "lm_head.weight";
  FlatSymbolRefAttr head =
      c.tieWordEmbeddings
          ? FlatSymbolRefAttr::get(&ctx, symbolFor(headName))
          : weight(headName, {vocab, hidden}, WeightRole::Embedding);
  Value logits =
      b.create<LogitsOp>(loc, tokens({vocab}, b.getF32Type()), normed, head,
                         nullptr);
  SmallVector<Value> returned{logits, normed};
  returned.append(caches);
  b.create<func::ReturnOp>(loc, returned);
}

void ModelBuilder::buildMTP(ModuleOp module, int64_t index) {
  int64_t layer = c.numHiddenLayers + index, hidden = c.hiddenSize,
          vocab = c.vocabSize;
  std::string prefix = llvm::formatv("model.layers.{0}", layer);
  SmallVector<Type> inputs{tokens({}, b.getI32Type()),
                           tokens({}, b.getI64Type()), acts({hidden}),
                           cacheType()};
  SmallVector<Type> results{tokens({vocab}, b.getF32Type()), acts({hidden}),
                            cacheType()};
  b.setInsertionPointToEnd(module.getBody());
  loc = NameLoc::get(StringAttr::get(&ctx, prefix));
  auto func =
      b.create<func::FuncOp>(loc, llvm::formatv("mtp_{0}", index).str(),
                             b.getFunctionType(inputs, results));
  // Weights of each function are declared just before it.
  firstFunction = func;
  Block *body = func.addEntryBlock();
  b.setInsertionPointToStart(body);

  // Token t+1's embedding and the previous depth's hidden state of token t.
  Value ids = body->getArgument(0), positions = body->getArgument(1),
        previous = body->getArgument(2), cache = body->getArgument(3);
  Value embedded = b.create<EmbeddingOp>(
      loc, acts({hidden}), ids,
      weight(prefix + ".embed_tokens.weight", {vocab, hidden},
             WeightRole::Embedding));
  Value h = b.create<MTPCombineOp>(
      loc, acts({hidden}), embedded, previous,
      weight(prefix + ".enorm.weight", {hidden}, WeightRole::Norm),
      weight(prefix + ".hnorm.weight", {hidden}, WeightRole::Norm),
      weight(prefix + ".eh_proj.weight", {hidden, 2 * hidden},
             WeightRole::Embedding),
      b.getF64FloatAttr(c.rmsNormEps), nullptr);
  h = decoderLayer(h, positions, cache, layer);
  loc = NameLoc::get(StringAttr::get(&ctx, prefix));
  Value normed = rmsNorm(h, prefix + ".shared_head.norm.weight", hidden);
  Value logits = b.create<LogitsOp>(
      loc, tokens({vocab}, b.getF32Type()), normed,
      weight(prefix + ".shared_head.head.weight", {vocab, hidden},
             WeightRole::Embedding),
      nullptr);
  b.create<func::ReturnOp>(loc, ValueRange{logits, normed, cache});
}

OwningOpRef<ModuleOp> ModelBuilder::build() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(loc);
  module->getOperation()->setAttr(
      "melt.model", b.getStringAttr(options.modelName.empty()
                                        ? c.name
                                        : options.modelName));
  buildForward(*module);
  for (int64_t i = 0; i < c.numNextnPredictLayers; ++i) {
    buildMTP(*module, i);
  }
  return module;
}

} // namespace

llvm::Expected<OwningOpRef<ModuleOp>>
mlir::melt::buildModel(MLIRContext &context, const ModelConfig &config,
                 const BuildOptions &options) {
  if (llvm::Error error = validate(config))
    return std::move(error);
  context.loadDialect<MeltDialect, func::FuncDialect>();
  ModelBuilder builder(context, config, options);
  OwningOpRef<ModuleOp> module = builder.build();
  // The builder is ours; a model that does not verify is a bug in it, but
  // callers still get an error instead of bad IR.
  std::string diagnostics;
  {
    ScopedDiagnosticHandler handler(&context, [&](Diagnostic &d) {
      llvm::raw_string_ostream os(diagnostics);
      os << d.getLocation() << ": " << d << "\n";
      return success();
    });
    if (failed(verify(*module)))
      return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                     "built model '" + config.name +
                                         "' does not verify:\n" +
                                         diagnostics);
  }
  return std::move(module);
}

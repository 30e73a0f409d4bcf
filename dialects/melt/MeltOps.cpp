//===- MeltOps.cpp - verifiers of melt ops ----------------------*- C++ -*-===//
//
// Every invariant that spans operands, results, attributes or weight symbols
// is checked here, with a message that names what is wrong and the values
// involved. Each message has an expected-error case in
// test/Dialect/melt/invalid.mlir.
//
//===----------------------------------------------------------------------===//
#include "dialects/melt/MeltDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/ADT/STLExtras.h"

using namespace mlir;
using namespace mlir::melt;

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

/// Two sizes agree when equal or when either is dynamic.
static bool compatible(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

static RankedTensorType tensorType(Value v) {
  return llvm::cast<RankedTensorType>(v.getType());
}

/// Prints a shape as [a, b, ?].
static std::string shapeString(ArrayRef<int64_t> shape) {
  std::string s = "[";
  for (auto [i, d] : llvm::enumerate(shape)) {
    if (i)
      s += ", ";
    s += ShapedType::isDynamic(d) ? std::string("?") : std::to_string(d);
  }
  return s + "]";
}

/// Checks that `value` has rank `rank`; `what` names it in the message.
static LogicalResult expectRank(Operation *op, StringRef what, Value value,
                                int64_t rank) {
  auto type = tensorType(value);
  if (type.getRank() != rank)
    return op->emitOpError() << what << " must have rank " << rank << ", got "
                             << type;
  return success();
}

/// Checks that the token (leading) dimensions of `a` and `b` agree.
static LogicalResult expectSameTokens(Operation *op, StringRef aName, Value a,
                                      StringRef bName, Value b) {
  int64_t ta = tensorType(a).getDimSize(0), tb = tensorType(b).getDimSize(0);
  if (!compatible(ta, tb))
    return op->emitOpError()
           << aName << " has " << ta << " tokens but " << bName << " has "
           << tb;
  return success();
}

/// Checks that trailing dimension `dim` of `value` is static and equal to
/// `expected`.
static LogicalResult expectDim(Operation *op, StringRef what, Value value,
                               int64_t dim, int64_t expected) {
  int64_t actual = tensorType(value).getDimSize(dim);
  if (actual != expected)
    return op->emitOpError()
           << what << " dimension " << dim << " must be " << expected
           << ", got " << shapeString({actual});
  return success();
}

/// Looks up the weight `symbol` used as `role`.
static FailureOr<WeightOp> lookupWeight(Operation *op,
                                        SymbolTableCollection &symbolTable,
                                        FlatSymbolRefAttr symbol,
                                        StringRef role) {
  auto weight = symbolTable.lookupNearestSymbolFrom<WeightOp>(op, symbol);
  if (!weight)
    return op->emitOpError() << role << " " << symbol
                             << " does not name a melt.weight";
  return weight;
}

/// Looks up the weight `symbol` and checks its shape against `expected`.
static FailureOr<WeightOp>
expectWeightShape(Operation *op, SymbolTableCollection &symbolTable,
                  FlatSymbolRefAttr symbol, StringRef role,
                  ArrayRef<int64_t> expected) {
  FailureOr<WeightOp> weight = lookupWeight(op, symbolTable, symbol, role);
  if (failed(weight))
    return failure();
  ArrayRef<int64_t> shape = weight->getTensorType().getShape();
  if (shape != expected)
    return op->emitOpError() << "expects " << role << " " << symbol
                             << " of shape " << shapeString(expected)
                             << ", got " << shapeString(shape);
  return weight;
}

/// Checks that `what` (a result) has the shape of the input.
static LogicalResult expectInputShape(Operation *op, StringRef what,
                                      RankedTensorType input,
                                      RankedTensorType other) {
  if (input.getShape() != other.getShape())
    return op->emitOpError() << what << " shape "
                             << shapeString(other.getShape())
                             << " must match input shape "
                             << shapeString(input.getShape());
  return success();
}

static LogicalResult expectPositive(Operation *op, StringRef what,
                                    double value) {
  if (!(value > 0.0))
    return op->emitOpError() << what << " must be positive, got " << value;
  return success();
}

/// Checks a block-scale geometry and the scales shape it implies.
static LogicalResult verifyBlockScales(Operation *op, RankedTensorType data,
                                       RankedTensorType scales,
                                       ArrayRef<int64_t> block) {
  if (static_cast<int64_t>(block.size()) != data.getRank())
    return op->emitOpError() << "block has " << block.size()
                             << " sizes for a tensor of rank "
                             << data.getRank();
  if (llvm::any_of(block, [](int64_t b) { return b <= 0; }))
    return op->emitOpError() << "block sizes must be positive";
  if (scales.getRank() != data.getRank())
    return op->emitOpError() << "scales must have rank " << data.getRank()
                             << ", got " << scales;
  for (int64_t d = 0; d < data.getRank(); ++d) {
    int64_t expected = ceilDivDim(data.getDimSize(d), block[d]);
    if (!compatible(expected, scales.getDimSize(d)))
      return op->emitOpError()
             << "scales dimension " << d << " must be ceil("
             << data.getDimSize(d) << " / " << block[d] << ") = " << expected
             << ", got " << scales.getDimSize(d);
  }
  return success();
}

//===----------------------------------------------------------------------===//
// WeightOp
//===----------------------------------------------------------------------===//

/// A weight is one source tensor, or one per slice of dimension 0.
static LogicalResult verifySourceCount(WeightOp op, StringRef what,
                                       RankedTensorType type,
                                       ArrayAttr sources) {
  int64_t n = sources.size();
  if (n == 1)
    return success();
  if (type.getRank() >= 2 && n == type.getDimSize(0))
    return success();
  return op.emitOpError() << "expects 1 " << what
                          << " source or one per slice of dimension 0 ("
                          << (type.getRank() ? type.getDimSize(0) : 0)
                          << "), got " << n;
}

SmallVector<SmallVector<int64_t>> WeightOp::getSourceShapes() {
  SmallVector<SmallVector<int64_t>> shapes;
  ArrayRef<int64_t> shape = getTensorType().getShape();
  if (auto view = getViewAttr()) {
    shapes.push_back(SmallVector<int64_t>(view.getSource()));
  } else if (auto parts = getConcatAttr()) {
    for (int64_t rows : parts.asArrayRef())
      shapes.push_back({rows, shape.back()});
  } else {
    for (size_t i = 0; i < getSources().size(); ++i)
      shapes.push_back(SmallVector<int64_t>(
          getSources().size() > 1 ? shape.drop_front() : shape));
  }
  return shapes;
}

SmallVector<SmallVector<int64_t>> WeightOp::getScaleSourceShapes() {
  SmallVector<SmallVector<int64_t>> shapes;
  if (!hasBlockScales())
    return shapes;
  ArrayRef<int64_t> scales =
      llvm::cast<RankedTensorType>(*getScaleType()).getShape();
  if (auto parts = getConcatAttr()) {
    int64_t block = (*getBlockSize())[0];
    for (int64_t rows : parts.asArrayRef())
      shapes.push_back({ceilDivDim(rows, block), scales.back()});
    return shapes;
  }
  for (size_t i = 0; i < getScaleSources()->size(); ++i)
    shapes.push_back(SmallVector<int64_t>(
        getScaleSources()->size() > 1 ? scales.drop_front() : scales));
  return shapes;
}

/// Checks a concatenation: one row count per source, adding up to the
/// weight's rows; FP8 parts but the last fill whole blocks.
static LogicalResult verifyConcat(WeightOp op, ArrayRef<int64_t> parts) {
  RankedTensorType type = op.getTensorType();
  if (op.getViewAttr())
    return op.emitOpError() << "a weight cannot be both a view and a "
                               "concatenation";
  if (type.getRank() != 2 || parts.size() != op.getSources().size())
    return op.emitOpError() << "concat needs a 2-D weight and one row count "
                               "per source, got "
                            << parts.size() << " for " << op.getSources().size()
                            << " sources";
  int64_t rows = 0;
  for (int64_t p : parts) {
    if (p <= 0)
      return op.emitOpError() << "concat row counts must be positive";
    rows += p;
  }
  if (rows != type.getDimSize(0))
    return op.emitOpError() << "concat parts add up to " << rows
                            << " rows, the weight has " << type.getDimSize(0);
  if (op.hasBlockScales()) {
    int64_t block = op.getBlockSizeAttr().asArrayRef()[0];
    for (auto [i, p] : llvm::enumerate(parts.drop_back()))
      if (p % block != 0)
        return op.emitOpError() << "concat part " << i << " has " << p
                                << " rows, not a multiple of the " << block
                                << "-row scale block";
    if (op.getScaleSources()->size() != parts.size())
      return op.emitOpError() << "concat needs one scale tensor per part";
  }
  return success();
}

/// Checks a view against the weight's type: same rank as the reshaped
/// tensor, equal sizes but along the axis, the slice inside.
static LogicalResult verifyView(WeightOp op, WeightViewAttr view) {
  RankedTensorType type = op.getTensorType();
  if (op.getSources().size() != 1)
    return op.emitOpError() << "a weight view reads one tensor, not "
                            << op.getSources().size();
  ArrayRef<int64_t> shape = view.getShape();
  if (type.getRank() != static_cast<int64_t>(shape.size()))
    return op.emitOpError() << "weight type " << type
                            << " does not have the rank of the view shape "
                            << shapeString(shape);
  for (int64_t d = 0; d < type.getRank(); ++d)
    if (d != view.getAxis() && type.getDimSize(d) != shape[d])
      return op.emitOpError() << "weight type " << type
                              << " differs from the view shape "
                              << shapeString(shape) << " outside the axis";
  if (view.getOffset() + type.getDimSize(view.getAxis()) >
      shape[view.getAxis()])
    return op.emitOpError() << "weight view slice [" << view.getOffset()
                            << ", +" << type.getDimSize(view.getAxis())
                            << ") exceeds dimension " << view.getAxis()
                            << " of size " << shape[view.getAxis()];
  return success();
}

LogicalResult WeightOp::verify() {
  RankedTensorType type = getTensorType();
  Type element = type.getElementType();
  if (auto view = getViewAttr())
    if (failed(verifyView(*this, view)))
      return failure();
  if (auto parts = getConcatAttr())
    if (failed(verifyConcat(*this, parts.asArrayRef())))
      return failure();
  if (!isFp8Type(element) &&
      !llvm::isa<BFloat16Type, Float16Type, Float32Type>(element))
    return emitOpError() << "weight element type must be bf16, f16, f32 or "
                            "an FP8 type, got "
                         << element;
  if (!getViewAttr() && !getConcatAttr() &&
      failed(verifySourceCount(*this, "weight", type, getSources())))
    return failure();

  if (!hasBlockScales()) {
    if (isFp8Type(element))
      return emitOpError() << "FP8 weight needs block scales";
    return success();
  }
  if (!isFp8Type(element))
    return emitOpError() << "block scales are only valid on FP8 weights, not "
                         << element;
  auto scales = llvm::cast<RankedTensorType>(*getScaleType());
  if (!scales.getElementType().isF32())
    return emitOpError() << "block scales must be f32, got "
                         << scales.getElementType();
  ArrayRef<int64_t> block = *getBlockSize();
  // The scales of a view describe its source tensor.
  RankedTensorType scaled =
      getViewAttr() ? RankedTensorType::get(getViewAttr().getSource(),
                                            type.getElementType())
                    : type;
  if (block.size() != 2 || scaled.getRank() < 2)
    return emitOpError() << "block scales need a 2-D block over the last two "
                            "dimensions of a weight of rank >= 2";
  // Stacked dimensions (experts) have one block each.
  SmallVector<int64_t> fullBlock(scaled.getRank() - 2, 1);
  fullBlock.append(block.begin(), block.end());
  if (failed(verifyBlockScales(*this, scaled, scales, fullBlock)))
    return failure();
  if (getConcatAttr())
    return success(); // one scale tensor per part, checked above
  return verifySourceCount(*this, "scale", scales, *getScaleSources());
}

//===----------------------------------------------------------------------===//
// EmbeddingOp
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::verify() {
  if (failed(expectRank(*this, "result", getResult(), 2)))
    return failure();
  return expectSameTokens(*this, "result", getResult(), "ids", getIds());
}

LogicalResult
EmbeddingOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  FailureOr<WeightOp> table =
      lookupWeight(*this, symbolTable, getTableAttr(), "table");
  if (failed(table))
    return failure();
  auto type = table->getTensorType();
  int64_t hidden = tensorType(getResult()).getDimSize(1);
  if (type.getRank() != 2 || type.getDimSize(1) != hidden)
    return emitOpError() << "expects table " << getTableAttr()
                         << " of shape [vocab, " << hidden << "], got "
                         << shapeString(type.getShape());
  return success();
}

//===----------------------------------------------------------------------===//
// RMSNormOp
//===----------------------------------------------------------------------===//

LogicalResult RMSNormOp::verify() {
  auto in = tensorType(getInput()), out = tensorType(getResult());
  if (failed(expectInputShape(*this, "result", in, out)))
    return failure();
  if (in.getRank() < 1 || in.isDynamicDim(in.getRank() - 1))
    return emitOpError() << "input must have a static last dimension";
  return expectPositive(*this, "epsilon", getEpsilon().convertToDouble());
}

LogicalResult RMSNormOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  auto in = tensorType(getInput());
  return expectWeightShape(*this, symbolTable, getWeightAttr(), "weight",
                           {in.getDimSize(in.getRank() - 1)});
}

//===----------------------------------------------------------------------===//
// LinearOp and LogitsOp
//===----------------------------------------------------------------------===//

/// Shared by linear and logits: y[..., N] = x[..., K] W[N, K]^T.
static LogicalResult verifyProjection(Operation *op, Value input,
                                      Value result) {
  auto in = tensorType(input), out = tensorType(result);
  if (in.getRank() != out.getRank() || in.getRank() < 1)
    return op->emitOpError() << "input and result must have the same rank, "
                                "got "
                             << in << " and " << out;
  for (int64_t d = 0; d + 1 < in.getRank(); ++d)
    if (!compatible(in.getDimSize(d), out.getDimSize(d)))
      return op->emitOpError() << "input and result differ in dimension " << d;
  if (in.isDynamicDim(in.getRank() - 1) || out.isDynamicDim(out.getRank() - 1))
    return op->emitOpError() << "input and result must have a static last "
                                "dimension";
  return success();
}

static LogicalResult verifyProjectionWeight(Operation *op,
                                            SymbolTableCollection &symbolTable,
                                            FlatSymbolRefAttr weight,
                                            StringRef role, Value input,
                                            Value result) {
  auto in = tensorType(input), out = tensorType(result);
  return expectWeightShape(op, symbolTable, weight, role,
                           {out.getDimSize(out.getRank() - 1),
                            in.getDimSize(in.getRank() - 1)});
}

LogicalResult LinearOp::verify() {
  return verifyProjection(*this, getInput(), getResult());
}

LogicalResult LinearOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  return verifyProjectionWeight(*this, symbolTable, getWeightAttr(), "weight",
                                getInput(), getResult());
}

LogicalResult LogitsOp::verify() {
  return verifyProjection(*this, getInput(), getResult());
}

LogicalResult LogitsOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  return verifyProjectionWeight(*this, symbolTable, getHeadAttr(), "head",
                                getInput(), getResult());
}

//===----------------------------------------------------------------------===//
// RopeOp
//===----------------------------------------------------------------------===//

LogicalResult RopeOp::verify() {
  auto in = tensorType(getInput());
  if (in.getRank() != 2 && in.getRank() != 3)
    return emitOpError() << "input must be [T, D] or [T, heads, D], got "
                         << in;
  int64_t dim = in.getDimSize(in.getRank() - 1);
  if (ShapedType::isDynamic(dim) || dim % 2 != 0)
    return emitOpError() << "rotary dimension must be static and even, got "
                         << shapeString(in.getShape());
  if (failed(expectSameTokens(*this, "input", getInput(), "positions",
                              getPositions())))
    return failure();
  return expectPositive(*this, "theta", getTheta().convertToDouble());
}

//===----------------------------------------------------------------------===//
// AttentionOp
//===----------------------------------------------------------------------===//

LogicalResult AttentionOp::verify() {
  for (auto [name, v] : {std::pair<StringRef, Value>{"query", getQuery()},
                         {"key", getKey()},
                         {"value", getValue()},
                         {"result", getResult()}})
    if (failed(expectRank(*this, name, v, 3)))
      return failure();
  auto q = tensorType(getQuery()), k = tensorType(getKey()),
       v = tensorType(getValue()), r = tensorType(getResult());
  if (q.getDimSize(2) != k.getDimSize(2))
    return emitOpError() << "query width " << q.getDimSize(2)
                         << " differs from key width " << k.getDimSize(2);
  if (!compatible(k.getDimSize(0), v.getDimSize(0)) ||
      k.getDimSize(1) != v.getDimSize(1))
    return emitOpError() << "key " << shapeString(k.getShape())
                         << " and value " << shapeString(v.getShape())
                         << " must have the same length and heads";
  int64_t heads = q.getDimSize(1), kvHeads = k.getDimSize(1);
  if (ShapedType::isDynamic(heads) || ShapedType::isDynamic(kvHeads) ||
      heads % kvHeads != 0)
    return emitOpError() << "query heads (" << heads
                         << ") must be a static multiple of key/value heads ("
                         << kvHeads << ")";
  if (!compatible(r.getDimSize(0), q.getDimSize(0)) ||
      r.getDimSize(1) != heads || r.getDimSize(2) != v.getDimSize(2))
    return emitOpError() << "result must be [T, " << heads << ", "
                         << v.getDimSize(2) << "], got "
                         << shapeString(r.getShape());
  if (failed(expectSameTokens(*this, "query", getQuery(), "positions",
                              getPositions())))
    return failure();
  return expectPositive(*this, "scale", getScale().convertToDouble());
}

//===----------------------------------------------------------------------===//
// Caches
//===----------------------------------------------------------------------===//

/// Checks a [T, heads, width] tensor against a cache's geometry.
static LogicalResult expectHeadsAndWidth(Operation *op, StringRef what,
                                         Value value, int64_t heads,
                                         int64_t width) {
  if (failed(expectRank(op, what, value, 3)))
    return failure();
  auto type = tensorType(value);
  if (type.getDimSize(1) != heads || type.getDimSize(2) != width)
    return op->emitOpError()
           << what << " must be [T, " << heads << ", " << width
           << "] to match the cache, got " << shapeString(type.getShape());
  return success();
}

LogicalResult KVCacheAppendOp::verify() {
  KVCacheType cache = getCache().getType();
  if (failed(expectHeadsAndWidth(*this, "key", getKey(), cache.getHeads(),
                                 cache.getKeyDim())) ||
      failed(expectHeadsAndWidth(*this, "value", getValue(), cache.getHeads(),
                                 cache.getValueDim())))
    return failure();
  if (failed(expectSameTokens(*this, "key", getKey(), "value", getValue())))
    return failure();
  return expectSameTokens(*this, "key", getKey(), "positions", getPositions());
}

LogicalResult KVCacheReadOp::verify() {
  KVCacheType cache = getCache().getType();
  if (failed(expectHeadsAndWidth(*this, "keys", getKeys(), cache.getHeads(),
                                 cache.getKeyDim())) ||
      failed(expectHeadsAndWidth(*this, "values", getValues(),
                                 cache.getHeads(), cache.getValueDim())))
    return failure();
  return expectSameTokens(*this, "keys", getKeys(), "values", getValues());
}

LogicalResult LatentCacheAppendOp::verify() {
  LatentCacheType cache = getCache().getType();
  if (failed(expectRank(*this, "latent", getLatent(), 2)) ||
      failed(expectRank(*this, "rope_key", getRopeKey(), 2)))
    return failure();
  if (failed(expectDim(*this, "latent", getLatent(), 1,
                       cache.getLatentDim())) ||
      failed(expectDim(*this, "rope_key", getRopeKey(), 1,
                       cache.getRopeDim())))
    return failure();
  if (failed(expectSameTokens(*this, "latent", getLatent(), "rope_key",
                              getRopeKey())))
    return failure();
  return expectSameTokens(*this, "latent", getLatent(), "positions",
                          getPositions());
}

//===----------------------------------------------------------------------===//
// MLAOp
//===----------------------------------------------------------------------===//

LogicalResult MLAOp::verify() {
  for (auto [name, v] :
       {std::pair<StringRef, Value>{"query_nope", getQueryNope()},
        {"query_rope", getQueryRope()},
        {"result", getResult()}})
    if (failed(expectRank(*this, name, v, 3)))
      return failure();
  auto qn = tensorType(getQueryNope()), qr = tensorType(getQueryRope()),
       r = tensorType(getResult());
  LatentCacheType cache = getCache().getType();
  if (qn.getDimSize(1) != qr.getDimSize(1) ||
      qn.getDimSize(1) != r.getDimSize(1) || qn.isDynamicDim(1))
    return emitOpError() << "query_nope, query_rope and result must have the "
                            "same static number of heads";
  if (failed(expectDim(*this, "query_rope", getQueryRope(), 2,
                       cache.getRopeDim())))
    return failure();
  if (qn.isDynamicDim(2) || r.isDynamicDim(2))
    return emitOpError() << "query_nope and result must have static widths";
  if (failed(expectSameTokens(*this, "query_nope", getQueryNope(),
                              "query_rope", getQueryRope())) ||
      failed(expectSameTokens(*this, "query_nope", getQueryNope(), "result",
                              getResult())) ||
      failed(expectSameTokens(*this, "query_nope", getQueryNope(),
                              "positions", getPositions())))
    return failure();
  if (IntegerAttr threshold = getPrefillThresholdAttr();
      threshold && threshold.getInt() < 0)
    return emitOpError() << "prefill_threshold must be non-negative, got "
                         << threshold.getInt();
  return expectPositive(*this, "scale", getScale().convertToDouble());
}

LogicalResult MLAOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  auto qn = tensorType(getQueryNope()), r = tensorType(getResult());
  int64_t latent = getCache().getType().getLatentDim();
  if (failed(expectWeightShape(*this, symbolTable, getWUkAttr(), "w_uk",
                               {qn.getDimSize(1), qn.getDimSize(2), latent})))
    return failure();
  return expectWeightShape(*this, symbolTable, getWUvAttr(), "w_uv",
                           {r.getDimSize(1), r.getDimSize(2), latent});
}

//===----------------------------------------------------------------------===//
// MoERouterOp
//===----------------------------------------------------------------------===//

LogicalResult MoERouterOp::verify() {
  int64_t topK = getTopK(), nGroup = getNGroup(), topkGroup = getTopkGroup();
  if (failed(expectRank(*this, "input", getInput(), 2)))
    return failure();
  if (topK < 1)
    return emitOpError() << "top_k must be at least 1, got " << topK;
  if (nGroup < 1)
    return emitOpError() << "n_group must be at least 1, got " << nGroup;
  if (topkGroup < 1 || topkGroup > nGroup)
    return emitOpError() << "topk_group (" << topkGroup
                         << ") must be between 1 and n_group (" << nGroup
                         << ")";
  if (failed(expectPositive(*this, "routed_scaling_factor",
                            getRoutedScalingFactor().convertToDouble())))
    return failure();
  if (getTopkMethod() == TopkMethod::noaux_tc && !getBias())
    return emitOpError() << "noaux_tc routing needs a score-correction bias";
  if (getTopkMethod() != TopkMethod::noaux_tc && getBias())
    return emitOpError() << "a score-correction bias is only used by noaux_tc "
                            "routing";
  for (Value result : {getIndices(), getWeights()}) {
    auto type = tensorType(result);
    if (type.getDimSize(1) != topK)
      return emitOpError() << "results must be [T, " << topK << "], got "
                           << shapeString(type.getShape());
    if (failed(expectSameTokens(*this, "input", getInput(), "result", result)))
      return failure();
  }
  return success();
}

LogicalResult
MoERouterOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  FailureOr<WeightOp> gate =
      lookupWeight(*this, symbolTable, getGateAttr(), "gate");
  if (failed(gate))
    return failure();
  auto gateType = gate->getTensorType();
  int64_t hidden = tensorType(getInput()).getDimSize(1);
  if (gateType.getRank() != 2 || gateType.getDimSize(1) != hidden)
    return emitOpError() << "expects gate " << getGateAttr()
                         << " of shape [experts, " << hidden << "], got "
                         << shapeString(gateType.getShape());
  int64_t experts = gateType.getDimSize(0);
  int64_t topK = getTopK(), nGroup = getNGroup(), topkGroup = getTopkGroup();
  if (topK > experts)
    return emitOpError() << "top_k (" << topK << ") exceeds the number of "
                         << "experts (" << experts << ")";
  if (experts % nGroup != 0)
    return emitOpError() << "n_group (" << nGroup
                         << ") does not divide the number of experts ("
                         << experts << ")";
  if (getTopkMethod() != TopkMethod::greedy &&
      topK > topkGroup * (experts / nGroup))
    return emitOpError() << "top_k (" << topK << ") exceeds the "
                         << topkGroup * (experts / nGroup)
                         << " experts of the " << topkGroup << " kept groups";
  if (auto bias = getBiasAttr()) {
    // A rank-1 weight is never FP8 (FP8 weights carry 2-D block scales), so
    // the bias is always a plain float.
    if (failed(expectWeightShape(*this, symbolTable, bias, "bias", {experts})))
      return failure();
  }
  return success();
}

//===----------------------------------------------------------------------===//
// MoEExpertsOp
//===----------------------------------------------------------------------===//

LogicalResult MoEExpertsOp::verify() {
  if (failed(expectRank(*this, "input", getInput(), 2)))
    return failure();
  if (tensorType(getInput()) != tensorType(getResult()))
    return emitOpError() << "result type " << getResult().getType()
                         << " must match input type " << getInput().getType();
  auto idx = tensorType(getIndices()), w = tensorType(getWeights());
  if (!compatible(idx.getDimSize(0), w.getDimSize(0)) ||
      idx.getDimSize(1) != w.getDimSize(1))
    return emitOpError() << "indices " << shapeString(idx.getShape())
                         << " and weights " << shapeString(w.getShape())
                         << " must have the same shape";
  return expectSameTokens(*this, "input", getInput(), "indices",
                          getIndices());
}

LogicalResult
MoEExpertsOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  FailureOr<WeightOp> gate =
      lookupWeight(*this, symbolTable, getGateAttr(), "gate");
  if (failed(gate))
    return failure();
  auto gateType = gate->getTensorType();
  int64_t hidden = tensorType(getInput()).getDimSize(1);
  if (gateType.getRank() != 3 || gateType.getDimSize(2) != hidden)
    return emitOpError() << "expects gate " << getGateAttr()
                         << " of shape [experts, inter, " << hidden
                         << "], got " << shapeString(gateType.getShape());
  int64_t experts = gateType.getDimSize(0), inter = gateType.getDimSize(1);
  if (failed(expectWeightShape(*this, symbolTable, getUpAttr(), "up",
                               {experts, inter, hidden})) ||
      failed(expectWeightShape(*this, symbolTable, getDownAttr(), "down",
                               {experts, hidden, inter})))
    return failure();
  int64_t k = tensorType(getIndices()).getDimSize(1);
  if (!ShapedType::isDynamic(k) && k > experts)
    return emitOpError() << "selects " << k << " experts per token of "
                         << experts;
  auto placement = getPlacementAttr();
  if (placement &&
      failed(placement.verifyForExperts([&] { return emitOpError(); },
                                        experts)))
    return failure();
  return verifyExchangeTypes(placement);
}

/// `dispatch` and `combine` only mean something when tokens cross devices.
LogicalResult MoEExpertsOp::verifyExchangeTypes(ExpertPlacementAttr placement) {
  if (!getDispatch() && !getCombine())
    return success();
  if (!placement || placement.getDevices() < 2)
    return emitOpError() << "dispatch and combine types need experts "
                            "placed on several devices";
  Type fp8 = Float8E4M3FNType::get(getContext());
  if (auto dispatch = getDispatchAttr()) {
    Type t = dispatch.getValue();
    if (!t.isBF16() && !t.isF32() && t != fp8)
      return emitOpError() << "dispatch type must be f8E4M3FN, bf16 or f32, "
                              "got "
                           << t;
    auto precision = getPrecisionAttr();
    if (t == fp8 && (!precision || precision.getCompute() != fp8))
      return emitOpError() << "FP8 dispatch needs experts that compute in "
                              "FP8";
  }
  if (auto combine = getCombineAttr()) {
    Type t = combine.getValue();
    if (!t.isBF16() && !t.isF32())
      return emitOpError() << "combine type must be bf16 or f32, got " << t;
  }
  return success();
}

//===----------------------------------------------------------------------===//
// Shape ops
//===----------------------------------------------------------------------===//

/// Checks that `part` matches `whole` in rank, element type and every
/// dimension but `axis`.
static LogicalResult expectSameExceptAxis(Operation *op, RankedTensorType whole,
                                          RankedTensorType part,
                                          int64_t axis) {
  if (part.getRank() != whole.getRank() ||
      part.getElementType() != whole.getElementType())
    return op->emitOpError() << "operand and result types " << part << " and "
                             << whole << " differ in rank or element type";
  for (int64_t d = 0; d < whole.getRank(); ++d)
    if (d != axis && !compatible(part.getDimSize(d), whole.getDimSize(d)))
      return op->emitOpError() << "types " << part << " and " << whole
                               << " differ in dimension " << d
                               << " outside the axis";
  return success();
}

/// Sums sizes along an axis; dynamic if any is dynamic.
static int64_t sumAlongAxis(TypeRange types, int64_t axis) {
  int64_t sum = 0;
  for (Type t : types) {
    int64_t d = llvm::cast<RankedTensorType>(t).getDimSize(axis);
    if (ShapedType::isDynamic(d))
      return ShapedType::kDynamic;
    sum += d;
  }
  return sum;
}

static LogicalResult verifyConcatLike(Operation *op, RankedTensorType whole,
                                      TypeRange parts, int64_t axis) {
  if (parts.empty())
    return op->emitOpError() << "needs at least one part";
  if (axis < 0 || axis >= whole.getRank())
    return op->emitOpError() << "axis " << axis << " is out of range for rank "
                             << whole.getRank();
  for (Type part : parts)
    if (failed(expectSameExceptAxis(op, whole,
                                    llvm::cast<RankedTensorType>(part), axis)))
      return failure();
  int64_t sum = sumAlongAxis(parts, axis);
  if (!compatible(sum, whole.getDimSize(axis)))
    return op->emitOpError() << "parts add up to " << sum << " along axis "
                             << axis << ", the whole has "
                             << whole.getDimSize(axis);
  return success();
}

LogicalResult ConcatOp::verify() {
  return verifyConcatLike(*this, tensorType(getResult()),
                          getInputs().getTypes(), getAxis());
}

LogicalResult SplitOp::verify() {
  return verifyConcatLike(*this, tensorType(getInput()),
                          getResults().getTypes(), getAxis());
}

LogicalResult BroadcastHeadsOp::verify() {
  auto in = tensorType(getInput()), out = tensorType(getResult());
  if (in.getRank() != 2 || out.getRank() != 3 ||
      in.getElementType() != out.getElementType() ||
      !compatible(in.getDimSize(0), out.getDimSize(0)) ||
      in.getDimSize(1) != out.getDimSize(2) || out.isDynamicDim(1))
    return emitOpError() << "must turn [T, D] into [T, heads, D] of the same "
                            "element type, got "
                         << in << " -> " << out;
  return success();
}

LogicalResult ReshapeOp::verify() {
  auto in = tensorType(getInput()), out = tensorType(getResult());
  if (in.getElementType() != out.getElementType())
    return emitOpError() << "cannot change the element type";
  if (in.getRank() < 1 || out.getRank() < 1 ||
      !compatible(in.getDimSize(0), out.getDimSize(0)))
    return emitOpError() << "must keep the token dimension";
  auto trailing = [](RankedTensorType t) -> int64_t {
    int64_t n = 1;
    for (int64_t d : t.getShape().drop_front()) {
      if (ShapedType::isDynamic(d))
        return ShapedType::kDynamic;
      n *= d;
    }
    return n;
  };
  int64_t a = trailing(in), b = trailing(out);
  if (ShapedType::isDynamic(a) || ShapedType::isDynamic(b))
    return emitOpError() << "trailing dimensions must be static";
  if (a != b)
    return emitOpError() << "regroups " << a << " values per token into " << b;
  return success();
}

LogicalResult ConvertOp::verify() {
  auto in = tensorType(getInput()), out = tensorType(getResult());
  if (failed(expectInputShape(*this, "result", in, out)))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// Quantization
//===----------------------------------------------------------------------===//

LogicalResult QuantizeOp::verify() {
  auto in = tensorType(getInput()), q = tensorType(getOutput());
  if (failed(expectInputShape(*this, "output", in, q)))
    return failure();
  return verifyBlockScales(*this, in, tensorType(getScales()), getBlock());
}

LogicalResult DequantizeOp::verify() {
  auto q = tensorType(getInput()), out = tensorType(getResult());
  if (failed(expectInputShape(*this, "result", q, out)))
    return failure();
  return verifyBlockScales(*this, q, tensorType(getScales()), getBlock());
}

//===----------------------------------------------------------------------===//
// MTPCombineOp
//===----------------------------------------------------------------------===//

LogicalResult MTPCombineOp::verify() {
  if (failed(expectRank(*this, "embedded", getEmbedded(), 2)))
    return failure();
  auto e = tensorType(getEmbedded()), h = tensorType(getHidden()),
       r = tensorType(getResult());
  if (e.getShape() != h.getShape() || e.getShape() != r.getShape())
    return emitOpError() << "embedded, hidden and result must have one shape, "
                            "got "
                         << shapeString(e.getShape()) << ", "
                         << shapeString(h.getShape()) << " and "
                         << shapeString(r.getShape());
  if (e.isDynamicDim(1))
    return emitOpError() << "hidden size must be static";
  return expectPositive(*this, "epsilon", getEpsilon().convertToDouble());
}

LogicalResult
MTPCombineOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  int64_t hidden = tensorType(getHidden()).getDimSize(1);
  if (failed(expectWeightShape(*this, symbolTable, getEnormAttr(), "enorm",
                               {hidden})) ||
      failed(expectWeightShape(*this, symbolTable, getHnormAttr(), "hnorm",
                               {hidden})))
    return failure();
  return expectWeightShape(*this, symbolTable, getEhProjAttr(), "eh_proj",
                           {hidden, 2 * hidden});
}

#define GET_OP_CLASSES
#include "dialects/melt/MeltOps.cpp.inc"

//===- FuseMLA.cpp - MLA on a latent cache ----------------------*- C++ -*-===//
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/SetVector.h"

#include <cmath>
#include <limits>

namespace mlir::melt {
#define GEN_PASS_DEF_FUSEMLAPASS
#include "passes/Passes.h.inc"
} // namespace mlir::melt

using namespace mlir;
using namespace mlir::melt;

namespace {

/// The pieces of one model-form attention that the rewrite needs.
struct MLAMatch {
  AttentionOp attention;
  KVCacheReadOp read;
  KVCacheAppendOp append;
  Value queryNope, queryRope; // [T, H, nope], [T, H, rope] (rotated)
  Value latent, ropeKey;      // [T, L] normalized, [T, R] rotated
  WeightOp kvB;               // [H * (nope + v), L]
  LinearOp kvA;               // x -> [T, L + R], the kv down-projection
  int64_t heads, nope, rope, valueDim, latentDim;
};

/// Matches what the model builder writes for MLA (frontends/ModelBuilder):
/// K = concat(split(reshape(kv_b(latent)))#0, broadcast_heads(k_rope)),
/// V = split(...)#1, Q = concat(q_nope, q_rope), both cached per head.
FailureOr<MLAMatch> match(AttentionOp attention, SymbolTable &symbols) {
  MLAMatch m;
  m.attention = attention;
  m.read = attention.getKey().getDefiningOp<KVCacheReadOp>();
  if (!m.read || attention.getValue() != m.read.getValues())
    return failure();
  m.append = m.read.getCache().getDefiningOp<KVCacheAppendOp>();
  if (!m.append)
    return failure();
  auto keyConcat = m.append.getKey().getDefiningOp<ConcatOp>();
  auto queryConcat = attention.getQuery().getDefiningOp<ConcatOp>();
  if (!keyConcat || !queryConcat || keyConcat.getInputs().size() != 2 ||
      queryConcat.getInputs().size() != 2 || keyConcat.getAxis() != 2 ||
      queryConcat.getAxis() != 2)
    return failure();
  auto broadcast = keyConcat.getInputs()[1].getDefiningOp<BroadcastHeadsOp>();
  auto split = keyConcat.getInputs()[0].getDefiningOp<SplitOp>();
  if (!broadcast || !split || split.getNumResults() != 2 ||
      split.getAxis() != 2 || keyConcat.getInputs()[0] != split.getResult(0) ||
      m.append.getValue() != split.getResult(1))
    return failure();
  auto reshape = split.getInput().getDefiningOp<ReshapeOp>();
  auto kvProj = reshape ? reshape.getInput().getDefiningOp<LinearOp>()
                        : LinearOp();
  if (!kvProj)
    return failure();
  m.kvB = symbols.lookup<WeightOp>(kvProj.getWeight());
  if (!m.kvB || m.kvB.getViewAttr() || m.kvB.getSources().size() != 1)
    return failure();
  // latent = rms_norm(split(kv_a(x))#0)
  if (auto norm = kvProj.getInput().getDefiningOp<RMSNormOp>())
    if (auto kvSplit = norm.getInput().getDefiningOp<SplitOp>())
      m.kvA = kvSplit.getInput().getDefiningOp<LinearOp>();
  m.queryNope = queryConcat.getInputs()[0];
  m.queryRope = queryConcat.getInputs()[1];
  m.latent = kvProj.getInput();
  m.ropeKey = broadcast.getInput();
  auto qn = llvm::cast<RankedTensorType>(m.queryNope.getType());
  auto kn = llvm::cast<RankedTensorType>(split.getResult(0).getType());
  auto v = llvm::cast<RankedTensorType>(split.getResult(1).getType());
  auto qr = llvm::cast<RankedTensorType>(m.queryRope.getType());
  auto lat = llvm::cast<RankedTensorType>(m.latent.getType());
  m.heads = qn.getDimSize(1);
  m.nope = qn.getDimSize(2);
  m.rope = qr.getDimSize(2);
  m.valueDim = v.getDimSize(2);
  m.latentDim = lat.getDimSize(1);
  if (kn.getDimSize(2) != m.nope || kn.getDimSize(1) != m.heads ||
      m.kvB.getTensorType().getShape() !=
          ArrayRef<int64_t>{m.heads * (m.nope + m.valueDim), m.latentDim})
    return failure();
  return m;
}

/// The query count above which decompressing K/V beats absorbed attention.
int64_t costModelThreshold(const MLAMatch &m) {
  double pairAbsorbed = 2.0 * m.latentDim + m.rope;
  double pairDecompressed = m.nope + m.rope + m.valueDim;
  double decompressPerToken = double(m.nope + m.valueDim) * m.latentDim;
  if (pairAbsorbed <= pairDecompressed)
    return std::numeric_limits<int32_t>::max();
  return static_cast<int64_t>(
      std::ceil(decompressPerToken / (pairAbsorbed - pairDecompressed)));
}

struct FuseMLAPass final
    : mlir::melt::impl::FuseMLAPassBase<FuseMLAPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (prefill != "auto" && prefill != "absorbed" &&
        prefill != "decompressed") {
      module.emitError() << "melt-fuse-mla: prefill must be auto, absorbed or "
                            "decompressed, not '"
                         << prefill << "'";
      return signalPassFailure();
    }
    if (prefillThreshold < -1) {
      module.emitError() << "melt-fuse-mla: prefill-threshold must be >= 0, "
                            "got "
                         << static_cast<long long>(prefillThreshold);
      return signalPassFailure();
    }
    SymbolTable symbols(module);
    SmallVector<AttentionOp> attentions;
    module.walk([&](AttentionOp op) { attentions.push_back(op); });
    llvm::SetVector<WeightOp> candidatesToErase;
    SmallVector<LinearOp> kvDownProjections;
    for (AttentionOp attention : attentions) {
      FailureOr<MLAMatch> m = match(attention, symbols);
      if (failed(m)) {
        attention.emitError()
            << "melt-fuse-mla: this attention is not the MLA of a "
               "DeepSeek model form (K/V decompressed by kv_b_proj from a "
               "latent, cached per head)";
        return signalPassFailure();
      }
      if (m->kvA)
        kvDownProjections.push_back(m->kvA);
      if (failed(rewrite(*m, symbols)))
        return signalPassFailure();
      candidatesToErase.insert(m->kvB);
    }
    if (fuseDownProjections)
      for (LinearOp kvA : kvDownProjections)
        fuseDownProjection(kvA, symbols, candidatesToErase);
    eraseDeadOps(module);
    for (WeightOp weight : candidatesToErase)
      if (SymbolTable::symbolKnownUseEmpty(weight, module))
        weight.erase();
    updateSignatures(module);
  }

  /// One GEMM for the q and kv down-projections, which read the same input:
  /// their weights concatenated along rows (FP8: only when the q part fills
  /// whole 128-row scale blocks), the result split back.
  void fuseDownProjection(LinearOp kvA, SymbolTable &symbols,
                          llvm::SetVector<WeightOp> &unused) {
    // The q down-projection: another projection of the same input whose
    // result is normalized (q_a_layernorm).
    LinearOp qA;
    for (Operation *user : kvA.getInput().getUsers())
      if (auto linear = dyn_cast<LinearOp>(user))
        if (linear != kvA && linear->hasOneUse() &&
            isa<RMSNormOp>(*linear->user_begin()))
          qA = linear;
    if (!qA)
      return;
    auto wq = symbols.lookup<WeightOp>(qA.getWeight());
    auto wkv = symbols.lookup<WeightOp>(kvA.getWeight());
    if (!wq || !wkv || wq.getViewAttr() || wkv.getViewAttr() ||
        wq.getConcatAttr() || wkv.getConcatAttr() ||
        wq.getSources().size() != 1 || wkv.getSources().size() != 1 ||
        wq.getTensorType().getElementType() !=
            wkv.getTensorType().getElementType() ||
        wq.hasBlockScales() != wkv.hasBlockScales())
      return;
    int64_t qRows = wq.getTensorType().getDimSize(0),
            kvRows = wkv.getTensorType().getDimSize(0),
            cols = wq.getTensorType().getDimSize(1);
    ArrayAttr scaleSources;
    TypeAttr scaleType;
    if (wq.hasBlockScales()) {
      ArrayRef<int64_t> block = *wq.getBlockSize();
      if (block != *wkv.getBlockSize() || qRows % block[0] != 0)
        return; // FP8 blocks would straddle the two parts
      auto qs = llvm::cast<RankedTensorType>(*wq.getScaleType());
      auto kvs = llvm::cast<RankedTensorType>(*wkv.getScaleType());
      scaleType = TypeAttr::get(RankedTensorType::get(
          {qs.getDimSize(0) + kvs.getDimSize(0), qs.getDimSize(1)},
          qs.getElementType()));
      SmallVector<Attribute> parts{(*wq.getScaleSources())[0],
                                   (*wkv.getScaleSources())[0]};
      scaleSources = ArrayAttr::get(&getContext(), parts);
    }
    std::string name = wq.getSymName().rsplit('.').first.str() + ".qkv_a_proj";
    if (symbols.lookup(name))
      return;
    OpBuilder b(wq);
    SmallVector<Attribute> sources{wq.getSources()[0], wkv.getSources()[0]};
    auto fused = b.create<WeightOp>(
        wq.getLoc(), name,
        RankedTensorType::get({qRows + kvRows, cols},
                              wq.getTensorType().getElementType()),
        b.getArrayAttr(sources), b.getDenseI64ArrayAttr({qRows, kvRows}),
        scaleType, wq.hasBlockScales() ? wq.getBlockSizeAttr() : nullptr,
        scaleSources, /*view=*/nullptr);
    symbols.insert(fused);

    // Placed where both inputs exist: right after the later projection.
    Operation *later = qA->isBeforeInBlock(kvA) ? kvA : qA;
    b.setInsertionPointAfter(later);
    auto qType = llvm::cast<RankedTensorType>(qA.getType());
    auto kvType = llvm::cast<RankedTensorType>(kvA.getType());
    auto both = b.create<LinearOp>(
        kvA.getLoc(),
        RankedTensorType::get({qType.getDimSize(0), qRows + kvRows},
                              qType.getElementType()),
        kvA.getInput(), FlatSymbolRefAttr::get(fused.getSymNameAttr()),
        kvA.getPrecisionAttr());
    auto split = b.create<SplitOp>(kvA.getLoc(), TypeRange{qType, kvType},
                                   both.getResult(), b.getI64IntegerAttr(1));
    // Users of the q projection may come before the fused GEMM: move the
    // GEMM and split up to the earlier projection, after its input.
    Operation *earlier = later == kvA ? qA.getOperation() : kvA.getOperation();
    both->moveBefore(earlier);
    split->moveBefore(earlier);
    qA.replaceAllUsesWith(split.getResult(0));
    kvA.replaceAllUsesWith(split.getResult(1));
    qA.erase();
    kvA.erase();
    unused.insert(wq);
    unused.insert(wkv);
  }

  /// A view of kv_b_proj: rows [offset, offset + size) of every head.
  WeightOp viewOf(WeightOp kvB, StringRef name, int64_t heads, int64_t perHead,
                  int64_t offset, int64_t size, int64_t latent,
                  SymbolTable &symbols) {
    if (auto existing = symbols.lookup<WeightOp>(name))
      return existing;
    OpBuilder b(kvB);
    auto type = RankedTensorType::get(
        {heads, size, latent}, kvB.getTensorType().getElementType());
    auto view = WeightViewAttr::get(
        b.getContext(), kvB.getTensorType().getShape(),
        ArrayRef<int64_t>{heads, perHead, latent}, /*axis=*/1, offset);
    auto op = b.create<WeightOp>(kvB.getLoc(), name, type, kvB.getSources(),
                                 /*concat=*/nullptr, kvB.getScaleTypeAttr(),
                                 kvB.getBlockSizeAttr(),
                                 kvB.getScaleSourcesAttr(), view);
    symbols.insert(op);
    return op;
  }

  LogicalResult rewrite(MLAMatch m, SymbolTable &symbols) {
    auto cacheArg = llvm::dyn_cast<BlockArgument>(m.append.getCache());
    if (!cacheArg) {
      m.append.emitError() << "melt-fuse-mla: the cache must be a function "
                              "argument";
      return failure();
    }
    // F32 (the attention's operands as an unoptimized FP32 run keeps them)
    // until melt-assign-precision gives the cache its attention's compute
    // type; the checkpoint's dtype says nothing of the activations.
    auto latentCache = LatentCacheType::get(&getContext(), m.latentDim, m.rope,
                                            Float32Type::get(&getContext()));
    cacheArg.setType(latentCache);

    StringRef kvName = m.kvB.getSymName();
    std::string prefix = kvName.rsplit('.').first.str();
    int64_t perHead = m.nope + m.valueDim;
    WeightOp wUk = viewOf(m.kvB, prefix + ".w_uk", m.heads, perHead, 0,
                          m.nope, m.latentDim, symbols);
    WeightOp wUv = viewOf(m.kvB, prefix + ".w_uv", m.heads, perHead, m.nope,
                          m.valueDim, m.latentDim, symbols);

    int64_t threshold = prefillThreshold >= 0 ? prefillThreshold
                        : prefill == "absorbed"
                            ? std::numeric_limits<int32_t>::max()
                        : prefill == "decompressed" ? 0
                                                    : costModelThreshold(m);
    OpBuilder b(m.attention);
    Location loc = m.attention.getLoc();
    Value positions = m.append.getPositions();
    auto append = b.create<LatentCacheAppendOp>(
        m.append.getLoc(), latentCache, cacheArg, m.latent, m.ropeKey,
        positions);
    auto mla = b.create<MLAOp>(
        loc, m.attention.getType(), m.queryNope, m.queryRope,
        append.getResult(), m.attention.getPositions(),
        FlatSymbolRefAttr::get(wUk.getSymNameAttr()),
        FlatSymbolRefAttr::get(wUv.getSymNameAttr()), m.attention.getScaleAttr(),
        b.getI64IntegerAttr(threshold), m.attention.getPrecisionAttr());
    m.attention.replaceAllUsesWith(mla.getResult());
    // The updated cache flows out of the function through the new append.
    m.append.getResult().replaceUsesWithIf(append.getResult(), [&](OpOperand &use) {
      return isa<func::ReturnOp>(use.getOwner());
    });
    for (Operation *op : {m.attention.getOperation(), m.read.getOperation(),
                          m.append.getOperation()})
      for (Value operand : op->getOperands())
        if (Operation *def = operand.getDefiningOp())
          maybeDead.insert(def);
    maybeDead.remove(m.read);
    maybeDead.remove(m.append);
    m.attention.erase();
    m.read.erase();
    m.append.erase();
    return success();
  }

  /// Removes what the rewrites left unused (the per-head K/V path): pure
  /// melt ops reached from the erased ops' operands, and nothing else.
  void eraseDeadOps(ModuleOp) {
    while (!maybeDead.empty()) {
      Operation *op = maybeDead.pop_back_val();
      if (!op || !isa<MeltDialect>(op->getDialect()) || isa<WeightOp>(op) ||
          !op->use_empty() || !isMemoryEffectFree(op))
        continue;
      for (Value operand : op->getOperands())
        if (Operation *def = operand.getDefiningOp())
          maybeDead.insert(def);
      op->erase();
    }
  }

  /// Ops that may have lost their last use in a rewrite.
  llvm::SetVector<Operation *> maybeDead;

  /// Function types follow their new argument and returned types.
  void updateSignatures(ModuleOp module) {
    for (auto func : module.getOps<func::FuncOp>()) {
      if (func.isDeclaration())
        continue;
      auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
      func.setType(FunctionType::get(&getContext(),
                                     func.getBody().front().getArgumentTypes(),
                                     ret.getOperandTypes()));
    }
  }
};

} // namespace

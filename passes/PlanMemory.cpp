//===- PlanMemory.cpp - activation buffer reuse, KV sizing ------*- C++ -*-===//
#include "passes/PassReport.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/Support/FormatVariadic.h"

#include <map>

namespace mlir::melt {
#define GEN_PASS_DEF_PLANMEMORYPASS
#include "passes/Passes.h.inc"
} // namespace mlir::melt

using namespace mlir;
using namespace mlir::melt;

namespace {

/// Bytes one token of `type` takes (the leading, token dimension excluded);
/// 0 for what is not an activation.
int64_t bytesPerToken(Type type) {
  auto tensor = llvm::dyn_cast<RankedTensorType>(type);
  if (!tensor || tensor.getRank() == 0)
    return 0;
  int64_t n = (tensor.getElementTypeBitWidth() + 7) / 8;
  for (int64_t d : tensor.getShape().drop_front())
    if (!ShapedType::isDynamic(d))
      n *= d;
  return n;
}

int64_t cacheBytesPerToken(Type type) {
  if (auto kv = llvm::dyn_cast<KVCacheType>(type))
    return kv.getValuesPerToken() *
           ((kv.getElementType().getIntOrFloatBitWidth() + 7) / 8);
  if (auto latent = llvm::dyn_cast<LatentCacheType>(type))
    return latent.getValuesPerToken() *
           ((latent.getElementType().getIntOrFloatBitWidth() + 7) / 8);
  return 0;
}

struct FunctionPlan {
  std::string name;
  int64_t values = 0, slots = 0, naiveBytes = 0, plannedBytes = 0;
};

struct PlanMemoryPass final
    : mlir::melt::impl::PlanMemoryPassBase<PlanMemoryPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (maxBatch < 1 || maxContext < 1 || maxTokens < 1) {
      module.emitError() << "melt-plan-memory: max-batch, max-context and "
                            "max-tokens must be at least 1";
      return signalPassFailure();
    }
    std::vector<FunctionPlan> plans;
    for (auto func : module.getOps<func::FuncOp>())
      if (!func.isDeclaration())
        plans.push_back(plan(func));

    // KV cache: the caches of @forward (one per layer) and of the MTP
    // functions.
    int64_t layers = 0, perToken = 0, perLayer = 0;
    for (auto func : module.getOps<func::FuncOp>())
      for (Type arg : func.getArgumentTypes())
        if (int64_t bytes = cacheBytesPerToken(arg)) {
          perLayer = perLayer ? perLayer : bytes;
          perToken += bytes;
          ++layers;
        }
    Builder b(&getContext());
    int64_t total = perToken * maxBatch * maxContext;
    module->setAttr("melt.kv_cache",
                    b.getDictionaryAttr({
                        b.getNamedAttr("layers", b.getI64IntegerAttr(layers)),
                        b.getNamedAttr("bytes_per_token_per_layer",
                                       b.getI64IntegerAttr(perLayer)),
                        b.getNamedAttr("bytes_per_token",
                                       b.getI64IntegerAttr(perToken)),
                        b.getNamedAttr("max_batch",
                                       b.getI64IntegerAttr(maxBatch)),
                        b.getNamedAttr("max_context",
                                       b.getI64IntegerAttr(maxContext)),
                        b.getNamedAttr("bytes", b.getI64IntegerAttr(total)),
                    }));

    std::string text;
    llvm::raw_string_ostream os(text);
    os << "melt memory plan\n";
    for (const FunctionPlan &p : plans)
      os << llvm::formatv(
          "  @{0}: {1} activations in {2} buffers; {3} -> {4} bytes per token "
          "({5:f1} -> {6:f1} MiB for {7} tokens)\n",
          p.name, p.values, p.slots, p.naiveBytes, p.plannedBytes,
          p.naiveBytes * double(maxTokens) / (1 << 20),
          p.plannedBytes * double(maxTokens) / (1 << 20),
          static_cast<long long>(maxTokens));
    os << llvm::formatv("  kv cache: {0} layers, {1} bytes per token per "
                        "layer, {2} bytes per token; {3} x {4} tokens: {5:f1} "
                        "MiB\n",
                        layers, perLayer, perToken,
                        static_cast<long long>(maxBatch),
                        static_cast<long long>(maxContext),
                        total / double(1 << 20));
    if (failed(writePassReport(module, report, text,
                               "melt-plan-memory: cannot write the report")))
      signalPassFailure();
  }

  /// Slots by liveness, best fit by bytes per token.
  FunctionPlan plan(func::FuncOp func) {
    FunctionPlan p;
    p.name = func.getSymName().str();
    Block &body = func.getBody().front();
    llvm::DenseMap<Operation *, int64_t> index;
    for (auto [i, op] : llvm::enumerate(body))
      index[&op] = i;
    // The last op that reads each value (the terminator keeps outputs).
    auto lastUse = [&](Value v) {
      int64_t last = index[v.getDefiningOp()];
      for (Operation *user : v.getUsers())
        last = std::max(last, index[user]);
      return last;
    };
    std::vector<int64_t> slotBytes;
    std::multimap<int64_t, int64_t> freeAt; // op index -> slot freed after it
    std::vector<bool> busy;
    Builder b(&getContext());
    for (auto [i, op] : llvm::enumerate(body)) {
      // Slots whose values were last read before this op are free again.
      for (auto it = freeAt.begin(); it != freeAt.end() && it->first < (int64_t)i;
           it = freeAt.erase(it))
        busy[it->second] = false;
      if (op.getNumResults() == 0 || isa<WeightOp>(op))
        continue;
      SmallVector<int64_t> slots;
      for (Value result : op.getResults()) {
        int64_t bytes = bytesPerToken(result.getType());
        if (!bytes) {
          slots.push_back(-1);
          continue;
        }
        ++p.values;
        p.naiveBytes += bytes;
        // Best fit: the smallest free slot that holds it, else the largest
        // free one (grown), else a new one.
        int64_t best = -1;
        for (size_t s = 0; s < slotBytes.size(); ++s) {
          if (busy[s])
            continue;
          bool fits = slotBytes[s] >= bytes;
          if (best < 0 || (fits && (slotBytes[best] < bytes ||
                                    slotBytes[s] < slotBytes[best])) ||
              (!fits && slotBytes[best] < bytes &&
               slotBytes[s] > slotBytes[best]))
            best = s;
        }
        if (best < 0) {
          best = slotBytes.size();
          slotBytes.push_back(0);
          busy.push_back(false);
        }
        slotBytes[best] = std::max(slotBytes[best], bytes);
        busy[best] = true;
        freeAt.insert({lastUse(result), best});
        slots.push_back(best);
      }
      op.setAttr("melt.slots", b.getDenseI64ArrayAttr(slots));
    }
    p.slots = slotBytes.size();
    for (int64_t s : slotBytes)
      p.plannedBytes += s;
    func->setAttr("melt.memory",
                  b.getDictionaryAttr({
                      b.getNamedAttr("values", b.getI64IntegerAttr(p.values)),
                      b.getNamedAttr("slots", b.getI64IntegerAttr(p.slots)),
                      b.getNamedAttr("bytes_per_token",
                                     b.getI64IntegerAttr(p.plannedBytes)),
                      b.getNamedAttr("unplanned_bytes_per_token",
                                     b.getI64IntegerAttr(p.naiveBytes)),
                  }));
    return p;
  }
};

} // namespace

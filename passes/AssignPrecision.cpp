//===- AssignPrecision.cpp - FP8 / BF16 / FP32 per op -----------*- C++ -*-===//
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::melt {
#define GEN_PASS_DEF_ASSIGNPRECISIONPASS
#include "passes/Passes.h.inc"
} // namespace mlir::melt

using namespace mlir;
using namespace mlir::melt;

namespace {

enum class Kind { F32, BF16, FP8 };

/// Does weight `name` match an override: a fragment, or layers.N-M?
bool matches(StringRef name, StringRef item) {
  if (item.consume_front("layers.")) {
    auto [from, to] = item.split('-');
    int64_t lo = 0, hi = 0;
    if (from.getAsInteger(10, lo) || (to.empty() ? (hi = lo, false)
                                                 : to.getAsInteger(10, hi)))
      return false;
    StringRef rest = name;
    size_t at = rest.find("layers.");
    if (at == StringRef::npos)
      return false;
    int64_t layer = 0;
    StringRef digits = rest.drop_front(at + 7).take_while(llvm::isDigit);
    if (digits.getAsInteger(10, layer))
      return false;
    return layer >= lo && layer <= hi;
  }
  return name.contains(item);
}

struct AssignPrecisionPass final
    : mlir::melt::impl::AssignPrecisionPassBase<AssignPrecisionPass> {
  using Base::Base;

  PrecisionAttr attr(Kind compute, Kind output) {
    Builder b(&getContext());
    auto type = [&](Kind k) -> Type {
      switch (k) {
      case Kind::F32:
        return b.getF32Type();
      case Kind::BF16:
        return b.getBF16Type();
      case Kind::FP8:
        return b.getType<Float8E4M3FNType>();
      }
      return {};
    };
    if (compute == Kind::FP8)
      return PrecisionAttr::get(&getContext(), type(compute), b.getF32Type(),
                                type(output), ArrayRef<int64_t>{1, 128},
                                ArrayRef<int64_t>{128, 128});
    return PrecisionAttr::get(&getContext(), type(compute), b.getF32Type(),
                              type(output), {}, {});
  }

  /// Compute kind of a GEMM under the policy and overrides.
  Kind gemmKind(StringRef weight) {
    if (policy == "fp32")
      return Kind::F32;
    if (policy == "bf16")
      return Kind::BF16;
    SmallVector<StringRef> items;
    StringRef(bf16).split(items, ',', -1, false);
    for (StringRef item : items)
      if (matches(weight, item.trim()))
        return Kind::BF16;
    return Kind::FP8;
  }

  /// Records how a weight is stored for its op: FP8 blocks for an FP8 GEMM
  /// over a wider checkpoint type, BF16 for a BF16 GEMM over F32.
  void setStorage(WeightOp weight, Kind kind) {
    if (!weight)
      return;
    Type element = weight.getTensorType().getElementType();
    Builder b(&getContext());
    if (kind == Kind::FP8 && !isFp8Type(element))
      weight->setAttr("melt.storage", TypeAttr::get(b.getType<Float8E4M3FNType>()));
    else if (kind == Kind::BF16 && element.isF32())
      weight->setAttr("melt.storage", TypeAttr::get(b.getBF16Type()));
  }

  /// x -> dequantize(quantize(x)) in 1x128 blocks, in front of `op`.
  void quantizeInput(Operation *op, unsigned operand) {
    Value x = op->getOperand(operand);
    if (Value done = quantized.lookup(x)) {
      op->setOperand(operand, done);
      return;
    }
    auto type = llvm::cast<RankedTensorType>(x.getType());
    if (type.getRank() != 2 || type.isDynamicDim(1))
      return;
    OpBuilder b(op);
    int64_t cols = type.getDimSize(1);
    auto q = RankedTensorType::get(type.getShape(),
                                   b.getType<Float8E4M3FNType>());
    auto scales = RankedTensorType::get(
        {type.getDimSize(0), (cols + 127) / 128}, b.getF32Type());
    auto block = b.getDenseI64ArrayAttr({1, 128});
    auto quant = b.create<QuantizeOp>(op->getLoc(), q, scales, x, block);
    auto dequant = b.create<DequantizeOp>(op->getLoc(), type, quant.getOutput(),
                                          quant.getScales(), block);
    op->setOperand(operand, dequant.getResult());
    quantized[x] = dequant.getResult();
  }

  /// Inputs already quantized (the gate and up projections share theirs).
  llvm::DenseMap<Value, Value> quantized;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (policy != "deepseek-v3" && policy != "bf16" && policy != "fp32") {
      module.emitError() << "melt-assign-precision: policy must be "
                            "deepseek-v3, bf16 or fp32, not '"
                         << policy << "'";
      return signalPassFailure();
    }
    SymbolTable symbols(module);
    bool fp32 = policy == "fp32";
    Kind wide = fp32 ? Kind::F32 : Kind::BF16;
    module.walk([&](Operation *op) {
      llvm::TypeSwitch<Operation *, void>(op)
          .Case([&](LinearOp o) {
            WeightOp w = symbols.lookup<WeightOp>(o.getWeight());
            Kind k = gemmKind(o.getWeight());
            o.setPrecisionAttr(attr(k, wide));
            setStorage(w, k);
            if (k == Kind::FP8)
              quantizeInput(o, 0);
          })
          .Case([&](MoEExpertsOp o) {
            Kind k = gemmKind(o.getGate());
            o.setPrecisionAttr(attr(k, wide));
            for (FlatSymbolRefAttr s :
                 {o.getGateAttr(), o.getUpAttr(), o.getDownAttr()})
              setStorage(symbols.lookup<WeightOp>(s.getValue()), k);
            if (k == Kind::FP8) // FP8 dispatch: tokens quantized once
              quantizeInput(o, 0);
          })
          .Case([&](LogitsOp o) {
            o.setPrecisionAttr(attr(wide, Kind::F32));
            setStorage(symbols.lookup<WeightOp>(o.getHead()), wide);
          })
          .Case([&](MoERouterOp o) {
            o.setPrecisionAttr(attr(wide, Kind::F32));
          })
          .Case([&](MTPCombineOp o) {
            o.setPrecisionAttr(attr(wide, wide));
            setStorage(symbols.lookup<WeightOp>(o.getEhProj()), wide);
          })
          .Case([&](AttentionOp o) { o.setPrecisionAttr(attr(wide, wide)); })
          .Case([&](MLAOp o) { o.setPrecisionAttr(attr(wide, wide)); })
          .Case([&](RMSNormOp o) {
            o.setPrecisionAttr(attr(Kind::F32, wide));
          })
          .Case([&](RopeOp o) { o.setPrecisionAttr(attr(Kind::F32, wide)); });
    });
  }
};

} // namespace

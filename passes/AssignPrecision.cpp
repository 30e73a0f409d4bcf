//===- AssignPrecision.cpp - FP8 / BF16 / FP32 per op -----------*- C++ -*-===//
#include "passes/Calibration.h"
#include "passes/PassReport.h"
#include "passes/Passes.h"

#include "frontends/hf/Checkpoint.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"

#include <map>
#include <optional>

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

  Type type(Kind k) {
    Builder b(&getContext());
    switch (k) {
    case Kind::F32:
      return b.getF32Type();
    case Kind::BF16:
      return b.getBF16Type();
    case Kind::FP8:
      return b.getType<Float8E4M3FNType>();
    }
    return {};
  }

  PrecisionAttr attr(Kind compute, Kind output) {
    Builder b(&getContext());
    if (compute == Kind::FP8)
      return PrecisionAttr::get(&getContext(), type(compute), b.getF32Type(),
                                type(output), ArrayRef<int64_t>{1, 128},
                                ArrayRef<int64_t>{128, 128});
    return PrecisionAttr::get(&getContext(), type(compute), b.getF32Type(),
                              type(output), {}, {});
  }

  /// Overrides from the options and the policy file.
  std::vector<std::string> bf16Names, bf16OpKinds;

  static void appendList(StringRef list, std::vector<std::string> &to) {
    SmallVector<StringRef> items;
    list.split(items, ',', -1, false);
    for (StringRef item : items)
      if (!item.trim().empty())
        to.push_back(item.trim().str());
  }

  /// Reads policy-file=: {"policy", "bf16", "bf16_ops", "budget"}.
  LogicalResult readPolicyFile(ModuleOp module) {
    auto fail = [&](const Twine &what) {
      return module.emitError()
             << "melt-assign-precision: " << policyFile << ": " << what;
    };
    auto buffer = llvm::MemoryBuffer::getFile(policyFile);
    if (!buffer)
      return fail(buffer.getError().message());
    auto parsed = llvm::json::parse((*buffer)->getBuffer());
    if (!parsed)
      return fail(llvm::toString(parsed.takeError()));
    const llvm::json::Object *root = parsed->getAsObject();
    if (!root)
      return fail("expected a JSON object");
    for (const auto &[key, value] : *root) {
      if (key == "policy") {
        auto name = value.getAsString();
        if (!name)
          return fail("'policy' must be a string");
        policy = name->str();
      } else if (key == "budget") {
        auto number = value.getAsNumber();
        if (!number)
          return fail("'budget' must be a number");
        budget = *number;
      } else if (key == "bf16" || key == "bf16_ops") {
        const llvm::json::Array *list = value.getAsArray();
        if (!list)
          return fail("'" + key.str() + "' must be a list of strings");
        for (const llvm::json::Value &item : *list) {
          auto text = item.getAsString();
          if (!text)
            return fail("'" + key.str() + "' must be a list of strings");
          (key == "bf16" ? bf16Names : bf16OpKinds).push_back(text->str());
        }
      } else {
        return fail("unknown key '" + key.str() +
                    "' (keys: policy, bf16, bf16_ops, budget)");
      }
    }
    return success();
  }

  /// Compute kind of a GEMM of op kind `opKind` under the policy and
  /// overrides.
  Kind gemmKind(StringRef weight, StringRef opKind) {
    if (policy == "fp32")
      return Kind::F32;
    if (policy == "bf16")
      return Kind::BF16;
    for (const std::string &item : bf16Names)
      if (matches(weight, item))
        return Kind::BF16;
    if (llvm::is_contained(bf16OpKinds, opKind))
      return Kind::BF16;
    if (policy == "auto") {
      auto it = measured.find(weight.str());
      if (it != measured.end())
        return it->second.fp8 <= budget ? Kind::FP8 : Kind::BF16;
    }
    return Kind::FP8;
  }

  /// The kind each GEMM weight got (for the report).
  std::map<std::string, Kind> chosen;

  /// policy=auto: the errors of every GEMM weight, measured once.
  std::map<std::string, GemmErrors> measured;

  /// The weight as a [rows, cols] matrix (a concatenation read part by
  /// part; a stacked weight: its first `slices` matrices, one after the
  /// other), and whether it is stored in FP8.
  llvm::Expected<std::vector<float>> weightMatrix(const Checkpoint &ckpt,
                                                  WeightOp w, int64_t slices,
                                                  int64_t &rows,
                                                  int64_t &cols) {
    auto shapes = w.getSourceShapes();
    auto scaleSources = w.getScaleSources();
    std::vector<float> all;
    rows = 0;
    cols = shapes[0].back();
    int64_t count = w.getConcatAttr() ? static_cast<int64_t>(shapes.size())
                                      : std::min<int64_t>(slices, shapes.size());
    for (int64_t i = 0; i < count; ++i) {
      if (shapes[i].size() != 2)
        return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                       "not a matrix");
      StringRef name = llvm::cast<TensorSourceAttr>(w.getSources()[i]).getName();
      StringRef scale =
          scaleSources ? llvm::cast<TensorSourceAttr>((*scaleSources)[i]).getName()
                       : StringRef();
      auto part = readWeight(ckpt, name, scale, shapes[i][0], shapes[i][1]);
      if (!part)
        return part.takeError();
      all.insert(all.end(), part->begin(), part->end());
      rows += shapes[i][0];
    }
    return all;
  }

  LogicalResult measure(ModuleOp module, SymbolTable &symbols) {
    auto ckpt = Checkpoint::open(checkpoint);
    if (!ckpt) {
      module.emitError() << "melt-assign-precision: "
                         << llvm::toString(ckpt.takeError());
      return failure();
    }
    // The weights of the GEMMs: linears directly, experts by a sample.
    std::vector<std::pair<std::string, int64_t>> gemms;
    module.walk([&](Operation *op) {
      if (auto linear = dyn_cast<LinearOp>(op))
        gemms.push_back({linear.getWeight().str(), 1});
      else if (auto experts = dyn_cast<MoEExpertsOp>(op))
        for (StringRef w : {experts.getGate(), experts.getUp(),
                            experts.getDown()})
          gemms.push_back({w.str(), 4});
    });
    for (auto [name, slices] : gemms) {
      if (measured.count(name))
        continue;
      auto w = symbols.lookup<WeightOp>(name);
      int64_t rows = 0, cols = 0;
      auto matrix = weightMatrix(*ckpt, w, slices, rows, cols);
      if (!matrix) {
        w.emitError() << "melt-assign-precision: cannot measure @" << name
                      << ": " << llvm::toString(matrix.takeError());
        return failure();
      }
      int64_t calibrationRows = 0;
      auto x = calibrationInputs(calibration, cols, calibrationRows);
      if (!x) {
        module.emitError() << "melt-assign-precision: "
                           << llvm::toString(x.takeError());
        return failure();
      }
      measured[name] = measureGemm(
          *x, calibrationRows, *matrix, rows, cols,
          isFp8Type(w.getTensorType().getElementType()));
    }
    return success();
  }

  /// The per-op report of policy=auto.
  LogicalResult writeReport(ModuleOp module) {
    std::string text;
    llvm::raw_string_ostream os(text);
    os << "melt precision (auto, budget "
       << llvm::format("%g", static_cast<double>(budget))
       << "): weight, precision, fp8 error, bf16 error\n";
    int fp8 = 0, kept = 0;
    for (const auto &[name, e] : measured) {
      auto it = chosen.find(name);
      bool isFp8 = it != chosen.end() && it->second == Kind::FP8;
      (isFp8 ? fp8 : kept)++;
      os << llvm::formatv("  {0}: {1}, {2:e2}, {3:e2}\n", name,
                          isFp8 ? "fp8" : "bf16", e.fp8, e.bf16);
    }
    os << llvm::formatv("  {0} GEMM weights in fp8, {1} kept in bf16\n", fp8,
                        kept);
    return writePassReport(module, report, text,
                           "melt-assign-precision: cannot write the report");
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

  /// The latent cache an MLA reads holds that attention's operands: in its
  /// compute type (DeepSeek-V3 keeps it in BF16). The cache is a function
  /// argument that its append updates in place and returns: the argument,
  /// the append's result and the function's type change together.
  void setLatentCacheType(MLAOp mla, Type element) {
    auto append = mla.getCache().getDefiningOp<LatentCacheAppendOp>();
    auto arg = append ? llvm::dyn_cast<BlockArgument>(append.getCache())
                      : BlockArgument();
    auto func =
        arg ? llvm::dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp())
            : func::FuncOp();
    if (!func)
      return;
    auto old = llvm::cast<LatentCacheType>(arg.getType());
    if (old.getElementType() == element)
      return;
    auto narrowed = LatentCacheType::get(&getContext(), old.getLatentDim(),
                                         old.getRopeDim(), element);
    arg.setType(narrowed);
    append.getResult().setType(narrowed);
    SmallVector<Type> results;
    func.walk([&](func::ReturnOp ret) {
      results.assign(ret.getOperandTypes().begin(),
                     ret.getOperandTypes().end());
    });
    func.setFunctionType(FunctionType::get(
        &getContext(), func.getBody().getArgumentTypes(), results));
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
    bf16Names.clear();
    bf16OpKinds.clear();
    chosen.clear();
    appendList(bf16, bf16Names);
    appendList(bf16Ops, bf16OpKinds);
    if (!policyFile.empty() && failed(readPolicyFile(module)))
      return signalPassFailure();
    for (const std::string &kind : bf16OpKinds)
      if (kind != "linear" && kind != "moe_experts") {
        module.emitError() << "melt-assign-precision: unknown op kind '"
                           << kind << "' in bf16-ops (kinds: linear, "
                              "moe_experts)";
        return signalPassFailure();
      }
    if (policy != "deepseek-v3" && policy != "bf16" && policy != "fp32" &&
        policy != "auto") {
      module.emitError() << "melt-assign-precision: policy must be "
                            "deepseek-v3, bf16, fp32 or auto, not '"
                         << policy << "'";
      return signalPassFailure();
    }
    SymbolTable symbols(module);
    if (policy == "auto") {
      if (checkpoint.empty()) {
        module.emitError() << "melt-assign-precision: policy=auto measures "
                              "the weights: give checkpoint=DIR";
        return signalPassFailure();
      }
      if (!(budget > 0)) {
        module.emitError() << "melt-assign-precision: budget must be "
                              "positive";
        return signalPassFailure();
      }
      if (failed(measure(module, symbols)))
        return signalPassFailure();
    }
    bool fp32 = policy == "fp32";
    Kind wide = fp32 ? Kind::F32 : Kind::BF16;
    module.walk([&](Operation *op) {
      llvm::TypeSwitch<Operation *, void>(op)
          .Case([&](LinearOp o) {
            WeightOp w = symbols.lookup<WeightOp>(o.getWeight());
            Kind k = gemmKind(o.getWeight(), "linear");
            chosen[o.getWeight().str()] = k;
            o.setPrecisionAttr(attr(k, wide));
            setStorage(w, k);
            if (k == Kind::FP8)
              quantizeInput(o, 0);
          })
          .Case([&](MoEExpertsOp o) {
            Kind k = gemmKind(o.getGate(), "moe_experts");
            for (StringRef s : {o.getGate(), o.getUp(), o.getDown()})
              chosen[s.str()] = k;
            o.setPrecisionAttr(attr(k, wide));
            for (FlatSymbolRefAttr s :
                 {o.getGateAttr(), o.getUpAttr(), o.getDownAttr()})
              setStorage(symbols.lookup<WeightOp>(s.getValue()), k);
            if (k == Kind::FP8) // FP8 dispatch: tokens quantized once
              quantizeInput(o, 0);
            // Experts on other devices: tokens travel in the experts'
            // input type (FP8 blocks with their scales when FP8), their
            // outputs come back in the wide type (BF16) to be summed.
            auto placement = o.getPlacementAttr();
            if (placement && placement.getDevices() > 1) {
              o.setDispatchAttr(TypeAttr::get(type(k)));
              o.setCombineAttr(TypeAttr::get(type(wide)));
            }
          })
          .Case([&](LogitsOp o) {
            o.setPrecisionAttr(attr(wide, Kind::F32));
            setStorage(symbols.lookup<WeightOp>(o.getHead()), wide);
          })
          .Case(
              [&](MoERouterOp o) { o.setPrecisionAttr(attr(wide, Kind::F32)); })
          .Case([&](MTPCombineOp o) {
            o.setPrecisionAttr(attr(wide, wide));
            setStorage(symbols.lookup<WeightOp>(o.getEhProj()), wide);
          })
          .Case([&](AttentionOp o) { o.setPrecisionAttr(attr(wide, wide)); })
          .Case([&](MLAOp o) {
            o.setPrecisionAttr(attr(wide, wide));
            setLatentCacheType(o, type(wide));
          })
          .Case([&](RMSNormOp o) { o.setPrecisionAttr(attr(Kind::F32, wide)); })
          .Case([&](RopeOp o) { o.setPrecisionAttr(attr(Kind::F32, wide)); });
    });
    if (policy == "auto" && failed(writeReport(module)))
      return signalPassFailure();
  }
};

} // namespace

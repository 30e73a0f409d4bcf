//===- SelectKernels.cpp - the target's weight formats and kernels --------===//
//
// What the CUDA runtime does with each op, decided once at compile time from
// shapes and precisions (melt-assign-precision's storage), by the CUDA
// backend's rules (backends/cuda/KernelRules.h): which format each weight takes
// on the device, up to how many rows a product streams its weight through
// melt's own kernel, whether grouped experts run on tensor cores, which MLA
// kernel runs. The runtime honours these choices (and makes the same ones
// by itself for artifacts compiled for the CPU).
//
//===----------------------------------------------------------------------===//
#include "backends/cuda/KernelRules.h"
#include "passes/PassReport.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

#include <map>
#include <optional>
#include <string>

namespace mlir::melt {
#define GEN_PASS_DEF_SELECTKERNELSPASS
#include "passes/Passes.h.inc"
} // namespace mlir::melt

using namespace mlir;
using namespace mlir::melt;

namespace {

/// How an op uses a weight: multiplied (a GEMM operand), read directly by
/// the kernel, or both (MLA's W_UK/W_UV).
struct Use {
  bool multiplied = false, read = false;
  /// An op multiplies it in FP8 (its precision's compute type).
  bool fp8Compute = false;
};

using Format = ::melt::cuda::WeightFormat;
const char *formatName(Format f) {
  return f == Format::Fp8Blocks ? "fp8_blocks"
         : f == Format::BF16    ? "bf16"
                                : "f32";
}

/// The type the runtime keeps a weight in after loading it (runtime
/// Model.cpp applyStorage): melt.storage when set, else BF16 for a BF16
/// checkpoint tensor, else F32 (FP8 checkpoints are dequantized).
Type runtimeStorage(WeightOp weight) {
  Builder b(weight.getContext());
  if (auto storage = weight->getAttrOfType<TypeAttr>("melt.storage"))
    return storage.getValue();
  Type element = weight.getTensorType().getElementType();
  return element.isBF16() ? Type(b.getBF16Type()) : Type(b.getF32Type());
}

/// An FP8 checkpoint tensor in DeepSeek-V3's 128x128 blocks.
bool fp8Checkpoint(WeightOp weight) {
  std::optional<ArrayRef<int64_t>> block = weight.getBlockSize();
  return isFp8Type(weight.getTensorType().getElementType()) && block &&
         block->size() == 2 && (*block)[0] == 128 && (*block)[1] == 128;
}

Format deviceFormat(WeightOp weight, const Use &use) {
  Type storage = runtimeStorage(weight);
  ArrayRef<int64_t> shape = weight.getTensorType().getShape();
  // FP8-rounded at load (melt.storage), or an FP8 checkpoint multiplied in
  // FP8: the device can keep e4m3 bytes and block scales.
  bool fp8 = isFp8Type(storage) || (fp8Checkpoint(weight) && use.fp8Compute);
  int rank = int(shape.size());
  return ::melt::cuda::weightFormat(
      use.multiplied && !use.read, fp8, storage.isBF16(), rank,
      rank >= 2 ? shape[rank - 2] : 0, rank >= 1 ? shape[rank - 1] : 0);
}

int64_t deviceBytes(WeightOp weight, Format format) {
  RankedTensorType type = weight.getTensorType();
  ArrayRef<int64_t> shape = type.getShape();
  // 128x128 scales per matrix (per expert of a stack).
  const size_t rank = shape.size();
  int64_t blocks = rank >= 2 ? ((shape[rank - 2] + 127) / 128) *
                                   ((shape[rank - 1] + 127) / 128)
                             : 0;
  if (rank == 3)
    blocks *= shape[0];
  int64_t elements = type.getNumElements();
  // An FP8 matrix's rows zero-padded to the GEMMs' K (and its scales).
  if (format == Format::Fp8Blocks && rank == 2 &&
      ::melt::cuda::fp8GemmPadsCols(shape[1])) {
    const int64_t paddedCols = ::melt::cuda::fp8GemmPaddedCols(shape[1]);
    elements = shape[0] * paddedCols;
    blocks = ((shape[0] + 127) / 128) * (paddedCols / 128);
  }
  return ::melt::cuda::weightBytes(format, elements, blocks);
}

/// "1.25 GiB", "310.40 MiB", "12.00 KiB".
std::string humanBytes(double bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return llvm::formatv("{0:F2} {1}", bytes, units[unit]).str();
}

struct SelectKernelsPass final
    : mlir::melt::impl::SelectKernelsPassBase<SelectKernelsPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (target == "cpu")
      return;
    if (prefillTokens < 1) {
      module.emitError() << "melt-select-kernels: prefill-tokens must be at "
                            "least 1";
      return signalPassFailure();
    }
    if (target != "cuda") {
      module.emitError() << "melt-select-kernels: unknown target '" << target
                         << "' (targets: cpu, cuda)";
      return signalPassFailure();
    }
    if (!(deviceMemory > 0)) {
      module.emitError()
          << "melt-select-kernels: device-memory must be positive GiB";
      return signalPassFailure();
    }
    SymbolTable symbols(module);
    module->setAttr("melt.target",
                    StringAttr::get(module.getContext(), "cuda"));
    std::map<std::string, Use> uses;
    module.walk([&](Operation *op) {
      auto precision = op->getAttrOfType<PrecisionAttr>("precision");
      bool fp8 = precision && isFp8Type(precision.getCompute());
      auto mark = [&](StringRef name, bool multiplied) {
        Use &use = uses[name.str()];
        (multiplied ? use.multiplied : use.read) = true;
        use.fp8Compute = use.fp8Compute || (multiplied && fp8);
      };
      llvm::TypeSwitch<Operation *>(op)
          .Case([&](LinearOp o) { mark(o.getWeight(), true); })
          .Case([&](LogitsOp o) { mark(o.getHead(), true); })
          .Case([&](MoEExpertsOp o) {
            for (StringRef w : {o.getGate(), o.getUp(), o.getDown()})
              mark(w, true);
          })
          .Case([&](MTPCombineOp o) {
            mark(o.getEhProj(), true);
            mark(o.getEnorm(), false);
            mark(o.getHnorm(), false);
          })
          .Case([&](MLAOp o) {
            for (StringRef w : {o.getWUk(), o.getWUv()}) {
              mark(w, true);
              mark(w, false);
            }
          })
          .Case([&](EmbeddingOp o) { mark(o.getTable(), false); })
          .Case([&](RMSNormOp o) { mark(o.getWeight(), false); })
          .Case([&](MoERouterOp o) {
            // The router's scores are a GEMM (the runtime's linear, then
            // the routing kernel): in BF16, as its precision computes
            // them, the gate is a BF16 operand of the tensor cores (an
            // F32 copy ran on CUDA cores: 0.55 ms of mini's 8x1024
            // prefill); otherwise F32.
            const bool bf16Compute =
                precision && precision.getCompute().isBF16();
            mark(o.getGate(), bf16Compute);
            if (auto bias = o.getBias())
              mark(*bias, false);
          });
    });

    Builder b(module.getContext());
    std::map<std::string, Format> formats;
    int64_t bytes[3] = {0, 0, 0}, counts[3] = {0, 0, 0};
    for (WeightOp weight : module.getOps<WeightOp>()) {
      Format format = deviceFormat(weight, uses[weight.getSymName().str()]);
      formats[weight.getSymName().str()] = format;
      weight->setAttr("melt.device_format",
                      b.getStringAttr(formatName(format)));
      bytes[int(format)] += deviceBytes(weight, format);
      ++counts[int(format)];
    }

    std::map<std::string, int64_t> choices;
    auto smallRows = [&](StringRef name) -> int64_t {
      WeightOp weight = symbols.lookup<WeightOp>(name);
      if (!weight)
        return 1;
      Format format = formats[name.str()];
      return ::melt::cuda::smallMRows(format, deviceBytes(weight, format));
    };
    module.walk([&](Operation *op) {
      llvm::TypeSwitch<Operation *>(op)
          .Case([&](LinearOp o) {
            int64_t rows = smallRows(o.getWeight());
            o->setAttr("melt.small_m_rows", b.getI64IntegerAttr(rows));
            ++choices["linear: small-M kernel up to " + std::to_string(rows) +
                      " rows"];
          })
          .Case([&](LogitsOp o) {
            int64_t rows = smallRows(o.getHead());
            o->setAttr("melt.small_m_rows", b.getI64IntegerAttr(rows));
            ++choices["logits: small-M kernel up to " + std::to_string(rows) +
                      " rows"];
          })
          .Case([&](MoEExpertsOp o) {
            WeightOp gate = symbols.lookup<WeightOp>(o.getGate());
            // All three in BF16, or all in FP8 blocks.
            bool narrow = true;
            Format first = formats[o.getGate().str()];
            for (StringRef w : {o.getGate(), o.getUp(), o.getDown()})
              narrow =
                  narrow && formats[w.str()] == first && first != Format::F32;
            ArrayRef<int64_t> shape = gate.getTensorType().getShape();
            bool tensorCores =
                shape.size() == 3 &&
                ::melt::cuda::expertsOnTensorCores(narrow, shape[1], shape[2]);
            const char *kernel = tensorCores ? "tensor_cores" : "cuda_cores";
            o->setAttr("melt.experts_kernel", b.getStringAttr(kernel));
            ++choices[std::string("moe_experts: ") + kernel];
          })
          .Case([&](MLAOp o) {
            auto cache = llvm::cast<LatentCacheType>(o.getCache().getType());
            auto query =
                llvm::cast<RankedTensorType>(o.getQueryNope().getType());
            int64_t latent = cache.getLatentDim(), rope = cache.getRopeDim(),
                    nope = query.getShape().back();
            auto precision = o->getAttrOfType<PrecisionAttr>("precision");
            bool narrow = precision && !precision.getCompute().isF32();
            int64_t heads = query.getShape()[1];
            const char *kernel =
                ::melt::cuda::mlaOnTensorCores(narrow, latent, rope, nope,
                                               heads)
                    ? "tensor_cores"
                : ::melt::cuda::mlaSplits(latent, rope, nope) ? "split"
                                                              : "per_head";
            o->setAttr("melt.mla_kernel", b.getStringAttr(kernel));
            ++choices[std::string("mla: ") + kernel];
          });
    });

    const double gib = double(1ull << 30);
    const double total = double(bytes[0] + bytes[1] + bytes[2]);
    std::string text = "melt kernel selection (target cuda)\n";
    text += "  weights on the device: " + humanBytes(total) + " of " +
            humanBytes(deviceMemory * gib) + "\n";
    for (Format f : {Format::Fp8Blocks, Format::BF16, Format::F32})
      text += llvm::formatv("    {0,-10} {1,6} weights, {2}\n", formatName(f),
                            counts[int(f)], humanBytes(double(bytes[int(f)])))
                  .str();
    for (const auto &[choice, n] : choices)
      text += llvm::formatv("  {0}: {1} ops\n", choice, n).str();
    // The buffer plan: what the weights leave for the KV cache beside a
    // prefill's activations, as the CUDA runtime keeps them: activations in
    // F32; a latent cache in BF16 where melt-assign-precision typed it so
    // and its MLA runs on tensor cores (Device::latentCacheType), else every
    // cache in F32.
    int64_t kvPerToken = 0, layers = 0, bf16Layers = 0;
    int64_t activationPerToken = 0, maxContext = 0;
    if (auto forward = module.lookupSymbol<func::FuncOp>("forward")) {
      llvm::DenseSet<Value> bf16Caches;
      forward.walk([&](MLAOp o) {
        auto kernel = o->getAttrOfType<StringAttr>("melt.mla_kernel");
        if (!kernel || kernel.getValue() != "tensor_cores")
          return;
        Value cache = o.getCache();
        if (auto append = cache.getDefiningOp<LatentCacheAppendOp>())
          cache = append.getCache();
        bf16Caches.insert(cache);
      });
      for (BlockArgument input : forward.getArguments()) {
        int64_t values = 0, bytes = 4;
        if (auto kv = llvm::dyn_cast<KVCacheType>(input.getType()))
          values = kv.getValuesPerToken();
        else if (auto latent =
                     llvm::dyn_cast<LatentCacheType>(input.getType())) {
          values = latent.getValuesPerToken();
          if (bf16Caches.contains(input) && latent.getElementType().isBF16()) {
            bytes = 2;
            ++bf16Layers;
          }
        }
        if (values) {
          kvPerToken += bytes * values;
          ++layers;
        }
      }
      // melt-plan-memory's activation bytes per token, in the IR's
      // activation type (that of the hidden state @forward returns).
      if (auto memory = forward->getAttrOfType<DictionaryAttr>("melt.memory"))
        if (auto perToken = memory.getAs<IntegerAttr>("bytes_per_token")) {
          auto results = forward.getFunctionType().getResults();
          auto hidden = results.size() > 1
                            ? llvm::dyn_cast<RankedTensorType>(results[1])
                            : RankedTensorType();
          int64_t width =
              hidden ? (hidden.getElementTypeBitWidth() + 7) / 8 : 4;
          activationPerToken =
              perToken.getInt() * 4 / std::max<int64_t>(width, 1);
        }
    }
    if (auto kv = module->getAttrOfType<DictionaryAttr>("melt.kv_cache"))
      if (auto context = kv.getAs<IntegerAttr>("max_context"))
        maxContext = context.getInt();
    const double activations = double(activationPerToken) * prefillTokens;
    const double room = deviceMemory * gib - total - activations;
    const int64_t kvTokens =
        kvPerToken > 0 ? int64_t(std::max(room, 0.0) / double(kvPerToken)) : 0;
    if (kvPerToken > 0) {
      const char *type = bf16Layers == layers ? "BF16"
                         : bf16Layers > 0     ? "BF16 and F32"
                                              : "F32";
      text += std::string("  KV cache (") + type +
              "): " + humanBytes(double(kvPerToken)) + " per token over " +
              std::to_string(layers) + " layers\n";
      if (activationPerToken > 0)
        text +=
            "  activations (F32): " + humanBytes(double(activationPerToken)) +
            " per token; " + std::to_string(int64_t(prefillTokens)) +
            " tokens: " + humanBytes(activations) + "\n";
      text += "  room for " + std::to_string(kvTokens) + " tokens of KV cache";
      if (maxContext > 0)
        text += " (" + std::to_string(kvTokens / maxContext) + " contexts of " +
                std::to_string(maxContext) + ")";
      text += "\n";
    }
    if (failed(writePassReport(module, report, text,
                               "melt-select-kernels: cannot write the report")))
      return signalPassFailure();
    if (total <= deviceMemory * gib && kvPerToken > 0 && maxContext > 0 &&
        kvTokens < maxContext) {
      module.emitError() << "melt-select-kernels: the device has room for "
                         << kvTokens << " tokens of KV cache beside the "
                         << "weights (" << humanBytes(total)
                         << ") and a prefill of " << int64_t(prefillTokens)
                         << " tokens, less than one context of " << maxContext
                         << "; give it more devices or a shorter context";
      return signalPassFailure();
    }
    if (total > deviceMemory * gib) {
      module.emitError() << "melt-select-kernels: the weights need "
                         << humanBytes(total) << " on the device, more than "
                         << "its " << humanBytes(deviceMemory * gib)
                         << " (device-memory); spread the experts over more "
                            "devices or choose a narrower precision";
      return signalPassFailure();
    }
  }
};

} // namespace

//===- ArtifactWriter.cpp - melt IR -> .melt artifact -----------*- C++ -*-===//
#include "backends/ArtifactWriter.h"

#include "dialects/melt/MeltDialect.h"
#include "frontends/hf/Checkpoint.h"
#include "frontends/hf/Importer.h"

#include "melt/artifact_generated.h"
#include "melt/artifact_header.h"
#include "melt/version.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSwitch.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"

using namespace mlir;
using namespace mlir::melt;
namespace fb = ::melt::artifact;

namespace {

llvm::Error errorAt(Operation *op, const llvm::Twine &message) {
  std::string where;
  llvm::raw_string_ostream os(where);
  os << op->getLoc();
  return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                 (where + ": " + message).str());
}

std::optional<fb::DType> dtypeOf(Type type) {
  if (type.isF32())
    return fb::DType::F32;
  if (type.isBF16())
    return fb::DType::BF16;
  if (type.isF16())
    return fb::DType::F16;
  if (llvm::isa<Float8E4M3FNType>(type))
    return fb::DType::F8E4M3FN;
  if (type.isInteger(32))
    return fb::DType::I32;
  if (type.isInteger(64))
    return fb::DType::I64;
  return std::nullopt;
}

class Writer {
public:
  Writer(const Checkpoint &ckpt, const ArtifactOptions &options)
      : ckpt(ckpt), options(options) {}

  llvm::Expected<std::string> run(ModuleOp module);

private:
  llvm::Error addWeight(WeightOp weight);
  llvm::Expected<std::vector<flatbuffers::Offset<fb::TensorRange>>>
  ranges(WeightOp weight, Type element,
         const SmallVector<SmallVector<int64_t>> &shapes, ArrayAttr sources);
  llvm::Expected<uint32_t> newBuffer(Operation *where, Value value,
                                     fb::BufferKind kind);
  llvm::Error addFunction(func::FuncOp func);
  llvm::Error addKernel(Operation *op);
  llvm::Expected<uint32_t> weightIndex(Operation *op, FlatSymbolRefAttr sym);

  llvm::Error embed(const CheckpointTensor &t, uint64_t &offset);

  const Checkpoint &ckpt;
  const ArtifactOptions &options;
  /// Embedded weights: checkpoint bytes, each range 64-byte aligned.
  std::string blob;
  flatbuffers::FlatBufferBuilder fbb{1 << 20};
  llvm::StringMap<uint32_t> fileIndex;
  std::vector<std::string> files;
  llvm::StringMap<uint32_t> weightIndices;
  std::vector<flatbuffers::Offset<fb::Weight>> weights;
  std::vector<flatbuffers::Offset<fb::Buffer>> buffers;
  std::vector<flatbuffers::Offset<fb::Kernel>> kernels;
  std::vector<flatbuffers::Offset<fb::Function>> functions;
  llvm::DenseMap<Value, uint32_t> bufferOf;
  /// Storage of each buffer: planned slots (melt.slots) share one, the
  /// rest get their own.
  std::vector<int32_t> storageOf;
  int32_t nextStorage = 0, slotBase = 0;
  std::vector<uint32_t> currentKernels;
};

llvm::Expected<std::vector<flatbuffers::Offset<fb::TensorRange>>>
Writer::ranges(WeightOp weight, Type element,
               const SmallVector<SmallVector<int64_t>> &shapes,
               ArrayAttr sources) {
  std::vector<flatbuffers::Offset<fb::TensorRange>> out;
  std::string dtype = safetensorsDTypeOf(element);
  for (auto [a, shapeVector] : llvm::zip(sources, shapes)) {
    llvm::ArrayRef<int64_t> shape = shapeVector;
    auto source = llvm::cast<TensorSourceAttr>(a);
    const CheckpointTensor *t = ckpt.find(source.getName());
    if (!t)
      return errorAt(weight, "tensor '" + source.getName() +
                                 "' is not in the checkpoint " +
                                 ckpt.directory());
    if (t->dtype != dtype || llvm::ArrayRef<int64_t>(t->shape) != shape)
      return errorAt(
          weight,
          llvm::formatv("tensor '{0}' of the checkpoint is {1} "
                        "[{2}], the model expects {3} [{4}]",
                        source.getName(), t->dtype,
                        llvm::make_range(t->shape.begin(), t->shape.end()),
                        dtype, llvm::make_range(shape.begin(), shape.end())));
    if (options.embedWeights) {
      uint64_t offset = 0;
      if (llvm::Error error = embed(*t, offset))
        return std::move(error);
      out.push_back(fb::CreateTensorRange(fbb, 0, offset, t->bytes));
      continue;
    }
    auto [it, inserted] = fileIndex.try_emplace(t->file, files.size());
    if (inserted)
      files.push_back(t->file);
    out.push_back(fb::CreateTensorRange(fbb, it->second, t->offset, t->bytes));
  }
  return out;
}

llvm::Error Writer::embed(const CheckpointTensor &t, uint64_t &offset) {
  blob.resize(llvm::alignTo(blob.size(), ::melt::kArtifactBlobAlignment), '\0');
  offset = blob.size();
  auto data = ckpt.readBytes(t);
  if (!data)
    return llvm::createStringError(data.getError(),
                                   "cannot read " + ckpt.path(t.file));
  blob.append((*data)->getBufferStart(), (*data)->getBufferSize());
  return llvm::Error::success();
}

/// melt.device_format (melt-select-kernels): 1 f32, 2 bf16, 3 FP8 blocks,
/// 0 unset.
static int8_t deviceFormatOfWeight(WeightOp weight) {
  auto format = weight->getAttrOfType<StringAttr>("melt.device_format");
  if (!format)
    return 0;
  return llvm::StringSwitch<int8_t>(format.getValue())
      .Case("f32", 1)
      .Case("bf16", 2)
      .Case("fp8_blocks", 3)
      .Default(0);
}

/// melt-select-kernels' kernel choice of an op, 0 unset: experts 1
/// tensor_cores, 2 cuda_cores; MLA 1 split, 2 per_head, 3 tensor_cores (a
/// prefill's attention on tensor cores, decode split).
static int8_t variantOfKernel(Operation *op) {
  if (auto choice = op->getAttrOfType<StringAttr>("melt.experts_kernel"))
    return llvm::StringSwitch<int8_t>(choice.getValue())
        .Case("tensor_cores", 1)
        .Case("cuda_cores", 2)
        .Default(0);
  if (auto choice = op->getAttrOfType<StringAttr>("melt.mla_kernel"))
    return llvm::StringSwitch<int8_t>(choice.getValue())
        .Case("split", 1)
        .Case("per_head", 2)
        .Case("tensor_cores", 3)
        .Default(0);
  return 0;
}

/// melt.storage (melt-assign-precision): 1 bf16, 2 FP8 blocks, 0 as is.
static int8_t storageOfWeight(WeightOp weight) {
  auto storage = weight->getAttrOfType<TypeAttr>("melt.storage");
  if (!storage)
    return 0;
  if (storage.getValue().isBF16())
    return 1;
  return isFp8Type(storage.getValue()) ? 2 : 0;
}

llvm::Error Writer::addWeight(WeightOp weight) {
  RankedTensorType type = weight.getTensorType();
  std::optional<fb::DType> dtype = dtypeOf(type.getElementType());
  if (!dtype)
    return errorAt(weight, "unsupported weight type");
  auto sources = ranges(weight, type.getElementType(), weight.getSourceShapes(),
                        weight.getSources());
  if (!sources)
    return sources.takeError();
  std::vector<flatbuffers::Offset<fb::TensorRange>> scales;
  std::vector<int64_t> block;
  if (weight.hasBlockScales()) {
    auto scaleType = llvm::cast<RankedTensorType>(*weight.getScaleType());
    auto scaleRanges =
        ranges(weight, scaleType.getElementType(),
               weight.getScaleSourceShapes(), *weight.getScaleSources());
    if (!scaleRanges)
      return scaleRanges.takeError();
    scales = std::move(*scaleRanges);
    block.assign(weight.getBlockSize()->begin(), weight.getBlockSize()->end());
  }
  std::vector<int64_t> shape(type.getShape().begin(), type.getShape().end());
  std::vector<int64_t> viewSource, viewShape;
  int64_t viewAxis = 0, viewOffset = 0;
  if (auto view = weight.getViewAttr()) {
    viewSource.assign(view.getSource().begin(), view.getSource().end());
    viewShape.assign(view.getShape().begin(), view.getShape().end());
    viewAxis = view.getAxis();
    viewOffset = view.getOffset();
  }
  std::vector<int64_t> concatRows;
  if (auto parts = weight.getConcatAttr())
    concatRows.assign(parts.asArrayRef().begin(), parts.asArrayRef().end());
  weightIndices[weight.getSymName()] = weights.size();
  weights.push_back(fb::CreateWeightDirect(
      fbb, weight.getSymName().str().c_str(), *dtype, &shape, &*sources,
      scales.empty() ? nullptr : &scales, block.empty() ? nullptr : &block,
      options.embedWeights, viewSource.empty() ? nullptr : &viewSource,
      viewShape.empty() ? nullptr : &viewShape, viewAxis, viewOffset,
      concatRows.empty() ? nullptr : &concatRows, storageOfWeight(weight),
      deviceFormatOfWeight(weight)));
  return llvm::Error::success();
}

llvm::Expected<uint32_t> Writer::newBuffer(Operation *where, Value value,
                                           fb::BufferKind kind) {
  std::vector<int64_t> shape;
  fb::DType dtype = fb::DType::F32;
  if (auto cache = llvm::dyn_cast<KVCacheType>(value.getType())) {
    kind = fb::BufferKind::Cache;
    shape = {cache.getHeads(), cache.getKeyDim(), cache.getValueDim()};
    dtype = *dtypeOf(cache.getElementType());
  } else if (auto latent = llvm::dyn_cast<LatentCacheType>(value.getType())) {
    kind = fb::BufferKind::Cache;
    shape = {1, latent.getLatentDim(), latent.getRopeDim()};
    dtype = *dtypeOf(latent.getElementType());
  } else if (auto tensor = llvm::dyn_cast<RankedTensorType>(value.getType())) {
    std::optional<fb::DType> d = dtypeOf(tensor.getElementType());
    if (!d)
      return errorAt(where, "unsupported element type");
    dtype = *d;
    for (int64_t size : tensor.getShape())
      shape.push_back(ShapedType::isDynamic(size) ? -1 : size);
  } else {
    std::string type;
    llvm::raw_string_ostream os(type);
    os << value.getType();
    return errorAt(where, "values of type '" + type +
                              "' cannot run on the CPU target yet");
  }
  // A result the memory plan put in a slot shares that slot's storage.
  int32_t storage = nextStorage;
  if (auto result = llvm::dyn_cast<OpResult>(value))
    if (auto slots =
            result.getOwner()->getAttrOfType<DenseI64ArrayAttr>("melt.slots"))
      if (result.getResultNumber() < slots.size() &&
          slots[result.getResultNumber()] >= 0)
        storage = slotBase + slots[result.getResultNumber()];
  if (storage == nextStorage)
    ++nextStorage;
  uint32_t id = buffers.size();
  buffers.push_back(fb::CreateBufferDirect(fbb, kind, dtype, &shape, storage));
  bufferOf[value] = id;
  return id;
}

llvm::Expected<uint32_t> Writer::weightIndex(Operation *op,
                                             FlatSymbolRefAttr sym) {
  auto it = weightIndices.find(sym.getValue());
  if (it == weightIndices.end())
    return errorAt(op, "unknown weight " + sym.getValue());
  return it->second;
}

llvm::Error Writer::addKernel(Operation *op) {
  fb::KernelKind kind;
  std::vector<uint32_t> inputs, outputs, weightRefs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<FlatSymbolRefAttr> syms;

  auto yarnParams = [&](YarnAttr yarn) {
    ints.push_back(yarn ? 1 : 0);
    ints.push_back(yarn ? yarn.getOriginalMaxPosition() : 0);
    for (const llvm::APFloat &f :
         {yarn ? yarn.getFactor() : llvm::APFloat(1.0),
          yarn ? yarn.getBetaFast() : llvm::APFloat(0.0),
          yarn ? yarn.getBetaSlow() : llvm::APFloat(0.0),
          yarn ? yarn.getMscale() : llvm::APFloat(0.0),
          yarn ? yarn.getMscaleAllDim() : llvm::APFloat(0.0)})
      floats.push_back(f.convertToDouble());
  };

  bool supported = true;
  llvm::TypeSwitch<Operation *>(op)
      .Case([&](EmbeddingOp o) {
        kind = fb::KernelKind::Embedding;
        syms = {o.getTableAttr()};
      })
      .Case([&](RMSNormOp o) {
        kind = fb::KernelKind::RMSNorm;
        syms = {o.getWeightAttr()};
        floats = {o.getEpsilon().convertToDouble()};
      })
      .Case([&](LinearOp o) {
        kind = fb::KernelKind::Linear;
        syms = {o.getWeightAttr()};
        // DeepSeek-V3's FP8 GEMMs write BF16: the runtime rounds an FP8
        // product's F32 result where the device's GEMM did not (1). A BF16
        // product's BF16 output (the bf16 policy) the runtime may keep in
        // F32, or store in BF16 where the device writes it so and its
        // readers read BF16 (2).
        auto precision = o->getAttrOfType<PrecisionAttr>("precision");
        if (precision && precision.getOutput().isBF16()) {
          if (isFp8Type(precision.getCompute()))
            ints = {1};
          else if (precision.getCompute().isBF16())
            ints = {2};
        }
      })
      .Case([&](LogitsOp o) {
        kind = fb::KernelKind::Logits;
        syms = {o.getHeadAttr()};
      })
      .Case([&](RopeOp o) {
        kind = fb::KernelKind::Rope;
        ints = {o.getInterleaved() ? 1 : 0};
        floats = {o.getTheta().convertToDouble()};
        yarnParams(o.getScalingAttr());
      })
      .Case([&](AttentionOp o) {
        kind = fb::KernelKind::Attention;
        ints = {o.getCausal() ? 1 : 0};
        floats = {o.getScale().convertToDouble()};
      })
      .Case([&](KVCacheAppendOp) { kind = fb::KernelKind::KVCacheAppend; })
      .Case([&](KVCacheReadOp) { kind = fb::KernelKind::KVCacheRead; })
      .Case([&](LatentCacheAppendOp) {
        kind = fb::KernelKind::LatentCacheAppend;
      })
      .Case([&](MLAOp o) {
        kind = fb::KernelKind::MLA;
        syms = {o.getWUkAttr(), o.getWUvAttr()};
        IntegerAttr threshold = o.getPrefillThresholdAttr();
        ints = {threshold ? threshold.getInt() : int64_t(1) << 31};
        floats = {o.getScale().convertToDouble()};
      })
      .Case([&](SiluMulOp) { kind = fb::KernelKind::SiluMul; })
      .Case([&](AddOp) { kind = fb::KernelKind::Add; })
      .Case([&](ConcatOp o) {
        kind = fb::KernelKind::Concat;
        ints = {static_cast<int64_t>(o.getAxis())};
      })
      .Case([&](SplitOp o) {
        kind = fb::KernelKind::Split;
        ints = {static_cast<int64_t>(o.getAxis())};
      })
      .Case([&](ReshapeOp) { kind = fb::KernelKind::Reshape; })
      .Case([&](BroadcastHeadsOp) { kind = fb::KernelKind::BroadcastHeads; })
      .Case([&](ConvertOp) { kind = fb::KernelKind::Convert; })
      .Case([&](MoERouterOp o) {
        kind = fb::KernelKind::MoERouter;
        syms = {o.getGateAttr()};
        if (o.getBiasAttr())
          syms.push_back(o.getBiasAttr());
        ints = {static_cast<int64_t>(o.getScoring()),
                static_cast<int64_t>(o.getTopkMethod()),
                static_cast<int64_t>(o.getTopK()),
                static_cast<int64_t>(o.getNGroup()),
                static_cast<int64_t>(o.getTopkGroup()),
                o.getNormTopkProb() ? 1 : 0};
        floats = {o.getRoutedScalingFactor().convertToDouble()};
      })
      .Case([&](MoEExpertsOp o) {
        kind = fb::KernelKind::MoEExperts;
        syms = {o.getGateAttr(), o.getUpAttr(), o.getDownAttr()};
        // Each expert's output rounded to BF16 before the weighted sum:
        // expert outputs that come back from other devices in BF16, and on
        // one device the output precision the policy gives the experts
        // (BF16 under bf16 and deepseek-v3: the reference's experts write
        // BF16, and the devices' grouped products then store and combine
        // half the bytes).
        auto precision = o->getAttrOfType<PrecisionAttr>("precision");
        if (auto combine = o.getCombineAttr())
          ints = {combine.getValue().isBF16() ? 1 : 0};
        else if (precision && precision.getOutput().isBF16())
          ints = {1};
      })
      .Case([&](QuantizeOp o) {
        kind = fb::KernelKind::Quantize;
        ints.assign(o.getBlock().begin(), o.getBlock().end());
      })
      .Case([&](DequantizeOp o) {
        kind = fb::KernelKind::Dequantize;
        ints.assign(o.getBlock().begin(), o.getBlock().end());
      })
      .Case([&](MTPCombineOp o) {
        kind = fb::KernelKind::MTPCombine;
        syms = {o.getEnormAttr(), o.getHnormAttr(), o.getEhProjAttr()};
        floats = {o.getEpsilon().convertToDouble()};
      })
      .Default([&](Operation *) { supported = false; });
  if (!supported)
    return errorAt(op, "'" + op->getName().getStringRef() +
                           "' cannot run on the CPU target yet");

  for (Value operand : op->getOperands()) {
    auto it = bufferOf.find(operand);
    if (it == bufferOf.end())
      return errorAt(op, "operand defined outside the function");
    inputs.push_back(it->second);
  }
  for (Value result : op->getResults()) {
    // An append yields its cache: both are the same storage.
    if (isa<KVCacheAppendOp, LatentCacheAppendOp>(op)) {
      bufferOf[result] = inputs[0];
      outputs.push_back(inputs[0]);
      continue;
    }
    auto id = newBuffer(op, result, fb::BufferKind::Activation);
    if (!id)
      return id.takeError();
    outputs.push_back(*id);
  }
  for (FlatSymbolRefAttr sym : syms) {
    auto index = weightIndex(op, sym);
    if (!index)
      return index.takeError();
    weightRefs.push_back(*index);
  }
  currentKernels.push_back(kernels.size());
  int32_t smallMRows = -1;
  if (auto rows = op->getAttrOfType<IntegerAttr>("melt.small_m_rows"))
    smallMRows = int32_t(rows.getInt());
  kernels.push_back(fb::CreateKernelDirect(
      fbb, kind, &inputs, &outputs, &weightRefs, ints.empty() ? nullptr : &ints,
      floats.empty() ? nullptr : &floats, smallMRows, variantOfKernel(op)));
  return llvm::Error::success();
}

llvm::Error Writer::addFunction(func::FuncOp func) {
  std::vector<uint32_t> inputs, outputs;
  currentKernels.clear();
  // Slots of this function's plan take the next storage ids.
  if (auto memory = func->getAttrOfType<DictionaryAttr>("melt.memory"))
    if (auto slots = memory.getAs<IntegerAttr>("slots")) {
      slotBase = nextStorage;
      nextStorage += slots.getInt();
    }
  for (BlockArgument arg : func.getArguments()) {
    auto id = newBuffer(func, arg, fb::BufferKind::Input);
    if (!id)
      return id.takeError();
    inputs.push_back(*id);
  }
  for (Operation &op : func.getBody().front()) {
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      for (Value v : ret.getOperands())
        outputs.push_back(bufferOf.lookup(v));
      continue;
    }
    if (llvm::Error error = addKernel(&op))
      return error;
  }
  functions.push_back(
      fb::CreateFunctionDirect(fbb, func.getSymName().str().c_str(), &inputs,
                               &outputs, &currentKernels));
  return llvm::Error::success();
}

llvm::Expected<std::string> Writer::run(ModuleOp module) {
  for (auto weight : module.getOps<WeightOp>())
    if (llvm::Error error = addWeight(weight))
      return std::move(error);
  int64_t vocab = 0, hidden = 0, layers = 0;
  for (auto func : module.getOps<func::FuncOp>()) {
    if (func.isDeclaration())
      continue;
    if (llvm::Error error = addFunction(func))
      return std::move(error);
    if (func.getSymName() != "forward")
      continue;
    // @forward(ids, positions, caches...) -> (logits, hidden, caches...)
    FunctionType type = func.getFunctionType();
    auto logits = type.getNumResults() >= 2
                      ? llvm::dyn_cast<RankedTensorType>(type.getResult(0))
                      : RankedTensorType();
    auto states = type.getNumResults() >= 2
                      ? llvm::dyn_cast<RankedTensorType>(type.getResult(1))
                      : RankedTensorType();
    if (!logits || !states || logits.getRank() != 2 || states.getRank() != 2 ||
        logits.isDynamicDim(1) || states.isDynamicDim(1) ||
        type.getNumInputs() < 2)
      return errorAt(func, "@forward must take (ids, positions, caches...) "
                           "and return (logits [T, vocab], hidden [T, "
                           "hidden], caches...)");
    vocab = logits.getDimSize(1);
    hidden = states.getDimSize(1);
    layers = type.getNumInputs() - 2;
  }
  if (!vocab)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "the module has no @forward function");

  std::vector<flatbuffers::Offset<fb::CheckpointFile>> fileTables;
  for (const std::string &file : files) {
    uint64_t size = 0;
    if (std::error_code ec = llvm::sys::fs::file_size(ckpt.path(file), size))
      return llvm::createStringError(ec, "cannot read " + ckpt.path(file));
    fileTables.push_back(
        fb::CreateCheckpointFileDirect(fbb, file.c_str(), size));
  }
  std::string name;
  if (auto attr = module->getAttrOfType<StringAttr>("melt.model"))
    name = attr.str();
  auto info =
      fb::CreateModelInfoDirect(fbb, name.c_str(), vocab, hidden, layers, 0);
  std::string target = "cpu";
  if (auto attr = module->getAttrOfType<StringAttr>("melt.target"))
    target = attr.str();
  auto model = fb::CreateModelDirect(fbb, info, &fileTables, &weights, &buffers,
                                     &kernels, &functions, target.c_str());
  fb::FinishModelBuffer(fbb, model);

  ::melt::ArtifactHeader header;
  header.major = MELT_ARTIFACT_VERSION_MAJOR;
  header.minor = MELT_ARTIFACT_VERSION_MINOR;
  header.flatbufferOffset = ::melt::kArtifactHeaderSize;
  header.flatbufferSize = fbb.GetSize();
  std::string bytes(::melt::kArtifactHeaderSize, '\0');
  bytes.append(reinterpret_cast<const char *>(fbb.GetBufferPointer()),
               fbb.GetSize());
  if (options.embedWeights) {
    bytes.resize(llvm::alignTo(bytes.size(), ::melt::kArtifactBlobAlignment),
                 '\0');
    header.weightsOffset = bytes.size();
    header.weightsSize = blob.size();
    bytes += blob;
  }
  header.checksum =
      ::melt::fnv1a64(reinterpret_cast<const uint8_t *>(bytes.data()) +
                          ::melt::kArtifactHeaderSize,
                      bytes.size() - ::melt::kArtifactHeaderSize);
  ::melt::encodeArtifactHeader(header,
                               reinterpret_cast<uint8_t *>(bytes.data()));
  return bytes;
}

} // namespace

llvm::Expected<std::string>
mlir::melt::buildArtifact(ModuleOp module, const Checkpoint &checkpoint,
                          const ArtifactOptions &options) {
  Writer writer(checkpoint, options);
  return writer.run(module);
}

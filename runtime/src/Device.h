//===- Device.h - the interface every device implements ---------*- C++ -*-===//
//
// A device owns memory and runs the model's kernels on tensors in that
// memory; every session runs its model through this interface (Executor.h).
// The CPU device is always present; the CUDA device is built where nvcc is
// and present where a GPU is (HIP follows the same interface). One
// conformance suite (runtime/tests/DeviceConformanceTest.cpp) runs every
// kernel of every present device against double-precision references.
//
// Tensors are dense and row-major; the leading dimension is tokens. Compute
// is FP32 inside every kernel; BF16 tensors are rounded when written. FP8
// GEMM operands use DeepSeek-V3's block scales: activations [K/128, M]
// (one FP32 scale per 128 values of a row, the rows of one block column
// side by side), weights [ceil(N/128), K/128] (the checkpoint's
// weight_scale_inv).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_DEVICE_H
#define MELT_RUNTIME_DEVICE_H

#include "KernelParams.h"
#include "Sampling.h"
#include "Status.h"
#include "WeightData.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace melt::rt {

enum class DType : uint8_t { F32, BF16, FP8E4M3, I32 };
size_t dtypeBytes(DType type);
const char *dtypeName(DType type);

/// A tensor in one device's memory (a view: the device that allocated it
/// frees it).
struct DeviceTensor {
  void *data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// A weight the device prepared in a form of its own (the CPU device: the
  /// model's WeightData with its prepacked GEMM operands, `data` its f32
  /// values or null); null for everything else.
  const void *prepared = nullptr;
  /// For a [rows, cols] view into a wider matrix's rows (a Split's part
  /// along the last axis, left in place): the elements from one row's
  /// start to the next's; 0 where the rows lie one after the other. Only
  /// the calls Device::takesRowPitch names get such a tensor.
  int64_t rowPitch = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
      n *= d;
    return n;
  }
  size_t bytes() const { return size_t(numel()) * dtypeBytes(dtype); }
  int64_t rows() const { return shape.empty() ? 0 : shape.front(); }
  int64_t cols() const { return shape.empty() ? 0 : numel() / rows(); }
};

/// Rows per page of a paged cache. A cache is one device tensor
/// [pages * kPageTokens, width] per cache buffer of the model (a layer);
/// page p holds rows [p * kPageTokens, (p + 1) * kPageTokens), and a
/// sequence owns the same pages in every layer. 64 tokens: the MLA decode
/// kernels read a page's rows as whole tiles (32 tokens, 64 on wgmma: a
/// TMA box each), as FlashMLA's pages of 64 are read.
constexpr int64_t kPageTokens = 64;

/// Where the T tokens of a batch of B sequences sit (I32 tensors in the
/// device's memory): token t is at `positions[t]` of sequence
/// `sequences[t]`, whose position p is cache row pages[b, p / kPageTokens]
/// * kPageTokens + p % kPageTokens. Rows of `pages` past a sequence's end
/// are -1; `lengths[b]` is the tokens sequence b holds after this step.
struct CacheLayout {
  DeviceTensor positions; // [T]
  DeviceTensor sequences; // [T]
  DeviceTensor pages;     // [B, P]
  DeviceTensor lengths;   // [B]
  /// The host's copies of positions and sequences, where the caller has
  /// them (a step's inputs, uploaded from them): a device that plans on
  /// the host reads them here instead of back from its memory (a wait).
  /// Null: read them back.
  const int32_t *hostPositions = nullptr, *hostSequences = nullptr;
};

/// Recorded work of a device (a CUDA graph), replayed on the same memory;
/// see Device::beginCapture. Destroyed before its device.
class DeviceGraph {
public:
  virtual ~DeviceGraph() = default;
};

class Device {
public:
  virtual ~Device() = default;
  /// "cpu", "cuda:0".
  virtual std::string name() const = 0;
  /// A line about the hardware, for logs and benchmark output.
  virtual std::string description() const = 0;

  // Memory.
  virtual Status allocate(DType type, std::vector<int64_t> shape,
                          DeviceTensor &out) = 0;
  virtual void release(DeviceTensor &tensor) = 0;
  /// Copies `tensor.bytes()` bytes from the host into the tensor, in the
  /// order of the device's work (kernels queued later see them); the host
  /// memory may be reused once it returns. It need not wait for the device:
  /// a fault of earlier work may be reported only by the next download or
  /// synchronize().
  virtual Status upload(const void *host, DeviceTensor &tensor) = 0;
  /// Copies the tensor out to the host once the work ahead of it is done;
  /// reports a fault of that work, as synchronize() does.
  virtual Status download(const DeviceTensor &tensor, void *host) = 0;
  /// Waits for the device's queued work; reports a fault that happened in
  /// it (a device that faulted stays failed: every later call reports it).
  virtual Status synchronize() = 0;
  /// The device's memory bandwidth as a device-to-device copy measures it
  /// (bytes read plus bytes written a second, in GB/s: what a roofline
  /// divides bytes read by); devices that cannot measure it say so.
  virtual Status measureCopyBandwidth(double &gigabytesPerSecond) {
    (void)gigabytesPerSecond;
    return {MELT_UNSUPPORTED, name() + ": no copy bandwidth measurement"};
  }
  /// A model weight in this device's memory, to be released with
  /// release(). By default its f32 values are uploaded (the model must keep
  /// them: Model::load with keepHostData); the CPU device uses the model's
  /// own memory and prepacked GEMM operands instead, with no copy.
  virtual Status importWeight(const WeightData &weight, DeviceTensor &out);
  /// The compiler's kernel choice for the kernel that multiplies `weight`
  /// (melt-select-kernels, for the artifact's target): a device of that
  /// target follows it instead of its own rules; others ignore it.
  struct KernelPlan {
    /// Linear / Logits: up to how many rows the device's small-M kernel
    /// streams the weight (-1: the device decides).
    int smallMRows = -1;
    /// MoEExperts: 1 tensor cores, 2 CUDA cores; MLA: 1 split over the
    /// sequence, 2 a block per head, 3 on tensor cores in BF16 (a GPU then
    /// keeps the latent cache in BF16: latentCacheType); 0: the device
    /// decides.
    int variant = 0;
  };
  virtual void planKernel(const DeviceTensor &weight, const KernelPlan &plan) {
    (void)weight;
    (void)plan;
  }
  /// The alignment (bytes) a tensor must have to start inside another's
  /// memory: the executor makes such views (a contiguous part of a split)
  /// only at multiples of it.
  virtual size_t viewAlignment() const { return 1; }
  /// Whether rmsNorm's x (and so the norms for products, whose defaults
  /// run it) and slice's whole may have a rowPitch: then the executor
  /// leaves a Split's part of a matrix's columns in place where only
  /// those read it (a prefill's joint q/kv down projection cut into the
  /// query's and the latent's parts), instead of copying it out.
  virtual bool takesRowPitch() const { return false; }
  /// Whether linear(x, weight) quantizes x in 1x128 FP8 blocks (scale =
  /// amax / 448 per block) before it multiplies, as its FP8 GEMM does where
  /// the device holds `weight` in FP8: then the executor leaves out the
  /// quantize/dequantize pair melt-assign-precision puts in front of such a
  /// product (QuantizeFolds.h).
  virtual bool quantizesFp8Input(const DeviceTensor &weight) const {
    (void)weight;
    return false;
  }
  /// Whether linear(x, weight) rounds F32 x to BF16 before it multiplies
  /// (a BF16 GEMM's input), at some rows: a norm whose value only such
  /// products (or FP8 ones) read may then write those rows for them
  /// (preparesInNorm decides by the rows; NormProductFusions.h).
  virtual bool roundsInputToBf16(const DeviceTensor &weight) const {
    (void)weight;
    return false;
  }
  /// Whether moeExpertsOfQuantized quantizes x within the expert kernels
  /// for these stacks (cheaper than the pair's two kernels): then the
  /// executor leaves out the quantize/dequantize pair in front of them too.
  virtual bool quantizesExpertInput(const DeviceTensor &gate) const {
    (void)gate;
    return false;
  }

  // Recording (CUDA graphs). Between beginCapture and endCapture the
  // kernels are recorded, not run: nothing may be uploaded or read back,
  // and memory released meanwhile stays reserved for the graph until it is
  // destroyed. replay runs the recorded kernels again on the same memory
  // (refill their inputs first with upload). `behindQueued`: the kernels
  // queued before may still run while the host records (no wait first:
  // the recording of the next step hidden behind this one).
  virtual bool canCapture() const { return false; }
  virtual Status beginCapture(bool behindQueued = false) {
    (void)behindQueued;
    return {MELT_UNSUPPORTED, name() + ": no recorded graphs"};
  }
  virtual Status endCapture(std::unique_ptr<DeviceGraph> &out) {
    out.reset();
    return {MELT_UNSUPPORTED, name() + ": no recorded graphs"};
  }
  virtual Status replay(DeviceGraph &) {
    return {MELT_UNSUPPORTED, name() + ": no recorded graphs"};
  }

  // Side branches (SideBranches.h): calls a device may run beside the
  // ones that follow them, e.g. as a recorded graph's second branch.
  // markBranch() comes after the calls that make a branch's inputs
  // (`reads`: their memory, where made, for a device that holds a call
  // back to launch it with a later one: it launches the call first where
  // the branch reads what the call writes); between enterBranch() and
  // leaveBranch() a branch call, which reads nothing made after the mark
  // and whose results nothing reads before joinBranch(), called before the
  // first reader. A device that runs every call in order (the default)
  // ignores them.
  virtual Status markBranch(const std::vector<DeviceTensor> &reads = {}) {
    (void)reads;
    return Status::ok();
  }
  virtual Status enterBranch() { return Status::ok(); }
  virtual void leaveBranch() {}
  virtual Status joinBranch() { return Status::ok(); }

  // Kernels. Inputs and outputs are F32 or BF16 unless said otherwise; the
  // output is allocated by the caller with the right shape.

  /// y = x / sqrt(mean(x^2) + eps) * gamma, per row.
  virtual Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma,
                         float eps, DeviceTensor &y) = 0;
  /// y[M, N] = x[M, K] w[N, K]^T (x and w of one type, or x F32 and w
  /// BF16: x is rounded to BF16 first; y F32 or BF16).
  virtual Status linear(const DeviceTensor &x, const DeviceTensor &w,
                        DeviceTensor &y) = 0;
  /// Whether linear() with `weight` writes values rounded to BF16 (a GPU's
  /// FP8 GEMM writes BF16): then an FP8 product whose precision's output is
  /// BF16 needs no roundToBf16 after it.
  virtual bool linearOutputsBf16(const DeviceTensor &weight) const {
    (void)weight;
    return false;
  }
  /// Whether linear() (and linearOfSiluMul, linearOfPrepared) with `weight`
  /// at `rows` rows writes a BF16 y, the product's values (its precision's
  /// output BF16) without a widening pass (Bf16Products.h).
  virtual bool linearWritesBf16(const DeviceTensor &weight,
                                int64_t rows) const {
    (void)weight, (void)rows;
    return false;
  }
  /// Whether add(), addRmsNorm(), rmsNorm(), the norms for products,
  /// rope(), slice(), appendLatent(), siluMul() and linearOfSiluMul()
  /// read BF16 activations (x, b, a latent or a key, gate and up) as the
  /// F32 of their values, and slice() copies BF16 parts (Bf16Products.h).
  virtual bool readsBf16Activations() const { return false; }
  /// x (F32) replaced by its values rounded to BF16 (nearest even).
  virtual Status roundToBf16(DeviceTensor &x) = 0;
  /// FP8 e4m3 activations in 1x128 blocks: q [M, K] FP8E4M3, scales
  /// [K/128, M] F32 (amax / 448 per block).
  virtual Status quantizeFp8(const DeviceTensor &x, DeviceTensor &q,
                             DeviceTensor &scales) = 0;
  /// y[M, N] (BF16) = dequant(q) dequant(w)^T with block-scaled FP8
  /// operands; FP32 accumulation.
  virtual Status linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                           const DeviceTensor &w, const DeviceTensor &wScales,
                           DeviceTensor &y) = 0;
  /// y = silu(gate) * up.
  virtual Status siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                         DeviceTensor &y) = 0;
  /// Whether siluMulOfProducts with these weights at `rows` rows of x
  /// does better than its three calls (GateUpPairs.h). None by default.
  virtual bool takesSiluMulOfProducts(const DeviceTensor &wGate,
                                      const DeviceTensor &wUp,
                                      int64_t rows) const {
    (void)wGate, (void)wUp, (void)rows;
    return false;
  }
  /// y (F32) = silu(x wGate^T) * (x wUp^T): an MLP's gate and up products
  /// and their SiLU-mul, each product's values rounded to BF16 first where
  /// `roundProducts` (as linear() into a BF16 tensor, or roundToBf16 after
  /// it, rounds them); the values of linear(), linear(), siluMul(). The
  /// default makes those three calls.
  virtual Status siluMulOfProducts(const DeviceTensor &x,
                                   const DeviceTensor &wGate,
                                   const DeviceTensor &wUp, bool roundProducts,
                                   DeviceTensor &y);
  /// Whether linearOfSiluMul with `weight` does better than siluMul then
  /// linear (a GPU's FP8 product quantizes silu(gate) * up as it reads
  /// them): then the executor calls it for an MLP's down projection.
  virtual bool fusesSiluMulInto(const DeviceTensor &weight) const {
    (void)weight;
    return false;
  }
  /// y = (silu(gate) * up) w^T, the values of siluMul then linear. The
  /// default runs the two.
  virtual Status linearOfSiluMul(const DeviceTensor &gate,
                                 const DeviceTensor &up, const DeviceTensor &w,
                                 DeviceTensor &y);
  /// What a norm's kernel prepares for the products that read its value
  /// (rmsNormForProducts): whatever the device's linearOfPrepared reads in
  /// place of that value (the CUDA device: its FP8 codes and their 1 x 128
  /// scales for FP8 weights, its rows in BF16 for BF16 ones). The executor
  /// releases them once the last product has run.
  struct PreparedInput {
    DeviceTensor q, scales;
    /// The rows in BF16 (BF16 products' input; with the codes, where asked
    /// for: addRmsNormForExperts, a MoE router's BF16 product reads them).
    DeviceTensor bf16;
    /// Whether anything was prepared.
    bool any() const { return q.data || bf16.data; }
    /// Whether the norm left y's F32 rows unwritten (asked with `rowsRead`
    /// false: nothing but the products reads them). linearOfPrepared then
    /// has only what was prepared to read.
    bool rowsUnwritten = false;
  };
  /// Whether an RMSNorm of `rows` rows whose value only linears read (with
  /// `weight` among them, each quantizing its input itself:
  /// quantizesFp8Input) does better preparing their input in its own
  /// kernel (the 1 x 128 quantization the products would each do, from
  /// the values it holds): then the executor calls rmsNormForProducts /
  /// addRmsNormForProducts and linearOfPrepared.
  virtual bool preparesInNorm(const DeviceTensor &weight, int64_t rows) const {
    (void)weight, (void)rows;
    return false;
  }
  /// rmsNorm(x) into y, and into `prepared` (allocated here) what the
  /// products of linearOfPrepared read in its place; `weight` is one of
  /// those products' weights (they are all of its type). The default runs
  /// rmsNorm alone (nothing prepared). With `rowsRead` false nothing but
  /// the products (linearOfPrepared) reads y: a device that prepared what
  /// they read may leave y's rows unwritten (PreparedInput::rowsUnwritten;
  /// the CUDA device: a norm's F32 rows are a third of what it writes).
  virtual Status rmsNormForProducts(const DeviceTensor &x,
                                    const DeviceTensor &gamma, float eps,
                                    DeviceTensor &y, const DeviceTensor &weight,
                                    PreparedInput &prepared, bool rowsRead) {
    (void)weight, (void)prepared, (void)rowsRead;
    return rmsNorm(x, gamma, eps, y);
  }
  /// addRmsNorm's sum and y, and `prepared` of y as rmsNormForProducts
  /// (`rowsRead` likewise; sum is always written). The default runs
  /// addRmsNorm alone.
  virtual Status addRmsNormForProducts(const DeviceTensor &a,
                                       const DeviceTensor &b,
                                       const DeviceTensor &gamma, float eps,
                                       DeviceTensor &sum, DeviceTensor &y,
                                       const DeviceTensor &weight,
                                       PreparedInput &prepared, bool rowsRead) {
    (void)weight, (void)prepared, (void)rowsRead;
    return addRmsNorm(a, b, gamma, eps, sum, y);
  }
  /// Whether an add and RMSNorm of `rows` rows whose value a MoE router
  /// (of weight `router`) and MoE experts (of `gate` stacks) read does
  /// better preparing what they read in its kernel: the experts' 1 x 128
  /// FP8 codes and the router's BF16 rows, or for BF16 stacks the BF16
  /// rows that both read (the same values as each would make of the F32
  /// rows). Then the executor calls addRmsNormForExperts and attaches what
  /// it prepared to the value (attachPrepared) until the router and the
  /// experts (and the products of a shared expert run apart, which read
  /// it too) have read it.
  virtual bool preparesForExperts(const DeviceTensor &router,
                                  const DeviceTensor &gate,
                                  int64_t rows) const {
    (void)router, (void)gate, (void)rows;
    return false;
  }
  /// addRmsNorm's sum and y, and into `prepared` y's FP8 codes and its
  /// BF16 rows (its BF16 rows alone for BF16 `gate` stacks). With
  /// `rowsRead` false nothing but the router, the experts
  /// and a shared expert in the experts' call (moeExpertsWithShared) reads
  /// y, all of them through what is attached: the device may leave y's
  /// rows unwritten (PreparedInput::rowsUnwritten) where its calls read
  /// the attached data for these rows. The default runs addRmsNorm alone
  /// (nothing prepared).
  virtual Status addRmsNormForExperts(const DeviceTensor &a,
                                      const DeviceTensor &b,
                                      const DeviceTensor &gamma, float eps,
                                      DeviceTensor &sum, DeviceTensor &y,
                                      const DeviceTensor &gate,
                                      PreparedInput &prepared, bool rowsRead) {
    (void)gate, (void)prepared, (void)rowsRead;
    return addRmsNorm(a, b, gamma, eps, sum, y);
  }
  /// What a norm prepared of the value at `data`, for this device's calls
  /// that read that value (a router's linear, the experts) to read in its
  /// place, until detachPrepared (before the memory takes another value).
  virtual void attachPrepared(const void *data, const PreparedInput &prepared) {
    (void)data, (void)prepared;
  }
  virtual void detachPrepared(const void *data) { (void)data; }
  /// Whether the device's MLA call over `rows` query rows can also write
  /// what a product of `weight` that quantizes its input (or rounds it to
  /// BF16) reads of the MLA's output (its 1 x 128 FP8 codes, or its BF16
  /// rows; MlaProductFusions.h): then the executor asks for it
  /// (prepareMlaOutput) and the product reads it (linearOfPrepared).
  virtual bool preparesInMla(const DeviceTensor &weight, int64_t rows) const {
    (void)weight, (void)rows;
    return false;
  }
  /// The next mla / mlaOfQuery call also writes into `into` what the
  /// products of its output read in its place, as a norm's
  /// rmsNormForProducts does for products of `weight`'s type (into left
  /// empty where it cannot; with `rowsRead` false nothing else reads the
  /// output, which the call may then leave unwritten:
  /// PreparedInput::rowsUnwritten); null: none asked. The executor asks
  /// just before the call and clears it after. The default prepares
  /// nothing.
  virtual void prepareMlaOutput(PreparedInput *into, bool rowsRead,
                                const DeviceTensor *weight) {
    (void)into, (void)rowsRead, (void)weight;
  }
  /// linear(x, w, y) where `prepared` holds what the norm that made x
  /// prepared for it: the same values. The default (or nothing prepared)
  /// runs linear.
  virtual Status linearOfPrepared(const DeviceTensor &x,
                                  const PreparedInput &prepared,
                                  const DeviceTensor &w, DeviceTensor &y) {
    (void)prepared;
    return linear(x, w, y);
  }
  /// The output of the next experts call (moeExperts,
  /// moeExpertsOfQuantized, moeExpertsWithShared) is read by nothing but
  /// a residual add whose norm runs with it (addRmsNorm,
  /// addRmsNormForProducts, addRmsNormForExperts; CombineNormFusions.h):
  /// the device may leave the output unwritten and make its rows (the
  /// experts' rows weighted and summed) in that call's add, the same
  /// values. Every other call first writes them, so a guess that proves
  /// wrong costs time, not correctness. The executor asks just before the
  /// experts call and clears it (false) after. The default leaves nothing.
  virtual void leaveCombineToNorm(bool leave) { (void)leave; }
  /// y = a + b.
  virtual Status add(const DeviceTensor &a, const DeviceTensor &b,
                     DeviceTensor &y) = 0;
  /// sum = a + b, then y = rmsNorm(sum) as the two kernels compute them (a
  /// residual add and the norm after it; a device may do both in one
  /// pass). The default runs add() then rmsNorm().
  virtual Status addRmsNorm(const DeviceTensor &a, const DeviceTensor &b,
                            const DeviceTensor &gamma, float eps,
                            DeviceTensor &sum, DeviceTensor &y) {
    MELT_RETURN_IF_ERROR(add(a, b, sum));
    return rmsNorm(sum, gamma, eps, y);
  }
  /// y[t] = table[ids[t]] (ids I32 [T]; an id outside the table is an
  /// error, reported by the CPU at once and by a GPU at the next
  /// synchronize()).
  virtual Status embedding(const DeviceTensor &ids, const DeviceTensor &table,
                           DeviceTensor &y) = 0;
  /// Rotary embedding of x [T, D] or [T, H, D] at positions (I32 [T]).
  virtual Status rope(const DeviceTensor &x, const DeviceTensor &positions,
                      const RopeParams &params, DeviceTensor &y) = 0;
  /// The experts of each token from router logits (F32 [T, E]; bias F32
  /// [E] or null): indices I32 [T, K], weights F32 [T, K] (routeToken).
  virtual Status routeExperts(const DeviceTensor &logits,
                              const DeviceTensor *bias,
                              const RouterParams &params, DeviceTensor &indices,
                              DeviceTensor &weights) = 0;
  /// routeExperts, which the device may leave to the experts call that
  /// reads `indices` and `weights`: the executor calls this in place of
  /// routeExperts only where that call comes later in the step and nothing
  /// else reads them (RoutesInExperts.h), and `logits` lives until then
  /// (the step's scratch). A device whose one-token expert kernels route their
  /// token themselves then routes there, the route's own launch and the wait
  /// for it off the step's path; the choices and weights are routeExperts',
  /// written where it writes them. The default routes here.
  virtual Status routeInExperts(const DeviceTensor &logits,
                                const DeviceTensor *bias,
                                const RouterParams &params,
                                DeviceTensor &indices, DeviceTensor &weights) {
    return routeExperts(logits, bias, params, indices, weights);
  }

  // Data movement (any type): y = x with the same bytes (reshape); y = the
  // slice of x at `offset` along `axis` (split); or x written into y at
  // `offset` along `axis` (concat).
  virtual Status copy(const DeviceTensor &x, DeviceTensor &y) = 0;
  virtual Status slice(const DeviceTensor &x, int axis, int64_t offset,
                       DeviceTensor &y) = 0;
  virtual Status place(const DeviceTensor &x, int axis, int64_t offset,
                       DeviceTensor &y) = 0;
  /// Each of `parts`, flat, one after the other into the flat `into` from
  /// element `offset` on (all of one element type: a step's router choices
  /// gathered for one download). The default places them one by one.
  virtual Status gatherParts(const std::vector<DeviceTensor> &parts,
                             int64_t offset, DeviceTensor &into);

  // Caches, attention and MLA in F32 (MoE experts: F32 or BF16 weights).

  /// Writes row t of `first` [T, A] then of `second` (any shape of T * B
  /// values) into the cache row of token t (`layout`); cache [rows, A + B].
  /// A latent cache takes the normalized latent and the rotated RoPE key, a
  /// per-head cache the keys [T, H, Dk] and values [T, H, Dv]. A position
  /// without a page is MELT_RESOURCE_EXHAUSTED, from this call or (a GPU,
  /// which does not wait for its kernels) from the next synchronize().
  virtual Status cacheAppend(const DeviceTensor &first,
                             const DeviceTensor &second,
                             const CacheLayout &layout,
                             DeviceTensor &cache) = 0;
  /// MLA's latent cache append with what comes right before it: normed =
  /// rmsNorm(latent [T, L]), rotated = rope(key [T, ...]) at positions,
  /// then cacheAppend(normed, rotated as [T, R]). A device may do all three
  /// in one pass and leave normed and rotated unwritten: the executor calls
  /// this only where the append is their one reader (LatentAppends.h). The
  /// default runs the three.
  virtual Status appendLatent(const DeviceTensor &latent,
                              const DeviceTensor &gamma, float eps,
                              const DeviceTensor &key,
                              const DeviceTensor &positions,
                              const RopeParams &rope, const CacheLayout &layout,
                              DeviceTensor &normed, DeviceTensor &rotated,
                              DeviceTensor &cache) {
    MELT_RETURN_IF_ERROR(rmsNorm(latent, gamma, eps, normed));
    MELT_RETURN_IF_ERROR(this->rope(key, positions, rope, rotated));
    DeviceTensor perToken = rotated;
    const int64_t tokens = normed.shape.empty() ? 0 : normed.shape[0];
    perToken.shape = {tokens, tokens ? rotated.numel() / tokens : 0};
    return cacheAppend(normed, perToken, layout, cache);
  }
  /// Attention of query t (q [T, H, Dk]) over the per-head cache of its
  /// sequence (rows: keys [Hk, Dk] then values [Hk, Dv]; H a multiple of
  /// Hk, query head h reading cache head h / (H / Hk)): positions
  /// [0, positions[t]] when causal, else the sequence's whole length.
  /// out [T, H, Dv].
  virtual Status attention(const DeviceTensor &q, const DeviceTensor &cache,
                           const CacheLayout &layout, int64_t kvHeads,
                           bool causal, float scale, DeviceTensor &out) = 0;
  /// Absorbed multi-head latent attention: query t (heads qNope [T, H, N],
  /// qRope [T, H, R]) attends to positions [0, positions[t]] of its
  /// sequence's latent cache (rows: latent L then RoPE key R); the latent
  /// query is W_UK[h]^T qNope, the output W_UV[h] (the softmax-weighted
  /// latents); wUk [H, N, L], wUv [H, V, L], out [T, H, V]. A sequence with
  /// more than `decompressAbove` queries (a long prefill) may be computed in
  /// the decompressed form instead (K and V per head; the same result).
  virtual Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
                     const DeviceTensor &cache, const CacheLayout &layout,
                     const DeviceTensor &wUk, const DeviceTensor &wUv,
                     float scale, int64_t decompressAbove,
                     DeviceTensor &out) = 0;
  /// Whether mlaOfQuery does better than the query's split and rope ahead
  /// of mla (a GPU's absorb kernel can read q_nope and rotate q_rope from
  /// the query projection's rows itself): then the executor calls it for
  /// an MLA whose query comes straight from such a split and rope
  /// (MlaQueryFusions.h).
  virtual bool fusesMlaQuery() const { return false; }
  /// mla of q_nope = q[..., :nope] and q_rope = rope(q[..., nope:]) at
  /// `positions`, for q [T, H, nope + rope]. The default slices, ropes and
  /// calls mla.
  virtual Status mlaOfQuery(const DeviceTensor &q, int64_t nope,
                            const DeviceTensor &positions,
                            const RopeParams &rope, const DeviceTensor &cache,
                            const CacheLayout &layout, const DeviceTensor &wUk,
                            const DeviceTensor &wUv, float scale,
                            int64_t decompressAbove, DeviceTensor &out);
  /// Whether mlaOfQuery takes a BF16 q (the F32 of its values): then the
  /// query projection may stay BF16 where it writes so (Bf16Products.h).
  virtual bool mlaOfQueryReadsBf16() const { return false; }
  /// The element type a session keeps the latent cache of the MLA that
  /// absorbs `wUk` in, given the type the compiler chose for it
  /// (`compiled`: the artifact's, from melt-assign-precision: the
  /// attention's compute type): F32, or BF16 where the device stores it
  /// so. Every device's cacheAppend, appendLatent and mla take a latent
  /// cache of either type (a BF16 one's rows rounded once, when appended);
  /// this says which a session allocates.
  virtual DType latentCacheType(const DeviceTensor & /*wUk*/,
                                DType /*compiled*/) const {
    return DType::F32;
  }
  /// FP8 e4m3 in 1 x `block` tiles of the rows of x [T, K] (the last tile
  /// may be shorter): scales F32 [T, ceil(K / block)] = max(amax, 1e-12) /
  /// 448, q FP8E4M3 [T, K] = x / scale. The artifact's quantize kernel.
  virtual Status quantizeBlocks(const DeviceTensor &x, int64_t block,
                                DeviceTensor &q, DeviceTensor &scales) = 0;
  /// y = q * scale of its tile (the inverse of quantizeBlocks).
  virtual Status dequantizeBlocks(const DeviceTensor &q,
                                  const DeviceTensor &scales, int64_t block,
                                  DeviceTensor &y) = 0;
  /// Routed experts: y[t] = sum_k w[t,k] down_e(silu(gate_e x) * up_e x),
  /// e = indices[t, k]; gate/up [E, I, D], down [E, D, I], all F32 or all
  /// BF16 (then x and the activations are rounded to BF16 before each
  /// GEMM, as in linear). combineBf16
  /// rounds each expert's output to BF16 before the sum. An index outside
  /// the experts is an error from this call or the next synchronize().
  virtual Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                            const DeviceTensor &weights,
                            const DeviceTensor &gate, const DeviceTensor &up,
                            const DeviceTensor &down, bool combineBf16,
                            DeviceTensor &y) = 0;
  /// dequantize(quantize(x)) of x [rows, cols] in 1 x 128 FP8 blocks into
  /// `dequantized`, allocated here (the caller releases it).
  Status quantizedRoundTrip(const DeviceTensor &x, DeviceTensor &dequantized);
  /// moeExperts of dequantize(quantize(x)) in 1 x 128 FP8 blocks
  /// (quantizeBlocks' arithmetic); here quantizedRoundTrip, then
  /// moeExperts.
  virtual Status
  moeExpertsOfQuantized(const DeviceTensor &x, const DeviceTensor &indices,
                        const DeviceTensor &weights, const DeviceTensor &gate,
                        const DeviceTensor &up, const DeviceTensor &down,
                        bool combineBf16, DeviceTensor &y);

  /// A shared expert beside the routed ones (DeepSeek's shared_experts):
  /// the MLP down(silu(gate x) * up x) of three linears whose weights these
  /// are, each product's output rounded to BF16 where the flag says so (its
  /// precision's output; the device's own rounding aside), and the
  /// SiLU-mul taken into the down product where the device fuses it.
  struct SharedExpert {
    const DeviceTensor *gate = nullptr, *up = nullptr, *down = nullptr;
    bool roundGateUp = false, roundDown = false;
  };
  /// Whether moeExpertsWithShared does better for `tokens` tokens of these
  /// routed experts than the shared expert's own kernels beside them (the
  /// GPU's one-token experts read the shared expert as one more expert in
  /// the same launches): then the executor calls it in place of the shared
  /// expert's kernels and the add of the two (SharedExpertFusions.h).
  virtual bool fusesSharedExpert(const DeviceTensor &gate,
                                 const SharedExpert &shared,
                                 int64_t tokens) const {
    (void)gate, (void)shared, (void)tokens;
    return false;
  }
  /// y = the routed experts of moeExperts (of x quantized in 1 x 128 blocks
  /// first where `quantizedX`: moeExpertsOfQuantized) + the shared expert
  /// as its linears compute it from x, added after. The default runs those
  /// calls one after the other.
  virtual Status
  moeExpertsWithShared(const DeviceTensor &x, const DeviceTensor &indices,
                       const DeviceTensor &weights, const DeviceTensor &gate,
                       const DeviceTensor &up, const DeviceTensor &down,
                       bool combineBf16, bool quantizedX,
                       const SharedExpert &shared, DeviceTensor &y);

  /// ids[r] = the greedy token of row r of F32 logits [R, V] (greedyIndex
  /// of Greedy.h: the first largest, NaNs passed over): only R ids need
  /// leave the device, not R x V logits.
  virtual Status argmaxRows(const DeviceTensor &logits, DeviceTensor &ids) = 0;
  /// ids[r] = the token sampleToken (Sampling.h) draws from row r of F32
  /// logits [R, V] for draws[r] (I32 [R, 2]: the 64-bit draw, low word
  /// first); temperature > 0. Only R ids leave the device.
  virtual Status sampleRows(const DeviceTensor &logits,
                            const SamplingParams &params,
                            const DeviceTensor &draws, DeviceTensor &ids) = 0;
};

/// The devices present on this machine, "cpu" first.
std::vector<std::string> availableDevices();
/// Opens "cpu" or "cuda:N"; a clear error when it is absent (e.g. "no CUDA
/// device: <driver's reason>", or a runtime built without CUDA).
Status openDevice(const std::string &name, std::unique_ptr<Device> &out);

/// Shared checks of the kernels' operands, so that every device rejects the
/// same bad calls with the same messages.
namespace check {
Status sameShape(const char *kernel, const DeviceTensor &a,
                 const DeviceTensor &b);
Status floatType(const char *kernel, const char *operand,
                 const DeviceTensor &t);
Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma,
               const DeviceTensor &y);
Status linear(const DeviceTensor &x, const DeviceTensor &w,
              const DeviceTensor &y);
Status quantizeFp8(const DeviceTensor &x, const DeviceTensor &q,
                   const DeviceTensor &scales);
Status linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                 const DeviceTensor &w, const DeviceTensor &wScales,
                 const DeviceTensor &y);
Status embedding(const DeviceTensor &ids, const DeviceTensor &table,
                 const DeviceTensor &y);
Status rope(const DeviceTensor &x, const DeviceTensor &positions,
            const RopeParams &params, const DeviceTensor &y);
Status routeExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                    const RouterParams &params, const DeviceTensor &indices,
                    const DeviceTensor &weights);
Status copy(const DeviceTensor &x, const DeviceTensor &y);
Status roundToBf16(const DeviceTensor &x);
/// For slice and place: `part` along `axis` of `whole` from `offset`.
Status axisPart(const char *kernel, const DeviceTensor &whole, int axis,
                int64_t offset, const DeviceTensor &part);
Status cacheLayout(const char *kernel, const CacheLayout &layout,
                   int64_t tokens);
/// A cache F32 or BF16 (a latent cache in BF16: Device::latentCacheType).
Status cacheAppend(const DeviceTensor &first, const DeviceTensor &second,
                   const CacheLayout &layout, const DeviceTensor &cache);
Status attention(const DeviceTensor &q, const DeviceTensor &cache,
                 const CacheLayout &layout, int64_t kvHeads,
                 const DeviceTensor &out);
Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
           const DeviceTensor &cache, const CacheLayout &layout,
           const DeviceTensor &wUk, const DeviceTensor &wUv,
           const DeviceTensor &out);
Status quantizeBlocks(const DeviceTensor &x, int64_t block,
                      const DeviceTensor &q, const DeviceTensor &scales);
Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                  const DeviceTensor &weights, const DeviceTensor &gate,
                  const DeviceTensor &up, const DeviceTensor &down,
                  const DeviceTensor &y);
/// The products of the dimensions before and after `axis`.
void axisExtents(const std::vector<int64_t> &shape, int axis, int64_t &outer,
                 int64_t &inner);
Status argmaxRows(const DeviceTensor &logits, const DeviceTensor &ids);
Status sampleRows(const DeviceTensor &logits, const SamplingParams &params,
                  const DeviceTensor &draws, const DeviceTensor &ids);
} // namespace check

} // namespace melt::rt

#endif // MELT_RUNTIME_DEVICE_H

//===- CudaDevice.cpp - the CUDA device -----------------------------------===//
//
// One stream per device; kernels are queued on it and calls return without
// waiting, except memory copies to the host and synchronize(). Errors:
// out of memory is reported and leaves the device usable; a fault inside a
// kernel (illegal address, ...) is sticky in CUDA, so the device marks
// itself failed and every later call returns that error.
//
//===----------------------------------------------------------------------===//
#include "cuda/CudaDevice.h"

#include "EnvSwitch.h"
#include "Fp8Blocks.h"

#include "cuda/Elementwise.h"
#include "cuda/ExpertGrouping.h"
#include "cuda/Gemm.h"
#include "cuda/GroupedGemm.h"
#include "cuda/GroupedGemmFp8.h"
#include "cuda/LaunchCount.h"
#include "cuda/MlaDecodeFused.h"
#include "cuda/MlaDecompressed.h"
#include "cuda/MlaSplit.h"
#include "cuda/ModelKernels.h"
#include "cuda/MoeByExpert.h"
#include "cuda/MoeFp8Rows.h"
#include "cuda/Quantize.h"
#include "cuda/SampleRows.h"
#include "cuda/SmallMGemm.h"

#include <cuda_runtime.h>

#include "melt/numerics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

using namespace melt::rt;
using namespace melt::rt::cuda;

static_assert(kPageRows == kPageTokens,
              "the CUDA kernels page caches as the runtime does");

namespace {

/// Errors after which the CUDA context is unusable.
bool isSticky(cudaError_t e) {
  switch (e) {
  case cudaErrorIllegalAddress:
  case cudaErrorLaunchFailure:
  case cudaErrorIllegalInstruction:
  case cudaErrorMisalignedAddress:
  case cudaErrorInvalidAddressSpace:
  case cudaErrorInvalidPc:
  case cudaErrorHardwareStackError:
  case cudaErrorAssert:
  case cudaErrorLaunchTimeout:
  case cudaErrorECCUncorrectable:
    return true;
  default:
    return false;
  }
}

class CudaDevice final : public Device {
public:
  CudaDevice(int index, std::string description)
      : index_(index), description_(std::move(description)) {}
  ~CudaDevice() override {
    gemm_.reset();
    for (Lane &lane : lanes_)
      closeLane(lane);
    closeBranch();
    if (forked_)
      cudaEventDestroy(forked_);
    if (stream_)
      cudaStreamSynchronize(stream_);
    trimCache();
    for (auto &[block, bytes] : blockBytes_)
      cudaFree(block);
    if (flag_)
      cudaFree(flag_);
    if (hostFlags_)
      cudaFreeHost(hostFlags_);
    if (stream_)
      cudaStreamDestroy(stream_);
  }

  Status init() {
    MELT_RETURN_IF_ERROR(check(cudaSetDevice(index_), "cudaSetDevice"));
    MELT_RETURN_IF_ERROR(
        check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
              "cudaStreamCreate"));
    if (CudaStatus s = GemmRunner::create(stream_, gemm_))
      return {MELT_DEVICE_ERROR, name() + ": " + s.error};
    if (sideStream_)
      MELT_RETURN_IF_ERROR(openBranch());
    return check(cudaDeviceGetAttribute(&multiprocessors_,
                                        cudaDevAttrMultiProcessorCount, index_),
                 "cudaDeviceGetAttribute");
  }

  std::string name() const override { return "cuda:" + std::to_string(index_); }
  std::string description() const override { return description_; }

  /// Blocks come from a cache of freed ones of the same rounded size
  /// (cudaMalloc and cudaFree cost tens of microseconds and synchronize):
  /// a model step allocates every activation anew.
  Status allocate(DType type, std::vector<int64_t> shape,
                  DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(usable()); // (it reads nothing: a norm stays pending)
    DeviceTensor t;
    t.dtype = type;
    t.shape = std::move(shape);
    for (int64_t d : t.shape)
      if (d < 0)
        return invalidArgument(name() + ": allocate: negative dimension");
    size_t bytes = roundedBytes(t.bytes());
    auto cached = freeBlocks_.find(bytes);
    if (cached != freeBlocks_.end() && !cached->second.empty()) {
      t.data = cached->second.back();
      cached->second.pop_back();
      blockBytes_[t.data] = bytes;
      out = std::move(t);
      return Status::ok();
    }
    cudaError_t e = cudaMalloc(&t.data, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError(); // not sticky: clear it
      trimCache();        // give the cached blocks back, then try again
      e = cudaMalloc(&t.data, bytes);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      return {MELT_OUT_OF_MEMORY,
              name() + ": out of memory allocating " + std::to_string(bytes) +
                  " bytes (" + std::to_string(free >> 20) + " MiB free of " +
                  std::to_string(total >> 20) + ")"};
    }
    MELT_RETURN_IF_ERROR(check(e, "cudaMalloc"));
    blockBytes_[t.data] = bytes;
    out = std::move(t);
    return Status::ok();
  }

  void release(DeviceTensor &tensor) override {
    if (!tensor.data)
      return;
    // Nor a pending combine's.
    if (pendingCombine_ && pendingCombine_->touches(tensor)) {
      pendingCombine_->heldBack.push_back(tensor);
      tensor.data = nullptr;
      return;
    }
    // A pending norm's memory takes no other value before the norm has run:
    // released once it is launched.
    if (pendingNorm_ && pendingNorm_->touches(tensor)) {
      pendingNorm_->heldBack.push_back(tensor);
      tensor.data = nullptr;
      return;
    }
    // A route left for an experts call that will not come (its step
    // failed first) goes with its buffers.
    if (pendingRoute_ && (tensor.data == pendingRoute_->indices ||
                          tensor.data == pendingRoute_->weights ||
                          tensor.data == pendingRoute_->kernelArgs.logits))
      pendingRoute_.reset();
    plans_.erase(tensor.data);
    paddedK_.erase(tensor.data);
    auto scales = weightScales_.find(tensor.data);
    if (scales != weightScales_.end()) {
      DeviceTensor s = scales->second;
      weightScales_.erase(scales);
      release(s);
    }
    auto it = blockBytes_.find(tensor.data);
    if (it != blockBytes_.end()) {
      if (capturing_) // a recorded kernel may use it: the graph's now
        parked_.push_back(tensor.data);
      else {
        freeBlocks_[it->second].push_back(tensor.data);
        blockBytes_.erase(it);
      }
    }
    tensor.data = nullptr;
  }

  void planKernel(const DeviceTensor &weight, const KernelPlan &plan) override {
    if (weight.data)
      plans_[weight.data] = plan;
  }

  bool canCapture() const override { return true; }

  Status beginCapture(bool behindQueued) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(flags());
    // Without a wait, the queued kernels' faults surface at the wait that
    // follows (the step's collect), not here; a recording starts behind
    // them in stream order all the same.
    if (!behindQueued)
      MELT_RETURN_IF_ERROR(synchronize());
    // Relaxed: a block the cache lacks may still be cudaMalloc'ed.
    MELT_RETURN_IF_ERROR(
        check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed),
              "cudaStreamBeginCapture"));
    capturing_ = true;
    parked_.clear();
    branchMarked_ = branchBusy_ = branchOpen_ = false;
    return Status::ok();
  }

  /// While recording (unless MELT_CUDA_SIDE_STREAM=0): a branch's calls go to a
  /// stream of their own that starts at the mark, as the graph's second
  /// branch; the graph keeps every block it used, so that memory of the
  /// branch and of the rest never alias. Otherwise every call in order.
  Status markBranch(const std::vector<DeviceTensor> &reads) override {
    if (!capturing_ || !branch_.stream || inBranch_)
      return Status::ok();
    branchOpen_ = true;
    // A pending norm stays pending past the fork unless the branch reads
    // what it writes.
    if (pendingNorm_)
      for (const DeviceTensor &t : reads)
        if (pendingNorm_->writes(t)) {
          MELT_RETURN_IF_ERROR(launchPendingNorm());
          break;
        }
    MELT_RETURN_IF_ERROR(
        check(cudaEventRecord(branch_.forked, stream_), "cudaEventRecord"));
    branchMarked_ = branchWaits_ = true;
    if (branchFromForkAlone_) {
      // The recording's nodes the fork comes after (and their edges' data).
      cudaStreamCaptureStatus status;
      const cudaGraphNode_t *nodes = nullptr;
      const cudaGraphEdgeData *edges = nullptr;
      size_t count = 0;
      MELT_RETURN_IF_ERROR(
          check(cudaStreamGetCaptureInfo(stream_, &status, nullptr, nullptr,
                                         &nodes, &edges, &count),
                "cudaStreamGetCaptureInfo"));
      forkNodes_.assign(nodes, nodes + count);
      forkEdges_.clear();
      if (edges)
        forkEdges_.assign(edges, edges + count);
    }
    return Status::ok();
  }
  Status enterBranch() override {
    if (!capturing_ || !branchMarked_ || inBranch_)
      return Status::ok();
    if (branchWaits_) {
      MELT_RETURN_IF_ERROR(
          check(cudaStreamWaitEvent(branch_.stream, branch_.forked, 0),
                "cudaStreamWaitEvent"));
      // The branch after the fork alone, not also after the last branch's
      // kernels on this stream (an edge the graph needs not).
      if (branchFromForkAlone_)
        MELT_RETURN_IF_ERROR(
            check(cudaStreamUpdateCaptureDependencies(
                      branch_.stream, forkNodes_.data(),
                      forkEdges_.empty() ? nullptr : forkEdges_.data(),
                      forkNodes_.size(), cudaStreamSetCaptureDependencies),
                  "cudaStreamUpdateCaptureDependencies"));
      branchWaits_ = false;
    }
    std::swap(stream_, branch_.stream);
    std::swap(gemm_, branch_.gemm);
    inBranch_ = branchBusy_ = true;
    return Status::ok();
  }
  void leaveBranch() override {
    if (!inBranch_)
      return;
    std::swap(stream_, branch_.stream);
    std::swap(gemm_, branch_.gemm);
    inBranch_ = false;
  }
  Status joinBranch() override {
    branchOpen_ = false;
    leaveBranch();
    if (!branchBusy_)
      return Status::ok();
    // (A norm the branch left pending runs in it.)
    if (pendingNorm_ && pendingNorm_->stream == branch_.stream)
      MELT_RETURN_IF_ERROR(launchPendingNorm());
    branchBusy_ = false;
    MELT_RETURN_IF_ERROR(check(cudaEventRecord(branch_.done, branch_.stream),
                               "cudaEventRecord"));
    MELT_RETURN_IF_ERROR(check(cudaStreamWaitEvent(stream_, branch_.done, 0),
                               "cudaStreamWaitEvent"));
    // (An append before the join: CacheAppendTracker.h.)
    cacheAppends_.joined(branch_.stream, stream_);
    return Status::ok();
  }

  Status endCapture(std::unique_ptr<DeviceGraph> &out) override;

  Status replay(DeviceGraph &graph) override;

  /// A graph's blocks, back to the cache when it is destroyed.
  void returnBlocks(const std::vector<void *> &blocks) {
    for (void *block : blocks) {
      DeviceTensor t;
      t.data = block;
      release(t);
    }
  }

  /// In stream order, without waiting: a copy from pageable memory is
  /// staged before cudaMemcpyAsync returns (the host's memory may be reused
  /// at once), and the kernels after it on the stream see it; so the next
  /// step of a multi-step generation is queued while the one ahead runs.
  /// MELT_CUDA_WAIT_UPLOADS=1 waits after each (a comparison: for single
  /// steps the two measured alike on the H200,
  /// bench/results/b1_step_experiments_tried.txt).
  Status upload(const void *host, DeviceTensor &tensor) override {
    MELT_RETURN_IF_ERROR(ready());
    if (capturing_)
      return invalidArgument(name() + ": upload while recording a graph");
    MELT_RETURN_IF_ERROR(
        check(cudaMemcpyAsync(tensor.data, host, tensor.bytes(),
                              cudaMemcpyHostToDevice, stream_),
              "upload"));
    return waitUploads_ ? synchronize() : Status::ok();
  }
  bool waitUploads_ = envSwitch("MELT_CUDA_WAIT_UPLOADS", false);

  /// The flags' copy is queued ahead of the data's, so that the one wait
  /// for the data covers both.
  Status download(const DeviceTensor &tensor, void *host) override {
    MELT_RETURN_IF_ERROR(ready());
    if (capturing_)
      return invalidArgument(name() + ": download while recording a graph");
    MELT_RETURN_IF_ERROR(queueFlagsCopy());
    MELT_RETURN_IF_ERROR(
        check(cudaMemcpyAsync(host, tensor.data, tensor.bytes(),
                              cudaMemcpyDeviceToHost, stream_),
              "download"));
    MELT_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "kernel"));
    return raisedFlags();
  }

  Status synchronize() override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(launchPendingRoute()); // (none where calls keep the
                                                // contract: see routeInExperts)
    if (capturing_)
      return invalidArgument(name() + ": synchronize while recording a graph");
    MELT_RETURN_IF_ERROR(queueFlagsCopy());
    MELT_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "kernel"));
    return raisedFlags();
  }

  /// Copies of 512 MiB (ten times the L2) on the device's stream, timed by
  /// events after one untimed: what hf_baseline.py's `copy` measures.
  Status measureCopyBandwidth(double &gigabytesPerSecond) override {
    MELT_RETURN_IF_ERROR(synchronize());
    constexpr size_t kBytes = size_t(512) << 20;
    constexpr int kCopies = 10;
    void *from = nullptr, *to = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    Status status = check(cudaMalloc(&from, kBytes), "copy bandwidth");
    if (!status)
      status = check(cudaMalloc(&to, kBytes), "copy bandwidth");
    if (!status)
      status = check(cudaMemsetAsync(from, 0, kBytes, stream_), "memset");
    if (!status)
      status = check(cudaEventCreate(&start), "cudaEventCreate");
    if (!status)
      status = check(cudaEventCreate(&stop), "cudaEventCreate");
    for (int i = 0; i <= kCopies && !status; ++i) {
      if (i == 1)
        status = check(cudaEventRecord(start, stream_), "cudaEventRecord");
      if (!status)
        status = check(cudaMemcpyAsync(to, from, kBytes,
                                       cudaMemcpyDeviceToDevice, stream_),
                       "cudaMemcpyAsync");
    }
    float ms = 0;
    if (!status)
      status = check(cudaEventRecord(stop, stream_), "cudaEventRecord");
    if (!status)
      status = check(cudaEventSynchronize(stop), "copy bandwidth");
    if (!status)
      status = check(cudaEventElapsedTime(&ms, start, stop), "copy bandwidth");
    if (start)
      cudaEventDestroy(start);
    if (stop)
      cudaEventDestroy(stop);
    cudaFree(from);
    cudaFree(to);
    if (!status && ms > 0)
      gigabytesPerSecond = 2.0 * kBytes * kCopies / (ms * 1e-3) / 1e9;
    return status;
  }

  /// The kernels' flags copied to pinned host memory at this point of the
  /// stream (read by raisedFlags() after a wait): one copy queued, not a
  /// second blocking round trip after each wait.
  Status queueFlagsCopy() {
    if (!flag_)
      return Status::ok();
    return check(cudaMemcpyAsync(hostFlags_, flag_, kFlags * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, stream_),
                 "flag");
  }

  /// After a wait that covered queueFlagsCopy(): the error of a raised
  /// flag.
  Status raisedFlags() {
    if (!flag_)
      return Status::ok();
    int32_t raised[kFlags];
    std::copy(hostFlags_, hostFlags_ + kFlags, raised);
    if (std::none_of(raised, raised + kFlags, [](int32_t f) { return f; }))
      return Status::ok();
    // Reported once; the device goes on.
    std::fill(hostFlags_, hostFlags_ + kFlags, 0);
    MELT_RETURN_IF_ERROR(check(cudaMemset(flag_, 0, sizeof(raised)), "flag"));
    if (raised[kEmbeddingFlag])
      return invalidArgument(
          "embedding: a token id is outside the vocabulary of " +
          std::to_string(embeddingRows_));
    if (raised[kCacheFlag])
      return {MELT_RESOURCE_EXHAUSTED, "cache: a position has no cache page"};
    if (raised[kSpreadFlag])
      return invalidArgument(
          "mla: a prefill's tokens of one sequence are not at consecutive "
          "positions (the tensor-core attention groups them; "
          "MELT_CUDA_MLA_TENSOR_CORES=0 runs the split kernel)");
    return invalidArgument(
        "moe_experts: an expert index is outside the experts");
  }

  Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma, float eps,
                 DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::rmsNorm(x, gamma, y));
    if (!x.rowPitch && leaveNormPending(x, nullptr, nullptr, gamma, eps, y))
      return Status::ok();
    return check(cuda::rmsNorm(operand(x), operand(gamma), eps, int(x.rows()),
                               int(x.cols()), result(y), stream_, nullptr,
                               int(x.rowPitch)),
                 "rms_norm");
  }
  /// A Split's part left in place (its rows x.rowPitch apart) read by the
  /// norms and slices themselves (MELT_CUDA_ROW_PITCH=0 has the executor
  /// copy such parts out instead).
  bool rowPitch_ = envSwitch("MELT_CUDA_ROW_PITCH", true);
  bool takesRowPitch() const override { return rowPitch_; }

  /// A one-row RMSNorm (or add and norm) not launched yet: where the next
  /// call on its stream is linear() of its y on the small-M kernel, both
  /// run as one kernel (smallMGemmAfterNorm: every block normalizes the
  /// row itself, block 0 storing y and the sum), the norm's launch and its
  /// place in the chain of a batch-1 step's dependent kernels left out.
  /// Any other call on its stream launches it first (ready()), as do a
  /// fork whose branch reads what it writes (markBranch), the join of the
  /// branch it was left in and the end of a recording; a call in a
  /// recording's side branch (the other stream) leaves it, the branch
  /// reading nothing it writes. Its operands' memory released meanwhile
  /// takes no other value before it has run. It is left while a side
  /// branch is open too (mini's q_a norm left to q_b beside the kv norm,
  /// rope and append; MELT_CUDA_NORM_IN_PRODUCT=1 declines those: mini's
  /// traced bf16 batch-1 step 703.2 against 696.4 us; =0 leaves none:
  /// 721.5 us; bench/results/norm_in_product_s39_h200.txt).
  struct PendingNorm {
    RowNormOperands operands;
    DeviceTensor x, b, sum, y; // (b and sum without data: a norm alone)
    cudaStream_t stream;
    /// Its operands' memory released meanwhile, released once it runs.
    std::vector<DeviceTensor> heldBack;

    static bool overlap(const DeviceTensor &a, const DeviceTensor &t) {
      const char *p = static_cast<const char *>(a.data),
                 *q = static_cast<const char *>(t.data);
      return p && q && p < q + t.bytes() && q < p + a.bytes();
    }
    /// Whether t's memory is the sum's or y's (written by the norm).
    bool writes(const DeviceTensor &t) const {
      return overlap(sum, t) || overlap(y, t);
    }
    /// Whether t's memory is any of the norm's operands'.
    bool touches(const DeviceTensor &t) const {
      return writes(t) || overlap(x, t) || overlap(b, t);
    }
  };
  std::optional<PendingNorm> pendingNorm_;
  int normInProduct_ = int(envInt("MELT_CUDA_NORM_IN_PRODUCT", 2, 0, 2));
  /// Whether a side branch is marked and not yet joined (recording).
  bool branchOpen_ = false;
  /// The most blocks a product normalizing its input row may launch (each
  /// reads the row again: an output head's 16k blocks would read more
  /// than its weight's share of L2 bandwidth).
  static constexpr int kNormInProductMaxBlocks = 1024;

  /// The norm of y (of x, or of x + b into sum) left pending, where it
  /// may be: one row, y in F32 (what the small-M kernel multiplies), that
  /// fits the product's shared memory, no operand in another's memory
  /// (the product's blocks read x and b while block 0 stores); false
  /// where not (the caller launches it).
  bool leaveNormPending(const DeviceTensor &x, const DeviceTensor *b,
                        DeviceTensor *sum, const DeviceTensor &gamma, float eps,
                        DeviceTensor &y) {
    if (normInProduct_ == 0 || (branchOpen_ && normInProduct_ == 1) ||
        !smallMGemm_ || y.rows() != 1 || y.dtype != DType::F32 ||
        size_t(y.cols()) * sizeof(float) > kMaxNormedRowBytes)
      return false;
    PendingNorm p{{operand(x), b ? operand(*b) : Operand{nullptr, false},
                   sum ? result(*sum) : Result{nullptr, false}, operand(gamma),
                   eps, result(y)},
                  x,
                  b ? *b : DeviceTensor(),
                  sum ? *sum : DeviceTensor(),
                  y,
                  stream_};
    if (p.writes(x) || p.writes(p.b) || PendingNorm::overlap(p.sum, y))
      return false;
    pendingNorm_ = std::move(p);
    return true;
  }
  /// The pending norm launched, if one is.
  Status launchPendingNorm() {
    if (!pendingNorm_)
      return Status::ok();
    PendingNorm p = std::move(*pendingNorm_);
    pendingNorm_.reset();
    const RowNormOperands &o = p.operands;
    const int cols = int(p.y.cols());
    Status status =
        o.b.data
            ? check(cuda::addRmsNorm(o.x, o.b, o.gamma, o.eps, 1, cols, o.sum,
                                     o.y, p.stream),
                    "add_rms_norm")
            : check(cuda::rmsNorm(o.x, o.gamma, o.eps, 1, cols, o.y, p.stream),
                    "rms_norm");
    releaseHeldBack(p.heldBack);
    return status;
  }
  /// The memory released while a pending norm or combine waited, released
  /// once it has run (stream-ordered: its next user comes after the kernel).
  void releaseHeldBack(std::vector<DeviceTensor> &heldBack) {
    for (DeviceTensor &t : heldBack)
      release(t);
    heldBack.clear();
  }
  /// A MoE layer's combine left to the add and norm that read its output
  /// next (Device::leaveCombineToNorm, CombineNormFusions.h): the grouped
  /// experts of a prefill's many tokens end without their combine kernel,
  /// and the add-and-norm call that reads `y` makes the rows in its add
  /// (CombinedRows): the combine's F32 rows neither written nor read back.
  /// Any other call launches the combine first (ready()), as one whose
  /// shape the norm's warp-a-row kernel does not take. The experts' rows,
  /// the choices' rows and weights and the shared expert's rows are held
  /// (their memory released meanwhile takes no other value) until it has
  /// run. Left outside recordings and side branches only, on stream_.
  /// MELT_CUDA_COMBINE_IN_NORM=0: never left.
  struct PendingCombine {
    void *y = nullptr; // the experts call's output, [tokens, dim] F32
    CombinedRows rows;
    int tokens = 0, dim = 0;
    std::vector<DeviceTensor> heldBack;
    /// Whether t's memory is any the combine reads or writes.
    bool touches(const DeviceTensor &t) const {
      const void *parts[] = {y, rows.expertOut.data, rows.rowOfPair,
                             rows.weights, rows.plus.data};
      for (const void *p : parts)
        if (p && t.data == p)
          return true;
      return false;
    }
  };
  std::optional<PendingCombine> pendingCombine_;
  bool combineInNorm_ = envSwitch("MELT_CUDA_COMBINE_IN_NORM", true);
  bool leaveCombine_ = false;
  void leaveCombineToNorm(bool leave) override { leaveCombine_ = leave; }
  /// Whether the experts call ending now leaves its combine of `tokens`
  /// rows of `dim` into y.
  bool leavesCombine(const DeviceTensor &y, int tokens, int dim) const {
    return leaveCombine_ && combineInNorm_ && fusedAddNorm_ && !capturing_ &&
           !branchOpen_ && !inBranch_ && !pendingCombine_ &&
           y.dtype == DType::F32 && tokens > 0 && dim % 4 == 0;
  }
  /// The combine's own kernel into its y, its held memory released.
  Status launchCombine(PendingCombine &p) {
    Status status = check(
        combineExpertRows(p.rows.expertOut, p.rows.rowOfPair, p.rows.weights,
                          p.tokens, p.rows.choices, p.dim, p.rows.combineBf16,
                          static_cast<float *>(p.y), stream_, p.rows.plus),
        "moe_experts");
    releaseHeldBack(p.heldBack);
    return status;
  }
  Status launchPendingCombine() {
    if (!pendingCombine_)
      return Status::ok();
    PendingCombine p = std::move(*pendingCombine_);
    pendingCombine_.reset();
    return launchCombine(p);
  }
  /// A combine an add-and-norm call took for its add of a and b (one of
  /// them the combine's output; its held memory released when the call is
  /// done), or none.
  class ClaimedCombine {
  public:
    ClaimedCombine(CudaDevice &device, const DeviceTensor &a,
                   const DeviceTensor &b, const DeviceTensor &sum)
        : device_(device) {
      std::optional<PendingCombine> &p = device.pendingCombine_;
      if (p && (p->y == a.data || p->y == b.data) && a.data != b.data &&
          sum.rows() == p->tokens && sum.cols() == p->dim) {
        claimed_ = std::move(p);
        p.reset();
      }
    }
    bool any() const { return claimed_.has_value(); }
    ClaimedCombine(const ClaimedCombine &) = delete;
    ClaimedCombine &operator=(const ClaimedCombine &) = delete;
    ~ClaimedCombine() {
      if (claimed_)
        device_.releaseHeldBack(claimed_->heldBack);
    }
    /// launch(x, b, combined) of a + b: with the combine made in the add
    /// (x the other operand) where the kernel takes it, else after the
    /// combine's own kernel.
    template <class Launch>
    Status addNorm(const DeviceTensor &a, const DeviceTensor &b,
                   DeviceTensor &sum, Launch launch) {
      if (claimed_) {
        const bool combineIsA = claimed_->y == a.data;
        const DeviceTensor &other = combineIsA ? b : a;
        if (normTakesCombinedRows(int(sum.rows()), int(sum.cols()),
                                  device_.operand(other), device_.result(sum),
                                  claimed_->rows))
          return launch(device_.operand(other),
                        device_.operand(combineIsA ? a : b), &claimed_->rows);
        PendingCombine p = std::move(*claimed_);
        claimed_.reset();
        MELT_RETURN_IF_ERROR(device_.launchCombine(p));
      }
      return launch(device_.operand(a), device_.operand(b), nullptr);
    }

  private:
    CudaDevice &device_;
    std::optional<PendingCombine> claimed_;
  };

  /// usable(), once a pending norm is launched: every call that may read
  /// memory makes it (allocate() reads none). While recording, a call in a
  /// branch (the other stream) leaves the norm pending: the branch reads
  /// nothing it writes (markBranch), and a recording reuses no memory.
  Status ready() {
    Status combined = launchPendingCombine();
    Status launched =
        pendingNorm_ && (!capturing_ || pendingNorm_->stream == stream_)
            ? launchPendingNorm()
            : Status::ok();
    MELT_RETURN_IF_ERROR(usable());
    MELT_RETURN_IF_ERROR(combined);
    return launched;
  }
  /// linear(x, w, y) of the pending norm's y as one kernel with it, where
  /// the small-M kernel takes the product; false (nothing launched) where
  /// not.
  bool productAfterPendingNorm(const DeviceTensor &x, const DeviceTensor &w,
                               DeviceTensor &y, Status &status) {
    if (!pendingNorm_ || x.data != pendingNorm_->y.data || usable() ||
        pendingNorm_->stream != stream_ || attachedTo(x) ||
        check::linear(x, w, y) || x.rows() != 1)
      return false;
    if (w.dtype == DType::FP8E4M3)
      return fp8ProductAfterPendingNorm(x, w, y, status);
    if ((w.dtype != DType::BF16 && w.dtype != DType::F32) ||
        !takesSmallMGemm(w, 1))
      return false;
    const bool bf16 = w.dtype == DType::BF16;
    const int n = int(w.rows()), k = int(x.cols());
    if (!smallMGemmAfterNormFits(w.data, bf16, k) ||
        smallMGemmAfterNormBlocks(n, k, bf16, multiprocessors_) >
            kNormInProductMaxBlocks)
      return false;
    PendingNorm p = std::move(*pendingNorm_);
    pendingNorm_.reset();
    status = check(smallMGemmAfterNorm(p.operands, w.data, bf16, n, k,
                                       result(y), multiprocessors_, stream_),
                   "linear");
    releaseHeldBack(p.heldBack);
    return true;
  }

  /// productAfterPendingNorm for an FP8 weight, with
  /// MELT_CUDA_FP8_NORM_IN_PRODUCT=1 (off by default): where
  /// linearWithFp8Weight would run the row on the few-tokens kernel with
  /// its weights in registers (F32 in and out), that kernel normalizes the
  /// row itself (fp8FewTokensAfterNorm). Measured on mini's FP8 batch-1
  /// step: 16 kernels fewer, the same span (593.0 / 593.0 against 593.0 /
  /// 592.2 us) and melt-run 0.3% slower, three rounds alternating: each of
  /// the product's blocks normalizing the row after the kernel ahead ends
  /// costs what the norm's launch did (docs/CudaBackend.md, "Session 42").
  bool fp8ProductAfterPendingNorm(const DeviceTensor &x, const DeviceTensor &w,
                                  DeviceTensor &y, Status &status) {
    static const bool enabled =
        envSwitch("MELT_CUDA_FP8_NORM_IN_PRODUCT", false);
    const auto scales = weightScales_.find(w.data);
    if (!enabled || scales == weightScales_.end() || x.dtype != DType::F32 ||
        y.dtype != DType::F32)
      return false;
    const auto padded = paddedK_.find(w.data);
    const int k = int(x.cols()), n = int(w.rows());
    const int kStored = padded == paddedK_.end() ? k : int(padded->second);
    bool handled = false;
    const CudaStatus s = gemm_->fp8AfterNorm(
        pendingNorm_->operands, k, static_cast<const __nv_fp8_e4m3 *>(w.data),
        static_cast<const float *>(scales->second.data),
        static_cast<float *>(y.data), n, kStored, handled);
    if (!handled)
      return false;
    PendingNorm p = std::move(*pendingNorm_);
    pendingNorm_.reset();
    status = fromGemm(s);
    releaseHeldBack(p.heldBack);
    return true;
  }

  Status linear(const DeviceTensor &x, const DeviceTensor &w,
                DeviceTensor &y) override {
    Status fused;
    if (productAfterPendingNorm(x, w, y, fused))
      return fused;
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::linear(x, w, y));
    int m = int(x.rows()), k = int(x.cols()), n = int(w.rows());
    CudaStatus s;
    // The rows in BF16 as the norm that made them prepared them
    // (attachPrepared: a MoE router's), whatever the rows (the norm may
    // have left x's own unwritten).
    const PreparedInput *prepared = attachedTo(x);
    if (prepared && prepared->bf16.data && w.dtype == DType::BF16 &&
        x.dtype == DType::F32)
      return bf16Product(prepared->bf16.data, w, y);
    if (rowsUnwrittenOf(x))
      return unwrittenRows("linear");
    if (w.dtype == DType::FP8E4M3)
      return linearWithFp8Weight(x, w, y);
    // A few rows (decode): melt's kernel streams the weights, up to the
    // rows the compiler chose for this weight (melt-select-kernels), else
    // where it was measured to beat cuBLASLt.
    bool wideWeight = w.dtype == DType::BF16 || w.dtype == DType::F32;
    const KernelPlan *plan = planOf(w);
    bool smallM = plan && plan->smallMRows >= 0
                      ? m <= plan->smallMRows
                      : smallMGemmPays(m, n, k, w.dtype == DType::BF16);
    if (x.dtype == DType::F32 && wideWeight && smallMGemm_ && smallM &&
        smallMGemmFits(static_cast<const float *>(x.data), w.data,
                       w.dtype == DType::BF16, m, k))
      return check(smallMGemm(static_cast<const float *>(x.data), w.data,
                              w.dtype == DType::BF16, m, n, k, result(y),
                              multiprocessors_, stream_),
                   "linear");
    if (w.dtype == DType::BF16 && x.dtype == DType::F32) {
      // Rounded to BF16 first, into a block the stream reuses after the GEMM.
      DeviceTensor rounded;
      MELT_RETURN_IF_ERROR(allocate(DType::BF16, x.shape, rounded));
      Status converted = check(convert({x.data, false}, size_t(x.numel()),
                                       {rounded.data, true}, stream_),
                               "linear");
      if (!converted)
        s = gemm_->bf16(static_cast<const __nv_bfloat16 *>(rounded.data),
                        static_cast<const __nv_bfloat16 *>(w.data), y.data,
                        y.dtype == DType::F32, m, n, k);
      release(rounded);
      MELT_RETURN_IF_ERROR(converted);
      return fromGemm(s);
    }
    if (x.dtype == DType::BF16)
      s = gemm_->bf16(static_cast<const __nv_bfloat16 *>(x.data),
                      static_cast<const __nv_bfloat16 *>(w.data), y.data,
                      y.dtype == DType::F32, m, n, k);
    else if (y.dtype == DType::F32)
      s = gemm_->f32(static_cast<const float *>(x.data),
                     static_cast<const float *>(w.data),
                     static_cast<float *>(y.data), m, n, k);
    else
      return invalidArgument("linear: f32 operands need an f32 output");
    return fromGemm(s);
  }

  Status quantizeFp8(const DeviceTensor &x, DeviceTensor &q,
                     DeviceTensor &scales) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::quantizeFp8(x, q, scales));
    auto *out = static_cast<__nv_fp8_e4m3 *>(q.data);
    auto *s = static_cast<float *>(scales.data);
    int m = int(x.rows()), k = int(x.cols());
    cudaError_t e =
        x.dtype == DType::BF16
            ? quantizeRowsFp8(static_cast<const __nv_bfloat16 *>(x.data), m, k,
                              out, s, stream_)
            : quantizeRowsFp8(static_cast<const float *>(x.data), m, k, out, s,
                              stream_);
    return check(e, "quantize_fp8");
  }

  /// As allocations are: cuBLASLt's algorithms, chosen once per shape,
  /// assume 256-byte aligned operands, and kernels load 16 bytes at once.
  size_t viewAlignment() const override { return 256; }

  /// linearWithFp8Weight's FP8 GEMMs write BF16 (widened into y).
  bool linearOutputsBf16(const DeviceTensor &weight) const override {
    return multipliedInFp8(weight);
  }

  Status roundToBf16(DeviceTensor &x) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::roundToBf16(x));
    return check(cuda::roundToBf16(static_cast<float *>(x.data),
                                   size_t(x.numel()), stream_),
                 "round_to_bf16");
  }

  /// An FP8 weight's product past its few-token kernel writes cuBLASLt's
  /// BF16 output straight into a BF16 y (no widening kernel). A BF16
  /// weight's product past the small-M kernel does too, where the
  /// executor keeps it in BF16 (the bf16 policy's linears, whose BF16
  /// output the runtime may keep in F32: Bf16Products.h): mini-bf16's
  /// 8x1024 prefill 431.5k / 432.4k against 426.6k / 427.6k tokens/s
  /// (session 49, bench/results/session49_h200/call2-prefill-ab.txt).
  /// MELT_CUDA_BF16_WEIGHT_PRODUCTS=0 keeps them in F32.
  bool bf16WeightProducts_ = envSwitch("MELT_CUDA_BF16_WEIGHT_PRODUCTS", true);
  bool linearWritesBf16(const DeviceTensor &weight,
                        int64_t rows) const override {
    if (multipliedInFp8(weight))
      return !gemm_->quantizesF32Rows(int(rows));
    return bf16WeightProducts_ && weight.dtype == DType::BF16 &&
           weight.shape.size() == 2 && !takesSmallMGemm(weight, rows);
  }
  /// The add, norm and rope kernels read their operands through Operand
  /// (F32 or BF16, Elementwise.h), the slices copy bytes; appendLatent's
  /// default runs the norm, the rope, then the append of their F32 values.
  bool readsBf16Activations() const override { return true; }

  /// An FP8 weight's product quantizes silu(gate) * up as it reads them.
  bool fusesSiluMulInto(const DeviceTensor &weight) const override {
    return multipliedInFp8(weight) || roundsInputToBf16(weight);
  }

  Status linearOfSiluMul(const DeviceTensor &gate, const DeviceTensor &up,
                         const DeviceTensor &w, DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    if (w.dtype == DType::BF16 && gate.shape.size() == 2 &&
        !takesSmallMGemm(w, gate.rows()))
      return bf16LinearOfSiluMul(gate, up, w, y);
    if (!multipliedInFp8(w))
      return Device::linearOfSiluMul(gate, up, w, y);
    MELT_RETURN_IF_ERROR(check::sameShape("silu_mul", gate, up));
    MELT_RETURN_IF_ERROR(check::linear(gate, w, y));
    return linearWithFp8Weight(gate, w, y, &up);
  }

  /// One row's gate and up products and their SiLU-mul as one small-M
  /// kernel (smallMGemmSiluMulOfPair: both weights' rows streamed in
  /// pairs, the values of the three calls bit for bit), where the small-M
  /// kernel takes such products (MELT_CUDA_GATE_UP_PAIRS=0: never).
  bool takesSiluMulOfProducts(const DeviceTensor &wGate,
                              const DeviceTensor &wUp,
                              int64_t rows) const override {
    return gateUpPairs_ && rows == 1 && wGate.dtype == wUp.dtype &&
           (wGate.dtype == DType::BF16 || wGate.dtype == DType::F32) &&
           wGate.shape.size() == 2 && wGate.shape == wUp.shape &&
           takesSmallMGemm(wGate, 1) && takesSmallMGemm(wUp, 1);
  }
  Status siluMulOfProducts(const DeviceTensor &x, const DeviceTensor &wGate,
                           const DeviceTensor &wUp, bool roundProducts,
                           DeviceTensor &y) override {
    const bool bf16 = wGate.dtype == DType::BF16;
    if (!takesSiluMulOfProducts(wGate, wUp, x.rows()) ||
        x.dtype != DType::F32 || x.shape.size() != 2 || y.dtype != DType::F32 ||
        !smallMGemmFits(static_cast<const float *>(x.data), wGate.data, bf16, 1,
                        int(x.cols())) ||
        !smallMGemmFits(static_cast<const float *>(x.data), wUp.data, bf16, 1,
                        int(x.cols())))
      return Device::siluMulOfProducts(x, wGate, wUp, roundProducts, y);
    MELT_RETURN_IF_ERROR(ready()); // (a pending norm first)
    MELT_RETURN_IF_ERROR(check::linear(x, wGate, y));
    MELT_RETURN_IF_ERROR(check::linear(x, wUp, y));
    return check(smallMGemmSiluMulOfPair(
                     static_cast<const float *>(x.data), wGate.data, wUp.data,
                     bf16, int(wGate.rows()), int(x.cols()), roundProducts,
                     static_cast<float *>(y.data), multiprocessors_, stream_),
                 "silu_mul of products");
  }

  /// A BF16 product of silu(gate) * up: the SiLU-mul written straight
  /// into BF16 rows (the values linear() would round its F32 rows to), the
  /// F32 rows and their conversion left out.
  Status bf16LinearOfSiluMul(const DeviceTensor &gate, const DeviceTensor &up,
                             const DeviceTensor &w, DeviceTensor &y) {
    MELT_RETURN_IF_ERROR(check::sameShape("silu_mul", gate, up));
    MELT_RETURN_IF_ERROR(check::linear(gate, w, y));
    DeviceTensor rows;
    MELT_RETURN_IF_ERROR(allocate(DType::BF16, gate.shape, rows));
    Status status = check(binary(Binary::SiluMul, operand(gate), operand(up),
                                 size_t(gate.numel()), result(rows), stream_),
                          "silu_mul");
    if (!status)
      status = bf16Product(rows.data, w, y);
    release(rows); // stream-ordered: reused only by later work
    return status;
  }

  /// y = rows w^T, `rows` BF16 [y.rows(), w.cols()] and w a BF16 matrix:
  /// cuBLASLt's BF16 product into F32 or BF16 y.
  Status bf16Product(const void *rows, const DeviceTensor &w, DeviceTensor &y) {
    return fromGemm(gemm_->bf16(static_cast<const __nv_bfloat16 *>(rows),
                                static_cast<const __nv_bfloat16 *>(w.data),
                                y.data, y.dtype == DType::F32, int(y.rows()),
                                int(w.rows()), int(w.cols())));
  }

  /// linearWithFp8Weight quantizes x in 1x128 blocks itself.
  bool quantizesFp8Input(const DeviceTensor &weight) const override {
    return multipliedInFp8(weight);
  }

  /// A matrix held in FP8 with its block scales: linear() multiplies it by
  /// linearWithFp8Weight.
  bool multipliedInFp8(const DeviceTensor &weight) const {
    return weight.dtype == DType::FP8E4M3 && weight.shape.size() == 2 &&
           weightScales_.count(weight.data) != 0;
  }

  Status linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                   const DeviceTensor &w, const DeviceTensor &wScales,
                   DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::linearFp8(q, scales, w, wScales, y));
    if (paddedK_.count(w.data))
      return invalidArgument("linear_fp8: the weight is stored with its K "
                             "padded (MELT_CUDA_FP8_PAD_K): multiply it "
                             "with linear()");
    return fromGemm(
        gemm_->fp8BlockScaled(static_cast<const __nv_fp8_e4m3 *>(q.data),
                              static_cast<const float *>(scales.data),
                              static_cast<const __nv_fp8_e4m3 *>(w.data),
                              static_cast<const float *>(wScales.data),
                              static_cast<__nv_bfloat16 *>(y.data),
                              int(q.rows()), int(w.rows()), int(q.cols())));
  }

  Status siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                 DeviceTensor &y) override {
    return binaryOp("silu_mul", Binary::SiluMul, gate, up, y);
  }

  Status add(const DeviceTensor &a, const DeviceTensor &b,
             DeviceTensor &y) override {
    return binaryOp("add", Binary::Add, a, b, y);
  }

  /// addRmsNorm's operands as add() and rmsNorm() would check them.
  Status checkAddRmsNorm(const DeviceTensor &a, const DeviceTensor &b,
                         const DeviceTensor &gamma, const DeviceTensor &sum,
                         const DeviceTensor &y) {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::floatType("add", "a", a));
    MELT_RETURN_IF_ERROR(check::floatType("add", "b", b));
    MELT_RETURN_IF_ERROR(check::floatType("add", "y", sum));
    MELT_RETURN_IF_ERROR(check::sameShape("add", a, b));
    MELT_RETURN_IF_ERROR(check::sameShape("add", a, sum));
    MELT_RETURN_IF_ERROR(check::rmsNorm(sum, gamma, y));
    return Status::ok();
  }
  /// One kernel for both (bit for bit add() then rmsNorm(), conformance-
  /// tested; MELT_CUDA_FUSED_ADD_NORM=0 runs the two instead).
  Status addRmsNorm(const DeviceTensor &a, const DeviceTensor &b,
                    const DeviceTensor &gamma, float eps, DeviceTensor &sum,
                    DeviceTensor &y) override {
    if (!fusedAddNorm_)
      return Device::addRmsNorm(a, b, gamma, eps, sum, y);
    ClaimedCombine claimed(*this, a, b, sum);
    MELT_RETURN_IF_ERROR(checkAddRmsNorm(a, b, gamma, sum, y));
    if (!claimed.any() && leaveNormPending(a, &b, &sum, gamma, eps, y))
      return Status::ok();
    return claimed.addNorm(
        a, b, sum,
        [&](Operand x, Operand addend, const CombinedRows *combined) {
          return check(cuda::addRmsNorm(x, addend, operand(gamma), eps,
                                        int(sum.rows()), int(sum.cols()),
                                        result(sum), result(y), stream_,
                                        nullptr, combined),
                       "add_rms_norm");
        });
  }
  /// Norms whose value only FP8 products read quantize their rows for
  /// them (NormProductFusions.h): each product's own quantize kernel,
  /// which read the rows back, left out. MELT_CUDA_NORM_QUANTIZE=0
  /// declines.
  bool normQuantize_ = envSwitch("MELT_CUDA_NORM_QUANTIZE", true);
  /// Weights the compiler made BF16 GEMM operands though the runtime's
  /// uses call them read (the routers' gates) kept in BF16;
  /// MELT_CUDA_BF16_ROUTER=0 keeps them in F32 (an F32 GEMM).
  bool compilersBf16Operands_ = envSwitch("MELT_CUDA_BF16_ROUTER", true);
  /// Rows that linear() would quantize with a kernel of their own for this
  /// FP8 weight (not its few-token kernel, which quantizes as it
  /// multiplies), K unpadded.
  bool preparesInNorm(const DeviceTensor &weight, int64_t rows) const override {
    if (weight.dtype == DType::BF16)
      return bf16InputRows_ && weight.shape.size() == 2 &&
             !takesSmallMGemm(weight, rows);
    return quantizesInNorm(weight, rows);
  }
  /// FP8 weights: the norm writes the rows' FP8 codes.
  bool quantizesInNorm(const DeviceTensor &weight, int64_t rows) const {
    return normQuantize_ && multipliedInFp8(weight) &&
           !gemm_->quantizesF32Rows(int(rows)) &&
           storedK(weight) == weight.shape[1] && weight.shape[1] % 128 == 0;
  }
  Status rmsNormForProducts(const DeviceTensor &x, const DeviceTensor &gamma,
                            float eps, DeviceTensor &y,
                            const DeviceTensor &weight, PreparedInput &prepared,
                            bool rowsRead) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::rmsNorm(x, gamma, y));
    if (weight.dtype == DType::BF16 && y.dtype == DType::F32)
      return normBf16Rows(x, nullptr, gamma, eps, nullptr, y, prepared,
                          rowsRead);
    if (y.dtype != DType::F32 || y.cols() % 128 != 0)
      return rmsNorm(x, gamma, eps, y);
    return normQuantizingRows(x, nullptr, gamma, eps, nullptr, y, prepared,
                              false, rowsRead);
  }
  Status addRmsNormForProducts(const DeviceTensor &a, const DeviceTensor &b,
                               const DeviceTensor &gamma, float eps,
                               DeviceTensor &sum, DeviceTensor &y,
                               const DeviceTensor &weight,
                               PreparedInput &prepared,
                               bool rowsRead) override {
    if (weight.dtype == DType::BF16)
      return addNormBf16Rows(a, b, gamma, eps, sum, y, prepared, rowsRead);
    return addNormQuantizing(a, b, gamma, eps, sum, y, prepared, false,
                             rowsRead);
  }
  /// BF16 products of many rows read their input as BF16 rows written by
  /// the kernel that made it: a norm (NormProductFusions.h), the SiLU-mul
  /// of an MLP (linearOfSiluMul), a prefill's attention (its output for
  /// o_proj, MlaProductFusions.h); each product's conversion of F32 rows
  /// left out, and where nothing else reads them, those rows too
  /// (MELT_CUDA_BF16_INPUT_ROWS=0 declines).
  bool bf16InputRows_ = envSwitch("MELT_CUDA_BF16_INPUT_ROWS", true);
  bool roundsInputToBf16(const DeviceTensor &weight) const override {
    return bf16InputRows_ && weight.dtype == DType::BF16 &&
           weight.shape.size() == 2;
  }
  /// Whether linear() multiplies F32 rows of `w` (BF16 or F32) on the
  /// runtime's small-M kernel at `m` rows (else it rounds them to BF16
  /// for cuBLASLt).
  bool takesSmallMGemm(const DeviceTensor &w, int64_t m) const {
    const KernelPlan *plan = planOf(w);
    const bool smallM =
        plan && plan->smallMRows >= 0
            ? m <= plan->smallMRows
            : smallMGemmPays(int(m), int(w.shape[0]), int(w.shape[1]),
                             w.dtype == DType::BF16);
    return smallMGemm_ && smallM;
  }
  /// addRmsNorm, with y's rows in BF16 into `prepared` where the fused
  /// kernel runs; else addRmsNorm alone.
  Status addNormBf16Rows(const DeviceTensor &a, const DeviceTensor &b,
                         const DeviceTensor &gamma, float eps,
                         DeviceTensor &sum, DeviceTensor &y,
                         PreparedInput &prepared, bool rowsRead) {
    if (!fusedAddNorm_ || y.dtype != DType::F32)
      return addRmsNorm(a, b, gamma, eps, sum, y);
    ClaimedCombine claimed(*this, a, b, sum);
    MELT_RETURN_IF_ERROR(checkAddRmsNorm(a, b, gamma, sum, y));
    return normBf16Rows(a, &b, gamma, eps, &sum, y, prepared, rowsRead,
                        &claimed);
  }
  /// The norm of x (with b: of x + b, written to sum) into F32 y and its
  /// rows in BF16 into `prepared.bf16`, one kernel; without `rowsRead`
  /// (and normRowsUnwritten_) into the BF16 rows alone, y left unwritten.
  Status normBf16Rows(const DeviceTensor &x, const DeviceTensor *b,
                      const DeviceTensor &gamma, float eps, DeviceTensor *sum,
                      DeviceTensor &y, PreparedInput &prepared, bool rowsRead,
                      ClaimedCombine *claimed = nullptr) {
    const int rows = int(y.rows()), cols = int(y.cols());
    PreparedInput made;
    made.rowsUnwritten = !rowsRead && normRowsUnwritten_;
    MELT_RETURN_IF_ERROR(allocate(DType::BF16, {rows, cols}, made.bf16));
    auto *bf16 = static_cast<__nv_bfloat16 *>(made.bf16.data);
    const Result out = made.rowsUnwritten ? Result{bf16, true} : result(y);
    __nv_bfloat16 *alsoBf16 = made.rowsUnwritten ? nullptr : bf16;
    auto addNorm = [&](Operand a, Operand addend,
                       const CombinedRows *combined) {
      return check(cuda::addRmsNorm(a, addend, operand(gamma), eps, rows, cols,
                                    result(*sum), out, stream_, alsoBf16,
                                    combined),
                   "add_rms_norm");
    };
    Status status =
        !b ? check(cuda::rmsNorm(operand(x), operand(gamma), eps, rows, cols,
                                 out, stream_, alsoBf16, int(x.rowPitch)),
                   "rms_norm")
        : claimed ? claimed->addNorm(x, *b, *sum, addNorm)
                  : addNorm(operand(x), operand(*b), nullptr);
    if (status) {
      release(made.bf16);
      return status;
    }
    prepared = made;
    return Status::ok();
  }
  /// addRmsNorm, y's rows quantized into `prepared` (and with `withBf16`
  /// in BF16 too) where the fused kernel takes them; else addRmsNorm alone.
  Status addNormQuantizing(const DeviceTensor &a, const DeviceTensor &b,
                           const DeviceTensor &gamma, float eps,
                           DeviceTensor &sum, DeviceTensor &y,
                           PreparedInput &prepared, bool withBf16,
                           bool rowsRead = true) {
    if (!fusedAddNorm_ || y.dtype != DType::F32 || y.cols() % 128 != 0)
      return addRmsNorm(a, b, gamma, eps, sum, y);
    ClaimedCombine claimed(*this, a, b, sum);
    MELT_RETURN_IF_ERROR(checkAddRmsNorm(a, b, gamma, sum, y));
    return normQuantizingRows(a, &b, gamma, eps, &sum, y, prepared, withBf16,
                              rowsRead, &claimed);
  }
  /// A call that would read rows a norm left unwritten for the calls that
  /// read what it prepared (the executor's choice and the device's
  /// disagree: a bug, not bad input).
  static Status unwrittenRows(const char *op) {
    return {MELT_INTERNAL, std::string(op) +
                               ": its input's rows were left unwritten by the "
                               "norm that made them, and this call cannot "
                               "read what the norm prepared in their place"};
  }
  /// A norm whose F32 rows nothing but its products reads leaves them
  /// unwritten (MELT_CUDA_NORM_ROWS_UNWRITTEN=0: written all the same).
  bool normRowsUnwritten_ = envSwitch("MELT_CUDA_NORM_ROWS_UNWRITTEN", true);
  /// A MoE layer's input norm preparing its router's BF16 rows and its
  /// FP8 experts' codes (grouped on tensor cores for these rows;
  /// MELT_CUDA_NORM_EXPERTS=0: the router's conversion and the experts'
  /// quantize apart). mini's traced 8x1024 FP8 prefill 17.74 against 17.99
  /// ms (bench/results/prefill_switches_trace_s26_h200.txt).
  bool normExperts_ = envSwitch("MELT_CUDA_NORM_EXPERTS", true);
  bool preparesForExperts(const DeviceTensor &router, const DeviceTensor &gate,
                          int64_t rows) const override {
    if (gate.dtype == DType::BF16)
      return preparesBf16ForExperts(router, gate, rows);
    if (!normExperts_ || !normQuantize_ || !fusedAddNorm_ ||
        router.dtype != DType::BF16 || router.shape.size() != 2 ||
        gate.dtype != DType::FP8E4M3 || gate.shape.size() != 3)
      return false;
    const int64_t E = gate.shape[0], I = gate.shape[1], D = gate.shape[2];
    return D % 128 == 0 && router.shape[1] == D && fp8GroupedWgmma_ &&
           groupsOnFp8TensorCores(gate.dtype, rows, int(E), int(I), int(D));
  }
  /// BF16 stacks: the norm's BF16 rows for the router's BF16 product, the
  /// experts grouped on the device (their gathered rows) and a shared
  /// expert's BF16 gate and up run apart.
  bool preparesBf16ForExperts(const DeviceTensor &router,
                              const DeviceTensor &gate, int64_t rows) const {
    if (!normExperts_ || !bf16InputRows_ || !fusedAddNorm_ ||
        router.dtype != DType::BF16 || router.shape.size() != 2 ||
        gate.shape.size() != 3)
      return false;
    const int64_t E = gate.shape[0], I = gate.shape[1], D = gate.shape[2];
    // (Top k of at least one choice: rows pairs at least.)
    return router.shape[1] == D &&
           groupsMany(gate.dtype, rows, int(E), int(I), int(D));
  }
  Status addRmsNormForExperts(const DeviceTensor &a, const DeviceTensor &b,
                              const DeviceTensor &gamma, float eps,
                              DeviceTensor &sum, DeviceTensor &y,
                              const DeviceTensor &gate, PreparedInput &prepared,
                              bool rowsRead) override {
    if (gate.dtype == DType::BF16)
      return addNormBf16Rows(a, b, gamma, eps, sum, y, prepared,
                             rowsRead || !moeNormRowsUnwritten_);
    return addNormQuantizing(a, b, gamma, eps, sum, y, prepared, true,
                             rowsRead || !moeNormRowsUnwritten_);
  }
  /// A MoE layer's input norm leaves its F32 rows unwritten where only the
  /// router and the experts (with a shared expert in their call) read
  /// them, through what it attached (MELT_CUDA_MOE_NORM_ROWS_UNWRITTEN=0:
  /// written all the same; 67 MB a layer of mini's 8x1024 prefill, its
  /// norms 1769.5 -> 1722.0 us traced on an H200).
  bool moeNormRowsUnwritten_ =
      envSwitch("MELT_CUDA_MOE_NORM_ROWS_UNWRITTEN", true);
  /// What norms prepared of the values at these addresses
  /// (attachPrepared), for linear()'s BF16 products and the grouped FP8
  /// experts to read.
  std::unordered_map<const void *, PreparedInput> attached_;
  void attachPrepared(const void *data,
                      const PreparedInput &prepared) override {
    attached_[data] = prepared;
  }
  void detachPrepared(const void *data) override { attached_.erase(data); }
  /// What is attached to x's memory, where it is of x's rows.
  const PreparedInput *attachedTo(const DeviceTensor &x) const {
    if (attached_.empty() || x.shape.empty())
      return nullptr;
    auto it = attached_.find(x.data);
    if (it == attached_.end())
      return nullptr;
    const DeviceTensor &rows =
        it->second.q.data ? it->second.q : it->second.bf16;
    if (rows.shape != std::vector<int64_t>{x.rows(), x.cols()})
      return nullptr;
    return &it->second;
  }
  /// Whether a norm left x's rows unwritten for what it attached.
  bool rowsUnwrittenOf(const DeviceTensor &x) const {
    const PreparedInput *prepared = attachedTo(x);
    return prepared && prepared->rowsUnwritten;
  }
  /// The norm of x (with b: of x + b, written to sum) into F32 y, and y's
  /// rows quantized in 1 x 128 blocks into `prepared` (rmsNormQuantizeRowsFp8;
  /// with `withBf16`, y's rows in BF16 too; without `rowsRead`, y left
  /// unwritten where the kernel can).
  Status normQuantizingRows(const DeviceTensor &x, const DeviceTensor *b,
                            const DeviceTensor &gamma, float eps,
                            DeviceTensor *sum, DeviceTensor &y,
                            PreparedInput &prepared, bool withBf16 = false,
                            bool rowsRead = true,
                            ClaimedCombine *claimed = nullptr) {
    const int64_t rows = y.rows(), cols = y.cols();
    PreparedInput made;
    made.rowsUnwritten =
        !rowsRead && normRowsUnwritten_ && normRowsStage(int(cols));
    Status status = allocate(DType::FP8E4M3, {rows, cols}, made.q);
    if (!status)
      status = allocate(DType::F32, {cols / 128, rows}, made.scales);
    if (!status && withBf16)
      status = allocate(DType::BF16, {rows, cols}, made.bf16);
    auto norm = [&](Operand from, const Operand *addend,
                    const CombinedRows *combined) {
      return check(
          rmsNormQuantizeRowsFp8(
              from, addend, sum ? result(*sum) : Result{nullptr, false},
              operand(gamma), eps, int(rows), int(cols),
              made.rowsUnwritten ? nullptr : static_cast<float *>(y.data),
              static_cast<__nv_fp8_e4m3 *>(made.q.data),
              static_cast<float *>(made.scales.data), stream_,
              static_cast<__nv_bfloat16 *>(made.bf16.data), int(x.rowPitch),
              combined),
          "rms_norm");
    };
    if (!status) {
      const Operand bOperand = b ? operand(*b) : Operand{nullptr, false};
      status = !b ? norm(operand(x), nullptr, nullptr)
               : claimed && sum
                   ? claimed->addNorm(x, *b, *sum,
                                      [&](Operand from, Operand addend,
                                          const CombinedRows *combined) {
                                        return norm(from, &addend, combined);
                                      })
                   : norm(operand(x), &bOperand, nullptr);
    }
    if (status) {
      release(made.q);
      release(made.scales);
      release(made.bf16);
      return status;
    }
    prepared = made;
    return Status::ok();
  }
  /// A prefill's causal attention writing its output's FP8 codes for the
  /// output projection (MlaProductFusions.h; CausalOutputCodes), where the
  /// executor asks (MELT_CUDA_MLA_OUTPUT_CODES=0: off; the quantize it
  /// leaves out took 35 us a layer of mini's 8x1024 prefill, the attention
  /// 7 us more, traced on an H200).
  bool mlaOutputCodes_ = envSwitch("MELT_CUDA_MLA_OUTPUT_CODES", true);
  PreparedInput *mlaOutputInto_ = nullptr;
  bool mlaRowsRead_ = true;
  bool preparesInMla(const DeviceTensor &weight, int64_t rows) const override {
    return mlaOutputCodes_ &&
           (weight.dtype == DType::BF16 ? preparesInNorm(weight, rows)
                                        : quantizesInNorm(weight, rows));
  }
  /// Whether what was asked is BF16 rows (a BF16 product), not codes.
  bool mlaOutputBf16_ = false;
  void prepareMlaOutput(PreparedInput *into, bool rowsRead,
                        const DeviceTensor *weight) override {
    mlaOutputInto_ = into;
    mlaRowsRead_ = rowsRead;
    mlaOutputBf16_ = weight && weight->dtype == DType::BF16;
  }
  /// linearWithFp8Weight past its few-token kernel, of the rows the norm
  /// quantized: the same product of the same codes, the quantize kernel
  /// left out.
  Status linearOfPrepared(const DeviceTensor &x, const PreparedInput &prepared,
                          const DeviceTensor &w, DeviceTensor &y) override {
    // A BF16 weight: the rows in BF16 as the norm wrote them.
    if (w.dtype == DType::BF16 && prepared.bf16.data &&
        prepared.bf16.shape == std::vector<int64_t>{x.rows(), x.cols()} &&
        x.dtype == DType::F32) {
      MELT_RETURN_IF_ERROR(ready());
      MELT_RETURN_IF_ERROR(check::linear(x, w, y));
      return bf16Product(prepared.bf16.data, w, y);
    }
    const bool bf16Out =
        y.dtype == DType::BF16 && linearWritesBf16(w, x.rows());
    if (!prepared.q.data || !quantizesInNorm(w, x.rows()) ||
        prepared.q.shape != std::vector<int64_t>{x.rows(), x.cols()} ||
        x.cols() != w.shape[1] || (y.dtype != DType::F32 && !bf16Out)) {
      if (prepared.rowsUnwritten) // (x's rows were left out: none to read)
        return unwrittenRows("linear");
      return linear(x, w, y);
    }
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::linear(x, w, y));
    return fp8ProductInto(prepared.q, prepared.scales, w,
                          weightScales_.at(w.data), x.cols(), y);
  }
  /// y = the FP8 block-scaled product of codes q (1 x 128 scales qScales)
  /// and w (K `k`, w's stored K): cuBLASLt's BF16 output straight into a
  /// BF16 y, or into a block of its own widened into an F32 y.
  Status fp8ProductInto(const DeviceTensor &q, const DeviceTensor &qScales,
                        const DeviceTensor &w, const DeviceTensor &wScales,
                        int64_t k, DeviceTensor &y) {
    const int64_t m = y.rows(), n = y.cols();
    const bool bf16Out = y.dtype == DType::BF16;
    DeviceTensor out;
    if (!bf16Out)
      MELT_RETURN_IF_ERROR(allocate(DType::BF16, {m, n}, out));
    Status status = fromGemm(gemm_->fp8BlockScaled(
        static_cast<const __nv_fp8_e4m3 *>(q.data),
        static_cast<const float *>(qScales.data),
        static_cast<const __nv_fp8_e4m3 *>(w.data),
        static_cast<const float *>(wScales.data),
        static_cast<__nv_bfloat16 *>(bf16Out ? y.data : out.data), int(m),
        int(n), int(k)));
    if (!status && !bf16Out)
      status = check(
          convert({out.data, true}, size_t(m * n), {y.data, false}, stream_),
          "linear");
    if (!bf16Out)
      release(out); // stream-ordered: reused only by later work
    return status;
  }
  /// Grouped FP8 experts' gate and up products on the FP8 GEMM
  /// (groupedExperts); MELT_CUDA_FP8_EXPERT_GEMMS=0 widens them to BF16.
  bool fp8ExpertGemms_ = envSwitch("MELT_CUDA_FP8_EXPERT_GEMMS", true);
  /// One token's FP8 experts row by row (moeExpertsFp8Rowwise);
  /// MELT_CUDA_FP8_EXPERT_ROWS=0 groups them by expert on tensor cores.
  bool fp8ExpertRows_ = envSwitch("MELT_CUDA_FP8_EXPERT_ROWS", true);
  /// The device-side expert kernels write each pair's weighted output row
  /// and sum a token's rows in choice order (the same bits every run, at no
  /// measured cost); MELT_CUDA_DETERMINISTIC_EXPERTS=0 adds them into y with
  /// F32 atomics instead, whose order varies from run to run.
  bool deterministicExperts_ =
      envSwitch("MELT_CUDA_DETERMINISTIC_EXPERTS", true);
  bool fusedAddNorm_ = envSwitch("MELT_CUDA_FUSED_ADD_NORM", true);
  /// Many tokens' BF16 or FP8 experts grouped on the device, every
  /// expert's product in one launch (no wait for the host: a mini prefill
  /// of 1x1024 2.5x, 8x1024 1.2x the host's grouping on the H200);
  /// MELT_CUDA_DEVICE_GROUPING=0 groups them on the host (cuBLASLt).
  bool deviceGrouping_ = envSwitch("MELT_CUDA_DEVICE_GROUPING", true);
  /// The grouping by chunks of pairs (ExpertGrouping.h), on by default
  /// since session 24's run on the H200 (the same rows, prefill 8x1024
  /// +1.5%); MELT_CUDA_CHUNKED_GROUPING=0 for a block per expert walking
  /// every pair.
  bool chunkedGrouping_ = envSwitch("MELT_CUDA_CHUNKED_GROUPING", true);
  /// Those experts' FP8 gate and up on FP8 tensor cores (GroupedGemmFp8.h),
  /// else widened to BF16.
  bool fp8GroupedWgmma_ = envSwitch("MELT_CUDA_FP8_GROUPED_WGMMA", true);
  /// Their down product on FP8 tensor cores too, its input (the pair's
  /// SiLU-mul) quantized in 1 x 128 blocks by the pair's kernel, as
  /// DeepSeek-V3 multiplies every expert product (groupedGemmFp8); =0
  /// widens the down weights to BF16 for the pair's BF16 rows.
  bool fp8GroupedDown_ = envSwitch("MELT_CUDA_FP8_GROUPED_DOWN", true);
  /// How those grouped FP8 kernels run (GroupedFp8Options; the same bits).
  /// The down product 256 columns a block (since session 25's run: mini's
  /// 8x1024 FP8 prefill +2.5% with the producer warpgroup, the same tokens;
  /// MELT_CUDA_GROUPED_FP8_WIDE_DOWN=0: 128) and a block an SM going over
  /// the tiles (MELT_CUDA_GROUPED_FP8_PERSISTENT_DOWN=0: a block a tile;
  /// mini's down 391 against 426 us, DeepSeek-V3's 2974 against 3440). The
  /// pair a block a tile: persistent, mini's pair with FP8 output took 826
  /// against 790 us (DeepSeek-V3's 4929 against 5088;
  /// bench/results/grouped_fp8_persistent_s25_h200.txt).
  /// The grouped kernels' BF16 rows 16 bytes a lane, whole sectors a store
  /// (MELT_CUDA_GROUPED_WIDE_STORES=0: 4 bytes a lane, as the accumulator
  /// fragments hold them; the same values).
  bool groupedWideStores_ = envSwitch("MELT_CUDA_GROUPED_WIDE_STORES", true);
  GroupedFp8Options groupedFp8Down_ = {
      envSwitch("MELT_CUDA_GROUPED_FP8_WIDE_DOWN", true),
      envSwitch("MELT_CUDA_GROUPED_FP8_PERSISTENT_DOWN", true),
      groupedWideStores_};
  GroupedFp8Options groupedFp8Pair_ = {true, false, groupedWideStores_};
  bool fusedLatentAppend_ = envSwitch("MELT_CUDA_FUSED_LATENT_APPEND", false);
  /// One token's shared expert in the routed experts' kernels
  /// (fusesSharedExpert).
  bool fusedSharedExpert_ = envSwitch("MELT_CUDA_FUSED_SHARED_EXPERT", true);
  /// Many tokens' shared expert in the grouped FP8 experts' call
  /// (takesGroupedShared).
  bool groupedSharedExpert_ =
      envSwitch("MELT_CUDA_GROUPED_SHARED_EXPERT", true);

  Status embedding(const DeviceTensor &ids, const DeviceTensor &table,
                   DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::embedding(ids, table, y));
    MELT_RETURN_IF_ERROR(flags());
    embeddingRows_ = table.shape[0];
    MELT_RETURN_IF_ERROR(
        check(cuda::embedding(static_cast<const int32_t *>(ids.data),
                              int(ids.shape[0]), operand(table),
                              int(table.shape[0]), int(table.shape[1]),
                              result(y), flag_ + kEmbeddingFlag, stream_),
              "embedding"));
    // A bad id raises the flag (its row zeros, no fault), reported at the
    // next wait, as the interface says. Not waited for here: the gather of
    // a prefill's logit rows is an embedding too, and a wait there left the
    // GPU idle while the host queued the last layer's kernels one by one
    // (mini's 8x1024 prefill: ~0.8 ms). A session checks its token ids on
    // the host before the step.
    return Status::ok();
  }

  Status rope(const DeviceTensor &x, const DeviceTensor &positions,
              const RopeParams &params, DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::rope(x, positions, params, y));
    int64_t dim = x.shape.back();
    if (dim / 2 > kMaxRopePairs)
      return {MELT_UNSUPPORTED, "rope: at most " +
                                    std::to_string(2 * kMaxRopePairs) +
                                    " rotary dimensions on CUDA"};
    RopeFrequencies freqs{};
    std::vector<double> inverse = ropeInverseFrequencies(params, dim);
    std::copy(inverse.begin(), inverse.end(), freqs.inverse);
    int tokens = int(x.shape[0]);
    int rows = tokens ? int(x.numel() / dim / tokens) : 0;
    return check(cuda::rope(operand(x),
                            static_cast<const int32_t *>(positions.data),
                            tokens, rows, int(dim), params.interleaved, freqs,
                            ropeOutputScale(params), result(y), stream_),
                 "rope");
  }

  static RouterConfig routerConfigOf(const RouterParams &params) {
    return {params.sigmoid,     params.method,         int(params.topK),
            int(params.nGroup), int(params.topkGroup), params.normalize,
            params.scale};
  }

  Status routeExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                      const RouterParams &params, DeviceTensor &indices,
                      DeviceTensor &weights) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(
        check::routeExperts(logits, bias, params, indices, weights));
    if (logits.cols() > kMaxRouterExperts || params.nGroup > 64 ||
        params.topK > 64)
      return {MELT_UNSUPPORTED, "route_experts: at most " +
                                    std::to_string(kMaxRouterExperts) +
                                    " experts, 64 groups and top-64 on CUDA"};
    const RouterConfig config = routerConfigOf(params);
    return check(cuda::routeExperts(
                     static_cast<const float *>(logits.data),
                     bias ? static_cast<const float *>(bias->data) : nullptr,
                     int(logits.rows()), int(logits.cols()), config,
                     static_cast<int32_t *>(indices.data),
                     static_cast<float *>(weights.data), stream_),
                 "route_experts");
  }

  /// A few tokens' route is left to their experts' call
  /// (MELT_CUDA_ROUTE_IN_EXPERTS): where that call runs the one-token row
  /// kernels with a shared expert (BF16, or FP8 on one-wave tiles), their
  /// gate/up blocks route their token themselves (moeExpertsRowwise's and
  /// moeExpertsFp8Rowwise's `route`); other experts calls launch the route
  /// first. A route still left when another is asked for is launched then.
  Status routeInExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                        const RouterParams &params, DeviceTensor &indices,
                        DeviceTensor &weights) override {
    MELT_RETURN_IF_ERROR(launchPendingRoute());
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(
        check::routeExperts(logits, bias, params, indices, weights));
    const RouterConfig config = routerConfigOf(params);
    if (!routeInExperts_ || logits.rows() * params.topK >= groupedMinPairs_ ||
        !routesInExpertsFit(int(logits.cols()), config))
      return routeExperts(logits, bias, params, indices, weights);
    PendingRoute route;
    route.kernelArgs.logits = static_cast<const float *>(logits.data);
    route.kernelArgs.bias =
        bias ? static_cast<const float *>(bias->data) : nullptr;
    route.kernelArgs.config = config;
    route.tokens = int(logits.rows());
    route.experts = int(logits.cols());
    route.indices = static_cast<int32_t *>(indices.data);
    route.weights = static_cast<float *>(weights.data);
    pendingRoute_ = route;
    return Status::ok();
  }

  /// A route routeInExperts left to the experts call reading `indices`.
  struct PendingRoute {
    RouteInExperts kernelArgs; // the logits, bias and config
    int tokens = 0, experts = 0;
    int32_t *indices = nullptr;
    float *weights = nullptr;
  };
  /// `route`, if there is one, on its own kernel (routeExperts') now; it
  /// is then no longer held.
  Status launchRoute(std::optional<PendingRoute> &route) {
    if (!route)
      return Status::ok();
    const PendingRoute r = *route;
    route.reset();
    return check(cuda::routeExperts(r.kernelArgs.logits, r.kernelArgs.bias,
                                    r.tokens, r.experts, r.kernelArgs.config,
                                    r.indices, r.weights, stream_),
                 "route_experts");
  }
  /// The route left by routeInExperts, if one is, launched now.
  Status launchPendingRoute() { return launchRoute(pendingRoute_); }

  Status copy(const DeviceTensor &x, DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::copy(x, y));
    return check(cudaMemcpyAsync(y.data, x.data, x.bytes(),
                                 cudaMemcpyDeviceToDevice, stream_),
                 "copy");
  }

  Status slice(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::axisPart("slice", x, axis, offset, y));
    return copyAxisPart(x, axis, offset, y, false);
  }

  Status place(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::axisPart("place", y, axis, offset, x));
    return copyAxisPart(y, axis, offset, x, true);
  }

  /// The parts in one launch (gatherParts), not a copy kernel each:
  /// between two replays of mini FP8's batch-1 step 16.7 against 22.7 us
  /// (bench/results/switches_s20_h200.txt). MELT_CUDA_GATHER_PARTS=0 copies
  /// them one by one.
  bool gatherPartsKernel_ = envSwitch("MELT_CUDA_GATHER_PARTS", true);
  Status gatherParts(const std::vector<DeviceTensor> &parts, int64_t offset,
                     DeviceTensor &into) override {
    if (!gatherPartsKernel_ || parts.size() > size_t(kMaxGatheredParts) ||
        dtypeBytes(into.dtype) != 4)
      return Device::gatherParts(parts, offset, into);
    MELT_RETURN_IF_ERROR(ready());
    GatheredParts gathered;
    int64_t at = offset;
    for (const DeviceTensor &part : parts) {
      if (part.dtype != into.dtype)
        return invalidArgument("gather_parts: a part of " +
                               std::string(dtypeName(part.dtype)) + " into " +
                               dtypeName(into.dtype));
      if (at < 0 || at + part.numel() > into.numel() ||
          at + part.numel() > int64_t(UINT32_MAX))
        return invalidArgument("gather_parts: the parts end past their "
                               "tensor's " +
                               std::to_string(into.numel()) + " values");
      gathered.from[gathered.count] = part.data;
      gathered.words[gathered.count] = uint32_t(part.numel());
      gathered.offset[gathered.count] = uint32_t(at);
      ++gathered.count;
      at += part.numel();
    }
    return check(cuda::gatherParts(gathered, into.data, stream_),
                 "gather_parts");
  }

  Status cacheAppend(const DeviceTensor &first, const DeviceTensor &second,
                     const CacheLayout &layout, DeviceTensor &cache) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::cacheAppend(first, second, layout, cache));
    MELT_RETURN_IF_ERROR(flags());
    int tokens = int(first.rows()), a = int(first.cols());
    int b = int(cache.shape[1]) - a;
    Status appended =
        check(withCache(cache,
                        [&](auto *rows) {
                          return cuda::cacheAppend(
                              static_cast<const float *>(first.data),
                              static_cast<const float *>(second.data),
                              paged(layout, cache), tokens, a, b, rows,
                              flag_ + kCacheFlag, stream_);
                        }),
              "cache_append"); // a position without a page: at synchronize()
    noteCacheAppend();
    return appended;
  }

  /// Where the last cache append was launched and what joined after it:
  /// what mlaEarlyReads() tells a fused MLA decode.
  CacheAppendTracker cacheAppends_;
  void noteCacheAppend() {
    cacheAppends_.appended(overlappedLaunchCount().load(), stream_);
  }
  /// What a fused MLA decode launched now may read before its wait
  /// (CacheAppendTracker::earlyReads). Only with MELT_CUDA_MLA_EARLY_READS=1:
  /// on by default until session 34, when mini-fp8's batch-1 greedy tokens
  /// were found to differ from one session to the next with it and never
  /// without (bench/results/mla_early_reads_race_s34_h200.txt). The cause
  /// found in the trace (mla_early_reads_trace_s34_h200.txt): the query's
  /// projection runs in a side branch joined after the append, so the
  /// append was taken for the only kernel ahead while the projection could
  /// still be writing the query; the tracker now withdraws that at the
  /// join: with it the repeats agree on the H200 (session 35), but the
  /// step is no faster (1522.9 against 1531.3 tokens/s,
  /// bench/results/trigger_early_tried_s35_h200.txt), so it stays off.
  MlaEarlyReads mlaEarlyReads() const {
    return mlaEarlyReads_ ? cacheAppends_.earlyReads(
                                stream_, overlappedLaunchCount().load())
                          : MlaEarlyReads::None;
  }
  bool mlaEarlyReads_ = envSwitch("MELT_CUDA_MLA_EARLY_READS", false);

  /// BF16 where the compiler chose it and the attention runs on BF16
  /// tensor cores (half the bytes, and a decode step on MlaDecode.cu's
  /// kernel); elsewhere F32 rows (the kernels that take other shapes read
  /// F32). MELT_CUDA_BF16_LATENT_CACHE=0 (read when a model is placed on
  /// the device) keeps F32 rows, =1 BF16 ones wherever the tensor cores
  /// run. Checked on the H200 against the CPU and transformers at
  /// DeepSeek's MLA dims (golden v3-mla512: docs/CudaBackend.md).
  DType latentCacheType(const DeviceTensor &wUk,
                        DType compiled) const override {
    return envSwitch("MELT_CUDA_BF16_LATENT_CACHE", compiled == DType::BF16) &&
                   mlaTakesTensorCores(wUk)
               ? DType::BF16
               : DType::F32;
  }

  /// With MELT_CUDA_FUSED_LATENT_APPEND=1, one kernel for the three (meant
  /// bit for bit rmsNorm, rope then cacheAppend: the conformance test
  /// AppendLatentIsNormRopeThenAppend), normed and rotated left unwritten;
  /// other shapes and types, and by default, the three. Off by default: it
  /// passes its test and the sessions on the H200, but a mini decode step
  /// measured no faster with it (bench/results/latent_append_ab.txt).
  Status appendLatent(const DeviceTensor &latent, const DeviceTensor &gamma,
                      float eps, const DeviceTensor &key,
                      const DeviceTensor &positions, const RopeParams &params,
                      const CacheLayout &layout, DeviceTensor &normed,
                      DeviceTensor &rotated, DeviceTensor &cache) override {
    const int64_t ropeDim = key.shape.empty() ? 0 : key.shape.back();
    if (!fusedLatentAppend_ || key.shape.size() != 2 ||
        normed.dtype != DType::F32 || rotated.dtype != DType::F32 ||
        ropeDim / 2 > kMaxRopePairs || cache.shape.size() != 2 ||
        cache.shape[1] != latent.cols() + ropeDim)
      return Device::appendLatent(latent, gamma, eps, key, positions, params,
                                  layout, normed, rotated, cache);
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::rmsNorm(latent, gamma, normed));
    MELT_RETURN_IF_ERROR(check::rope(key, positions, params, rotated));
    MELT_RETURN_IF_ERROR(check::cacheAppend(normed, rotated, layout, cache));
    MELT_RETURN_IF_ERROR(flags());
    RopeFrequencies freqs{};
    std::vector<double> inverse = ropeInverseFrequencies(params, ropeDim);
    std::copy(inverse.begin(), inverse.end(), freqs.inverse);
    Status appended = check(
        withCache(cache,
                  [&](auto *rows) {
                    return cuda::appendLatent(
                        operand(latent), operand(gamma), eps,
                        int(latent.cols()), operand(key),
                        static_cast<const int32_t *>(positions.data),
                        int(ropeDim), params.interleaved, freqs,
                        ropeOutputScale(params), paged(layout, cache),
                        int(latent.rows()), rows, flag_ + kCacheFlag, stream_);
                  }),
        "append_latent"); // a position without a page: at synchronize()
    noteCacheAppend();
    return appended;
  }

  Status attention(const DeviceTensor &q, const DeviceTensor &cache,
                   const CacheLayout &layout, int64_t kvHeads, bool causal,
                   float scale, DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::attention(q, cache, layout, kvHeads, out));
    MELT_RETURN_IF_ERROR(flags());
    int maxVisible = int(layout.pages.shape[1] * kPageTokens);
    if (2 * size_t(maxVisible) * sizeof(float) > 200 * 1024)
      return {MELT_UNSUPPORTED, "attention: " + std::to_string(maxVisible) +
                                    " cached tokens are beyond the F32 kernel"};
    return check(attentionF32(static_cast<const float *>(q.data),
                              static_cast<const float *>(cache.data),
                              paged(layout, cache), int(q.shape[0]),
                              int(q.shape[1]), int(kvHeads), int(q.shape[2]),
                              int(out.shape[2]), causal, maxVisible, scale,
                              static_cast<float *>(out.data),
                              flag_ + kCacheFlag, stream_),
                 "attention");
  }

  Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
             const DeviceTensor &cache, const CacheLayout &layout,
             const DeviceTensor &wUk, const DeviceTensor &wUv, float scale,
             int64_t decompressAbove, DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(
        check::mla(qNope, qRope, cache, layout, wUk, wUv, out));
    MELT_RETURN_IF_ERROR(flags());
    int latent = int(wUk.shape[2]);
    int maxVisible = int(layout.pages.shape[1] * kPageTokens);
    MlaSplitShape shape{int(qNope.shape[0]),
                        int(qNope.shape[1]),
                        int(qNope.shape[2]),
                        int(qRope.shape[2]),
                        latent,
                        int(wUv.shape[1]),
                        maxVisible};
    const bool perHead = mlaPerHead(wUk);
    const bool tensorCores = mlaTakesTensorCores(wUk);
    if (takesDecompressedForm(wUk, shape, decompressAbove)) {
      bool taken = false;
      MELT_RETURN_IF_ERROR(mlaDecompressedForm(qNope, qRope, cache, layout, wUk,
                                               wUv, shape, scale,
                                               decompressAbove, out, taken));
      if (taken)
        return Status::ok();
    }
    if (tensorCores && !perHead && mlaTensorCoresFit(shape) &&
        shape.tokens >= 16 * layout.pages.shape[0])
      return mlaOnTensorCores(qNope, qRope, cache, layout, wUk, wUv, shape,
                              scale, out);
    if (cache.dtype == DType::BF16 && bf16DecodeKernel_ &&
        mlaDecodeStepFits(shape) && isDecodeStep(layout, shape.tokens))
      return mlaDecodeStepForm(static_cast<const float *>(qNope.data),
                               static_cast<const float *>(qRope.data), cache,
                               layout, wUk, wUv, shape, scale, out);
    if (!perHead && mlaSplitFits(shape))
      return mlaInChunks(qNope, qRope, cache, layout, wUk, wUv, shape, scale,
                         out);
    if (cache.dtype != DType::F32)
      return {MELT_UNSUPPORTED, "mla: a " +
                                    std::string(dtypeName(cache.dtype)) +
                                    " latent cache at these shapes"};
    if (mlaF32SharedBytes(latent, maxVisible) > 200 * 1024)
      return {MELT_UNSUPPORTED, "mla: " + std::to_string(maxVisible) +
                                    " cached tokens are beyond the F32 kernel"};
    return check(
        mlaF32(static_cast<const float *>(qNope.data),
               static_cast<const float *>(qRope.data),
               static_cast<const float *>(cache.data), paged(layout, cache),
               static_cast<const float *>(wUk.data),
               static_cast<const float *>(wUv.data), int(qNope.shape[0]),
               int(qNope.shape[1]), int(qNope.shape[2]), int(qRope.shape[2]),
               latent, int(wUv.shape[1]), maxVisible, scale,
               static_cast<float *>(out.data), flag_ + kCacheFlag, stream_),
        "mla");
  }

  /// Whether a prefill's MLA (16 query rows a sequence or more) runs on
  /// tensor cores in BF16: where the compiler chose it (BF16 attention),
  /// or where asked.
  bool mlaTakesTensorCores(const DeviceTensor &wUk) const {
    const KernelPlan *plan = planOf(wUk);
    return mlaTensorCores_ == 1 ||
           (mlaTensorCores_ < 0 && plan && plan->variant == 3);
  }
  /// Whether melt-select-kernels planned the MLA per head.
  bool mlaPerHead(const DeviceTensor &wUk) const {
    const KernelPlan *plan = planOf(wUk);
    return plan && plan->variant == 2;
  }
  /// Whether mla() tries the decompressed form: a long prefill with K and
  /// V per head where the compiler's cost model asks for it and the
  /// attention is BF16 (MELT_CUDA_MLA_DECOMPRESSED=0: never): TF32 or
  /// BF16 products, the attention in one BF16 kernel. An F32 attention
  /// stays absorbed, in F32.
  bool takesDecompressedForm(const DeviceTensor &wUk,
                             const MlaSplitShape &shape,
                             int64_t decompressAbove) const {
    return mlaDecompressed_ && mlaTakesTensorCores(wUk) && !capturing_ &&
           !mlaPerHead(wUk) && shape.tokens > decompressAbove &&
           mlaDecompressedFits(shape);
  }

  /// A decode step's MLA over a BF16 latent cache reads q_nope and rotates
  /// q_rope from the query projection in its absorb kernel (the split's two
  /// copies and the rope left out; the same bits): mini FP8's batch-1 step
  /// 746.1 against 754.1 us (bench/results/switches_s20_h200.txt).
  /// MELT_CUDA_FUSED_MLA_QUERY=0 declines it.
  bool fusedMlaQuery_ = envSwitch("MELT_CUDA_FUSED_MLA_QUERY", true);
  bool fusesMlaQuery() const override { return fusedMlaQuery_; }
  Status mlaOfQuery(const DeviceTensor &q, int64_t nope,
                    const DeviceTensor &positions, const RopeParams &rope,
                    const DeviceTensor &cache, const CacheLayout &layout,
                    const DeviceTensor &wUk, const DeviceTensor &wUv,
                    float scale, int64_t decompressAbove,
                    DeviceTensor &out) override {
    const int64_t ropeDim = q.shape.size() == 3 && nope > 0 && nope < q.shape[2]
                                ? q.shape[2] - nope
                                : 0;
    // Where mla() would take the decode step's form (a decode step: no
    // prefill form applies to its one token a sequence). Its absorb kernel
    // reads a BF16 projection too (mlaOfQueryReadsBf16: a batch of 16 or
    // 64 writes q_b in BF16).
    bool taken = fusedMlaQuery_ && ropeDim > 0 && ropeDim % 2 == 0 &&
                 ropeDim / 2 <= kMaxRopePairs &&
                 (q.dtype == DType::F32 || q.dtype == DType::BF16) &&
                 positions.dtype == DType::I32 && cache.dtype == DType::BF16 &&
                 bf16DecodeKernel_ && wUk.shape.size() == 3 &&
                 wUv.shape.size() == 3 && layout.pages.shape.size() == 2 &&
                 isDecodeStep(layout, int(q.shape[0]));
    MlaSplitShape shape{};
    if (taken) {
      shape = mlaShapeOfQuery(q, nope, ropeDim, wUk, wUv, layout);
      taken = mlaDecodeStepFits(shape) && wUk.shape[0] == q.shape[1] &&
              wUk.shape[1] == nope && cache.shape.size() == 2 &&
              cache.shape[1] == wUk.shape[2] + ropeDim &&
              out.dtype == DType::F32 &&
              out.shape ==
                  std::vector<int64_t>{q.shape[0], q.shape[1], wUv.shape[1]};
    }
    if (!taken) {
      bool prefillTaken = false;
      MELT_RETURN_IF_ERROR(prefillMlaOfQuery(
          q, nope, ropeDim, positions, rope, cache, layout, wUk, wUv, scale,
          decompressAbove, out, prefillTaken));
      if (prefillTaken)
        return Status::ok();
      if (q.dtype != DType::BF16)
        return Device::mlaOfQuery(q, nope, positions, rope, cache, layout, wUk,
                                  wUv, scale, decompressAbove, out);
      // A BF16 projection (mlaOfQueryReadsBf16) where the prefill's form
      // does not apply: its F32 values, then the calls apart.
      DeviceTensor wide;
      MELT_RETURN_IF_ERROR(allocate(DType::F32, q.shape, wide));
      Status status = check(
          convert(operand(q), size_t(q.numel()), result(wide), stream_), "mla");
      if (!status)
        status = Device::mlaOfQuery(wide, nope, positions, rope, cache, layout,
                                    wUk, wUv, scale, decompressAbove, out);
      release(wide); // stream-ordered: reused only by later work
      return status;
    }
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(flags());
    ProjectedQuery projected;
    projected.q = q.data;
    projected.bf16 = q.dtype == DType::BF16;
    projected.positions = static_cast<const int32_t *>(positions.data);
    projected.interleaved = rope.interleaved;
    std::vector<double> inverse = ropeInverseFrequencies(rope, ropeDim);
    std::copy(inverse.begin(), inverse.end(), projected.freqs.inverse);
    projected.mscale = ropeOutputScale(rope);
    return mlaDecodeStepForm(nullptr, nullptr, cache, layout, wUk, wUv, shape,
                             scale, out, &projected);
  }

  /// The MLA's shape for a query [T, H, nope + ropeDim] (3-D weights, a
  /// 2-D page table: the caller checked).
  static MlaSplitShape mlaShapeOfQuery(const DeviceTensor &q, int64_t nope,
                                       int64_t ropeDim, const DeviceTensor &wUk,
                                       const DeviceTensor &wUv,
                                       const CacheLayout &layout) {
    return MlaSplitShape{int(q.shape[0]),
                         int(q.shape[1]),
                         int(nope),
                         int(ropeDim),
                         int(wUk.shape[2]),
                         int(wUv.shape[1]),
                         int(layout.pages.shape[1] * kPageTokens)};
  }

  /// A long prefill's MLA in the decompressed form with the query as the
  /// projection leaves it: the attention kernel splits it and rotates its
  /// rope part as it reads it (CausalProjectedQuery; the split's two copies
  /// and the rope kernel left out, the same bits). On by default
  /// (MELT_CUDA_PREFILL_MLA_QUERY=0 off): mini's 8x1024 FP8 prefill +3%,
  /// its tokens the same (bench/results/prefill_mla_query_ab_s25_h200.txt).
  /// `taken` false: nothing ran, the caller splits.
  Status prefillMlaOfQuery(const DeviceTensor &q, int64_t nope, int64_t ropeDim,
                           const DeviceTensor &positions,
                           const RopeParams &rope, const DeviceTensor &cache,
                           const CacheLayout &layout, const DeviceTensor &wUk,
                           const DeviceTensor &wUv, float scale,
                           int64_t decompressAbove, DeviceTensor &out,
                           bool &taken) {
    taken = false;
    CausalProjectedQuery projected;
    if (!prefillMlaQuery_ || !rope.interleaved ||
        (q.dtype != DType::F32 && q.dtype != DType::BF16) ||
        q.shape.size() != 3 ||
        ropeDim != 2 * int64_t(std::size(projected.inverse)) ||
        positions.dtype != DType::I32 || positions.numel() != q.shape[0] ||
        wUk.shape.size() != 3 || wUv.shape.size() != 3 ||
        layout.pages.shape.size() != 2)
      return Status::ok();
    // The parts' shapes, for mla()'s checks (their memory is q's: unread).
    DeviceTensor qNope = q, qRope = q;
    qNope.shape = {q.shape[0], q.shape[1], nope};
    qRope.shape = {q.shape[0], q.shape[1], ropeDim};
    qNope.dtype = qRope.dtype = DType::F32;
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(
        check::mla(qNope, qRope, cache, layout, wUk, wUv, out));
    const MlaSplitShape shape =
        mlaShapeOfQuery(q, nope, ropeDim, wUk, wUv, layout);
    if (!takesDecompressedForm(wUk, shape, decompressAbove) ||
        !mlaDecompressedFusesBf16(shape))
      return Status::ok();
    MELT_RETURN_IF_ERROR(flags());
    if (q.dtype == DType::BF16)
      projected.qBf16 = static_cast<const __nv_bfloat16 *>(q.data);
    else
      projected.q = static_cast<const float *>(q.data);
    projected.positions = static_cast<const int32_t *>(positions.data);
    const std::vector<double> inverse = ropeInverseFrequencies(rope, ropeDim);
    std::copy(inverse.begin(), inverse.end(), projected.inverse);
    projected.mscale = ropeOutputScale(rope);
    return mlaDecompressedForm(qNope, qRope, cache, layout, wUk, wUv, shape,
                               scale, decompressAbove, out, taken, &projected);
  }
  /// prefillMlaOfQuery (MELT_CUDA_PREFILL_MLA_QUERY=0 off), and with it the
  /// query projection in BF16 where it is written so (the prefill's form
  /// reads it; elsewhere mlaOfQuery widens it first).
  bool prefillMlaQuery_ = envSwitch("MELT_CUDA_PREFILL_MLA_QUERY", true);
  bool mlaOfQueryReadsBf16() const override { return prefillMlaQuery_; }

  Status quantizeBlocks(const DeviceTensor &x, int64_t block, DeviceTensor &q,
                        DeviceTensor &scales) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::quantizeBlocks(x, block, q, scales));
    return check(
        cuda::quantizeBlocks(static_cast<const float *>(x.data),
                             int(x.shape[0]), int(x.shape[1]), int(block),
                             static_cast<uint8_t *>(q.data),
                             static_cast<float *>(scales.data), stream_),
        "quantize_blocks");
  }

  Status dequantizeBlocks(const DeviceTensor &q, const DeviceTensor &scales,
                          int64_t block, DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::quantizeBlocks(y, block, q, scales));
    return check(cuda::dequantizeBlocks(static_cast<const uint8_t *>(q.data),
                                        static_cast<const float *>(scales.data),
                                        int(q.shape[0]), int(q.shape[1]),
                                        int(block),
                                        static_cast<float *>(y.data), stream_),
                 "dequantize_blocks");
  }

  Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                    const DeviceTensor &weights, const DeviceTensor &gate,
                    const DeviceTensor &up, const DeviceTensor &down,
                    bool combineBf16, DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(launchPendingRoute());
    return experts(x, indices, weights, gate, up, down, combineBf16, false, y);
  }

  /// One token's FP8 experts row by row quantize x as they stage it (the
  /// pair's two kernels left out); more tokens run the pair first.
  bool quantizesExpertInput(const DeviceTensor &gate) const override {
    return gate.dtype == DType::FP8E4M3 && fp8ExpertRows_;
  }
  Status moeExpertsOfQuantized(const DeviceTensor &x,
                               const DeviceTensor &indices,
                               const DeviceTensor &weights,
                               const DeviceTensor &gate, const DeviceTensor &up,
                               const DeviceTensor &down, bool combineBf16,
                               DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(launchPendingRoute());
    if (x.shape.size() == 2 && gate.shape.size() == 3 &&
        takesFp8Rows(gate.dtype, x.shape[0], gate.shape[1], x.shape[1]))
      return experts(x, indices, weights, gate, up, down, combineBf16, true, y);
    // Grouped on FP8 tensor cores, x is quantized per token in 1 x 128
    // blocks there anyway (quantizeRowsFp8): x itself, not the pair's
    // round trip first (two kernels over x, 0.35 ms of mini's 8x1024
    // prefill; the codes the same up to v / s against v * (1 / s)).
    if (x.shape.size() == 2 && gate.shape.size() == 3 &&
        indices.shape.size() == 2 &&
        groupsOnFp8TensorCores(gate.dtype, indices.shape[0] * indices.shape[1],
                               int(gate.shape[0]), int(gate.shape[1]),
                               int(x.shape[1])))
      return experts(x, indices, weights, gate, up, down, combineBf16, false,
                     y);
    return Device::moeExpertsOfQuantized(x, indices, weights, gate, up, down,
                                         combineBf16, y);
  }

  /// One token's shared expert as one more expert of the FP8 row-by-row
  /// kernels (MELT_CUDA_FUSED_SHARED_EXPERT=0: its three FP8 products, on a
  /// stream of their own, and the add): FP8 weights of one intermediate
  /// size, each with its block scales.
  bool fusesSharedExpert(const DeviceTensor &gate, const SharedExpert &shared,
                         int64_t tokens) const override {
    if (!fusedSharedExpert_ || gate.shape.size() != 3 || !shared.gate ||
        !shared.up || !shared.down)
      return false;
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    const int64_t D = gate.shape[2];
    if (gate.dtype == DType::BF16)
      return takesBf16SharedRows(gate, shared, tokens) ||
             takesGroupedShared(gate, shared, tokens);
    if (takesGroupedShared(gate, shared, tokens))
      return true;
    return takesFp8Rows(gate.dtype, tokens, gate.shape[1], D) &&
           sharedFp8Shapes(gate, shared) &&
           moeFp8RowwiseFits(int(g.shape[0]), int(D));
  }
  /// FP8 block-scaled shared weights of one intermediate size, gate/up
  /// [inter, D] and down [D, inter] for routed stacks of hidden size D.
  bool sharedFp8Shapes(const DeviceTensor &gate,
                       const SharedExpert &shared) const {
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    const int64_t D = gate.shape[2];
    auto fp8Blocks = [&](const DeviceTensor &w) {
      return w.dtype == DType::FP8E4M3 && w.shape.size() == 2 &&
             weightScales_.count(w.data);
    };
    return fp8Blocks(g) && fp8Blocks(u) && fp8Blocks(d) && g.shape == u.shape &&
           g.shape[1] == D && d.shape[0] == D && d.shape[1] == g.shape[0];
  }
  /// The K an FP8 weight is stored with (its own, or padded: paddedK_).
  int64_t storedK(const DeviceTensor &w) const {
    auto padded = paddedK_.find(w.data);
    return padded == paddedK_.end() ? w.shape[1] : padded->second;
  }
  /// Many tokens' shared expert taken into the grouped FP8 experts' call
  /// (groupedExpertsOnDevice with a shared expert): x quantized once for
  /// the routed experts and the shared gate and up products, the SiLU-mul
  /// quantized from their BF16 outputs as they are, and the shared down
  /// product's BF16 output added by the combine: the values of the calls
  /// apart (the linears each quantizing x again, each BF16 output widened
  /// to F32, the add of the two) without those kernels. `tokens` is the
  /// least the (token, choice) pairs can be.
  bool takesGroupedShared(const DeviceTensor &gate, const SharedExpert &shared,
                          int64_t tokens) const {
    if (gate.dtype == DType::BF16)
      return takesGroupedBf16Shared(gate, shared, tokens);
    if (!groupedSharedExpert_ || gate.dtype != DType::FP8E4M3 ||
        gate.shape.size() != 3 || !sharedFp8Shapes(gate, shared))
      return false;
    const int64_t E = gate.shape[0], I = gate.shape[1], D = gate.shape[2];
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    return fp8GroupedWgmma_ &&
           groupsOnFp8TensorCores(gate.dtype, tokens, int(E), int(I), int(D)) &&
           storedK(g) == D && storedK(u) == D && cublasLtTakesK(D) &&
           cublasLtTakesK(storedK(d)) && g.shape[0] % 16 == 0;
  }
  /// BF16 stacks grouped on the device for these tokens, with a BF16 shared
  /// expert: its gate, up and down products on cuBLASLt from x's BF16 rows
  /// (their outputs BF16 where the linears round them, F32 where not: the
  /// bf16 policy's), the SiLU-mul written in BF16, the add left to the
  /// combine (no add kernel, and x's F32 rows unread). (Until session 44
  /// it took only rounded products, which the bf16 policy's linears are
  /// not: that policy's shared experts ran apart.)
  bool takesGroupedBf16Shared(const DeviceTensor &gate,
                              const SharedExpert &shared,
                              int64_t tokens) const {
    if (!groupedSharedExpert_ || !bf16InputRows_ || gate.shape.size() != 3)
      return false;
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    auto bf16Matrix = [](const DeviceTensor &w) {
      return w.dtype == DType::BF16 && w.shape.size() == 2;
    };
    const int64_t E = gate.shape[0], I = gate.shape[1], D = gate.shape[2];
    return bf16Matrix(g) && bf16Matrix(u) && bf16Matrix(d) &&
           g.shape == u.shape && g.shape[1] == D && d.shape[0] == D &&
           d.shape[1] == g.shape[0] && !takesSmallMGemm(g, tokens) &&
           groupsMany(gate.dtype, tokens, int(E), int(I), int(D));
  }
  /// K that GemmRunner::fp8BlockScaled multiplies on cuBLASLt (beyond its
  /// small-M kernel): 128-blocks of K in fours.
  static bool cublasLtTakesK(int64_t k) { return k > 0 && k % 512 == 0; }
  /// One token's BF16 routed experts with their shared expert in the row
  /// kernels (moeExpertsRowwise with a shared expert): mini bf16's batch-1
  /// step 828.8 against 832.5 us (bench/results/switches_s20_h200.txt).
  /// MELT_CUDA_FUSED_SHARED_EXPERT_BF16=0 declines it.
  bool fusedSharedExpertBf16_ =
      envSwitch("MELT_CUDA_FUSED_SHARED_EXPERT_BF16", true);
  bool takesBf16SharedRows(const DeviceTensor &gate, const SharedExpert &shared,
                           int64_t tokens) const {
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    const int64_t D = gate.shape[2];
    auto bf16Matrix = [](const DeviceTensor &w) {
      return w.dtype == DType::BF16 && w.shape.size() == 2;
    };
    // One token: experts() takes the row kernels for it.
    return fusedSharedExpertBf16_ && tokens == 1 && bf16Matrix(g) &&
           bf16Matrix(u) && bf16Matrix(d) && g.shape == u.shape &&
           g.shape[1] == D && d.shape[0] == D && d.shape[1] == g.shape[0];
  }
  Status moeExpertsWithShared(const DeviceTensor &x,
                              const DeviceTensor &indices,
                              const DeviceTensor &weights,
                              const DeviceTensor &gate, const DeviceTensor &up,
                              const DeviceTensor &down, bool combineBf16,
                              bool quantizedX, const SharedExpert &shared,
                              DeviceTensor &y) override {
    // The route left for these choices goes to the one-token row kernels,
    // which make it themselves; every other path launches it first.
    std::optional<PendingRoute> route;
    if (pendingRoute_ && pendingRoute_->indices == indices.data)
      route.swap(pendingRoute_);
    MELT_RETURN_IF_ERROR(launchPendingRoute());
    auto routeFirst = [&] { return launchRoute(route); };
    if (x.shape.size() != 2 || !fusesSharedExpert(gate, shared, x.shape[0])) {
      MELT_RETURN_IF_ERROR(routeFirst());
      return Device::moeExpertsWithShared(x, indices, weights, gate, up, down,
                                          combineBf16, quantizedX, shared, y);
    }
    if (takesGroupedShared(gate, shared, x.shape[0]) &&
        indices.shape.size() == 2) {
      MELT_RETURN_IF_ERROR(routeFirst());
      // (x is quantized by the grouping whether or not `quantizedX`: as
      // moeExpertsOfQuantized hands it x itself.)
      ExpertStacks stacks;
      MELT_RETURN_IF_ERROR(
          startExperts(x, indices, weights, gate, up, down, y, stacks));
      return groupedExpertsOnDevice(x, indices, weights, gate, up, down, stacks,
                                    combineBf16, y, &shared);
    }
    if (rowsUnwrittenOf(x))
      return unwrittenRows("moe_experts");
    if (gate.dtype == DType::BF16)
      return bf16ExpertsWithShared(x, indices, weights, gate, up, down,
                                   combineBf16, shared, y, route);
    MELT_RETURN_IF_ERROR(ready());
    ExpertStacks stacks;
    MELT_RETURN_IF_ERROR(expertStacks(gate, up, down, stacks));
    MELT_RETURN_IF_ERROR(
        check::moeExperts(x, indices, weights, gate, up, down, y));
    SharedFp8Expert sharedExpert;
    MELT_RETURN_IF_ERROR(expertStacks(*shared.gate, *shared.up, *shared.down,
                                      sharedExpert.stacks));
    sharedExpert.inter = int(shared.gate->shape[0]);
    sharedExpert.gateUpStride = int(storedK(*shared.gate));
    sharedExpert.downStride = int(storedK(*shared.down));
    if (storedK(*shared.up) != sharedExpert.gateUpStride) {
      MELT_RETURN_IF_ERROR(routeFirst());
      return Device::moeExpertsWithShared(x, indices, weights, gate, up, down,
                                          combineBf16, quantizedX, shared, y);
    }
    // The FP8 kernels route in their one-wave gate/up tiles only.
    if (!moeRowsOnTiles_ || !moeTilesOneWave_)
      MELT_RETURN_IF_ERROR(routeFirst());
    MELT_RETURN_IF_ERROR(flags());
    const int T = int(x.shape[0]), K = int(indices.shape[1]),
              E = int(gate.shape[0]), I = int(gate.shape[1]),
              D = int(x.shape[1]);
    // The routed pairs, then a shared one per token.
    CallScratch held(*this);
    float *pairRows = nullptr, *scratch = nullptr;
    MELT_RETURN_IF_ERROR(rowKernelBuffers(int64_t(T) * (K + 1), D,
                                          std::max(I, sharedExpert.inter), held,
                                          pairRows, scratch));
    // (A bad expert index: at synchronize().)
    return check(moeExpertsFp8Rowwise(
                     static_cast<const float *>(x.data),
                     static_cast<const int32_t *>(indices.data),
                     static_cast<const float *>(weights.data), stacks, T, K, E,
                     I, D, combineBf16, quantizedX, scratch,
                     static_cast<float *>(y.data), flag_ + kExpertFlag, stream_,
                     pairRows, &sharedExpert, moeRowsOnTiles_, moeTilesOneWave_,
                     route ? &route->kernelArgs : nullptr),
                 "moe_experts");
  }

  /// moeExpertsWithShared for one token's BF16 experts (takesBf16SharedRows).
  Status bf16ExpertsWithShared(const DeviceTensor &x,
                               const DeviceTensor &indices,
                               const DeviceTensor &weights,
                               const DeviceTensor &gate, const DeviceTensor &up,
                               const DeviceTensor &down, bool combineBf16,
                               const SharedExpert &shared, DeviceTensor &y,
                               std::optional<PendingRoute> &route) {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(
        check::moeExperts(x, indices, weights, gate, up, down, y));
    // (As experts() does: many pairs are grouped, never the rows.)
    if (indices.shape[0] * indices.shape[1] >= groupedMinPairs_) {
      MELT_RETURN_IF_ERROR(launchRoute(route));
      return Device::moeExpertsWithShared(x, indices, weights, gate, up, down,
                                          combineBf16, false, shared, y);
    }
    MELT_RETURN_IF_ERROR(flags());
    SharedRowsExpert rows;
    rows.gate = shared.gate->data;
    rows.up = shared.up->data;
    rows.down = shared.down->data;
    rows.inter = int(shared.gate->shape[0]);
    rows.roundGateUp = shared.roundGateUp;
    rows.roundDown = shared.roundDown;
    const int T = int(x.shape[0]), K = int(indices.shape[1]),
              E = int(gate.shape[0]), I = int(gate.shape[1]),
              D = int(x.shape[1]);
    CallScratch held(*this);
    float *pairRows = nullptr, *scratch = nullptr;
    MELT_RETURN_IF_ERROR(rowKernelBuffers(int64_t(T) * (K + 1), D,
                                          std::max(I, rows.inter), held,
                                          pairRows, scratch));
    return check(moeExpertsRowwise(
                     static_cast<const float *>(x.data),
                     static_cast<const int32_t *>(indices.data),
                     static_cast<const float *>(weights.data), gate.data,
                     up.data, down.data, true, T, K, E, I, D, combineBf16,
                     scratch, static_cast<float *>(y.data), flag_ + kExpertFlag,
                     stream_, pairRows, &rows, moeRowsGateUpTogether_,
                     moeRowsDownPairs_, route ? &route->kernelArgs : nullptr),
                 "moe_experts");
  }

  /// Whether T tokens of experts (intermediate I, hidden D) run on the FP8
  /// row-by-row kernels.
  bool takesFp8Rows(DType stacks, int64_t T, int64_t I, int64_t D) const {
    return stacks == DType::FP8E4M3 && T == 1 && fp8ExpertRows_ &&
           moeFp8RowwiseFits(int(I), int(D));
  }

  /// What an experts call does first: the device usable, the stacks and
  /// operands checked, the error flags ready.
  Status startExperts(const DeviceTensor &x, const DeviceTensor &indices,
                      const DeviceTensor &weights, const DeviceTensor &gate,
                      const DeviceTensor &up, const DeviceTensor &down,
                      const DeviceTensor &y, ExpertStacks &stacks) {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(expertStacks(gate, up, down, stacks));
    MELT_RETURN_IF_ERROR(
        check::moeExperts(x, indices, weights, gate, up, down, y));
    return flags();
  }

  /// moeExperts, of x quantized in 1 x 128 blocks first where `quantizeX`
  /// (only on the FP8 row-by-row kernels).
  Status experts(const DeviceTensor &x, const DeviceTensor &indices,
                 const DeviceTensor &weights, const DeviceTensor &gate,
                 const DeviceTensor &up, const DeviceTensor &down,
                 bool combineBf16, bool quantizeX, DeviceTensor &y) {
    ExpertStacks stacks;
    MELT_RETURN_IF_ERROR(
        startExperts(x, indices, weights, gate, up, down, y, stacks));
    int64_t pairs = indices.shape[0] * indices.shape[1];
    // (Only grouped on the device do they read what is attached in place
    // of x's rows: on FP8 tensor cores its codes, BF16 stacks its BF16
    // rows.)
    if (rowsUnwrittenOf(x) &&
        !groupsOnFp8TensorCores(gate.dtype, pairs, int(gate.shape[0]),
                                int(gate.shape[1]), int(x.shape[1])) &&
        !(gate.dtype == DType::BF16 && attachedTo(x)->bf16.data && !quantizeX &&
          groupsMany(gate.dtype, pairs, int(gate.shape[0]), int(gate.shape[1]),
                     int(x.shape[1]))))
      return unwrittenRows("moe_experts");
    if (!quantizeX && groupsMany(gate.dtype, pairs, int(gate.shape[0]),
                                 int(gate.shape[1]), int(x.shape[1])))
      return groupedExpertsOnDevice(x, indices, weights, gate, up, down, stacks,
                                    combineBf16, y);
    // (Grouping reads the choices back: not while recording a graph.)
    if (pairs >= groupedMinPairs_ && !capturing_ && !quantizeX)
      return groupedExperts(x, indices, weights, gate, up, down, stacks,
                            combineBf16, y);
    const int T = int(x.shape[0]), K = int(indices.shape[1]),
              E = int(gate.shape[0]), I = int(gate.shape[1]),
              D = int(x.shape[1]);
    // Each pair's weighted output row, where the sums are to be the same
    // bits every run (deterministicExperts_); released after the kernels
    // (stream-ordered: reused only by later work).
    DeviceTensor pairRows;
    if (deterministicExperts_)
      MELT_RETURN_IF_ERROR(allocate(DType::F32, {pairs, D}, pairRows));
    float *rows = static_cast<float *>(pairRows.data);
    Status launched =
        moeExpertsOnDevice(x, indices, weights, gate, up, down, stacks,
                           combineBf16, quantizeX, T, K, E, I, D, rows, y);
    if (pairRows.data)
      release(pairRows);
    return launched; // a bad expert index: at synchronize()
  }

  /// Scratch tensors of one call, released when it returns (stream-ordered:
  /// reused only by work queued later).
  class CallScratch {
  public:
    explicit CallScratch(CudaDevice &device) : device_(device) {}
    CallScratch(const CallScratch &) = delete;
    CallScratch &operator=(const CallScratch &) = delete;
    ~CallScratch() {
      for (DeviceTensor &t : held_)
        device_.release(t);
    }
    Status take(DType type, std::vector<int64_t> shape, DeviceTensor &t) {
      MELT_RETURN_IF_ERROR(device_.allocate(type, std::move(shape), t));
      held_.push_back(t);
      return Status::ok();
    }
    /// At least `bytes` bytes (a kernel's untyped scratch).
    Status takeBytes(size_t bytes, DeviceTensor &t) {
      return take(DType::I32, {int64_t((bytes + 3) / 4)}, t);
    }

  private:
    CudaDevice &device_;
    std::vector<DeviceTensor> held_;
  };

  /// The row kernels' buffers for `pairs` (token, expert) pairs: each
  /// pair's weighted output row where the sums are to be the same bits
  /// every run (deterministicExperts_; else null), and its `inter`
  /// activations; released with `held`.
  Status rowKernelBuffers(int64_t pairs, int64_t dim, int64_t inter,
                          CallScratch &held, float *&pairRows,
                          float *&activations) {
    DeviceTensor rows, act;
    pairRows = nullptr;
    if (deterministicExperts_) {
      MELT_RETURN_IF_ERROR(held.take(DType::F32, {pairs, dim}, rows));
      pairRows = static_cast<float *>(rows.data);
    }
    MELT_RETURN_IF_ERROR(held.take(DType::F32, {pairs, inter}, act));
    activations = static_cast<float *>(act.data);
    return Status::ok();
  }

  /// The grouped products (BF16, and FP8 on FP8 tensor cores) leave each
  /// group's padding rows out: not written, and no products by a
  /// warpgroup whose 64 rows are all padding
  /// (MELT_CUDA_GROUPED_SKIP_PADDING=0: every row of a group's tiles).
  bool groupedSkipsPadding_ = envSwitch("MELT_CUDA_GROUPED_SKIP_PADDING", true);

  /// Whether many tokens' experts are grouped on the device
  /// (deviceGrouping_): BF16 or FP8 stacks whose sizes the
  /// grouped product takes.
  bool groupsOnDevice(DType stacks, int E, int I, int D) const {
    return deviceGrouping_ &&
           (stacks == DType::BF16 || stacks == DType::FP8E4M3) &&
           E <= kMaxGroupedExperts && I % 128 == 0 && D % 128 == 0;
  }
  /// Whether experts() groups these `pairs` (tokens x choices) on the
  /// device (groupedExpertsOnDevice). (A recorded decode step keeps its row
  /// kernels: groups padded to 128 rows would be mostly padding at a few
  /// tokens an expert.)
  bool groupsMany(DType stacks, int64_t pairs, int E, int I, int D) const {
    return pairs >= groupedMinPairs_ && !capturing_ &&
           groupsOnDevice(stacks, E, I, D);
  }
  /// Whether they are FP8 stacks grouped so and multiplied on FP8 tensor
  /// cores, x quantized per token in 1 x 128 blocks by the grouping.
  bool groupsOnFp8TensorCores(DType stacks, int64_t pairs, int E, int I,
                              int D) const {
    return stacks == DType::FP8E4M3 && fp8GroupedWgmma_ &&
           groupsMany(stacks, pairs, E, I, D);
  }

  /// moeExperts for many tokens without the host: the choices grouped on
  /// the device (ExpertGrouping.h), the rows gathered in BF16, gate and up
  /// as one launch for every expert that writes SiLU(gate) * up, the down
  /// product one more (GroupedGemm.h; FP8 stacks widened to BF16 in it, or
  /// with fp8GroupedDown_ on FP8 tensor cores of the pair's quantized
  /// rows), then the combine. The precisions of the host's grouping
  /// (groupedExperts) with BF16 products: gate, up and their SiLU-mul in
  /// BF16, the down product's rows in F32 unless the combine rounds them
  /// to BF16 anyway. A bad index raises the experts' flag (its pair adds
  /// nothing).
  /// With `shared` (takesGroupedShared), its expert from the same quantized
  /// x, added by the combine.
  Status
  groupedExpertsOnDevice(const DeviceTensor &x, const DeviceTensor &indices,
                         const DeviceTensor &weights, const DeviceTensor &gate,
                         const DeviceTensor &up, const DeviceTensor &down,
                         const ExpertStacks &stacks, bool combineBf16,
                         DeviceTensor &y,
                         const SharedExpert *shared = nullptr) {
    const int T = int(x.shape[0]), D = int(x.shape[1]), E = int(gate.shape[0]),
              I = int(gate.shape[1]), K = int(indices.shape[1]);
    const int capacity = expertGroupingCapacity(T * K, E);
    CallScratch scratch(*this);
    DeviceTensor startsT, endsT, rowOfPairT, tokenOfRowT, xsT, actT, outT,
        sharedOutT;
    MELT_RETURN_IF_ERROR(scratch.take(DType::I32, {E + 1}, startsT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::I32, {E}, endsT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::I32, {T * K}, rowOfPairT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::I32, {capacity}, tokenOfRowT));
    const bool fp8 = stacks.type == ExpertStacks::Type::Fp8Blocks;
    // FP8 gate and up on FP8 tensor cores (by default; 0 widens them):
    // x quantized per token, its rows gathered as codes; else x's rows in
    // BF16.
    const bool fp8TensorCores = fp8 && fp8GroupedWgmma_;
    if (!fp8TensorCores)
      MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {capacity, D}, xsT));
    // The pair's rows: BF16, or FP8 codes and scales for the down product
    // on FP8 tensor cores.
    const bool fp8Down = fp8TensorCores && fp8GroupedDown_;
    DeviceTensor actCodesT, actScalesT;
    if (!fp8Down)
      MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {capacity, I}, actT));
    MELT_RETURN_IF_ERROR(scratch.take(combineBf16 ? DType::BF16 : DType::F32,
                                      {capacity, D}, outT));
    auto *starts = static_cast<int32_t *>(startsT.data);
    auto *rowOfPair = static_cast<int32_t *>(rowOfPairT.data);
    auto *tokenOfRow = static_cast<int32_t *>(tokenOfRowT.data);
    auto *xs = static_cast<__nv_bfloat16 *>(xsT.data);
    ExpertGroupingArgs grouping;
    grouping.chosen = static_cast<const int32_t *>(indices.data);
    grouping.tokens = T, grouping.topK = K, grouping.experts = E;
    grouping.capacity = capacity;
    grouping.starts = starts, grouping.rowOfPair = rowOfPair;
    grouping.tokenOfRow = tokenOfRow, grouping.bad = flag_ + kExpertFlag;
    // Where each group's pairs end, for the products to leave its padding
    // rows out.
    const int32_t *ends =
        groupedSkipsPadding_ ? static_cast<int32_t *>(endsT.data) : nullptr;
    grouping.ends = static_cast<int32_t *>(endsT.data);
    DeviceTensor chunkOffsetsT;
    if (chunkedGrouping_) {
      MELT_RETURN_IF_ERROR(scratch.take(
          DType::I32, {std::max<int64_t>(1, expertGroupingWorkspace(T * K, E))},
          chunkOffsetsT));
      grouping.chunkOffsets = static_cast<int32_t *>(chunkOffsetsT.data);
    }
    MELT_RETURN_IF_ERROR(check(groupExperts(grouping, stream_), "moe_experts"));
    if (!fp8TensorCores) {
      // x's rows in BF16 as the norm that made it prepared them (half the
      // bytes), else its F32 rows.
      const PreparedInput *prepared = attachedTo(x);
      const Operand rowsIn = prepared && prepared->bf16.data
                                 ? Operand{prepared->bf16.data, true}
                                 : Operand{x.data, false};
      MELT_RETURN_IF_ERROR(check(gatherRows(rowsIn, tokenOfRow, capacity, D,
                                            {xs, true}, stream_, starts + E),
                                 "moe_experts"));
      if (shared && !fp8) {
        // (x's BF16 rows: the prepared ones, else x rounded here.)
        DeviceTensor rowsT;
        if (!rowsIn.bf16) {
          MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {T, D}, rowsT));
          MELT_RETURN_IF_ERROR(
              check(convert(rowsIn, size_t(T) * D, {rowsT.data, true}, stream_),
                    "moe_experts"));
        }
        MELT_RETURN_IF_ERROR(
            sharedExpertOfBf16Rows(*shared,
                                   static_cast<const __nv_bfloat16 *>(
                                       rowsIn.bf16 ? rowsIn.data : rowsT.data),
                                   T, scratch, sharedOutT));
      }
    }
    // x w^T, or with w2 (up) SiLU(x w^T) * (x w2^T).
    auto product = [&](const __nv_bfloat16 *input, const void *w,
                       const float *wScales, const void *w2,
                       const float *w2Scales, int n, int k,
                       DeviceTensor &result) {
      GroupedGemmArgs a;
      a.x = input, a.w = w, a.w2 = w2;
      if (fp8)
        a.wScales = wScales, a.w2Scales = w2Scales;
      if (result.dtype == DType::BF16)
        a.y = static_cast<__nv_bfloat16 *>(result.data);
      else
        a.yF32 = static_cast<float *>(result.data);
      a.starts = starts, a.ends = ends;
      a.groups = E, a.capacity = capacity, a.n = n, a.k = k;
      a.wideStores = groupedWideStores_;
      return check(groupedGemmBf16(a, stream_), "moe_experts");
    };
    if (fp8TensorCores) {
      DeviceTensor codesT, scalesT, rowCodesT, rowScalesT;
      // x's codes as the norm that made it prepared them, or quantized here.
      const PreparedInput *prepared = attachedTo(x);
      if (prepared) {
        codesT = prepared->q, scalesT = prepared->scales;
      } else {
        MELT_RETURN_IF_ERROR(scratch.take(DType::FP8E4M3, {T, D}, codesT));
        MELT_RETURN_IF_ERROR(scratch.take(DType::F32, {D / 128, T}, scalesT));
      }
      MELT_RETURN_IF_ERROR(
          scratch.take(DType::FP8E4M3, {capacity, D}, rowCodesT));
      MELT_RETURN_IF_ERROR(
          scratch.take(DType::F32, {D / 128, capacity}, rowScalesT));
      auto *codes = static_cast<uint8_t *>(codesT.data);
      auto *rowCodes = static_cast<uint8_t *>(rowCodesT.data);
      auto *rowScales = static_cast<float *>(rowScalesT.data);
      if (!prepared)
        MELT_RETURN_IF_ERROR(
            check(quantizeRowsFp8(static_cast<const float *>(x.data), T, D,
                                  reinterpret_cast<__nv_fp8_e4m3 *>(codes),
                                  static_cast<float *>(scalesT.data), stream_),
                  "moe_experts"));
      MELT_RETURN_IF_ERROR(
          check(gatherFp8Rows(codes, static_cast<const float *>(scalesT.data),
                              T, tokenOfRow, capacity, D, rowCodes, rowScales,
                              stream_, starts + E),
                "moe_experts"));
      if (shared)
        MELT_RETURN_IF_ERROR(sharedExpertOfCodes(
            *shared, reinterpret_cast<const __nv_fp8_e4m3 *>(codes),
            static_cast<const float *>(scalesT.data), T, scratch, sharedOutT));
      GroupedFp8PairArgs a;
      a.x = rowCodes, a.xScales = rowScales;
      a.gate = static_cast<const uint8_t *>(gate.data);
      a.up = static_cast<const uint8_t *>(up.data);
      a.gateScales = stacks.gateScales, a.upScales = stacks.upScales;
      a.starts = starts, a.ends = ends;
      a.groups = E, a.capacity = capacity, a.n = I, a.k = D;
      a.options = groupedFp8Pair_;
      if (fp8Down) { // the rows quantized as the pair writes them
        MELT_RETURN_IF_ERROR(
            scratch.take(DType::FP8E4M3, {capacity, I}, actCodesT));
        MELT_RETURN_IF_ERROR(
            scratch.take(DType::F32, {I / 128, capacity}, actScalesT));
        a.yCodes = static_cast<uint8_t *>(actCodesT.data);
        a.yScales = static_cast<float *>(actScalesT.data);
      } else {
        a.y = static_cast<__nv_bfloat16 *>(actT.data);
      }
      MELT_RETURN_IF_ERROR(
          check(groupedGemmFp8Pair(a, stream_), "moe_experts"));
    } else {
      MELT_RETURN_IF_ERROR(product(xs, gate.data, stacks.gateScales, up.data,
                                   stacks.upScales, I, D, actT));
    }
    if (fp8Down) { // the down product on FP8 tensor cores too
      GroupedFp8Args d;
      d.x = static_cast<const uint8_t *>(actCodesT.data);
      d.xScales = static_cast<const float *>(actScalesT.data);
      d.w = static_cast<const uint8_t *>(down.data);
      d.wScales = stacks.downScales;
      if (outT.dtype == DType::BF16)
        d.y = static_cast<__nv_bfloat16 *>(outT.data);
      else
        d.yF32 = static_cast<float *>(outT.data);
      d.starts = starts, d.ends = ends;
      d.groups = E, d.capacity = capacity, d.n = D, d.k = I;
      d.options = groupedFp8Down_;
      MELT_RETURN_IF_ERROR(check(groupedGemmFp8(d, stream_), "moe_experts"));
    } else {
      MELT_RETURN_IF_ERROR(
          product(static_cast<const __nv_bfloat16 *>(actT.data), down.data,
                  stacks.downScales, nullptr, nullptr, D, I, outT));
    }
    if (shared && !sharedOutT.data)
      return invalidArgument("moe_experts: the shared expert needs the FP8 "
                             "experts' grouped tensor-core path or BF16 "
                             "stacks");
    const CombinedRows combined{
        {outT.data, combineBf16},
        rowOfPair,
        static_cast<const float *>(weights.data),
        K,
        combineBf16,
        {sharedOutT.data, sharedOutT.dtype == DType::BF16}};
    if (leavesCombine(y, T, D)) {
      // (The scratch's rows it reads are held back as they are released.)
      pendingCombine_ = PendingCombine{y.data, combined, T, D, {}};
      return Status::ok();
    }
    return check(combineExpertRows(combined.expertOut, rowOfPair,
                                   combined.weights, T, K, D, combineBf16,
                                   static_cast<float *>(y.data), stream_,
                                   combined.plus),
                 "moe_experts");
  }

  /// A shared expert's MLP of T tokens from x's FP8 codes and 1 x 128
  /// scales ([D / 128, T]): gate and up BF16 products, their SiLU-mul
  /// quantized (to the down weight's stored K), the down product into
  /// `out` (BF16 [T, D], taken from `scratch`).
  Status sharedExpertOfCodes(const SharedExpert &shared,
                             const __nv_fp8_e4m3 *codes, const float *scales,
                             int T, CallScratch &scratch, DeviceTensor &out) {
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    const int inter = int(g.shape[0]), D = int(g.shape[1]),
              downK = int(storedK(d));
    auto scalesOf = [&](const DeviceTensor &w) {
      return static_cast<const float *>(weightScales_.at(w.data).data);
    };
    auto codesOf = [](const DeviceTensor &w) {
      return static_cast<const __nv_fp8_e4m3 *>(w.data);
    };
    DeviceTensor gT, uT, actT, actScalesT;
    MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {T, inter}, gT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {T, inter}, uT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::FP8E4M3, {T, downK}, actT));
    MELT_RETURN_IF_ERROR(
        scratch.take(DType::F32, {downK / 128, T}, actScalesT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {T, D}, out));
    auto *gOut = static_cast<__nv_bfloat16 *>(gT.data);
    auto *uOut = static_cast<__nv_bfloat16 *>(uT.data);
    auto *act = static_cast<__nv_fp8_e4m3 *>(actT.data);
    auto *actScales = static_cast<float *>(actScalesT.data);
    MELT_RETURN_IF_ERROR(fromGemm(gemm_->fp8BlockScaled(
        codes, scales, codesOf(g), scalesOf(g), gOut, T, inter, D)));
    MELT_RETURN_IF_ERROR(fromGemm(gemm_->fp8BlockScaled(
        codes, scales, codesOf(u), scalesOf(u), uOut, T, inter, D)));
    MELT_RETURN_IF_ERROR(
        check(siluMulQuantizeRowsFp8Padded(gOut, uOut, T, inter, downK, act,
                                           actScales, stream_),
              "moe_experts"));
    return fromGemm(gemm_->fp8BlockScaled(
        act, actScales, codesOf(d), scalesOf(d),
        static_cast<__nv_bfloat16 *>(out.data), T, D, downK));
  }

  /// A BF16 shared expert's MLP of T tokens from x's BF16 rows into `out`
  /// ([T, D], taken from `scratch`), its products' outputs BF16 where the
  /// linears round them (shared.roundGateUp, roundDown) and F32 where they
  /// do not, as the calls apart give them: the SiLU-mul written in BF16
  /// either way (the down product's input, as bf16LinearOfSiluMul writes
  /// it).
  Status sharedExpertOfBf16Rows(const SharedExpert &shared,
                                const __nv_bfloat16 *rows, int T,
                                CallScratch &scratch, DeviceTensor &out) {
    const DeviceTensor &g = *shared.gate, &u = *shared.up, &d = *shared.down;
    const int inter = int(g.shape[0]), D = int(g.shape[1]);
    const DType gateUp = shared.roundGateUp ? DType::BF16 : DType::F32;
    DeviceTensor gT, uT, actT;
    MELT_RETURN_IF_ERROR(scratch.take(gateUp, {T, inter}, gT));
    MELT_RETURN_IF_ERROR(scratch.take(gateUp, {T, inter}, uT));
    MELT_RETURN_IF_ERROR(scratch.take(DType::BF16, {T, inter}, actT));
    MELT_RETURN_IF_ERROR(
        scratch.take(shared.roundDown ? DType::BF16 : DType::F32, {T, D}, out));
    MELT_RETURN_IF_ERROR(bf16Product(rows, g, gT));
    MELT_RETURN_IF_ERROR(bf16Product(rows, u, uT));
    MELT_RETURN_IF_ERROR(
        check(binary(Binary::SiluMul, operand(gT), operand(uT),
                     size_t(T) * inter, {actT.data, true}, stream_),
              "moe_experts"));
    return bf16Product(actT.data, d, out);
  }

  /// moeExperts' device-side kernels (no wait for the choices).
  Status moeExpertsOnDevice(const DeviceTensor &x, const DeviceTensor &indices,
                            const DeviceTensor &weights,
                            const DeviceTensor &gate, const DeviceTensor &up,
                            const DeviceTensor &down,
                            const ExpertStacks &stacks, bool combineBf16,
                            bool quantizeX, int T, int K, int E, int I, int D,
                            float *pairRows, DeviceTensor &y) {
    const bool fp8 = stacks.type == ExpertStacks::Type::Fp8Blocks;
    const int64_t pairs = int64_t(T) * K;
    // One token's FP8 experts a row at a time: each weight is read once
    // either way, without the grouping (whose tensor-core tiles read FP8
    // stacks at a quarter of the copy bandwidth for one token).
    if (takesFp8Rows(gate.dtype, T, I, D)) {
      DeviceTensor scratch;
      MELT_RETURN_IF_ERROR(allocate(DType::F32, {pairs, I}, scratch));
      Status launched = check(
          moeExpertsFp8Rowwise(
              static_cast<const float *>(x.data),
              static_cast<const int32_t *>(indices.data),
              static_cast<const float *>(weights.data), stacks, T, K, E, I, D,
              combineBf16, quantizeX, static_cast<float *>(scratch.data),
              static_cast<float *>(y.data), flag_ + kExpertFlag, stream_,
              pairRows, nullptr, moeRowsOnTiles_, moeTilesOneWave_),
          "moe_experts");
      release(scratch); // stream-ordered: reused only by later work
      return launched;
    }
    if (quantizeX)
      return invalidArgument("moe_experts: x quantized in the kernels only "
                             "for one token's FP8 experts");
    // Several tokens: each active expert's weights read once for all of
    // its tokens, grouped on the device (recordable). FP8 stacks always
    // (they have only the tensor-core kernels).
    if ((T > 1 || fp8) && E <= kMoeByExpertMaxExperts) {
      DeviceTensor scratch;
      MELT_RETURN_IF_ERROR(allocate(
          DType::I32, {int64_t(moeByExpertScratchBytes(T, K, E, I) / 4)},
          scratch));
      Status launched = check(
          moeExpertsByExpert(
              static_cast<const float *>(x.data),
              static_cast<const int32_t *>(indices.data),
              static_cast<const float *>(weights.data), stacks, T, K, E, I, D,
              combineBf16, expertTensorCores(gate), scratch.data,
              static_cast<float *>(y.data), flag_ + kExpertFlag, stream_,
              pairRows, int64_t(T) * K >= int64_t(moeWidePassesFrom_) * E),
          "moe_experts");
      release(scratch); // stream-ordered: reused only by later work
      return launched;
    }
    if (fp8)
      return invalidArgument("moe_experts: fp8 expert stacks of more than " +
                             std::to_string(kMoeByExpertMaxExperts) +
                             " experts");
    DeviceTensor scratch;
    MELT_RETURN_IF_ERROR(allocate(DType::F32, {pairs, I}, scratch));
    Status launched =
        check(moeExpertsRowwise(
                  static_cast<const float *>(x.data),
                  static_cast<const int32_t *>(indices.data),
                  static_cast<const float *>(weights.data), gate.data, up.data,
                  down.data, gate.dtype == DType::BF16, T, K, E, I, D,
                  combineBf16, static_cast<float *>(scratch.data),
                  static_cast<float *>(y.data), flag_ + kExpertFlag, stream_,
                  pairRows, nullptr, moeRowsGateUpTogether_, moeRowsDownPairs_),
              "moe_experts");
    release(scratch); // stream-ordered: reused only by later work
    return launched;
  }

  Status argmaxRows(const DeviceTensor &logits, DeviceTensor &ids) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::argmaxRows(logits, ids));
    const int rows = int(logits.shape[0]), vocab = int(logits.shape[1]);
    DeviceTensor scratch;
    MELT_RETURN_IF_ERROR(allocate(
        DType::I32,
        {std::max<int64_t>(1, int64_t(cuda::argmaxScratchWords(rows, vocab)))},
        scratch));
    Status launched =
        check(cuda::argmaxRows(static_cast<const float *>(logits.data), rows,
                               vocab, static_cast<int32_t *>(ids.data),
                               scratch.data, stream_),
              "argmax_rows");
    release(scratch); // stream-ordered: reused only by later work
    return launched;
  }

  Status sampleRows(const DeviceTensor &logits, const SamplingParams &params,
                    const DeviceTensor &draws, DeviceTensor &ids) override {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::sampleRows(logits, params, draws, ids));
    const int rows = int(logits.shape[0]), vocab = int(logits.shape[1]);
    std::vector<int32_t> picked(static_cast<size_t>(rows), -1);
    if (params.topK >= 1 && params.topK <= kSampleMaxTopK) {
      MELT_RETURN_IF_ERROR(check(
          sampleRowsTopK(static_cast<const float *>(logits.data), rows, vocab,
                         params.topK, params.temperature, params.topP,
                         static_cast<const uint32_t *>(draws.data),
                         static_cast<int32_t *>(ids.data), stream_),
          "sample_rows"));
      MELT_RETURN_IF_ERROR(download(ids, picked.data()));
      if (std::find(picked.begin(), picked.end(), -1) == picked.end())
        return Status::ok();
    }
    // Every token a candidate (top_k 0 or beyond the kernel), or a row with
    // more ties at its k-th logit than the kernel holds: those rows on the
    // host, from their logits.
    std::vector<uint32_t> words(static_cast<size_t>(2 * rows));
    MELT_RETURN_IF_ERROR(download(draws, words.data()));
    std::vector<float> row(static_cast<size_t>(vocab));
    for (int r = 0; r < rows; ++r) {
      if (picked[size_t(r)] != -1)
        continue;
      MELT_RETURN_IF_ERROR(check(
          cudaMemcpyAsync(
              row.data(),
              static_cast<const float *>(logits.data) + size_t(r) * vocab,
              size_t(vocab) * sizeof(float), cudaMemcpyDeviceToHost, stream_),
          "sample_rows"));
      MELT_RETURN_IF_ERROR(
          check(cudaStreamSynchronize(stream_), "sample_rows"));
      picked[size_t(r)] = sampleToken(row.data(), size_t(vocab), params,
                                      drawOfWords(&words[size_t(2 * r)]));
    }
    return upload(picked.data(), ids);
  }

  Status importWeight(const WeightData &weight, DeviceTensor &out) override {
    int64_t count = 1;
    for (int64_t d : weight.shape)
      count *= d;
    using Format = WeightData::DeviceFormat;
    // A GEMM operand alone; or one the compiler made a BF16 operand (it
    // gives BF16 only to weights its target multiplies and nothing reads:
    // a router's gate, whose scores linear() computes before the routing
    // kernel).
    bool matrix =
        (weight.gemmOnly ||
         (compilersBf16Operands_ && weight.deviceFormat == Format::BF16)) &&
        weight.shape.size() >= 2 && int64_t(weight.data.size()) == count;
    // The compiler's format for this target (melt-select-kernels), else
    // the device's own rule: FP8-rounded GEMM operands in FP8 (unless
    // MELT_CUDA_FP8_WEIGHTS=0), BF16 ones in BF16 (half the bytes a step
    // reads), the rest in F32.
    Format format = weight.deviceFormat;
    if (format == Format::Fp8Blocks && !fp8Weights_)
      format = Format::F32;
    if (format == Format::Unset)
      format = !matrix ? Format::F32
               : weight.storage == WeightData::Storage::FP8Blocks && fp8Weights_
                   ? Format::Fp8Blocks
               : weight.storage == WeightData::Storage::BF16 ? Format::BF16
                                                             : Format::F32;
    if (format == Format::Fp8Blocks && matrix &&
        (weight.shape.size() == 2 || weight.shape.size() == 3))
      return importFp8(weight, out);
    // BF16 only where the values are BF16 already (exact).
    if (format != Format::BF16 || !matrix ||
        weight.storage != WeightData::Storage::BF16)
      return Device::importWeight(weight, out);
    std::vector<uint16_t> bf16(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i)
      bf16[size_t(i)] = melt::floatToBF16(weight.data[size_t(i)]);
    MELT_RETURN_IF_ERROR(allocate(DType::BF16, weight.shape, out));
    Status status = upload(bf16.data(), out);
    if (status)
      release(out);
    return status;
  }

private:
  /// Device::mla in the decompressed form (MlaDecompressed.h) where every
  /// sequence of the step is one run of more than decompressAbove tokens
  /// at consecutive positions (planned on the host from the layout's host
  /// copies, else read back: a prefill is not recorded); `taken` false
  /// otherwise (nothing done). Taken only where the attention is BF16: its
  /// fused kernel at the widths it takes, the TF32 scores and softmax at
  /// others.
  Status
  mlaDecompressedForm(const DeviceTensor &qNope, const DeviceTensor &qRope,
                      const DeviceTensor &cache, const CacheLayout &layout,
                      const DeviceTensor &wUk, const DeviceTensor &wUv,
                      const MlaSplitShape &shape, float scale,
                      int64_t decompressAbove, DeviceTensor &out, bool &taken,
                      const CausalProjectedQuery *projected = nullptr) {
    taken = false;
    // The host's copies where the caller gave them (a step's: every layer
    // would otherwise wait for a read-back), else read back.
    std::vector<int32_t> sequences(size_t(shape.tokens)),
        positions(size_t(shape.tokens));
    if (layout.hostSequences && layout.hostPositions) {
      std::copy_n(layout.hostSequences, sequences.size(), sequences.begin());
      std::copy_n(layout.hostPositions, positions.size(), positions.begin());
    } else {
      MELT_RETURN_IF_ERROR(download(layout.sequences, sequences.data()));
      MELT_RETURN_IF_ERROR(download(layout.positions, positions.data()));
    }
    std::vector<DecompressedQueries> runs;
    if (!decompressedRuns(sequences, positions, runs))
      return Status::ok();
    for (const DecompressedQueries &r : runs)
      if (r.count <= decompressAbove || r.sequence >= layout.pages.shape[0] ||
          r.position + r.count > shape.maxVisible)
        return Status::ok();
    constexpr size_t kScoreFloats = size_t(64) << 20; // 256 MB of scores
    const bool fused = mlaDecompressedFusesBf16(shape);
    if (projected && !fused)
      return Status::ok();
    const size_t floats = mlaDecompressedScratchFloats(
        shape, runs, kScoreFloats, fused, projected != nullptr);
    DeviceTensor scratch;
    MELT_RETURN_IF_ERROR(
        allocate(DType::F32, {int64_t(std::max<size_t>(floats, 1))}, scratch));
    // The output's FP8 codes too, where asked (prepareMlaOutput) and the
    // fused kernel writes every row.
    PreparedInput codes;
    CausalOutputCodes outputCodes;
    const int64_t T = out.shape.empty() ? 0 : out.shape[0],
                  width = shape.heads * shape.valueDim;
    if (mlaOutputInto_ && fused && shape.valueDim == 128) {
      // (BF16 rows for a BF16 output projection.)
      Status made = mlaOutputBf16_
                        ? allocate(DType::BF16, {T, width}, codes.bf16)
                        : allocate(DType::FP8E4M3, {T, width}, codes.q);
      if (!made && !mlaOutputBf16_)
        made = allocate(DType::F32, {width / 128, T}, codes.scales);
      if (made) {
        release(codes.q);
        release(codes.bf16);
        release(scratch);
        return made;
      }
      outputCodes.codes = static_cast<uint8_t *>(codes.q.data);
      outputCodes.scales = static_cast<float *>(codes.scales.data);
      outputCodes.bf16 = static_cast<__nv_bfloat16 *>(codes.bf16.data);
      outputCodes.rows = int(T);
      // (The F32 rows too unless nothing else reads them.)
      codes.rowsUnwritten = !mlaRowsRead_ && normRowsUnwritten_;
    }
    Status launched = fromGemm(withCache(cache, [&](auto *rows) {
      return mlaDecompressed(
          *gemm_, static_cast<const float *>(qNope.data),
          static_cast<const float *>(qRope.data), rows, paged(layout, cache),
          static_cast<const float *>(wUk.data),
          static_cast<const float *>(wUv.data), shape, runs, scale,
          static_cast<float *>(scratch.data), floats, kScoreFloats, fused,
          codes.rowsUnwritten ? nullptr : static_cast<float *>(out.data),
          flag_ + kCacheFlag, projected, codes.any() ? &outputCodes : nullptr);
    }));
    release(scratch); // stream-ordered: reused only by later work
    if (codes.any() && !launched) {
      *mlaOutputInto_ = codes;
    } else {
      release(codes.q);
      release(codes.scales);
      release(codes.bf16);
    }
    taken = !launched;
    return launched; // a position without a page: at synchronize()
  }

  /// Absorbed MLA with every head of a token reading a cached row once,
  /// split over the sequence (MlaSplit.h).
  Status mlaInChunks(const DeviceTensor &qNope, const DeviceTensor &qRope,
                     const DeviceTensor &cache, const CacheLayout &layout,
                     const DeviceTensor &wUk, const DeviceTensor &wUv,
                     const MlaSplitShape &shape, float scale,
                     DeviceTensor &out) {
    int chunks = mlaSplitChunks(shape, multiprocessors_);
    DeviceTensor scratch;
    MELT_RETURN_IF_ERROR(allocate(
        DType::F32, {int64_t(mlaSplitScratchFloats(shape, chunks))}, scratch));
    Status launched =
        check(withCache(cache,
                        [&](auto *rows) {
                          return mlaSplit(
                              static_cast<const float *>(qNope.data),
                              static_cast<const float *>(qRope.data), rows,
                              paged(layout, cache),
                              static_cast<const float *>(wUk.data),
                              static_cast<const float *>(wUv.data), shape,
                              chunks, scale, static_cast<float *>(scratch.data),
                              static_cast<float *>(out.data),
                              flag_ + kCacheFlag, stream_);
                        }),
              "mla");
    release(scratch); // stream-ordered: reused only by later work
    return launched;  // a position without a page: at synchronize()
  }

  /// Whether the step is a decode step as MlaDecode.cu's chunk kernel
  /// takes it: token t the one token of sequence t (read from the layout's
  /// host copies; without them, not). A recorded step replays with the
  /// same shape, and a decode step of B sequences is always laid out so.
  static bool isDecodeStep(const CacheLayout &layout, int tokens) {
    if (!layout.hostSequences || layout.pages.shape.size() != 2 ||
        layout.pages.shape[0] != tokens)
      return false;
    for (int t = 0; t < tokens; ++t)
      if (layout.hostSequences[t] != t)
        return false;
    return true;
  }

  /// A decode step of a few tokens over a short table as one kernel
  /// (MlaDecodeFused.h) instead of the three of mlaDecodeStep (mini's FP8
  /// batch-1 step 694 against 741 us on the H200);
  /// MELT_CUDA_FUSED_MLA_DECODE=0 keeps the three.
  bool fusedMlaDecode_ = envSwitch("MELT_CUDA_FUSED_MLA_DECODE", true);
  /// A decode step over a BF16 latent cache on MlaDecode.cu's chunk kernel
  /// (MlaSplit.h's mlaDecodeStep), or where fusedMlaDecode_ takes it, in
  /// one kernel.
  Status mlaDecodeStepForm(const float *qNope, const float *qRope,
                           const DeviceTensor &cache, const CacheLayout &layout,
                           const DeviceTensor &wUk, const DeviceTensor &wUv,
                           const MlaSplitShape &shape, float scale,
                           DeviceTensor &out,
                           const ProjectedQuery *projected = nullptr) {
    const PagedLayout paging = paged(layout, cache);
    if (fusedMlaDecode_ && mlaDecodeFusedFits(shape))
      return check(
          mlaDecodeFused(qNope, qRope,
                         static_cast<const __nv_bfloat16 *>(cache.data), paging,
                         static_cast<const float *>(wUk.data),
                         static_cast<const float *>(wUv.data), shape, scale,
                         static_cast<float *>(out.data), stream_, projected,
                         projected ? mlaEarlyReads() : MlaEarlyReads::None),
          "mla");
    const size_t bytes =
        mlaDecodeStepScratchBytes(shape, paging, multiprocessors_);
    CallScratch held(*this);
    DeviceTensor scratch;
    MELT_RETURN_IF_ERROR(held.takeBytes(bytes, scratch));
    return check(mlaDecodeStep(qNope, qRope,
                               static_cast<const __nv_bfloat16 *>(cache.data),
                               paging, static_cast<const float *>(wUk.data),
                               static_cast<const float *>(wUv.data), shape,
                               scale, scratch.data, bytes,
                               static_cast<float *>(out.data), multiprocessors_,
                               stream_, projected),
                 "mla");
  }

  /// A prefill's absorbed MLA with BF16 scores and sums on tensor cores
  /// (MlaSplit.h's mlaTensorCores).
  Status mlaOnTensorCores(const DeviceTensor &qNope, const DeviceTensor &qRope,
                          const DeviceTensor &cache, const CacheLayout &layout,
                          const DeviceTensor &wUk, const DeviceTensor &wUv,
                          const MlaSplitShape &shape, float scale,
                          DeviceTensor &out) {
    const PagedLayout paging = paged(layout, cache);
    const size_t bytes =
        mlaTensorCoreScratchBytes(shape, paging.batch, multiprocessors_);
    CallScratch held(*this); // released after the launch, stream-ordered
    DeviceTensor scratch;
    MELT_RETURN_IF_ERROR(held.takeBytes(bytes, scratch));
    Status launched = fromGemm(withCache(cache, [&](auto *rows) {
      return mlaTensorCores(*gemm_, static_cast<const float *>(qNope.data),
                            static_cast<const float *>(qRope.data), rows,
                            paging, static_cast<const float *>(wUk.data),
                            static_cast<const float *>(wUv.data), shape, scale,
                            scratch.data, bytes, static_cast<float *>(out.data),
                            flag_ + kCacheFlag, flag_ + kSpreadFlag,
                            multiprocessors_);
    }));
    return launched; // a position without a page: at synchronize()
  }
  /// A long prefill's MLA in the decompressed form where the compiler
  /// asks for it (MELT_CUDA_MLA_DECOMPRESSED=0: absorbed).
  bool mlaDecompressed_ = envSwitch("MELT_CUDA_MLA_DECOMPRESSED", true);
  /// A BF16 latent cache's decode steps on MlaDecode.cu's chunk kernel
  /// (MELT_CUDA_MLA_DECODE_KERNEL=0: on MlaSplit.cu's, reading the BF16
  /// rows).
  bool bf16DecodeKernel_ = envSwitch("MELT_CUDA_MLA_DECODE_KERNEL", true);
  /// A prefill's MLA on tensor cores in BF16: as compiled (variant 3:
  /// melt-select-kernels chooses it where the attention is BF16), else not
  /// (an artifact compiled for the CPU says nothing of its attention's
  /// precision); MELT_CUDA_MLA_TENSOR_CORES=1 always where the shapes take
  /// it, =0 never. -1: as compiled.
  int mlaTensorCores_ = [] {
    const char *v = std::getenv("MELT_CUDA_MLA_TENSOR_CORES");
    return !v ? -1 : std::string(v) == "1" ? 1 : std::string(v) == "0" ? 0 : -1;
  }();

  /// The compiler's kernel choices, by the weight's data.
  std::map<const void *, KernelPlan> plans_;
  const KernelPlan *planOf(const DeviceTensor &weight) const {
    auto it = plans_.find(weight.data);
    return it == plans_.end() ? nullptr : &it->second;
  }
  /// Grouped experts on tensor cores: as compiled (variant 1 / 2), else
  /// wherever the shapes take them; MELT_MOE_TENSOR_CORES=0 never.
  bool expertTensorCores(const DeviceTensor &gate) const {
    static const bool allowed = envSwitch("MELT_MOE_TENSOR_CORES", true);
    const KernelPlan *plan = planOf(gate);
    return allowed && !(plan && plan->variant == 2);
  }

  int multiprocessors_ = 132;
  /// One token's FP8 experts (moeExpertsFp8Rowwise) on tensor cores, a
  /// block per 16-row tile (MELT_CUDA_MOE_ROWS_TILES=0: a warp per row on
  /// the CUDA cores).
  bool moeRowsOnTiles_ = envSwitch("MELT_CUDA_MOE_ROWS_TILES", true);
  /// Those tiles in one wave of blocks, each taking tiles in turn
  /// (moeExpertsFp8Rowwise's oneWave; MELT_CUDA_MOE_TILES_ONE_WAVE=0: a
  /// block a tile, 2.3 waves for mini's batch-1 step and 5% slower).
  bool moeTilesOneWave_ = envSwitch("MELT_CUDA_MOE_TILES_ONE_WAVE", true);
  /// The BF16 and F32 row kernels (moeExpertsRowwise) take a warp's gate
  /// and up rows' loads together and ask a shared expert's rows into L2
  /// early (MELT_CUDA_MOE_ROWS_GATE_UP_TOGETHER=0: one row, then the other,
  /// as before session 34).
  bool moeRowsGateUpTogether_ =
      envSwitch("MELT_CUDA_MOE_ROWS_GATE_UP_TOGETHER", true);
  /// Their down kernel takes two outputs a warp, both rows' loads together
  /// (MELT_CUDA_MOE_ROWS_DOWN_PAIRS=0: an output a warp).
  bool moeRowsDownPairs_ = envSwitch("MELT_CUDA_MOE_ROWS_DOWN_PAIRS", true);
  /// One token's route made in its BF16 experts' gate/up kernel
  /// (routeInExperts).
  bool routeInExperts_ = envSwitch("MELT_CUDA_ROUTE_IN_EXPERTS", true);
  std::optional<PendingRoute> pendingRoute_;
  /// The routed experts of a few tokens on the tensor cores take an
  /// expert's tokens 16 at a time (moeExpertsByExpert's widePasses) where
  /// the pairs average at least this many tokens an expert
  /// (MELT_CUDA_MOE_WIDE_PASSES_FROM; 0: always). On an H200, mini FP8's
  /// decode (64 experts, 6 a token) on the same inputs: batch 64 (6 an
  /// expert) +12%, batch 32 (3) within 1%, batches 1 and 16 1-3% slower
  /// (a kernel built for both pass widths).
  int moeWidePassesFrom_ =
      int(envInt("MELT_CUDA_MOE_WIDE_PASSES_FROM", 4, 0, 1 << 20));
  /// MELT_CUDA_SMALL_M=0 sends every product to cuBLASLt (for comparison).
  bool smallMGemm_ = envSwitch("MELT_CUDA_SMALL_M", true);
  bool gateUpPairs_ = envSwitch("MELT_CUDA_GATE_UP_PAIRS", true);

  /// Weights the model keeps in FP8 128x128 blocks (deepseek-v3) are stored
  /// so and multiplied by the FP8 GEMMs (a quarter of the F32 bytes; BF16
  /// products, as DeepSeek-V3's recipe). MELT_CUDA_FP8_WEIGHTS=0 holds them
  /// in F32 instead (the CPU device's arithmetic, for comparison).
  bool fp8Weights_ = envSwitch("MELT_CUDA_FP8_WEIGHTS", true);
  /// The block scales of each FP8 weight, by its data.
  std::map<void *, DeviceTensor> weightScales_;
  /// An FP8 matrix whose K is no multiple of 512 (cuBLASLt's block-scaled
  /// GEMM's condition) is stored with its rows zero-padded to one, where
  /// that adds at most a quarter (MELT_CUDA_FP8_PAD_K=0: held in F32
  /// instead): mini's first dense down projection (K 10944) and its shared
  /// experts' (K 1408).
  bool padFp8K_ = envSwitch("MELT_CUDA_FP8_PAD_K", true);
  /// The stored row length of the FP8 weights whose K was padded.
  std::map<void *, int64_t> paddedK_;

  /// An FP8 weight (f32 values on the e4m3 grid of their 128x128 block's
  /// scale = amax / 448: melt-assign-precision rounds so, and DeepSeek-V3's
  /// checkpoints are quantized so): the e4m3 bytes and the scales
  /// recovered, checked exact. A matrix [N, K] (scales [N/128, K/128],
  /// rounded up) or a stack of experts' matrices [E, N, K] (scales per
  /// expert). Shapes the kernels cannot take (a matrix: K a multiple of 4
  /// x 128 and N of 16 for the FP8 GEMMs; a stack: N and K multiples of 32
  /// for the expert kernels), and values not on such a grid, stay F32.
  Status importFp8(const WeightData &weight, DeviceTensor &out) {
    const bool stack = weight.shape.size() == 3;
    const int64_t count = stack ? weight.shape[0] : 1,
                  n = weight.shape[stack ? 1 : 0],
                  k = weight.shape[stack ? 2 : 1];
    // (The expert kernels' condition is the same for [E, I, D] and [E, D, I].)
    // Padded where that adds at most a quarter to the row: a short K (the
    // tiny models' 32 to 256) reads fewer bytes in F32 than padded to 512.
    const int64_t paddedK = (k + 511) / 512 * 512;
    const bool padK = !stack && padFp8K_ && n % 16 == 0 && k % 512 != 0 &&
                      paddedK - k <= k / 4;
    const bool fits = stack ? moeByExpertTensorCoresFit(
                                  ExpertStacks::Type::Fp8Blocks, int(n), int(k))
                            : (k % 512 == 0 || padK) && n % 16 == 0;
    if (!fits)
      return Device::importWeight(weight, out);
    const int64_t kb = (k + 127) / 128, nb = (n + 127) / 128;
    std::vector<float> scales(size_t(count * nb * kb));
    std::vector<uint8_t> bytes(size_t(count * n * k));
    if (!encodeFp8Blocks(weight.data.data(), count, n, k, bytes.data(),
                         scales.data()))
      return Device::importWeight(weight, out); // not on an FP8 grid
    // Padded: each row's bytes followed by zeros (e4m3 0) up to kStored,
    // the scale blocks beyond the last one 1 (they multiply zeros).
    const int64_t kStored = padK ? paddedK : k;
    const int64_t kbStored = padK ? kStored / 128 : kb;
    if (padK) {
      std::vector<uint8_t> paddedBytes(size_t(n * kStored), 0);
      for (int64_t r = 0; r < n; ++r)
        std::copy_n(bytes.begin() + r * k, k,
                    paddedBytes.begin() + r * kStored);
      std::vector<float> paddedScales(size_t(nb * kbStored), 1.f);
      for (int64_t r = 0; r < nb; ++r)
        std::copy_n(scales.begin() + r * kb, kb,
                    paddedScales.begin() + r * kbStored);
      bytes.swap(paddedBytes);
      scales.swap(paddedScales);
    }
    DeviceTensor s;
    std::vector<int64_t> scaleShape{nb, kbStored};
    if (stack)
      scaleShape.insert(scaleShape.begin(), count);
    MELT_RETURN_IF_ERROR(allocate(DType::F32, scaleShape, s));
    Status status = upload(scales.data(), s);
    std::vector<int64_t> storedShape = weight.shape;
    storedShape.back() = kStored;
    if (!status)
      status = allocate(DType::FP8E4M3, storedShape, out);
    if (!status)
      status = upload(bytes.data(), out);
    if (status) {
      release(s);
      release(out);
      return status;
    }
    out.shape = weight.shape; // what the model multiplies: K unpadded
    weightScales_[out.data] = s;
    if (padK)
      paddedK_[out.data] = kStored;
    return Status::ok();
  }

  /// The expert kernels' view of a model's stacks (their FP8 scales).
  Status expertStacks(const DeviceTensor &gate, const DeviceTensor &up,
                      const DeviceTensor &down, ExpertStacks &stacks) const {
    using Type = ExpertStacks::Type;
    if (up.dtype != gate.dtype || down.dtype != gate.dtype)
      return invalidArgument(
          std::string("moe_experts: gate, up and down are kept as ") +
          dtypeName(gate.dtype) + ", " + dtypeName(up.dtype) + " and " +
          dtypeName(down.dtype) +
          " (an fp8 stack whose values are not on the 128x128 e4m3 grid is "
          "kept in f32; the others must be too: run with "
          "MELT_CUDA_FP8_WEIGHTS=0)");
    stacks.type = gate.dtype == DType::FP8E4M3 ? Type::Fp8Blocks
                  : gate.dtype == DType::BF16  ? Type::BF16
                                               : Type::F32;
    stacks.gate = gate.data;
    stacks.up = up.data;
    stacks.down = down.data;
    if (stacks.type != Type::Fp8Blocks)
      return Status::ok();
    auto scalesOf = [&](const DeviceTensor &w) -> const float * {
      auto found = weightScales_.find(w.data);
      return found == weightScales_.end()
                 ? nullptr
                 : static_cast<const float *>(found->second.data);
    };
    stacks.gateScales = scalesOf(gate);
    stacks.upScales = scalesOf(up);
    stacks.downScales = scalesOf(down);
    if (!stacks.gateScales || !stacks.upScales || !stacks.downScales)
      return invalidArgument("moe_experts: an fp8 expert stack needs its "
                             "block scales (importWeight)");
    return Status::ok();
  }

  /// y (F32) = x W^T with W stored in FP8: x quantized in 1x128 blocks, the
  /// block-scaled FP8 GEMM (BF16 out), widened. Given `up`, x is silu(x) *
  /// up, computed as the quantization reads them.
  Status linearWithFp8Weight(const DeviceTensor &x, const DeviceTensor &w,
                             DeviceTensor &y,
                             const DeviceTensor *up = nullptr) {
    auto scales = weightScales_.find(w.data);
    const bool bf16Out =
        y.dtype == DType::BF16 && linearWritesBf16(w, x.rows());
    // BF16 gate and up of a SiLU-mul (products kept in BF16,
    // Bf16Products.h): quantized from BF16 as they are read.
    const bool bf16In =
        x.dtype == DType::BF16 && up && up->dtype == DType::BF16;
    if (scales == weightScales_.end() || (x.dtype != DType::F32 && !bf16In) ||
        (y.dtype != DType::F32 && !bf16Out) || (up && up->dtype != x.dtype))
      return invalidArgument("linear: an fp8 weight needs its block scales "
                             "(importWeight), f32 input (or a SiLU-mul's bf16 "
                             "gate and up) and an f32 output (or bf16 where "
                             "linearWritesBf16 says so)");
    const float *upValues =
        up && !bf16In ? static_cast<const float *>(up->data) : nullptr;
    int64_t m = x.rows(), k = x.cols(), n = w.rows();
    auto padded = paddedK_.find(w.data);
    const int64_t kStored = padded == paddedK_.end() ? k : padded->second;
    // A few tokens: one kernel quantizes x (zeros beyond K where the
    // weight was padded) and multiplies.
    bool handled = false;
    if (!bf16Out && !bf16In)
      MELT_RETURN_IF_ERROR(fromGemm(
          gemm_->fp8FromF32(static_cast<const float *>(x.data), upValues,
                            int(k), static_cast<const __nv_fp8_e4m3 *>(w.data),
                            static_cast<const float *>(scales->second.data),
                            static_cast<float *>(y.data), int(m), int(n),
                            int(kStored), handled)));
    if (handled)
      return Status::ok();
    // Else x quantized into rows of the weight's stored K (zeros beyond
    // K where it was padded, one scale block each), the FP8 GEMM over it,
    // widened.
    DeviceTensor q, qScales;
    Status status = allocate(DType::FP8E4M3, {m, kStored}, q);
    if (!status)
      status = allocate(DType::F32, {kStored / 128, m}, qScales);
    if (!status)
      status = check(
          bf16In
              ? siluMulQuantizeRowsFp8Padded(
                    static_cast<const __nv_bfloat16 *>(x.data),
                    static_cast<const __nv_bfloat16 *>(up->data), int(m),
                    int(k), int(kStored), static_cast<__nv_fp8_e4m3 *>(q.data),
                    static_cast<float *>(qScales.data), stream_)
          : upValues
              ? siluMulQuantizeRowsFp8Padded(
                    static_cast<const float *>(x.data), upValues, int(m),
                    int(k), int(kStored), static_cast<__nv_fp8_e4m3 *>(q.data),
                    static_cast<float *>(qScales.data), stream_)
              : quantizeRowsFp8Padded(
                    static_cast<const float *>(x.data), int(m), int(k),
                    int(kStored), static_cast<__nv_fp8_e4m3 *>(q.data),
                    static_cast<float *>(qScales.data), stream_),
          "linear");
    if (!status)
      status = fp8ProductInto(q, qScales, w, scales->second, kStored, y);
    release(q); // stream-ordered: reused only by later work
    release(qScales);
    return status;
  }

  /// Many tokens' experts (prefills, large batches): tokens grouped by
  /// expert on the host (the choices are downloaded: one wait per MoE
  /// layer), one cuBLASLt GEMM per active expert and projection, several
  /// experts at once on side streams (lanes_), then each token's rows
  /// combined. Few tokens take the row-wise kernels, which need no wait.
  /// FP8 stacks: each active expert's matrix widened to BF16 (weight x
  /// block scale, rounded) into a buffer per lane, then the BF16 GEMM.
  Status groupedExperts(const DeviceTensor &x, const DeviceTensor &indices,
                        const DeviceTensor &weights, const DeviceTensor &gate,
                        const DeviceTensor &up, const DeviceTensor &down,
                        const ExpertStacks &stacks, bool combineBf16,
                        DeviceTensor &y) {
    const int T = int(x.shape[0]), D = int(x.shape[1]), E = int(gate.shape[0]),
              I = int(gate.shape[1]), K = int(indices.shape[1]), P = T * K;
    const bool fp8 = stacks.type == ExpertStacks::Type::Fp8Blocks;
    const bool bf16 = gate.dtype == DType::BF16 || fp8;
    std::vector<int32_t> chosen(static_cast<size_t>(P));
    MELT_RETURN_IF_ERROR(download(indices, chosen.data()));
    std::vector<int32_t> counts(size_t(E), 0), first(size_t(E) + 1, 0);
    for (int32_t e : chosen) {
      if (e < 0 || e >= E)
        return invalidArgument("moe_experts: expert " + std::to_string(e) +
                               " is outside the " + std::to_string(E) +
                               " experts");
      ++counts[size_t(e)];
    }
    // Each expert's rows padded to a few sizes (16, 32, 64, then multiples
    // of 128), so that cuBLASLt's plans, cached per shape, are reused
    // across experts, layers and steps; padding rows repeat token 0 and
    // are never read back.
    auto padded = [](int m) {
      return m <= 16 ? 16 : m <= 32 ? 32 : m <= 64 ? 64 : (m + 127) / 128 * 128;
    };
    for (int e = 0; e < E; ++e)
      first[size_t(e) + 1] =
          first[size_t(e)] +
          (counts[size_t(e)] ? padded(counts[size_t(e)]) : 0);
    const int R = first[size_t(E)];
    // Row r of the grouped operands is token tokenOfRow[r]; pair p's row is
    // rowOfPair[p].
    std::vector<int32_t> tokenOfRow(static_cast<size_t>(R), 0),
        rowOfPair(static_cast<size_t>(P)), next(first.begin(), first.end() - 1);
    for (int p = 0; p < P; ++p) {
      int32_t row = next[size_t(chosen[size_t(p)])]++;
      tokenOfRow[size_t(row)] = p / K;
      rowOfPair[size_t(p)] = row;
    }
    DType operand = bf16 ? DType::BF16 : DType::F32;
    CallScratch scratchOfCall(*this);
    auto scratch = [&](DType type, std::vector<int64_t> shape,
                       DeviceTensor &t) {
      return scratchOfCall.take(type, std::move(shape), t);
    };
    MELT_RETURN_IF_ERROR(openLanes());
    // FP8 gate and up products on cuBLASLt's block-scaled FP8 GEMM (each
    // expert's rows quantized in 1x128 blocks, as DeepSeek-V3 runs them)
    // where the shapes take it (8x1024 mini prefill: experts 24.9 -> 21.3
    // ms on the H200); else widened to BF16.
    const bool fp8Gemms = fp8 && fp8ExpertGemms_ && D % 512 == 0 && I % 16 == 0;
    DeviceTensor rows, pairs, xs, g, u, act, out, codes, codeScales;
    std::vector<DeviceTensor> widened(lanes_.size());
    if (fp8)
      for (DeviceTensor &lane : widened)
        MELT_RETURN_IF_ERROR(scratch(DType::BF16, {int64_t(I) * D}, lane));
    if (fp8Gemms) {
      MELT_RETURN_IF_ERROR(scratch(DType::FP8E4M3, {R, D}, codes));
      MELT_RETURN_IF_ERROR(scratch(DType::F32, {R, D / 128}, codeScales));
    }
    // Gate and up products in BF16 where their operands are (as the FP8
    // GEMMs give them, and as transformers' BF16 modules hold them): half
    // the bytes the SiLU-mul reads. Each expert row of the down product in
    // BF16 where the combine rounds it so anyway (the same values).
    const DType gateUpType = bf16 ? DType::BF16 : DType::F32;
    const bool outBf16 = bf16 && combineBf16;
    MELT_RETURN_IF_ERROR(scratch(DType::I32, {R}, rows));
    MELT_RETURN_IF_ERROR(scratch(DType::I32, {P}, pairs));
    MELT_RETURN_IF_ERROR(scratch(fp8Gemms ? DType::F32 : operand, {R, D}, xs));
    MELT_RETURN_IF_ERROR(scratch(gateUpType, {R, I}, g));
    MELT_RETURN_IF_ERROR(scratch(gateUpType, {R, I}, u));
    MELT_RETURN_IF_ERROR(scratch(operand, {R, I}, act));
    MELT_RETURN_IF_ERROR(
        scratch(outBf16 ? DType::BF16 : DType::F32, {R, D}, out));
    MELT_RETURN_IF_ERROR(upload(tokenOfRow.data(), rows));
    MELT_RETURN_IF_ERROR(upload(rowOfPair.data(), pairs));
    MELT_RETURN_IF_ERROR(check(
        gatherRows({x.data, false}, static_cast<const int32_t *>(rows.data), R,
                   D, {xs.data, bf16 && !fp8Gemms}, stream_),
        "moe_experts"));
    // An expert's gate or up product in FP8: its rows [r, r + m) quantized
    // (scales [D/128, m], the expert's own block of codeScales).
    auto fp8Product = [&](size_t lane, const DeviceTensor &w,
                          const float *wScales, int e, int r, int m,
                          bool quantize, DeviceTensor &result) -> Status {
      GemmRunner &runner = *lanes_[lane].gemm;
      auto *q = static_cast<__nv_fp8_e4m3 *>(codes.data) + size_t(r) * D;
      float *qScales =
          static_cast<float *>(codeScales.data) + size_t(r) * (D / 128);
      if (quantize)
        MELT_RETURN_IF_ERROR(check(
            quantizeRowsFp8(static_cast<const float *>(xs.data) + size_t(r) * D,
                            m, D, q, qScales, runner.stream()),
            "moe_experts"));
      const size_t blocks = size_t((I + 127) / 128) * (D / 128);
      return fromGemm(runner.fp8BlockScaled(
          q, qScales,
          static_cast<const __nv_fp8_e4m3 *>(w.data) + size_t(e) * I * D,
          wScales + size_t(e) * blocks,
          static_cast<__nv_bfloat16 *>(result.data) + size_t(r) * I, m, I, D));
    };
    size_t width = bf16 ? 2 : 4;
    auto at = [](const DeviceTensor &t, size_t offset, size_t element) {
      return static_cast<char *>(t.data) + offset * element;
    };
    auto product = [&](size_t lane, const void *input, const DeviceTensor &w,
                       int e, int m, int n, int k, void *result,
                       bool resultBf16) -> CudaStatus {
      const void *matrix = at(w, size_t(e) * n * k, width);
      GemmRunner &runner = *lanes_[lane].gemm;
      if (fp8) {
        const float *scales = w.data == gate.data ? stacks.gateScales
                              : w.data == up.data ? stacks.upScales
                                                  : stacks.downScales;
        const size_t blocks = size_t((n + 127) / 128) * ((k + 127) / 128);
        if (cudaError_t failed = widenFp8Blocks(
                static_cast<const uint8_t *>(w.data) + size_t(e) * n * k,
                scales + size_t(e) * blocks, n, k,
                static_cast<__nv_bfloat16 *>(widened[lane].data),
                runner.stream());
            failed != cudaSuccess)
          return CudaStatus{std::string("widening an fp8 expert: ") +
                            cudaGetErrorString(failed)};
        matrix = widened[lane].data;
      }
      return bf16 ? runner.bf16(static_cast<const __nv_bfloat16 *>(input),
                                static_cast<const __nv_bfloat16 *>(matrix),
                                result, !resultBf16, m, n, k)
                  : runner.f32(static_cast<const float *>(input),
                               static_cast<const float *>(matrix),
                               static_cast<float *>(result), m, n, k);
    };
    // The experts' GEMMs go round the lanes (each waits for the main
    // stream's work so far; the main stream then waits for all of them,
    // also when a GEMM fails: before the scratch is released).
    struct LanesJoined {
      CudaDevice &device;
      bool forked = false;
      ~LanesJoined() {
        if (forked)
          (void)device.joinLanes();
      }
    } lanesJoined{*this};
    MELT_RETURN_IF_ERROR(forkLanes());
    lanesJoined.forked = true;
    size_t turn = 0;
    for (int e = 0; e < E; ++e) {
      int m = first[size_t(e) + 1] - first[size_t(e)], r = first[size_t(e)];
      if (m == 0)
        continue;
      const size_t lane = turn++ % lanes_.size();
      if (fp8Gemms) {
        MELT_RETURN_IF_ERROR(
            fp8Product(lane, gate, stacks.gateScales, e, r, m, true, g));
        MELT_RETURN_IF_ERROR(
            fp8Product(lane, up, stacks.upScales, e, r, m, false, u));
        continue;
      }
      const void *xe = at(xs, size_t(r) * D, width);
      MELT_RETURN_IF_ERROR(fromGemm(product(
          lane, xe, gate, e, m, I, D, at(g, size_t(r) * I, width), bf16)));
      MELT_RETURN_IF_ERROR(fromGemm(product(
          lane, xe, up, e, m, I, D, at(u, size_t(r) * I, width), bf16)));
    }
    lanesJoined.forked = false;
    MELT_RETURN_IF_ERROR(joinLanes());
    MELT_RETURN_IF_ERROR(
        check(binary(Binary::SiluMul, {g.data, bf16}, {u.data, bf16},
                     size_t(R) * I, {act.data, bf16}, stream_),
              "moe_experts"));
    MELT_RETURN_IF_ERROR(forkLanes());
    lanesJoined.forked = true;
    for (int e = 0; e < E; ++e) {
      int m = first[size_t(e) + 1] - first[size_t(e)], r = first[size_t(e)];
      if (m == 0)
        continue;
      const size_t lane = turn++ % lanes_.size();
      MELT_RETURN_IF_ERROR(fromGemm(
          product(lane, at(act, size_t(r) * I, width), down, e, m, D, I,
                  at(out, size_t(r) * D, outBf16 ? 2 : 4), outBf16)));
    }
    lanesJoined.forked = false;
    MELT_RETURN_IF_ERROR(joinLanes());
    return check(combineExpertRows({out.data, outBf16},
                                   static_cast<const int32_t *>(pairs.data),
                                   static_cast<const float *>(weights.data), T,
                                   K, D, combineBf16,
                                   static_cast<float *>(y.data), stream_),
                 "moe_experts");
  }

  /// Side streams with GEMM runners of their own, for the GEMMs of many
  /// experts at once (one expert's GEMM at a prefill's shapes fills a
  /// fraction of the multiprocessors): made at first use.
  struct Lane {
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
    std::unique_ptr<GemmRunner> gemm;
  };
  static constexpr size_t kLanes = 4;
  static void closeLane(Lane &lane) {
    lane.gemm.reset();
    if (lane.stream)
      cudaStreamSynchronize(lane.stream);
    if (lane.done)
      cudaEventDestroy(lane.done);
    if (lane.stream)
      cudaStreamDestroy(lane.stream);
  }
  std::vector<Lane> lanes_;
  cudaEvent_t forked_ = nullptr;
  Status openLanes() {
    if (!lanes_.empty())
      return Status::ok();
    MELT_RETURN_IF_ERROR(check(
        cudaEventCreateWithFlags(&forked_, cudaEventDisableTiming), "event"));
    std::vector<Lane> lanes(kLanes);
    Status status;
    for (Lane &lane : lanes) {
      status =
          check(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking),
                "cudaStreamCreate");
      if (!status)
        status =
            check(cudaEventCreateWithFlags(&lane.done, cudaEventDisableTiming),
                  "event");
      if (!status)
        if (CudaStatus s = GemmRunner::create(lane.stream, lane.gemm, 8u << 20))
          status = {MELT_DEVICE_ERROR, name() + ": " + s.error};
      if (status)
        break;
    }
    if (status) {
      for (Lane &lane : lanes)
        closeLane(lane);
      return status;
    }
    lanes_ = std::move(lanes);
    return Status::ok();
  }
  Status forkLanes() {
    MELT_RETURN_IF_ERROR(check(cudaEventRecord(forked_, stream_), "event"));
    for (Lane &lane : lanes_)
      MELT_RETURN_IF_ERROR(
          check(cudaStreamWaitEvent(lane.stream, forked_, 0), "event"));
    return Status::ok();
  }
  Status joinLanes() {
    for (Lane &lane : lanes_) {
      MELT_RETURN_IF_ERROR(
          check(cudaEventRecord(lane.done, lane.stream), "event"));
      MELT_RETURN_IF_ERROR(
          check(cudaStreamWaitEvent(stream_, lane.done, 0), "event"));
    }
    return Status::ok();
  }

  /// The side branches' stream, its GEMM runner, its fork and join
  /// events (made at start-up; MELT_CUDA_SIDE_STREAM=0: none).
  struct Branch {
    cudaStream_t stream = nullptr;
    cudaEvent_t forked = nullptr, done = nullptr;
    std::unique_ptr<GemmRunner> gemm;
  };
  Branch branch_;
  bool sideStream_ = envSwitch("MELT_CUDA_SIDE_STREAM", true);
  /// A mark recorded in this recording; the branch stream still to wait
  /// for the latest; calls made there and not joined; in a branch now.
  bool branchMarked_ = false, branchWaits_ = false, branchBusy_ = false,
       inBranch_ = false;
  /// MELT_CUDA_BRANCH_FROM_FORK=1: each branch's first kernel depends on
  /// the fork alone (the recording's nodes at the mark), not also on the
  /// last branch's kernels on the side stream. A recorded batch-1 step with
  /// side branches has its nodes in an order (the graph's topological ids)
  /// that interleaves later layers with the first, and its first norm
  /// starts 7 us after the embedding (docs/CudaBackend.md "An idle start");
  /// without the side stream's own chain the order may follow the step's.
  /// Run on the H200 (session 21): the idle before the norm goes, but the
  /// norm runs as much longer (it waits inside, launched early), the span
  /// the same (FP8 742.4 against 740.6 us); off by default.
  bool branchFromForkAlone_ = envSwitch("MELT_CUDA_BRANCH_FROM_FORK", false);
  std::vector<cudaGraphNode_t> forkNodes_;
  std::vector<cudaGraphEdgeData> forkEdges_;
  Status openBranch() {
    MELT_RETURN_IF_ERROR(
        check(cudaStreamCreateWithFlags(&branch_.stream, cudaStreamNonBlocking),
              "cudaStreamCreate"));
    MELT_RETURN_IF_ERROR(
        check(cudaEventCreateWithFlags(&branch_.forked, cudaEventDisableTiming),
              "event"));
    MELT_RETURN_IF_ERROR(
        check(cudaEventCreateWithFlags(&branch_.done, cudaEventDisableTiming),
              "event"));
    if (CudaStatus s = GemmRunner::create(branch_.stream, branch_.gemm))
      return {MELT_DEVICE_ERROR, name() + ": " + s.error};
    return Status::ok();
  }
  void closeBranch() {
    leaveBranch();
    branch_.gemm.reset();
    if (branch_.stream)
      cudaStreamSynchronize(branch_.stream);
    for (cudaEvent_t e : {branch_.forked, branch_.done})
      if (e)
        cudaEventDestroy(e);
    if (branch_.stream)
      cudaStreamDestroy(branch_.stream);
    branch_ = Branch{};
  }

  bool capturing_ = false;
  /// Blocks released while recording: the graph's.
  std::vector<void *> parked_;
  /// The embedding table's rows, for the message of a bad id.
  int64_t embeddingRows_ = 0;

  /// Pairs (token, choice) from which moeExperts groups tokens by expert
  /// (MELT_MOE_GROUPED_MIN_PAIRS overrides it, for tuning).
  int64_t groupedMinPairs_ =
      envInt("MELT_MOE_GROUPED_MIN_PAIRS", 128, 1, int64_t(1) << 40);

  /// f(the cache's rows as float * or __nv_bfloat16 *: its type,
  /// Device::latentCacheType).
  template <typename F>
  static auto withCache(const DeviceTensor &cache, F f)
      -> decltype(f(static_cast<float *>(nullptr))) {
    if (cache.dtype == DType::BF16)
      return f(static_cast<__nv_bfloat16 *>(cache.data));
    return f(static_cast<float *>(cache.data));
  }

  static PagedLayout paged(const CacheLayout &layout,
                           const DeviceTensor &cache) {
    return {static_cast<const int32_t *>(layout.positions.data),
            static_cast<const int32_t *>(layout.sequences.data),
            static_cast<const int32_t *>(layout.pages.data),
            static_cast<const int32_t *>(layout.lengths.data),
            int(layout.pages.shape[1]),
            int(layout.pages.shape[0]),
            int(cache.shape[0])};
  }

  /// The flags kernels raise on bad indices, checked at synchronize() (so
  /// that a model step does not wait after every layer): [0] the
  /// embedding's, [1] the cache's, [2] the experts', [3] a
  /// prefill's MLA on tensor cores given a sequence's tokens at positions
  /// that are not consecutive.
  static constexpr int kEmbeddingFlag = 0, kCacheFlag = 1, kExpertFlag = 2,
                       kSpreadFlag = 3, kFlags = 4;
  Status flags() {
    if (flag_)
      return Status::ok();
    if (!hostFlags_) {
      MELT_RETURN_IF_ERROR(
          check(cudaMallocHost(&hostFlags_, kFlags * sizeof(int32_t)),
                "cudaMallocHost"));
      std::fill(hostFlags_, hostFlags_ + kFlags, 0);
    }
    MELT_RETURN_IF_ERROR(
        check(cudaMalloc(&flag_, kFlags * sizeof(int32_t)), "cudaMalloc"));
    return check(cudaMemsetAsync(flag_, 0, kFlags * sizeof(int32_t), stream_),
                 "flag");
  }
  Status copyAxisPart(const DeviceTensor &whole, int axis, int64_t offset,
                      const DeviceTensor &part, bool toWhole) {
    int64_t outer, inner;
    check::axisExtents(whole.shape, axis, outer, inner);
    size_t element = dtypeBytes(whole.dtype);
    size_t run = size_t(part.shape[axis] * inner) * element;
    // (A part left in place: its rows whole.rowPitch elements apart.)
    size_t wholePitch =
        size_t(whole.rowPitch ? whole.rowPitch : whole.shape[axis] * inner) *
        element;
    char *inWhole =
        static_cast<char *>(whole.data) + size_t(offset * inner) * element;
    if (run == 0 || outer == 0)
      return Status::ok();
    cudaError_t e = toWhole ? copyRuns(inWhole, wholePitch, part.data, run, run,
                                       size_t(outer), stream_)
                            : copyRuns(part.data, run, inWhole, wholePitch, run,
                                       size_t(outer), stream_);
    return check(e, toWhole ? "place" : "slice");
  }

  static size_t roundedBytes(size_t bytes) {
    return (std::max<size_t>(bytes, 16) + 255) / 256 * 256;
  }
  /// Frees the cached blocks (after the stream's work that may use them).
  void trimCache() {
    if (stream_)
      cudaStreamSynchronize(stream_);
    for (auto &[bytes, blocks] : freeBlocks_)
      for (void *block : blocks)
        cudaFree(block);
    freeBlocks_.clear();
  }

  static Operand operand(const DeviceTensor &t) {
    return {t.data, t.dtype == DType::BF16};
  }
  static Result result(DeviceTensor &t) {
    return {t.data, t.dtype == DType::BF16};
  }

  Status binaryOp(const char *kernel, Binary op, const DeviceTensor &a,
                  const DeviceTensor &b, DeviceTensor &y) {
    MELT_RETURN_IF_ERROR(ready());
    MELT_RETURN_IF_ERROR(check::floatType(kernel, "a", a));
    MELT_RETURN_IF_ERROR(check::floatType(kernel, "b", b));
    MELT_RETURN_IF_ERROR(check::floatType(kernel, "y", y));
    MELT_RETURN_IF_ERROR(check::sameShape(kernel, a, b));
    MELT_RETURN_IF_ERROR(check::sameShape(kernel, a, y));
    return check(binary(op, operand(a), operand(b), size_t(a.numel()),
                        result(y), stream_),
                 kernel);
  }

  /// A failed device answers every call with its fault.
  Status usable() const {
    if (!failure_.empty())
      return {MELT_DEVICE_ERROR, failure_};
    return Status::ok();
  }

  Status check(cudaError_t e, const char *what) {
    if (e == cudaSuccess)
      return Status::ok();
    std::string message = name() + ": " + what + ": " + cudaGetErrorString(e);
    if (isSticky(e)) {
      failure_ = message + " (the device is unusable from now on)";
      return {MELT_DEVICE_ERROR, failure_};
    }
    cudaGetLastError();
    return {e == cudaErrorMemoryAllocation ? MELT_OUT_OF_MEMORY
                                           : MELT_DEVICE_ERROR,
            message};
  }

  Status fromGemm(const CudaStatus &s) {
    if (!s)
      return Status::ok();
    cudaError_t pending = cudaPeekAtLastError();
    if (isSticky(pending))
      return check(pending, "gemm");
    return {MELT_DEVICE_ERROR, name() + ": " + s.error};
  }

  int index_;
  std::string description_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<GemmRunner> gemm_;
  std::string failure_;
  int32_t *flag_ = nullptr;      // raised by kernels on bad indices
  int32_t *hostFlags_ = nullptr; // pinned: flag_'s copy (queueFlagsCopy)
  /// Live blocks and their rounded sizes; freed blocks by rounded size.
  std::map<void *, size_t> blockBytes_;
  std::map<size_t, std::vector<void *>> freeBlocks_;
};

class CudaGraph final : public DeviceGraph {
public:
  CudaGraph(CudaDevice &device, cudaGraphExec_t exec,
            std::vector<void *> blocks)
      : device_(device), exec_(exec), blocks_(std::move(blocks)) {}
  ~CudaGraph() override {
    cudaGraphExecDestroy(exec_);
    device_.returnBlocks(blocks_);
  }
  cudaGraphExec_t exec() const { return exec_; }

private:
  CudaDevice &device_;
  cudaGraphExec_t exec_;
  std::vector<void *> blocks_;
};

Status CudaDevice::endCapture(std::unique_ptr<DeviceGraph> &out) {
  out.reset();
  if (!capturing_)
    return invalidArgument(name() + ": endCapture without beginCapture");
  // A branch not joined yet joins the recording's origin stream (the
  // recording fails otherwise); a route left to an experts call that did
  // not come is recorded before that.
  Status normed = launchPendingNorm();
  Status routed = normed ? normed : launchPendingRoute();
  Status joined = routed ? routed : joinBranch();
  capturing_ = false;
  std::vector<void *> blocks = std::move(parked_);
  parked_.clear();
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamEndCapture(stream_, &graph);
  if (e == cudaSuccess && joined)
    e = cudaErrorStreamCaptureUnjoined;
  // MELT_CUDA_GRAPH_DOT=PREFIX: each recording's graph (nodes, edges and
  // their types, kernel parameters) as Graphviz, PREFIX-N.dot: which
  // kernels start early (programmatic edges) and where a branch forks.
  if (e == cudaSuccess)
    if (const char *prefix = std::getenv("MELT_CUDA_GRAPH_DOT")) {
      static int dumped = 0;
      const std::string path =
          std::string(prefix) + "-" + std::to_string(dumped++) + ".dot";
      if (cudaGraphDebugDotPrint(graph, path.c_str(),
                                 cudaGraphDebugDotFlagsVerbose) != cudaSuccess)
        cudaGetLastError(); // a diagnostic only
    }
  cudaGraphExec_t exec = nullptr;
  if (e == cudaSuccess)
    e = cudaGraphInstantiate(&exec, graph, 0);
  if (graph)
    cudaGraphDestroy(graph);
  if (e != cudaSuccess) {
    cudaGetLastError(); // a failed recording is not a fault of the device
    returnBlocks(blocks);
    return {MELT_UNSUPPORTED,
            name() + ": recording a graph failed: " + cudaGetErrorString(e)};
  }
  out = std::make_unique<CudaGraph>(*this, exec, std::move(blocks));
  return Status::ok();
}

Status CudaDevice::replay(DeviceGraph &graph) {
  MELT_RETURN_IF_ERROR(ready());
  return check(cudaGraphLaunch(static_cast<CudaGraph &>(graph).exec(), stream_),
               "cudaGraphLaunch");
}

} // namespace

int melt::rt::cudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

Status melt::rt::openCudaDevice(int index, std::unique_ptr<Device> &out) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return {MELT_UNSUPPORTED,
            std::string("no CUDA device: ") + cudaGetErrorString(e)};
  }
  if (index < 0 || index >= count)
    return {MELT_NOT_FOUND, "no CUDA device " + std::to_string(index) +
                                " (this machine has " + std::to_string(count) +
                                ")"};
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess)
    return {MELT_DEVICE_ERROR,
            "cannot query CUDA device " + std::to_string(index)};
  if (prop.major < 9)
    return {MELT_UNSUPPORTED,
            "CUDA device " + std::to_string(index) + " (" + prop.name +
                ", sm_" + std::to_string(prop.major * 10 + prop.minor) +
                "): melt's kernels are built for sm_90a (H100/H200)"};
  auto device = std::make_unique<CudaDevice>(
      index, std::string(prop.name) + ", " +
                 std::to_string(prop.multiProcessorCount) + " SMs, " +
                 std::to_string(prop.totalGlobalMem >> 30) + " GiB");
  MELT_RETURN_IF_ERROR(device->init());
  out = std::move(device);
  return Status::ok();
}

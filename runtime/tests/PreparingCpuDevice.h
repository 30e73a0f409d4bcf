//===- PreparingCpuDevice.h - a CPU device that prepares inputs -*- C++ -*-===//
//
// What the executor's tests' CPU devices that prepare a product's input
// (QuantizingCpuDevice.h: FP8 round trips; Bf16RowsCpuDevice.h: BF16
// rows) have in common: what a norm attached to a value, and an MLA's
// output prepared for the products that alone read it (prepareMlaOutput),
// its own rows left unwritten (NaNs: a reader of them shows in the
// logits) where nothing else reads them. What is prepared of a value's
// rows is each device's own (prepareRows).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_PREPARINGCPUDEVICE_H
#define MELT_RUNTIME_TESTS_PREPARINGCPUDEVICE_H

#include "CpuDevice.h"

#include <cstring>
#include <map>

namespace melt::rt {

class PreparingCpuDevice : public CpuDevice {
public:
  int preparedMlaOutputs = 0, unwrittenMlaOutputs = 0;
  int preparingNorms = 0, unwrittenNorms = 0;

  /// A norm whose products alone read it (where the device's preparesInNorm
  /// says so): the norm, then what this device prepares of its rows; y's
  /// own rows left unwritten (NaNs) where no other reader needs them
  /// (rowsRead false).
  Status rmsNormForProducts(const DeviceTensor &x, const DeviceTensor &gamma,
                            float eps, DeviceTensor &y, const DeviceTensor &,
                            PreparedInput &prepared, bool rowsRead) override {
    MELT_RETURN_IF_ERROR(rmsNorm(x, gamma, eps, y));
    return prepareNormRows(y, prepared, rowsRead);
  }
  Status addRmsNormForProducts(const DeviceTensor &a, const DeviceTensor &b,
                               const DeviceTensor &gamma, float eps,
                               DeviceTensor &sum, DeviceTensor &y,
                               const DeviceTensor &, PreparedInput &prepared,
                               bool rowsRead) override {
    MELT_RETURN_IF_ERROR(addRmsNorm(a, b, gamma, eps, sum, y));
    return prepareNormRows(y, prepared, rowsRead);
  }

  void attachPrepared(const void *data,
                      const PreparedInput &prepared) override {
    attached_[data] = prepared;
  }
  void detachPrepared(const void *data) override { attached_.erase(data); }
  bool nothingAttached() const { return attached_.empty(); }

  void prepareMlaOutput(PreparedInput *into, bool rowsRead,
                        const DeviceTensor *) override {
    mlaOutput_ = into;
    mlaRowsRead_ = rowsRead;
  }
  Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
             const DeviceTensor &cache, const CacheLayout &layout,
             const DeviceTensor &wUk, const DeviceTensor &wUv, float scale,
             int64_t decompressAbove, DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(CpuDevice::mla(qNope, qRope, cache, layout, wUk, wUv,
                                        scale, decompressAbove, out));
    return prepareMlaRows(out);
  }

protected:
  /// What this device prepares of `rows` for the products that read them,
  /// into `into`.
  virtual Status prepareRows(const DeviceTensor &rows, PreparedInput &into) = 0;

  /// Where an MLA's output was asked for (prepareMlaOutput): its rows, a
  /// token's heads in one row, prepared; its own rows left unwritten where
  /// nothing else reads them.
  Status prepareMlaRows(DeviceTensor &out) {
    if (!mlaOutput_ || out.shape.empty())
      return Status::ok();
    ++preparedMlaOutputs;
    DeviceTensor rows = out;
    rows.shape = {out.shape[0], out.numel() / out.shape[0]};
    MELT_RETURN_IF_ERROR(prepareRows(rows, *mlaOutput_));
    if (mlaRowsRead_)
      return Status::ok();
    ++unwrittenMlaOutputs;
    return leaveUnwritten(out, *mlaOutput_);
  }
  /// A norm's output y prepared (prepareRows), its rows left unwritten
  /// where rowsRead is false.
  Status prepareNormRows(DeviceTensor &y, PreparedInput &prepared,
                         bool rowsRead) {
    ++preparingNorms;
    MELT_RETURN_IF_ERROR(prepareRows(y, prepared));
    if (rowsRead)
      return Status::ok();
    ++unwrittenNorms;
    return leaveUnwritten(y, prepared);
  }
  /// y's rows as unwritten memory could hold them (NaNs, in F32 and in
  /// BF16), what was prepared read in their place.
  static Status leaveUnwritten(DeviceTensor &y, PreparedInput &prepared) {
    prepared.rowsUnwritten = true;
    std::memset(y.data, 0xff, y.bytes());
    return Status::ok();
  }

  std::map<const void *, PreparedInput> attached_;
  PreparedInput *mlaOutput_ = nullptr;
  bool mlaRowsRead_ = true;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_TESTS_PREPARINGCPUDEVICE_H

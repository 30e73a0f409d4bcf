//===- LogitOnlyKernels.h - work only the wanted logit rows need -*- C++
//-*-===//
//
// A prefill wants the logits of one row a sequence, but every layer runs on
// all its rows: the caches need each token's keys. After the last layer's
// cache append, though, what remains (its query side: attention, output
// projection, MLP or experts, and the final norm) reaches nothing but the
// logits. A step that wants a few rows' logits runs those kernels on those
// rows only, once every other kernel has run: row for row what the whole
// step computes there (a product's sums may round differently where the
// device picks another algorithm for fewer rows).
//
// Only where every such kernel is row-wise: each token row of its outputs
// made from the same row of its inputs (norms, products, ropes, adds,
// SiLU-muls, splits and reshapes of token rows, (de)quantization, routers,
// experts; MLA, whose rows are queries over the cache). The expert load a
// session counts (Session::expertLoadJson) is then the rows each router saw.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_LOGITONLYKERNELS_H
#define MELT_RUNTIME_LOGITONLYKERNELS_H

#include "Artifact.h"

#include <cstdint>
#include <map>
#include <set>

namespace melt::rt {

struct LogitOnlyKernels {
  /// The kernels (not the Logits kernel itself); empty where any is not
  /// row-wise, or there is no single Logits kernel.
  std::set<uint32_t> kernels;
  /// The token-row values they read that other kernels make (F32 or BF16
  /// activations), by the kernel that makes them, and the function's token
  /// inputs they read (positions).
  std::map<uint32_t, uint32_t> madeBy;
  std::set<uint32_t> inputs;
};

LogitOnlyKernels findLogitOnlyKernels(const fb::Model &model,
                                      const fb::Function &function);

} // namespace melt::rt

#endif // MELT_RUNTIME_LOGITONLYKERNELS_H

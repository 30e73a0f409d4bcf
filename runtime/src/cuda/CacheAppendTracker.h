//===- CacheAppendTracker.h - what the MLA decode may read early -*- C++
//-*-===//
//
// A fused MLA decode launched right after the step's cache append on the
// same stream may read its query before its programmatic wait: the append
// itself waited for everything ahead of it, the query's projection among
// it (MlaDecodeFused.h's MlaEarlyReads). That holds only while the append
// is the one kernel ahead. A side branch joined after it (side branches
// hold no cache append: the query's projection runs there at a batch-1
// step, SideBranches.h) adds the branch's last kernel as another
// predecessor, with a programmatic edge in a recorded graph: the MLA's
// blocks may start before it ends. Reading the query early there was the
// race of session 34 (bench/results/mla_early_reads_race_s34_h200.txt).
//
// Host-side bookkeeping only (streams as opaque handles, launches as the
// count of launchOverlapped's launches), so that it is tested without a
// GPU (runtime/tests/CacheAppendTrackerTest.cpp).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_CACHEAPPENDTRACKER_H
#define MELT_RUNTIME_CUDA_CACHEAPPENDTRACKER_H

#include <cstdint>

namespace melt::rt::cuda {

/// What a fused MLA decode may read before it waits for the kernels ahead
/// (MlaDecodeFused.h).
enum class MlaEarlyReads { None, Query, Cache };

class CacheAppendTracker {
public:
  using Stream = const void *;

  /// A cache append was launched on `stream`; `launches` is the launch
  /// count just after it.
  void appended(uint64_t launches, Stream stream) {
    launches_ = launches;
    stream_ = stream;
    appended_ = true;
    joined_ = false;
  }

  /// The work of stream `branch` was joined into stream `into` (what
  /// `into` launches next starts after it).
  void joined(Stream branch, Stream into) {
    if (!appended_)
      return;
    if (stream_ == branch) { // the append's branch
      joinedInto_ = into;
      joined_ = true;
    } else if (stream_ == into) { // another predecessor beside the append
      launches_ = kNoLaunch;
    }
  }

  /// What an MLA decode launched now on `stream`, with the launch count at
  /// `launches`, may read early: the query where the append on this
  /// stream is still the one kernel ahead; the cache rows' lookup (and
  /// their prefetch towards L2) where the append's branch was joined into
  /// this stream; else nothing.
  MlaEarlyReads earlyReads(Stream stream, uint64_t launches) const {
    if (appended_ && stream_ == stream && launches_ == launches)
      return MlaEarlyReads::Query;
    if (joined_ && joinedInto_ == stream)
      return MlaEarlyReads::Cache;
    return MlaEarlyReads::None;
  }

private:
  static constexpr uint64_t kNoLaunch = ~uint64_t(0);
  uint64_t launches_ = kNoLaunch;
  Stream stream_ = nullptr, joinedInto_ = nullptr;
  bool appended_ = false, joined_ = false;
};

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_CACHEAPPENDTRACKER_H

// What the fused MLA decode may read before its wait, from where the last
// cache append was launched and what was joined after it
// (cuda/CacheAppendTracker.h): host-side bookkeeping, tested without a
// GPU. The case of session 34's race: an append on the main stream, then
// a side branch (the query's projection) joined into it: the append is no
// longer the one kernel ahead, so the query may not be read early.
#include "cuda/CacheAppendTracker.h"

#include <gtest/gtest.h>

using melt::rt::cuda::CacheAppendTracker;
using melt::rt::cuda::MlaEarlyReads;

namespace {

int mainStream, sideStream, otherStream;
const void *const kMain = &mainStream, *const kSide = &sideStream,
                  *const kOther = &otherStream;

} // namespace

TEST(CacheAppendTracker, NothingEarlyBeforeAnyAppend) {
  CacheAppendTracker tracker;
  EXPECT_EQ(tracker.earlyReads(kMain, 0), MlaEarlyReads::None);
  tracker.joined(kSide, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 0), MlaEarlyReads::None);
}

TEST(CacheAppendTracker, TheQueryWhereTheAppendIsTheOneKernelAhead) {
  CacheAppendTracker tracker;
  tracker.appended(7, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 7), MlaEarlyReads::Query);
  // A launch after it, or another stream: not the kernel just ahead.
  EXPECT_EQ(tracker.earlyReads(kMain, 8), MlaEarlyReads::None);
  EXPECT_EQ(tracker.earlyReads(kOther, 7), MlaEarlyReads::None);
}

TEST(CacheAppendTracker, ABranchJoinedAfterTheAppendWithdrawsTheQuery) {
  CacheAppendTracker tracker;
  // The query's projection launched in the side branch before the append
  // (host order), then the join: the launch count is the append's still.
  tracker.appended(12, kMain);
  tracker.joined(kSide, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 12), MlaEarlyReads::None);
  // The next step's append on its own: the query again.
  tracker.appended(40, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 40), MlaEarlyReads::Query);
}

TEST(CacheAppendTracker, TheCacheWhereTheAppendsBranchWasJoined) {
  CacheAppendTracker tracker;
  tracker.appended(3, kSide);
  EXPECT_EQ(tracker.earlyReads(kMain, 3), MlaEarlyReads::None);
  tracker.joined(kSide, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 9), MlaEarlyReads::Cache);
  EXPECT_EQ(tracker.earlyReads(kOther, 9), MlaEarlyReads::None);
  // A join of another branch leaves it so; a new append forgets it.
  tracker.joined(kOther, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 9), MlaEarlyReads::Cache);
  tracker.appended(10, kMain);
  EXPECT_EQ(tracker.earlyReads(kMain, 11), MlaEarlyReads::None);
}

TEST(CacheAppendTracker, TheNullStreamIsAStreamLikeAnyOther) {
  CacheAppendTracker tracker;
  tracker.appended(5, nullptr);
  EXPECT_EQ(tracker.earlyReads(nullptr, 5), MlaEarlyReads::Query);
  tracker.joined(kSide, nullptr);
  EXPECT_EQ(tracker.earlyReads(nullptr, 5), MlaEarlyReads::None);
}

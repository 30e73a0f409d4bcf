//===- PagePool.h - paged KV-cache storage of a session ---------*- C++ -*-===//
//
// The KV cache of a session is one pool of fixed-size pages, its capacity
// set when the session is created. A page holds kPageTokens consecutive
// tokens of every cache (layer) of one sequence; a sequence owns the pages
// of its tokens and gives them back when it is freed. Pages are allocated
// on first use, so an idle capacity costs no memory.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_PAGEPOOL_H
#define MELT_RUNTIME_PAGEPOOL_H

#include <cstdint>
#include <memory>
#include <vector>

namespace melt::rt {

constexpr int64_t kPageTokens = 16;

class PagePool {
public:
  PagePool(int64_t pageFloats, int64_t pages)
      : pageFloats_(pageFloats), storage_(pages) {
    for (int64_t i = pages - 1; i >= 0; --i)
      free_.push_back(static_cast<int32_t>(i));
  }

  /// Takes `n` pages, all or none.
  bool allocate(int64_t n, std::vector<int32_t> &pages) {
    if (n > static_cast<int64_t>(free_.size()))
      return false;
    for (int64_t i = 0; i < n; ++i) {
      pages.push_back(free_.back());
      free_.pop_back();
    }
    return true;
  }
  void release(const int32_t *pages, size_t n) {
    for (size_t i = 0; i < n; ++i)
      free_.push_back(pages[i]);
  }
  float *page(int32_t index) {
    std::unique_ptr<float[]> &p = storage_[index];
    if (!p)
      p.reset(new float[pageFloats_]());
    return p.get();
  }
  int64_t pageFloats() const { return pageFloats_; }
  int64_t totalPages() const { return storage_.size(); }
  int64_t freePages() const { return free_.size(); }

private:
  int64_t pageFloats_;
  std::vector<std::unique_ptr<float[]>> storage_;
  std::vector<int32_t> free_;
};

/// One cache (layer) of one sequence, inside its pages: per page, keys
/// [kPageTokens, heads, keyDim] at `offset`, then values.
struct CacheView {
  PagePool *pool = nullptr;
  const std::vector<int32_t> *pages = nullptr;
  int64_t offset = 0;
  int64_t heads = 0, keyDim = 0, valueDim = 0;
  int64_t *length = nullptr;

  float *key(int64_t position) {
    return pool->page((*pages)[position / kPageTokens]) + offset +
           (position % kPageTokens) * heads * keyDim;
  }
  float *value(int64_t position) {
    return pool->page((*pages)[position / kPageTokens]) + offset +
           kPageTokens * heads * keyDim +
           (position % kPageTokens) * heads * valueDim;
  }
  /// Floats of one page this cache takes.
  int64_t pageFloats() const {
    return kPageTokens * heads * (keyDim + valueDim);
  }
};

} // namespace melt::rt

#endif // MELT_RUNTIME_PAGEPOOL_H

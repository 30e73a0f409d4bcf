// Benchmark of the CUDA MLA decode kernel over a paged BF16 latent cache
// (576 values per token), at the shapes of ../shared/bench/hf_baseline.py's
// plain-torch MLA decode, with the device's copy bandwidth measured in the
// same run. Prints one JSON line per measurement.
//
//   melt-bench-mla-decode [--iters N] [--batches B1,B2,...]
//
// --batches: only the issue's 16-head shape (4096 cached tokens, the
// default kernel and split) at each batch given, in that order.
#include "cuda/MlaDecode.h"

#include "BenchUtil.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

using namespace melt::rt::cuda;

static const char *benchName = "melt-bench-mla-decode";

/// The batches of `--batches` (empty when not given), taken out of argv.
static std::vector<int> takeBatches(int &argc, char **argv) {
  std::vector<int> batches;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--batches") != 0)
      continue;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: --batches needs a list, e.g. 60,64\n",
                   benchName);
      std::exit(2);
    }
    for (const char *at = argv[i + 1]; *at;) {
      char *end = nullptr;
      long batch = std::strtol(at, &end, 10);
      if (end == at || batch < 1 || batch > 4096 || (*end && *end != ',')) {
        std::fprintf(stderr,
                     "%s: --batches: '%s' is not a list of batch "
                     "sizes (1..4096, comma-separated)\n",
                     benchName, argv[i + 1]);
        std::exit(2);
      }
      batches.push_back(int(batch));
      at = *end ? end + 1 : end;
    }
    for (int j = i; j + 2 < argc; ++j)
      argv[j] = argv[j + 2];
    argc -= 2;
    --i;
  }
  return batches;
}

int main(int argc, char **argv) {
  const std::vector<int> batches = takeBatches(argc, argv);
  const int iters = melt::bench::itersFromArgs(
      benchName, argc, argv, 20, "[--iters N] [--batches B1,B2,...]");
  cudaDeviceProp prop = melt::bench::openDevice(benchName);
  melt::bench::printCopyBandwidth(benchName, prop, iters);

  // capacity: the page table's tokens where more than the length (a
  // decode step recorded for a longer context, as a session's is).
  // The 16-head kernel also at batch 60 and 66 (blocks: 120 and 132 on
  // the H200's 132 SMs, against 128 at 64): whether its bandwidth follows
  // the SMs it occupies. `sweep`: other splits beside the default.
  struct Shape {
    int batch, heads, length, capacity = 0;
    bool sweep = true;
  } shapes[] = {{64, 16, 4096},           {60, 16, 4096, 0, false},
                {66, 16, 4096, 0, false}, {64, 128, 4096},
                {128, 128, 2048},         {1, 16, 4096},
                {1, 128, 32768},          {16, 128, 8192},
                {1, 16, 192, 4096},       {16, 16, 192, 4096}};
  std::vector<Shape> chosen(std::begin(shapes), std::end(shapes));
  if (!batches.empty()) {
    chosen.clear();
    for (int batch : batches)
      chosen.push_back({batch, 16, 4096, 0, false});
  }
  const int pageSize = 64;
  std::mt19937 rng(1);
  for (const Shape &shape : chosen) {
    const int capacity = std::max(shape.capacity, shape.length);
    int pagesPerSeq = (capacity + pageSize - 1) / pageSize;
    int pages = shape.batch * pagesPerSeq;
    std::vector<int32_t> table(pages);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    std::vector<int32_t> lengths(shape.batch, shape.length);
    size_t cacheValues = size_t(pages) * pageSize * kLatentEntry;
    size_t queryValues = size_t(shape.batch) * shape.heads * kLatentEntry;
    __nv_bfloat16 *cache, *queries, *output;
    int32_t *deviceTable, *deviceLengths;
    CHECK(cudaMalloc(&cache, cacheValues * 2));
    CHECK(cudaMalloc(&queries, queryValues * 2));
    CHECK(cudaMalloc(&output,
                     size_t(shape.batch) * shape.heads * kLatentRank * 2));
    CHECK(cudaMalloc(&deviceTable, pages * 4));
    CHECK(cudaMalloc(&deviceLengths, shape.batch * 4));
    melt::bench::fillRandom<<<1024, 256>>>(cache, cacheValues, 1);
    melt::bench::fillRandom<<<1024, 256>>>(queries, queryValues, 2);
    CHECK(cudaMemcpy(deviceLengths, lengths.data(), shape.batch * 4,
                     cudaMemcpyHostToDevice));
    MlaDecodeArgs args;
    args.queries = queries;
    args.cache = cache;
    args.blockTable = deviceTable;
    args.lengths = deviceLengths;
    args.output = output;
    args.batch = shape.batch;
    args.heads = shape.heads;
    args.pageSize = pageSize;
    args.maxPagesPerSequence = pagesPerSeq;
    args.maxLength = capacity;
    args.scale = 0.0721688f;
    // The default (the warpgroup kernel where it takes the shape, else the
    // warp kernel, tiles by TMA), then beside it the tiles by cp.async and,
    // where the default is the warpgroup kernel, the warp kernel.
    args.cachePages = pages;
    const bool warpgroupShape = mlaDecodeOnWarpgroups(args);
    // The warp kernel's shapes also with other splits of a sequence.
    // --batches: the same cache under other page tables too (its pages in
    // order, and shuffled anew twice), then the first table again: how
    // much the pages' placement moves the bandwidth.
    enum class Table { Shuffled, InOrder, Reshuffled };
    struct Variant {
      bool warpgroups;
      int cachePages, chunksPerSequence;
      Table table = Table::Shuffled;
    };
    std::vector<Variant> variants = {{true, pages, 0}};
    if (batches.empty())
      variants.push_back({true, 0, 0});
    else
      for (Table table : {Table::InOrder, Table::Reshuffled, Table::Reshuffled,
                          Table::Shuffled})
        variants.push_back({true, pages, 0, table});
    if (warpgroupShape)
      variants.push_back({false, pages, 0});
    else if (shape.sweep)
      for (int chunks : {8, 16, 32, 64, 128})
        variants.push_back({true, pages, chunks});
    for (const Variant &variant : variants) {
      std::vector<int32_t> used = table;
      if (variant.table == Table::InOrder)
        std::iota(used.begin(), used.end(), 0);
      else if (variant.table == Table::Reshuffled)
        std::shuffle(used.begin(), used.end(), rng);
      CHECK(cudaMemcpy(deviceTable, used.data(), pages * 4,
                       cudaMemcpyHostToDevice));
      args.warpgroups = variant.warpgroups;
      args.cachePages = variant.cachePages;
      args.chunksPerSequence = variant.chunksPerSequence;
      size_t bytes = mlaDecodeWorkspaceBytes(args, prop.multiProcessorCount);
      void *workspace;
      CHECK(cudaMalloc(&workspace, bytes));
      float ms = melt::bench::timeMs(
          benchName,
          [&](int) {
            CHECK(mlaDecode(args, workspace, bytes, prop.multiProcessorCount,
                            nullptr));
          },
          iters);
      double seconds = ms * 1e-3;
      double cacheBytesRead =
          double(shape.batch) * shape.length * kLatentEntry * 2;
      double flops = 2.0 * shape.batch * shape.heads * double(shape.length) *
                     (kLatentEntry + kLatentRank);
      std::printf("{\"what\": \"mla_decode_melt\", \"kernel\": \"%s\", "
                  "\"tiles\": \"%s\", \"pages\": \"%s\", "
                  "\"chunks_per_sequence\": %d, \"chunks\": %d, "
                  "\"batch\": %d, \"heads\": %d, "
                  "\"seq\": %d, \"capacity\": %d, \"page_size\": %d, "
                  "\"us\": %.1f, "
                  "\"cache_GBps\": %.1f, \"tflops\": %.1f}\n",
                  mlaDecodeOnWarpgroups(args) ? "wgmma" : "mma.sync",
                  mlaDecodeBulkCopies(args) ? "tma" : "cp.async",
                  variant.table == Table::InOrder      ? "in order"
                  : variant.table == Table::Reshuffled ? "reshuffled"
                                                       : "shuffled",
                  args.chunksPerSequence,
                  mlaDecodeChunkCount(args, prop.multiProcessorCount),
                  shape.batch, shape.heads, shape.length, capacity, pageSize,
                  ms * 1e3, cacheBytesRead / seconds / 1e9,
                  flops / seconds / 1e12);
      CHECK(cudaFree(workspace));
    }
    CHECK(cudaFree(cache));
    CHECK(cudaFree(queries));
    CHECK(cudaFree(output));
    CHECK(cudaFree(deviceTable));
    CHECK(cudaFree(deviceLengths));
  }
  return 0;
}

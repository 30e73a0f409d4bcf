//===- kernel_trace.cpp - when each kernel of a program ran (CUPTI) -------===//
//
// Loaded into any CUDA program through the driver's injection hook, it
// records every kernel's start and end as the program runs, and writes one
// JSON line per kernel when the program exits:
//
//   CUDA_INJECTION64_PATH=build-gpu/lib/libmelt-kernel-trace.so \
//   MELT_KERNEL_TRACE=trace.jsonl build-gpu/bin/melt-run ...
//   python3 bench/cuda/kernel_timeline.py trace.jsonl
//
// Nsight Compute times each kernel alone (serialized, replayed), which says
// what a kernel costs but not what a decode step spends between kernels.
// CUPTI's concurrent-kernel records keep the program's own overlap: early
// launches, the kernels of a replayed CUDA graph (with their graph's id and
// the launch's correlation id, one per replay), the gaps between kernels.
// Records come from a buffer CUPTI fills and hands back; the last ones are
// flushed at exit.
//
// MELT_KERNEL_TRACE_API=1 also records the host's CUDA runtime and driver
// calls ({"api": name, "start", "end", "correlation", "thread"}, in the
// kernels' clock) and the device's memsets and copies ({"memory": "memset"
// or "copy", "bytes", "start", "end", "correlation"}): what the host does
// between a call's start and its first kernel, where it waits, and what
// runs on the device between kernels (kernel_timeline.py --burst --host).
//
//===----------------------------------------------------------------------===//
#include <cupti.h>

#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace {

constexpr size_t kBufferBytes = size_t(8) << 20;

std::mutex writing;
FILE *trace = nullptr;

/// The kernel's name, demangled where it can be, as a JSON string.
std::string jsonName(const char *mangled) {
  int status = 0;
  char *demangled =
      mangled ? abi::__cxa_demangle(mangled, nullptr, nullptr, &status)
              : nullptr;
  std::string name = demangled ? demangled : (mangled ? mangled : "?");
  std::free(demangled);
  std::string json = "\"";
  for (char c : name) {
    if (c == '"' || c == '\\')
      json += '\\';
    if (static_cast<unsigned char>(c) >= 0x20)
      json += c;
  }
  return json + "\"";
}

/// A runtime or driver call as a JSON line (trace is open: writing held).
void writeApiCall(const CUpti_ActivityAPI &call) {
  const char *name = nullptr;
  cuptiGetCallbackName(call.kind == CUPTI_ACTIVITY_KIND_RUNTIME
                           ? CUPTI_CB_DOMAIN_RUNTIME_API
                           : CUPTI_CB_DOMAIN_DRIVER_API,
                       call.cbid, &name);
  std::fprintf(trace,
               "{\"api\": \"%s\", \"start\": %llu, \"end\": %llu, "
               "\"correlation\": %u, \"thread\": %u}\n",
               name ? name : "?", static_cast<unsigned long long>(call.start),
               static_cast<unsigned long long>(call.end), call.correlationId,
               call.threadId);
}

/// A memset or copy on the device as a JSON line (writing held).
void writeMemoryWork(const char *what, uint64_t bytes, uint64_t start,
                     uint64_t end, uint32_t correlation) {
  std::fprintf(trace,
               "{\"memory\": \"%s\", \"bytes\": %llu, \"start\": %llu, "
               "\"end\": %llu, \"correlation\": %u}\n",
               what, static_cast<unsigned long long>(bytes),
               static_cast<unsigned long long>(start),
               static_cast<unsigned long long>(end), correlation);
}

void CUPTIAPI bufferRequested(uint8_t **buffer, size_t *size,
                              size_t *maxRecords) {
  *buffer = static_cast<uint8_t *>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *maxRecords = 0; // as many as fit
}

void CUPTIAPI bufferCompleted(CUcontext, uint32_t, uint8_t *buffer, size_t,
                              size_t validSize) {
  std::lock_guard<std::mutex> lock(writing);
  CUpti_Activity *record = nullptr;
  while (trace && cuptiActivityGetNextRecord(buffer, validSize, &record) ==
                      CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_RUNTIME ||
        record->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
      writeApiCall(*reinterpret_cast<const CUpti_ActivityAPI *>(record));
      continue;
    }
    if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto *m = reinterpret_cast<const CUpti_ActivityMemset4 *>(record);
      writeMemoryWork("memset", m->bytes, m->start, m->end, m->correlationId);
      continue;
    }
    if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto *m = reinterpret_cast<const CUpti_ActivityMemcpy6 *>(record);
      writeMemoryWork("copy", m->bytes, m->start, m->end, m->correlationId);
      continue;
    }
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL)
      continue;
    const auto *k = reinterpret_cast<const CUpti_ActivityKernel10 *>(record);
    std::fprintf(
        trace,
        "{\"name\": %s, \"start\": %llu, \"end\": %llu, "
        "\"stream\": %u, \"graph\": %u, \"node\": %llu, "
        "\"correlation\": %u, \"grid\": [%d, %d, %d], "
        "\"block\": [%d, %d, %d]}\n",
        jsonName(k->name).c_str(), static_cast<unsigned long long>(k->start),
        static_cast<unsigned long long>(k->end), k->streamId, k->graphId,
        static_cast<unsigned long long>(k->graphNodeId), k->correlationId,
        k->gridX, k->gridY, k->gridZ, k->blockX, k->blockY, k->blockZ);
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  if (dropped && trace)
    std::fprintf(stderr, "melt-kernel-trace: %zu records dropped\n", dropped);
  std::free(buffer);
}

void finish() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> lock(writing);
  if (trace)
    std::fclose(trace);
  trace = nullptr;
}

} // namespace

/// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection() {
  const char *path = std::getenv("MELT_KERNEL_TRACE");
  trace = std::fopen(path ? path : "kernel_trace.jsonl", "w");
  if (!trace) {
    std::fprintf(stderr, "melt-kernel-trace: cannot write %s\n",
                 path ? path : "kernel_trace.jsonl");
    return 0;
  }
  if (cuptiActivityRegisterCallbacks(bufferRequested, bufferCompleted) !=
          CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) !=
          CUPTI_SUCCESS) {
    std::fprintf(stderr, "melt-kernel-trace: CUPTI refused the activity\n");
    std::fclose(trace);
    trace = nullptr;
    return 0;
  }
  const char *api = std::getenv("MELT_KERNEL_TRACE_API");
  if (api && std::string(api) == "1" &&
      (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME) != CUPTI_SUCCESS ||
       cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER) != CUPTI_SUCCESS ||
       cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET) != CUPTI_SUCCESS ||
       cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS))
    std::fprintf(stderr, "melt-kernel-trace: CUPTI refused the API records\n");
  std::atexit(finish);
  return 1;
}

// oneDNN's own matmul rate on given shapes, with prepacked weights as the
// melt runtime uses them: the reference for melt's prefill GFLOP/s.
//   onednn_gemm M K N [K N ...]  (bf16 weights and activations, f32 out)
#include <oneapi/dnnl/dnnl.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace dnnl;
using dt = memory::data_type;
using tag = memory::format_tag;

int main(int argc, char **argv) {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  long M = std::atol(argv[1]);
  double flops = 0, seconds = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    long K = std::atol(argv[i]), N = std::atol(argv[i + 1]);
    memory::desc src({M, K}, dt::bf16, tag::ab), any({K, N}, dt::bf16, tag::any),
        dst({M, N}, dt::f32, tag::ab);
    matmul::primitive_desc pd(matmul::desc(src, any, dst), eng);
    memory sm(src, eng), wm(pd.weights_desc(), eng), dm(dst, eng);
    // Touch every page: untouched memory reads as one shared zero page.
    std::vector<unsigned short> fill(pd.weights_desc().get_size() / 2, 0x3c00);
    std::copy(fill.begin(), fill.end(), (unsigned short *)wm.get_data_handle());
    std::vector<unsigned short> sfill(M * K, 0x3c00);
    std::copy(sfill.begin(), sfill.end(), (unsigned short *)sm.get_data_handle());
    matmul mm(pd);
    mm.execute(s, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dm}});
    s.wait();
    int reps = 5;
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      mm.execute(s, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dm}});
    s.wait();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    flops += 2.0 * M * K * N;
  }
  std::printf("{\"bench\": \"onednn_gemm\", \"m\": %ld, \"gflop_per_s\": %.1f}\n", M,
              flops / seconds / 1e9);
}

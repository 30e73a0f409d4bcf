//===- RouteOutputs.h - the choices and weights of a routed call -*- C++
//-*-===//
//
// For the experts kernels' tests that route their tokens themselves
// (RouteInExperts, ModelKernels.h): the choices and weights a call writes,
// all ones first (a value the call leaves unwritten shows), routed by the
// route kernel instead where the test compares with it.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_CUDA_ROUTEOUTPUTS_H
#define MELT_RUNTIME_TESTS_CUDA_ROUTEOUTPUTS_H

#include "CudaTestUtil.h"
#include "cuda/ModelKernels.h"

#include <cstdint>
#include <vector>

namespace melt::rt::cuda::test {

class RouteOutputs {
public:
  RouteOutputs(int tokens, int choices)
      : count_(size_t(tokens) * choices), indices(deviceArray<int32_t>(count_)),
        weights(deviceArray<float>(count_)) {
    EXPECT_EQ(cudaMemset(indices, 0xff, count_ * 4), cudaSuccess);
    EXPECT_EQ(cudaMemset(weights, 0xff, count_ * 4), cudaSuccess);
  }
  ~RouteOutputs() { cudaFree(indices), cudaFree(weights); }
  RouteOutputs(const RouteOutputs &) = delete;
  RouteOutputs &operator=(const RouteOutputs &) = delete;

  /// The route kernel's choices for `route`'s logits.
  void routeApart(const RouteInExperts &route, int tokens, int experts) {
    EXPECT_EQ(routeExperts(route.logits, route.bias, tokens, experts,
                           route.config, indices, weights, nullptr),
              cudaSuccess);
  }
  std::vector<int32_t> hostIndices() const { return toHost(indices, count_); }
  std::vector<float> hostWeights() const { return toHost(weights, count_); }

private:
  size_t count_;

public:
  int32_t *const indices;
  float *const weights;
};

} // namespace melt::rt::cuda::test

#endif // MELT_RUNTIME_TESTS_CUDA_ROUTEOUTPUTS_H

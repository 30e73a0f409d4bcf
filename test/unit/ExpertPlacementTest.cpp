//===- ExpertPlacementTest.cpp - placement quality --------------*- C++ -*-===//
//
// On synthetic routing statistics (uniform, Zipf-skewed, one hot expert,
// correlated pairs): `balanced` is at least as balanced as an EPLB-like
// greedy baseline written here, and `affinity` cuts cross-device copies
// while keeping max/mean within 5% of `balanced`. The figures are printed.
//
//===----------------------------------------------------------------------===//
#include "passes/ExpertPlacement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

using namespace mlir::melt;

namespace {

constexpr int64_t kExperts = 64, kTopK = 6, kTokens = 20000;

/// Routes kTokens tokens to kTopK distinct experts each: first expert drawn
/// from `weights`, with probability `partner` the next one is its pair
/// (e ^ 1), else drawn again from `weights`.
PlacementProblem route(const std::vector<double> &weights, double partner,
                       uint32_t seed) {
  std::mt19937 rng(seed);
  std::discrete_distribution<int64_t> pick(weights.begin(), weights.end());
  std::bernoulli_distribution pairUp(partner);
  PlacementProblem p;
  p.loads.assign(kExperts, 0.0);
  for (int64_t t = 0; t < kTokens; ++t) {
    std::vector<int64_t> chosen;
    while (static_cast<int64_t>(chosen.size()) < kTopK) {
      int64_t e = (!chosen.empty() && pairUp(rng)) ? (chosen.back() ^ 1)
                                                   : pick(rng);
      if (std::find(chosen.begin(), chosen.end(), e) == chosen.end())
        chosen.push_back(e);
    }
    for (size_t a = 0; a < chosen.size(); ++a) {
      p.loads[chosen[a]] += 1;
      for (size_t b = a + 1; b < chosen.size(); ++b)
        p.pairs[{std::min(chosen[a], chosen[b]),
                 std::max(chosen[a], chosen[b])}] += 1;
    }
  }
  return p;
}

/// The baseline: replicate the expert with the most load per replica, then
/// longest-processing-time first onto the least loaded device with room.
Placement eplbBaseline(const PlacementProblem &p) {
  std::vector<int64_t> count(p.loads.size(), 1);
  for (int64_t r = 0; r < p.redundant; ++r) {
    size_t best = 0;
    for (size_t e = 1; e < p.loads.size(); ++e)
      if (p.loads[e] / count[e] > p.loads[best] / count[best])
        best = e;
    ++count[best];
  }
  std::vector<std::pair<double, int64_t>> replicas;
  for (size_t e = 0; e < p.loads.size(); ++e)
    for (int64_t r = 0; r < count[e]; ++r)
      replicas.push_back({p.loads[e] / count[e], static_cast<int64_t>(e)});
  std::stable_sort(replicas.begin(), replicas.end(),
                   [](auto &a, auto &b) { return a.first > b.first; });
  int64_t capacity = replicas.size() / p.devices;
  std::vector<std::vector<int64_t>> slots(p.devices);
  std::vector<double> load(p.devices, 0.0);
  for (auto [l, e] : replicas) {
    int64_t best = -1;
    for (int64_t d = 0; d < p.devices; ++d)
      if (static_cast<int64_t>(slots[d].size()) < capacity &&
          (best < 0 || load[d] < load[best]))
        best = d;
    slots[best].push_back(e);
    load[best] += l;
  }
  Placement q;
  q.devices = p.devices;
  for (auto &s : slots)
    q.slots.insert(q.slots.end(), s.begin(), s.end());
  return q;
}

struct Case {
  const char *name;
  std::vector<double> weights;
  double partner;
};

std::vector<Case> cases() {
  std::vector<double> uniform(kExperts, 1.0), zipf(kExperts), hot(kExperts, 1.0);
  for (int64_t e = 0; e < kExperts; ++e)
    zipf[e] = 1.0 / std::pow(e + 1, 1.1);
  hot[17] = 40.0;
  return {{"uniform", uniform, 0.0},
          {"zipf", zipf, 0.0},
          {"one-hot", hot, 0.0},
          {"correlated-pairs", zipf, 0.8}};
}

class Placements : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(Placements, BalancedMatchesEPLBAndAffinityCutsCopies) {
  auto [devices, redundant] = GetParam();
  for (const Case &c : cases()) {
    PlacementProblem p = route(c.weights, c.partner, 7);
    p.devices = devices;
    p.redundant = redundant;
    auto contiguous = contiguousPlacement(p);
    auto balanced = balancedPlacement(p);
    auto affinity = affinityPlacement(p);
    ASSERT_TRUE(contiguous && balanced && affinity);
    Placement baseline = eplbBaseline(p);
    double b = imbalance(p, *balanced), e = imbalance(p, baseline),
           a = imbalance(p, *affinity);
    double copiesB = crossDeviceCopies(p, *balanced),
           copiesA = crossDeviceCopies(p, *affinity);
    std::printf("%-16s %d devices, %2d redundant: max/mean contiguous %.3f, "
                "EPLB baseline %.3f, balanced %.3f, affinity %.3f; "
                "cross-device copies balanced %.0f, affinity %.0f (%.1f%% "
                "fewer)\n",
                c.name, devices, redundant, imbalance(p, *contiguous), e, b,
                a, copiesB, copiesA, 100.0 * (1 - copiesA / copiesB));
    EXPECT_LE(b, e + 1e-9) << c.name;
    EXPECT_LE(a, b * 1.05 + 1e-9) << c.name;
    EXPECT_LT(copiesA, copiesB) << c.name;
    // Every expert is placed at least once.
    std::vector<int> seen(kExperts, 0);
    for (int64_t s : affinity->slots)
      seen[s] = 1;
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), kExperts);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Placements,
                         ::testing::Values(std::make_tuple(8, 0),
                                           std::make_tuple(8, 8),
                                           std::make_tuple(4, 16)));

TEST(Placement, HierarchicalKeepsReplicasInTheirNode) {
  PlacementProblem p = route(std::vector<double>(kExperts, 1.0), 0.0, 3);
  p.devices = 8;
  p.redundant = 8;
  p.nodes = 2;
  auto q = balancedPlacement(p);
  ASSERT_TRUE(static_cast<bool>(q));
  // Each expert's replicas sit in one node (devices 0-3 or 4-7).
  std::vector<int> node(kExperts, -1);
  for (size_t s = 0; s < q->slots.size(); ++s) {
    int n = static_cast<int>(s / q->slotsPerDevice()) / 4;
    int64_t e = q->slots[s];
    EXPECT_TRUE(node[e] == -1 || node[e] == n) << e;
    node[e] = n;
  }
  EXPECT_LT(imbalance(p, *q), 1.05);
}

TEST(Placement, ImpossibleShapesAreErrors) {
  PlacementProblem p = route(std::vector<double>(kExperts, 1.0), 0.0, 1);
  p.devices = 7;
  auto q = balancedPlacement(p);
  ASSERT_FALSE(static_cast<bool>(q));
  EXPECT_NE(llvm::toString(q.takeError()).find("do not fill 7 devices evenly"),
            std::string::npos);
}

} // namespace

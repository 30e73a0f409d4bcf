//===- ExpertPlacement.h - placing experts on devices -----------*- C++ -*-===//
//
// The algorithms of melt-plan-experts, apart from the IR so that tests can
// measure them directly. Input: per-expert loads (token assignments) and,
// for affinity, co-selection counts of expert pairs. Output: the expert
// held by every physical slot, slots split evenly over devices.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_PASSES_EXPERTPLACEMENT_H
#define MELT_PASSES_EXPERTPLACEMENT_H

#include "llvm/Support/Error.h"

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace mlir::melt {

struct PlacementProblem {
  std::vector<double> loads;                          // per expert
  std::map<std::pair<int64_t, int64_t>, double> pairs; // i < j: co-selections
  int64_t devices = 1;
  int64_t redundant = 0; // replicas beyond one per expert
  int64_t nodes = 1;     // devices are grouped into this many nodes
};

struct Placement {
  std::vector<int64_t> slots; // expert of each slot, device-major
  int64_t devices = 1;
  int64_t slotsPerDevice() const { return slots.size() / devices; }
};

/// Load of every device: each expert's load split evenly over its replicas.
std::vector<double> deviceLoads(const PlacementProblem &p, const Placement &q);
/// max / mean device load (1 is perfect balance).
double imbalance(const PlacementProblem &p, const Placement &q);
/// Expected co-selected pairs whose experts sit on different devices (each
/// a token copy sent to another device), with replicas chosen uniformly.
double crossDeviceCopies(const PlacementProblem &p, const Placement &q);

/// Expert e on device e / (experts / devices), no replicas: the baseline.
llvm::Expected<Placement> contiguousPlacement(const PlacementProblem &p);
/// As DeepSeek's EPLB: replicate the hottest experts (most load per
/// replica first), then pack replicas, heaviest first, onto the least loaded
/// device with a free slot; hierarchical over nodes when nodes > 1
/// (experts packed onto nodes first, replicas within each node).
llvm::Expected<Placement> balancedPlacement(const PlacementProblem &p);
/// Starts from balanced and swaps slots between devices while that cuts
/// cross-device copies and keeps max/mean within `tolerance` of balanced.
llvm::Expected<Placement> affinityPlacement(const PlacementProblem &p,
                                            double tolerance = 0.05);

} // namespace mlir::melt

#endif // MELT_PASSES_EXPERTPLACEMENT_H

//===- ExpertPlacement.cpp - placing experts on devices ---------*- C++ -*-===//
#include "passes/ExpertPlacement.h"

#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <numeric>
#include <queue>

using namespace mlir::melt;

namespace {

llvm::Error problem(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Error check(const PlacementProblem &p) {
  int64_t experts = p.loads.size();
  if (experts == 0)
    return problem("no experts to place");
  if (p.devices < 1)
    return problem(llvm::formatv("devices must be at least 1, got {0}",
                                 p.devices));
  if (p.redundant < 0)
    return problem(llvm::formatv("redundant must be >= 0, got {0}",
                                 p.redundant));
  if (p.nodes < 1 || p.devices % p.nodes != 0)
    return problem(llvm::formatv("nodes ({0}) must divide devices ({1})",
                                 p.nodes, p.devices));
  if ((experts + p.redundant) % p.devices != 0)
    return problem(llvm::formatv(
        "{0} experts + {1} redundant replicas do not fill {2} devices evenly",
        experts, p.redundant, p.devices));
  if (p.nodes > 1 && (experts % p.nodes != 0 || p.redundant % p.nodes != 0))
    return problem(llvm::formatv("hierarchical placement needs experts ({0}) "
                                 "and redundant ({1}) divisible by nodes ({2})",
                                 experts, p.redundant, p.nodes));
  for (double l : p.loads)
    if (!(l >= 0))
      return problem("expert loads must be non-negative");
  return llvm::Error::success();
}

/// Replicas for `experts` (indices into loads): `extra` more, each to the
/// expert with the most load per replica.
std::vector<int64_t> replicate(const std::vector<double> &loads,
                               const std::vector<int64_t> &experts,
                               int64_t extra) {
  std::vector<int64_t> count(experts.size(), 1);
  for (int64_t r = 0; r < extra; ++r) {
    size_t best = 0;
    for (size_t i = 1; i < experts.size(); ++i)
      if (loads[experts[i]] / count[i] > loads[experts[best]] / count[best])
        best = i;
    ++count[best];
  }
  return count;
}

/// Packs replicas (expert, load) onto `devices` devices of `capacity` slots:
/// heaviest first, each to the least loaded device with a free slot.
std::vector<std::vector<int64_t>>
pack(std::vector<std::pair<int64_t, double>> replicas, int64_t devices,
     int64_t capacity) {
  std::stable_sort(replicas.begin(), replicas.end(),
                   [](const auto &a, const auto &b) {
                     return a.second > b.second;
                   });
  std::vector<std::vector<int64_t>> slots(devices);
  std::vector<double> load(devices, 0.0);
  for (const auto &[expert, l] : replicas) {
    // The least loaded device with a free slot, preferring one that does
    // not hold this expert yet (two replicas on one device help nothing).
    int64_t best = -1;
    bool bestHolds = true;
    for (int64_t d = 0; d < devices; ++d) {
      if (static_cast<int64_t>(slots[d].size()) >= capacity)
        continue;
      bool holds = std::find(slots[d].begin(), slots[d].end(), expert) !=
                   slots[d].end();
      if (best < 0 || (bestHolds && !holds) ||
          (holds == bestHolds && load[d] < load[best])) {
        best = d;
        bestHolds = holds;
      }
    }
    slots[best].push_back(expert);
    load[best] += l;
  }
  return slots;
}

/// Replicates and packs `experts` onto `devices` devices.
std::vector<std::vector<int64_t>> placeGroup(const std::vector<double> &loads,
                                             const std::vector<int64_t> &experts,
                                             int64_t extra, int64_t devices) {
  std::vector<int64_t> count = replicate(loads, experts, extra);
  std::vector<std::pair<int64_t, double>> replicas;
  for (size_t i = 0; i < experts.size(); ++i)
    for (int64_t r = 0; r < count[i]; ++r)
      replicas.push_back({experts[i], loads[experts[i]] / count[i]});
  int64_t capacity = (experts.size() + extra) / devices;
  return pack(std::move(replicas), devices, capacity);
}

Placement flatten(const std::vector<std::vector<int64_t>> &perDevice) {
  Placement q;
  q.devices = perDevice.size();
  for (const auto &slots : perDevice)
    q.slots.insert(q.slots.end(), slots.begin(), slots.end());
  return q;
}

/// Share of each expert's replicas on each device.
std::vector<std::map<int64_t, double>> shares(const PlacementProblem &p,
                                              const Placement &q) {
  std::vector<std::map<int64_t, double>> share(p.loads.size());
  std::vector<double> replicas(p.loads.size(), 0.0);
  for (int64_t e : q.slots)
    replicas[e] += 1;
  for (size_t s = 0; s < q.slots.size(); ++s)
    share[q.slots[s]][s / q.slotsPerDevice()] += 1.0 / replicas[q.slots[s]];
  return share;
}

} // namespace

std::vector<double> mlir::melt::deviceLoads(const PlacementProblem &p,
                                            const Placement &q) {
  std::vector<double> replicas(p.loads.size(), 0.0), load(q.devices, 0.0);
  for (int64_t e : q.slots)
    replicas[e] += 1;
  for (size_t s = 0; s < q.slots.size(); ++s)
    load[s / q.slotsPerDevice()] += p.loads[q.slots[s]] / replicas[q.slots[s]];
  return load;
}

double mlir::melt::imbalance(const PlacementProblem &p, const Placement &q) {
  std::vector<double> load = deviceLoads(p, q);
  double total = std::accumulate(load.begin(), load.end(), 0.0);
  if (total <= 0)
    return 1.0;
  return *std::max_element(load.begin(), load.end()) / (total / load.size());
}

double mlir::melt::crossDeviceCopies(const PlacementProblem &p,
                                     const Placement &q) {
  auto share = shares(p, q);
  double copies = 0;
  for (const auto &[pair, count] : p.pairs) {
    double same = 0;
    for (const auto &[device, s] : share[pair.first]) {
      auto it = share[pair.second].find(device);
      if (it != share[pair.second].end())
        same += s * it->second;
    }
    copies += count * (1.0 - same);
  }
  return copies;
}

llvm::Expected<Placement>
mlir::melt::contiguousPlacement(const PlacementProblem &p) {
  PlacementProblem plain = p;
  plain.redundant = 0;
  plain.nodes = 1;
  if (llvm::Error e = check(plain))
    return std::move(e);
  Placement q;
  q.devices = p.devices;
  for (int64_t e = 0; e < static_cast<int64_t>(p.loads.size()); ++e)
    q.slots.push_back(e);
  return q;
}

llvm::Expected<Placement>
mlir::melt::balancedPlacement(const PlacementProblem &p) {
  if (llvm::Error e = check(p))
    return std::move(e);
  int64_t experts = p.loads.size();
  if (p.nodes == 1) {
    std::vector<int64_t> all(experts);
    std::iota(all.begin(), all.end(), 0);
    return flatten(placeGroup(p.loads, all, p.redundant, p.devices));
  }
  // Hierarchical: experts packed onto nodes (equal counts), then each node
  // replicates and packs its experts onto its own devices.
  std::vector<std::pair<int64_t, double>> expertsByLoad;
  for (int64_t e = 0; e < experts; ++e)
    expertsByLoad.push_back({e, p.loads[e]});
  auto perNode = pack(expertsByLoad, p.nodes, experts / p.nodes);
  std::vector<std::vector<int64_t>> perDevice;
  for (const auto &members : perNode) {
    auto devices = placeGroup(p.loads, members, p.redundant / p.nodes,
                              p.devices / p.nodes);
    perDevice.insert(perDevice.end(), devices.begin(), devices.end());
  }
  return flatten(perDevice);
}

llvm::Expected<Placement>
mlir::melt::affinityPlacement(const PlacementProblem &p, double tolerance) {
  auto balanced = balancedPlacement(p);
  if (!balanced)
    return balanced.takeError();
  Placement q = *balanced;
  int64_t experts = p.loads.size(), devices = q.devices,
          perDevice = q.slotsPerDevice();
  double limit = imbalance(p, q) * (1.0 + tolerance);
  double mean = std::accumulate(p.loads.begin(), p.loads.end(), 0.0) / devices;

  // Dense shares (replica fraction of each expert per device), device loads
  // and co-selection adjacency, updated incrementally per swap.
  std::vector<double> replicas(experts, 0.0);
  for (int64_t e : q.slots)
    replicas[e] += 1;
  std::vector<std::vector<double>> share(experts,
                                         std::vector<double>(devices, 0.0));
  for (size_t s = 0; s < q.slots.size(); ++s)
    share[q.slots[s]][s / perDevice] += 1.0 / replicas[q.slots[s]];
  std::vector<double> load = deviceLoads(p, q);
  std::vector<std::vector<std::pair<int64_t, double>>> adjacent(experts);
  for (const auto &[pair, count] : p.pairs) {
    adjacent[pair.first].push_back({pair.second, count});
    adjacent[pair.second].push_back({pair.first, count});
  }
  auto edgeCost = [&](int64_t i, int64_t j, double count) {
    double same = 0;
    for (int64_t d = 0; d < devices; ++d)
      same += share[i][d] * share[j][d];
    return count * (1.0 - same);
  };
  // Cost of the edges at x or y (x-y once).
  auto localCost = [&](int64_t x, int64_t y) {
    double c = 0;
    for (const auto &[j, n] : adjacent[x])
      c += edgeCost(x, j, n);
    for (const auto &[j, n] : adjacent[y])
      if (j != x)
        c += edgeCost(y, j, n);
    return c;
  };

  bool improved = true;
  for (int round = 0; improved && round < 16; ++round) {
    improved = false;
    for (size_t a = 0; a < q.slots.size(); ++a)
      for (size_t b = a + 1; b < q.slots.size(); ++b) {
        int64_t da = a / perDevice, db = b / perDevice;
        int64_t x = q.slots[a], y = q.slots[b];
        if (da == db || x == y)
          continue;
        double dx = p.loads[x] / replicas[x], dy = p.loads[y] / replicas[y];
        double newA = load[da] - dx + dy, newB = load[db] - dy + dx;
        double maxLoad = std::max(newA, newB);
        for (int64_t d = 0; d < devices && maxLoad <= limit * mean; ++d)
          if (d != da && d != db)
            maxLoad = std::max(maxLoad, load[d]);
        if (mean > 0 && maxLoad > limit * mean + 1e-9)
          continue;
        double before = localCost(x, y);
        auto move = [&](double sign) {
          share[x][da] -= sign / replicas[x];
          share[x][db] += sign / replicas[x];
          share[y][db] -= sign / replicas[y];
          share[y][da] += sign / replicas[y];
        };
        move(1.0);
        double after = localCost(x, y);
        if (after < before - 1e-9) {
          std::swap(q.slots[a], q.slots[b]);
          load[da] = newA;
          load[db] = newB;
          improved = true;
        } else {
          move(-1.0);
        }
      }
  }
  return q;
}

//===- PlanExperts.cpp - expert placement from load statistics --*- C++ -*-===//
#include "passes/ExpertPlacement.h"
#include "passes/PassReport.h"
#include "passes/Passes.h"

#include "frontends/hf/StrictJson.h"

#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"

#include <cmath>

namespace mlir::melt {
#define GEN_PASS_DEF_PLANEXPERTSPASS
#include "passes/Passes.h.inc"
} // namespace mlir::melt

using namespace mlir;
using namespace mlir::melt;

namespace {

struct RouterStats {
  std::vector<double> counts;
  std::map<std::pair<int64_t, int64_t>, double> pairs;
};

/// Reads the runtime's statistics: {"routers": [{"gate", "experts",
/// "counts": [...], "pairs": [[i, j, n], ...]}]}. Errors name the file and
/// the entry.
llvm::Expected<std::map<std::string, RouterStats>>
readStats(llvm::StringRef path) {
  auto json = readStrictJsonFile(path, 1ull << 30);
  if (!json)
    return json.takeError();
  const llvm::json::Object *root = json->getAsObject();
  const llvm::json::Array *routers = root ? root->getArray("routers") : nullptr;
  if (!routers)
    return fileError(path, "'routers' must be an array");
  std::map<std::string, RouterStats> stats;
  for (auto [i, entry] : llvm::enumerate(*routers)) {
    std::string where = llvm::formatv("routers[{0}]", i);
    const llvm::json::Object *o = entry.getAsObject();
    std::optional<llvm::StringRef> gate = o ? o->getString("gate") : std::nullopt;
    const llvm::json::Array *counts = o ? o->getArray("counts") : nullptr;
    if (!gate || !counts)
      return fileError(path, where + " needs 'gate' (a string) and 'counts' "
                                     "(an array)");
    RouterStats &s = stats[gate->str()];
    for (auto [e, c] : llvm::enumerate(*counts)) {
      std::optional<double> n = c.getAsNumber();
      if (!n || !std::isfinite(*n) || *n < 0)
        return fileError(path, llvm::formatv("{0}.counts[{1}] must be a "
                                             "non-negative number",
                                             where, e));
      s.counts.push_back(*n);
    }
    if (std::optional<int64_t> experts = o->getInteger("experts"))
      if (*experts != static_cast<int64_t>(s.counts.size()))
        return fileError(path, llvm::formatv("{0} says {1} experts but has {2} "
                                             "counts",
                                             where, *experts,
                                             s.counts.size()));
    if (const llvm::json::Array *pairs = o->getArray("pairs"))
      for (auto [k, p] : llvm::enumerate(*pairs)) {
        const llvm::json::Array *t = p.getAsArray();
        std::optional<int64_t> a, b;
        std::optional<double> n;
        if (t && t->size() == 3) {
          a = (*t)[0].getAsInteger();
          b = (*t)[1].getAsInteger();
          n = (*t)[2].getAsNumber();
        }
        int64_t experts = s.counts.size();
        if (!a || !b || !n || *a < 0 || *b < 0 || *a >= experts ||
            *b >= experts || *a == *b || !(*n >= 0))
          return fileError(path, llvm::formatv("{0}.pairs[{1}] must be [i, j, "
                                               "count] with distinct experts "
                                               "below {2} and count >= 0",
                                               where, k, experts));
        s.pairs[{std::min(*a, *b), std::max(*a, *b)}] += *n;
      }
  }
  return stats;
}

struct Row {
  std::string router;
  double imbalanceBefore, imbalanceAfter, copiesBefore, copiesAfter;
};

struct PlanExpertsPass final
    : mlir::melt::impl::PlanExpertsPassBase<PlanExpertsPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto fail = [&](const llvm::Twine &message) {
      module.emitError() << "melt-plan-experts: " << message;
      signalPassFailure();
    };
    if (policy != "balanced" && policy != "affinity")
      return fail("policy must be balanced or affinity, not '" + policy + "'");
    if (devices < 1)
      return fail(llvm::formatv("devices must be at least 1, got {0}",
                                static_cast<long long>(devices)));
    std::map<std::string, RouterStats> stats;
    if (!stats_empty()) {
      auto read = readStats(this->stats);
      if (!read)
        return fail(llvm::toString(read.takeError()));
      stats = std::move(*read);
    }

    SymbolTable symbols(module);
    std::vector<Row> rows;
    PlacementProblem total;
    WalkResult walk = module.walk([&](MoEExpertsOp op) -> WalkResult {
      auto router = op.getIndices().getDefiningOp<MoERouterOp>();
      auto gate = symbols.lookup<WeightOp>(op.getGate());
      if (!router || !gate)
        return op.emitError() << "melt-plan-experts: expert indices must come "
                                 "from a melt.moe_router",
               WalkResult::interrupt();
      std::string routerName = router.getGate().str();
      int64_t experts = gate.getTensorType().getDimSize(0);
      PlacementProblem p;
      p.devices = devices;
      p.redundant = redundant;
      p.nodes = nodes;
      p.loads.assign(experts, 1.0);
      if (!stats.empty()) {
        auto it = stats.find(routerName);
        // The runtime never ran this router (the MTP layer, say).
        if (it == stats.end())
          op.emitWarning() << "melt-plan-experts: " << this->stats
                           << " has no statistics for router '" << routerName
                           << "'; placing its experts as if uniformly loaded";
        else if (static_cast<int64_t>(it->second.counts.size()) != experts)
          return op.emitError()
                     << "melt-plan-experts: " << this->stats << ": router '"
                     << routerName << "' has " << it->second.counts.size()
                     << " counts, the model's has " << experts << " experts",
                 WalkResult::interrupt();
        if (it != stats.end()) {
          p.loads = it->second.counts;
          p.pairs = it->second.pairs;
        }
      }
      auto before = contiguousPlacement(p);
      auto after = policy == "affinity" ? affinityPlacement(p)
                                        : balancedPlacement(p);
      if (!before || !after) {
        std::string message = llvm::toString(
            before ? after.takeError() : before.takeError());
        if (!before)
          llvm::consumeError(after.takeError());
        return op.emitError() << "melt-plan-experts: " << message,
               WalkResult::interrupt();
      }
      std::vector<double> load = deviceLoads(p, *after);
      SmallVector<int64_t> rounded;
      for (double l : load)
        rounded.push_back(static_cast<int64_t>(std::llround(l)));
      op.setPlacementAttr(ExpertPlacementAttr::get(
          &getContext(), devices, after->slots, rounded));
      rows.push_back({routerName, imbalance(p, *before), imbalance(p, *after),
                      crossDeviceCopies(p, *before),
                      crossDeviceCopies(p, *after)});
      return WalkResult::advance();
    });
    if (walk.wasInterrupted())
      return signalPassFailure();
    if (failed(writeReport(rows)))
      return signalPassFailure();
  }

  bool stats_empty() const { return this->stats.empty(); }

  LogicalResult writeReport(const std::vector<Row> &rows) {
    std::string text;
    llvm::raw_string_ostream os(text);
    double worstBefore = 0, worstAfter = 0, copiesBefore = 0, copiesAfter = 0;
    for (const Row &r : rows) {
      worstBefore = std::max(worstBefore, r.imbalanceBefore);
      worstAfter = std::max(worstAfter, r.imbalanceAfter);
      copiesBefore += r.copiesBefore;
      copiesAfter += r.copiesAfter;
    }
    if (json) {
      llvm::json::Array routers;
      for (const Row &r : rows)
        routers.push_back(llvm::json::Object{
            {"router", r.router},
            {"max_over_mean_before", r.imbalanceBefore},
            {"max_over_mean_after", r.imbalanceAfter},
            {"cross_device_copies_before", r.copiesBefore},
            {"cross_device_copies_after", r.copiesAfter}});
      os << llvm::formatv(
                "{0:2}",
                llvm::json::Value(llvm::json::Object{
                    {"policy", policy},
                    {"devices", static_cast<int64_t>(devices)},
                    {"redundant", static_cast<int64_t>(redundant)},
                    {"routers", std::move(routers)},
                    {"worst_max_over_mean_before", worstBefore},
                    {"worst_max_over_mean_after", worstAfter},
                    {"cross_device_copies_before", copiesBefore},
                    {"cross_device_copies_after", copiesAfter}}))
         << "\n";
    } else {
      os << llvm::formatv("melt expert placement: {0}, {1} devices, {2} "
                          "redundant replicas\n",
                          policy, static_cast<long long>(devices),
                          static_cast<long long>(redundant));
      for (const Row &r : rows)
        os << llvm::formatv("  {0}: max/mean {1:f3} -> {2:f3}, cross-device "
                            "copies {3:f1} -> {4:f1}\n",
                            r.router, r.imbalanceBefore, r.imbalanceAfter,
                            r.copiesBefore, r.copiesAfter);
      os << llvm::formatv("  all routers: worst max/mean {0:f3} -> {1:f3}, "
                          "cross-device copies {2:f1} -> {3:f1}\n",
                          worstBefore, worstAfter, copiesBefore, copiesAfter);
    }
    return writePassReport(getOperation(), report, text,
                           "melt-plan-experts: cannot write the report");
  }
};

} // namespace

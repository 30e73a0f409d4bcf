// The kernels only the wanted logit rows need (LogitOnlyKernels.h): on the
// golden models they are the last layer's query side (its MLA and what
// follows) and the final norm, never a cache append; a session that runs
// them on the logit rows only gives the logits of one that runs every
// kernel on every row (prefills of two sequences, then decode steps), and
// its last MLA of a prefill sees one query a sequence. Needs
// MELT_TEST_MODELS (or MELT_TEST_ARTIFACT and MELT_TEST_CHECKPOINT); the
// deepseek-v3 policy (MELT_TEST_FP8_POLICY_*) runs on a device with FP8
// products.
#include "LogitOnlyKernels.h"
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"
#include "TestModels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

using namespace melt::rt;

namespace {

/// A CPU device (Base: with FP8 products or not) that notes the query rows
/// of each MLA call.
template <typename Base> class MlaRowsDevice : public Base {
public:
  using Base::Base;
  Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
             const DeviceTensor &cache, const CacheLayout &layout,
             const DeviceTensor &wUk, const DeviceTensor &wUv, float scale,
             int64_t decompressAbove, DeviceTensor &out) override {
    queryRows.push_back(qNope.shape[0]);
    return Base::mla(qNope, qRope, cache, layout, wUk, wUv, scale,
                     decompressAbove, out);
  }
  std::vector<int64_t> queryRows;
};

/// Checks the analysis and the logits for one model.
template <typename Base>
void expectLogitRowsOnly(const Model &model, const std::string &label,
                         MlaRowsDevice<Base> &everyRow,
                         MlaRowsDevice<Base> &logitRows) {
  const fb::Model &m = model.artifact().model();
  std::unique_ptr<DeviceModel> onEveryRow, onLogitRows;
  setenv("MELT_LOGIT_ROWS_ONLY", "0", 1);
  Status s = DeviceModel::create(model, everyRow, onEveryRow);
  unsetenv("MELT_LOGIT_ROWS_ONLY");
  ASSERT_FALSE(s) << s.message();
  ASSERT_FALSE(DeviceModel::create(model, logitRows, onLogitRows));
  EXPECT_TRUE(onEveryRow->logitOnly().kernels.empty()) << label;

  // The last MLA and what follows it, the final norm; no cache append.
  const LogitOnlyKernels &only = onLogitRows->logitOnly();
  ASSERT_FALSE(only.kernels.empty()) << label;
  const fb::Function &forward = onLogitRows->forward();
  uint32_t lastMla = 0, mlas = 0, onlyMlas = 0, norms = 0;
  for (uint32_t k : *forward.kernels()) {
    const fb::KernelKind kind = m.kernels()->Get(k)->kind();
    if (kind == fb::KernelKind::MLA)
      lastMla = k, ++mlas, onlyMlas += only.kernels.count(k);
    EXPECT_FALSE(only.kernels.count(k) &&
                 kind == fb::KernelKind::LatentCacheAppend)
        << label;
    norms += only.kernels.count(k) && kind == fb::KernelKind::RMSNorm;
  }
  EXPECT_EQ(onlyMlas, 1u) << label;
  EXPECT_TRUE(only.kernels.count(lastMla)) << label;
  EXPECT_GE(norms, 1u) << label << ": the final norm";
  EXPECT_FALSE(only.madeBy.empty()) << label << ": the residual, q";

  // The same logits, within a product's rounding: fewer rows may take
  // another GEMM algorithm.
  std::vector<float> want = stepLogits(*onEveryRow),
                     have = stepLogits(*onLogitRows);
  ASSERT_FALSE(want.empty());
  ASSERT_EQ(have.size(), want.size());
  double worst = 0, range = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, double(std::fabs(have[i] - want[i])));
    range = std::max(range, double(std::fabs(want[i])));
  }
  EXPECT_LE(worst, 1e-5 * range) << label;

  // stepLogits' two prefills (20 and 6 tokens) and 4 decode steps each:
  // every MLA of a step runs on its rows, but the last of a prefill on one.
  const size_t perStep = mlas;
  ASSERT_EQ(logitRows.queryRows.size(), 10 * perStep) << label;
  ASSERT_EQ(everyRow.queryRows.size(), 10 * perStep) << label;
  for (size_t step = 0; step < 10; ++step) {
    const int64_t tokens = step == 0 ? 20 : step == 1 ? 6 : 1;
    for (size_t i = 0; i < perStep; ++i) {
      const int64_t rows = logitRows.queryRows[step * perStep + i];
      EXPECT_EQ(everyRow.queryRows[step * perStep + i], tokens) << label;
      EXPECT_EQ(rows, i + 1 == perStep ? 1 : tokens)
          << label << ", step " << step << ", MLA " << i;
    }
  }
}

} // namespace

TEST(LogitRows, EveryGoldenModelRunsItsLastLayerOnTheLogitRows) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  for (const Compiled &c : models) {
    std::unique_ptr<Model> model = loadCompiled(c);
    ASSERT_TRUE(model);
    MlaRowsDevice<CpuDevice> everyRow, logitRows;
    expectLogitRowsOnly(*model, c.artifact, everyRow, logitRows);
  }
}

TEST(LogitRows, Fp8PolicyRunsItsLastLayerOnTheLogitRows) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  // FP8 products that quantize their input, SiLU-muls and experts folded.
  MlaRowsDevice<QuantizingCpuDevice> everyRow(true, true),
      logitRows(true, true);
  expectLogitRowsOnly(*model, "v3-tiny, deepseek-v3 policy", everyRow,
                      logitRows);
}

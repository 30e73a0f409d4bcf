//===- Passes.td - melt passes -----------------------------*- tablegen -*-===//
#ifndef MELT_PASSES_TD
#define MELT_PASSES_TD

include "mlir/Pass/PassBase.td"

//===----------------------------------------------------------------------===//
// Analysis and reports
//===----------------------------------------------------------------------===//

def ModelReportPass : Pass<"melt-model-report", "::mlir::ModuleOp"> {
  let summary = "report parameters, weight bytes and KV-cache bytes per token";
  let description = [{
    Reads the weights and the cache types of a model and writes a summary:
    number of weight symbols, parameters, bytes per storage type (block
    scales counted apart), and the KV cache per token — values per layer,
    bytes per layer and in total. The IR is not changed. It is how a user
    sees what `melt-fuse-mla` and `melt-assign-precision` buy, and how the
    tests check that a built-in model has the size of the real one.

    ```
    $ melt-opt --melt-model-report='output=-' model.mlir -o /dev/null
    melt model report
      weights: 1850 symbols, 684531386176 parameters
      ...
    ```
  }];
  let options = [
    Option<"output", "output", "std::string", /*default=*/"\"-\"",
           "where to write the report ('-' for stderr)">,
    Option<"json", "json", "bool", /*default=*/"false",
           "write JSON instead of text">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect"];
}

//===----------------------------------------------------------------------===//
// Precision
//===----------------------------------------------------------------------===//

def AssignPrecisionPass : Pass<"melt-assign-precision", "::mlir::ModuleOp"> {
  let summary = "choose FP8 / BF16 / FP32 per op";
  let description = [{
    Sets `precision` on every compute op and makes the choice run:

    - `deepseek-v3` (the recipe of DeepSeek-V3 §3.3): the GEMMs of
      attention, dense MLPs, shared and routed experts in FP8 e4m3 with 1x128
      activation and 128x128 weight block scales, FP32 accumulation; BF16
      for embedding, output head, router input, MTP eh_proj and the
      attention core (FP32 softmax); FP32 for RMSNorm, RoPE and router
      scores.
    - `bf16`: every GEMM and the attention in BF16 (FP32 accumulation),
      norms and RoPE in FP32.
    - `fp32`: everything in FP32.

    A latent cache (`!melt.latent_cache`, F32 out of `melt-fuse-mla`) takes
    the compute type of its MLA: BF16 in `deepseek-v3` and `bf16`, as
    DeepSeek-V3 keeps it (the function's cache arguments and results and
    each append change type together). A device keeps it so where its
    kernels take it (the CUDA device where the MLA runs on BF16 tensor
    cores); the CPU, the reference, keeps F32 rows.

    FP8 activations get a `melt.quantize` / `melt.dequantize` pair in front
    of the op (1x128 blocks). A weight whose op computes in a narrower type
    than the checkpoint stores it gets `melt.storage`: a BF16 or F32 weight
    of an FP8 GEMM is quantized in 128x128 blocks at load; an FP8
    checkpoint stays FP8 with its own scales (no round trip).

    `bf16=` keeps ops in BF16 instead of FP8, by weight name: a comma
    list of name fragments (`lm_head`, `shared_experts`) and layer ranges
    (`layers.0-2`); `bf16-ops=` by op kind (`linear`, `moe_experts`).

    `policy-file=` reads the same settings from JSON; its `policy` and
    `budget` take the place of the options', its lists add to theirs:

        {"policy": "deepseek-v3", "bf16": ["lm_head", "layers.0-2"],
         "bf16_ops": ["moe_experts"], "budget": 0.05}

    `auto` measures instead of assuming: for every GEMM it reads the weight
    from `checkpoint`, multiplies calibration inputs (`calibration`: a
    safetensors file with `input_<K>` tensors of shape [rows, K], else 64
    seeded Gaussian rows) in FP32, in BF16 and in FP8 (1x128 activations,
    128x128 weights) and keeps FP8 only where its relative error
    `||Y - Y_fp32|| / ||Y_fp32||` is within `budget`, else BF16. The report
    (`report=`) lists every GEMM with the precision chosen and both errors.
  }];
  let options = [
    Option<"policy", "policy", "std::string", /*default=*/"\"deepseek-v3\"",
           "deepseek-v3, bf16, fp32 or auto">,
    Option<"bf16", "bf16", "std::string", /*default=*/"\"\"",
           "ops kept in BF16 rather than FP8: name fragments and layers.N-M">,
    Option<"bf16Ops", "bf16-ops", "std::string", /*default=*/"\"\"",
           "op kinds kept in BF16 rather than FP8: linear, moe_experts">,
    Option<"policyFile", "policy-file", "std::string", /*default=*/"\"\"",
           "JSON file with policy, bf16, bf16_ops and budget">,
    Option<"budget", "budget", "double", /*default=*/"0.05",
           "auto: largest relative FP8 error of a GEMM output">,
    Option<"checkpoint", "checkpoint", "std::string", /*default=*/"\"\"",
           "auto: the checkpoint directory to read weights from">,
    Option<"calibration", "calibration", "std::string",
           /*default=*/"\"\"",
           "auto: safetensors file of calibration inputs (input_<K>)">,
    Option<"report", "report", "std::string", /*default=*/"\"-\"",
           "auto: where to write the per-op report ('-' for stderr)">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect"];
}

//===----------------------------------------------------------------------===//
// Multi-head latent attention
//===----------------------------------------------------------------------===//

def FuseMLAPass : Pass<"melt-fuse-mla", "::mlir::ModuleOp"> {
  let summary = "run MLA on a latent cache: absorb W_UK and W_UV";
  let description = [{
    Rewrites each attention of the model form — per-head K/V decompressed
    from the latent by kv_b_proj, cached per head — into `melt.mla` over a
    `!melt.latent_cache` that holds only the normalized compressed KV and
    the shared RoPE key: `kv_lora_rank + qk_rope_head_dim` values per token
    per layer (576 for DeepSeek-V3, 71x less than the per-head cache).
    kv_b_proj is split, without materializing anything, into W_UK
    (`[heads, nope, latent]`) and W_UV (`[heads, v, latent]`) weight views;
    decode runs absorbed (W_UK folded into the query, W_UV into the
    output). Cache arguments and results of the functions change type; the
    latent cache is F32 (the attention's operands as an FP32 run keeps
    them) until `melt-assign-precision` gives it its attention's type.
    The q and kv down-projections, which read the same hidden states,
    become one GEMM over their concatenated weights (`concat`); for FP8 the
    q part must fill whole 128-row blocks (1536 rows in DeepSeek-V3).

    `melt.mla` keeps the decompressed form for prefill longer than its
    `prefill_threshold`. `prefill=auto` picks it by a cost model: per
    query-key pair, absorbed attention costs `2 * latent + rope` multiply-adds
    per head and decompressed `nope + rope + v`, but decompressing costs
    `(nope + v) * latent` per cached token; the threshold is the query count
    where both meet (171 tokens for DeepSeek-V3). `absorbed` or
    `decompressed` force one form; `prefill-threshold` sets it. The CPU
    runtime takes the decompressed form wherever the op asks; the CUDA device
    where the attention is BF16 (K and V per head by BF16 GEMMs, then one
    fused causal attention kernel a sequence) and keeps an F32 attention
    absorbed, in F32.

    Before:
    ```mlir
    %c1 = melt.kv_cache_append %c0, %k, %v at %pos : !melt.kv_cache<heads = 128, key_dim = 192, value_dim = 128, bf16>, ...
    %keys, %values = melt.kv_cache_read %c1 : ...
    %o = melt.attention %q, %keys, %values, %pos {causal, scale = 0.1352 : f64} : ...
    ```
    After:
    ```mlir
    %c1 = melt.latent_cache_append %c0, %ckv, %kr at %pos : !melt.latent_cache<latent = 512, rope = 64, bf16>, ...
    %o = melt.mla %qn, %qr, %c1 at %pos absorb(@model.layers.0.self_attn.w_uk, @model.layers.0.self_attn.w_uv) {prefill_threshold = 171 : i64, scale = 0.1352 : f64} : ...
    ```
  }];
  let options = [
    Option<"prefill", "prefill", "std::string", /*default=*/"\"auto\"",
           "prefill form: auto (cost model), absorbed or decompressed">,
    Option<"prefillThreshold", "prefill-threshold", "int64_t",
           /*default=*/"-1",
           "decompress for prefills longer than this many tokens "
           "(overrides prefill; -1: not set)">,
    Option<"fuseDownProjections", "fuse-down-projections", "bool",
           /*default=*/"true",
           "one GEMM for the q and kv down-projections (weights "
           "concatenated; FP8 only when q_lora_rank fills 128-row blocks)">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect",
                           "::mlir::func::FuncDialect"];
}

//===----------------------------------------------------------------------===//
// Memory planning
//===----------------------------------------------------------------------===//

def PlanMemoryPass : Pass<"melt-plan-memory", "::mlir::ModuleOp"> {
  let summary = "reuse activation buffers by liveness; size the KV cache";
  let description = [{
    Gives every activation of every function a storage slot
    (`melt.slots`, one per result; -1 for caches): a slot is reused once
    the last use of its value has run, best fit by bytes per token, so the
    runtime keeps a few buffers instead of one per value. Each function gets
    `melt.memory` with the slot count and the peak activation bytes per
    token; the module gets `melt.kv_cache` with the KV bytes per token (per
    layer and in all) and the cache size for `max-batch` sequences of
    `max-context` tokens. The report prints both, with the activation bytes
    of a `max-tokens` step. DeepSeek-V3 with the latent cache in bf16 needs
    1152 bytes per token per layer.

    ```mlir
    %q = melt.linear %h, @w {melt.slots = array<i64: 3>} : ...
    func.func @forward(...) attributes {melt.memory = {slots = 6 : i64, ...}}
    ```
  }];
  let options = [
    Option<"maxBatch", "max-batch", "int64_t", /*default=*/"1",
           "sequences the KV cache holds at once">,
    Option<"maxContext", "max-context", "int64_t", /*default=*/"4096",
           "tokens per sequence">,
    Option<"maxTokens", "max-tokens", "int64_t", /*default=*/"512",
           "tokens of the largest step (prefill chunk) for activation bytes">,
    Option<"report", "report", "std::string", /*default=*/"\"-\"",
           "where to write the report ('-' for stderr)">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect"];
}

//===----------------------------------------------------------------------===//
// Expert placement
//===----------------------------------------------------------------------===//

def PlanExpertsPass : Pass<"melt-plan-experts", "::mlir::ModuleOp"> {
  let summary = "place routed experts and replicas of hot experts on devices";
  let description = [{
    Reads the per-expert load counters (and co-selection counts) that the
    runtime dumps (`melt-run --expert-stats FILE`, or
    `melt_session_expert_load_json`) and sets `placement` on every
    `melt.moe_experts`: the expert of each of the `devices` x
    `(experts + redundant) / devices` slots.

    - `balanced` does what DeepSeek's EPLB does: the `redundant` extra
      replicas go to the experts with the most load per replica, then
      replicas, heaviest first, fill the least loaded device with a free
      slot; with `nodes` > 1, experts are packed onto nodes first and
      replicated within each node.
    - `affinity` starts from `balanced` and swaps experts between devices
      while that cuts the expected cross-device token copies (co-selected
      pairs split over devices) and keeps max/mean load within 5% of
      `balanced`.

    The report gives, per router and over all, max/mean device load and
    expected cross-device copies before (expert e on device e / (experts /
    devices), no replicas) and after. Without `stats`, loads are uniform.

    ```mlir
    %y = melt.moe_experts %h, %idx, %w gate @g up @u down @d
        {placement = #melt.expert_placement<devices = 2, slots = [0, 3, 2, 1], load = [9, 8]>} : ...
    ```
  }];
  let options = [
    Option<"devices", "devices", "int64_t", /*default=*/"1",
           "number of devices the experts are spread over">,
    Option<"redundant", "redundant", "int64_t", /*default=*/"0",
           "replicas beyond one per expert">,
    Option<"nodes", "nodes", "int64_t", /*default=*/"1",
           "devices are grouped into this many nodes (hierarchical)">,
    Option<"stats", "stats", "std::string", /*default=*/"\"\"",
           "expert load statistics (JSON from the runtime)">,
    Option<"policy", "policy", "std::string", /*default=*/"\"balanced\"",
           "balanced or affinity">,
    Option<"report", "report", "std::string", /*default=*/"\"-\"",
           "where to write the report ('-' for stderr)">,
    Option<"json", "json", "bool", /*default=*/"false",
           "write the report as JSON">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect"];
}

//===----------------------------------------------------------------------===//
// Targets
//===----------------------------------------------------------------------===//

def SelectKernelsPass : Pass<"melt-select-kernels", "::mlir::ModuleOp"> {
  let summary = "choose the target's weight formats and kernels per op and shape";
  let description = [{
    For `target=cuda` (H100/H200, sm_90a), decides from each op's shapes and
    precision what the CUDA runtime does with it, and checks that the
    weights fit the device:

    - `melt.device_format` on every weight: how the device stores it.
      `fp8_blocks` (e4m3 bytes and one F32 scale per 128x128 block) for a
      GEMM operand kept in FP8 blocks (`melt.storage`, or an FP8 checkpoint
      multiplied in FP8) whose shape the FP8 kernels take (a matrix: N a
      multiple of 16, K of 512, for the FP8 GEMMs; an expert stack [E, N,
      K]: N and K multiples of 32, scales per expert, for the tensor-core
      expert kernels); `bf16` for a BF16 GEMM operand (a router's gate too
      where the router's precision computes in BF16: its scores are a GEMM
      before the routing kernel); `f32` for the rest
      (weights read by other kernels, and FP8 values no FP8 kernel takes:
      held exactly). The rules are the CUDA backend's
      (`backends/cuda/KernelRules.h`).
    - `melt.small_m_rows` on `melt.linear` / `melt.logits`: up to how many
      rows (tokens) the product streams the weight through melt's own
      kernel rather than cuBLASLt: 8 for FP8 weights (the FP8 small-M
      kernel); for BF16/F32 weights as many rows as keep rows x weight
      bytes within 40 MB (at least 1, at most 8), where it was measured to
      win on the H200 (`bench/cuda/decode_kernels.cu`).
    - `melt.experts_kernel` on `melt.moe_experts`: `tensor_cores` (BF16
      or FP8-block weights, hidden and expert sizes multiples of 32:
      mma.sync for the tokens of an expert) or `cuda_cores`.
    - `melt.mla_kernel` on `melt.mla`: `split` (heads together, the
      sequence in chunks; latent <= 512, nope <= 256, latent + rope <= 640,
      both multiples of 4), `tensor_cores` (where the attention's compute
      type is BF16 or narrower at latent 512, rope 64 and heads in 16s: a
      prefill's queries attend to a BF16 copy of the rows on tensor cores,
      measured 2x faster at 8x1024 on the H200; decode steps split) or
      `per_head`.

    The report gives the weight bytes on the device per format and the
    kernel choices, and the device's buffer plan: the KV cache per token
    (F32, as the CUDA runtime keeps it), the activations of a prefill of
    `prefill-tokens` tokens (melt-plan-memory's plan, in F32), and how many
    tokens of KV cache fit beside them and the weights. The pass fails when
    the weights exceed `device-memory` GiB, or leave no room for one
    context of the memory plan's `max_context`. `target=cpu` changes
    nothing (the CPU runtime chooses at load time).
  }];
  let options = [
    Option<"target", "target", "std::string", /*default=*/"\"cuda\"",
           "cpu or cuda">,
    Option<"deviceMemory", "device-memory", "double", /*default=*/"139.8",
           "GiB of device memory the weights must fit (an H200's)">,
    Option<"prefillTokens", "prefill-tokens", "int64_t", /*default=*/"8192",
           "tokens of one step whose activations the plan reserves">,
    Option<"report", "report", "std::string", /*default=*/"\"-\"",
           "where to write the report ('-' for stderr)">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect"];
}

#endif // MELT_PASSES_TD

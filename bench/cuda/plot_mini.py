"""Chart of the mini model end to end: melt in a session on the GPU beside
transformers (its best experts implementation for each figure).

Reads the JSON lines of melt-run --bench and hf_baseline.py (both from
scripts/gpu/mini-model.sh) and writes a PNG with two panels, decode tokens/s
at batch 1, 16 and 64 and prefill tokens/s at 1x1024 and 8x1024, a bar per
melt precision policy and one for transformers, on a log scale; the
batch-1 weight-bandwidth roofline of each policy (melt-run's
decode_roofline_tokens_per_s: the step's weight bytes at the policy's
precision over the copy bandwidth it measured in the same run; else BF16
weights at hf_baseline's copy bandwidth) is drawn on the decode panel.

    python3 bench/cuda/plot_mini.py MELT.json TORCH.json OUT.png
"""
from plot_common import inputs


def main():
    melt, torch, out, plt = inputs(__doc__)

    def best(what, **match):
        rates = [r["tok_per_s"] for r in torch if r["what"] == what and
                 all(r.get(k) == v for k, v in match.items())]
        return max(rates) if rates else 0.0

    # A re-run with another MLA kernel, the quantize pairs kept, other FP8
    # paths, the kernels launched one after another, ... (mini-model.sh's
    # MELT_COMPARE_* runs) is a series of its own.
    series = [("mla", "MLA"), ("fold", "folds"), ("fp8", "fp8"),
              ("silu_mul", "SiLU-mul"),
              ("deterministic", "fixed-order experts"),
              ("overlap", "overlap"), ("side_stream", "side stream"),
              ("latent_append", "latent append"),
              ("fp8_few_tokens", "few-tokens FP8"),
              ("logit_rows", "logit rows")]

    def label(r):
        return r["model"] + "".join(f" ({caption} {r[field]})"
                                    for field, caption in series
                                    if r.get(field))

    models = sorted({label(r) for r in melt})
    decode = [1, 16, 64]
    prefill = [1, 8]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / (len(models) + 1)
    for panel, batches, key, prompt, what in (
            (left, decode, "decode_tokens_per_s", 128, "hf_decode_eager"),
            (right, prefill, "prefill_tokens_per_s", 1024, "hf_prefill")):
        x = range(len(batches))
        for i, model in enumerate(models):
            rows = {r["batch"]: r[key] for r in melt
                    if label(r) == model and r["prompt_tokens"] == prompt}
            panel.bar([j + i * width for j in x],
                      [rows.get(b, 0.0) for b in batches], width,
                      label=f"melt {model}")
        theirs = [best(what, batch=b) if what == "hf_decode_eager"
                  else best(what, batch=b, seq=1024) for b in batches]
        panel.bar([j + len(models) * width for j in x], theirs, width,
                  label="transformers (best)")
        panel.set_xticks([j + 0.4 - width / 2 for j in x],
                         [f"batch {b}" if prompt == 128 else f"{b}x1024"
                          for b in batches])
        panel.set_yscale("log")
        panel.set_ylabel("tokens/s")
        panel.set_title("decode (prompt 128, 64 new)" if prompt == 128
                        else "prefill")
    # Each policy's batch-1 roofline as melt-run measured it (the step's
    # weight bytes at the policy's precision over its copy bandwidth);
    # without those fields, BF16 weights at hf_baseline's copy bandwidth.
    styles = iter(["--", ":", "-."])
    drawn = False
    for model in models:
        roofline = next((r["decode_roofline_tokens_per_s"] for r in melt
                         if label(r) == model and r.get("batch") == 1
                         and r.get("prompt_tokens") == 128
                         and "decode_roofline_tokens_per_s" in r), None)
        if roofline:
            left.axhline(roofline, color="gray", linestyle=next(styles),
                         label=f"b1 roofline {model}: {roofline:.0f}")
            drawn = True
    copy = next((r["GBps"] for r in torch if r["what"] == "copy_bw"), None)
    active = next((r["bf16_bytes_per_token_gb"] for r in torch
                   if r["what"] == "mini_active_params"), None)
    if copy and active and not drawn:
        left.axhline(copy / active, color="gray", linestyle="--",
                     label=f"b1 BF16 roofline {copy / active:.0f}")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Chart of the MLA decode benchmark: melt's kernel beside plain torch.

Reads the JSON lines of melt-bench-mla-decode and hf_baseline.py (both from
scripts/gpu/cuda-kernels.sh) and writes a PNG with two panels: cache
bandwidth (16 heads, memory-bound) and TFLOP/s (128 heads, compute-bound),
with the copy bandwidth measured in the same run as the roofline.

    python3 bench/cuda/plot_mla_decode.py MELT.json TORCH.json OUT.png
"""
from plot_common import inputs


def main():
    melt, torch, out, plt = inputs(__doc__)

    copy = next(r["GBps"] for r in melt if r["what"] == "copy_bw")
    # melt's default kernel for the shape (printed first), and beside it the
    # warp-MMA kernel where the default is the warpgroup one, else the
    # default kernel with its tiles by cp.async instead of TMA.
    ours, warp = {}, {}
    for r in melt:
        # The finer splits the benchmark also tries are left out.
        if (r["what"] != "mla_decode_melt"
                or r.get("chunks_per_sequence", 0) != 0):
            continue
        shape = (r["batch"], r["heads"], r["seq"])
        if shape not in ours:
            ours[shape] = r
        elif r.get("kernel") == "mma.sync" and (
                ours[shape].get("kernel") != "mma.sync"
                or r.get("tiles") == "cp.async"):
            warp[shape] = r
    theirs = {(r["batch"], r["heads"], r["seq"]): r for r in torch
              if r["what"] == "mla_decode_torch"}
    shapes = [s for s in ours if s in theirs]
    fig, panels = plt.subplots(1, 2, figsize=(11, 4))
    for panel, key, unit, heads in ((panels[0], "cache_GBps", "GB/s", 16),
                                    (panels[1], "tflops", "TFLOP/s", 128)):
        chosen = [s for s in shapes if s[1] == heads]
        labels = [f"b{b} h{h} s{s}" for b, h, s in chosen]
        x = range(len(chosen))
        panel.bar([i - 0.27 for i in x], [ours[s][key] for s in chosen],
                  0.27, label="melt")
        if any(s in warp for s in chosen):
            panel.bar(list(x), [warp[s][key] if s in warp else 0
                                for s in chosen], 0.27,
                      label="melt, warp MMA (mma.sync)" if heads == 128
                      else "melt, tiles by cp.async (not TMA)")
        panel.bar([i + 0.27 for i in x], [theirs[s][key] for s in chosen],
                  0.27, label="plain torch")
        if key == "cache_GBps":
            panel.axhline(copy, color="gray", linestyle="--",
                          label=f"copy bandwidth {copy:.0f}")
        panel.set_xticks(list(x), labels)
        panel.set_ylabel(unit)
        panel.set_title(f"MLA decode, {heads} heads")
        panel.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

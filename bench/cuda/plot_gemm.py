"""Chart of the GEMM benchmark: melt's FP8 block-scaled GEMMs beside
torch._scaled_mm with the same block scales, per V3 projection shape.

Reads the JSON lines of melt-bench-gemm and bench/cuda/gemm_torch.py (both
from scripts/gpu/cuda-kernels.sh) and writes a PNG: TFLOP/s against M (left)
and weight bandwidth against M with the copy bandwidth of the same run as
the roofline (right).

    python3 bench/cuda/plot_gemm.py MELT.json TORCH.json OUT.png
"""
from plot_common import inputs


def main():
    melt, torch, out, plt = inputs(__doc__)

    copy = next(r["GBps"] for r in melt if r["what"] == "copy_bw")
    ours = [r for r in melt if r["what"] == "gemm_melt"]
    theirs = {(r["shape"], r["m"]): r for r in torch if r["what"] == "gemm_torch"}
    shapes = list(dict.fromkeys(r["shape"] for r in ours))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for i, shape in enumerate(shapes):
        rows = sorted((r for r in ours if r["shape"] == shape), key=lambda r: r["m"])
        ms = [r["m"] for r in rows]
        color = f"C{i}"
        left.plot(ms, [r["fp8_tflops"] for r in rows], "o-", color=color, label=f"melt {shape}")
        right.plot(ms, [r["fp8_weight_GBps"] for r in rows], "o-", color=color, label=f"melt {shape}")
        tm = [m for m in ms if "fp8_tflops" in theirs.get((shape, m), {})]
        left.plot(tm, [theirs[(shape, m)]["fp8_tflops"] for m in tm], "x--", color=color)
        right.plot(tm, [theirs[(shape, m)]["fp8_weight_GBps"] for m in tm], "x--", color=color)
    right.axhline(copy, color="black", linestyle=":", label=f"copy {copy:.0f} GB/s")
    right.axhline(0.7 * copy, color="gray", linestyle=":", label="70% of copy")
    for ax, title, unit in [(left, "FP8 block-scaled GEMM", "TFLOP/s"),
                            (right, "weight bandwidth", "GB/s")]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(f"{title} (solid: melt, dashed: torch._scaled_mm)")
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

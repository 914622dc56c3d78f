"""Draw docs/lecture.md's figures from committed result files (nothing is re-measured).

    python bench/lecture_figures.py

reads bench/results/cpu-zen5-2026-11-26.json (the CPU run) and
bench/results/h100-b940c8a-quoted.json (H100 figures as quoted when measured, code at
b940c8a) and writes bench/results/lecture-claims.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    cpu = json.loads((RESULTS / "cpu-zen5-2026-11-26.json").read_text())
    h100 = {f["what"]: f["value"] for f in json.loads((RESULTS / "h100-b940c8a-quoted.json").read_text())["figures"]}
    rows = cpu["results"]

    def mm(dev: str, n: int) -> float:
        return next(r["gflops"] for r in rows if r["device"] == dev and r["op"] == "matmul" and r["shape"] == f"{n}x{n}x{n}")

    def vgg(dev: str, algo: str) -> float:  # ms per image
        r = next(r for r in rows if r["device"] == dev and r.get("layer") == "total" and r["algorithm"] == algo)
        return r["median_s"] * 1e3 / r["batch"]

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
    # Claim 1 and 3: matmul 4096^3 throughput
    names = ["CPU NumPy\n(OpenBLAS)", "CPU OpenCL\n(PoCL)", "H100 OpenCL\n(xdev kernel)", "H100 OpenCL\n(CLBlast tuned)",
             "H100 cuBLAS"]
    vals = [mm("numpy", 4096) / 1e3, mm("opencl:0:0", 4096) / 1e3, h100["xdev OpenCL matmul 4096^3 float32 (NVIDIA OpenCL)"],
            h100["CLBlast 1.5.3 tuned SGEMM 4096^3 (NVIDIA OpenCL)"], h100["cuBLAS matmul 4096^3 float32"]]
    b = ax[0].bar(names, vals, color=["#888", "#aaa", "#e69f00", "#f0c060", "#0072b2"])
    ax[0].bar_label(b, fmt="%.2f", fontsize=8)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("TFLOP/s (log)")
    ax[0].set_title("Claims 1 and 3: float32 matmul 4096^3", fontsize=10)
    ax[0].tick_params(axis="x", labelsize=7)
    # Claims 1-3: VGG-16 conv layers, ms per image
    names = ["CPU NumPy", "CPU OpenCL\ngemm", "H100 OpenCL\ndirect", "H100 OpenCL\ngemm", "H100 cuDNN\n(xdev)",
             "H100 torch"]
    vals = [vgg("numpy", "gemm"), vgg("opencl:0:0", "gemm"),
            h100["VGG-16 13 conv layers, batch 16, xdev OpenCL direct"] / 16,
            h100["VGG-16 13 conv layers, batch 16, xdev OpenCL gemm (implicit GEMM)"] / 16,
            h100["VGG-16 13 conv layers, batch 16, xdev cudnn"] / 16,
            h100["VGG-16 13 conv layers, batch 16, torch (cudnn.benchmark, no TF32)"] / 16]
    b = ax[1].bar(names, vals, color=["#888", "#aaa", "#d55e00", "#e69f00", "#0072b2", "#56b4e9"])
    ax[1].bar_label(b, fmt="%.1f", fontsize=8)
    ax[1].set_yscale("log")
    ax[1].set_ylabel("ms per image (log; lower is better)")
    ax[1].set_title("Claims 1-3: VGG-16's 13 conv layers (CPU batch 1, H100 batch 16)", fontsize=10)
    ax[1].tick_params(axis="x", labelsize=7, rotation=25)
    # Claim 4: share of a 2048^3 matmul round trip spent moving data
    share = []
    for dev in ("numpy", "opencl:0:0"):
        r = next(r for r in rows if r["device"] == dev and r["op"] == "roundtrip" and r["shape"] == "2048x2048x2048"
                 and r["algorithm"] != "compute only")
        share.append(100 * r["transfer_share"])
    share.append(100 * (1 - h100["matmul 2048^3 compute only"] / h100["matmul 2048^3 upload + compute + download"]))
    b = ax[2].bar(["CPU NumPy", "CPU OpenCL", "H100 CUDA"], share, color=["#888", "#aaa", "#0072b2"])
    ax[2].bar_label(b, fmt="%.0f%%", fontsize=8)
    ax[2].set_ylim(0, 100)
    ax[2].set_ylabel("% of upload + matmul + download")
    ax[2].set_title("Claim 4: time moving data, matmul 2048^3", fontsize=10)
    for a in ax:
        a.grid(True, axis="y", alpha=0.3)
    fig.suptitle("The lecture, measured: 2-core Zen 5 VM (bench/results/cpu-zen5-2026-11-26.json, 2026-11-26) and "
                 "H100 80GB (bench/results/h100-b940c8a-quoted.json, code at b940c8a)", fontsize=9)
    fig.tight_layout()
    out = RESULTS / "lecture-claims.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

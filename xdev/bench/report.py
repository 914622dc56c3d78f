"""Terminal tables, the JSON file and the plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .workloads import PUBLISHED


def _ms(s: float | None) -> str:
    return "" if s is None else f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}"


def _f(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def header(console: Console, machine: dict[str, Any], skipped: list[dict[str, str]]) -> None:
    cpu = machine["cpu"]
    console.print(f"[bold]xdev.bench[/bold]  CPU: {cpu['model']} ({cpu['physical_cores']} cores, "
                  f"{cpu['simd']}), Python {machine['python']}, NumPy {machine['numpy']} ({machine['blas']})")
    for d in machine["devices"]:
        extra = ", ".join(f"{k} {d[k]}" for k in ("driver", "pyopencl", "cupy", "cuda_runtime", "cudnn",
                                                      "compute_units", "multiprocessors") if d.get(k))
        console.print(escape(f"  {d['device']}: {d['name']}" + (f"  [{extra}]" if extra else "")))
        if d.get("peak_gflops"):
            console.print(f"    peak {d['peak_gflops']:.0f} GFLOP/s ({d['peak_method']})")
        if d.get("advice"):
            console.print(f"    [yellow]note:[/yellow] {escape(d['advice'])}")
    for s in skipped:
        console.print(f"  [yellow]{escape(s['backend'])} skipped:[/yellow] {escape(s['reason'])}")


def tables(console: Console, results: list[dict[str, Any]]) -> None:
    def table(title: str, cols: list[str]) -> Table:
        t = Table(title=title, title_justify="left", header_style="bold")
        for c in cols:
            t.add_column(c, justify="left" if c in ("device", "algorithm", "layer", "shape") else "right")
        return t

    mm = [r for r in results if r["op"] == "matmul"]
    if mm:
        t = table("matmul (C = A @ B; shape MxKxN)", ["device", "algorithm", "shape", "median ms", "spread ms", "GFLOP/s",
                                                       "% peak", "vs NumPy", "build s"])
        for r in mm:
            t.add_row(r["device"], r["algorithm"], r["shape"], _ms(r["median_s"]), _ms(r["spread_s"]), _f(r["gflops"], ".1f"),
                      _f(r["peak_fraction"] and 100 * r["peak_fraction"], ".0f"),
                      _f(r["speedup_vs_numpy"], ".2f"), _f(r["build_s"], ".2f"))
        console.print(t)
    conv = [r for r in results if r["op"] == "conv2d"]
    if conv:
        batches = sorted({r["batch"] for r in conv})
        t = table(f"conv2d: VGG-16 convolution layers (3x3, stride 1, pad 1; batch {'/'.join(map(str, batches))})",
                  ["device", "algorithm", "layer", "C>O @HxW", "ms", "spread", "GFLOP/s", "% peak",
                   "vs NumPy", "build s"])
        for r in conv:
            style = "bold" if r["layer"] == "total" else None
            algo = r["algorithm"] + (f" ({r['numerics']})" if r.get("numerics") else "")
            t.add_row(r["device"], escape(algo), r["layer"], r.get("geometry", ""),
                      _ms(r["median_s"]), _ms(r["spread_s"]),
                      _f(r["gflops"], ".1f"), _f(r["peak_fraction"] and 100 * r["peak_fraction"], ".0f"),
                      _f(r["speedup_vs_numpy"], ".2f"), _f(r["build_s"], ".2f"), style=style)
        console.print(t)
        lecture(console, [r for r in conv if r["layer"] == "total"])
    tr = [r for r in results if r["op"] == "transfer"]
    if tr:
        t = table("transfers (claim 4: data must reach the device)",
                  ["device", "algorithm", "shape", "median ms", "GB/s"])
        for r in tr:
            t.add_row(r["device"], r["algorithm"], r["shape"], _ms(r["median_s"]), _f(r["gbps"], ".2f"))
        console.print(t)
    rt = [r for r in results if r["op"] == "roundtrip"]
    if rt:
        t = table("matmul with and without the transfers", ["device", "shape", "algorithm", "median ms", "GFLOP/s",
                                                            "time in transfers"])
        for r in rt:
            t.add_row(r["device"], r["shape"], r["algorithm"], _ms(r["median_s"]), _f(r["gflops"], ".1f"),
                      f"{100 * r['transfer_share']:.0f}%" if r["algorithm"] != "compute only" else "")
        console.print(t)


def lecture(console: Console, totals: list[dict[str, Any]]) -> None:
    """The lecture's published VGG-16 numbers beside this machine's, per image."""
    t = Table(title="The lecture's table beside yours (milliseconds per image)", title_justify="left",
              header_style="bold", caption=PUBLISHED["source"] + "; published times are the whole "
              "network's forward pass, yours the 13 convolutions only", caption_justify="left")
    for c in ("machine", "what", "batch", "ms / image"):
        t.add_column(c, justify="right" if c in ("batch", "ms / image") else "left")
    for p in PUBLISHED["rows"]:
        t.add_row(p["device"] + " (published)", p["what"], str(p["batch"]), f"{p['ms'] / p['batch']:.1f}")
    for r in totals:
        t.add_row(f"this machine, {r['device']}", f"xdev {r['backend']} {r['algorithm']}", str(r["batch"]),
                  f"{r['median_s'] * 1e3 / r['batch']:.1f}", style="bold")
    console.print(t)


def write_json(path: str, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=str))


def plot(path: str, results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [op for op in ("matmul", "conv2d", "transfer") if any(r["op"] == op for r in results)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, op in zip(axes[0], panels):
        rows = [r for r in results if r["op"] == op]
        if op == "matmul":
            for dev in dict.fromkeys(r["device"] for r in rows):
                sq = [r for r in rows if r["device"] == dev and r.get("kind") == "square"]
                ax.plot([r["M"] for r in sq], [r["gflops"] for r in sq], "o-", label=dev)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("n (n x n x n GEMM)")
            ax.set_ylabel("GFLOP/s")
            ax.set_title("matmul throughput")
        elif op == "conv2d":
            layers = [r for r in rows if r["layer"] != "total"]
            series = list(dict.fromkeys((r["device"], r["algorithm"]) for r in layers))
            names = list(dict.fromkeys(r["layer"] for r in layers))
            width = 0.8 / max(1, len(series))
            for i, (dev, algo) in enumerate(series):
                ms = {r["layer"]: r["median_s"] * 1e3 for r in layers if (r["device"], r["algorithm"]) == (dev, algo)}
                ax.bar([j + i * width for j in range(len(names))], [ms.get(n, 0) for n in names], width,
                       label=f"{dev} {algo}")
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
            ax.set_xticklabels(names, rotation=60, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms per layer")
            ax.set_title("VGG-16 convolution layers")
        else:
            for key in dict.fromkeys((r["device"], r["algorithm"]) for r in rows):
                sel = [r for r in rows if (r["device"], r["algorithm"]) == key]
                ax.plot([r["bytes"] for r in sel], [r["gbps"] for r in sel], "o-", label=" ".join(key))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("bytes")
            ax.set_ylabel("GB/s")
            ax.set_title("transfers")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

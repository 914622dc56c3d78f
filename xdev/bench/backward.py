"""The training case: VGG-16's convolutions forward and backward (``--ops backward``).

Per layer and conv algorithm, three passes are timed interleaved in one process (forward,
backward-input, backward-weight, forward, ...), so a slow patch of a shared machine hits
all three alike and the backward/forward ratio stays honest. backward-input is
``conv2d_backward(needs=("x",))``; backward-weight is ``needs=("w", "bias")``. Totals per
algorithm go beside the lecture's published forward + backward table.
"""
from __future__ import annotations

from typing import Any, Callable

import xdev

from .noise import Case, measure_interleaved
from .run import Settings, _rand, _row
from .timing import Timing
from .workloads import ConvLayer

PASSES = ("forward", "backward-input", "backward-weight")
OP = "conv2d_backward"

# jcjohnson/cnn-benchmarks as shown in the lecture: VGG-16, batch 16, forward + backward.
PUBLISHED_TRAIN = {
    "source": "jcjohnson/cnn-benchmarks (cs231n lecture 8), VGG-16 forward + backward, batch 16",
    "rows": [
        {"device": "Pascal Titan X", "what": "cuDNN", "batch": 16, "ms": 128.6},
        {"device": "Pascal Titan X", "what": "Torch nn (im2col + cuBLAS)", "batch": 16, "ms": 358.5},
        {"device": "dual Xeon E5-2630 v3", "what": "CPU (Torch, BLAS)", "batch": 16, "ms": 8495.0},
    ],
}


def _interleaved(dev, fns: list[Callable[[], Any]], s: Settings) -> list[Timing]:
    """The passes timed in alternating rounds, first calls (kernel builds) apart."""
    return measure_interleaved([Case(dev, fn) for fn in fns], s.target_s, s.repeat)


def layer_rows(dev, s: Settings, layer: ConvLayer, algorithm: str) -> list[dict[str, Any]]:
    """Forward, backward-input and backward-weight rows of one VGG-16 layer."""
    x = xdev.asarray(_rand((layer.N, layer.C, layer.H, layer.H), s.dtype, 3), backend=dev.key)
    w = xdev.asarray(_rand((layer.O, layer.C, 3, 3), s.dtype, 4) * 0.1, backend=dev.key)
    b = xdev.asarray(_rand((layer.O,), s.dtype, 5), backend=dev.key)
    gy = xdev.asarray(_rand((layer.N, layer.O, layer.H, layer.H), s.dtype, 6), backend=dev.key)

    def fwd():
        return xdev.conv2d(x, w, b, padding=1, algorithm=algorithm)

    def bwd_x():
        return xdev.conv2d_backward(gy, x, w, padding=1, needs=("x",), algorithm=algorithm)

    def bwd_w():
        return xdev.conv2d_backward(gy, x, w, padding=1, needs=("w", "bias"), algorithm=algorithm)

    # The first calls (kernel builds) happen inside the timer, which reports them as
    # first-call and build time; the algorithms are read after it.
    timings = _interleaved(dev, [fwd, bwd_x, bwd_w], s)
    ran = [fwd().algorithm, bwd_x().algorithm, bwd_w().algorithm]
    # Each pass is one reduction of the same size: 2*N*O*Ho*Wo*C*9 flops (bias gradient aside).
    return [
        _row(dev, s, OP, layer.shape, algo, t, layer.flops, layer=layer.name, batch=layer.N,
             geometry=f"{layer.C}>{layer.O}@{layer.H}", **{"pass": ps})
        for ps, algo, t in zip(PASSES, ran, timings)
    ]


def totals(rows: list[dict[str, Any]], dev, s: Settings) -> list[dict[str, Any]]:
    """Per pass and forward+backward totals over the layers of one algorithm."""
    out = []

    def total(sel: list[dict[str, Any]], name: str) -> dict[str, Any]:
        t = Timing(sum(r["median_s"] for r in sel), sum(r["spread_s"] for r in sel),
                   min(r["repeats"] for r in sel), sum(r["build_s"] for r in sel),
                   sum(r["first_call_s"] for r in sel))
        return _row(dev, s, OP, "VGG-16 conv layers", sel[0]["algorithm"], t, sum(r["flops"] for r in sel),
                    layer="total", batch=sel[0]["batch"], **{"pass": name})

    for ps in PASSES:
        out.append(total([r for r in rows if r["pass"] == ps], ps))
    fwd, bx, bw = (r["median_s"] for r in out)
    both = total(rows, "forward+backward")
    both["backward_over_forward"] = (bx + bw) / fwd if fwd else None
    out.append(both)
    return out


def steps(dev, s: Settings, layers: list[ConvLayer], algorithms: list[str]) -> list[tuple[str, Any]]:
    """(label, thunk returning rows) per layer and algorithm; the last layer adds the totals."""
    out: list[tuple[str, Any]] = []
    for algo in algorithms:
        acc: list[dict[str, Any]] = []
        for i, layer in enumerate(layers):
            def step(layer=layer, algo=algo, acc=acc, last=i == len(layers) - 1):
                rows = layer_rows(dev, s, layer, algo)
                acc.extend(rows)
                return rows + (totals(acc, dev, s) if last else [])
            out.append((f"conv2d backward {algo} {layer.name}", step))
    return out


def tables(console, results: list[dict[str, Any]]) -> None:
    """The per-layer pass table, the totals with backward/forward, and the lecture's table
    (narrowed to the terminal as report.fit does: build s first, then the spread into ±)."""
    from rich.markup import escape

    from .report import Column, _f, _time_cell, fit, lecture_machine

    rows = [r for r in results if r["op"] == OP]
    if not rows:
        return

    def text(key: str) -> Any:
        return lambda r, st: escape(str(r[key]))

    fit(console, "conv2d forward and backward: VGG-16 convolution layers (passes timed interleaved)", [
        Column("device", text("device"), left=True), Column("algorithm", text("algorithm"), left=True),
        Column("layer", text("layer"), left=True), Column("pass", text("pass"), left=True),
        Column("ms", _time_cell("median_s"), head_short="ms ±spread"),
        Column("spread", lambda r, st: _f(r["spread_s"] * 1e3, ".1f"), drop="spread"),
        Column("GFLOP/s", lambda r, st: _f(r["gflops"], ".1f")),
        Column("build s", lambda r, st: f"{r['build_s']:.2f}", drop="build")],
        [r for r in rows if not (r["layer"] == "total" and r["pass"] == "forward+backward")],
        style=lambda r: "bold" if r["layer"] == "total" else None)
    both = [r for r in rows if r["layer"] == "total" and r["pass"] == "forward+backward"]
    lecture = [{"machine": p["device"], "what": p["what"], "batch": p["batch"], "ms": p["ms"] / p["batch"],
                "ratio": None, "mine": False} for p in PUBLISHED_TRAIN["rows"]]
    lecture += [{"machine": r["device"], "what": f"xdev {r['backend']} {r['algorithm']}", "batch": r["batch"],
                 "ms": r["median_s"] * 1e3 / r["batch"], "ratio": r.get("backward_over_forward"), "mine": True}
                for r in both]
    fit(console, "The lecture's forward + backward table beside yours (milliseconds per image)", [
        Column("machine", lecture_machine, left=True), Column("what", text("what"), left=True),
        Column("batch", lambda r, st: str(r["batch"])), Column("ms / image", lambda r, st: f"{r['ms']:.1f}"),
        Column("backward / forward", lambda r, st: "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
               head_short="bwd/fwd")], lecture, style=lambda r: "bold" if r["mine"] else None,
        caption=PUBLISHED_TRAIN["source"] + "; published times are the whole network's forward and backward "
        "pass, yours the 13 convolutions only")

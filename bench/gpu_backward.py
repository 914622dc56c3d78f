"""cuDNN forward + backward through xdev against PyTorch autograd, VGG-16 conv layers, on one GPU.

Targets: over the 13 layers, ``torch_ms / xdev_ms >= 0.9``; a layer with 3
input channels (conv1_1) alone ``>= 0.8``. Both sides run the same work per layer:
y = conv2d(x, w, b, padding=1); then grad_x, grad_w, grad_bias for an upstream gradient dy.
Per layer the two sides are timed interleaved (xdev, torch, xdev, ...) with CUDA events.
torch runs with ``cudnn.benchmark=True`` (it times cuDNN's algorithms per shape, as xdev's
autotuner does) and TF32 off on both sides (xdev's strict float32). Gradients are compared
(worst |xdev - torch| / (|torch| + 1e-3 max|torch|)) as a sanity check; the numeric contract
itself is tested by tests/contract/test_conv2d_backward.py. ``--parts`` also times each part
alone (forward, grad_x, grad_w, grad_bias) on both sides.

    python bench/gpu_backward.py [--batch 16] [--image 224] [--dtype float32] [--repeat 10]
                                 [--layers conv1_1,conv1_2] [--parts] [--json FILE]

Run from the repository root (xdev is imported from the checkout). Exit status: 0 when the
targets hold, 1 when not, 3 when they cannot be measured here (no GPU, no cuDNN frontend,
no torch with CUDA): the reason is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import xdev  # noqa: E402
from xdev.bench.workloads import vgg16  # noqa: E402

TARGET_TOTAL = 0.9
TARGET_3CH = 0.8  # layers with 3 input channels (conv1_1)


def skip(why: str) -> int:
    print(f"gpu_backward: SKIP: {why}")
    return 3


def _torch_timer(torch: Any) -> Callable[[Callable[[], Any]], float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def t(fn: Callable[[], Any]) -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return t


def measure(dev: Any, torch: Any, batch: int, image: int, dtype: str, repeat: int,
            layers: list[str] | None = None, parts: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per-layer xdev vs torch forward + backward times (ms), interleaved; totals and ratios."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tt = _torch_timer(torch)
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    rows = []
    for layer in vgg16(batch, image):
        if layers and layer.name not in layers:
            continue
        xs, ws = (layer.N, layer.C, layer.H, layer.H), (layer.O, layer.C, 3, 3)
        hx = rng.uniform(-1, 1, xs).astype(dt)
        hw = (rng.uniform(-1, 1, ws) * 0.1).astype(dt)
        hb = rng.uniform(-1, 1, (layer.O,)).astype(dt)
        hg = rng.uniform(-1, 1, (layer.N, layer.O, layer.H, layer.H)).astype(dt)
        x, w, b, gy = (xdev.asarray(h, backend="cuda") for h in (hx, hw, hb, hg))
        tx = torch.from_numpy(hx).cuda().requires_grad_(True)
        tw = torch.from_numpy(hw).cuda().requires_grad_(True)
        tb = torch.from_numpy(hb).cuda().requires_grad_(True)
        tg = torch.from_numpy(hg).cuda()

        def run_xdev() -> Any:
            y = xdev.conv2d(x, w, b, padding=1, algorithm="cudnn")
            g = xdev.conv2d_backward(gy, x, w, padding=1, algorithm="cudnn")
            return y, g

        def run_torch() -> Any:
            tx.grad = tw.grad = tb.grad = None
            y = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
            y.backward(tg)
            return y

        t0 = time.perf_counter()
        y, g = run_xdev()
        dev.synchronize()
        first_xdev = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_torch()
        torch.cuda.synchronize()
        first_torch = time.perf_counter() - t0
        assert g.algorithm == "cudnn", g.algorithm
        err = 0.0
        for ours, theirs in ((g.grad_x, tx.grad), (g.grad_w, tw.grad), (g.grad_bias, tb.grad)):
            ref = theirs.double().cpu().numpy()
            scale = np.abs(ref) + 1e-3 * np.abs(ref).max()
            err = max(err, float(np.max(np.abs(ours.numpy().astype(np.float64) - ref) / scale)))
        sides: dict[str, tuple[Callable[[Callable[[], Any]], float], Callable[[], Any]]] = {
            "xdev": (lambda f: dev.elapsed(f, 1)[0], run_xdev), "torch": (tt, run_torch)}
        if parts:
            conv_bwd = torch.ops.aten.convolution_backward
            with torch.no_grad():
                ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1)

            def tpart(mask: list[bool]) -> Callable[[], Any]:
                return lambda: conv_bwd(tg, tx, tw, [layer.O], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

            sides.update({
                "xdev forward": (lambda f: dev.elapsed(f, 1)[0],
                                 lambda: xdev.conv2d(x, w, b, padding=1, algorithm="cudnn")),
                "xdev grad_x": (lambda f: dev.elapsed(f, 1)[0],
                                lambda: xdev.conv2d_backward(gy, x, w, padding=1, needs="x", algorithm="cudnn")),
                "xdev grad_w": (lambda f: dev.elapsed(f, 1)[0],
                                lambda: xdev.conv2d_backward(gy, x, w, padding=1, needs="w", algorithm="cudnn")),
                "xdev grad_bias": (lambda f: dev.elapsed(f, 1)[0],
                                   lambda: xdev.conv2d_backward(gy, x, w, padding=1, needs="bias",
                                                                algorithm="cudnn")),
                "torch forward": (tt, lambda: torch.nn.functional.conv2d(tx.detach(), tw.detach(), tb.detach(),
                                                                         padding=1)),
                "torch grad_x": (tt, tpart([True, False, False])),
                "torch grad_w": (tt, tpart([False, True, False])),
                "torch grad_bias": (tt, tpart([False, False, True])),
            })
            for _name, (timer, fn) in sides.items():  # warm-up: plan searches, torch's benchmark
                timer(fn)
            del ty
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(repeat):
            for name, (timer, fn) in sides.items():
                times[name].append(timer(fn))
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        row = {"layer": layer.name, "shape": layer.shape, "xdev_ms": med["xdev"], "torch_ms": med["torch"],
               "first_call_s": {"xdev": first_xdev, "torch": first_torch}, "max_rel_err": err,
               "cudnn_backward": _grad_choices(dev)}
        if parts:
            row["parts_ms"] = {k: v for k, v in med.items() if k not in ("xdev", "torch")}
        rows.append(row)
        extra = ""
        if parts:
            extra = "  parts " + ", ".join(f"{k} {v:.2f}" for k, v in row["parts_ms"].items())
        log(f"  {layer.name:8s} {layer.shape:34s} xdev {row['xdev_ms']:8.2f} ms  torch {row['torch_ms']:8.2f} ms  "
            f"torch/xdev {row['torch_ms'] / row['xdev_ms']:.2f}  max rel err {err:.1e}{extra}")
    xs_ms = sum(r["xdev_ms"] for r in rows)
    ts_ms = sum(r["torch_ms"] for r in rows)
    three = [r for r in rows if r["shape"].split("x")[1] == "3"]
    r3 = (sum(r["torch_ms"] for r in three) / sum(r["xdev_ms"] for r in three)) if three else None
    return {"rows": rows, "xdev_ms": xs_ms, "torch_ms": ts_ms, "torch_over_xdev": ts_ms / xs_ms if xs_ms else None,
            "torch_over_xdev_3ch": r3, "batch": batch, "image": image, "dtype": dtype, "repeat": repeat,
            "torch_mode": "cudnn.benchmark=True, allow_tf32=False"}


def _grad_choices(dev: Any) -> list[dict[str, Any]]:
    """The dgrad/wgrad plans the autotuner kept (for the record)."""
    out = []
    for key, ex in list(getattr(dev.cudnn, "_cache", {}).items()):
        if isinstance(key, tuple) and key and key[0] in ("dgrad", "wgrad") and getattr(ex, "choice", None):
            c = ex.choice
            out.append({"op": key[0], "layout": c.layout, "plan": c.name, "candidates": c.candidates,
                        "ms": c.seconds * 1e3})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--layers", help="comma-separated layer names (default: all 13)")
    ap.add_argument("--parts", action="store_true", help="also time forward, grad_x, grad_w, grad_bias alone")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)

    from cuda_host_cost import cuda_status  # noqa: PLC0415

    st = cuda_status()
    if not st.available:
        return skip(f"xdev's cuda backend is unavailable: {st.reason}")
    from xdev._registry import get_device

    dev = get_device("cuda")
    if "cudnn" not in dev.conv_algorithms:
        return skip(f"cuDNN is unavailable to xdev: {dev.unavailable_reason('cudnn')}")
    try:
        import torch
    except ImportError as e:
        return skip(f"PyTorch is not installed ({e}); install a CUDA build of torch to compare")
    if not torch.cuda.is_available():
        return skip("torch is installed but sees no CUDA device")
    print(f"gpu_backward: {dev.name}; xdev cudnn vs torch {torch.__version__} (cuDNN "
          f"{torch.backends.cudnn.version()}, benchmark=True), VGG-16 conv layers, batch {a.batch}, {a.image}px, "
          f"{a.dtype}, {a.repeat} interleaved repeats")
    res = measure(dev, torch, a.batch, a.image, a.dtype, a.repeat, a.layers.split(",") if a.layers else None, a.parts)
    ratio, r3 = res["torch_over_xdev"], res["torch_over_xdev_3ch"]
    ok = ratio is not None and ratio >= TARGET_TOTAL and (r3 is None or r3 >= TARGET_3CH)
    print(f"gpu_backward: forward + backward: xdev cudnn {res['xdev_ms']:.1f} ms, torch {res['torch_ms']:.1f} ms; "
          f"torch/xdev = {ratio:.2f} (target >= {TARGET_TOTAL})"
          + ("" if r3 is None else f"; 3-channel layers {r3:.2f} (target >= {TARGET_3CH})")
          + f": {'PASS' if ok else 'FAIL'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev.info(), "torch": torch.__version__, **res, "pass": ok}, f, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

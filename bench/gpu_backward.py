"""cuDNN forward + backward through xdev against PyTorch autograd, VGG-16 conv layers, on one GPU.

Target: xdev's ``cudnn`` forward + backward takes at most 1/0.8 of torch's time on
the same shapes, i.e. ``torch_ms / xdev_ms >= 0.8`` over the 13 layers. Both sides run the same
work per layer: y = conv2d(x, w, b, padding=1); then grad_x, grad_w, grad_bias for an upstream
gradient dy. Per layer the two sides are timed interleaved (xdev, torch, xdev, ...) with CUDA
events; TF32 is off on both sides (xdev's default; torch's cuDNN default would allow it).
Gradients are also compared (worst |xdev - torch| / (|torch| + 1e-3 max|torch|)) as a sanity
check; the numeric contract itself is tested by tests/test_conv2d_backward.py.

    python bench/gpu_backward.py [--batch 16] [--image 224] [--dtype float32] [--repeat 10] [--json FILE]

Run from the repository root (xdev is imported from the checkout). Exit status: 0 when the
target holds, 1 when it does not, 3 when it cannot be measured here (no GPU, no cuDNN
frontend, no torch with CUDA): the reason is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import xdev  # noqa: E402
from xdev.bench.workloads import vgg16  # noqa: E402

TARGET = 0.8


def skip(why: str) -> int:
    print(f"gpu_backward: SKIP: {why}")
    return 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)

    st = xdev.available_backends()["cuda"]
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
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dt = np.dtype(a.dtype)
    print(f"gpu_backward: {dev.name}; xdev cudnn vs torch {torch.__version__} (cuDNN "
          f"{torch.backends.cudnn.version()}), VGG-16 conv layers, batch {a.batch}, {a.image}px, {a.dtype}, "
          f"{a.repeat} interleaved repeats")

    rng = np.random.default_rng(0)
    rows = []
    for layer in vgg16(a.batch, a.image):
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

        def run_xdev():
            y = xdev.conv2d(x, w, b, padding=1, algorithm="cudnn")
            g = xdev.conv2d_backward(gy, x, w, padding=1, algorithm="cudnn")
            return y, g

        def run_torch():
            tx.grad = tw.grad = tb.grad = None
            y = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
            y.backward(tg)
            return y

        t0 = time.perf_counter()
        y, g = run_xdev()
        run_torch()
        dev.synchronize()
        torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        assert g.algorithm == "cudnn", g.algorithm
        err = 0.0
        for ours, theirs in ((g.grad_x, tx.grad), (g.grad_w, tw.grad), (g.grad_bias, tb.grad)):
            ref = theirs.double().cpu().numpy()
            scale = np.abs(ref) + 1e-3 * np.abs(ref).max()
            err = max(err, float(np.max(np.abs(ours.numpy().astype(np.float64) - ref) / scale)))
        ours_s, theirs_s = [], []
        for _ in range(a.repeat):
            ours_s += dev.elapsed(run_xdev, 1)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run_torch()
            end.record()
            end.synchronize()
            theirs_s.append(start.elapsed_time(end) / 1e3)
        row = {"layer": layer.name, "shape": layer.shape, "xdev_ms": 1e3 * float(np.median(ours_s)),
               "torch_ms": 1e3 * float(np.median(theirs_s)), "first_call_s": first_s, "max_rel_err": err}
        rows.append(row)
        print(f"  {layer.name:8s} {layer.shape:34s} xdev {row['xdev_ms']:8.2f} ms  torch {row['torch_ms']:8.2f} ms  "
              f"torch/xdev {row['torch_ms'] / row['xdev_ms']:.2f}  max rel err {err:.1e}")
    xs_ms = sum(r["xdev_ms"] for r in rows)
    ts_ms = sum(r["torch_ms"] for r in rows)
    ratio = ts_ms / xs_ms
    ok = ratio >= TARGET
    print(f"gpu_backward: VGG-16 conv layers forward + backward: xdev cudnn {xs_ms:.1f} ms, torch {ts_ms:.1f} ms; "
          f"torch/xdev = {ratio:.2f} (target >= {TARGET}): {'PASS' if ok else 'FAIL'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev.info(), "torch": torch.__version__, "batch": a.batch, "image": a.image,
                       "dtype": a.dtype, "repeat": a.repeat, "rows": rows, "xdev_ms": xs_ms, "torch_ms": ts_ms,
                       "torch_over_xdev": ratio, "target": TARGET, "pass": ok}, f, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""A verdict per lecture claim (docs/lecture.md), from one run's result rows.

Each verdict: ``{"claim", "says", "status", "summary", "numbers", "reason"}``; status is
"supported", "contradicted", "within noise", "mixed" or "untested" (with the reason,
e.g. "no GPU here"). Every number carries its spread; a ratio whose spread covers the
difference is "within noise", never a win.
"""
from __future__ import annotations

from typing import Any

from .noise import ratio

CLAIMS = {
    1: "GPUs beat CPUs at matmul and convolution (thousands of cores on independent dot products)",
    2: "cuDNN beats hand-written CUDA (im2col + cuBLAS, direct): about 3x in the lecture",
    3: "OpenCL is slower than the vendor's tuned libraries (CUDA's cuBLAS/cuDNN on a GPU; here also "
       "NumPy's BLAS on the CPU): it has no libraries as tuned",
    4: "moving data to the device can be the bottleneck",
}


def _num(what: str, base: dict[str, Any], other: dict[str, Any], per: str = "") -> dict[str, Any]:
    """Throughput of `other` over `base` (per image when batches differ)."""
    bm, om = base["median_s"], other["median_s"]
    bs, os_ = base["spread_s"], other["spread_s"]
    if per == "image":
        bm, bs = bm / base["batch"], bs / base["batch"]
        om, os_ = om / other["batch"], os_ / other["batch"]
    r, sp, noise = ratio(bm, bs, om, os_)

    def label(row: dict[str, Any]) -> str:  # "numpy", "opencl:0:0 gemm"
        same = row["algorithm"] in (row["device"].split(":")[0], "cuBLAS")
        return row["device"] if same else f"{row['device']} {row['algorithm']}"
    return {"what": what, "ratio": r, "spread": sp, "within_noise": noise, "a": label(base), "b": label(other)}


def _status(nums: list[dict[str, Any]], expect_above_one: bool = True) -> str:
    if not nums:
        return "untested"
    votes = set()
    for n in nums:
        if n["within_noise"]:
            votes.add("within noise")
        else:
            votes.add("supported" if (n["ratio"] > 1) == expect_above_one else "contradicted")
    return votes.pop() if len(votes) == 1 else "mixed"


def _fmt(n: dict[str, Any]) -> str:
    noise = ", within noise" if n["within_noise"] else ""
    return f"{n['what']}: {n['ratio']:.2f}x±{n['spread']:.2f} ({n['b']} over {n['a']}){noise}"


def _largest_common_matmul(rows, a_devs, b_devs):
    sq = [r for r in rows if r["op"] == "matmul" and r.get("kind") == "square" and not r.get("reference")]
    best = None
    for n in sorted({r["M"] for r in sq}, reverse=True):
        a = [r for r in sq if r["M"] == n and r["device"] in a_devs]
        b = [r for r in sq if r["M"] == n and r["device"] in b_devs]
        if a and b:
            best = (max(a, key=lambda r: r["gflops"]), max(b, key=lambda r: r["gflops"]))
            break
    return best


def _best_total(rows, devs, algorithms=None):
    t = [r for r in rows if r["op"] == "conv2d" and r.get("layer") == "total" and r["device"] in devs
         and not r.get("reference") and (algorithms is None or r["algorithm"] in algorithms)]
    return min(t, key=lambda r: r["median_s"] / r["batch"]) if t else None


def _head_to_head(rows, base_devs, other_devs, where: str, mm_who: str, conv_who: str) -> list[dict[str, Any]]:
    """`other_devs` over `base_devs` on the largest matmul both ran and on the VGG-16 totals."""
    nums = []
    mm = _largest_common_matmul(rows, base_devs, other_devs)
    if mm:
        nums.append(_num(f"{where} matmul {mm[0]['shape']}, {mm_who}", *mm))
    a, b = _best_total(rows, base_devs), _best_total(rows, other_devs)
    if a and b:
        nums.append(_num(f"{where} VGG-16 conv layers, {conv_who}", a, b))
    return nums


def verdicts(rows: list[dict[str, Any]], devices: list[dict[str, Any]], skipped: list[dict[str, str]]
             ) -> list[dict[str, Any]]:
    """`devices`: the JSON machine block's device list (with "type"/"backend")."""
    def is_gpu(d):
        return d.get("backend") == "cuda" or str(d.get("type", "")).upper() == "GPU"

    gpus = {d["device"] for d in devices if is_gpu(d)}
    cpus = {d["device"] for d in devices if not is_gpu(d)}
    cuda = {d["device"] for d in devices if d.get("backend") == "cuda"}
    cl_gpu = {d["device"] for d in devices if d.get("backend") == "opencl" and is_gpu(d)}
    cl_cpu = {d["device"] for d in devices if d.get("backend") == "opencl" and not is_gpu(d)}
    numpy = {d["device"] for d in devices if d.get("backend") == "numpy"}
    why_no_cuda = next((s["reason"] for s in skipped if s["backend"].startswith("cuda")), None)
    out: list[dict[str, Any]] = []

    def verdict(claim: int, nums: list[dict[str, Any]], reason: str | None, extra: str = "") -> None:
        status = _status(nums) if not reason or nums else "untested"
        summary = "; ".join(_fmt(n) for n in nums) + (("; " if nums and extra else "") + extra if extra else "")
        out.append({"claim": claim, "says": CLAIMS[claim], "status": status,
                     "summary": summary or reason or "", "numbers": nums, "reason": reason})

    # 1: GPU vs CPU
    nums = []
    reason = None
    if not gpus or not cpus:
        reason = "no GPU here" + (f" (cuda: {why_no_cuda})" if why_no_cuda else "") if not gpus else \
            "no CPU backend in this run"
    else:
        mm = _largest_common_matmul(rows, cpus, gpus)
        if mm:
            nums.append(_num(f"matmul {mm[0]['shape']}", *mm))
        c, g = _best_total(rows, cpus), _best_total(rows, gpus)
        if c and g:
            nums.append(_num("VGG-16 conv layers per image", c, g, per="image"))
    verdict(1, nums, reason)

    # 2: cuDNN vs hand-written CUDA
    nums, reason = [], None
    if not cuda:
        reason = "no CUDA GPU here" + (f" ({why_no_cuda})" if why_no_cuda else "")
    else:
        cudnn = _best_total(rows, cuda, {"cudnn"})
        for algo, what in (("gemm", "im2col + cuBLAS"), ("direct", "direct kernel")):
            own = _best_total(rows, cuda, {algo})
            if cudnn and own:
                nums.append(_num(f"VGG-16 conv layers, cuDNN vs {what}", own, cudnn))
        if not nums:
            reason = "the run has no cuDNN and hand-written conv totals on the same GPU (run without --quick)"
    verdict(2, nums, reason)

    # 3: CUDA vs OpenCL on one GPU; OpenCL vs NumPy on the CPU
    nums, notes = [], []
    if cuda and cl_gpu:
        nums += _head_to_head(rows, cl_gpu, cuda, "GPU", "CUDA over OpenCL", "CUDA over OpenCL")
    else:
        notes.append("CUDA vs OpenCL on one GPU: untested, " + ("no GPU here" if not gpus else
                                                                  "the run lacks CUDA or OpenCL on the GPU"))
    cpu_nums = []
    if numpy and cl_cpu:
        cpu_nums += _head_to_head(rows, cl_cpu, numpy, "CPU", "NumPy (OpenBLAS) over OpenCL",
                                  "NumPy over OpenCL")
    else:
        notes.append("OpenCL vs NumPy on the CPU: untested, the run lacks one of them")
    nums += cpu_nums
    reason = None if nums else "; ".join(notes)
    verdict(3, nums, reason, extra="; ".join(notes) if nums else "")

    # 4: the share of time spent moving data
    rt = [r for r in rows if r["op"] == "roundtrip" and r["algorithm"] != "compute only"]
    nums = []
    for dev in dict.fromkeys(r["device"] for r in rt):
        mine = [r for r in rt if r["device"] == dev]
        for r in mine:
            nums.append({"what": f"time in transfers, {dev} {r['shape']}", "share": r["transfer_share"],
                         "spread": r.get("transfer_share_spread"), "within_noise": r.get("transfer_within_noise"),
                         "on_gpu": dev in gpus})
    if not nums:
        out.append({"claim": 4, "says": CLAIMS[4], "status": "untested", "summary": "the run has no round trips "
                    "(--ops transfer)", "numbers": [], "reason": "the run has no round trips (--ops transfer)"})
    else:
        gpu_shares = [n for n in nums if n["on_gpu"]]
        text = "; ".join(f"{n['what']}: {100 * n['share']:.0f}%±{min(100, 100 * (n['spread'] or 0)):.0f}"
                         + (" (within noise)" if n["within_noise"] else "") for n in nums)
        if gpu_shares:
            top = max(gpu_shares, key=lambda n: n["share"])
            status = "supported" if top["share"] >= 0.5 and not top["within_noise"] else "contradicted"
            reason = None
        else:
            status, reason = "untested", ("no GPU here: on the CPU the 'device' is host memory, so a transfer "
                                          "is a memory copy, not a trip over a bus")
        out.append({"claim": 4, "says": CLAIMS[4], "status": status, "summary": text, "numbers": nums,
                    "reason": reason})
    return out

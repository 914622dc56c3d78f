"""A verdict per lecture claim (docs/lecture.md), from one run's result rows.

Each verdict: ``{"claim", "says", "status", "summary", "numbers", "reason"}``; status is
"supported", "contradicted", "within noise", "mixed" or "untested" (with the reason,
e.g. "no GPU here"), or on a busy machine "inconclusive (busy machine)" (with
``measured_status``, what the numbers alone said). Every number carries its spread; a ratio
whose spread covers the difference is "within noise", never a win.
"""
from __future__ import annotations

from typing import Any

from .noise import ratio
from .sides import BASELINE

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

    def label(row: dict[str, Any]) -> str:  # "numpy" (a device's one matmul), "opencl:0:0 gemm"
        same = row["op"] == "matmul" and row.get("kind") == "square"
        return row["device"] if same else f"{row['device']} {row['algorithm']}"
    return {"what": what, "ratio": r, "spread": sp, "within_noise": noise, "a": label(base), "b": label(other)}


def _status(nums: list[dict[str, Any]], expect_above_one: bool = True) -> str:
    """From the numbers that compare like with like: a ratio across instruction sets or numeric
    modes (``like_for_like`` false) is shown with its reason but does not vote."""
    nums = [n for n in nums if n.get("like_for_like", True)]
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
    unlike = f" [not like-for-like: {n['why_not']}]" if n.get("why_not") else ""
    return f"{n['what']}: {n['ratio']:.2f}x±{n['spread']:.2f} ({n['b']} over {n['a']}){noise}{unlike}"


def _same_isa(n: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Marks a CPU number whose two sides ran different instruction sets (AVX2 vs AVX-512):
    then it compares code generators as much as libraries, and does not vote."""
    isa = {}
    for side in ("a", "b"):
        dev = n[side].split(" ")[0]
        r = next((r for r in rows if r["device"] == dev and "isa" in r), {})
        isa[side] = (r.get("isa"), r.get("isa_source"))
    n["isa_a"], n["isa_b"] = isa["a"][0], isa["b"][0]
    if isa["a"][0] and isa["b"][0] and isa["a"][0] != isa["b"][0]:
        n["like_for_like"] = False
        n["why_not"] = (f"different instruction sets, {n['a']} {isa['a'][0]} ({isa['a'][1]}) and "
                        f"{n['b']} {isa['b'][0]} ({isa['b'][1]})")
    else:
        n["like_for_like"] = True
    return n


# Why a reduced-precision library row stands beside OpenCL's best instead of a row in its mode.
NO_TENSOR_CORES = ("OpenCL C has no standard way to reach the tensor cores cuBLAS uses in {mode}, so "
                   "{dev}'s best ran {how}")


def _mode(r: dict[str, Any]) -> str:
    """The arithmetic a row ran in: its numeric_mode, else its dtype's own."""
    return r.get("numeric_mode") or {"float32": "strict-fp32", "float16": "fp16", "float64": "fp64"}.get(
        r.get("dtype", ""), r.get("dtype", ""))


def _gpu_halves(rows, devices, own, lib) -> list[dict[str, Any]]:
    """Claim 3 on a GPU, both halves: the float32 rows on FMA units on both sides (units
    against units); then each reduced-precision mode (TF32, float16) of the library beside the
    own kernels' row in the same mode, or, where they have none, beside their best row, saying
    what that ran on (voting only when both sides ran the mode)."""
    fma = [r for r in rows if _mode(r) in ("strict-fp32", "fp64", "fp16-storage-fp32-compute")]
    nums = []
    mm = _largest_common_matmul(fma, own, lib)
    if mm:
        n = _num(f"GPU matmul {mm[0]['shape']}, {_mode(mm[0])} on FMA units (units against units)", *mm)
        nums.append({**n, "like_for_like": _mode(mm[0]) == _mode(mm[1]), "mode": _mode(mm[1]),
                     **({} if _mode(mm[0]) == _mode(mm[1]) else {"why_not": f"{_mode(mm[0])} against {_mode(mm[1])}"})})
    a, b = _best_total(fma, own), _best_total(fma, lib)
    if a and b:
        nums.append({**_num(f"GPU VGG-16 conv layers, {_mode(b)} (units against units)", a, b),
                     "like_for_like": True, "mode": _mode(b)})
    info = {d["device"]: d for d in devices}
    for mode in ("tf32", "fp16"):
        mine = [r for r in rows if r["op"] == "matmul" and r["device"] in lib and _mode(r) == mode]
        if not mine:
            continue
        top = max(mine, key=lambda r: (r.get("M") or 0, r["gflops"] or 0))
        same = [r for r in rows if r["op"] == "matmul" and r["device"] in own and _mode(r) == mode
                and r["shape"] == top["shape"]]
        if same:
            other = max(same, key=lambda r: r["gflops"] or 0)
            how = other.get("numerics") or mode
            nums.append({**_num(f"GPU matmul {top['shape']} {mode}, tensor cores on both ({other['device']}: {how})",
                                other, top), "like_for_like": True, "mode": mode})
            continue
        theirs = [r for r in rows if r["op"] == "matmul" and r["device"] in own and r["shape"] == top["shape"]
                  and r.get("gflops")]
        if not theirs:
            continue
        best = max(theirs, key=lambda r: r["gflops"])
        how = best.get("numerics") or _mode(best)
        why = NO_TENSOR_CORES.format(mode=mode, dev=best["device"], how=how)
        reason = info.get(best["device"], {}).get("tensor_core_reason")
        if reason:
            why += f" ({reason})"
        nums.append({**_num(f"GPU matmul {top['shape']}, {top['algorithm']} beside {best['device']}'s best",
                            best, top), "like_for_like": False, "mode": mode, "why_not": why})
    return nums


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


def _head_to_head(rows, base_devs, other_devs, where: str) -> list[dict[str, Any]]:
    """`other_devs` over `base_devs` on the largest matmul both ran and on the VGG-16 totals."""
    nums = []
    mm = _largest_common_matmul(rows, base_devs, other_devs)
    if mm:
        nums.append(_num(f"{where} matmul {mm[0]['shape']}", *mm))
    a, b = _best_total(rows, base_devs), _best_total(rows, other_devs)
    if a and b:
        nums.append(_num(f"{where} VGG-16 conv layers", a, b))
    return nums


def verdicts(rows: list[dict[str, Any]], devices: list[dict[str, Any]], skipped: list[dict[str, str]]
             ) -> list[dict[str, Any]]:
    """`devices`: the JSON machine block's device list. What the claims compare is read from
    each entry (``is_cpu``, ``matmul_library``, ``library_algorithms``), never from a backend name.

    * claim 1: GPUs (``is_cpu`` false) against CPUs;
    * claim 2: on a device with library conv algorithms (cuDNN), those against its others;
    * claim 3: devices whose matmul calls a tuned library (cuBLAS) and the baseline (NumPy's
      BLAS) against those running xdev's own kernels (OpenCL), GPUs apart from CPUs.
    """
    mine = [d for d in devices if not d.get("reference")]
    gpus = {d["device"] for d in mine if d.get("is_cpu") is False}
    cpus = {d["device"] for d in mine if d["device"] not in gpus}
    libs = {d["device"] for d in mine if d.get("library_algorithms")}
    tuned = {d["device"] for d in mine if d.get("matmul_library") or d.get("backend") == BASELINE}
    own_gpu, own_cpu = gpus - tuned, cpus - tuned
    why_no_gpu = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped
                           if "reference" not in s["backend"] and not s.get("present"))
    out: list[dict[str, Any]] = []

    def verdict(claim: int, nums: list[dict[str, Any]], reason: str | None, extra: str = "") -> None:
        status = _status(nums) if not reason or nums else "untested"
        if not nums and not reason:  # nothing measured always says why
            reason = "the run has no rows both sides of this comparison ran"
        summary = "; ".join(_fmt(n) for n in nums) + (("; " if nums and extra else "") + extra if extra else "")
        out.append({"claim": claim, "says": CLAIMS[claim], "status": status,
                     "summary": summary or reason or "", "numbers": nums, "reason": reason})

    # 1: GPU vs CPU
    nums = []
    reason = None
    if not gpus or not cpus:
        reason = "no GPU here" + (f" ({why_no_gpu})" if why_no_gpu else "") if not gpus else \
            "no CPU backend in this run"
    else:
        mm = _largest_common_matmul(rows, cpus, gpus)
        if mm:
            nums.append(_num(f"matmul {mm[0]['shape']}", *mm))
        c, g = _best_total(rows, cpus), _best_total(rows, gpus)
        if c and g:
            nums.append(_num("VGG-16 conv layers per image", c, g, per="image"))
    verdict(1, nums, reason)

    # 2: the GPU library's convolutions (cuDNN) vs hand-written ones on the same device
    nums, reason = [], None
    lib_gpu = libs & gpus
    if not lib_gpu:
        reason = "no GPU with a convolution library here" + (f" ({why_no_gpu})" if why_no_gpu else "")
    for dev in sorted(lib_gpu):
        entry = next(d for d in mine if d["device"] == dev)
        lib_algos = set(entry["library_algorithms"])
        lib = _best_total(rows, {dev}, lib_algos)
        hand = dict.fromkeys(r["algorithm"] for r in rows if r["op"] == "conv2d" and r["device"] == dev
                             and r.get("layer") == "total" and r["algorithm"] not in lib_algos)
        for algo in hand:
            own = _best_total(rows, {dev}, {algo})
            if lib and own:
                nums.append(_num(f"{dev} VGG-16 conv layers, {lib['algorithm']} vs {algo}", own, lib))
    if lib_gpu and not nums:
        reason = "the run has no library and hand-written conv totals on the same GPU (run without --quick)"
    verdict(2, nums, reason)

    # 3: tuned libraries vs xdev's own kernels, on the GPU (both halves) and on the CPU
    nums, notes = [], []
    gpu_lib = tuned & gpus
    if gpu_lib and own_gpu:
        nums += _gpu_halves(rows, mine, own_gpu, gpu_lib)
    else:
        notes.append("the GPU's libraries vs OpenCL on one GPU: untested, " + (
            "no GPU here" if not gpus else "the run lacks a library-backed or an own-kernel device on the GPU"))
    cpu_lib = tuned & cpus
    if cpu_lib and own_cpu:
        nums += [_same_isa(n, rows) for n in _head_to_head(rows, own_cpu, cpu_lib, "CPU")]
    else:
        notes.append("OpenCL vs NumPy on the CPU: untested, the run lacks one of them")
    reason = None if nums else "; ".join(notes)
    if nums and not any(n.get("like_for_like", True) for n in nums):
        reason = "no like-for-like comparison in this run: " + "; ".join(n["why_not"] for n in nums)
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


INCONCLUSIVE = "inconclusive (busy machine)"


def judge_load(found: list[dict[str, Any]], load: dict[str, Any]) -> list[dict[str, Any]]:
    """On a busy machine (noise.summarize_load's ``busy``) every measured verdict becomes
    "inconclusive (busy machine)", keeping what the numbers said as ``measured_status``. A claim
    nothing measured (no GPU here, no like-for-like pair) stays "untested" with its reason,
    whatever the load: there are no numbers the load could have spoilt."""
    if load.get("busy"):
        for v in found:
            if v["status"] != "untested" and v["numbers"]:
                v["measured_status"], v["status"] = v["status"], INCONCLUSIVE
                v["busy"] = load["busy_reason"]
    return found

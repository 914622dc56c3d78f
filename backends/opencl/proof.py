"""Device proof: an OpenCL device is used only after xdev's kernels ran on it in a child process.

A broken OpenCL compiler does not always fail politely: pip's PoCL 3.0 (LLVM 14) on an
AVX-512 AMD CPU builds a trivial kernel, then aborts the whole process (``LLVM ERROR:
Cannot select ... _cl_fmaDv16_f``) on the first 16-wide GEMM. An abort cannot be caught,
so the kernels xdev will run on a device -- GEMM (small and the device's family), both
conv paths, the copy/fill/peak kernels, in every dtype the device offers, at the chosen
vector width and tile parameters -- are built and run on tiny shapes in a child process
and checked against NumPy. When a vector width is what breaks, narrower ones are tried;
the device is used with the first that works. The verdict is cached in
``$XDEV_CACHE_DIR/opencl-proof/`` per (platform, device, driver, kernel sources,
parameters), so only the first use of a device pays for it (a few seconds).

On a device that can run the tensor-core GEMM (tc.py: NVIDIA, compute capability 8.0+),
a second child then runs that family in both numeric modes (float16, TF32) on ragged,
batched and transposed operands; if it fails (a build error, a wrong result, a crash or a
hang) the device stays usable and only that family is switched off, with the reason kept
in the verdict (``tc_failure``, shown by ``xdev.info``).

Test hook: ``XDEV_OPENCL_PROOF_FAULT=abort`` makes every proof child call ``abort()``
(what an LLVM crash does); ``abort-first`` only the first vector width tried.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from xdev.contract import env
from xdev.contract.json_store import JsonStore

from . import tc

ENV_TIMEOUT = env.OPENCL_PROOF_TIMEOUT
ENV_FAULT = env.OPENCL_PROOF_FAULT
# Bump when the set of kernels checked below, or the verdict file's document, changes: cached
# verdicts expire (their files are named by a digest of the identity, VERSION included).
VERSION = 5  # 4: the tensor-core GEMM's check (a second child on NVIDIA GPUs); 5: the integer kernels
FILE_VERSION = 1  # of a verdict file's document (xdev.contract.json_store)
_HERE = Path(__file__).resolve().parent

FIX = (
    "install a PoCL whose compiler supports this CPU: on Debian/Ubuntu "
    "`sudo apt-get install pocl-opencl-icd`, or `conda install -c conda-forge pocl`; "
    "xdev then picks the working device by itself"
)


# What the child's compiler said it targets, per device key (isa.from_log: the LLVM CPU
# and the kernel library; {} when the driver logs neither): the CPU tile follows it.
compiler_targets: dict[str, dict[str, str]] = {}

enabled = env.opencl_proof
timeout_s = env.opencl_proof_timeout
# Unless XDEV_OPENCL_PROOF_TIMEOUT fixes it, a step is hung after STEP_FACTOR times the
# slowest step the child has finished (its first includes starting Python and OpenCL), at
# least STEP_FLOOR_S and at most env.DEFAULT_OPENCL_PROOF_TIMEOUT (before any step
# finished). Steps take 0.3-1.4 s on a 2-core EPYC, where pip's PoCL hangs at width 16: a
# fixed 60 s limit would make every proof of that device wait the whole minute.
STEP_FLOOR_S = 15.0
STEP_FACTOR = 10.0
# How long a process waits for another one proving the same device before it proves the
# device itself: a proof tries up to three widths and the tensor-core check, each child
# hung at the latest after env.DEFAULT_OPENCL_PROOF_TIMEOUT without progress.
CLAIM_WAIT_S = 5 * env.DEFAULT_OPENCL_PROOF_TIMEOUT


def step_limit(slowest: float | None, fixed: float | None) -> float:
    """Seconds without a finished step after which the proof child is taken as hung."""
    if fixed is not None:
        return fixed
    if slowest is None:
        return env.DEFAULT_OPENCL_PROOF_TIMEOUT
    return min(env.DEFAULT_OPENCL_PROOF_TIMEOUT, max(STEP_FLOOR_S, STEP_FACTOR * slowest))


def sources_hash() -> str:
    """Hash of every kernel source (VERSION, in the identity, covers the check itself)."""
    h = hashlib.sha256()
    for f in sorted(_HERE.glob("*.cl")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def widths(vw: int) -> list[int]:
    """Vector widths to try: the chosen one, then narrower ones."""
    return [vw] + [w for w in (8, 4) if w < vw]


def with_width(params: dict[str, Any], vw: int) -> dict[str, Any]:
    out = json.loads(json.dumps(params))
    for fam in ("gemm", "conv"):
        out[fam]["VW"] = vw
        out[fam]["VWD"] = max(2, vw // 2)
    return out


def identity(cand, family: str, params: dict[str, Any]) -> dict[str, Any]:
    d = cand.device
    return {
        "version": VERSION,
        "platform": cand.platform.name.strip(),
        "platform_version": cand.platform.version.strip(),
        "device": d.name.strip(),
        "driver": d.driver_version.strip(),
        "kernels": sources_hash(),
        "family": family,
        "params": _kernel_params(params),
        "pocl_env": env.pocl_codegen(),
    }


def _cache_path(ident: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return env.cache_dir() / "opencl-proof" / f"{digest}.json"


def _verdict_problem(ident: dict[str, Any], v: Any) -> str | None:
    """None if ``v`` is a verdict for ``ident``, else what is wrong with it."""
    if not (isinstance(v, dict) and isinstance(v.get("ok"), bool) and isinstance(v.get("reason"), str)):
        return "a verdict without its ok and reason fields"
    if v.get("identity") != ident:
        return "a verdict for another device, driver or kernel source"
    if v["ok"] and not (isinstance(v.get("vw"), int) and v["vw"] in (2, 4, 8, 16)):
        return f"a passing verdict with vector width {v.get('vw')!r}"
    if not isinstance(v.get("tc", ""), str):
        return "a verdict whose tensor-core entry is not text"
    return None


def _verdict_file(ident: dict[str, Any]) -> JsonStore:
    return JsonStore(_cache_path(ident), "opencl-proof", FILE_VERSION, what="OpenCL proof cache",
                     check=lambda v: _verdict_problem(ident, v), fix="the device is proven again")


# Verdicts this process could not write, by file: an unwritable cache dir costs one proof per
# device and process (warned once), not one per call.
_unwritten: dict[str, dict[str, Any]] = {}
_warned_unwritable: set[str] = set()


def _read_verdict(ident: dict[str, Any]) -> dict[str, Any] | None:
    """A cached verdict, or None if absent or not for this identity (a damaged file warns)."""
    store = _verdict_file(ident)
    return _unwritten.get(str(store.path)) or store.read()


_tc_failures: dict[str, str] = {}  # device key -> why its tensor-core GEMM failed the proof


def tc_failure(cand) -> str | None:
    """Why the proof switched `cand`'s tensor-core GEMM off, or None (passed, or not tried)."""
    return _tc_failures.get(cand.key)


def _write_verdict(ident: dict[str, Any], verdict: dict[str, Any]) -> None:
    """Atomic write; where the cache cannot be written, the verdict is kept for this process."""
    store = _verdict_file(ident)
    doc = {**verdict, "identity": ident}
    try:
        store.write(doc)
    except OSError as e:
        _unwritten[str(store.path)] = doc
        folder = str(store.path.parent)
        if folder not in _warned_unwritable:
            _warned_unwritable.add(folder)
            warnings.warn(
                f"xdev: cannot write the OpenCL proof cache {folder} ({e.strerror or e}); verdicts are kept "
                f"for this process only, so every new process proves each OpenCL device again (seconds to "
                f"tens of seconds). Fix: set XDEV_CACHE_DIR to a writable folder", RuntimeWarning, stacklevel=4)


def prove(cand, family: str, params: dict[str, Any],
          params_at: Callable[[int, dict[str, str]], dict[str, Any]] | None = None
          ) -> tuple[int | None, str | None]:
    """(vector width to use, None) if the device runs xdev's kernels, else (None, why).

    With `params_at` (vector width, compiler target -> the parameters the device will
    use), the child runs exactly those; once the first child has told what its compiler
    targets (isa.py), a check whose parameters that changes (a tile for another register
    count) is run again with the device's real ones.
    """
    if not enabled():
        return params["gemm"]["VW"], None
    ident = identity(cand, family, params)
    cached = _read_verdict(ident)
    if cached is None:
        # Processes that start at once on a fresh machine (test workers, dask workers) prove a
        # device once: the others wait for its verdict, bounded by what a proof may take.
        with _verdict_file(ident).claimed(CLAIM_WAIT_S):
            cached = _read_verdict(ident)  # proven by another process while this one waited
            if cached is None:
                return _prove(cand, family, params, params_at, ident)
    comp = cached.get("compiler")
    if isinstance(comp, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in comp.items()):
        compiler_targets[cand.key] = comp
    if cached.get("tc"):
        _tc_failures[cand.key] = cached["tc"]
    else:
        _tc_failures.pop(cand.key, None)
    return (cached["vw"], None) if cached["ok"] else (None, cached["reason"])


def _prove(cand, family: str, params: dict[str, Any],
           params_at: Callable[[int, dict[str, str]], dict[str, Any]] | None,
           ident: dict[str, Any]) -> tuple[int | None, str | None]:
    """prove() without a cached verdict: run the checks, cache what is worth keeping."""
    vw0 = int(params["gemm"]["VW"])
    first_error = None
    verdict: dict[str, Any] | None = None
    transient = False  # a hang or a kill without a compiler error: not worth remembering
    compiler: dict[str, str] = {}
    tried: set[int] = set()
    proven: dict[str, Any] | None = None  # the parameters of the passing check
    for vw in widths(vw0):
        p = None if params_at is None else params_at(vw, compiler)
        used = vw if p is None else int(p["gemm"]["VW"])  # no wider than the target's registers
        if used in tried:
            continue
        err = _check(cand, used, not tried, p)
        learned = compiler_targets.get(cand.key, {})
        if params_at is not None and learned and learned != compiler:
            # The first child told what its compiler targets: if that changes the parameters
            # (a tile for another register count), check the ones the device will use.
            compiler = learned
            again = params_at(vw, compiler)
            if _kernel_params(again) != _kernel_params(p):
                tried.add(used)
                p, used = again, int(again["gemm"]["VW"])
                err = _check(cand, used, False, p)
        tried.add(used)
        if err is None:
            if used == vw0:
                reason = ""
            elif first_error:
                reason = f"vector width {vw0} failed ({first_error}); using {used}"
            else:
                reason = f"vector width {used}: the width of the registers its compiler targets"
            verdict = {"ok": True, "vw": used, "reason": reason, "compiler": compiler or learned}
            proven = p
            break
        transient = transient or _transient(err)
        first_error = first_error or err
    if verdict is None:
        verdict = {"ok": False, "vw": None, "reason": (
            f"{cand.key} {cand.label} failed xdev's kernel check: {first_error} -- {FIX}")}
    tc_transient = False
    if verdict["ok"] and family == "gpu" and tc.support(cand.platform.name, cand.device) is None:
        err = run_tc_child(cand, verdict["vw"], proven)
        verdict["tc"] = "" if err is None else f"the tensor-core GEMM failed the device proof: {err}"
        tc_transient = err is not None and _transient(err)
        if err is None:
            _tc_failures.pop(cand.key, None)
        else:
            _tc_failures[cand.key] = verdict["tc"]
    # A failure caused by a busy machine or a killed child is retried by the next process,
    # not cached until the driver changes; a passing width (or a compiler error) is kept,
    # unless the tensor-core check hung or was killed (then all of it is proven again).
    if (verdict["ok"] and not tc_transient) or (not verdict["ok"] and not transient):
        _write_verdict(ident, verdict)
    return (verdict["vw"], None) if verdict["ok"] else (None, verdict["reason"])


def _kernel_params(p: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if p is None else {k: v for k, v in p.items() if k != "source"}


def _check(cand, vw: int, first: bool, params: dict[str, Any] | None) -> str | None:
    # (run_child without `params` when there are none: test doubles take three arguments)
    return run_child(cand, vw, first) if params is None else run_child(cand, vw, first, params=params)


def run_child(cand, vw: int, first: bool, params: dict[str, Any] | None = None) -> str | None:
    """Run the kernel check for one vector width (and `params`, else the child's own
    defaults at that width) in a child process; None, or why it failed."""
    return _spawn(cand, vw, first, params, tc_only=False)


def run_tc_child(cand, vw: int, params: dict[str, Any] | None = None) -> str | None:
    """Run the tensor-core GEMM check in a child process; None, or why it failed."""
    return _spawn(cand, vw, False, params, tc_only=True)


def _spawn(cand, vw: int, first: bool, params: dict[str, Any] | None, tc_only: bool) -> str | None:
    # The folder the running `xdev` package was imported from (already imported: this
    # module is part of it), so the child finds the same code.
    root = str(Path(sys.modules["xdev"].__file__).resolve().parent.parent)  # type: ignore[arg-type]
    child_env = env.environ_copy()
    child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    fault = env.opencl_proof_fault()
    child_env[ENV_FAULT] = "abort" if fault == "abort" or (fault == "abort-first" and first) else ""
    child_env.pop("XDEV_BACKEND", None)
    d = cand.device
    args = [sys.executable, "-m", "xdev.backends.opencl.proof_child", str(cand.p), str(cand.d), str(vw),
            d.name.strip(), cand.platform.version.strip()]
    if params is not None or tc_only:
        args.append(json.dumps(params) if params is not None else "-")
    if tc_only:
        args.append("tc")
    # A private PoCL kernel cache: a child that dies mid-build leaves its half-written
    # entry there, not in the cache the user's processes read.
    # PoCL's LLVM log names the -target-cpu and the kernel library of each build (isa.py).
    child_env["POCL_DEBUG"] = "llvm"
    with tempfile.TemporaryDirectory(prefix="xdev-proof-pocl-") as pocl_cache:
        child_env["POCL_CACHE_DIR"] = pocl_cache
        code, out, err, limit = _run(args, child_env, timeout_s())
    from .isa import from_log, without_log

    if not tc_only:  # (the tensor-core child runs on an NVIDIA GPU: no CPU target to learn)
        compiler_targets[cand.key] = from_log(err)
    err = without_log(err)
    if limit is not None:
        step = [ln for ln in out.splitlines() if ln.startswith("XDEV-PROOF-STEP ")]
        after = f" after {step[-1][len('XDEV-PROOF-STEP '):]}" if step else ""
        return (f"vector width {vw}: hung (no progress for {limit:.0f} s{after}; set "
                f"{ENV_TIMEOUT} to wait longer)")
    for line in reversed(out.splitlines()):
        if line.startswith("XDEV-PROOF "):
            try:
                res = json.loads(line[len("XDEV-PROOF "):])
            except ValueError:  # cut short by the kill after "LLVM ERROR"
                break
            if res.get("ok") and code == 0:
                return None
            return f"vector width {vw}: " + (res.get("error") or
                                             f"{DIED} (exit {code}) after passing: {_crash_line(err)}")
    return f"vector width {vw}: {DIED} (exit {code}): {_crash_line(err)}"


DIED = "the check process died"


def _transient(err: str) -> bool:
    """A failure that says nothing about the driver: a hang, or a child killed from outside
    (SIGKILL, e.g. the OOM killer; SIGTERM). An abort or a compiler error is the driver's."""
    killed = any(f"{DIED} (exit {c})" in err for c in (-9, -15))
    return ("hung (no progress" in err or killed) and "LLVM ERROR" not in err


def _run(args: list[str], env: dict[str, str], fixed: float | None) -> tuple[int, str, str, float | None]:
    """Run a child; returns (exit code, stdout, stderr, the step limit it was killed at as
    hung, else None).

    After "LLVM ERROR" the process is doomed, but on pip's PoCL it was seen to spin for
    minutes instead of exiting: the child is killed a moment after that line appears. A
    child that finishes no step within ``step_limit`` is hung (pip's PoCL at vector width
    16 also hangs in some kernels) and is killed.
    """
    import threading

    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    out: list[str] = []
    err: list[str] = []
    fatal = threading.Event()

    progress = [time.monotonic()]
    slowest: list[float | None] = [None]  # the longest a finished step took

    def pump(stream, sink, watch):
        for line in stream:
            sink.append(line)
            if watch and "LLVM ERROR" in line:
                fatal.set()
            if not watch:
                now = time.monotonic()
                if line.startswith("XDEV-PROOF-STEP "):
                    slowest[0] = max(slowest[0] or 0.0, now - progress[0])
                progress[0] = now

    threads = [threading.Thread(target=pump, args=(proc.stdout, out, False), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err, True), daemon=True)]
    for t in threads:
        t.start()
    hung: float | None = None
    while proc.poll() is None:
        if fatal.wait(0.2):
            time.sleep(1.0)  # let the lines that name the function arrive
            if proc.poll() is None:
                proc.kill()
            break
        limit = step_limit(slowest[0], fixed)
        if time.monotonic() > progress[0] + limit:  # a step made no progress: hung
            hung = limit
            proc.kill()
            break
    code = proc.wait()
    for t in threads:
        t.join(timeout=5)
    return code, "".join(out), "".join(err), None if fatal.is_set() else hung


def _crash_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "LLVM ERROR" in ln or "error:" in ln.lower() or "Assertion" in ln:
            more = [m for m in lines if m.startswith("In function:")]
            return ln + (f" ({more[0]})" if more else "")
    return lines[-1] if lines else "no output"

"""cuDNN plan autotuning: candidate graphs and plans, timing, and the choice's disk cache.

Pure Python: no CuPy here, so the test suite drives all of it with a fake cuDNN frontend.
``cudnn_conv.py`` supplies the GPU parts (arrays, CUDA events), ``cudnn_exec.py`` the execution.

For one convolution key xdev considers several *variants*: the compute layout (NCHW, and
NHWC where tensor cores run: float16 and TF32) and, with a bias, the bias fused into the
graph or added by a separate kernel (float32/float64 only: float16 must round once). Each
variant's graph gets the heuristic list (modes A + FALLBACK) with the engines xdev's numeric
rules forbid deselected; the first ``limit`` plans that build, in heuristic order, are the
candidates. Every candidate is timed as the whole call, layout conversions and the bias
kernel included, and the fastest is kept, in memory and on disk.

Why both graphs with a bias: cuDNN has no Winograd or FFT engine for a fused conv + bias
graph; those engines are only in the heuristic list of the conv-only graph. Trying the
conv-only graph with a separate bias kernel as well is what lets a numeric mode that allows
Winograd/FFT reach them.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from xdev.contract import env
from xdev.contract.json_store import JsonStore

CACHE_VERSION = 1  # of the plan cache's document (xdev.contract.json_store)
# Choices kept per file: a program sweeping shapes (a tuner, a shape-polymorphic model) would
# otherwise grow the file, and the rewrite on every new choice, without bound. Beyond this the
# least recently written choices go (they are tuned again if met again). ~200 bytes each.
CACHE_MAX_ENTRIES = 4096
CACHE_NAME = "cudnn-plans"

LAYOUTS = ("nchw", "nhwc")
KINDS = ("fused", "conv")


class CudnnUnsupported(Exception):
    """cuDNN has no engine for this convolution under xdev's numeric rules."""


def cache_dir() -> Path:
    """``$XDEV_CACHE_DIR/cudnn-plans`` (xdev.contract.env reads the variable)."""
    return env.cache_dir() / CACHE_NAME


# ---- numeric modes ------------------------------------------------------------------------------
# Modes in which the user has already chosen reduced precision: cuDNN's Winograd and FFT
# engines are allowed there by default (XDEV_CUDNN_FAST unset), because their error stays
# inside the mode's own bound (docs/cuda.md has the measured worst error/bound). Strict
# float32 and float64 stay strict unless XDEV_CUDNN_FAST=1.
REDUCED_PRECISION_MODES = ("tf32", "fp16")


def numeric_mode(dtype: str, tf32: bool) -> str:
    """"strict-fp32", "tf32", "fp16" or "fp64" for a dtype name and the TF32 switch (as applied)."""
    if dtype == "float32":
        return "tf32" if tf32 else "strict-fp32"
    return {"float16": "fp16", "float64": "fp64"}[dtype]


def winograd_fft_allowed(dtype: str, tf32: bool, setting: bool | None) -> bool:
    """Whether Winograd/FFT engines may run: ``setting`` (XDEV_CUDNN_FAST: True always, False
    never) or, when it is None, whether the numeric mode is a reduced-precision one."""
    if setting is not None:
        return setting
    return numeric_mode(dtype, tf32) in REDUCED_PRECISION_MODES


# ---- what one key computes ---------------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    """Everything that decides the graphs and the choice for one convolution call."""

    dtype: str  # "float16" | "float32" | "float64"
    xshape: tuple[int, int, int, int]
    x_layout: str  # layout the input arrives in: "nchw" | "nhwc"
    wshape: tuple[int, int, int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    out_hw: tuple[int, int]
    has_bias: bool
    tf32: bool  # float32 may use TF32 tensor cores (asked for, and the GPU has them)
    fast: bool  # Winograd / FFT allowed
    w_layout: str = "nchw"  # the weight's layout: "nchw" (OIHW) | "nhwc" (KRSC, channels-last)
    # "fprop": y = conv(x, w); "dgrad": grad_x from (grad_y, w); "wgrad": grad_w from (grad_y, x).
    # For the gradients, x_layout is grad_y's layout and w_layout that of the other operand.
    op: str = "fprop"

    @property
    def mode(self) -> str:
        """The numeric mode, as the benchmark reports it."""
        return numeric_mode(self.dtype, self.tf32)

    @property
    def tensor_cores(self) -> bool:
        return self.dtype == "float16" or (self.dtype == "float32" and self.tf32)

    def text(self) -> str:
        """A stable text form: the disk cache's key."""
        n, c, h, w = self.xshape
        o, cg, kh, kw = self.wshape
        return (("" if self.op == "fprop" else f"{self.op} ")
                + f"{self.dtype} x{n}x{c}x{h}x{w}:{self.x_layout} w{o}x{cg}x{kh}x{kw} s{self.stride[0]},{self.stride[1]} "
                f"d{self.dilation[0]},{self.dilation[1]} p{','.join(map(str, self.pad))} "
                f"bias{int(self.has_bias)} {self.mode} fast{int(self.fast)}"
                + (" w:nhwc" if self.w_layout == "nhwc" else ""))


@dataclass(frozen=True)
class Variant:
    layout: str  # compute layout of X, W and Y: "nchw" | "nhwc"
    kind: str  # "fused": conv + bias in one graph; "conv": the conv alone (bias, if any, added after)


def variants(spec: ConvSpec, autotune: bool = True) -> list[Variant]:
    """The graph variants worth trying, best guess first.

    Layouts: NHWC where tensor cores run (float16, TF32) or the input already is NHWC, NCHW
    always. Kinds: with a bias, fused first; conv-only + a bias kernel for float32/float64
    only (float16 would round twice). Without autotuning, only the first is built (and the
    next ones when it has no plan).
    """
    layouts = ["nchw", "nhwc"] if (spec.tensor_cores or "nhwc" in (spec.x_layout, spec.w_layout)) else ["nchw"]
    if spec.x_layout == "nhwc":
        layouts.reverse()  # no conversion first
    kinds = ["conv"]
    if spec.has_bias and spec.op == "fprop":
        kinds = ["fused", "conv"] if spec.dtype != "float16" else ["fused"]
    return [Variant(lay, kind) for lay in layouts for kind in kinds]


def deselected_notes(spec: ConvSpec) -> list[str]:
    """Numerical notes whose engines xdev's numeric rules forbid for this spec."""
    notes = ["REDUCED_PRECISION_REDUCTION"]
    if not (spec.dtype == "float32" and spec.tf32):
        # float32 I/O on tensor cores means TF32 (or an emulation through it); down-converted
        # inputs mean TF32 or float16: only with XDEV_CUDA_TF32=1.
        notes.append("DOWN_CONVERT_INPUTS")
        if spec.dtype == "float32":
            notes.append("TENSOR_CORE")
    if not spec.fast:
        notes += ["WINOGRAD", "WINOGRAD_TILE_4x4", "WINOGRAD_TILE_6x6", "WINOGRAD_TILE_13x13", "FFT"]
    return notes


def strides(shape: tuple[int, int, int, int], layout: str) -> list[int]:
    """Element strides of a packed (N, C, H, W)-indexed tensor stored NCHW or NHWC."""
    n, c, h, w = shape
    if layout == "nchw":
        return [c * h * w, h * w, w, 1]
    return [h * w * c, 1, w * c, c]


# ---- graphs and plans through the frontend -----------------------------------------------------
@dataclass
class Graph:
    """One built variant: the frontend graph, its tensors' uids and the plans that built."""

    variant: Variant
    graph: Any
    uids: dict[str, int]  # role -> tensor uid, in the order a call passes the arrays (ROLES)
    plans: list[tuple[int, str]]  # (heuristic index, engine config name) of built plans, in order
    workspace: dict[int, int]  # plan index -> workspace bytes
    decl: dict[str, tuple[list[int], list[int]]]  # role -> (dims, element strides), as declared()


def declared(spec: ConvSpec, variant: Variant) -> dict[str, tuple[list[int], list[int]]]:
    """Role -> (dims, element strides) of each tensor of the variant's graph, in the order a call
    passes their arrays: the operands, then the output. fprop: x, w, (bias), y; dgrad: gy, w,
    out (grad_x); wgrad: gy, x, out (grad_w). NHWC variants are channels-last throughout."""
    o, cg, kh, kw = spec.wshape
    ho, wo = spec.out_hw
    xs, ws, ys = spec.xshape, (o, cg, kh, kw), (spec.xshape[0], o, ho, wo)
    lay = variant.layout
    shapes = {"fprop": (("x", xs), ("w", ws), ("y", ys)), "dgrad": (("gy", ys), ("w", ws), ("out", xs)),
              "wgrad": (("gy", ys), ("x", xs), ("out", ws))}[spec.op]
    out = {role: (list(shape), strides(shape, lay)) for role, shape in shapes}
    if spec.op == "fprop" and variant.kind == "fused":
        out = {"x": out["x"], "w": out["w"], "bias": ([1, o, 1, 1], [o, 1, 1, 1]), "y": out["y"]}
    return out


def build_graph(mod: Any, handle: Any, spec: ConvSpec, variant: Variant) -> tuple[Any, dict[str, Any]]:
    """The frontend graph for one variant, through create_execution_plans and deselection;
    its tensors by role, as ``declared`` describes them."""
    dts = {"float16": mod.data_type.HALF, "float32": mod.data_type.FLOAT, "float64": mod.data_type.DOUBLE}
    cd = dts[spec.dtype]
    acc = mod.data_type.DOUBLE if spec.dtype == "float64" else mod.data_type.FLOAT
    g = mod.pygraph(io_data_type=cd, intermediate_data_type=acc, compute_data_type=acc, handle=handle)
    decl = declared(spec, variant)
    pt, pb, pl, pr = spec.pad
    geo = dict(pre_padding=[pt, pl], post_padding=[pb, pr], stride=list(spec.stride),
               dilation=list(spec.dilation), compute_data_type=acc)

    def tensor(name: str, role: str) -> Any:
        dim, stride = decl[role]
        return g.tensor(name=name, dim=dim, stride=stride, data_type=cd)

    if spec.op == "dgrad":
        tensors = {"gy": tensor("DY", "gy"), "w": tensor("W", "w")}
        out = g.conv_dgrad(loss=tensors["gy"], filter=tensors["w"], name="dgrad", **geo)
    elif spec.op == "wgrad":
        tensors = {"gy": tensor("DY", "gy"), "x": tensor("X", "x")}
        out = g.conv_wgrad(image=tensors["x"], loss=tensors["gy"], name="wgrad", **geo)
    else:
        tensors = {"x": tensor("X", "x"), "w": tensor("W", "w")}
        out = g.conv_fprop(image=tensors["x"], weight=tensors["w"], name="conv", **geo)
        if variant.kind == "fused":
            tensors["bias"] = tensor("B", "bias")
            out = g.bias(name="bias", input=out, bias=tensors["bias"])
    # Explicit output dims and strides: the frontend would otherwise pick channels-last.
    role = "y" if spec.op == "fprop" else "out"
    out.set_output(True).set_dim(decl[role][0]).set_stride(decl[role][1]).set_data_type(cd)
    tensors[role] = out
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([mod.heur_mode.A, mod.heur_mode.FALLBACK])
    # Deselection marks engine configs after the heuristic query (Execution_plan_list::
    # filter_numeric_notes); building a marked index then fails, so it is never a candidate.
    present = [getattr(mod.numerical_note, name) for name in deselected_notes(spec)
               if hasattr(mod.numerical_note, name)]
    g.deselect_numeric_notes(present)
    return g, tensors


def build_plans(g: Any, limit: int, only: Iterable[int] | None = None,
                deadline: float | None = None) -> list[tuple[int, str]]:
    """Build the first ``limit`` plans that build, in heuristic order (or just the ``only`` indices).

    Past ``deadline`` (time.monotonic()) no further plan is built once one has been: some
    engines compile at build time (NVRTC, ~1 s each), and the search must stay bounded.
    """
    count = int(g.get_execution_plan_count())
    order = range(count) if only is None else [i for i in only if 0 <= i < count]
    built: list[tuple[int, str]] = []
    for i in order:
        if built and deadline is not None and time.monotonic() > deadline:
            break
        try:
            g.build_plan_at_index(i)  # fails for deselected configs and unsupported ones
        except Exception:
            continue
        try:
            name = str(g.get_plan_name_at_index(i))
        except Exception:
            name = f"#{i}"
        built.append((i, name))
        if len(built) >= limit:
            break
    return built


def make_graph(mod: Any, handle: Any, spec: ConvSpec, variant: Variant, limit: int,
               only: Iterable[int] | None = None, deadline: float | None = None) -> Graph:
    g, tensors = build_graph(mod, handle, spec, variant)
    plans = build_plans(g, limit, only, deadline)
    if not plans:
        what = variant.kind if spec.op == "fprop" else spec.op
        raise LookupError(f"no cuDNN plan for the {variant.layout} {what} graph under xdev's numeric rules "
                          f"({spec.mode}, Winograd/FFT {'allowed' if spec.fast else 'off'})")
    ws = {i: int(g.get_workspace_size_plan_at_index(i)) for i, _ in plans}
    return Graph(variant, g, {role: int(t.get_uid()) for role, t in tensors.items()}, plans, ws,
                 declared(spec, variant))


# ---- the choice ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """The plan kept for a key: which variant, which heuristic index (and its name), how fast."""

    layout: str
    kind: str
    index: int
    name: str
    seconds: float  # its measured time per call (0.0 when not timed: autotuning off)
    candidates: int  # how many were timed

    @property
    def variant(self) -> Variant:
        return Variant(self.layout, self.kind)

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "kind": self.kind, "index": self.index, "name": self.name,
                "seconds": self.seconds, "candidates": self.candidates}

    @classmethod
    def from_json(cls, d: Any) -> "Choice":
        """Raises ValueError for anything that is not a well-formed entry."""
        if not isinstance(d, dict):
            raise ValueError("an entry is not an object")
        lay, kind, idx, name = d.get("layout"), d.get("kind"), d.get("index"), d.get("name")
        secs, cands = d.get("seconds", 0.0), d.get("candidates", 0)
        if lay not in LAYOUTS or kind not in KINDS:
            raise ValueError(f"bad layout/kind {lay!r}/{kind!r}")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValueError(f"bad plan index {idx!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"bad plan name {name!r}")
        if not isinstance(secs, (int, float)) or not secs >= 0 or not isinstance(cands, int):
            raise ValueError("bad timing fields")
        return cls(lay, kind, idx, name, float(secs), cands)


def choose(candidates: list[Any], time_once: Callable[[Any], float], repeats: int = 3,
           slack: float = 3.0) -> tuple[Any, float, int] | None:
    """The fastest candidate: (candidate, seconds per call, number timed), or None if none ran.

    ``time_once(c)`` runs one call of candidate ``c`` and returns its device time in seconds
    (it raises when the plan cannot run). Each candidate gets one warm-up call, then one timed
    call; a candidate already ``slack`` times slower than the best so far stops there, the
    others get ``repeats`` timed calls and count with their median.
    """
    best: tuple[Any, float] | None = None
    timed = 0
    for c in candidates:
        try:
            time_once(c)  # warm-up: lazy module loads, caches
            first = time_once(c)
        except MemoryError:
            raise
        except Exception:
            continue
        timed += 1
        times = [first]
        if best is None or first < slack * best[1]:
            try:
                times += [time_once(c) for _ in range(max(0, repeats - 1))]
            except Exception:
                continue
        times.sort()
        med = times[len(times) // 2]
        if best is None or med < best[1]:
            best = (c, med)
    if best is None:
        return None
    return best[0], best[1], timed


# ---- disk cache ---------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "gpu"


class DiskCache:
    """Choices per (GPU name, cuDNN version) in one JSON file under ``$XDEV_CACHE_DIR/cudnn-plans``.

    The file is an xdev.contract.json_store document: written atomically, read back with every
    field checked. A file that does not parse or does not belong to this GPU and cuDNN is
    ignored with a warning (and replaced at the next write); a malformed entry is dropped with
    a warning. Concurrent processes each add their choices under the store's lock. Entries are
    kept in the order they were written, at most CACHE_MAX_ENTRIES: the oldest go first.
    """

    def __init__(self, gpu: str, cudnn_version: str, folder: Path | None = None) -> None:
        self.gpu, self.cudnn = gpu, cudnn_version
        self.folder = folder if folder is not None else cache_dir()
        self.path = self.folder / f"{_slug(gpu)}--cudnn-{_slug(cudnn_version)}.json"
        self.file = JsonStore(self.path, CACHE_NAME, CACHE_VERSION, what="cuDNN plan cache", check=self._check,
                              legacy=_legacy, fix="it is tuned again and rewritten")
        self._entries: dict[str, Choice] | None = None

    def _check(self, doc: Any) -> str | None:
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
            return "a document without an entries object"
        if doc.get("gpu") != self.gpu or doc.get("cudnn") != self.cudnn:
            return f"choices for {doc.get('gpu')!r} with cuDNN {doc.get('cudnn')!r}"
        return None

    def _parse(self, doc: dict[str, Any] | None) -> dict[str, Choice]:
        entries: dict[str, Choice] = {}
        bad = 0
        for k, v in (doc or {"entries": {}})["entries"].items():
            try:
                entries[str(k)] = Choice.from_json(v)
            except ValueError:
                bad += 1
        if bad:
            warnings.warn(f"xdev: dropped {bad} malformed entr{'y' if bad == 1 else 'ies'} of the cuDNN plan "
                          f"cache {self.path}", RuntimeWarning, stacklevel=4)
        return entries

    def _load(self) -> dict[str, Choice]:
        if self._entries is None:
            self._entries = self._parse(self.file.read())
        return self._entries

    def get(self, key: str) -> Choice | None:
        return self._load().get(key)

    def put(self, key: str, choice: Choice) -> None:
        """Record a choice and rewrite the file; an unwritable cache only warns."""

        def add(entries: dict[str, Choice]) -> dict[str, Choice]:
            entries.pop(key, None)  # re-written: now the newest
            entries[key] = choice
            while len(entries) > CACHE_MAX_ENTRIES:
                del entries[next(iter(entries))]
            return entries

        def change(doc: Any) -> dict[str, Any]:
            self._entries = add(self._parse(doc))  # with what another process may have written meanwhile
            return {"gpu": self.gpu, "cudnn": self.cudnn, "written": time.time(),
                    "entries": {k: c.to_json() for k, c in self._entries.items()}}

        try:
            self.file.update(change, warn=False)
        except OSError as e:
            self._entries = add(self._load())
            warnings.warn(f"xdev: cannot write the cuDNN plan cache {self.path} ({e}); choices stay in memory",
                          RuntimeWarning, stacklevel=2)


def _legacy(doc: Any) -> Any:
    """A file of the format before the store's envelope ({"format": 1, ...}) holds the same fields."""
    return doc if isinstance(doc, dict) and doc.get("format") == 1 else None


# ---- selection: memory -> disk -> tuning ------------------------------------------------------------
def select(mod: Any, handle: Any, spec: ConvSpec, time_call: Callable[[Graph, int], float], *,
           autotune: bool, limit: int, disk: DiskCache | None, budget_s: float | None = None) -> tuple[Graph, Choice]:
    """The graph to execute and the plan chosen for ``spec``.

    A choice on disk is rebuilt alone (one plan, no timing) when its engine config still has
    the same name at the same heuristic index; otherwise, and with nothing on disk, every
    variant's candidates are timed with ``time_call(graph, index)`` (one call, seconds) and
    the fastest is recorded. Without autotuning the first variant's first plan runs. With
    ``budget_s``, plan building stops after that many seconds (each variant still gets one).
    Raises LookupError when no variant has a plan.
    """
    key = spec.text()
    if autotune and disk is not None:
        cached = disk.get(key)
        if cached is not None:
            try:
                g = make_graph(mod, handle, spec, cached.variant, 1, only=[cached.index])
            except Exception:
                g = None
            if g is not None and g.plans[0] == (cached.index, cached.name):
                return g, cached
    graphs: list[Graph] = []
    errors: list[str] = []
    deadline = None if budget_s is None else time.monotonic() + budget_s
    for v in variants(spec):
        try:
            graphs.append(make_graph(mod, handle, spec, v, limit if autotune else 1, deadline=deadline))
        except MemoryError:
            raise
        except Exception as e:  # cudnnGraphNotSupportedError, LookupError, ...
            errors.append(f"{v.layout} {v.kind}: {type(e).__name__}: {e}")
        if graphs and not autotune:
            break
    if not graphs:
        raise LookupError("; ".join(errors) or "no graph variant")
    if not autotune:
        g = graphs[0]
        i, name = g.plans[0]
        return g, Choice(g.variant.layout, g.variant.kind, i, name, 0.0, 0)
    cands = [(g, i, name) for g in graphs for i, name in g.plans]
    res = choose(cands, lambda c: time_call(c[0], c[1]))
    if res is None:
        raise LookupError("none of the candidate cuDNN plans ran: " + "; ".join(
            f"{g.variant.layout} {g.variant.kind} #{i} {name}" for g, i, name in cands))
    (g, i, name), secs, n = res
    choice = Choice(g.variant.layout, g.variant.kind, i, name, secs, n)
    if disk is not None:
        disk.put(key, choice)
    return g, choice

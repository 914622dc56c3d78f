"""Terminal tables, the JSON file and the plot."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .noise import fmt_ratio
from .sides import BASELINE
from .verdict import INCONCLUSIVE
from .workloads import PUBLISHED


# Width of the tables when output is piped (no terminal to ask): they fit a classic terminal.
PIPED_WIDTH = 80


def _ms(s: float | None) -> str:
    return "" if s is None else f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}"


def _f(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _peak(r: dict[str, Any]) -> str:
    """% of peak; above 100 is impossible and shown as a measurement error."""
    if r.get("peak_fraction") is None:
        return ""
    v = f"{100 * r['peak_fraction']:.0f}"
    return f"[red]{v}![/red]" if r.get("peak_error") else v


def _vs(r: dict[str, Any]) -> str:
    return escape(fmt_ratio(r.get("speedup_vs_numpy"), r.get("speedup_spread"), r.get("within_noise")))


RATIO_NOTE = ("vs NumPy: throughput over the NumPy backend's in the same run (above 1 = faster), ± its spread; "
              "~ = within noise (the two spreads overlap); % peak marked ! is above 100: a measurement error")


def load_line(load: dict[str, Any]) -> str:
    la = load.get("loadavg")
    st = load.get("stat")
    return (f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {load['cpus']} CPUs" if la else "load: unknown") + (
        "" if st else " (no /proc/stat: CPU steal not readable)")


def header(console: Console, machine: dict[str, Any], skipped: list[dict[str, str]],
           load: dict[str, Any] | None = None) -> None:
    cpu = machine["cpu"]
    console.print(f"[bold]xdev.bench[/bold]  CPU: {cpu['model']} ({cpu['physical_cores']} cores, "
                  f"{cpu['simd']}), Python {machine['python']}, NumPy {machine['numpy']} ({machine['blas']})")
    for d in machine["devices"]:
        extra = ", ".join(f"{k} {d[k]}" for k in ("driver", "pyopencl", "cupy", "cuda_runtime", "cudnn",
                                                      "compute_units", "multiprocessors") if d.get(k))
        console.print(escape(f"  {d['device']}: {d['name']}" + (f"  [{extra}]" if extra else "")))
        if d.get("is_cpu") and "isa" in d:  # what its code runs in: OpenBLAS's kernels, PoCL's target
            console.print(escape(f"    instruction set {d['isa'] or 'unknown'}"
                                 + (f" ({d['isa_source']})" if d.get("isa_source") else "")))
        if d.get("peak_gflops"):
            console.print(f"    peak {d['peak_gflops']:.0f} GFLOP/s ({d['peak_method']})")
        if d.get("advice"):
            console.print(f"    [yellow]note:[/yellow] {escape(d['advice'])}")
    for s in skipped:
        console.print(f"  [yellow]{escape(s['backend'])} skipped:[/yellow] {escape(s['reason'])}")
    if load:
        console.print(f"  before the run: {load_line(load)}")


# -- tables that fit the terminal ----------------------------------------------------------
#
# The numbers are the product: on a narrow terminal (80 columns is the classic) a table is
# made narrower a step at a time, in this order, until it fits, and values are never cut:
STEPS = (
    "rules",    # 1. no vertical rules or outer border (nothing lost)
    "build",    # 2. drop "build s" (compile time; in the JSON)
    "peak",     # 3. drop "% peak" (in the JSON)
    "spread",   # 4. the spread goes into the median's cell: "12.3±0.4"
    "short",    # 5. short labels: n^3 for square shapes, the layer's geometry dropped, numerics abbreviated
    "ratio",    # 6. "vs NumPy" without its ± (the ~ for "within noise" stays)
    "wrap",     # 7. last resort: long cells wrap onto a second line
)


@dataclass
class Column:
    """One column: its header, how a row's cell reads at a given narrowing step, and the step
    from which it is left out (None: always shown)."""
    head: str
    cell: Callable[[dict[str, Any], set[str]], str]
    left: bool = False
    drop: str | None = None
    head_short: str | None = None  # the header once "spread" is merged in, etc.


def render(title: str, columns: list[Column], rows: list[dict[str, Any]], steps: set[str],
           style: Callable[[dict[str, Any]], str | None] = lambda r: None, caption: str | None = None) -> Table:
    cols = [c for c in columns if c.drop is None or c.drop not in steps]
    compact = "rules" in steps
    t = Table(title=title, title_justify="left", header_style="bold", caption=caption, caption_justify="left",
              box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD, show_edge=not compact, pad_edge=not compact)
    wrap = "wrap" in steps
    for c in cols:
        head = c.head_short if (c.head_short and "spread" in steps) else c.head
        t.add_column(head, justify="left" if c.left else "right", no_wrap=not wrap, overflow="fold")
    for r in rows:
        t.add_row(*(c.cell(r, steps) for c in cols), style=style(r))
    return t


def fit(console: Console, title: str, columns: list[Column], rows: list[dict[str, Any]],
        **kw: Any) -> set[str]:
    """Print the widest rendering of the table that fits the console; returns the steps taken."""
    steps: set[str] = set()
    for step in (None, *STEPS):
        if step:
            steps.add(step)
        t = render(title, columns, rows, steps, **kw)
        natural = console.measure(t, options=console.options.update_width(100_000)).maximum
        if natural <= console.width or step == "wrap":
            break
    console.print(t)
    return steps


def _time_cell(key: str, spread_key: str = "spread_s") -> Callable[[dict[str, Any], set[str]], str]:
    def cell(r: dict[str, Any], steps: set[str]) -> str:
        if "spread" in steps and r.get(spread_key) is not None:
            return f"{_ms(r[key])}±{_ms(r[spread_key])}"
        return _ms(r[key])
    return cell


def _shape(r: dict[str, Any], steps: set[str]) -> str:
    """The row's shape; shortened: n^3 for a square product, MiB for a transfer size."""
    shape = r["shape"]
    if "short" not in steps:
        return shape
    dims = shape.split("x")
    if len(dims) == 3 and len(set(dims)) == 1 and dims[0].isdigit():
        return f"{dims[0]}^3"
    if r.get("bytes") and r["bytes"] % (1 << 20) == 0:
        return f"{r['bytes'] >> 20} MiB"
    if r.get("bytes") and r["bytes"] % (1 << 10) == 0:
        return f"{r['bytes'] >> 10} KiB"
    return shape


def _ratio(r: dict[str, Any], steps: set[str]) -> str:
    if "ratio" in steps:
        return escape(fmt_ratio(r.get("speedup_vs_numpy"), None, r.get("within_noise")))
    return _vs(r)


SHORT_ALGORITHMS = {"upload+compute+download": "with transfers", "host-to-device pageable": "h2d pageable",
                    "host-to-device pinned": "h2d pinned", "device-to-host pageable": "d2h pageable",
                    "device-to-host pinned": "d2h pinned", "host-to-device pageable, staged": "h2d staged",
                    "torch (reference)": "torch ref"}


def _algo(r: dict[str, Any], steps: set[str]) -> str:
    if not r.get("numerics"):
        return escape(SHORT_ALGORITHMS.get(r["algorithm"], r["algorithm"]) if "short" in steps else r["algorithm"])
    text = r["numerics"] if "short" not in steps else r.get("numeric_mode") or r["numerics"]
    return escape(f"{r['algorithm']} ({text})")


def _spread_col(head: str = "spread ms") -> Column:
    return Column(head, lambda r, st: _ms(r["spread_s"]), drop="spread")


def _numbers(median_head: str = "median ms") -> list[Column]:
    """The columns every timing table ends with."""
    return [Column(median_head, _time_cell("median_s"), head_short="ms ±spread"), _spread_col(),
            Column("GFLOP/s", lambda r, st: _f(r["gflops"], ".1f")),
            Column("% peak", lambda r, st: _peak(r), drop="peak"),
            Column("vs NumPy", _ratio),
            Column("build s", lambda r, st: _f(r["build_s"], ".2f"), drop="build")]


def tables(console: Console, results: list[dict[str, Any]]) -> None:
    dev = Column("device", lambda r, st: escape(r["device"]), left=True)
    mm = [r for r in results if r["op"] == "matmul"]
    if mm:
        fit(console, "matmul (C = A @ B; shape MxKxN)", [
            dev, Column("algorithm", _algo, left=True), Column("shape", _shape, left=True), *_numbers()], mm)
    conv = [r for r in results if r["op"] == "conv2d"]
    if conv:
        batches = sorted({r["batch"] for r in conv})
        fit(console, f"conv2d: VGG-16 convolution layers (3x3, stride 1, pad 1; batch {'/'.join(map(str, batches))})",
            [dev, Column("algorithm", _algo, left=True), Column("layer", lambda r, st: r["layer"], left=True),
             Column("C>O @HxW", lambda r, st: r.get("geometry", ""), drop="short"), *_numbers("ms")],
            conv, style=lambda r: "bold" if r["layer"] == "total" else None)
        lecture(console, [r for r in conv if r["layer"] == "total"])
    tr = [r for r in results if r["op"] == "transfer"]
    if tr:
        fit(console, "transfers (claim 4: data must reach the device)", [
            dev, Column("algorithm", _algo, left=True), Column("shape", _shape, left=True),
            Column("median ms", _time_cell("median_s"), head_short="ms ±spread"), _spread_col(),
            Column("GB/s", lambda r, st: _f(r["gbps"], ".2f"))], tr)
    rt = [r for r in results if r["op"] == "roundtrip"]
    if rt:
        def share(r: dict[str, Any], steps: set[str]) -> str:
            if r["algorithm"] == "compute only":
                return ""
            # Not clamped: negative means the round trip measured faster than compute alone.
            sp = 100 * (r.get("transfer_share_spread") or 0)
            text = f"{100 * r['transfer_share']:.0f}%±" + (f"{sp:.0f}" if sp < 100 else ">100")
            return text + (" ~" if r.get("transfer_within_noise") else "")
        fit(console, "matmul with and without the transfers", [
            dev, Column("shape", _shape, left=True), Column("algorithm", _algo, left=True),
            Column("median ms", _time_cell("median_s"), head_short="ms ±spread"), _spread_col(),
            Column("GFLOP/s", lambda r, st: _f(r["gflops"], ".1f")),
            Column("time in transfers", share, head_short="in transfers")], rt)


def lecture_machine(r: dict[str, Any], steps: set[str]) -> str:
    """The machine cell of a lecture table row: a published one, or this machine's ("mine")."""
    if r["mine"]:
        return escape(f"{r['machine']} (here)" if "short" in steps else f"this machine, {r['machine']}")
    return escape(r["machine"] + (" (pub.)" if "short" in steps else " (published)"))


def lecture(console: Console, totals: list[dict[str, Any]]) -> None:
    """The lecture's published VGG-16 numbers beside this machine's, per image."""
    rows = [{"machine": p["device"], "what": p["what"], "batch": p["batch"],
             "ms": p["ms"] / p["batch"], "mine": False} for p in PUBLISHED["rows"]]
    rows += [{"machine": r["device"], "batch": r["batch"], "ms": r["median_s"] * 1e3 / r["batch"],
              "what": r["algorithm"] if r.get("reference") else f"xdev {r['backend']} {r['algorithm']}", "mine": True}
             for r in totals]
    fit(console, "The lecture's table beside yours (milliseconds per image)", [
        Column("machine", lecture_machine, left=True),
        Column("what", lambda r, st: escape(r["what"]), left=True),
        Column("batch", lambda r, st: str(r["batch"])),
        Column("ms / image", lambda r, st: f"{r['ms']:.1f}")], rows,
        style=lambda r: "bold" if r["mine"] else None,
        caption=PUBLISHED["source"] + "; published times are the whole network's forward pass, yours the "
        "13 convolutions only")


def summary(console: Console, results: list[dict[str, Any]], load: dict[str, Any]) -> None:
    """One line per non-NumPy device: the headline ratios, then the load and its warnings."""
    console.print(escape(RATIO_NOTE), style="dim")
    for dev in dict.fromkeys(r["device"] for r in results if r["backend"] != BASELINE):
        parts = []
        mm = [r for r in results if r["device"] == dev and r["op"] == "matmul" and r.get("kind") == "square"
              and r.get("speedup_vs_numpy") is not None]
        if mm:
            r = max(mm, key=lambda r: r["M"])
            parts.append(f"matmul {r['shape']} {_vs(r)}")
        for r in results:
            if r["device"] == dev and r["op"] == "conv2d" and r.get("layer") == "total" \
                    and r.get("speedup_vs_numpy") is not None:
                parts.append(f"VGG-16 conv {r['algorithm']} {_vs(r)}")
        if parts:
            console.print(f"[bold]summary[/bold] {dev} vs NumPy: " + ", ".join(parts))
    flagged = [r for r in results if r.get("peak_error")]
    if flagged:
        console.print(f"[red]measurement error:[/red] {len(flagged)} result(s) above 100% of peak "
                      f"(e.g. {flagged[0]['device']} {flagged[0]['op']} {flagged[0]['shape']}); rerun on a quiet machine")
    la_b, la_a = load.get("loadavg_before"), load.get("loadavg_after")
    line = (f"load: average {la_b[0]:.2f} before, {la_a[0]:.2f} after on {load['cpus']} CPUs" if la_b and la_a
            else "load: load average unreadable")
    if load.get("others_share") is not None:
        line += (f"; during the run other processes used {100 * load['others_share']:.0f}%, steal "
                 f"{100 * (load['steal_share'] or 0):.0f}%")
    console.print(escape(line), style="dim")
    for w in load["warnings"]:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(w)}: timings and ratios are less "
                      "trustworthy; rerun on a quiet machine")


def verdicts(console: Console, found: list[dict[str, Any]], load: dict[str, Any] | None = None) -> None:
    """The lecture's claims, one verdict each: printed last."""
    busy = " [yellow](on a busy machine: see the warnings above)[/yellow]" if load and load.get("warnings") else ""
    console.print(f"[bold]The lecture's claims, measured here[/bold] (docs/lecture.md){busy}")
    colour = {"supported": "green", "contradicted": "red", "within noise": "yellow", "mixed": "yellow",
              "untested": "dim", INCONCLUSIVE: "yellow"}
    for v in found:
        c = colour.get(v["status"], "white")
        console.print(f"  claim {v['claim']} [{c}]{v['status']}[/{c}]: {escape(v['says'])}")
        if v["summary"]:
            console.print(f"      {escape(v['summary'])}")
        if v.get("reason") and v["reason"] != v["summary"]:
            console.print(f"      [dim]{escape(v['reason'])}[/dim]")
        if v.get("busy"):
            console.print(f"      [yellow]{escape(v['busy'])}: the numbers alone said {v['measured_status']}; "
                          "rerun on a quiet machine[/yellow]")


def write_json(path: str, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=str))


def plot_title(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "xdev.bench"
    m = doc.get("machine", {})
    run = doc.get("run") or {}
    when = (run.get("timestamp_utc") or "")[:16].replace("T", " ")
    devs = ", ".join(d.get("name", d.get("device", "")) for d in m.get("devices", []) if not d.get("reference"))
    cpu = m.get("cpu", {})
    return (f"xdev.bench {when} UTC" if when else "xdev.bench") + \
        f" - {cpu.get('model', '?')} ({cpu.get('logical_cores', '?')} CPUs); {devs}; {m.get('dtype', '')}"


def plot(path: str, results: list[dict[str, Any]], doc: dict[str, Any] | None = None) -> None:
    """Every row the run measured, with error bars (spread) and each device's peak line."""
    import matplotlib.pyplot as plt

    fig = figure(results, doc)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(results: list[dict[str, Any]], doc: dict[str, Any] | None = None) -> Any:
    """The figure plot() saves: one panel per op, two panels a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peaks = {d["device"]: d.get("peak_gflops") for d in (doc or {}).get("machine", {}).get("devices", [])}
    panels = [op for op in ("matmul", "conv2d", "transfer", "roundtrip") if any(r["op"] == op for r in results)]
    panels += [op for op in dict.fromkeys(r["op"] for r in results) if op not in panels]
    # A grid of at most two panels per row: four panels in one row were 2860x550 pixels.
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.0 * ncols, 5.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)

    def rate_err(rs: list[dict[str, Any]], key: str) -> list[list[float]]:
        """Asymmetric bars for a rate (GFLOP/s, GB/s): the rate at median -+ spread/2."""
        lo, hi = [], []
        for r in rs:
            m, h = r["median_s"], r["spread_s"] / 2
            v = r[key]
            lo.append(v - v * m / (m + h))
            hi.append(v * m / max(m - h, m * 0.02) - v)
        return [lo, hi]

    def time_err(rs: list[dict[str, Any] | None]) -> list[list[float]]:
        """Bars for a time in ms: median -+ spread/2, clipped above zero for log axes."""
        lo = [min(r["spread_s"] / 2, r["median_s"] * 0.98) * 1e3 if r else 0 for r in rs]
        return [lo, [r["spread_s"] / 2 * 1e3 if r else 0 for r in rs]]

    for ax, op in zip(axes.flat, panels):
        rows = [r for r in results if r["op"] == op]
        if op == "matmul":
            for dev in dict.fromkeys(r["device"] for r in rows):
                sq = [r for r in rows if r["device"] == dev and r.get("kind") == "square"]
                line = ax.errorbar([r["M"] for r in sq], [r["gflops"] for r in sq],
                                   yerr=rate_err(sq, "gflops"), fmt="o-", capsize=3, label=dev)
                colour = line[0].get_color()
                for r in rows:
                    if r["device"] == dev and r.get("kind") != "square":
                        ax.errorbar([r["K"]], [r["gflops"]], yerr=rate_err([r], "gflops"), fmt="s", color=colour,
                                    mfc="none", capsize=3, label=f"{dev} {r['shape']} (at n=K)")
                if peaks.get(dev):
                    ax.axhline(peaks[dev], color=colour, ls="--", lw=1, label=f"{dev} peak")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("n (n x n x n GEMM)")
            ax.set_ylabel("GFLOP/s")
            ax.set_title("matmul throughput")
        elif op == "conv2d":
            layers = [r for r in rows if r.get("layer") != "total"]
            series = list(dict.fromkeys((r["device"], r["algorithm"]) for r in layers))
            names = list(dict.fromkeys(r["layer"] for r in layers))
            width = 0.8 / max(1, len(series))
            for i, (dev, algo) in enumerate(series):
                sel = {r["layer"]: r for r in layers if (r["device"], r["algorithm"]) == (dev, algo)}
                total = next((r for r in rows if r.get("layer") == "total" and (r["device"], r["algorithm"]) ==
                              (dev, algo)), None)
                label = f"{dev} {algo}" + (f" (total {total['median_s'] * 1e3:.1f} ms)" if total else "")
                ax.bar([j + i * width for j in range(len(names))],
                       [sel[n]["median_s"] * 1e3 if n in sel else 0 for n in names], width,
                       yerr=time_err([sel.get(n) for n in names]),
                       capsize=2, label=label)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
            ax.set_xticklabels(names, rotation=60, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms per layer")
            ax.set_title("VGG-16 convolution layers")
        elif op == "transfer":
            for key in dict.fromkeys((r["device"], r["algorithm"]) for r in rows):
                sel = [r for r in rows if (r["device"], r["algorithm"]) == key]
                ax.errorbar([r["bytes"] for r in sel], [r["gbps"] for r in sel],
                            yerr=rate_err(sel, "gbps"), fmt="o-", capsize=3, label=" ".join(key))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("bytes")
            ax.set_ylabel("GB/s")
            ax.set_title("transfers")
        elif op == "roundtrip":
            series = list(dict.fromkeys((r["device"], r["algorithm"]) for r in rows))
            shapes = list(dict.fromkeys(r["shape"] for r in rows))
            width = 0.8 / max(1, len(series))
            for i, key in enumerate(series):
                sel = {r["shape"]: r for r in rows if (r["device"], r["algorithm"]) == key}
                ax.bar([j + i * width for j in range(len(shapes))],
                       [sel[n]["median_s"] * 1e3 if n in sel else 0 for n in shapes], width,
                       yerr=time_err([sel.get(n) for n in shapes]),
                       capsize=2, label=" ".join(key))
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
            ax.set_xticklabels(shapes, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms")
            ax.set_title("matmul with and without transfers")
        else:  # an op another module added: median per row with its spread
            labels = [f"{r['device']} {r['algorithm']} {r['shape']}" for r in rows]
            ax.barh(range(len(rows)), [r["median_s"] * 1e3 for r in rows],
                    xerr=[r["spread_s"] * 1e3 / 2 for r in rows], capsize=2)
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(labels, fontsize=7)
            ax.set_xlabel("ms")
            ax.set_title(op)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(plot_title(doc), fontsize=9)
    fig.tight_layout()
    return fig

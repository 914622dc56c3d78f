"""python -m xdev.bench compare A.json B.json [...] [--plot F.png]

The rows the result files share (same device key, op, shape, dtype, algorithm), side by
side: each file's median and spread, and each later file's throughput over the first
(above 1: faster than in A), with its spread and "~" where the spreads overlap. Reads
every schema version (docs/bench.md); version 1 files have no run block.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .meta import schema_version
from .noise import fmt_ratio, ratio


ROW_KEYS = ("op", "shape", "dtype", "device", "algorithm", "median_s", "spread_s")


def row_key(r: dict[str, Any]) -> tuple:
    # str(): a hand-edited file's list or number in a key field must not make the key unhashable
    return tuple(str(x) for x in (r["op"], r.get("layer") or "", r["shape"], r["dtype"], r["device"], r["algorithm"]))


def load(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise SystemExit(f"compare: cannot read {path}: {e}") from None
    except ValueError as e:  # UnicodeDecodeError too
        raise SystemExit(f"compare: {path} is not JSON ({e}); expected a file written by "
                         "python -m xdev.bench --json") from None
    except RecursionError:
        raise SystemExit(f"compare: {path} nests its JSON too deeply to read (thousands of levels); "
                         "expected a file written by python -m xdev.bench --json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise SystemExit(f"compare: {path} has no 'results' list; expected a file written by "
                         "python -m xdev.bench --json")
    for i, r in enumerate(doc["results"]):
        missing = [k for k in ROW_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise SystemExit(f"compare: {path}: results[{i}] lacks {', '.join(missing)}; every row of a "
                             "python -m xdev.bench --json file has " + ", ".join(ROW_KEYS))
        if not all(isinstance(r[k], (int, float)) and not isinstance(r[k], bool) for k in ("median_s", "spread_s")):
            raise SystemExit(f"compare: {path}: results[{i}] has a non-numeric median_s or spread_s "
                             f"({r['median_s']!r}, {r['spread_s']!r})")
    return doc


def shared_rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row key present in every file, in the first file's order."""
    maps = [{row_key(r): r for r in d["results"] if r.get("median_s")} for d in docs]
    out = []
    for k, first in maps[0].items():
        if all(k in m for m in maps[1:]):
            rows = [m[k] for m in maps]
            ratios = [ratio(first["median_s"], first["spread_s"], r["median_s"], r["spread_s"]) for r in rows[1:]]
            out.append({"key": k, "rows": rows, "ratios": ratios})
    return out


def describe(path: str, doc: dict[str, Any]) -> str:
    run = doc.get("run") or {}
    m = doc.get("machine", {})
    git = (run.get("git") or {}).get("commit", "")[:10]
    bits = [f"schema {schema_version(doc)}", m.get("cpu", {}).get("model", "?"),
            ", ".join(d.get("name", "") for d in m.get("devices", []) if not d.get("reference"))]
    if run.get("timestamp_utc"):
        bits.append(run["timestamp_utc"])
    if git:
        bits.append(f"git {git}")
    env = {k: v for k, v in (run.get("environment") or {}).items()}
    if env:
        bits.append(" ".join(f"{k}={v}" for k, v in env.items()))
    return f"{path}: " + "; ".join(b for b in bits if b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xdev.bench compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE.json")
    p.add_argument("--plot", metavar="FILE.png", help="draw each shared row's throughput relative to the first file")
    a = p.parse_args(argv)
    if len(a.files) < 2:
        p.error("give at least two result files")
    docs = [load(f) for f in a.files]
    names = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(docs))]
    for n, f, d in zip(names, a.files, docs):
        print(f"{n} = {describe(f, d)}")
    shared = shared_rows(docs)
    if not shared:
        print("no rows in common (rows match on device, op, shape, dtype and algorithm)")
        return 1
    print(f"{len(shared)} shared rows; {'/'.join(names[1:])}/A: throughput over A's (above 1 = faster), "
          "± spread, ~ = within noise")
    table(shared, names)
    if a.plot:
        plot(a.plot, shared, names, a.files)
        print(f"wrote {a.plot}")
    return 0


def table(shared: list[dict[str, Any]], names: list[str], console: Any = None) -> None:
    """The shared rows, narrowed to the terminal as the benchmark's own tables are (report.fit)."""
    from rich.console import Console
    from rich.markup import escape

    from .report import PIPED_WIDTH, Column, _shape, fit

    if console is None:
        console = Console() if Console().is_terminal else Console(width=PIPED_WIDTH)

    def text(i: int) -> Any:
        return lambda s, st: escape(s["key"][i])

    def ms(j: int) -> Any:
        def cell(s: dict[str, Any], steps: set[str]) -> str:
            r = s["rows"][j]
            if "spread" in steps:  # narrowed: the ratio's ± carries the spreads
                return f"{r['median_s'] * 1e3:.3f}"
            return f"{r['median_s'] * 1e3:.3f}±{r['spread_s'] * 1e3:.3f}"
        return cell

    def ratio_cell(j: int) -> Any:
        def cell(s: dict[str, Any], steps: set[str]) -> str:
            r, sp, noise = s["ratios"][j]
            return escape(fmt_ratio(r, None if "ratio" in steps else sp, noise))
        return cell

    fit(console, "", [Column("op", text(0), left=True),
                      Column("shape / layer", lambda s, st: escape(s["key"][1] or _shape({"shape": s["key"][2]}, st)),
                             left=True),
                      Column("device", text(4), left=True), Column("algorithm", text(5), left=True),
                      *[Column(f"{n} ms", ms(j)) for j, n in enumerate(names)],
                      *[Column(f"{n}/A", ratio_cell(j)) for j, n in enumerate(names[1:])]], shared)


def plot(path: str, shared: list[dict[str, Any]], names: list[str], files: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig = figure(shared, names, files)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(shared: list[dict[str, Any]], names: list[str], files: list[str]) -> Any:
    """Each shared row's throughput over the first file's, as bars from 1 on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{k[4]} {k[0]} {k[1] or k[2]} {k[5]}" for k in (s["key"] for s in shared)]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.28 * len(shared) + 1.5)))
    height = 0.8 / max(1, len(names) - 1)
    lo_all, hi_all = [1.0], [1.0]
    for j, n in enumerate(names[1:]):
        ys = [i + j * height for i in range(len(shared))]
        ratios = [s["ratios"][j][0] for s in shared]
        # On a log axis a ratio's interval is multiplicative, r / (1 + e) .. r * (1 + e) with e its
        # relative spread, so it stays positive (a linear r - spread went below zero).
        rel = [s["ratios"][j][1] / s["ratios"][j][0] for s in shared]
        lo = [r / (1 + e) for r, e in zip(ratios, rel)]
        hi = [r * (1 + e) for r, e in zip(ratios, rel)]
        lo_all += lo
        hi_all += hi
        # Bars grow from 1 (no change) towards the ratio: right = faster than A, left = slower.
        ax.barh(ys, [r - 1.0 for r in ratios], height, left=1.0,
                xerr=[[r - a for r, a in zip(ratios, lo)], [b - r for r, b in zip(ratios, hi)]],
                capsize=2, label=f"{n}: {Path(files[j + 1]).name}")
    ax.set_xscale("log")
    span = max(max(hi_all), 1.0 / min(lo_all), 1.25)
    ax.set_xlim(1.0 / (span * 1.1), span * 1.1)  # symmetric around 1 in log space
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(shared))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"throughput relative to A ({Path(files[0]).name}), log scale; right of 1 = faster")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("xdev.bench compare", fontsize=9)
    fig.tight_layout()
    return fig

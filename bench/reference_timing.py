"""What ``--reference torch`` costs: the same benchmark run without and with it, timed.

    python bench/reference_timing.py [--out DIR] [--rounds N] -- [python -m xdev.bench arguments]

Runs ``python -m xdev.bench ARGS --json`` and ``python -m xdev.bench ARGS --reference torch
--json`` alternately (A B, then B A, ... for --rounds), times each run's wall clock, and prints
last a short table: per run its seconds, the pauses between CPU sides (run.settle), the share
of the CPUs other processes took and whether the run's own load check called it busy, and
NumPy's figures (largest matmul, VGG-16 total); then the with/without ratio of mean wall times
(target for the full default run: at most 1.5; over the quiet runs when some were busy), and
NumPy's time beside torch over its time alone for each pair of neighbouring runs, with its
spread and whether it is within noise: torch beside NumPy must not slow NumPy down. NumPy's
4096^3 matmul drifted by up to 20% from run to run on a quiet 2-core VM (746-890 ms), so one
pair decides little: use --rounds 2 or more. Run it under the heavy lock on a shared machine. The table is
also written to OUT/summary.txt. Exit status 0 when every run finished, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xdev.bench.noise import ratio  # noqa: E402


def run(args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "xdev.bench", *args, "--json", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
        rc, tail = r.returncode, (r.stdout + r.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        rc, tail = "timeout", f"no result within {timeout:.0f} s"
    wall = time.perf_counter() - t0
    doc = json.loads(out.read_text()) if rc == 0 and out.exists() else None
    return {"args": args, "wall_s": wall, "rc": rc, "doc": doc, "tail": tail}


def numpy_figures(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """NumPy's largest square matmul and VGG-16 total in a result file."""
    rows = [r for r in doc["results"] if r["device"] == "numpy"]
    out = {}
    sq = [r for r in rows if r["op"] == "matmul" and r.get("kind") == "square"]
    if sq:
        out["matmul " + max(sq, key=lambda r: r["M"])["shape"]] = max(sq, key=lambda r: r["M"])
    tot = [r for r in rows if r["op"] == "conv2d" and r.get("layer") == "total"]
    if tot:
        out["VGG-16 conv total"] = tot[0]
    return out


def _load(doc: dict[str, Any] | None) -> dict[str, Any]:
    return (doc or {}).get("run", {}).get("load") or {}


def summary(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """The table: per run its wall time, pauses, load and NumPy's figures; then the with/without
    ratio of wall times and NumPy's time beside torch over its time alone, pair by pair (a pair:
    two neighbouring runs, one of each kind), over the quiet runs when some were busy."""
    lines: list[str] = []
    say = lines.append
    figs = {id(r): numpy_figures(r["doc"]) if r["doc"] else {} for _, r in runs}
    whats = list(dict.fromkeys(w for f in figs.values() for w in f))
    say(f"{'run':12s} {'wall s':>7s} {'pauses':>7s} {'waits':>5s} {'others':>6s} {'busy':>4s}  "
        + "  ".join(f"NumPy {w} ms" for w in whats))
    for name, r in runs:
        st = (r["doc"] or {}).get("run", {}).get("settle") or {}
        load = _load(r["doc"])
        others = load.get("others_share")
        cells = []
        for w in whats:
            x = figs[id(r)].get(w)
            cells.append(f"{x['median_s'] * 1e3:.1f}±{x['spread_s'] * 1e3:.1f}" if x else "-")
        say(f"{name:12s} {r['wall_s']:7.1f} {st.get('total_s', 0):6.1f}s {st.get('waits', 0):5d} "
            f"{'' if others is None else f'{100 * others:.0f}%':>6s} {'yes' if load.get('busy') else 'no':>4s}  "
            + "  ".join(f"{c:>{len(w) + 9}s}" for w, c in zip(whats, cells)))
    quiet = [(n, r) for n, r in runs if r["doc"] and not _load(r["doc"]).get("busy")]
    use = quiet if len(quiet) < len(runs) and {n for n, _ in quiet} == {"without", "with torch"} else runs
    note = f" (the {len(use)} quiet runs; busy: the run's own load check)" if use is not runs else ""
    walls = {n: [r["wall_s"] for m, r in use if m == n] for n in ("without", "with torch")}
    if all(walls.values()):
        x = (sum(walls["with torch"]) / len(walls["with torch"])) / (sum(walls["without"]) / len(walls["without"]))
        say(f"with/without, mean wall time{note}: {x:.2f}x (the target, for the full default run: <= 1.5x) -> "
            f"{'met' if x <= 1.5 else 'NOT met'}")
    pairs = [(runs[i], runs[i + 1]) for i in range(len(runs) - 1)
             if {runs[i][0], runs[i + 1][0]} == {"without", "with torch"}]
    if pairs:
        say("NumPy's time beside torch over its time alone, per pair of neighbouring runs (± spread; "
            "~ = within noise):")
    for first, second in pairs:
        alone, beside = (first, second) if first[0] == "without" else (second, first)
        busy = [n for n, r in (alone, beside) if _load(r["doc"]).get("busy")]
        for what, base in figs[id(alone[1])].items():
            other = figs[id(beside[1])].get(what)
            if other:
                r, sp, noise = ratio(other["median_s"], other["spread_s"], base["median_s"], base["spread_s"])
                say(f"  runs {runs.index(first) + 1}-{runs.index(second) + 1} {what:26s} {r:.3f}x±{sp:.3f}"
                    f"{' ~' if noise else ''}  ({other.get('isa') or ''})"
                    + (f"  [busy: {', '.join(busy)}]" if busy else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/xdev_reference_timing",
                   help="folder for the result files (default $OUT, else /tmp/xdev_reference_timing)")
    p.add_argument("--rounds", type=int, default=1, help="pairs of runs, alternating which goes first")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    a = p.parse_args(own)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, dict[str, Any]]] = []
    for i in range(a.rounds):
        order = [("without", []), ("with torch", ["--reference", "torch"])]
        for name, extra in (order if i % 2 == 0 else order[::-1]):
            path = out / f"{'with' if extra else 'without'}-{i}.json"
            print(f"running python -m xdev.bench {' '.join(bench_args + extra)} ...", flush=True)
            r = run(bench_args + extra, path, a.timeout)
            print(f"  {name}: {r['wall_s']:.1f} s, exit {r['rc']}", flush=True)
            if r["rc"] != 0:
                print(r["tail"])
            runs.append((name, r))
    ok = all(r["rc"] == 0 for _, r in runs)
    lines: list[str] = []
    say = lines.append  # the table goes to the terminal and to summary.txt
    say("")
    say(f"python -m xdev.bench {' '.join(bench_args)} [--reference torch]  ({a.rounds} pair(s), alternating)")
    say(summary(runs))
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    (out / "summary.txt").write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

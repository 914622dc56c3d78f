"""What ``--reference torch`` costs: the same benchmark run without and with it, timed.

    python bench/reference_timing.py [--out DIR] [--rounds N] -- [python -m xdev.bench arguments]

Runs ``python -m xdev.bench ARGS --json`` and ``python -m xdev.bench ARGS --reference torch
--json`` alternately (A B, then B A, ... for --rounds), times each run's wall clock, and prints
last a short table: each run's seconds, the with/without ratio (target: at most 1.5), the
pauses between CPU sides (run.settle), and NumPy's figures in both runs (largest matmul,
VGG-16 total) with their ratio and whether it is within noise: torch beside NumPy must not
slow NumPy down. Run it under the heavy lock on a shared machine. The table is also written
to OUT/summary.txt. Exit status 0 when every run finished, 1 otherwise.
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
    say(f"{'run':12s} {'wall s':>8s} {'pauses':>8s} {'waits':>6s} {'longest':>8s}")
    for name, r in runs:
        st = (r["doc"] or {}).get("run", {}).get("settle") or {}
        say(f"{name:12s} {r['wall_s']:8.1f} {st.get('total_s', 0):7.1f}s {st.get('waits', 0):6d} "
              f"{(st.get('max_s') or 0) * 1e3:6.0f}ms")
    walls = {n: [r["wall_s"] for m, r in runs if m == n] for n in ("without", "with torch")}
    if all(walls.values()):
        x = sum(walls["with torch"]) / sum(walls["without"])
        say(f"with/without: {x:.2f}x (target <= 1.5x) -> {'met' if x <= 1.5 else 'NOT met'}")
    docs = {n: [r["doc"] for m, r in runs if m == n and r["doc"]] for n in ("without", "with torch")}
    if all(docs.values()):
        say("NumPy's time beside torch over its time alone (± spread; ~ = within noise):")
        for what, base in numpy_figures(docs["without"][0]).items():
            beside = numpy_figures(docs["with torch"][0]).get(what)
            if beside:
                r, sp, noise = ratio(beside["median_s"], beside["spread_s"], base["median_s"], base["spread_s"])
                say(f"  {what:28s} alone {base['median_s'] * 1e3:9.2f}±{base['spread_s'] * 1e3:.2f} ms, beside torch "
                      f"{beside['median_s'] * 1e3:9.2f}±{beside['spread_s'] * 1e3:.2f} ms: {r:.3f}x±{sp:.3f}"
                      f"{' ~' if noise else ''}  ({beside.get('isa') or ''})")
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    (out / "summary.txt").write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

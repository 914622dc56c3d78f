"""The benchmark with backends it has never heard of, and with a GPU on a machine without one.

tests/fakes registers fake backends (NumPy underneath) in every process started with it on
PYTHONPATH: ``XDEV_TEST_FAKES=toy`` adds a backend "toy" with the one registry entry
docs/architecture.md's "Adding a backend" lists; ``XDEV_TEST_FAKES=cuda`` replaces the cuda
backend by a fake GPU; ``XDEV_TEST_FAKES=opencl-gpu`` puts a fake OpenCL GPU in front of the real
OpenCL devices. .ci/run also runs the benchmark's CLI tests with both, so a tool test that assumes
the machine has no GPU fails on every CI run, not first on a machine with one.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"
FAKE_TORCH = Path(__file__).resolve().parent / "fake_torch"
BENCH = ROOT / "xdev" / "bench"


def fake_env(fakes: str, *path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDEV_BACKEND", "XDEV_TEST_BACKENDS")}
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (*path, FAKES)] +
                                        [p for p in [env.get("PYTHONPATH")] if p])
    env["XDEV_TEST_FAKES"] = fakes
    env.update(extra)
    return env


def test_a_toy_backend_passes_the_contract_tests():
    """Registered with one _BACKENDS entry and nothing else, the toy runs every test that the
    `device` fixture parametrizes, and the API tests that list the registered backends."""
    env = fake_env("toy", XDEV_TEST_BACKENDS="toy", XDEV_TEST_REQUIRE="toy")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/contract",
                        "-k", "toy or test_api or test_errors"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 60, summary  # the toy's share is there


def test_a_toy_backend_runs_the_quick_benchmark(tmp_path):
    """Every op measures the toy beside NumPy; claim 3 counts it as own kernels on the CPU."""
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--quick", "--backends", "numpy,toy", "--sizes", "16,32",
                        "--image", "16", "--batch", "2", "--repeat", "2", "--json", str(out)],
                       cwd=ROOT, env=fake_env("toy"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    ops = {x["op"] for x in doc["results"] if x["backend"] == "toy"}
    assert ops == {"matmul", "conv2d", "transfer", "roundtrip", "pipeline"}
    toy = next(d for d in doc["machine"]["devices"] if d["device"] == "toy")
    assert toy["is_cpu"] is True and toy["matmul_library"] is None
    mm = [x for x in doc["results"] if x["backend"] == "toy" and x["op"] == "matmul"]
    assert {x["algorithm"] for x in mm} == {"toy"} and all(x["speedup_vs_numpy"] for x in mm)
    claim3 = next(v for v in doc["verdicts"] if v["claim"] == 3)
    assert [n["b"] for n in claim3["numbers"] if n["what"].startswith("CPU matmul")] == ["numpy"]
    assert any(n["a"] == "toy" for n in claim3["numbers"])


def test_the_benchmark_on_a_machine_with_a_gpu(tmp_path):
    """A fake GPU (backend cuda, NumPy underneath): claims 1 and 2 are measured, a GPU's batch is
    16, the torch yardstick is placed beside the CPU and reports that it has no CUDA."""
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--quick", "--backends", "numpy,cuda", "--sizes", "16,32",
                        "--image", "16", "--repeat", "2", "--ops", "matmul,conv2d,transfer", "--reference", "torch",
                        "--json", str(out)],
                       cwd=ROOT, env=fake_env("cuda", FAKE_TORCH), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    gpu = next(d for d in doc["machine"]["devices"] if d["device"] == "cuda:0")
    assert gpu["is_cpu"] is False and gpu["library_algorithms"] == ["cudnn"]
    conv = [x for x in doc["results"] if x["device"] == "cuda:0" and x["op"] == "conv2d"]
    assert conv and all(x["batch"] == 16 for x in conv)
    assert {x["batch"] for x in doc["results"] if x["device"] == "numpy" and x["op"] == "conv2d"} == {1}
    mm = [x for x in doc["results"] if x["device"] == "cuda:0" and x["op"] == "matmul"]
    assert {x["algorithm"] for x in mm if x["kind"] == "square"} == {"cuBLAS"}
    assert all(x["numeric_mode"] == "strict-fp32" for x in mm if x["kind"] == "square")
    # the largest size again in TF32 and float16 (tensor cores), on the GPU only
    tensor = {x["algorithm"]: x for x in doc["results"] if x.get("kind") == "tensor-cores"}
    assert set(tensor) == {"cuBLAS tf32", "cuBLAS fp16"} and tensor["cuBLAS tf32"]["shape"] == "32x32x32"
    assert tensor["cuBLAS tf32"]["numeric_mode"] == "tf32" and tensor["cuBLAS fp16"]["dtype"] == "float16"
    assert tensor["cuBLAS fp16"]["numeric_mode"] == "fp16" and tensor["cuBLAS fp16"]["peak_fraction"] is None
    assert all(x["isa"] for x in doc["results"] if x["device"] in ("numpy", "torch:cpu"))  # CPU rows name it
    assert not any("isa" in x for x in doc["results"] if x["device"] == "cuda:0")
    claims = {v["claim"]: v for v in doc["verdicts"]}
    assert claims[1]["status"] != "untested" and len(claims[1]["numbers"]) == 2
    # --quick runs the device's auto algorithm only: no hand-written totals to set cuDNN against
    assert claims[2]["status"] == "untested" and "run without --quick" in claims[2]["reason"]
    assert any(s["backend"] == "torch beside cuda:0 (reference)" and "no CUDA" in s["reason"]
               for s in doc["skipped"])
    assert {x["device"] for x in doc["results"] if x["reference"]} == {"torch:cpu"}


def _claim3_on_a_gpu_machine(tmp_path: Path, **extra: str) -> tuple[dict, str]:
    """The run bench/gpu_reference_torch.sh's step 2 makes on a GPU machine (numpy, cuda and the
    OpenCL GPU, --reference torch), on fakes: cuda:0 with cuBLAS, opencl:9:0 with own kernels."""
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--quick", "--ops", "matmul,conv2d", "--backends",
                        "numpy,cuda,opencl", "--sizes", "16,32", "--image", "16", "--repeat", "2",
                        "--reference", "torch", "--json", str(out)],
                       cwd=ROOT, env=fake_env("cuda,opencl-gpu", FAKE_TORCH, **extra), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [d["device"] for d in doc["machine"]["devices"] if not d.get("reference")] == [
        "numpy", "cuda:0", "opencl:9:0"]
    return next(v for v in doc["verdicts"] if v["claim"] == 3), " ".join(r.stdout.split())


def test_claim3_on_a_gpu_machine_shows_both_halves_and_why(tmp_path):
    """OpenCL without tensor cores: the float32 rows vote (units against units); TF32 and float16
    of cuBLAS stand beside OpenCL's best, each with the reason, and do not vote."""
    v, text = _claim3_on_a_gpu_machine(tmp_path)
    gpu = [n for n in v["numbers"] if n["what"].startswith("GPU")]
    assert [n["mode"] for n in gpu] == ["strict-fp32", "strict-fp32", "tf32", "fp16"], gpu
    assert "units against units" in gpu[0]["what"] and gpu[0]["a"] == "opencl:9:0" and gpu[0]["b"] == "cuda:0"
    assert gpu[0]["like_for_like"] and gpu[1]["like_for_like"] and "VGG-16" in gpu[1]["what"]
    for n in gpu[2:]:
        assert n["like_for_like"] is False and n["b"].startswith("cuda:0 cuBLAS ")
        assert "no standard way to reach the tensor cores" in n["why_not"]
        assert "FMA units" in n["why_not"] and "a fake GPU without tensor cores" in n["why_not"]
    # the float32 half votes (on a busy machine the verdict is inconclusive, the vote kept beside it)
    assert v.get("measured_status", v["status"]) in ("supported", "contradicted", "within noise", "mixed")
    assert "OpenCL vs NumPy on the CPU: untested" in v["summary"]  # no OpenCL CPU device in this run
    assert "claim 3" in text and "not like-for-like" in text


def test_claim3_on_a_gpu_machine_with_opencl_tensor_cores(tmp_path):
    """OpenCL with tensor cores (the tc family on NVIDIA): TF32 and float16 against cuBLAS in
    the same mode, like for like."""
    v, _ = _claim3_on_a_gpu_machine(tmp_path, XDEV_TEST_FAKE_OPENCL_TC="1")
    gpu = {n["mode"]: n for n in v["numbers"] if n["what"].startswith("GPU") and n["mode"] in ("tf32", "fp16")}
    assert set(gpu) == {"tf32", "fp16"}
    for mode, n in gpu.items():
        assert n["like_for_like"] is True and "tensor cores on both" in n["what"] and "why_not" not in n
        assert n["a"] == f"opencl:9:0 opencl {mode}" and n["b"] == f"cuda:0 cuBLAS {mode}"


# -- no backend is special-cased in the benchmark ------------------------------------------

NAMES = {"numpy", "opencl", "cuda", "torch"}


def _named(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split(":")[0].lower() in NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_named(e) for e in node.elts)
    return False


def name_branches(source: str) -> list[int]:
    """Lines that compare with, look up by (a dict keyed by two or more), or test the prefix of
    a backend name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(_named(x) for x in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and sum(k is not None and _named(k) for k in node.keys) >= 2:
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and any(_named(a) for a in node.args)):
            lines.append(node.lineno)
    return sorted(lines)


def test_name_branch_finder_finds_branches():
    assert name_branches('if dev.backend == "torch": pass') == [1]
    assert name_branches('x = {"cuda": "cuBLAS", "torch": "torch"}.get(b)\ny = b in ("numpy", "torch")') == [1, 2]
    assert name_branches('s.startswith("cuda:")') == [1]
    assert name_branches('BASELINE = "numpy"\nlabel = "torch (reference)"\nv = {"numpy": "2.4"}') == []


def test_the_benchmark_names_no_backend():
    """Adding a backend needs no edit in the benchmark: what differs between backends comes from
    their Device (is_cpu, matmul_library, library_algorithms, numerics, dlpack_device)."""
    found = {}
    for path in sorted(BENCH.glob("*.py")):
        if path.name in ("clblast_rows.py", "dask_bench.py"):  # one backend's library / cluster by nature
            continue
        lines = name_branches(path.read_text())
        if lines:
            found[path.name] = lines
    assert not found, f"backend names compared in xdev/bench: {found}"

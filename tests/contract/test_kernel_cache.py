"""The contract's kernel mechanisms: one build per key, and compiler logs mapped to real files."""
from __future__ import annotations

import threading
import time

import pytest

import xdev
from xdev.contract.kernel_cache import KernelCache, KernelSource


def test_cache_builds_each_key_once_even_from_many_threads():
    cache: KernelCache[str] = KernelCache()
    calls: list[str] = []

    def build(key: str) -> str:
        calls.append(key)
        time.sleep(0.01)  # let the other threads arrive while this one builds
        return key.upper()

    threads = [threading.Thread(target=lambda k=k: cache.get(k, lambda: build(k))) for k in "aab" * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["a", "b"] and len(cache) == 2 and "a" in cache
    assert cache.get("a", lambda: pytest.fail("rebuilt")) == "A"
    assert cache.build_seconds >= 0.02


def test_failed_build_is_not_cached():
    cache: KernelCache[int] = KernelCache()
    with pytest.raises(ValueError):
        cache.get("k", lambda: (_ for _ in ()).throw(ValueError("no")))
    assert "k" not in cache and cache.get("k", lambda: 7) == 7


def test_log_lines_map_back_to_each_file(tmp_path):
    common = tmp_path / "common.cl"
    common.write_text("// line 1\n// line 2\n#define X 1\n")  # 3 lines + trailing newline
    kern = tmp_path / "gemm.cl"
    kern.write_text("kernel void k() {\n  bad;\n}\n")
    src = KernelSource([common, kern])
    joined = src.text.splitlines()
    for n, text in enumerate(joined, start=1):  # every joined line is that line of its file
        f, line = src.locate(n)
        assert (open(f).read().splitlines() + [""])[line - 1] == text, n
    bad = joined.index("  bad;") + 1
    assert src.locate(bad) == (str(kern), 2) and src.locate(3) == (str(common), 3)
    clang = f"error: /tmp/pocl/tempfile_x.cl:{bad}:3: use of undeclared identifier 'bad'\n<source>:3:9: note: here"
    nvrtc = f"kern.cu({bad}): error: identifier \"bad\" is undefined"
    text, places = src.map_log(clang)
    assert f"{kern}:2:3: use of undeclared" in text and f"{common}:3:9: note" in text
    assert places == [(str(kern), 2), (str(common), 3)]
    text, places = src.map_log(nvrtc)
    assert text.startswith(f"{kern}(2): error") and places == [(str(kern), 2)]


def test_build_error_is_the_one_exported_class(tmp_path):
    f = tmp_path / "k.cu"
    f.write_text("line one\nline two\n")
    e = KernelSource([f]).build_error(["-std=c++17"], "k.cu(2): error: oops", device="cuda:0 X", compiler="NVRTC")
    assert isinstance(e, xdev.KernelBuildError) and isinstance(e, RuntimeError)
    assert e.file == str(f) and e.options == ("-std=c++17",) and e.log == "k.cu(2): error: oops"
    assert e.locations == ((str(f), 2),)
    assert "failed to build on cuda:0 X (NVRTC) with options -std=c++17" in str(e) and f"{f}(2): error" in str(e)

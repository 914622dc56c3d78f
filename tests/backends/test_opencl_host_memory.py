"""A CPU OpenCL device's allocations are checked against the process's real memory limits:
MemoryError naming the bytes, the limit and its source, where PoCL would abort (Debian) or
segfault (pip) the process.
"""
from __future__ import annotations

import textwrap

import pytest

import xdev
from availability import backend_status, require
from child import run_child
from xdev.backends.opencl import host_memory
from xdev.contract import machine
from xdev.contract.machine import MemoryLimit

GiB = 1 << 30


def _cpu_devices() -> list[str]:
    status = backend_status("opencl")
    if not status.available:
        return []
    return [k for k in status.devices if xdev._registry.get_device(k).is_cpu]


# ---- the limits: rlimits, cgroups (v1 and v2 trees faked here), available RAM -------------------
def _fake_cgroups(tmp_path, monkeypatch, proc_cgroup: str, files: dict[str, str]):
    for rel, text in files.items():
        f = tmp_path / "sys" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp_path / "cgroup").write_text(proc_cgroup)
    monkeypatch.setattr(machine, "PROC_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(machine, "CGROUP_ROOT", str(tmp_path / "sys"))
    machine._cgroup_limits.cache_clear()
    return [m for m in machine.memory_limits() if "cgroup" in m.source]


@pytest.fixture(autouse=True)
def _fresh_cgroup_cache():
    machine._cgroup_limits.cache_clear()
    yield
    machine._cgroup_limits.cache_clear()


def test_cgroup_v2_limits_of_the_cgroup_and_its_ancestors(tmp_path, monkeypatch):
    got = _fake_cgroups(tmp_path, monkeypatch, "0::/app/job\n", {
        "app/memory.max": str(3 * GiB), "app/memory.current": str(GiB), "app/memory.stat": "inactive_file 0\n",
        "app/job/memory.max": "max", "app/job/memory.current": "5",
        "memory.max": "max",
    })
    assert [(m.limit, m.used) for m in got] == [(3 * GiB, GiB)]
    assert got[0].source.endswith("app/memory.max)") and got[0].free == 2 * GiB


def test_cgroup_v1_usage_excludes_reclaimable_page_cache(tmp_path, monkeypatch):
    got = _fake_cgroups(tmp_path, monkeypatch, "5:cpu:/\n4:memory:/box\n", {
        "memory/box/memory.limit_in_bytes": str(2 * GiB), "memory/box/memory.usage_in_bytes": str(GiB),
        "memory/box/memory.stat": f"cache 5\ntotal_inactive_file {GiB // 2}\n",
        "memory/memory.limit_in_bytes": str((1 << 63) - 4096),  # v1's "unlimited"
    })
    assert [(m.limit, m.used) for m in got] == [(2 * GiB, GiB // 2)]


def test_cgroup_namespace_reads_the_mount_root(tmp_path, monkeypatch):
    # Inside a container, /proc/self/cgroup names a path that is not under the mount.
    got = _fake_cgroups(tmp_path, monkeypatch, "0::/kubepods/pod1\nbroken line\n", {
        "memory.max": str(GiB), "memory.current": str(GiB // 4)})
    assert [(m.limit, m.used) for m in got] == [(GiB, GiB // 4)]


def test_rlimits_and_available_ram_are_measured():
    code = textwrap.dedent("""
        import resource
        from xdev.contract.machine import memory_limits
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
        resource.setrlimit(resource.RLIMIT_DATA, (7 << 30, 7 << 30))
        for m in memory_limits():
            print(m.source.split()[0], m.limit, m.used)
    """)
    out = run_child(code, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r.split()[0]: (int(r.split()[1]), int(r.split()[2])) for r in out.stdout.splitlines()}
    assert rows["RLIMIT_AS"][0] == 8 << 30 and 0 < rows["RLIMIT_AS"][1] < 8 << 30
    assert rows["RLIMIT_DATA"][0] == 7 << 30 and 0 < rows["RLIMIT_DATA"][1] <= rows["RLIMIT_AS"][1]
    assert rows["the"][0] > 0  # the RAM available (MemAvailable)


# ---- the check a CPU device makes before allocating -------------------------------------------
def test_check_names_bytes_limit_and_source_after_freeing_the_pool(monkeypatch):
    free = {"bytes": GiB}
    monkeypatch.setattr(host_memory, "memory_limits",
                        lambda: [MemoryLimit("RLIMIT_AS (ulimit -v)", 4 * GiB, 4 * GiB - free["bytes"]),
                                 MemoryLimit("the RAM available", 20 * GiB, 0)])
    hm = host_memory.HostMemory("opencl:9:9 (test)")
    freed = []
    hm.check(GiB // 2, lambda: freed.append(1))
    assert not freed
    with pytest.raises(MemoryError, match=r"opencl:9:9 \(test\): cannot allocate 1,073,741,824 bytes: .* "
                                          r"RLIMIT_AS \(ulimit -v\) is 4,294,967,296 bytes, 3,221,225,472 of "
                                          r"them in use: 1,073,741,824 are left") as e:
        hm.check(GiB, lambda: freed.append(1))
    assert freed == [1] and "raise the limit" in str(e.value)

    def release() -> None:  # the pool's spare blocks were what stood in the way
        free["bytes"] = 3 * GiB

    hm.check(GiB, release)


def test_check_measures_once_per_half_headroom_or_refresh(monkeypatch):
    calls = []

    def limits():
        calls.append(1)
        return [MemoryLimit("test", 16 * GiB, 0)]

    monkeypatch.setattr(host_memory, "memory_limits", limits)
    hm = host_memory.HostMemory("test")
    for _ in range(100):
        hm.check(1 << 20, lambda: None)  # 100 MiB in all: far below half the headroom
    assert len(calls) == 1
    hm.check(8 * GiB, lambda: None)  # past half the headroom: measured again
    assert len(calls) == 2
    hm._when -= 2 * host_memory.REFRESH_S  # time passes: other code may have taken memory
    hm.check(1, lambda: None)
    assert len(calls) == 3


# ---- the crash itself, in a child process under an address-space limit ---------------------------
CHILD = """
import resource, sys
import numpy as np, xdev
dev = {dev!r}
a = np.ones((4096, 1), np.float32)
xdev.matmul(a[:8], a[:8].T, backend=dev).numpy()  # the device is open and has run a kernel
statm = open("/proc/self/statm").read().split()
used = int(statm[0 if {kind!r} == "RLIMIT_AS" else 5]) * resource.getpagesize()
limit = used + (1 << 30)
resource.setrlimit(getattr(resource, {kind!r}), (limit, resource.getrlimit(getattr(resource, {kind!r}))[1]))
keep = []
try:
    for _ in range(32):
        keep.append(xdev.matmul(a, a.T, backend=dev))  # 64 MiB each
    print("no MemoryError")
except MemoryError as e:
    print("MemoryError after", len(keep), str(e))
del keep[len(keep) // 2:]
small = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
assert np.allclose(xdev.matmul(small, small, backend=dev).numpy(), small @ small, rtol=1e-4)
assert np.allclose(xdev.matmul(small, small).numpy(), small @ small)  # numpy too
print("still works")
"""


@pytest.mark.parametrize("kind", ["RLIMIT_AS", "RLIMIT_DATA"])
def test_exhausting_a_cpu_device_under_an_rlimit_is_a_memory_error(kind):
    require("opencl")
    devices = _cpu_devices()
    if not devices:
        pytest.skip("no OpenCL CPU device here")
    for dev in devices:
        out = run_child(CHILD.format(dev=dev, kind=kind), timeout=300)
        assert out.returncode == 0, f"{dev}: the process died ({out.returncode}):\n{out.stderr[-3000:]}"
        lines = out.stdout.splitlines()
        assert lines[0].startswith("MemoryError after ") and lines[-1] == "still works", out.stdout
        assert f"{dev} (" in lines[0] and "cannot allocate 67,108,864 bytes" in lines[0], lines[0]
        assert f"{kind} (ulimit" in lines[0], lines[0]

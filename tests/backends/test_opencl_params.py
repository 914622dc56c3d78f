"""OpenCL kernel parameters: the CPU tile from the compiler's target ISA, the shipped tuning
database, defaults derived from a GPU's properties, and where each value came from.

Faked devices stand in for hardware this machine lacks (AVX-512 CPUs, NVIDIA and AMD GPUs);
the last tests use the real OpenCL device.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("pyopencl")

from xdev.backends.opencl import autotune, database, isa, params, proof  # noqa: E402
from xdev.backends.opencl.discovery import _Shim  # noqa: E402

H200_GEMM = {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 8, "NDIMC": 16, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 0}
H200_CONV = {"MWG": 64, "NWG": 128, "KWG": 16, "MDIMC": 8, "NDIMC": 16, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}


class FakeDevice:
    """The pyopencl.Device attributes xdev reads; vendor queries raise like a driver
    without the extension would."""

    def __init__(self, name, *, vw=8, cus=2, local=512 * 1024, max_wg=4096, exts="", driver="1.0", **vendor):
        self.name, self.preferred_vector_width_float, self.max_compute_units = name, vw, cus
        self.local_mem_size, self.max_work_group_size, self.extensions = local, max_wg, exts
        self.driver_version = driver
        self._vendor = vendor

    def __getattr__(self, attr):
        if attr in self.__dict__.get("_vendor", {}):
            return self._vendor[attr]
        raise AttributeError(attr)


class FakePlatform:
    def __init__(self, name, version="OpenCL 3.0 Fake"):
        self.name, self.version = name, version


class FakeCand:
    def __init__(self, device, platform, gpu):
        self.device, self.platform, self.is_gpu = device, platform, gpu
        self.p, self.d, self.key = 0, 0, f"opencl:fake:{device.name}"
        self.label = device.name


def shim(name, platform="Portable Computing Language", gpu=False, vw=None, compiler=None, **kw):
    c = FakeCand(FakeDevice(name, **kw), FakePlatform(platform), gpu)
    return _Shim(c, vw, compiler if compiler is not None else {})


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """A private XDEV_CACHE_DIR: no tuning results of this machine leak into the lookups."""
    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    return tmp_path


# ---- the target ISA -------------------------------------------------------------------------
POCL_LOG = """** Final POCL_DEBUG flags: 4
[2026-12-04 17:16:10.978842553] POCL: in fn int pocl_llvm_build_program(cl_program) at line 343:
  *** INFO ***  |      LLVM |  all build options: -Dcl_khr_int64 -xcl -fno-builtin -triple=x86_64-unknown-linux-gnu -target-cpu znver3
[2026-12-04 17:16:11.820164167] POCL: in fn llvm::Module* getKernelLibrary(cl_device_id) at line 998:
  *** INFO ***  |      LLVM |  Using /x/share/pocl/kernel-x86_64-unknown-linux-gnu-avx2.bc as the built-in lib.
LLVM ERROR: Cannot select: intrinsic %llvm.x86.avx512
"""


def test_compiler_log_names_the_target_and_is_kept_out_of_error_reports():
    assert isa.from_log(POCL_LOG) == {"cpu": "znver3", "library": "avx2"}
    assert isa.from_log("no pocl here") == {}
    assert isa.without_log(POCL_LOG) == "LLVM ERROR: Cannot select: intrinsic %llvm.x86.avx512\n"


@pytest.mark.parametrize("name, cpu", [
    ("pthread-haswell-AMD EPYC", "haswell"), ("pthread-AMD EPYC", None),
    ("cpu-skylake-avx512-Intel(R) Xeon(R) Gold 6148", "skylake-avx512"), ("cpu-x86-64-v3-AMD Ryzen", "x86-64-v3"),
    ("pthread-znver4-AMD Ryzen 9 7950X", "znver4"), ("Intel(R) Core(TM) i7-8700", None),
])
def test_target_cpu_from_the_device_name(name, cpu):
    assert isa.cpu_from_name(name) == cpu


def test_register_budget_follows_the_compiler_not_the_host():
    # pip's PoCL on an AVX-512 Zen 5: the device asks for 16-wide vectors, its LLVM 14
    # targets znver3 (AVX2): 16 registers of 8 floats.
    t = isa.target("pthread-AMD Ryzen 9 9950X", 16, {"cpu": "znver3", "library": "avx512"})
    assert (t.isa, t.vector_registers, t.target_cpu, t.source) == ("AVX2", 16, "znver3", "compiler target")
    t = isa.target("pthread-skylake-avx512-Intel Xeon", 16)
    assert (t.isa, t.vector_registers, t.source) == ("AVX-512", 32, "device name")
    assert isa.target("pthread-haswell-AMD EPYC", 8).vector_registers == 16


def test_cpu_tile_keeps_three_quarters_of_the_registers_as_accumulators():
    assert params.cpu_tile(16, 8, 8, params.GEMM_ACC_SHARE) == {"MR": 6, "NV": 2}    # AVX2
    assert params.cpu_tile(32, 16, 16, params.GEMM_ACC_SHARE) == {"MR": 12, "NV": 2}  # AVX-512
    # 16-wide vectors on AVX2 take two registers each: 8 of them, 4 for accumulators.
    assert params.cpu_tile(16, 8, 16, params.GEMM_ACC_SHARE) == {"MR": 2, "NV": 2}
    for regs, lanes, vw in ((16, 8, 8), (32, 16, 16), (16, 4, 4), (32, 4, 4), (16, 8, 16)):
        for share, nv in ((params.GEMM_ACC_SHARE, params.GEMM_NV), (params.CONV_ACC_SHARE, params.CONV_NV)):
            t = params.cpu_tile(regs, lanes, vw, share, nv)
            eff = regs * lanes // vw if lanes < vw else regs
            assert t["MR"] * t["NV"] + t["NV"] + 1 <= eff, (regs, lanes, vw, t)


AVX2_TILES, AVX512_TILES = ((6, 2), (4, 3)), ((12, 2), (8, 3))  # (GEMM, conv) MR x NV


@pytest.mark.parametrize("name, vw, compiler, want_vw, want_tiles, want_isa", [
    ("pthread-haswell-AMD EPYC", 8, {}, 8, AVX2_TILES, "AVX2"),
    ("pthread-AMD EPYC", 8, {"cpu": "znver3"}, 8, AVX2_TILES, "AVX2"),
    ("pthread-AMD Ryzen 9 9950X", 16, {"cpu": "znver3"}, 8, AVX2_TILES, "AVX2"),  # capped to the target's width
    ("cpu-znver4-AMD Ryzen 9 7950X", 16, {}, 16, AVX512_TILES, "AVX-512"),
    ("pthread-skylake-avx512-Intel Xeon", 16, {"cpu": "skylake-avx512"}, 16, AVX512_TILES, "AVX-512"),
])
def test_cpu_defaults_are_derived_from_the_target(name, vw, compiler, want_vw, want_tiles, want_isa):
    dev = shim(name, vw=vw, compiler=compiler)
    p = params.params_for(dev)
    assert p["gemm"]["VW"] == want_vw and (p["gemm"]["MR"], p["gemm"]["NV"]) == want_tiles[0]
    assert p["conv"]["VW"] == want_vw and (p["conv"]["MR"], p["conv"]["NV"]) == want_tiles[1]
    assert p["source"]["gemm"].startswith(f"derived: {want_isa}, ")
    assert "tuned" not in p


def test_tuner_searches_only_tiles_that_fit_the_registers():
    for regs, lanes, vw, best in ((16, 8, 8, (6, 2)), (32, 16, 16, (12, 2))):
        cands = autotune.cpu_candidates(regs, lanes, vw)
        assert best in cands and cands.index(best) < 3, cands  # among the first screened
        assert all(mr * nv + nv + 1 <= regs and mr * nv >= regs // 2 for mr, nv in cands)
        assert len(cands) <= 16
    assert (12, 3) not in autotune.cpu_candidates(16, 8, 8)  # the old AVX-512 tile spills on AVX2


# ---- GPUs: the database, then properties ----------------------------------------------------
NV_EXT = "cl_khr_fp64 cl_nv_device_attribute_query"


def nvidia(name, cc, cus=132, **kw):
    return shim(name, "NVIDIA CUDA", gpu=True, vw=1, cus=cus, local=48 * 1024, max_wg=1024, exts=NV_EXT,
                warp_size_nv=32, registers_per_block_nv=65536, compute_capability_major_nv=cc[0],
                compute_capability_minor_nv=cc[1], **kw)


def test_database_entry_for_the_h200_by_name():
    dev = nvidia("NVIDIA H200", (9, 0))
    p = params.params_for(dev)
    assert p["gemm_xl"] == H200_GEMM and p["conv_xl"] == H200_CONV
    assert p["source"]["gemm_xl"] == "database: NVIDIA H200 (NVIDIA driver)"
    assert p["source"]["gemm"].startswith("derived")  # the CPU family is not in the entry


def test_database_entry_by_architecture_for_other_hopper_gpus():
    p = params.params_for(nvidia("NVIDIA H100 80GB HBM3", (9, 0)))
    assert p["gemm_xl"] == H200_GEMM
    assert p["source"]["gemm_xl"] == "database: architecture sm_90 (NVIDIA driver)"


def test_the_driver_family_is_part_of_the_key():
    # The same name on another driver (say, PoCL's CUDA device) is not NVIDIA's OpenCL.
    dev = shim("NVIDIA H200", "Portable Computing Language", gpu=True, vw=1, cus=132, local=48 * 1024, max_wg=1024)
    assert params.params_for(dev)["source"]["gemm_xl"].startswith("derived")
    assert database.driver_family("NVIDIA CUDA") == "NVIDIA"
    assert database.driver_family("AMD Accelerated Parallel Processing") == "AMD"
    assert database.driver_family("Portable Computing Language") == "PoCL"
    assert database.driver_family("Some Vendor OpenCL") == "Some Vendor OpenCL"


def test_unknown_nvidia_gpu_is_derived_from_its_properties():
    p = params.params_for(nvidia("NVIDIA GeForce RTX 4090", (8, 9), cus=128))
    # 64 K registers per block: 128 accumulators per work-item, 128 work-items; 48 KiB of
    # local memory hold two 16-deep slices of 128 + 128.
    assert p["gemm_xl"] == {**H200_GEMM, "DB": 1}
    assert p["source"]["gemm_xl"] == "derived: 128 compute units, 48 KiB local memory, SIMD width 32"
    assert p["gemm_gpu"]["TSM"] == 128


def test_unknown_amd_gpu_is_derived_from_its_wavefront():
    dev = shim("gfx1100", "AMD Accelerated Parallel Processing", gpu=True, vw=1, cus=48, local=64 * 1024,
               max_wg=256, exts="cl_amd_device_attribute_query", wavefront_width_amd=32)
    p = params.params_for(dev)
    # Without NVIDIA's register query and a 32-wide wavefront: 64 accumulators, 16 x 16.
    assert (p["gemm_xl"]["MWG"], p["gemm_xl"]["MDIMC"], p["gemm_xl"]["NDIMC"]) == (128, 16, 16)
    dev = shim("gfx90a:sramecc+:xnack-", "AMD Accelerated Parallel Processing", gpu=True, vw=1, cus=104,
               local=64 * 1024, max_wg=256, exts="cl_amd_device_attribute_query", wavefront_width_amd=64)
    p = params.params_for(dev)
    assert (p["gemm_xl"]["MDIMC"], p["gemm_xl"]["NDIMC"]) == (8, 16) and p["source"]["gemm_xl"].startswith("derived")
    assert database.architecture(dev.cl_device) == "gfx90a"


def test_small_or_unknown_gpu_gets_the_small_tile():
    dev = shim("Mali-G78", "ARM Platform", gpu=True, vw=4, cus=10, local=32 * 1024, max_wg=512)
    p = params.params_for(dev)
    assert p["gemm_xl"] == params.GPU_XL and p["gemm_gpu"] == params.GPU_TILE
    dev = shim("Intel(R) Arc(TM) A770", "Intel(R) OpenCL Graphics", gpu=True, vw=1, cus=512, local=64 * 1024, max_wg=1024)
    p = params.params_for(dev)
    assert (p["gemm_xl"]["MWG"], p["gemm_xl"]["MDIMC"], p["gemm_xl"]["NDIMC"]) == (128, 16, 16)


def test_every_database_entry_is_valid_for_the_kernels():
    from xdev.backends.opencl.gemm import xl_local_bytes

    for e in database.entries():
        assert e["driver"] and ("device" in e or "architecture" in e) and e.get("measured"), e
        assert params.validate_entry(e["params"]) is None, e
        for fam, t in e["params"].items():
            if fam.endswith("_xl"):
                assert autotune.xl_valid(t, 1024, 48 * 1024), (e, fam)
                assert xl_local_bytes(t, 4) <= 48 * 1024


def test_tuned_values_override_the_database_and_say_so(empty_cache):
    dev = nvidia("NVIDIA H200", (9, 0))
    params.store(dev, {"gemm_xl": {**H200_GEMM, "KWG": 32}})
    p = params.params_for(dev)
    assert p["gemm_xl"]["KWG"] == 32 and p["tuned"]
    assert p["source"]["gemm_xl"] == f"xdev.tune: {empty_cache / 'opencl-tuning.json'}"
    assert p["source"]["conv_xl"].startswith("database: NVIDIA H200")
    assert params.untuned(dev)["gemm_xl"] == H200_GEMM  # the tuner's baseline
    s = params.summary(p)
    assert "gemm_xl: xdev.tune" in s and "conv_xl: database: NVIDIA H200" in s


# ---- the proof checks the parameters the device will use -------------------------------------
def test_proof_checks_the_tile_of_the_target_its_compiler_reports(monkeypatch):
    c = FakeCand(FakeDevice("pthread-AMD Ryzen 9 9950X", vw=16), FakePlatform("Portable Computing Language"), False)
    runs = []

    def child(cand, vw, first, params=None):
        runs.append((vw, params["gemm"]["MR"], params["gemm"]["NV"]))
        proof.compiler_targets[cand.key] = {"cpu": "znver3", "library": "avx512"}
        return None

    monkeypatch.setattr(proof, "run_child", child)
    proof.compiler_targets.pop(c.key, None)

    def params_at(vw, compiler):
        return params.params_for(_Shim(c, vw, compiler))

    assert proof.prove(c, "cpu", params_at(16, {}), params_at) == (8, None)
    # First with what the name and width suggest (AVX-512: 12 x 2 at width 16), then, the
    # compiler being znver3's AVX2, with the tile the device will run.
    assert runs == [(16, 12, 2), (8, 6, 2)]
    proof.compiler_targets.pop(c.key)
    assert proof.prove(c, "cpu", params_at(16, {}), params_at) == (8, None) and len(runs) == 2  # cached
    assert proof.compiler_targets[c.key] == {"cpu": "znver3", "library": "avx512"}


# ---- the real device ------------------------------------------------------------------------
def test_device_info_names_its_isa_and_parameter_sources(monkeypatch):
    from availability import require

    monkeypatch.undo()  # the user's cache: its proof verdicts spare a new proof
    dev = require("opencl")
    info = dev.info()
    assert {"isa", "vector_registers", "target_cpu", "params_source"} <= set(info)
    if dev.is_cpu:
        assert info["isa"] in ("AVX-512", "AVX2", "AVX", "SSE", "NEON", "unknown")
        assert info["vector_registers"] in (16, 32)
        t = dev.params["gemm"]
        lanes = isa.LANES.get(info["isa"])
        assert t["VW"] <= max(4, lanes or 16)
        assert t == {**t, **params.cpu_tile(info["vector_registers"], lanes, t["VW"], params.GEMM_ACC_SHARE,
                                            params.GEMM_NV)} \
            or dev.params["source"]["gemm"].startswith(("database", "xdev.tune"))
    else:
        assert info["isa"] is None
    for fam in ("gemm", "conv", "gemm_gpu", "gemm_xl", "conv_xl"):
        assert dev.params["source"][fam].startswith(("derived: ", "database: ", "xdev.tune: ")), fam
    json.dumps(info)  # the benchmark writes it into its JSON

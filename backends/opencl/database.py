"""The tuning database shipped with xdev: measured kernel parameters per device and driver family.

``tuning_db.json`` beside this module holds entries like CLBlast's: the driver family
(the OpenCL platform's vendor: "NVIDIA", "AMD", "Intel", "PoCL", ...) and either the
device's exact name or its architecture (NVIDIA's compute capability "sm_90", AMD's
"gfx90a"), with the parameters measured there and how. A device matches its exact name
first, then its architecture; what no entry covers is derived from the device's
properties (params.defaults), and ``python -m xdev.tune`` results override both.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent / "tuning_db.json"

# Driver family by platform name (substring, lower case), CLBlast's vendor names.
_FAMILIES = (
    ("nvidia", "NVIDIA"), ("portable computing language", "PoCL"), ("pocl", "PoCL"),
    ("amd accelerated parallel processing", "AMD"), ("amd", "AMD"), ("intel", "Intel"),
    ("apple", "Apple"), ("rusticl", "Mesa"), ("clover", "Mesa"), ("arm platform", "ARM"),
    ("qualcomm", "Qualcomm"),
)


def driver_family(platform_name: str) -> str:
    """"NVIDIA CUDA" -> "NVIDIA", "Portable Computing Language" -> "PoCL"; else the name."""
    low = platform_name.strip().lower()
    for key, fam in _FAMILIES:
        if key in low:
            return fam
    return platform_name.strip()


def architecture(d: Any) -> str | None:
    """NVIDIA: "sm_<major><minor>" (cl_nv_device_attribute_query); AMD: the gfx name the
    driver reports as the device name; else None."""
    exts = str(getattr(d, "extensions", "")).split()
    if "cl_nv_device_attribute_query" in exts:
        try:
            return f"sm_{int(d.compute_capability_major_nv)}{int(d.compute_capability_minor_nv)}"
        except Exception:  # noqa: BLE001 - the extension listed but the query refused
            return None
    name = d.name.strip()
    return name.split(":")[0] if name.startswith("gfx") else None


def _normal(name: str) -> str:
    return " ".join(name.split())


@lru_cache(maxsize=1)
def entries() -> tuple[dict[str, Any], ...]:
    """The shipped entries (a packaging error is loud: this file is part of xdev)."""
    data = json.loads(PATH.read_text())
    if data.get("version") != 1 or not isinstance(data.get("entries"), list):
        raise RuntimeError(f"{PATH}: expected {{'version': 1, 'entries': [...]}}")
    return tuple(data["entries"])


def lookup(family: str, device_name: str, arch: str | None) -> dict[str, Any] | None:
    """The entry for a device: exact name within the driver family first, then its architecture."""
    name = _normal(device_name)
    exact = [e for e in entries() if e["driver"] == family and _normal(e.get("device", "")) == name]
    if exact:
        return exact[0]
    if arch:
        by_arch = [e for e in entries() if e["driver"] == family and e.get("architecture") == arch]
        if by_arch:
            return by_arch[0]
    return None


def label(entry: dict[str, Any]) -> str:
    what = entry.get("device") or f"architecture {entry['architecture']}"
    return f"database: {what} ({entry['driver']} driver)"

"""python -m xdev.tune: measure OpenCL kernel parameters on your device against the built-in default; cache a winner beyond noise.

The cache lives in $XDEV_CACHE_DIR/opencl-tuning.json (default ~/.cache/xdev), keyed by
device name, platform version and driver version; the OpenCL backend reads it when it
opens the device. Delete the file (or pass --reset) to return to the built-in table.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xdev.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="opencl", help="OpenCL selector (default: the default OpenCL device)")
    p.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats")
    p.add_argument("--reset", action="store_true", help="forget this device's tuned parameters")
    p.add_argument("--dry-run", action="store_true", help="measure and print, do not store")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time limit of the GPU kernel family's search (default 180)")
    a = p.parse_args(argv)
    if not a.device.startswith("opencl"):
        p.error("only the OpenCL backend has tunable kernels (cuBLAS and cuDNN tune themselves)")
    from xdev._registry import get_device, load

    dev = get_device(a.device)
    backend = load("opencl")  # the core reaches a backend through the registry only
    autotune, params = backend.autotune, backend.params
    if a.reset:
        data = params.load_all()
        data.pop(params.device_id(dev), None)
        path = params.cache_file()
        if path.exists():
            path.write_text(json.dumps(data, indent=2, sort_keys=True))
        print(f"forgot tuned parameters of {dev.key} ({dev.name}) in {path}")
        return 0
    print(f"tuning {dev.key}: {dev.name} ({dev.family} kernel family); each candidate's median and "
          "spread, interleaved with the built-in default")
    found = autotune.tune(dev, quick=a.quick, budget_s=a.budget)
    print("chosen (beat the default beyond noise):", json.dumps(found) if found else "none")
    if a.dry_run:
        return 0
    if found:
        print(f"stored in {autotune.save(dev, found)}")
    else:
        # Nothing beat the default: forget older tuned values too, so the default is used.
        data = params.load_all()
        if data.pop(params.device_id(dev), None) is not None:
            params.cache_file().write_text(json.dumps(data, indent=2, sort_keys=True))
            print(f"removed earlier tuned parameters of {dev.key} from {params.cache_file()}")
        print("nothing stored: the built-in defaults stay in use")
    return 0


if __name__ == "__main__":
    sys.exit(main())

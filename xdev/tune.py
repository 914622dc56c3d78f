"""python -m xdev.tune: measure OpenCL kernel parameters on your device against the built-in default; cache a winner beyond noise.

The cache lives in $XDEV_CACHE_DIR/opencl-tuning.json (default ~/.cache/xdev), keyed by
device name, platform version and driver version; the OpenCL backend reads it when it
opens the device. --reset returns a device to the built-in table (the default device, or
the one --device selects; --all: every device); deleting the file resets every device.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xdev.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None,
                   help="OpenCL selector, e.g. opencl:1:0 (default: the default OpenCL device, as 'opencl' opens)")
    p.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats")
    p.add_argument("--reset", action="store_true",
                   help="forget the tuned parameters of the device --device selects (default: the default device)")
    p.add_argument("--all", action="store_true",
                   help="with --reset: of every device --device matches (without --device: every OpenCL device)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, do not store")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time limit of the search (default 180 on GPUs, 120 on CPUs)")
    a = p.parse_args(argv)
    if a.all and not a.reset:
        p.error("--all goes with --reset (tuning measures one device at a time)")
    device = a.device or "opencl"
    if not device.startswith("opencl"):
        p.error("only the OpenCL backend has tunable kernels (cuBLAS and cuDNN tune themselves)")
    from xdev._registry import get_device, load, split_selector
    from xdev.contract import BackendUnavailable

    try:
        backend = load("opencl")  # the core reaches a backend through the registry only
    except BackendUnavailable as e:
        print(f"python -m xdev.tune: {e}", file=sys.stderr)
        return 2
    autotune, params = backend.autotune, backend.params
    if a.reset:
        # Works whatever the cache file holds, without opening the device (opening proves
        # its kernels, and reads the very file being reset).
        try:
            done = backend.discovery.reset_tuning(split_selector(device)[1], every=a.all)
        except (ValueError, BackendUnavailable) as e:
            print(f"python -m xdev.tune --reset: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"python -m xdev.tune --reset: cannot write {params.cache_file()}: {e}; set "
                  f"XDEV_CACHE_DIR to a writable folder", file=sys.stderr)
            return 1
        for key, label, path in done:
            print(f"forgot tuned parameters of {key} ({label}) in {path}")
        return 0
    if not a.dry_run:
        try:
            params.check_writable()
        except OSError as e:
            print(f"python -m xdev.tune: the tuning cache {params.cache_file()} cannot be written "
                  f"({e}); set XDEV_CACHE_DIR to a writable folder, or pass --dry-run to only "
                  f"measure", file=sys.stderr)
            return 1
    try:
        dev = get_device(device)
    except (ValueError, BackendUnavailable) as e:
        print(f"python -m xdev.tune: {e}", file=sys.stderr)
        return 2
    print(f"tuning {dev.key}: {dev.name} ({dev.family} kernel family); each candidate's median and "
          "spread, interleaved with the built-in default")
    found = autotune.tune(dev, quick=a.quick, budget_s=a.budget)
    print("chosen (beat the default beyond noise):", json.dumps(found) if found else "none")
    if a.dry_run:
        return 0
    try:
        if found:
            print(f"stored in {autotune.save(dev, found)}")
        else:
            # Nothing beat the default: forget older tuned values too, so the default is used.
            if params.device_id(dev) in params.load_all(warn=False):
                path = params.forget(dev)
                print(f"removed earlier tuned parameters of {dev.key} from {path}")
            print("nothing stored: the built-in defaults stay in use")
    except OSError as e:
        print(f"python -m xdev.tune: could not store the result in {params.cache_file()} "
              f"({e}); the measured parameters are printed above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

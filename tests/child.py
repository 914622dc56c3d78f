"""Running Python in a child process for tests that must survive (or observe) a crash, an
abort or a fresh interpreter's environment."""
from __future__ import annotations

import os
import subprocess
import sys


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without XDEV_BACKEND (the child picks its own), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    env.update(extra)
    return env


def run_child(code: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run `code` with ``python -c`` in child_env(**env); output captured as text."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=child_env(**env))

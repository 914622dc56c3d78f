"""Errors shared by the core and every backend."""
from __future__ import annotations

from collections.abc import Sequence


class BackendUnavailable(RuntimeError):
    """A backend (or one of its devices) cannot be used; the message says how to fix it."""


class KernelBuildError(RuntimeError):
    """A kernel source failed to compile, on any backend (OpenCL, NVRTC).

    ``file``: the kernel file that was built; ``options``: the compiler options;
    ``device``: where; ``log``: the compiler's own output; ``locations``: the
    ``(file, line)`` pairs the log points at, in the real ``.cl``/``.cu`` files (a kernel
    built from several files, e.g. common.cl in front, is mapped back per file). The
    message shows the log with its line references rewritten to those files.
    """

    def __init__(
        self,
        file: str,
        options: Sequence[str],
        log: str,
        *,
        device: str = "",
        compiler: str = "",
        locations: Sequence[tuple[str, int]] = (),
        annotated_log: str | None = None,
    ) -> None:
        self.file = file
        self.options = tuple(options)
        self.log = log
        self.device = device
        self.compiler = compiler
        self.locations = tuple(locations)
        where = f" on {device}" if device else ""
        how = f" ({compiler})" if compiler else ""
        opts = " ".join(self.options) or "(none)"
        super().__init__(
            f"kernel {file} failed to build{where}{how} with options {opts}.\n"
            f"Compiler output (line numbers refer to the source files):\n"
            f"{(annotated_log if annotated_log is not None else log).strip()}"
        )

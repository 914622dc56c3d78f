"""One JSON document on disk, for xdev's caches: versioned, checked when read, written atomically.

A file holds ``{"xdev": <kind>, "version": <n>, "data": <payload>}``. Reading never raises
for what the file holds: a file that cannot be read, is not UTF-8, is not JSON, nests too
deeply for the parser, is of another kind or version, or whose payload the store's check
refuses, is ignored with one warning per file and problem, naming the file and the fix
(``read`` returns None, as for a missing file). Writing replaces the file in one step (a
temporary file in the same folder, flushed, then renamed): a reader sees the old document
or the new one, never a part; a failed write (a full disk) leaves the old file and no
temporary file behind, and raises OSError. ``update`` is a read-modify-write under an
exclusive lock on the folder, so concurrent writers (processes or threads) all keep their
changes.

Used by the OpenCL tuning cache (backends/opencl/params.py), the OpenCL proof verdicts
(backends/opencl/proof.py) and the cuDNN plan cache (backends/cuda/cudnn_tune.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers are serialized within the process only
    fcntl = None  # type: ignore[assignment]

# Larger than any cache xdev writes (the cuDNN plan cache tops out near 1 MiB): a bigger file
# is not read into memory.
MAX_BYTES = 16 << 20

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
_thread_lock = threading.Lock()  # flock is per open file: threads of one process also need this


class JsonStore:
    """The JSON document at ``path``, of ``kind`` and ``version``.

    ``what`` names the file in warnings (e.g. "OpenCL tuning cache"). ``check(payload)`` returns
    None for a valid payload, else what is wrong with it.
    ``legacy(document)`` may turn a document written without the envelope (an older format of
    the same file) into a payload, or return None. ``fix`` ends every warning: what the user
    can do about a bad file.
    """

    def __init__(self, path: Path, kind: str, version: int, *, what: str | None = None,
                 check: Callable[[Any], str | None] | None = None, legacy: Callable[[Any], Any] | None = None,
                 fix: str = "it is rewritten at the next write") -> None:
        self.path = Path(path)
        self.kind, self.version = kind, version
        self.what = what or f"{kind} file"
        self._check, self._legacy, self.fix = check, legacy, fix

    # -- reading -----------------------------------------------------------------------------------
    def read(self, warn: bool = True) -> Any | None:
        """The payload, or None when the file is missing or ignored (with a warning unless not ``warn``)."""
        payload, problem = self.inspect()
        if problem is not None and warn:
            self.warn(problem)
        return payload

    def inspect(self) -> tuple[Any | None, str | None]:
        """(payload, None), (None, None) for a missing file, or (None, what is wrong with the file)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as e:
            return None, f"an unreadable file ({e.strerror or e})"
        if len(raw) > MAX_BYTES:
            return None, f"a file larger than {MAX_BYTES} bytes"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"a file that is not UTF-8 text (byte {e.start})"
        try:
            doc = json.loads(text)
        except RecursionError:
            return None, "JSON nested too deeply to read"
        except ValueError as e:
            return None, f"a file that is not valid JSON ({e})"
        if isinstance(doc, dict) and "xdev" in doc:
            if doc.get("xdev") != self.kind or doc.get("version") != self.version or "data" not in doc:
                return None, (f"a file of kind {doc.get('xdev')!r} version {doc.get('version')!r} "
                              f"(expected {self.kind!r} version {self.version})")
            payload = doc["data"]
        else:
            payload = self._legacy(doc) if self._legacy is not None else None
            if payload is None:
                return None, f"a file that is not an xdev {self.kind!r} document"
        problem = self._check(payload) if self._check is not None else None
        if problem is not None:
            return None, problem
        return payload, None

    def warn(self, problem: str) -> None:
        """One RuntimeWarning per (file, problem) and process."""
        with _warned_lock:
            if (str(self.path), problem) in _warned:
                return
            _warned.add((str(self.path), problem))
        warnings.warn(f"xdev: ignoring {problem} in the {self.what} {self.path}; {self.fix}", RuntimeWarning,
                      stacklevel=3)

    # -- writing -----------------------------------------------------------------------------------
    def write(self, payload: Any) -> Path:
        """Replace the file with ``payload`` in one step; OSError (nothing changed) if that fails."""
        # Keys stay in the payload's order (the cuDNN plan cache keeps its newest entries last).
        text = json.dumps({"xdev": self.kind, "version": self.version, "data": payload}, indent=1)
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())  # the rename must not land before the data (a crash would leave 0 bytes)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return self.path

    def update(self, change: Callable[[Any | None], Any], warn: bool = True) -> Path:
        """Write ``change(current payload or None)`` under an exclusive lock; OSError if it fails.

        ``change`` must not write a store itself (the lock is not reentrant).
        """
        with self.locked():
            return self.write(change(self.read(warn)))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the file's folder (created if missing), held across processes."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        with _thread_lock:
            if fcntl is None:  # pragma: no cover
                yield
                return
            fd = os.open(folder, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def claimed(self, wait_s: float) -> Iterator[bool]:
        """Hold the lock file ``<file>.lock`` while doing the work whose result this file will
        hold, so that a second process (or thread) starting the same work waits and reads the
        first one's result instead of doing it again. Yields True once held; False when it
        could not be had within ``wait_s`` seconds or created (an unwritable folder, no flock):
        the caller then does the work itself. Only the folder's own file lock is held, never
        the lock ``update`` takes, so other stores are not held up."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield False
            return
        try:
            yield fcntl is not None and _flock_within(fd, wait_s)
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self) -> Path:
        """The file's path, after checking a file can be created in its folder (OSError if not)."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
        return self.path


def _flock_within(fd: int, wait_s: float) -> bool:
    """An exclusive flock on ``fd`` within ``wait_s`` seconds (polled: a blocking flock cannot
    time out); False if another holder kept it that long."""
    deadline = time.monotonic() + wait_s
    pause = 0.02
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[union-attr]
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(0.25, pause * 2)
        except OSError:  # a file system without flock
            return False

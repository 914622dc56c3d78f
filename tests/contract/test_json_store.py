"""xdev.contract.json_store: every damaged file is named and ignored, writes are atomic, concurrent
writers all keep their changes, and a failed write leaves nothing behind."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from xdev.contract import json_store
from xdev.contract.json_store import JsonStore


def _store(path, **kw):
    return JsonStore(path, "test-cache", 3, fix="the fix", **kw)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    json_store._warned.clear()
    yield
    json_store._warned.clear()


def _read_warning(store):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = store.read()
    return got, [str(x.message) for x in w]


def test_round_trip_and_missing_file(tmp_path):
    s = _store(tmp_path / "sub" / "c.json")
    assert s.read() is None
    assert s.write({"a": [1, 2.5, "x"]}) == tmp_path / "sub" / "c.json"
    assert s.read() == {"a": [1, 2.5, "x"]}
    doc = json.loads(s.path.read_text())
    assert doc == {"xdev": "test-cache", "version": 3, "data": {"a": [1, 2.5, "x"]}}


@pytest.mark.parametrize("content,problem", [
    (b'{"xdev": "test-cache", "version": 3, "da', "not valid JSON"),                     # truncated
    (b"", "not valid JSON"),
    (b'{"xdev": "test-cache", "version": 2, "data": {}}', "version 2 (expected 'test-cache' version 3)"),
    (b'{"xdev": "other", "version": 3, "data": {}}', "kind 'other'"),
    (b'{"xdev": "test-cache", "version": 3}', "expected 'test-cache' version 3"),       # no data
    (b'[1, 2]', "not an xdev 'test-cache' document"),
    (b'{"a": 1}', "not an xdev 'test-cache' document"),
    (b'{"xdev": "test-cache", "version": 3, "data": {"k": "\xff\xfe"}}', "not UTF-8"),  # invalid UTF-8
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),                                 # RecursionError
])
def test_a_damaged_file_is_named_and_ignored(tmp_path, content, problem):
    s = _store(tmp_path / "c.json")
    s.path.write_bytes(content)
    got, msgs = _read_warning(s)
    assert got is None
    assert len(msgs) == 1 and problem in msgs[0] and str(s.path) in msgs[0] and msgs[0].endswith("the fix")
    assert _read_warning(s) == (None, [])  # once per file and problem
    s.write({"fresh": 1})  # and the next write replaces it
    assert s.read() == {"fresh": 1}


def test_the_check_and_the_legacy_reader(tmp_path):
    s = _store(tmp_path / "c.json", check=lambda d: None if isinstance(d, dict) else "a payload that is no object",
               legacy=lambda doc: doc if isinstance(doc, dict) else None)
    s.path.write_text(json.dumps({"old": "format"}))
    assert s.read() == {"old": "format"}
    s.write([1])
    got, msgs = _read_warning(s)
    assert got is None and "a payload that is no object" in msgs[0]


def test_an_unreadable_or_huge_file_is_ignored(tmp_path, monkeypatch):
    s = _store(tmp_path / "c.json")
    s.path.mkdir()  # a folder where the file should be: reading fails with IsADirectoryError
    got, msgs = _read_warning(s)
    assert got is None and "unreadable" in msgs[0]
    monkeypatch.setattr(json_store, "MAX_BYTES", 10)
    big = _store(tmp_path / "big.json")
    big.write({"x": "0123456789"})
    got, msgs = _read_warning(big)
    assert got is None and "larger than 10 bytes" in msgs[0]


def test_update_under_concurrent_writers_keeps_every_change(tmp_path):
    path = tmp_path / "c.json"
    code = textwrap.dedent(f"""
        import sys
        from xdev.contract.json_store import JsonStore
        s = JsonStore({str(path)!r}, "test-cache", 3)
        me = sys.argv[1]
        for i in range(25):
            s.update(lambda d: {{**(d or {{}}), f"{{me}}-{{i}}": i}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    data = _store(path).read()
    assert data == {f"{n}-{i}": i for n in range(4) for i in range(25)}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    """A full disk, for real: the write runs in a child whose file-size limit is 4 KiB."""
    path = tmp_path / "c.json"
    _store(path).write({"old": 1})
    code = textwrap.dedent(f"""
        import resource, signal
        from xdev.contract.json_store import JsonStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            JsonStore({str(path)!r}, "test-cache", 3).write({{"big": "x" * 100000}})
        except OSError as e:
            print("OSError", e.errno)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("OSError"), r.stdout + r.stderr
    assert _store(path).read() == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_an_unwritable_folder_raises_oserror_without_leftovers(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = _store(blocker / "sub" / "c.json")  # a folder below a file cannot be made (even by root)
    assert s.read() is None
    with pytest.raises(OSError):
        s.write({"a": 1})
    with pytest.raises(OSError):
        s.check_writable()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_claim_is_held_by_one_holder_at_a_time_and_waits_are_bounded(tmp_path):
    import threading
    import time

    s = _store(tmp_path / "c.json")
    order = []

    def second():
        with s.claimed(30) as held:
            order.append(("second", held, time.monotonic()))

    with s.claimed(30) as held:
        assert held
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append(("first done", True, time.monotonic()))
    t.join(30)
    assert [o[:2] for o in order] == [("first done", True), ("second", True)]  # it waited for the first
    with s.claimed(30), s.claimed(0.1) as held:  # held elsewhere past the wait: not had, and no hang
        assert held is False
    blocker = tmp_path / "file"
    blocker.write_text("")
    with _store(blocker / "sub" / "c.json").claimed(30) as held:  # nowhere to put the lock file
        assert held is False

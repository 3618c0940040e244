"""Bounded HTML extraction: no single page may stall a worker.

resiliparse (lexbor) extracts a normal page in about a millisecond, but some constructed pages take minutes
(measured here: 200,000 nested `<div>`s, or one tag with 300,000 attributes, ran past 60 s each), and its C code
holds the GIL, so a thread cannot time it out. Pages are therefore extracted in a helper process, started on the
first page a process reads (by fork: ~10 ms in a step process with torch loaded, nothing to re-import) and
reused for every later page and file of that process (`shared`), so a folder of small pages pays the fork once.
When a page takes longer than `timeout_s`, the helper is killed and the page comes back as `extract_timeout`;
when the helper runs out of its memory allowance (`max_memory_mb` above what it started with) the page is
`extract_memory`; a crash of the extractor itself is `extract_crashed`. The next page starts a fresh helper; the
file goes on.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import resource
from typing import Optional


def _vm_bytes() -> int:
    """This process's current virtual memory size (the base the helper's allowance is added to)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _serve(conn, parent_end, max_memory_bytes: int) -> None:  # runs in the helper process
    import signal

    from kura.corpus.readers import html_to_text

    # The fork copied the parent's end of the pipe: closed here, the helper sees EOF when its parent dies (however
    # it dies), instead of waiting forever on a pipe it holds open itself. SIGTERM is reset to its default, so the
    # interpreter's exit (which terminates daemon children, then joins them) stops the helper even when the parent
    # was started with SIGTERM ignored.
    parent_end.close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if max_memory_bytes:
        try:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + max_memory_bytes, hard))
        except (OSError, ValueError):  # a container that forbids it: the time bound still holds
            pass
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        data, charset = msg
        try:
            conn.send(("ok", html_to_text(data, charset)))
        except MemoryError:
            conn.send(("extract_memory", f"extraction needed more than {max_memory_bytes >> 20} MiB"))
        except Exception as e:  # noqa: BLE001 - any extractor error is this page's reason, not the file's
            conn.send(("extract_failed", f"{type(e).__name__}: {e}"[:300]))


class ExtractGuard:
    """`extract(data, charset)` → (text, None, "") or (None, reason, detail). Use as a context manager (or call
    `close()`): the helper process is stopped at the end."""

    def __init__(self, timeout_s: float = 2.0, max_memory_mb: int = 1024):
        self.timeout_s = timeout_s
        self.max_memory_bytes = max(0, int(max_memory_mb)) << 20
        self._proc: Optional[mp.process.BaseProcess] = None
        self._conn = None

    def _start(self) -> None:
        import kura.corpus.readers  # noqa: F401 - imported before the fork, so the helper imports nothing

        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, parent, self.max_memory_bytes), daemon=True,
                                 name="kura-html-extract")
        self._proc.start()
        child.close()
        self._conn = parent

    def _stop(self, kill: bool) -> None:
        if self._proc is None:
            return
        try:
            if not kill:
                self._conn.send(None)
                self._proc.join(timeout=2)
        except (OSError, ValueError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = self._conn = None

    def extract(self, data: bytes, charset: Optional[str] = None) -> tuple[Optional[str], Optional[str], str]:
        if self._proc is None:
            self._start()
        try:
            self._conn.send((data, charset))
            if not self._conn.poll(self.timeout_s):
                self._stop(kill=True)
                return None, "extract_timeout", f"extraction ran past {self.timeout_s:g} s ({len(data)} bytes)"
            status, value = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):  # the helper died (a crash, or killed for memory)
            code = self._proc.exitcode if self._proc else None
            self._stop(kill=True)
            return None, "extract_crashed", f"the extractor process died (exit code {code}) on this page"
        if status != "ok":
            self._stop(kill=True)  # a helper that ran out of memory may be in a bad state: start afresh
            return None, status, value
        return value, None, ""

    def close(self) -> None:
        self._stop(kill=False)

    def __enter__(self) -> "ExtractGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SHARED: dict[tuple[int, int], ExtractGuard] = {}


@atexit.register
def _close_shared() -> None:
    """Stop this process's helpers politely before the interpreter joins its children."""
    for key, g in list(_SHARED.items()):
        if key[0] == os.getpid():
            g.close()


def shared(timeout_s: float, max_memory_mb: int) -> Optional[ExtractGuard]:
    """This process's guard for these bounds (a forked child gets its own: a helper's pipe is never shared between
    two processes). Its helper is a daemon process, stopped when this process exits. None inside a daemonic
    process (a multiprocessing pool worker may not have children): pages are then extracted unguarded."""
    if mp.current_process().daemon:
        return None
    key = (os.getpid(), int(max_memory_mb))
    g = _SHARED.get(key)
    if g is None:
        g = _SHARED[key] = ExtractGuard(timeout_s, max_memory_mb)
    g.timeout_s = timeout_s
    return g

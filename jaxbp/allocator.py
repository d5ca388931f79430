"""The glibc allocator policy of the ``jaxbp`` command: XLA's per-step buffers stay in the heap.

XLA:CPU allocates a jitted step's temporary buffers as a few large blocks on every call.
glibc serves a block above its mmap threshold (adaptive, 32 MiB at most), or one too large
for a thread arena's 64 MiB heaps, with fresh pages mapped for it and unmapped on
``free``, so every step faults its buffers' pages in again. On a 2-core Xeon (AVX-512),
the manual ``cnn`` step at batch 128 (32 MiB of temp buffers under jaxbp's flags) took
8,246 page faults and 28.1 ms a step; with its blocks kept in the heap, 0.3 and 22.4 ms
(``python experiments/allocator.py``: medians over five processes of each, alternating).

:func:`keep_blocks_in_heap` therefore sets, through ``mallopt``, mmap and trim thresholds
of 1 GiB: blocks up to that size come from the heap and stay there once freed, for the next
step to reuse. The price is memory the process keeps instead of returning it between steps
(its peak, which it reaches every step anyway). Blocks larger than a thread arena's heap
still get fresh pages (batch 512, 127.5 MiB: 123.3 against 122.9 ms, the same 32,640
faults); one arena for all threads (``MALLOC_ARENA_MAX=1``) keeps those too, 103.7 ms, but
costs 1.6-2.0 ms at batch 64 and 128 (12.1 against 10.6, 24.4 against 22.4), so it is left
to the user.

Like the XLA flags (:mod:`jaxbp.xla_flags`), the ``jaxbp`` command sets the policy first
thing, unless the user set any of glibc's own tunables (``MALLOC_*`` or ``GLIBC_TUNABLES``,
which is how to opt out, or to add ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=1073741824`` for large batches); calling :func:`jaxbp.cli.main` from
Python leaves the allocator alone. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

__all__ = ["HEAP_BYTES", "describe", "keep_blocks_in_heap", "users_tunables"]

#: Blocks up to this size come from the heap, and this much freed memory stays at its top.
HEAP_BYTES = 1 << 30
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, HEAP_BYTES), (_M_TRIM_THRESHOLD, HEAP_BYTES))

_state = {"set_by_jaxbp": False}


def users_tunables(environ: Mapping[str, str]) -> list[str]:
    """The names of glibc's own allocator tunables set in ``environ`` (the user's choice, which wins)."""
    return sorted(k for k in environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")


def keep_blocks_in_heap(environ: Mapping[str, str] | None = None, libc=None) -> bool:
    """Keep large blocks in the heap (see the module docstring), unless the user set glibc's
    tunables in ``environ`` (default: this process's) or the C library is not glibc.

    ``libc`` is the C library to call ``mallopt`` on (default: this process's glibc; another
    one, a test's stand-in, leaves :func:`describe` alone). Returns whether the policy is now
    in effect.
    """
    environ = os.environ if environ is None else environ
    if users_tunables(environ):
        return False
    this_process = libc is None
    if this_process:
        if platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL(None)
    ok = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
    if this_process:
        _state["set_by_jaxbp"] = _state["set_by_jaxbp"] or ok
    return ok


def describe(environ: Mapping[str, str] | None = None) -> str:
    """Which allocator policy this process runs under, in one line (``jaxbp bench`` records it)."""
    environ = os.environ if environ is None else environ
    if _state["set_by_jaxbp"]:
        return f"glibc: jaxbp's (mmap and trim thresholds {HEAP_BYTES >> 20} MiB)"
    own = users_tunables(environ)
    if own:
        return "the user's own glibc tunables: " + ", ".join(own)
    return "the C library's defaults"

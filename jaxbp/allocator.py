"""The allocator policy of the ``jaxbp`` command: XLA's per-step buffers stay in the heap.

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
(its peak, which it reaches every step anyway).

That covers the main arena only. JAX runs a CPU computation on a worker thread by default
(asynchronous dispatch), whose blocks come from that thread's arena, and a thread arena's
heaps hold 64 MiB at most: a larger block gets fresh pages whatever the thresholds, and
smaller ones often do too, when the arena's heaps are deleted and made again.
:func:`run_on_calling_thread` turns JAX's asynchronous dispatch off for single-device CPU
computations, so the step runs, and allocates, on the calling thread, from the main arena.
Measured on a 2-core AMD EPYC (AVX2), the manual steps at batch 128, medians over three
processes of each policy, alternating (``experiments/allocator.py``, results in
``experiments/results/allocator_dispatch_avx2*.json``): under XLA's defaults ``cnn-bn`` (65.9 MiB of
temp buffers) 110.6 -> 70.0 ms, 16,885 -> 2 page faults a step; ``convnext`` (119.3 MiB) 206.8 ->
122.1 ms; ``resnet`` (54.4 MiB) 90.9 -> 80.6 ms; ``cnn`` and the autoencoder level. Under the
``ynn-all`` flags (then the AVX2 set), where every manual step's buffers fit in 64 MiB, level over
seven processes each (``resnet`` 70.7 and 71.4 ms, ``cnn-bn`` 60.2 and 62.9; ranges 60-85 ms). The jaxbp
command waits for every step's metrics anyway, so it gives up no overlap. One arena for all
threads (``M_ARENA_MAX=1``) also keeps the blocks in the heap, but its lock costs the threads
more (``cnn-bn`` 80.1 ms, ``convnext`` 168.7, and slower than jaxbp's policy for ``cnn`` and the
autoencoder), so it is left to the user. Computations over several devices keep JAX's dispatch.

Like the XLA flags (:mod:`jaxbp.xla_flags`), the ``jaxbp`` command sets the policy first
thing (:func:`set_policy`), each half unless the user chose: glibc's own tunables
(``MALLOC_*`` or ``GLIBC_TUNABLES``) keep theirs, and so does ``JAX_CPU_ENABLE_ASYNC_DISPATCH``
for the dispatch; calling :func:`jaxbp.cli.main` from Python leaves both alone. Other C
libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

__all__ = [
    "ASYNC_DISPATCH_OPTION",
    "HEAP_BYTES",
    "describe",
    "keep_blocks_in_heap",
    "run_on_calling_thread",
    "set_policy",
    "users_tunables",
]

#: Blocks up to this size come from the heap, and this much freed memory stays at its top.
HEAP_BYTES = 1 << 30
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, HEAP_BYTES), (_M_TRIM_THRESHOLD, HEAP_BYTES))

#: JAX's option for running CPU computations on a worker thread; upper-cased, the environment
#: variable through which the user chooses for themselves.
ASYNC_DISPATCH_OPTION = "jax_cpu_enable_async_dispatch"
_ASYNC_DISPATCH_ENV = ASYNC_DISPATCH_OPTION.upper()

_state = {"set_by_jaxbp": False, "dispatch_by_jaxbp": False}


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


def run_on_calling_thread(environ: Mapping[str, str] | None = None, config=None) -> bool:
    """Run single-device CPU computations on the thread that calls them (JAX's
    :data:`ASYNC_DISPATCH_OPTION` off), so that their buffers come from the main arena (see
    the module docstring), unless the user set ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` in
    ``environ`` (default: this process's). ``config`` is where to set it (default:
    ``jax.config``; a test's stand-in leaves :func:`describe` alone). Takes effect only
    before JAX creates its CPU client (the first computation). Returns whether jaxbp set it.
    """
    environ = os.environ if environ is None else environ
    if _ASYNC_DISPATCH_ENV in environ:
        return False
    this_process = config is None
    if this_process:
        import jax

        config = jax.config
    config.update(ASYNC_DISPATCH_OPTION, False)
    _state["dispatch_by_jaxbp"] = _state["dispatch_by_jaxbp"] or this_process
    return True


def set_policy(environ: Mapping[str, str] | None = None) -> None:
    """The ``jaxbp`` command's policy: :func:`keep_blocks_in_heap` and :func:`run_on_calling_thread`,
    each unless the user chose for themselves."""
    keep_blocks_in_heap(environ)
    run_on_calling_thread(environ)


def _dispatch(environ: Mapping[str, str]) -> str:
    if _state["dispatch_by_jaxbp"]:
        return "CPU steps on the calling thread (jaxbp's)"
    if _ASYNC_DISPATCH_ENV in environ:
        return f"the user's {_ASYNC_DISPATCH_ENV}={environ[_ASYNC_DISPATCH_ENV]}"
    return "CPU steps on a worker thread (JAX's default)"


def describe(environ: Mapping[str, str] | None = None) -> str:
    """Which allocator policy and dispatch this process runs under, in one line (``jaxbp bench`` records it)."""
    environ = os.environ if environ is None else environ
    own = users_tunables(environ)
    if _state["set_by_jaxbp"]:
        heap = f"glibc: jaxbp's (mmap and trim thresholds {HEAP_BYTES >> 20} MiB)"
    elif own:
        heap = "the user's own glibc tunables: " + ", ".join(own)
    else:
        heap = "the C library's defaults"
    return f"{heap}; {_dispatch(environ)}"

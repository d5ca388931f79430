"""The jaxbp command's allocator policy: large freed blocks stay in glibc's heap, so the next
step reuses their pages instead of faulting fresh ones in; the user's own tunables win."""

import platform
import subprocess
import sys

import pytest

from jaxbp import allocator


class FakeLibc:
    def __init__(self, accepts=True):
        self.calls, self.accepts = [], accepts

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1 if self.accepts else 0


def test_the_policy_is_1_gib_mmap_and_trim_thresholds():
    libc = FakeLibc()
    assert allocator.keep_blocks_in_heap({}, libc=libc) is True
    # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (glibc's malloc.h)
    assert libc.calls == [(-3, allocator.HEAP_BYTES), (-1, allocator.HEAP_BYTES)]


def test_the_users_own_tunables_win():
    for environ in ({"MALLOC_ARENA_MAX": "4"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "x"}):
        libc = FakeLibc()
        assert allocator.keep_blocks_in_heap(environ, libc=libc) is False and libc.calls == [], environ
    assert allocator.describe({"MALLOC_ARENA_MAX": "4"}) == "the user's own glibc tunables: MALLOC_ARENA_MAX"


def test_a_refused_setting_is_reported_as_not_in_effect():
    assert allocator.keep_blocks_in_heap({}, libc=FakeLibc(accepts=False)) is False


# A 48 MiB block (past glibc's largest adaptive mmap threshold, 32 MiB) allocated, written and
# freed ten times: without the policy each round maps fresh pages and faults them all in.
ROUNDS = """
import resource, sys, numpy as np
from jaxbp import allocator
if sys.argv[1] == "jaxbp":
    assert allocator.keep_blocks_in_heap()
np.ones(12 << 20, np.float32)  # first touch: faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(12 << 20, np.float32)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy concerns glibc only")
def test_freed_large_blocks_are_reused_without_page_faults():
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}  # no MALLOC_* of the caller's
    faults = {
        policy: float(subprocess.run([sys.executable, "-c", ROUNDS, policy], env=env, capture_output=True,
                                     text=True, check=True).stdout)
        for policy in ("glibc-defaults", "jaxbp")
    }  # fmt: skip
    huge_pages = (48 << 20) // (2 << 20)  # with transparent huge pages, one fault may map 2 MiB
    assert faults["glibc-defaults"] >= huge_pages, faults  # a fresh mapping every round
    assert faults["jaxbp"] <= faults["glibc-defaults"] / 10, faults  # the heap's pages, reused

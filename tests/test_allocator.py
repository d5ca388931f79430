"""The jaxbp command's allocator policy: large freed blocks stay in glibc's heap, so the next
step reuses their pages instead of faulting fresh ones in, and CPU steps run on the calling
thread, whose arena holds blocks of any size; the user's own settings win."""

import json
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
    assert allocator.describe({"MALLOC_ARENA_MAX": "4"}).startswith("the user's own glibc tunables: MALLOC_ARENA_MAX;")


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


class FakeConfig:
    def __init__(self):
        self.values = {}

    def update(self, name, value):
        self.values[name] = value


def test_steps_run_on_the_calling_thread_unless_the_user_chose():
    config = FakeConfig()
    assert allocator.run_on_calling_thread({}, config=config) is True
    assert config.values == {"jax_cpu_enable_async_dispatch": False}
    for value in ("1", "true", "0"):  # the user's JAX option, whatever it says, is theirs
        config = FakeConfig()
        environ = {"JAX_CPU_ENABLE_ASYNC_DISPATCH": value}
        assert allocator.run_on_calling_thread(environ, config=config) is False and config.values == {}
        assert allocator.describe(environ).endswith(f"the user's JAX_CPU_ENABLE_ASYNC_DISPATCH={value}")


# A jitted program with a 72 MiB temporary buffer (exp(x), the operand of a matmul), larger than the
# 64 MiB heaps of glibc's thread arenas, run sixteen times under the command's policy (PROGRAM's argv[1]:
# "command"), or with its heap thresholds only (on JAX's worker thread by default); it prints the page
# faults of each call.
PROGRAM = """
import json, resource, sys
import jax, jax.numpy as jnp
from jaxbp import allocator
if sys.argv[1] == "command":
    allocator.set_policy()
else:
    assert allocator.keep_blocks_in_heap()
f = jax.jit(lambda x, v: jnp.exp(x) @ v)
x, v = jnp.full((4096, 4608), 0.01, jnp.float32), jnp.ones((4608,), jnp.float32)
assert f.lower(x, v).compile().memory_analysis().temp_size_in_bytes > 64 << 20
jax.block_until_ready(f(x, v))
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x, v))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy concerns glibc only")
def test_a_step_larger_than_a_thread_arena_reuses_its_pages_under_the_command_policy():
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # none of the caller's settings
    faults = {
        policy: json.loads(subprocess.run([sys.executable, "-c", PROGRAM, policy], env=env, capture_output=True,
                                          text=True, check=True).stdout)
        for policy in ("heap-thresholds-only", "command")
    }  # fmt: skip
    huge_pages = (72 << 20) // (2 << 20)
    assert min(faults["heap-thresholds-only"]) >= huge_pages, faults  # a fresh mapping on the worker thread every call
    # The main arena's pages, reused: by most calls on a quiet machine; on a loaded one a call now and
    # then finds the last call's buffer not yet freed and faults a new one (4 of 8 once, in a full
    # parallel run of the suite), so at least a quarter of the calls, where the other policy has none.
    reused = [n for n in faults["command"] if n <= min(faults["heap-thresholds-only"]) / 10]
    assert len(reused) >= len(faults["command"]) / 4, faults


def test_the_speed_page_s_library_snippet_sets_the_command_s_policy():
    import re
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "results" / "speed.md").read_text()
    section = page[page.index("### From your own script") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    check = (
        "from jaxbp import allocator as a\n"
        "assert jax.config.values['jax_cpu_enable_async_dispatch'] is False\n"
        "print(a.describe())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}  # none of the caller's settings
    out = subprocess.run([sys.executable, "-c", snippet + check], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "CPU steps on the calling thread (jaxbp's)" in out.stdout
    if platform.libc_ver()[0] == "glibc":
        assert out.stdout.startswith("glibc: jaxbp's"), out.stdout

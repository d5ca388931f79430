"""Shared test setup.

Tests run on the CPU with 64-bit types available where a check asks for them
(``jaxbp.verify`` switches ``jax_enable_x64`` on around its float64 checks).

The suite compiles thousands of small programs and runs most of them once, as ``jaxbp
check`` does, so it compiles them as that command does: with
:data:`jaxbp.xla_flags.FAST_COMPILE_FLAGS` (LLVM without its optimisation passes, XLA:CPU's
classic fusion emitters; IEEE results, no fast math), on a jaxlib they were measured on. On
2 cores this takes the suite from about 10 to about 7 minutes. ``XLA_FLAGS=`` (empty, or
any flags of your own) runs it under those flags instead: ``XLA_FLAGS= pytest -n auto``
runs it under XLA's defaults.
"""

import os

from jaxbp.xla_flags import FAST_COMPILE_FLAGS, measured_jaxlib, read_flags_now

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if measured_jaxlib():
    os.environ.setdefault("XLA_FLAGS", FAST_COMPILE_FLAGS)

# Tests that patch XLA_FLAGS (to make jaxbp.kernels predict another flag set) must not be a worker's
# first compilation, or their flags become the worker's (jaxbp.xla_flags.read_flags_now).
read_flags_now()


def pytest_collection_modifyitems(config, items):
    """The long items first (marked ``long``, and the guides' examples: one doctest item per page),
    the rest in their order: under ``-n auto`` the run then does not end on one worker running a
    minute-long item while the other has nothing left to do."""
    items.sort(key=lambda item: not (item.get_closest_marker("long") or item.path.suffix == ".md"))

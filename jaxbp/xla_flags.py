"""The XLA:CPU flag policy of the ``jaxbp`` command: which flags it sets, and when.

:func:`set_default_xla_flags` sets :data:`CPU_XLA_FLAGS` for the command's own process
when the user has not set ``XLA_FLAGS`` (even to ``""``, which is how to opt out) and
jaxlib is a version they were measured on. Calling :func:`jaxbp.cli.main` from Python
leaves the environment alone.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

__all__ = ["CPU_XLA_FLAGS", "CPU_XLA_FLAGS_JAXLIB", "set_default_xla_flags"]

#: XLA:CPU flags the ``jaxbp`` command sets for its own process when ``XLA_FLAGS`` is
#: unset: convolutions, matmuls, element-wise ops and reductions go to YNNPACK kernels.
#: Measured in one process each (experiments/results/throughput.json, cnn, batch 128,
#: float32, 2-core CPU): the manual train step 60-63 ms against 68-73 ms under XLA's
#: defaults, 1.9-2.1x faster than autodiff and level with PyTorch eager (1.03x, 0.99x)
#: where XLA's defaults trail it (0.91x, 0.85x). It only concerns the CPU backend.
CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot,eltwise,reduce"
#: jaxlib series the flag was measured on. XLA aborts the process on a flag it does not
#: know, and experimental flags come and go, so other versions get XLA's defaults.
CPU_XLA_FLAGS_JAXLIB = ("0.10.",)


def set_default_xla_flags(environ: MutableMapping[str, str] | None = None, jaxlib: str | None = None) -> str | None:
    """Set ``XLA_FLAGS`` to :data:`CPU_XLA_FLAGS` unless the user set it (even to ``""``,
    which is how to opt out) or jaxlib is not a version they were measured on.

    Takes effect only before JAX starts its backends (the first computation), which is
    why the command does it first thing. Returns the flags set, or None.
    """
    environ = os.environ if environ is None else environ
    if "XLA_FLAGS" in environ:
        return None
    if jaxlib is None:
        try:
            jaxlib = importlib.metadata.version("jaxlib")
        except importlib.metadata.PackageNotFoundError:
            return None
    if not jaxlib.startswith(CPU_XLA_FLAGS_JAXLIB):
        return None
    environ["XLA_FLAGS"] = CPU_XLA_FLAGS
    return CPU_XLA_FLAGS

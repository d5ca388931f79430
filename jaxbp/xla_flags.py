"""The XLA:CPU flag policy of the ``jaxbp`` command: which flags it sets, when, and why.

:func:`set_default_xla_flags` sets the flags measured for this CPU's instruction set
(:data:`CPU_XLA_FLAGS`, chosen from :data:`CPU_XLA_FLAGS_BY_ISA` by the flags that
``/proc/cpuinfo`` lists at start-up; for a built-in model measured faster under others,
those of :data:`CPU_XLA_FLAGS_BY_MODEL`) for the command's own process, when the user has
not set ``XLA_FLAGS`` (even to ``""``, which is how to opt out) and jaxlib is a version
they were measured on. Calling :func:`jaxbp.cli.main` from Python leaves the
environment alone. :func:`describe` says which flags are in effect and why; ``jaxbp
bench`` records it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Mapping, MutableMapping
from typing import NamedTuple

__all__ = [
    "CPU_ISA",
    "CPU_XLA_FLAGS",
    "CPU_XLA_FLAGS_BY_ISA",
    "CPU_XLA_FLAGS_BY_MODEL",
    "CPU_XLA_FLAGS_JAXLIB",
    "FAST_COMPILE_FLAGS",
    "FAST_COMPILE_OPTIONS",
    "FlagChoice",
    "cpu_isa",
    "cpu_model",
    "describe",
    "fast_compile_options",
    "flags_for",
    "measured_jaxlib",
    "read_flags_now",
    "set_default_xla_flags",
    "ynnpack_convolutions",
    "ynnpack_elementwise",
    "ynnpack_fusion_types",
]

_YNN = "--xla_cpu_experimental_ynn_fusion_type="


class FlagChoice(NamedTuple):
    """The flags for one instruction set and the measurement they rest on."""

    flags: str
    reason: str


#: XLA:CPU flags per instruction set, each chosen by measurement on a CPU that has it
#: (``experiments/throughput.py --xla-sweep``: the manual ``cnn`` train step, batch 128,
#: float32, one process per flag set). They only concern the CPU backend.
CPU_XLA_FLAGS_BY_ISA: dict[str, FlagChoice] = {
    "avx2": FlagChoice(
        _YNN + "individual_dot,reduce",
        "measured on 2-core AVX2 AMD EPYCs: matmuls and reductions as YNNPACK fusions, element-wise ops on "
        "XLA's loop fusions, convolutions on XLA's own kernels. Every set in one process (experiments/"
        "throughput.py --sweep-only --sweep-sets default,ynn-no-conv,ynn-dot-reduce, manual steps, 40-100 "
        "rounds), against XLA's defaults and the element-wise ops on YNNPACK too (the AVX2 choice until then): "
        "resnet 84.6 ms against 96.3 and 95.5, cnn 57.4 against 60.1 and 61.1, cnn-bn 72.6 against 76.5 and "
        "72.5, autoencoder 20.0 against 24.7 and 30.2; the autodiff steps level with the latter (resnet 99.9 "
        "against 98.3, cnn 112.8 against 111.6, cnn-bn 134.4 against 133.6) and 1.6-1.9x faster than under "
        "XLA's defaults, whose YNNPACK convolutions run autodiff's transposed ones slowly",
    ),
    "avx512": FlagChoice(
        _YNN + "individual_dot,eltwise,reduce",
        "measured on 2-core AVX-512 CPUs (AMD EPYC, Intel Xeon Sapphire Rapids): matmuls, element-wise ops "
        "and reductions as YNNPACK fusions, convolutions on XLA's own kernels, faster there. Xeon, every flag "
        "set in one process (experiments/throughput.py --xla-sweep): the manual cnn step level with XLA's "
        "defaults, 28.9 against 28.7 ms (conv2d keeps its slow convolutions off YNNPACK itself), the "
        "autodiff step 74.1 against 99.3 ms (YNNPACK runs its convolutions: conv2's forward 7.2 ms against "
        "XLA's 3.6, experiments/layer_timing.py --kernels); cnn-bn's manual step 37.3 against 53.0 ms, its "
        "autodiff step 95.1 against 125.8 (--model cnn-bn)",
    ),
}
#: Built-in models that run faster under other flags than their instruction set's choice, measured
#: as that choice was (every flag set in one process): (instruction set, model) -> the flags.
CPU_XLA_FLAGS_BY_MODEL: dict[tuple[str, str], FlagChoice] = {
    ("avx2", "convnext"): FlagChoice(
        "",
        "XLA's defaults, measured on a 2-core AVX2 AMD EPYC (experiments/throughput.py --model convnext "
        "--sweep-only --sweep-sets default,ynn-no-conv,ynn-dot-reduce, 30 rounds): the manual convnext step "
        "level with the AVX2 set (145.5 ms against 145.9), its autodiff step faster (628.7 against 700.8); "
        "with the element-wise ops on YNNPACK too, the manual step 245.0 ms (YNNPACK's element-wise fusions "
        "run GELU 2x and the depthwise taps 1.6x slower, experiments/modern_layer_timing.py)",
    ),
}
#: For work that compiles thousands of small programs and runs each once (``jaxbp check``,
#: ``jaxbp devices``, the checker's own programs): LLVM without its optimisation passes and
#: XLA:CPU's classic fusion emitters, whose compile is cheaper for programs this small (IEEE
#: results unchanged: no fast math). As ``jax.jit``'s ``compiler_options`` and as the
#: ``XLA_FLAGS`` they become. 2-core AMD EPYC (AVX2), jaxlib 0.10.2: an element-wise program
#: compiles in 15 ms instead of 35, a conv/ReLU/max-pool gradient in 56 ms instead of 282.
FAST_COMPILE_OPTIONS: dict[str, int | bool] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
FAST_COMPILE_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE_OPTIONS.items())
#: jaxlib series the flags were measured on. XLA aborts the process on a flag it does not
#: know, and experimental flags come and go, so other versions get XLA's defaults.
CPU_XLA_FLAGS_JAXLIB = ("0.10.",)


def _cpuinfo(path: str = "/proc/cpuinfo") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _field(cpuinfo: str, name: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_isa(cpuinfo: str | None = None) -> str:
    """``"avx512"`` (``avx512f`` listed), ``"avx2"``, or ``"other"`` (neither, or no
    ``/proc/cpuinfo``), from the first processor's ``flags`` line of ``cpuinfo``
    (default: this machine's ``/proc/cpuinfo``)."""
    flags = set(_field(_cpuinfo() if cpuinfo is None else cpuinfo, "flags").split())
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def cpu_model(cpuinfo: str | None = None) -> str:
    """The ``model name`` of the first processor in ``cpuinfo`` (default: this machine's), or ""."""
    return _field(_cpuinfo() if cpuinfo is None else cpuinfo, "model name")


def flags_for(isa: str, model: str | None = None) -> FlagChoice:
    """The flags for an instruction set (and a built-in ``model``, where
    :data:`CPU_XLA_FLAGS_BY_MODEL` has a measurement for the pair); an instruction set that was
    never measured gets the AVX2 choice (the flags select library kernels, which exist on every
    CPU XLA supports)."""
    if (isa, model) in CPU_XLA_FLAGS_BY_MODEL:
        return CPU_XLA_FLAGS_BY_MODEL[(isa, model)]
    if isa in CPU_XLA_FLAGS_BY_ISA:
        return CPU_XLA_FLAGS_BY_ISA[isa]
    avx2 = CPU_XLA_FLAGS_BY_ISA["avx2"]
    return FlagChoice(avx2.flags, f"no measurement for a CPU without AVX2 ({isa}); the AVX2 choice: {avx2.reason}")


#: This machine's instruction set, read once at start-up, and the flags chosen for it.
CPU_ISA = cpu_isa()
CPU_XLA_FLAGS = flags_for(CPU_ISA).flags


def measured_jaxlib(version: str | None = None) -> bool:
    """Whether jaxlib (``version``, default the installed one) is a series the flags were measured on."""
    if version is None:
        try:
            version = importlib.metadata.version("jaxlib")
        except importlib.metadata.PackageNotFoundError:
            return False
    return version.startswith(CPU_XLA_FLAGS_JAXLIB)


def fast_compile_options(jaxlib: str | None = None) -> dict[str, int | bool]:
    """:data:`FAST_COMPILE_OPTIONS` on a measured jaxlib, else none: ``compiler_options`` that
    XLA does not know fail the compilation."""
    return dict(FAST_COMPILE_OPTIONS) if measured_jaxlib(jaxlib) else {}


@functools.cache
def read_flags_now() -> None:
    """Make XLA read this process's ``XLA_FLAGS`` now, by compiling a trivial program (once).

    XLA reads ``XLA_FLAGS`` once, at the process's first compilation, and keeps those flags for
    every later compilation that does not set them. Code that patches ``XLA_FLAGS`` for a while
    (to make :mod:`jaxbp.kernels` trace for another flag set) calls this first, so that the patch is
    never what the process's first compilation reads: measured on jaxlib 0.10, a step compiled for
    XLA's defaults after a first compilation under jaxbp's AVX2 set got the AVX2 set (cnn-bn's
    autodiff step, 27 YNNPACK fusions rather than 32).
    """
    import jax

    jax.jit(lambda x: x + 1).lower(1.0).compile()


def set_default_xla_flags(
    environ: MutableMapping[str, str] | None = None,
    jaxlib: str | None = None,
    *,
    fast_compile: bool = False,
    model: str | None = None,
) -> str | None:
    """Set ``XLA_FLAGS`` to :data:`CPU_XLA_FLAGS` (or, for the built-in ``model`` the process
    trains or times, :func:`flags_for` that model) unless the user set it (even to ``""``,
    which is how to opt out) or jaxlib is not a version they were measured on.
    ``fast_compile`` adds :data:`FAST_COMPILE_FLAGS`, for the commands whose programs
    compile once and run once (``jaxbp check``, ``jaxbp devices``).

    Takes effect only before JAX starts its backends (the first computation), which is
    why the command does it first thing. Returns the flags set, or None.
    """
    environ = os.environ if environ is None else environ
    if "XLA_FLAGS" in environ or not measured_jaxlib(jaxlib):
        return None
    chosen = flags_for(CPU_ISA, model).flags
    flags = f"{chosen} {FAST_COMPILE_FLAGS}".strip() if fast_compile else chosen
    environ["XLA_FLAGS"] = flags
    return flags


#: Whether XLA:CPU runs convolutions as YNNPACK fusions when ``XLA_FLAGS`` does not say:
#: so in jaxlib 0.10 (``tests/test_xla_flags.py`` compiles a convolution to check it).
YNN_CONVOLUTIONS_BY_DEFAULT = True
#: Whether XLA:CPU runs element-wise ops as YNNPACK fusions when ``XLA_FLAGS`` does not say: not
#: in jaxlib 0.10 (its own loop fusions; ``tests/test_xla_flags.py`` compiles one to check it).
YNN_ELEMENTWISE_BY_DEFAULT = False


def ynnpack_fusion_types(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The kinds of YNNPACK fusion the ``XLA_FLAGS`` of ``environ`` (default: this process's) ask
    for: the list of the last ``--xla_cpu_experimental_ynn_fusion_type=``, or None without one
    (XLA's defaults)."""
    environ = os.environ if environ is None else environ
    types = None
    for flag in environ.get("XLA_FLAGS", "").split():
        if flag.startswith(_YNN):
            types = tuple(t for t in flag.removeprefix(_YNN).split(",") if t)
    return types


def ynnpack_convolutions(environ: Mapping[str, str] | None = None) -> bool:
    """Whether XLA:CPU sends convolutions to YNNPACK under the ``XLA_FLAGS`` of ``environ``
    (default: this process's): the last ``--xla_cpu_experimental_ynn_fusion_type=`` decides
    (convolutions when it lists ``individual_convolution``), XLA's default without one.

    ``jaxbp.kernels.conv`` reads it while tracing to pick the formulation that suits the
    kernels the compiler will choose; it says nothing of other backends.
    """
    types = ynnpack_fusion_types(environ)
    return YNN_CONVOLUTIONS_BY_DEFAULT if types is None else "individual_convolution" in types


def ynnpack_elementwise(environ: Mapping[str, str] | None = None) -> bool:
    """Whether XLA:CPU runs element-wise ops as YNNPACK fusions under the ``XLA_FLAGS`` of
    ``environ`` (default: this process's): when the last ``--xla_cpu_experimental_ynn_fusion_type=``
    lists ``eltwise``, XLA's default without one. Read as :func:`ynnpack_convolutions` is."""
    types = ynnpack_fusion_types(environ)
    return YNN_ELEMENTWISE_BY_DEFAULT if types is None else "eltwise" in types


def describe(environ: Mapping[str, str] | None = None, model: str | None = None) -> dict[str, str]:
    """Which XLA flags this process runs under and why: ``flags``, ``cpu`` (model name),
    ``isa``, and ``why``: jaxbp's choice for this instruction set and ``model`` (with the
    measurement), the user's own ``XLA_FLAGS``, or XLA's defaults."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS")
    choice = flags_for(CPU_ISA, model)
    if flags is None:
        why = "XLA_FLAGS unset and not set by jaxbp (not the jaxbp command, or a jaxlib the flags were not measured on): XLA's defaults"
    elif flags == choice.flags and (CPU_ISA, model) in CPU_XLA_FLAGS_BY_MODEL:
        why = f"jaxbp's flags for {CPU_ISA} and {model}: {choice.reason}"
    elif flags == choice.flags:
        why = f"jaxbp's flags for {CPU_ISA}: {choice.reason}"
    elif flags == "":
        why = "XLA_FLAGS set to '' by the user: XLA's defaults"
    else:
        why = "the user's own XLA_FLAGS"
    return {"flags": flags or "", "cpu": cpu_model(), "isa": CPU_ISA, "why": why}

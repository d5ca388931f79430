"""The XLA flag policy: the instruction set read from /proc/cpuinfo picks the flags, the
user's own XLA_FLAGS (even empty) win, and `describe` says which flags are in effect and why."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxbp import xla_flags

AVX512 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl\n"
AVX2 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse2 avx avx2 fma\n"
NEITHER = "processor\t: 0\nmodel name\t: old\nflags\t\t: fpu sse2 avx\n"


def test_the_instruction_set_comes_from_the_cpuinfo_flags():
    assert xla_flags.cpu_isa(AVX512) == "avx512"
    assert xla_flags.cpu_isa(AVX2) == "avx2"
    assert xla_flags.cpu_isa(NEITHER) == "other"
    assert xla_flags.cpu_isa("") == "other"  # no /proc/cpuinfo (macOS, a sandbox)
    assert xla_flags.cpu_isa("flags\t: avx512_bf16 avx2\n") == "avx2"  # avx512f itself, not any avx512* flag
    assert xla_flags.cpu_model(AVX512) == "AMD EPYC"


def test_each_measured_instruction_set_has_its_flags_and_the_rest_get_avx2s():
    for isa in ("avx2", "avx512"):
        choice = xla_flags.flags_for(isa)
        assert choice.flags and "measured" in choice.reason
    other = xla_flags.flags_for("other")
    assert other.flags == xla_flags.CPU_XLA_FLAGS_BY_ISA["avx2"].flags and "no measurement" in other.reason
    assert xla_flags.CPU_XLA_FLAGS == xla_flags.flags_for(xla_flags.CPU_ISA).flags  # this machine's choice


def test_describe_says_whose_flags_are_in_effect():
    ours = xla_flags.describe({"XLA_FLAGS": xla_flags.CPU_XLA_FLAGS})
    assert ours["flags"] == xla_flags.CPU_XLA_FLAGS and ours["why"].startswith(f"jaxbp's flags for {xla_flags.CPU_ISA}")
    assert "XLA's defaults" in xla_flags.describe({"XLA_FLAGS": ""})["why"]
    assert "XLA's defaults" in xla_flags.describe({})["why"]
    assert xla_flags.describe({"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"})["why"] == "the user's own XLA_FLAGS"


# ------------------------------------------------ which kernels XLA:CPU runs convolutions on

YNN = "--xla_cpu_experimental_ynn_fusion_type="
NO_CONV = YNN + "individual_dot,eltwise,reduce"  # jaxbp's AVX-512 choice
ALL = YNN + "individual_convolution,individual_dot,eltwise,reduce"  # every fusion type


def test_the_last_ynn_fusion_flag_says_whether_convolutions_go_to_ynnpack():
    assert xla_flags.ynnpack_convolutions({"XLA_FLAGS": ALL}) is True
    assert xla_flags.ynnpack_convolutions({"XLA_FLAGS": NO_CONV}) is False
    assert xla_flags.ynnpack_convolutions({"XLA_FLAGS": YNN}) is False  # no YNNPACK fusions at all
    assert xla_flags.ynnpack_convolutions({"XLA_FLAGS": f"{ALL} {NO_CONV}"}) is False  # the last one wins
    default = xla_flags.YNN_CONVOLUTIONS_BY_DEFAULT
    assert xla_flags.ynnpack_convolutions({}) is default
    assert xla_flags.ynnpack_convolutions({"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"}) is default


def test_the_last_ynn_fusion_flag_says_whether_elementwise_ops_go_to_ynnpack():
    assert xla_flags.ynnpack_elementwise({"XLA_FLAGS": ALL}) is True
    assert xla_flags.ynnpack_elementwise({"XLA_FLAGS": NO_CONV}) is True
    assert xla_flags.ynnpack_elementwise({"XLA_FLAGS": YNN + "individual_dot,reduce"}) is False  # AVX2's
    assert xla_flags.ynnpack_elementwise({"XLA_FLAGS": f"{NO_CONV} {YNN}"}) is False  # the last one wins
    assert xla_flags.ynnpack_elementwise({}) is xla_flags.YNN_ELEMENTWISE_BY_DEFAULT


def _entry(hlo: str) -> list[str]:
    """The lines of the compiled module's entry computation."""
    return hlo[hlo.index("\nENTRY ") :].split("\n}")[0].splitlines()


def _conv_hlo(fn, *args, flags=None) -> str:
    import jax

    from jaxbp import bench

    options = None if flags is None else bench.flag_options(flags)
    return jax.jit(fn).lower(*args).compile(options).as_text()


# The flag and XLA's default are known for the jaxlib series jaxbp's flags were measured on;
# elsewhere the flag may not exist (the layer's choice is then only a guess about speed).
KNOWN_JAXLIB = pytest.mark.skipif(
    not importlib.metadata.version("jaxlib").startswith(xla_flags.CPU_XLA_FLAGS_JAXLIB),
    reason=f"YNNPACK's fusion flag and default are known for jaxlib {xla_flags.CPU_XLA_FLAGS_JAXLIB} only",
)


@KNOWN_JAXLIB
def test_the_prediction_matches_the_compiler():
    # a convolution YNNPACK takes (more than 16 features, NHWC, output no larger than input)
    import os

    import jax.numpy as jnp
    from jax import lax

    x, w = jnp.ones((2, 6, 6, 32)), jnp.ones((3, 3, 32, 64))
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    process = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}  # what a compilation without options runs under
    elementwise, big = lambda x: x * 2.0 + 1.0, jnp.ones((64, 1024))  # noqa: E731 (YNNPACK skips small arrays)
    only_dots = YNN + "individual_dot"
    for flags, environ in (
        (None, process),
        (ALL, {"XLA_FLAGS": ALL}),
        (NO_CONV, {"XLA_FLAGS": NO_CONV}),
        (only_dots, {"XLA_FLAGS": only_dots}),
    ):
        on_ynnpack = any("__ynn_fusion" in line for line in _entry(_conv_hlo(conv, x, w, flags=flags)))
        assert on_ynnpack is xla_flags.ynnpack_convolutions(environ), flags
        on_ynnpack = any("__ynn_fusion" in line for line in _entry(_conv_hlo(elementwise, big, flags=flags)))
        assert on_ynnpack is xla_flags.ynnpack_elementwise(environ), flags


@KNOWN_JAXLIB
@pytest.mark.parametrize("cin", [32, 8])
def test_the_conv_gradients_and_wide_forwards_stay_on_xlas_kernels(monkeypatch, cin):
    # YNNPACK's dx and dw kernels are the slower ones, and so is its forward for inputs of 16
    # channels or more: where YNNPACK would take them, conv2d computes dx and the forward one row
    # taller (cropped after) and dw over x dilated by 2, and the compiler keeps them on its own
    # kernels. Narrower forwards stay on YNNPACK.
    import jax
    import jax.numpy as jnp

    from jaxbp import manual

    def grads(x, w):
        y, pullback = jax.vjp(lambda x, w: manual.conv2d(x, w, padding="SAME"), x, w)
        return pullback(y)

    monkeypatch.setenv("XLA_FLAGS", ALL)  # read while tracing; the compilation gets the same flags as options
    entry = _entry(_conv_hlo(grads, jnp.ones((2, 6, 6, cin)), jnp.ones((3, 3, cin, 64)), flags=ALL))
    on_xla = [line.split(" convolution(")[0].split("= ")[-1] for line in entry if " convolution(" in line]
    on_ynnpack = [line for line in entry if "__ynn_fusion" in line and "conv_general_dilated" in line]
    dx, dw, y = f"f32[2,7,6,{cin}]{{3,2,1,0}}", f"f32[{cin},3,3,64]{{3,2,1,0}}", "f32[2,7,6,64]{3,2,1,0}"
    if cin >= 16:
        assert sorted(on_xla) == sorted([dx, dw, y]), entry
        assert not on_ynnpack, entry
    else:
        assert sorted(on_xla) == sorted([dx, dw]), entry
        assert len(on_ynnpack) == 1, entry  # the forward


# ------------------------------------------------ the checker's fast-compile options


def test_fast_compile_options_only_on_a_measured_jaxlib_and_the_flags_say_the_same():
    assert xla_flags.fast_compile_options("0.10.2") == xla_flags.FAST_COMPILE_OPTIONS
    assert xla_flags.fast_compile_options("0.4.35") == {}  # an option XLA does not know fails the compile
    flags = dict(f.removeprefix("--").split("=") for f in xla_flags.FAST_COMPILE_FLAGS.split())
    assert flags == {k: str(v).lower() for k, v in xla_flags.FAST_COMPILE_OPTIONS.items()}


# XLA's own defaults for the fast-compile options (jaxlib 0.10's DebugOptions)
XLA_DEFAULTS = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
    "xla_cpu_use_fusion_emitters": True,
}


@KNOWN_JAXLIB
def test_the_fast_compile_options_change_how_xla_compiles_not_what_it_computes():
    # the checker (and the suite: conftest.py) compiles with them: a conv gradient in float64 must
    # agree with XLA's defaults to rounding (no fast math), and the options must reach the compiler
    # (another program text). The defaults are named, since the process may run under the options.
    import jax
    import numpy as np

    from jaxbp import manual
    from jaxbp.verify.compiled import x64_scope

    def grads(x, w):
        y, pullback = jax.vjp(lambda x, w: manual.relu(manual.conv2d(x, w, padding="SAME")), x, w)
        return pullback(y * y)

    with x64_scope(True):
        rng = np.random.default_rng(0)
        x, w = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(3, 3, 3, 4))
        lowered = jax.jit(grads).lower(x, w)
        fast, plain = lowered.compile(xla_flags.FAST_COMPILE_OPTIONS), lowered.compile(XLA_DEFAULTS)
        assert fast.as_text() != plain.as_text()
        # float64, sums of at most 2*5*5 = 50 products (dw; dx 3*3*4 = 36) summed in another order:
        # 1e-13 of the largest entry is ~450 ulps, far above a reordering's error and far below
        # what fast math (or a wrong kernel) would change
        for a, b in zip(fast(x, w), plain(x, w)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * float(np.max(np.abs(b))))


def test_a_model_measured_faster_under_other_flags_gets_them_and_others_the_isa_choice():
    for (isa, model), choice in xla_flags.CPU_XLA_FLAGS_BY_MODEL.items():
        assert xla_flags.flags_for(isa, model) == choice and choice.reason
        assert xla_flags.flags_for(isa, "cnn") == xla_flags.CPU_XLA_FLAGS_BY_ISA[isa]  # the rest: the ISA's
    assert xla_flags.flags_for("avx2", "convnext").flags == ""  # measured: XLA's defaults
    assert xla_flags.flags_for("avx2", "autoencoder") == xla_flags.CPU_XLA_FLAGS_BY_ISA["avx2"]  # measured
    assert xla_flags.flags_for("avx512", "convnext") == xla_flags.CPU_XLA_FLAGS_BY_ISA["avx512"]  # not measured
    env = {}
    own = xla_flags.flags_for(xla_flags.CPU_ISA, "convnext")
    assert xla_flags.set_default_xla_flags(env, "0.10.2", model="convnext") == own.flags == env["XLA_FLAGS"]
    assert xla_flags.describe(env, model="convnext")["why"].endswith(own.reason)
    user = {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"}
    assert xla_flags.set_default_xla_flags(user, "0.10.2", model="convnext") is None  # the user's own stay


def test_the_command_sets_the_flags_of_the_model_it_trains(monkeypatch, tmp_path):
    from jaxbp import cli

    seen = []
    monkeypatch.setattr(cli, "set_default_xla_flags", lambda **kwargs: seen.append(kwargs))
    monkeypatch.setattr(cli.allocator, "set_policy", lambda: seen.append("allocator policy"))
    run, broken = tmp_path / "run", tmp_path / "broken"
    run.mkdir(), broken.mkdir()
    (run / "config.json").write_text('{"model": "convnext", "epochs": 3}')
    (broken / "config.json").write_text('{"model": ')
    for argv, model in (
        (["train", "--model", "convnext", "--epochs", "0"], "convnext"),
        (["train", "--resume", str(run)], "convnext"),  # the run's model (its checkpoint is missing: exit 2)
        (["train", "--resume", str(run / "checkpoint.npz")], "convnext"),
        (["train", "--resume", str(run), "--model", "cnn"], "cnn"),  # named: the user's (resume then refuses it)
        (["train", "--resume", str(broken)], None),  # unreadable: the instruction set's flags
        (["train", "--resume", str(tmp_path / "none")], None),
        (["plot", "/no/such/run", "--out", "/no/such/run.png"], None),
    ):
        monkeypatch.setattr("sys.argv", ["jaxbp", *argv])
        with pytest.raises(SystemExit):
            cli.run()
        assert seen[-2]["model"] == model and seen[-1] == "allocator policy"  # both, before the command runs


THROUGHPUT = Path(__file__).resolve().parents[1] / "experiments" / "throughput.py"
# A fresh process (XLA reads XLA_FLAGS at its first compilation): a convolution compiled for
# NO_CONV inside experiments/throughput.py's traced_under, then one compiled without options,
# which must get the process's own flags (XLA's defaults: on YNNPACK), not NO_CONV's.
FIRST_COMPILE_IN_TRACED_UNDER = f"""
import importlib.util, jax, numpy as np
from jax import lax
from jaxbp import bench
spec = importlib.util.spec_from_file_location("throughput", {str(THROUGHPUT)!r})
tp = importlib.util.module_from_spec(spec); spec.loader.exec_module(tp)
conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = np.ones((2, 6, 6, 32), np.float32), np.ones((3, 3, 32, 64), np.float32)  # no compilation yet
with tp.traced_under({NO_CONV!r}):
    inside = jax.jit(conv).lower(x, w).compile(bench.flag_options({NO_CONV!r})).as_text()
after = jax.jit(conv).lower(x, w).compile().as_text()
print("__ynn_fusion" in inside, "__ynn_fusion" in after)
"""


@KNOWN_JAXLIB
def test_a_first_compilation_inside_traced_under_leaves_the_process_its_own_flags():
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", FIRST_COMPILE_IN_TRACED_UNDER], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"], out.stdout  # NO_CONV's off YNNPACK, the default's on it

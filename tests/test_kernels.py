"""jaxbp.kernels: the choice of route.

Which route (a :class:`ConvRoute`: how the manual layer formulates y, dx and dw for the kernels
XLA will run) the measured rules give for a shape, the flags and the backend. And ``layers/``
reads no process environment: no XLA flags, no backend.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxbp.kernels import conv as kernels
from jaxbp.layers import conv as conv_module

ConvRoute = kernels.ConvRoute

# ---------------------------------------------------------------- the choice

# How XLA_FLAGS route convolutions: to YNNPACK's kernels (XLA's default), or to XLA's own.
ON_YNNPACK = ""
OFF_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,eltwise,reduce"


def chosen(x_shape, w_shape, groups, stride=1, padding="SAME") -> ConvRoute:
    """The route conv2d takes for these shapes (the backend and XLA_FLAGS as they are)."""
    return conv_module.conv_config(jnp.zeros(x_shape), jnp.zeros(w_shape), None, stride, padding, 1, groups).route


@pytest.mark.parametrize(
    ("flags", "groups", "cin_g", "im2col", "dw_lhs_dilation"),
    [
        (ON_YNNPACK, 1, 32, False, 2),  # YNNPACK's dw convolution is the slow one: x dilated keeps it off
        (OFF_YNNPACK, 1, 32, False, 1),
        (ON_YNNPACK, 2, 16, True, 1),  # batch-grouped convolutions are slow on either kernel
        (OFF_YNNPACK, 2, 16, True, 1),
        (ON_YNNPACK, 8, 1, False, 2),  # depthwise below DEPTHWISE_TAPS_CHANNELS: the convolution is faster
        (OFF_YNNPACK, 8, 1, False, 1),  # (from 16 channels: the taps, below)
        (ON_YNNPACK, 2, 64, False, 2),  # wider groups: not measured, the convolution
    ],
)
def test_the_weight_gradient_takes_the_measured_route(monkeypatch, flags, groups, cin_g, im2col, dw_lhs_dilation):
    monkeypatch.setenv("XLA_FLAGS", flags)  # read while tracing
    route = chosen((4, 14, 14, groups * cin_g), (3, 3, cin_g, 64), groups)
    assert (route.im2col_block > 0, route.dw_lhs_dilation) == (im2col, dw_lhs_dilation)


@pytest.mark.parametrize(
    ("flags", "cin", "stride", "dx_extra_row", "y_extra_row"),
    [
        (ON_YNNPACK, 32, 1, True, True),  # the cnn's conv2: dx and the forward one row taller
        (ON_YNNPACK, 8, 1, True, False),  # narrow inputs: the forward is faster on YNNPACK
        (ON_YNNPACK, 32, 2, False, False),  # dx's dy is dilated by the stride: YNNPACK refuses it anyway
        (OFF_YNNPACK, 32, 1, False, False),  # XLA's kernels already
    ],
)
def test_dx_and_the_forward_take_the_measured_route(monkeypatch, flags, cin, stride, dx_extra_row, y_extra_row):
    monkeypatch.setenv("XLA_FLAGS", flags)
    route = chosen((4, 14, 14, cin), (3, 3, cin, 64), 1, stride)
    assert (route.dx_extra_row, route.y_extra_row) == (dx_extra_row, y_extra_row)


@pytest.mark.parametrize(
    ("cin", "groups", "cout", "taps"),
    [
        (128, 128, 128, True),  # depthwise, the shape
        (16, 16, 48, True),  # depthwise with a channel multiplier of 3
        (8, 8, 8, False),  # too few channels: not measured, the convolutions
        (32, 16, 32, False),  # grouped, two channels per group: im2col
        (1, 1, 32, False),  # one input channel but not grouped (the cnn's conv1): the convolution
    ],
)
def test_depthwise_convolutions_take_the_taps_route_on_the_cpu(cin, groups, cout, taps):
    route = chosen((4, 14, 14, cin), (7, 7, cin // groups, cout), groups)
    assert (route.taps_block > 0) == taps
    if taps:  # the taps run no convolution: no formulation for YNNPACK's kernels
        assert (route.dw_lhs_dilation, route.dx_extra_row, route.y_extra_row) == (1, False, False)


@pytest.mark.parametrize("flags", [ON_YNNPACK, OFF_YNNPACK])
@pytest.mark.parametrize(("cin", "groups"), [(32, 1), (32, 2), (128, 128)])
def test_other_backends_take_the_plain_route(monkeypatch, flags, cin, groups):
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chosen((4, 14, 14, cin), (3, 3, cin // groups, 128), groups) == ConvRoute()


@pytest.mark.parametrize(
    ("n", "per_image", "budget", "block"),
    [
        (128, 226 * 1024, 2**20, 4),
        (128, 28 * 1024, 2**20, 32),
        (5, 100, 200, 2),
        (3, 10**9, 2**20, 1),
        (2, 1, 2**20, 2),
    ],
)
def test_im2col_blocks_fit_the_budget_and_spread_evenly(monkeypatch, n, per_image, budget, block):
    monkeypatch.setattr(kernels, "IM2COL_BLOCK_BYTES", budget)
    assert kernels.im2col_images_per_block(n, (1, 1), per_image, 1) == block


@pytest.mark.parametrize(
    ("n", "per_image", "block"), [(64, 204800, 2), (64, 10**9, 1), (7, 1000, 7), (6, 2**18, 2), (5, 2**17, 1)]
)
def test_taps_blocks_divide_the_batch_within_the_budget(n, per_image, block):
    assert kernels.taps_images_per_block(n, per_image) == block


# ---------------------------------------------------------------- layers/ reads no environment

LAYERS = Path(conv_module.__file__).parent
MODULES = ("os", "jaxbp.xla_flags")  # the process environment, and jaxbp's reading of XLA_FLAGS
NAMES = ("default_backend", "environ", "getenv")  # jax.default_backend(), os.environ, os.getenv


def environment_reads(source: str) -> list[str]:
    """What a module's source reads of the process environment: imports of MODULES, uses of NAMES."""

    def of_environment(module: str) -> bool:
        return any(module == m or module.startswith(f"{m}.") for m in MODULES)

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if of_environment(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [m for m in (module, *(f"{module}.{a.name}" for a in node.names)) if of_environment(m)]
            found += [a.name for a in node.names if a.name in NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in NAMES:
            found.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in NAMES:
            found.append(node.id)
    return found


def test_no_layer_module_reads_the_xla_flags_or_the_backend():
    modules = sorted(LAYERS.glob("*.py"))
    assert len(modules) > 10 and (LAYERS / "conv.py") in modules
    reads = {p.name: environment_reads(p.read_text(encoding="utf-8")) for p in modules}
    assert {name: r for name, r in reads.items() if r} == {}, "routing by the environment belongs in jaxbp/kernels"


def test_the_environment_check_sees_each_way_of_reading_it():
    for source in (
        "from jaxbp import xla_flags",
        "import jaxbp.xla_flags",
        "from jaxbp.xla_flags import ynnpack_convolutions",
        "import jax\njax.default_backend()",
        "from jax import default_backend",
        "import os",
        "from os import environ",
    ):
        assert environment_reads(source), source
    assert environment_reads((Path(kernels.__file__)).read_text(encoding="utf-8"))  # where they belong
    assert not environment_reads("from jaxbp.kernels import conv as kernels\nimport jax.numpy as jnp")

"""One agreement test over the whole registry, plus the bad-input rejections.

For every layer and configuration: manual VJP == jax.grad VJP (float64 to 1e-10,
float32 to the layer's tolerance), both == central finite differences (float64,
smooth inputs), and the same under jit, vmap and grad-of-grad; forwards identical (but where
the convolution's route adds the forward's products in another order: equal in float64).
"""

from functools import partial

import jax
import numpy as np
import pytest

from jaxbp import manual, registry, suite
from jaxbp.cases.kit import LayerSpec
from jaxbp.kernels import norm as norm_kernels
from jaxbp.layers import conv as conv_module, conv_transpose as transpose_module

CASES = [(spec, case) for spec in registry.REGISTRY.values() for case in spec.cases]
BAD = [(spec, bad) for spec in registry.REGISTRY.values() for bad in spec.bad_inputs]


@pytest.mark.parametrize(("spec", "case"), CASES, ids=[f"{s.name}-{c.name}" for s, c in CASES])
def test_manual_vjp_matches_autodiff(spec, case):
    # The transforms (jit, vmap, grad-of-grad) are checked in float64, where 1e-10 leaves no
    # room for a wrong rule; float32 checks the VJP itself at the layer's tolerance. (`jaxbp
    # check` runs the transforms in both dtypes; here the suite's time budget decides.)
    report = suite.verify_layer(spec, case, dtypes=("float64",))
    float32 = suite.verify_layer(spec, case, dtypes=("float32",), transforms=False)
    report.grads += float32.grads
    report.transforms += float32.transforms
    assert report.passed, str(report)
    # The tolerances are the ones the issue fixes, not looser ones.
    assert all(g.tolerance == 1e-10 for g in report.grads if g.dtype == "float64")
    assert all(g.tolerance == spec.rtol_float32 for g in report.grads if g.dtype == "float32")
    # Finite differences ran wherever the inputs are smooth.
    assert all((g.fd_rel_err is not None) == case.smooth for g in report.grads if g.dtype == "float64")
    # Forward outputs are identical, not merely close, op by op; where the manual forward adds the
    # products in another order than the reference (conv2d's taps), equal to float64's rounding.
    forwards = [t for t in report.transforms if t.name == "forward"]
    assert forwards, str(report)
    if forward_reordered(spec, case):
        assert all(t.error <= 1e-12 for t in forwards if t.dtype == "float64"), str(report)
    else:
        assert all(t.error == 0.0 for t in forwards), str(report)
    assert {g.dtype for g in report.grads} == {"float64", "float32"}
    checked = {(t.name, t.dtype) for t in report.transforms if t.passed}
    assert {("jit", "float64"), ("vmap", "float64"), ("grad_of_grad", "float64")} <= checked


def forward_reordered(spec, case) -> bool:
    """Whether the case's manual forward runs another formulation than the reference's ops: conv2d
    taking the taps (depthwise, or one input channel), conv_transpose2d its adjoint's dx by phases,
    batch norm a view of few channels, on this backend and under these XLA flags."""
    if spec.name == "batch_norm":
        return norm_kernels.batch_norm_lanes(np.shape(case.args()[0])) > 0
    if spec.name == "conv_transpose2d":  # its forward is its adjoint's dx: by phases, or the reference's
        x, w, b = case.args()
        kw = {"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1, **case.kwargs}
        cfg = transpose_module.transpose_config(
            x, w, b, kw["stride"], kw["padding"], kw["output_padding"], kw["dilation"], kw["groups"]
        )
        return cfg.adjoint.route.dx_phases
    if spec.name != "conv2d":
        return False
    x, w, b = case.args()
    kw = {"stride": 1, "padding": "VALID", "dilation": 1, "groups": 1, **case.kwargs}
    cfg = conv_module.conv_config(x, w, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    return cfg.route.forward_as_taps


@pytest.mark.parametrize(("spec", "bad"), BAD, ids=[f"{s.name}-{b.name}" for s, b in BAD])
def test_bad_input_is_rejected_at_trace_time(spec, bad):
    args = bad.make_args(np.random.default_rng(0))
    for fn in (spec.manual, spec.reference):
        traced = jax.jit(partial(fn, **bad.kwargs))
        with pytest.raises(ValueError, match=bad.match) as info:
            traced(*args)
        assert str(info.value).startswith(spec.name), f"error does not name the layer: {info.value}"


def test_every_manual_layer_is_registered():
    layers = {name for name, spec in registry.REGISTRY.items() if not spec.composite}
    assert set(manual.__all__) == layers, "jaxbp.manual and the registry list different layers"
    for spec in registry.REGISTRY.values():
        assert spec.cases, f"{spec.name} has no example cases"
        if spec.composite:  # a block of registered layers (the residual block), not a name of jaxbp.manual
            assert spec.name not in manual.__all__ and spec.doc
        else:
            assert spec.manual is getattr(manual, spec.name)


def test_a_wrong_backward_is_caught():
    """The agreement test can fail: a ReLU whose backward passes dy through unmasked."""

    @jax.custom_vjp
    def bad_relu(x):
        return jax.numpy.maximum(x, 0.0)

    bad_relu.defvjp(lambda x: (bad_relu(x), None), lambda _, dy: (dy,))
    case = registry.get("relu").cases[0]
    spec = LayerSpec("bad_relu", bad_relu, registry.get("relu").reference, (case,))
    report = suite.verify_layer(spec, case, dtypes=("float64",), transforms=False)
    assert not report.passed
    assert report.worst().arg == "x" and report.worst().max_rel_err > 0.1

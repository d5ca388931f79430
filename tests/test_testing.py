"""jaxbp.testing.assert_vjp and Report.raise_if_failed: what users put in their own pytest suites."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from jaxbp import verify_vjp
from jaxbp.testing import assert_vjp, inputs_like

X = np.linspace(-1.0, 1.0, 4)
FAST = {"dtypes": ("float64",), "transforms": False, "explore": False}


def tanh_reference(x):
    return jnp.tanh(x)


def make_tanh(bug: bool):
    @jax.custom_vjp
    def tanh(x):
        """y = tanh(x);  dx = dy (1 - y^2)"""
        return jnp.tanh(x)

    tanh.defvjp(lambda x: (jnp.tanh(x), jnp.tanh(x)), lambda y, g: (g * (1 - y**2) * (0.5 if bug else 1.0),))
    return tanh


def test_assert_vjp_returns_the_passing_report():
    report = assert_vjp(make_tanh(False), tanh_reference, X, **FAST)
    assert report.passed and [g.arg for g in report.grads] == ["x"]


def test_assert_vjp_raises_the_full_readable_report():
    with pytest.raises(AssertionError) as info:
        assert_vjp(make_tanh(True), tanh_reference, X, **FAST)
    message = str(info.value)
    assert "tanh: FAIL" in message and "FAIL dx (float64, shape (4,))" in message and "worst element x[" in message
    assert message.count("dx = dy (1 - y^2)") == 1  # the derivation, once
    assert "GradCheck(" not in message  # the report, not a dataclass repr


def test_raise_if_failed_on_the_report_itself():
    report = verify_vjp(make_tanh(True), tanh_reference, X, **FAST)
    with pytest.raises(AssertionError, match="FAIL dx"):
        report.raise_if_failed()
    assert verify_vjp(make_tanh(False), tanh_reference, X, **FAST).raise_if_failed().passed


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=inputs_like(X, np.array([1, 2]), min_value=-2.0, max_value=2.0))
def test_inputs_like_redraws_float_leaves_and_keeps_the_others(args):
    x, labels = args
    assert x.shape == X.shape and x.dtype == np.float64 and np.all(np.abs(x) <= 2.0)
    assert labels.tolist() == [1, 2]
    assert_vjp(make_tanh(False), tanh_reference, x, **FAST)

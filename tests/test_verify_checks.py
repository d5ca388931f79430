"""The checks beyond first order: grad-of-grad in the inputs and in the cotangent, vmap,
each output alone (symbolic zeros), inputs beyond the examples, finite differences only,
Jacobian blocks, and turning each check off on its own.

Each check is shown failing on a planted bug that every other check passes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.custom_derivatives import SymbolicZero

from jaxbp import suite, verify, verify_vjp

RNG = np.random.default_rng(1)
X = RNG.standard_normal(4)
F64 = {"dtypes": ("float64",)}


def states(report, name):
    return [t.passed for t in report.transforms if t.name == name]


def sin_reference(x):
    return jnp.sin(x)


def make_sin(kind: str):
    """sin with a backward that is right in value; ``kind`` plants a second-order or batching bug."""

    @jax.custom_batching.custom_vmap
    def ident(g):
        return g

    @ident.def_vmap
    def _(axis_size, in_batched, g):
        return g[::-1] if kind == "vmap" else g, in_batched[0]  # the vmap-only bug: examples swapped

    def bwd(x, g):
        if kind == "stop_g":
            return (jax.lax.stop_gradient(g) * jnp.cos(x),)  # right value, zero derivative in the cotangent
        if kind == "stop_x":
            return (g * jnp.cos(jax.lax.stop_gradient(x)),)  # right value, zero derivative in x
        return ((ident(g) if kind == "vmap" else g) * jnp.cos(x),)  # custom_vmap has no grad-of-grad

    f = jax.custom_vjp(sin_reference)
    f.defvjp(lambda x: (jnp.sin(x), x), bwd)
    return f


@pytest.mark.parametrize(
    ("kind", "fails"),
    [("ok", set()), ("stop_g", {"grad_of_grad_ct"}), ("stop_x", {"grad_of_grad"}), ("vmap", {"vmap"})],
)
def test_second_order_and_vmap_bugs_fail_only_their_check(kind, fails):
    transforms = ["jit", "vmap"] if kind == "vmap" else True  # custom_vmap cannot be differentiated twice
    report = verify_vjp(make_sin(kind), sin_reference, X, transforms=transforms, explore=False, **F64)
    assert all(g.passed for g in report.grads)  # first order is right in every case
    failed = {t.name for t in report.transforms if t.passed is False}
    assert failed == fails, str(report)
    assert report.passed is (not fails)


# ------------------------------------------------------------ symbolic zeros


def two_reference(x):
    return jnp.sin(x), jnp.cos(x)


def make_two(handles_zeros: bool):
    f = jax.custom_vjp(two_reference)

    def fwd(x):
        return two_reference(x.value), x.value

    def bwd(x, g):
        a, b = g
        if handles_zeros:
            a = jnp.zeros_like(x) if isinstance(a, SymbolicZero) else a
            b = jnp.zeros_like(x) if isinstance(b, SymbolicZero) else b
        return (a * jnp.cos(x) - b * jnp.sin(x),)  # crashes on a SymbolicZero unless handled

    f.defvjp(fwd, bwd, symbolic_zeros=True)
    return f


@pytest.mark.parametrize("handles_zeros", [True, False])
def test_a_backward_that_crashes_on_a_symbolic_zero_fails_like_jax_grad_of_one_output(handles_zeros):
    f = make_two(handles_zeros)
    report = verify_vjp(f, two_reference, X, transforms={"zero_cotangents"}, explore=False, **F64)
    (check,) = [t for t in report.transforms if t.name == "zero_cotangents"]
    assert check.passed is handles_zeros and report.passed is handles_zeros, str(report)
    if not handles_zeros:
        assert "out[0] alone raised TypeError" in check.note
        with pytest.raises(TypeError):  # what the check stands for
            jax.grad(lambda x: f(x)[0].sum())(X)


# ------------------------------------------------------------ inputs beyond the examples


def softplus_reference(x):
    return jnp.logaddexp(x, 0.0)


def make_softplus(branch_bug: bool):
    def bwd(x, g):
        d = g * jax.nn.sigmoid(x)
        return (jnp.where(x > 20, 0.0, d) if branch_bug else d,)  # the bug: "saturated" above 20

    f = jax.custom_vjp(softplus_reference)
    f.defvjp(lambda x: (softplus_reference(x), x), bwd)
    return f


EXAMPLES = np.linspace(-3, 3, 7)


def test_a_branch_bug_outside_the_examples_fails_and_names_the_region():
    report = verify_vjp(make_softplus(True), softplus_reference, EXAMPLES, transforms=False, **F64)
    assert all(g.passed for g in report.grads)  # the examples never reach x > 20
    failed = {e.region for e in report.explored if e.passed is False}
    assert failed == {"x10", "x100"} and not report.passed
    text = str(report)
    assert "FAIL at 10x the example inputs (float64)" in text and "worst element x[" in text


def test_the_correct_softplus_passes_everywhere_and_explore_false_turns_it_off():
    report = verify_vjp(make_softplus(False), softplus_reference, EXAMPLES, transforms=False, **F64)
    assert report.passed and {e.region for e in report.explored} == set(verify.EXPLORE_REGIONS), str(report)
    off = verify_vjp(make_softplus(True), softplus_reference, EXAMPLES, transforms=False, explore=False, **F64)
    assert off.passed and not off.explored  # off means off: the branch bug goes unseen
    one = verify_vjp(make_softplus(True), softplus_reference, EXAMPLES, transforms=False, explore=["x100"], **F64)
    assert [e.region for e in one.explored] == ["x100"] and not one.passed


@pytest.mark.parametrize("fn", ["sqrt", "log"])
def test_positive_only_functions_are_not_failed_by_exploration(fn):
    ref = getattr(jnp, fn)
    deriv = {"sqrt": lambda x: 0.5 / jnp.sqrt(x), "log": lambda x: 1 / x}[fn]
    f = jax.custom_vjp(ref)
    f.defvjp(lambda x: (ref(x), x), lambda x, g: (g * deriv(x),))
    report = verify_vjp(f, ref, 0.2 + RNG.random(5), transforms=False, **F64)
    assert report.passed, str(report)
    skipped = {e.region for e in report.explored if e.passed is None}
    assert "zeros" in skipped and all("reference not finite" in e.note for e in report.explored if e.passed is None)


# ------------------------------------------------------------ no reference: finite differences only


@pytest.mark.parametrize("bug", [False, True])
def test_finite_differences_only_when_there_is_no_reference(bug):
    report = verify_vjp(make_softplus(bug), None, EXAMPLES, transforms=False, **F64)
    assert report.reference == "finite differences only"
    (g,) = report.grads
    assert g.max_rel_err is None and g.fd_rel_err is not None and g.passed  # the examples are below 20
    assert report.passed is not bug and any(e.passed is False for e in report.explored) is bug


def test_finite_differences_only_catch_a_wrong_gradient_element_by_element():
    report = verify_vjp(make_sin("ok"), None, X, transforms=False, explore=False, **F64)
    assert report.passed, str(report)
    bad = jax.custom_vjp(sin_reference)
    bad.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x).at[2].multiply(1.01),))  # one element off
    (g,) = verify_vjp(bad, None, X, transforms=False, explore=False, **F64).grads
    assert not g.passed and 0.005 < g.fd_rel_err < 0.02  # every basis direction of a small leaf


# ------------------------------------------------------------ Jacobians, switches, tolerances


def test_small_failures_print_the_manual_and_reference_jacobian_on_request():
    bad = jax.custom_vjp(sin_reference)
    bad.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.sin(x),))
    report = verify_vjp(bad, sin_reference, X[:3], transforms=False, explore=False, jacobian=True, **F64)
    (block,) = report.jacobians
    np.testing.assert_allclose(np.diag(block.manual), np.sin(X[:3]))
    np.testing.assert_allclose(block.reference, np.diag(np.cos(X[:3])), atol=1e-15)
    assert "Jacobian dout/dx (float64)" in str(report)
    assert not verify_vjp(bad, sin_reference, X[:3], transforms=False, explore=False, **F64).jacobians


def test_each_transform_check_can_run_alone_and_unknown_names_are_refused():
    report = verify_vjp(make_sin("vmap"), sin_reference, X, transforms=["jit"], explore=False, **F64)
    assert {t.name for t in report.transforms} == {"forward", "jit"} and report.passed  # vmap bug not looked at
    with pytest.raises(ValueError, match="unknown transform vmapp"):
        verify_vjp(make_sin("ok"), sin_reference, X, transforms=["vmapp"])
    with pytest.raises(ValueError, match="unknown explore region"):
        verify_vjp(make_sin("ok"), sin_reference, X, explore=["x1000"])


@pytest.mark.parametrize("rtol", [-1e-3, float("nan"), {"float32": -1.0}, "1e-3"])
def test_a_negative_or_nan_rtol_is_a_value_error(rtol):
    with pytest.raises(ValueError, match="rtol"):
        verify_vjp(make_sin("ok"), sin_reference, X, rtol=rtol)


def test_the_table_shows_each_layers_derivation_once_and_json_keeps_the_new_rows():
    def failed(config):
        g = verify.GradCheck("x", "float64", 1.0, 1.0, (0,), 1.0, 2.0, 1e-10, "default")
        e = verify.ExploreCheck("x100", "float64", 0.5, 1e-3, False, "x", (1,), 1 + 2j, 3.0)
        return verify.Report("relu", [g], layer="relu", config=config, derivation="relu: dx = dy [x > 0]",
                             explored=[e], skipped=[{"label": "n", "reason": "int64"}])  # fmt: skip

    table = suite.format_table([failed("a"), failed("b")], ("float64",))
    assert table.count("dx = dy [x > 0]") == 1 and table.count("FAIL at 100x the example inputs") == 2
    data = suite.reports_to_dict([failed("a")], ("float64",))
    row = data["reports"][0]
    assert row["explored"][0]["manual_value"] == [1.0, 2.0] and row["skipped"] == [{"label": "n", "reason": "int64"}]
    assert data["summary"][0]["explore"] == "FAIL"

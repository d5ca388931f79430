"""verify_vjp on the ways real code is written: any pytree in and out, static and integer
arguments, PRNG keys, complex, zero-size, low precision, symbolic zeros.

Each case is a correct ``jax.custom_vjp`` and a planted bug; the correct one passes and
the bug fails on the right leaf or check. Float64 only, transforms and exploration off
unless the test is about them, tiny shapes: the file stays fast.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import verify_vjp

FAST = {"dtypes": ("float64",), "transforms": False, "explore": False}
RNG = np.random.default_rng(0)


def failing(report):
    return {g.arg for g in report.grads if not g.passed}


def custom(fwd_out, bwd, **kw):
    """A custom_vjp whose forward is ``fwd_out`` and whose backward is ``bwd(x..., g)`` (residuals: the inputs)."""
    f = jax.custom_vjp(fwd_out, **kw)
    f.defvjp(lambda *a: (fwd_out(*a), a), lambda res, g: bwd(*res, g))
    return f


# ------------------------------------------------------------ params dict + array


def dense_reference(params, x):
    return x @ params["w"] + params["b"]


def make_dense(bug: bool):
    def bwd(params, x, g):
        db = jnp.sum(g, axis=0) * (2.0 if bug else 1.0)  # the bug: db doubled
        return {"w": x.T @ g, "b": db}, g @ params["w"].T

    return custom(dense_reference, bwd)


DENSE_ARGS = ({"w": RNG.standard_normal((3, 2)), "b": RNG.standard_normal(2)}, RNG.standard_normal((4, 3)))


def test_params_dict_is_differentiated_and_labelled_by_key_path_in_float64_and_float32():
    report = verify_vjp(make_dense(False), dense_reference, *DENSE_ARGS, dtypes=("float64", "float32"), transforms=False,
                        explore=False)  # fmt: skip
    assert report.passed, str(report)
    assert [g.arg for g in report.grads] == ["params['b']", "params['w']", "x"] * 2  # float32 lowers (no mixed dtypes)


def test_a_bug_in_a_params_dict_entry_fails_on_that_entry():
    report = verify_vjp(make_dense(True), dense_reference, *DENSE_ARGS, **FAST)
    assert not report.passed and failing(report) == {"params['b']"}
    assert "FAIL dparams['b']" in str(report)


# ------------------------------------------------------------ list and nested tuple inputs


def list_reference(xs):
    return xs[0] * xs[1]


def make_list(bug: bool):
    return custom(list_reference, lambda xs, g: ([g * xs[1], g * (xs[1] if bug else xs[0])],))


def nested_reference(t):
    a, (b, c) = t
    return a * b + jnp.sin(c)


def make_nested(bug: bool):
    return custom(
        nested_reference, lambda t, g: ((g * t[1][0], (g * t[0], g * (jnp.sin if bug else jnp.cos)(t[1][1]))),)
    )


@pytest.mark.parametrize("bug", [False, True])
def test_list_argument(bug):
    report = verify_vjp(make_list(bug), list_reference, [RNG.standard_normal(3), RNG.standard_normal(3)], **FAST)
    assert [g.arg for g in report.grads] == ["xs[0]", "xs[1]"]
    assert report.passed is not bug and failing(report) == ({"xs[1]"} if bug else set())


@pytest.mark.parametrize("bug", [False, True])
def test_nested_tuple_argument(bug):
    t = (RNG.standard_normal(2), (RNG.standard_normal(2), RNG.standard_normal(2)))
    report = verify_vjp(make_nested(bug), nested_reference, t, **FAST)
    assert [g.arg for g in report.grads] == ["t[0]", "t[1][0]", "t[1][1]"]
    assert failing(report) == ({"t[1][1]"} if bug else set()) and report.passed is not bug


# ------------------------------------------------------------ dict and tuple outputs


def dict_out_reference(x):
    return {"c": jnp.cos(x), "s": jnp.sin(x)}


def make_dict_out(bug: bool):
    return custom(dict_out_reference, lambda x, g: (g["s"] * jnp.cos(x) - g["c"] * jnp.sin(x) * (0 if bug else 1),))


def tuple_out_reference(x):
    return x * 2.0, x**2


def make_tuple_out(bug: bool):
    return custom(tuple_out_reference, lambda x, g: (2.0 * g[0] + (1.0 if bug else 2.0) * x * g[1],))


@pytest.mark.parametrize("bug", [False, True])
@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_dict_and_tuple_outputs(kind, bug):
    make, ref = (make_dict_out, dict_out_reference) if kind == "dict" else (make_tuple_out, tuple_out_reference)
    report = verify_vjp(make(bug), ref, RNG.standard_normal(4), **FAST)
    assert report.passed is not bug and failing(report) == ({"x"} if bug else set()), str(report)


# ------------------------------------------------------------ static arguments, integer labels


def power_reference(x, p):
    return x**p


def make_power(bug: bool):
    f = jax.custom_vjp(power_reference, nondiff_argnums=(1,))
    f.defvjp(lambda x, p: (x**p, x), lambda p, x, g: (g * p * x ** (p - (2 if bug else 1)),))
    return f


@pytest.mark.parametrize("bug", [False, True])
def test_static_nondiff_argnums(bug):
    report = verify_vjp(make_power(bug), power_reference, 1 + RNG.random(3), 3, **FAST)
    assert [g.arg for g in report.grads] == ["x"] and report.passed is not bug


def xent_reference(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def make_xent(bug: bool):
    def bwd(logits, labels, g):
        n = logits.shape[0] if not bug else 1  # the bug: sum instead of mean
        return g * (jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[1])) / n, None

    return custom(xent_reference, bwd)


@pytest.mark.parametrize("bug", [False, True])
def test_integer_labels_pass_through_and_are_listed_as_skipped(bug):
    report = verify_vjp(make_xent(bug), xent_reference, RNG.standard_normal((3, 4)), np.array([0, 3, 1]), **FAST)
    assert [g.arg for g in report.grads] == ["logits"] and report.passed is not bug
    assert report.skipped == [{"label": "labels", "reason": "int64 (integers are not differentiable)"}]
    assert "skipped labels: int64" in str(report)


# ------------------------------------------------------------ PRNG keys


def dropout_reference(x, key):
    keep = jax.random.bernoulli(key, 0.5, x.shape)
    return jnp.where(keep, x / 0.5, 0.0)


def make_dropout(bug: bool):
    def bwd(x, key, g):
        keep = jax.random.bernoulli(key, 0.5, x.shape)
        return jnp.where(keep, g / (1.0 if bug else 0.5), 0.0), None

    return custom(dropout_reference, bwd)


@pytest.mark.parametrize("bug", [False, True])
@pytest.mark.parametrize("key", ["typed", "legacy"])
def test_prng_key_same_randomness_everywhere_finite_differences_included(key, bug):
    k = jax.random.key(3) if key == "typed" else jax.random.PRNGKey(3)
    report = verify_vjp(make_dropout(bug), dropout_reference, RNG.standard_normal((4, 4)), k,
                        dtypes=("float64", "float32"), transforms=False, explore=False)  # fmt: skip
    assert report.passed is not bug, str(report)
    assert {g.arg for g in report.grads} == {"x"} and report.skipped[0]["label"] == "key"
    f64 = next(g for g in report.grads if g.dtype == "float64")
    assert f64.fd_rel_err is not None and bool(f64.fd_rel_err > f64.fd_tolerance) is bug


# ------------------------------------------------------------ complex, zero-size, low precision


def square_reference(z):
    return z**2


def make_square(bug: bool):  # holomorphic: JAX's cotangent convention is dz = dy * f'(z), no conjugate
    return custom(square_reference, lambda z, g: (g * (jnp.conj(2 * z) if bug else 2 * z),))


@pytest.mark.parametrize("bug", [False, True])
def test_complex_inputs_follow_jax_convention(bug):
    z = RNG.standard_normal(3) + 1j * RNG.standard_normal(3)
    report = verify_vjp(make_square(bug), square_reference, z, **FAST)
    (g,) = report.grads
    assert report.passed is not bug, str(report)
    assert bool(g.fd_rel_err > g.fd_tolerance) is bug  # real and imaginary directions in finite differences


def scale_reference(x, w):
    return x * w


def make_scale(bug: bool):
    return custom(scale_reference, lambda x, w, g: (g * w if not bug else (g * w)[:, :1], jnp.sum(g * x, axis=0)))


def test_zero_size_leaves_pass_trivially_with_a_note():
    report = verify_vjp(make_scale(False), scale_reference, np.zeros((0, 4)), RNG.standard_normal(4), **FAST)
    assert report.passed, str(report)
    assert all("zero-size" in g.note for g in report.grads if g.arg == "x")


def test_a_wrong_shaped_gradient_of_a_zero_size_leaf_fails():
    report = verify_vjp(make_scale(True), scale_reference, np.zeros((0, 4)), RNG.standard_normal(4), **FAST)
    assert not report.passed and report.errors


def tanh_reference(x):
    return jnp.tanh(x)


def make_tanh(bug: bool):
    return custom(tanh_reference, lambda x, g: (g * (1 - jnp.tanh(x) ** 2) * (1.1 if bug else 1.0),))


@pytest.mark.parametrize("bug", [False, True])
def test_float32_and_bfloat16(bug):
    # Inputs of the test's own, in [-1, 1]: there 1 - tanh^2 >= 0.42, so bfloat16 loses nothing to
    # cancellation, and the check is of the dtype, not of tanh's conditioning near saturation. (Drawn
    # from the module's RNG, the inputs depended on which tests a worker ran first; a standard normal
    # draw puts the correct backward past bfloat16's 2e-2 for 3 seeds in 150, none of these.)
    x = np.random.default_rng(7).uniform(-1, 1, 5)
    report = verify_vjp(make_tanh(bug), tanh_reference, x, dtypes=("float32", "bfloat16"),
                        transforms=False, explore=False)  # fmt: skip
    assert {g.dtype for g in report.grads} == {"float32", "bfloat16"}
    assert all(g.passed is not bug for g in report.grads), str(report)


# ------------------------------------------------------------ a function that returns integers


def test_an_integer_output_is_an_error_never_a_pass():
    count = custom(lambda x: jnp.sum(x > 0), lambda x, g: (jnp.zeros_like(x),))
    report = verify_vjp(count, lambda x: jnp.sum(x > 0), RNG.standard_normal(3), **FAST)
    assert not report.passed and "no floating-point output" in report.errors[0]
    assert "FAIL" in str(report).splitlines()[0]


def test_the_verifier_stands_alone():
    # jaxbp.verify checks anyone's custom_vjp: it loads none of jaxbp's layers, registry or models
    import json
    import subprocess
    import sys

    code = "import json, sys, jaxbp.testing, jaxbp.verify; print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'jaxbp']))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    outside = [m for m in json.loads(loaded) if m not in ("jaxbp", "jaxbp.lazy", "jaxbp.testing", "jaxbp.xla_flags")]
    assert outside and all(m.startswith("jaxbp.verify") for m in outside), loaded

"""verify_vjp catches wrong backwards, names the argument, and passes correct ones.

Each wrong backward below is a classic derivation mistake written as a
``jax.custom_vjp`` in this file, next to a correct twin that passes with the same
inputs (so each test can fail for the right reason and only for it). Shapes are
tiny and most checks run in float64 only, without the transform checks, to keep
the file fast.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxbp import suite, targets, verify, verify_vjp

DN = ("NHWC", "HWIO", "NHWC")
FAST = {"dtypes": ("float64",), "transforms": False}


def failing_args(report):
    return {g.arg for g in report.grads if not g.passed}


def passing_args(report):
    return {g.arg for g in report.grads if g.passed}


# ---------------------------------------------------------------- (a) conv2d


def conv_reference(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)


def make_conv(flip: bool):
    """conv2d (stride 1, VALID) with dx = full correlation of dy with the kernel, flipped or not."""

    @jax.custom_vjp
    def conv(x, w):
        """dx = conv(pad(dy, K - 1), rot180(w) with in/out swapped); dw = correlate(x, dy)"""
        return conv_reference(x, w)

    def fwd(x, w):
        return conv_reference(x, w), (x, w)

    def bwd(res, dy):
        x, w = res
        kh, kw = w.shape[:2]
        k = w[::-1, ::-1] if flip else w  # the bug: the kernel not rotated by 180 degrees
        k = jnp.swapaxes(k, 2, 3)  # [KH, KW, Cout, Cin]: in/out swapped
        dx = lax.conv_general_dilated(dy, k, (1, 1), [(kh - 1, kh - 1), (kw - 1, kw - 1)], dimension_numbers=DN)
        # dw[i, j, c, o] = sum_{n, p, q} x[n, p + i, q + j, c] dy[n, p, q, o]
        oh, ow = dy.shape[1:3]
        dw = jnp.stack(
            [
                jnp.stack([jnp.einsum("npqc,npqo->co", x[:, i : i + oh, j : j + ow], dy) for j in range(kw)])
                for i in range(kh)
            ]
        )
        return dx, dw

    conv.defvjp(fwd, bwd)
    return conv


def conv_inputs():
    rng = np.random.default_rng(1)
    return rng.standard_normal((1, 5, 5, 2)), rng.standard_normal((3, 3, 2, 3))  # no symmetry in the kernel


def test_conv_with_unflipped_kernel_fails_on_x_only():
    report = verify_vjp(make_conv(flip=False), conv_reference, *conv_inputs(), **FAST)
    assert not report.passed
    assert failing_args(report) == {"x"} and passing_args(report) == {"w"}
    bad = report.worst()
    assert bad.arg == "x" and bad.max_rel_err > 0.1 and bad.fd_rel_err > 0.1
    assert bad.manual_value != pytest.approx(bad.reference_value)
    text = str(report)
    assert "FAIL" in text and "dx = conv(pad(dy, K - 1), rot180(w)" in text  # the derivation to look at


def test_conv_with_flipped_kernel_passes():
    report = verify_vjp(make_conv(flip=True), conv_reference, *conv_inputs(), **FAST)
    assert report.passed, str(report)


# ------------------------------------------------ (b) softmax cross-entropy


def xent_reference(logits, labels):
    """Mean over the batch of -log softmax(logits)[label]."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def make_xent(mean: bool):
    @jax.custom_vjp
    def xent(logits, labels):
        """loss = -(1/N) sum_n log softmax(z_n)[t_n];  dlogits = (softmax(z) - onehot(t)) / N * dloss"""
        return xent_reference(logits, labels)

    def fwd(logits, labels):
        return xent_reference(logits, labels), (jax.nn.softmax(logits), labels)

    def bwd(res, g):
        p, labels = res
        d = (p - jax.nn.one_hot(labels, p.shape[1], dtype=p.dtype)) * g
        return (d / p.shape[0] if mean else d), None  # the bug: the 1/N of the mean is missing

    xent.defvjp(fwd, bwd)
    return xent


def xent_inputs():
    rng = np.random.default_rng(2)
    return rng.standard_normal((4, 5)), rng.integers(0, 5, size=4).astype(np.int32)


def test_cross_entropy_without_mean_fails_on_logits():
    report = verify_vjp(make_xent(mean=False), xent_reference, *xent_inputs(), **FAST)
    assert [g.arg for g in report.grads] == ["logits"]  # integer labels are not differentiated
    assert not report.passed and failing_args(report) == {"logits"}
    g = report.grads[0]
    assert g.manual_value == pytest.approx(4 * g.reference_value)  # off by exactly N


def test_cross_entropy_with_mean_passes():
    report = verify_vjp(make_xent(mean=True), xent_reference, *xent_inputs(), **FAST)
    assert report.passed, str(report)


# ------------------------------------------------------- (c) max pool ties


def pool_reference(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def make_pool(first: bool):
    """2x2/stride-2 max pool whose backward sends dy to the first (or the last) maximum of each window."""

    @jax.custom_vjp
    def pool(x):
        """dx[r, q] = dy[o, p] if (r, q) is the FIRST maximum of window (o, p) else 0"""
        return pool_reference(x)

    def fwd(x):
        return pool_reference(x), x

    def bwd(x, dy):
        n, h, w, c = x.shape
        win = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4, c)
        if first:
            idx = jnp.argmax(win, axis=3)
        else:  # the bug: ties go to the last maximum
            idx = 3 - jnp.argmax(win[:, :, :, ::-1], axis=3)
        mask = jax.nn.one_hot(idx, 4, axis=3, dtype=x.dtype)
        dx = (mask * dy[:, :, :, None, :]).reshape(n, h // 2, w // 2, 2, 2, c)
        return (dx.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c),)

    pool.defvjp(fwd, bwd)
    return pool


def tied_input():
    x = np.round(np.random.default_rng(3).random((1, 4, 4, 2)) * 2) / 2  # values in {0, 0.5, 1}
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = x[0, 1, 0, 0] = 1.0  # a three-way tie in the first window, for sure
    return x


def test_max_pool_routing_ties_to_last_maximum_fails_on_x():
    report = verify_vjp(make_pool(first=False), pool_reference, tied_input(), fd=False, **FAST)
    assert not report.passed and failing_args(report) == {"x"}
    assert report.grads[0].fd_rel_err is None  # at ties the derivative is a convention: no finite differences


def test_max_pool_routing_ties_to_first_maximum_passes():
    report = verify_vjp(make_pool(first=True), pool_reference, tied_input(), fd=False, **FAST)
    assert report.passed, str(report)


# ------------------------------------------------------------ (d) batch norm


def bn_reference(x, gamma, beta, eps=1e-5):
    mean = jnp.mean(x, axis=0)
    var = jnp.mean((x - mean) ** 2, axis=0)
    return gamma * (x - mean) / jnp.sqrt(var + eps) + beta


def make_bn(all_terms: bool):
    @jax.custom_vjp
    def bn(x, gamma, beta):
        """batch norm over axis 0, xhat = (x - mu) / sigma, y = gamma xhat + beta:
        dx = gamma / (N sigma) (N dy - sum(dy) - xhat sum(dy xhat))
        dgamma = sum(dy xhat);  dbeta = sum(dy)"""
        return bn_reference(x, gamma, beta)

    def fwd(x, gamma, beta):
        mean = jnp.mean(x, axis=0)
        sigma = jnp.sqrt(jnp.mean((x - mean) ** 2, axis=0) + 1e-5)
        xhat = (x - mean) / sigma
        return gamma * xhat + beta, (xhat, sigma, gamma)

    def bwd(res, dy):
        xhat, sigma, gamma = res
        n = dy.shape[0]
        terms = n * dy - jnp.sum(dy, axis=0)
        if all_terms:  # the bug: forgetting the variance's dependence on x drops this term
            terms = terms - xhat * jnp.sum(dy * xhat, axis=0)
        return gamma / (n * sigma) * terms, jnp.sum(dy * xhat, axis=0), jnp.sum(dy, axis=0)

    bn.defvjp(fwd, bwd)
    return bn


def bn_inputs():
    rng = np.random.default_rng(4)
    return rng.standard_normal((6, 3)), 1 + 0.1 * rng.standard_normal(3), rng.standard_normal(3)


def test_batch_norm_missing_a_term_fails_on_x_and_passes_gamma_beta():
    report = verify_vjp(make_bn(all_terms=False), bn_reference, *bn_inputs(), **FAST)
    assert failing_args(report) == {"x"} and passing_args(report) == {"gamma", "beta"}
    text = str(report)
    assert "the equations for dx:" in text and "dx = gamma / (N sigma)" in text


def test_batch_norm_with_all_terms_passes():
    report = verify_vjp(make_bn(all_terms=True), bn_reference, *bn_inputs(), **FAST)
    assert report.passed, str(report)


# ------------------------------------------- correct user-defined functions


def softplus_reference(x):
    return jnp.logaddexp(x, 0.0)


@jax.custom_vjp
def softplus(x):
    """y = log(1 + exp(x));  dx = dy sigmoid(x)"""
    return softplus_reference(x)


softplus.defvjp(lambda x: (softplus_reference(x), x), lambda x, dy: (dy * jax.nn.sigmoid(x),))


def layer_norm_reference(x, gamma, beta, eps=1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return gamma * (x - mean) / jnp.sqrt(var + eps) + beta


@jax.custom_vjp
def layer_norm(x, gamma, beta):
    """Layer norm over the last axis: dx = (1/sigma) (g - mean(g) - xhat mean(g xhat)), g = dy gamma."""
    return layer_norm_reference(x, gamma, beta)


def _layer_norm_fwd(x, gamma, beta):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    sigma = jnp.sqrt(jnp.mean((x - mean) ** 2, axis=-1, keepdims=True) + 1e-5)
    xhat = (x - mean) / sigma
    return gamma * xhat + beta, (xhat, sigma, gamma)


def _layer_norm_bwd(res, dy):
    xhat, sigma, gamma = res
    g = dy * gamma
    dx = (g - jnp.mean(g, axis=-1, keepdims=True) - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)) / sigma
    lead = tuple(range(dy.ndim - 1))
    return dx, jnp.sum(dy * xhat, axis=lead), jnp.sum(dy, axis=lead)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def test_correct_softplus_passes_every_check_and_reports_forward_mode_as_a_limitation():
    x = np.random.default_rng(5).standard_normal((3, 4))
    report = verify_vjp(softplus, softplus_reference, x)
    assert report.passed, str(report)
    assert {g.dtype for g in report.grads} == {"float64", "float32"}
    assert all(g.fd_rel_err is not None and g.fd_rel_err < g.fd_tolerance for g in report.grads)
    states = {(t.name, t.dtype): t.passed for t in report.transforms}
    assert states[("forward", "float32")] is True and {d for _, d in states} == {"float64", "float32"}
    # the transforms run in the most precise dtype: how a backward is built does not depend on it
    assert all(states[(name, "float64")] is True for name in ("forward", "jit", "vmap", "grad_of_grad"))
    assert states[("forward_mode", "float64")] is None  # not a failure
    assert not any(d == "float32" and n != "forward" for n, d in states)
    fm = [t for t in report.transforms if t.name == "forward_mode"]
    assert all("known limitation" in t.note for t in fm)
    assert report.matmul_precision == "highest" and report.backend == jax.default_backend()
    assert report.derivation.startswith("y = log(1 + exp(x))")


def test_correct_layer_norm_passes_in_both_dtypes_with_transforms():
    rng = np.random.default_rng(6)
    args = rng.standard_normal((2, 3, 5)), 1 + 0.1 * rng.standard_normal(5), rng.standard_normal(5)
    report = verify_vjp(layer_norm, layer_norm_reference, *args)
    assert report.passed, str(report)
    assert [g.arg for g in report.grads] == ["x", "gamma", "beta"] * 2


def test_a_function_without_custom_vjp_gets_its_forward_mode_checked():
    report = verify_vjp(jnp.sin, jnp.sin, np.linspace(-1, 1, 5), dtypes=("float64",))
    fm = [t for t in report.transforms if t.name == "forward_mode"]
    assert fm and fm[0].passed is True and fm[0].error == 0.0


# ----------------------------------------- what autodiff alone cannot catch


def test_finite_differences_catch_a_reference_that_is_wrong_the_same_way():
    """The reference hides part of the graph from autodiff; only finite differences see it."""

    def reference(x):
        return x * lax.stop_gradient(x)  # autodiff: dx = dy x; the true derivative is 2 x dy

    @jax.custom_vjp
    def manual(x):
        return x * x

    manual.defvjp(lambda x: (x * x, x), lambda x, dy: (dy * x,))
    report = verify_vjp(manual, reference, np.linspace(0.5, 2.0, 4), **FAST)
    (g,) = report.grads
    assert g.max_rel_err == 0.0  # manual agrees with (wrong) autodiff ...
    assert g.fd_rel_err > 0.1 and not report.passed  # ... and finite differences say both are wrong


# ------------------------------------------------------- report and errors


def test_report_json_round_trips_and_is_strict_json():
    report = verify_vjp(make_xent(mean=False), xent_reference, *xent_inputs(), dtypes=("float64",))
    text = report.to_json(allow_nan=False)
    data = json.loads(text)
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is False and data["matmul_precision"] == "highest"
    row = data["grads"][0]
    for key in (
        "arg",
        "dtype",
        "max_abs_err",
        "max_rel_err",
        "worst_index",
        "manual_value",
        "reference_value",
        "tolerance",
        "tolerance_source",
        "fd_rel_err",
        "fd_tolerance",
        "ratio",
        "passed",
    ):
        assert key in row
    assert row["arg"] == "logits" and row["passed"] is False and row["ratio"] > 1
    assert {t["name"] for t in data["transforms"]} == set(verify.TRANSFORMS) - {"zero_cotangents"}  # one output


def test_nan_gradient_fails_and_serialises():
    @jax.custom_vjp
    def f(x):
        return 2 * x

    f.defvjp(lambda x: (2 * x, None), lambda _, dy: (dy * jnp.nan,))
    report = verify_vjp(f, lambda x: 2 * x, np.ones(3), **FAST)
    assert not report.passed and math.isinf(report.grads[0].max_rel_err)
    assert json.loads(report.to_json(allow_nan=False))["grads"][0]["max_rel_err"] == "inf"


def test_backward_of_the_wrong_shape_is_reported_not_raised():
    @jax.custom_vjp
    def f(x):
        return 2 * x

    f.defvjp(lambda x: (2 * x, None), lambda _, dy: (dy[:-1],))
    report = verify_vjp(f, lambda x: 2 * x, np.ones(4), **FAST)
    assert not report.passed and report.errors and "float64" in report.errors[0]
    assert "ERROR" in str(report)


def test_static_python_arguments_pass_through_untraced():
    """leaky_relu rejects a traced slope: a positional Python float must reach it as a float."""
    from jaxbp import autodiff, manual

    report = verify_vjp(manual.leaky_relu, autodiff.leaky_relu, np.linspace(-1, 1, 6) + 0.05, 0.2, **FAST)
    assert report.passed and not report.errors and [g.arg for g in report.grads] == ["x"]


def test_argnums_and_names():
    report = verify_vjp(make_bn(True), bn_reference, *bn_inputs(), argnums=1, **FAST)
    assert [g.arg for g in report.grads] == ["gamma"]
    with pytest.raises(ValueError, match="out of range"):
        verify_vjp(softplus, softplus_reference, np.ones(2), argnums=3)
    with pytest.raises(ValueError, match="not a floating-point array"):
        verify_vjp(make_xent(True), xent_reference, *xent_inputs(), argnums=(0, 1))


def test_tolerances_follow_dtype_and_precision():
    assert verify.default_tolerance("float64") == (1e-10, "default for float64 at matmul precision 'highest'")
    assert verify.default_tolerance("float32")[0] == 1e-5
    # CPU matmuls are full float32 at any precision setting; accelerators loosen.
    reduced = verify.default_tolerance("float32", "default")[0]
    assert reduced == (1e-5 if jax.default_backend() == "cpu" else 2e-2)
    with pytest.raises(ValueError, match="no default tolerance"):
        verify.default_tolerance("int32")


def test_layer_keeps_its_own_float32_tolerance_at_reduced_precision():
    """Regression: at any precision but 'highest' the layer's rtol_float32 used to be dropped."""
    from jaxbp.registry import Case, LayerSpec

    spec = LayerSpec("softplus", softplus, softplus_reference, (Case("v", lambda rng: (rng.standard_normal(3),)),),
                     rtol_float32=3e-5)  # fmt: skip
    tol = verify.layer_tolerances(spec, "default")["float32"][0]
    assert tol == (3e-5 if jax.default_backend() == "cpu" else 2e-2)
    report = suite.verify_layer(spec, spec.cases[0], matmul_precision="default", transforms=False)
    assert report.matmul_precision == "default"
    assert {g.tolerance for g in report.grads if g.dtype == "float32"} == {tol}


def test_matmul_precision_none_keeps_the_configured_one():
    with jax.default_matmul_precision("float32"):
        report = verify_vjp(softplus, softplus_reference, np.ones(2), matmul_precision=None, **FAST)
    assert report.matmul_precision == "float32"


# --------------------------------------------------------- registry and tables


def test_check_registry_and_tables():
    reports = suite.check_registry(["relu"], dtypes=("float64",))
    from jaxbp import registry

    assert [r.config for r in reports] == [c.name for c in registry.get("relu").cases]
    assert all(r.passed and r.layer == "relu" for r in reports)
    table = suite.format_table(reports, ("float64",))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["layer", "config", "f64", "vs"]
    assert sum(line.endswith("PASS") for line in lines) == len(reports)
    md = suite.format_markdown(reports, ("float64",))
    assert md.splitlines()[0].startswith("| layer | config | float64 vs autodiff | float64 vs FD |")
    assert len(md.splitlines()) == 2 + len(reports)
    per_layer = suite.format_markdown(reports, ("float64",), per_layer=True).splitlines()
    assert len(per_layer) == 3 and per_layer[2].startswith(f"| `relu` | {len(reports)} |")
    with pytest.raises(KeyError, match="registered"):
        suite.check_registry(["nope"])


@pytest.mark.parametrize(
    ("text", "shape"), [("3,4", (3, 4)), ("7", (7,)), ("7,", (7,)), ("", ()), ("()", ()), (" 2, 3 ,1", (2, 3, 1))]
)
def test_parse_shape(text, shape):
    assert targets.parse_shape(text) == shape


@pytest.mark.parametrize("text", ["3,a", "-1", "3,,4", "2.5", "x"])
def test_parse_shape_rejects(text):
    with pytest.raises(targets.TargetError, match="malformed shape"):
        targets.parse_shape(text)


def test_equation_lines():
    doc = "forward: y = x w\nbackward: dx = dy w^T\n           dw = x^T dy\n           db = sum(dy)"
    assert verify.equation_lines(doc, "w") == ["           dw = x^T dy"]
    assert verify.equation_lines(doc, "x") == ["backward: dx = dy w^T"]
    module = "Two layers.\n\n    relu:  y = max(x, 0)   dx = dy [x > 0]\n    tanh:  y = tanh(x)     dx = dy (1 - y^2)\n"
    assert [ln.split()[0] for ln in verify.equation_lines(module, "x", "tanh")] == ["tanh:"]
    assert len(verify.equation_lines(module, "x")) == 2  # no layer named: every line with dx


def test_table_of_a_failing_layer_explains_the_failure():
    """What `jaxbp check` prints for a broken layer: a FAIL row, then the worst element and the layer's equations."""
    from jaxbp import registry
    from jaxbp.cases.kit import LayerSpec

    @jax.custom_vjp
    def bad_relu(x):
        return jnp.maximum(x, 0.0)

    bad_relu.defvjp(lambda x: (bad_relu(x), None), lambda _, dy: (dy,))  # dy passed through unmasked
    relu = registry.get("relu")
    spec = LayerSpec("relu", bad_relu, relu.reference, relu.cases[:1])
    report = suite.verify_layer(spec, spec.cases[0], dtypes=("float64",), transforms=False)
    table = suite.format_table([report], ("float64",))
    assert table.splitlines()[2].startswith("relu") and table.splitlines()[2].endswith("FAIL")
    assert "0/1 configurations pass" in table
    assert "FAIL dx (float64" in table and "worst element x[" in table
    equations = table.split("the equations for dx:")[1].split("derivation to check:")[0]
    assert "relu:" in equations and "sigmoid:" not in equations  # only the failing layer's line

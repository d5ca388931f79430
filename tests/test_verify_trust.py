"""Verdicts you can trust (issue 24): each correct function passes, each planted bug fails, and
a failure appears under the check that isolates it."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import verify_vjp
from jaxbp.testing import assert_vjp, assert_vjp_shapes
from jaxbp.verify import verify_shapes
from tests import verify_cases as C

F64 = {"dtypes": ("float64",)}


@pytest.mark.parametrize("bug", [False, True])
def test_a_cnn_loss_at_real_digits_passes_despite_kinks_and_a_real_bug_fails(bug):
    manual_fn, reference_fn = C.make_cnn(bug)
    report = verify_vjp(manual_fn, reference_fn, *C.digits_args(), transforms=False, explore=False)
    assert report.passed is not bug, str(report)
    x_rows = [g for g in report.grads if g.arg == "x"]
    if bug:
        assert not any(g.passed for g in x_rows) and all(g.passed for g in report.grads if g.arg != "x")
        assert report.headline().startswith("grad x float64 vs autodiff")
    else:  # finite differences cross the kinks at the images' zeros: they step aside, autodiff decides
        assert any("cross a kink or tie" in g.note for g in x_rows), str(report)
        assert x_rows[0].oracle == "autodiff"


@pytest.mark.parametrize(
    ("make", "args"), [(C.make_a_sin, C.A_SIN_ARGS), (C.make_entropy, C.ENTROPY_ARGS)], ids=["a_sin", "entropy"]
)
@pytest.mark.parametrize("bug", [False, True])
def test_finite_differences_at_large_and_small_magnitudes(make, args, bug):
    """Steps per element: theta up to 8000 and p down to 1e-5 are each stepped at their own scale."""
    manual_fn, reference_fn = make(bug)
    report = verify_vjp(manual_fn, None, *args, transforms=False, explore=False, **F64)  # FD the only oracle
    assert report.passed is not bug, str(report)
    with_twin = verify_vjp(manual_fn, reference_fn, *args, transforms=False, explore=False, **F64)
    assert with_twin.passed is not bug, str(with_twin)


def test_a_kink_found_while_exploring_is_a_note_unless_strict():
    manual_fn, reference_fn = C.make_relu()
    x = np.random.default_rng(0).standard_normal((3, 4))
    report = verify_vjp(manual_fn, reference_fn, x)
    assert report.passed, str(report)
    notes = {e.region: e.note for e in report.explored}
    assert "at a kink" in notes["zeros"] and "manual 0, autodiff" in notes["zeros"]  # autodiff: 0.5 ct
    strict = verify_vjp(manual_fn, reference_fn, x, dtypes=("float64",), transforms=False, strict_kinks=True)
    assert {e.region for e in strict.explored if e.passed is False} == {"zeros", "ties"}


def test_a_bug_at_a_smooth_point_of_a_kink_region_still_fails():
    manual_fn, reference_fn = C.sin_at_zero_bug()
    report = verify_vjp(manual_fn, reference_fn, np.linspace(-3, 3, 7) + 0.1, transforms=False, **F64)
    assert {e.region for e in report.explored if e.passed is False} == {"zeros", "ties"}, str(report)  # 0.1 -> 0


def test_a_bug_only_at_integers_away_from_the_kink_fails_the_ties_region():
    manual_fn, reference_fn = C.make_relu(bug=True)
    report = verify_vjp(manual_fn, reference_fn, np.linspace(-3, 3, 7) + 0.1234567, transforms=False, **F64)
    assert {e.region for e in report.explored if e.passed is False} == {"ties"}, str(report)


@pytest.mark.parametrize("bug", [False, True])
def test_a_gradient_zero_up_to_rounding_is_judged_against_the_gradients_scale(bug):
    manual_fn, reference_fn = C.make_xent(bug)
    report = verify_vjp(manual_fn, reference_fn, *C.XENT_ARGS, transforms=False)
    assert report.passed is not bug, str(report)
    zeros = next(e for e in report.explored if e.region == "zeros")
    if not bug:  # labels' gradient there is +-5e-17 noise against an O(1) gradient of the logits
        assert zeros.passed and zeros.error < 1e-6, str(report)


def test_a_gradient_bug_beyond_the_examples_is_reported_as_one_not_as_vmap():
    manual_fn, reference_fn = C.make_gelu(bug=True)
    report = verify_vjp(manual_fn, reference_fn, np.linspace(-3, 3, 7))
    assert all(t.passed is not False for t in report.transforms), str(report)
    assert {e.region for e in report.explored if e.passed is False} == {"x10", "x100"}
    assert report.headline().startswith("at 10x the example inputs float64")


W = np.linspace(-1.0, 1.0, 12).reshape(3, 4)


def scale_w_ref(x):
    return x * W


def mul_ref(x, w):
    return x * w


def test_a_closed_over_float64_array_and_a_partial_argument_pass_in_every_dtype():
    closed = C.custom_vjp_of(scale_w_ref, lambda x, g: (g * W,))
    mul = C.custom_vjp_of(mul_ref, lambda x, w, g: (g * w, g * x))
    x = np.random.default_rng(0).standard_normal((3, 4))
    for manual_fn, reference_fn in (
        (closed, scale_w_ref),
        (functools.partial(mul, w=W), functools.partial(mul_ref, w=W)),
    ):
        report = verify_vjp(manual_fn, reference_fn, x, explore=False)
        assert report.passed and not report.errors, str(report)
        assert {g.dtype for g in report.grads} == {"float64", "float32"}
    assert closed(jnp.ones((3, 4), jnp.float32)).dtype == jnp.float32  # the user's code after the check still runs


@pytest.mark.parametrize(
    ("make", "make_args", "hiding"),
    [(C.make_mean_rows, C.mean_rows_args, (3, 3)), (C.make_add_bias, C.add_bias_args, (1, 3))],
    ids=["divides_by_shape0", "db_is_dy0"],
)
def test_shape_bugs_pass_at_one_shape_and_fail_at_the_default_shapes(make, make_args, hiding):
    manual_fn, reference_fn = make(bug=True)
    assert verify_vjp(manual_fn, reference_fn, *make_args(hiding, 0), transforms=False, explore=False).passed
    report = verify_shapes(manual_fn, reference_fn, make_args, rank=2)
    assert not report.passed and [s for s, r in report.reports if not r.passed], str(report)
    with pytest.raises(AssertionError, match=r"FAIL at shape \(\d, \d\): grad"):
        assert_vjp_shapes(manual_fn, reference_fn, make_args, rank=2)
    good, reference_fn = make(bug=False)
    assert_vjp_shapes(good, reference_fn, make_args, rank=2)


@pytest.mark.parametrize("bug", [False, True])
def test_float16_examples_are_checked_in_float16(bug):
    manual_fn, reference_fn = C.make_square(bug)
    report = verify_vjp(manual_fn, reference_fn, *C.SQUARE_ARGS, transforms=False, explore=False)
    assert "float16" in {g.dtype for g in report.grads}
    assert report.passed is not bug, str(report)
    if bug:  # fine in float64 and float32; inf in its own dtype
        assert {g.dtype for g in report.grads if not g.passed} == {"float16"}


def test_a_failing_assert_vjp_names_the_check_leaf_and_dtype_on_its_first_line():
    def softplus_ref(x):
        return jnp.logaddexp(x, 0.0)

    wrong = C.custom_vjp_of(softplus_ref, lambda x, g: (g * jax.nn.sigmoid(x) * 1.01,))
    with pytest.raises(AssertionError) as info:
        assert_vjp(wrong, softplus_ref, np.linspace(-3, 3, 7), transforms=False, explore=False)
    first = str(info.value).splitlines()[0]
    assert first.startswith("softplus_ref: FAIL grad x float64 vs autodiff 1.0e-02 > 1e-10"), first


def test_a_repeat_at_the_same_shapes_with_new_values_compiles_nothing():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(name) if "backend_compile" in name else None
    )

    def ref(x):
        return jnp.tanh(x) * 3.0

    f = C.custom_vjp_of(ref, lambda x, g: (3.0 * g * (1 - jnp.tanh(x) ** 2),))
    rng = np.random.default_rng(0)
    assert_vjp(f, ref, rng.standard_normal((3, 4)))
    first = len(compiles)
    assert_vjp(f, ref, rng.standard_normal((3, 4)))
    assert first > 0 and len(compiles) == first, (first, len(compiles))


def test_import_jaxbp_exposes_testing():
    code = "import jaxbp; print(jaxbp.testing.assert_vjp.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "assert_vjp", out.stderr

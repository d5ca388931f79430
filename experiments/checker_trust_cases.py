"""The cases of issue 24 for experiments/checker_comparison.py: correct code at kinks and at large
or small magnitudes, closed-over NumPy constants, shape bugs (tests/verify_cases.py holds the JAX
definitions) and the compare-mode bug (a layer norm whose backward leaves eps out)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from checker_comparison import Case, run_check_grads, run_jaxbp, t64, torch, torch_custom, torch_runs

from jaxbp.verify import verify_shapes
from tests import verify_cases as V


def _torch_cnn(bug: bool):
    import torch.nn.functional as F

    scaled = torch_custom(lambda x: x * 1.0, lambda x, g: (g * (1.01 if bug else 1.0),))

    def loss(w, b, wd, bd, x, y):
        h = F.conv2d(scaled(x).permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), b, padding=1)
        h = F.max_pool2d(F.relu(h), 2).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return F.cross_entropy(h @ wd + bd, y)

    return loss


def cnn_cases() -> list[Case]:
    params, x, y = V.digits_args()
    cases = []
    for bug in (False, True):
        manual_fn, reference_fn = V.make_cnn(bug)

        def torch_go(bug=bug):
            f = _torch_cnn(bug)
            ins = (*(t64(params[k]) for k in ("w", "b", "wd", "bd")), t64(x), torch.tensor(y))
            return torch_runs(f, ins, gradgrad=False)

        cases.append(Case(f"cnn_digits_{'x_grad_1pct' if bug else 'ok'}", "kinks and ties at real data", bug,
                          run_jaxbp(manual_fn, reference_fn, params, x, y, transforms=False, explore=False),
                          [run_check_grads(functools.partial(manual_fn, y=y), (params, x), order=1)], torch_go,
                          notes="conv 3x3, ReLU, 2x2 max pool, dense, cross-entropy on 4 digits images "
                          "(many exact zeros: ReLU at 0 and tied maxima). check_grads and gradcheck take central "
                          "differences across those kinks."))  # fmt: skip
    return cases


def magnitude_cases() -> list[Case]:
    cases = []
    for name, make, args, twin in (
        ("a_sin_theta_8000", V.make_a_sin, V.A_SIN_ARGS, lambda a, t: a * torch.sin(t)),
        ("entropy_p_1e-5", V.make_entropy, V.ENTROPY_ARGS, lambda p: -(p * torch.log(p)).sum()),
    ):
        for bug in (False, True):
            manual_fn, reference_fn = make(bug)

            def torch_go(twin=twin, args=args, bug=bug, name=name):
                if name.startswith("a_sin"):
                    c = 1.001 if bug else 1.0
                    f = torch_custom(twin, lambda a, t, g: (g * torch.sin(t), g * a * torch.cos(t) * c))
                else:
                    one = 1.0001 if bug else 1.0
                    f = torch_custom(twin, lambda p, g: (-g * (torch.log(p) + one),))
                return torch_runs(f, tuple(t64(a) for a in args), gradgrad=False)

            cases.append(Case(f"{name}_{'bug' if bug else 'ok'}", "finite differences at large and small magnitudes",
                              bug, run_jaxbp(manual_fn, reference_fn, *args, transforms=False, dtypes=("float64",)),
                              [run_check_grads(manual_fn, args, order=1)], torch_go))  # fmt: skip
            cases[-1].no_reference = run_jaxbp(manual_fn, None, *args, transforms=False, dtypes=("float64",))
    return cases


W = np.linspace(-1.0, 1.0, 12).reshape(3, 4)


def scale_w_ref(x):
    return x * W


def closed_over_case() -> Case:
    f = V.custom_vjp_of(scale_w_ref, lambda x, g: (g * W,))
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case("closed_over_float64_numpy", "a closed-over NumPy float64 constant, float32 and float64 checks",
                False, run_jaxbp(f, scale_w_ref, x, explore=False),
                [run_check_grads(f, (x,), order=1), run_check_grads(f, (jnp.asarray(x, jnp.float32),), x64=False,
                                                                    label="float32 inputs", order=1)],
                lambda: {"not run": "no equivalent: torch has no cache across a global float64 switch"},
                notes="JAX 0.10 keeps traced and lowered programs in caches whose keys miss the x64 flag; "
                "switching dtypes in one process fed a float64 constant to a float32 program. jaxbp drops "
                "those caches where it flips the flag.")  # fmt: skip


def shape_cases() -> list[Case]:
    cases = []
    for name, make, make_args, hiding, twin_bwd in (
        ("mean_rows_divides_by_shape0", V.make_mean_rows, V.mean_rows_args, (3, 3),
         lambda x, g: (g[:, None].expand_as(x) / x.shape[0],)),
        ("bias_db_is_dy0", V.make_add_bias, V.add_bias_args, (1, 3), lambda x, b, g: (g, g[0])),
    ):  # fmt: skip
        manual_fn, reference_fn = make(bug=True)
        args = make_args(hiding, 0)

        def jaxbp_go(manual_fn=manual_fn, reference_fn=reference_fn, make_args=make_args):
            report = verify_shapes(manual_fn, reference_fn, make_args, rank=2)
            failing = [s for s, r in report.reports if not r.passed]
            return {"options": {"verify_shapes": "rank=2"}, "outcome": "pass" if report.passed else
                    f"fail: at shapes {', '.join(map(str, failing))}"}  # fmt: skip

        def torch_go(name=name, args=args, twin_bwd=twin_bwd):
            fwd = (lambda x: x.mean(1)) if name.startswith("mean") else (lambda x, b: x + b)
            return torch_runs(torch_custom(fwd, twin_bwd), tuple(t64(a) for a in args), gradgrad=False)

        cases.append(Case(name, "a shape bug that hides at the example's shape", True, jaxbp_go,
                          [run_check_grads(manual_fn, args, order=1)], torch_go,
                          notes=f"check_grads and gradcheck are given the example of shape {hiding}, where the "
                          "bug hides; jaxbp.verify.verify_shapes asks the factory for batch 1, (2, 3) and (3, 2)."))  # fmt: skip
    return cases


def _layer_norm(eps_in_backward: float):
    eps = 1e-5

    def reference(x, gamma, beta):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
        return gamma * (x - mu) / jnp.sqrt(var + eps) + beta

    def backward(x, gamma, beta, dy):
        xc = x - jnp.mean(x, axis=-1, keepdims=True)
        r = 1.0 / jnp.sqrt(jnp.mean(xc**2, axis=-1, keepdims=True) + eps_in_backward)
        xhat, dxhat = xc * r, dy * gamma
        dx = r * (dxhat - jnp.mean(dxhat, -1, keepdims=True) - xhat * jnp.mean(dxhat * xhat, -1, keepdims=True))
        return dx, jnp.sum(dy * xhat, axis=0), jnp.sum(dy, axis=0)

    return V.custom_vjp_of(reference, backward), reference


def _compare_run(tmp: str) -> str:
    """``jaxbp train --grad compare`` on the layer norm of tests/test_compare_audit.py with the eps bug."""
    from jaxbp.cli import main
    from tests.test_compare_audit import LAYER_NORM_MODEL

    path = f"{tmp}/ln_no_eps.py"
    with open(path, "w") as f:
        f.write(LAYER_NORM_MODEL.replace("BWD_EPS = EPS", "BWD_EPS = 0.0"))
    code = main(["train", "--model", f"{path}:make_model", "--grad", "compare", "--epochs", "1", "--quiet",
                 "--out", f"{tmp}/run"])  # fmt: skip
    return "pass (exit 0)" if code == 0 else f"fail: exit {code} (the float64 audit at the first step)"


def compare_mode_case() -> Case:
    import tempfile

    manual_fn, reference_fn = _layer_norm(0.0)
    rng = np.random.default_rng(0)
    args = (rng.standard_normal((4, 6)), 1 + 0.1 * rng.standard_normal(6), 0.1 * rng.standard_normal(6))

    def jaxbp_go():
        report = run_jaxbp(manual_fn, reference_fn, *args, explore=False)()
        with tempfile.TemporaryDirectory() as tmp:
            report["outcome"] += f"<br>jaxbp train --grad compare: {_compare_run(tmp)}"
        return report

    def torch_go():
        def fwd(x, g, b):
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), g, b, 1e-5)

        def bwd(x, g, b, dy):
            xc = x - x.mean(-1, keepdim=True)
            r = 1.0 / torch.sqrt((xc**2).mean(-1, keepdim=True))  # the bug: eps left out
            xhat, dxhat = xc * r, dy * g
            dx = r * (dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True))
            return dx, (dy * xhat).sum(0), dy.sum(0)

        return torch_runs(torch_custom(fwd, bwd), tuple(t64(a) for a in args), gradgrad=False)

    return Case("layer_norm_eps_missing_in_backward", "a 1e-5 bug that float32 training cannot see", True,
                jaxbp_go, [run_check_grads(manual_fn, args, order=1)], torch_go,
                notes="before this change jaxbp train --grad compare trained it to the end (exit 0): its float32 "
                "per-step comparison allowed 1e-4; the float64 audit allows 1e-9.")  # fmt: skip


def all_trust_cases() -> list[Case]:
    return [*cnn_cases(), *magnitude_cases(), closed_over_case(), *shape_cases(), compare_mode_case()]

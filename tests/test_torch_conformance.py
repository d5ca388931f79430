"""The new layers of issue 27 against PyTorch's own functions, in float64.

For each layer and configuration: the forward and the VJP of every differentiable input
(one random cotangent) of ``jaxbp.manual`` and ``jaxbp.autodiff`` against
``torch.nn.functional`` on the same values, NHWC on our side, NCHW where torch needs it.
The registry test proves manual == autodiff; this pins down that both compute what
PyTorch computes (eps placement, biased variance, group layout, the erf and tanh GELU,
``align_corners=False`` source indices). Skipped where torch is not installed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from jaxbp import autodiff, manual  # noqa: E402

RTOL = 1e-12  # float64: observed errors are a few ulps (~1e-15)


def _nchw(t):
    return t.permute(0, 3, 1, 2)


def _nhwc(t):
    return t.permute(0, 2, 3, 1)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _compare(name, kwargs, torch_fn, args, *, seed=0):
    """Max relative errors of the forward and of each input's gradient, manual and autodiff vs torch."""
    rng = np.random.default_rng(seed + 1)
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in args]
    yt = torch_fn(*ts)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(np.asarray(dy)))
    errors = {}
    for ns in (manual, autodiff):
        fn = getattr(ns, name)
        with jax.enable_x64(True):
            wrapped = (lambda *xs: fn(list(xs), **kwargs)) if name == "concatenate" else (lambda *xs: fn(*xs, **kwargs))
            y, vjp = jax.vjp(wrapped, *[jnp.asarray(a) for a in args])
            grads = vjp(jnp.asarray(dy, dtype=y.dtype))
        errors[f"{ns.GRADIENTS} forward"] = _rel(y, yt.detach().numpy())
        for i, (g, t) in enumerate(zip(grads, ts)):
            errors[f"{ns.GRADIENTS} d{i}"] = _rel(g, t.grad.numpy())
    return errors


def _check(errors):
    worst = max(errors.values())
    print(f"worst {worst:.1e}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert worst < RTOL, errors


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _normal(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize(("shape", "eps"), [((2, 3, 5, 6), 1e-6), ((4, 7), 1e-3)])
def test_layer_norm(shape, eps):
    rng = np.random.default_rng(0)
    c = shape[-1]
    args = (_normal(rng, *shape), _normal(rng, c), _normal(rng, c))
    _check(_compare("layer_norm", {"eps": eps}, lambda x, g, b: F.layer_norm(x, (c,), g, b, eps), args))


@pytest.mark.parametrize(
    ("shape", "groups", "eps"),
    [((2, 3, 5, 6), 2, 1e-5), ((1, 4, 3, 6), 1, 1e-3), ((2, 3, 3, 6), 6, 1e-5), ((3, 6), 2, 1e-5)],
)
def test_group_norm(shape, groups, eps):
    rng = np.random.default_rng(0)
    c = shape[-1]
    args = (_normal(rng, *shape), _normal(rng, c), _normal(rng, c))

    def torch_fn(x, g, b):
        if x.ndim == 2:
            return F.group_norm(x, groups, g, b, eps)
        return _nhwc(F.group_norm(_nchw(x), groups, g, b, eps))

    _check(_compare("group_norm", {"groups": groups, "eps": eps}, torch_fn, args))


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu(approximate):
    x = 3 * np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    form = "tanh" if approximate else "none"
    _check(_compare("gelu", {"approximate": approximate}, lambda t: F.gelu(t, approximate=form), (x,)))


def test_silu():
    x = 3 * np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    _check(_compare("silu", {}, F.silu, (x,)))


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [2, 3, (2, 3)])
def test_upsample2d(method, scale):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 2))
    extra = {"align_corners": False} if method == "bilinear" else {}
    factor = scale if isinstance(scale, int) else tuple(float(s) for s in scale)

    def torch_fn(t):
        return _nhwc(F.interpolate(_nchw(t), scale_factor=factor, mode=method, **extra))

    _check(_compare("upsample2d", {"scale": scale, "method": method}, torch_fn, (x,)))


@pytest.mark.parametrize("axis", [-1, 1])
def test_concatenate(axis):
    rng = np.random.default_rng(0)
    shapes = [(2, 3, 4, 2), (2, 3, 4, 1), (2, 3, 4, 3)] if axis == -1 else [(2, 1, 4, 2), (2, 3, 4, 2)]
    args = tuple(_normal(rng, *s) for s in shapes)
    _check(_compare("concatenate", {"axis": axis}, lambda *ts: torch.cat(ts, dim=axis), args))


def test_mse_loss():
    rng = np.random.default_rng(0)
    args = (_normal(rng, 2, 3, 4, 5), _normal(rng, 2, 3, 4, 5))
    _check(_compare("mse_loss", {}, F.mse_loss, args))

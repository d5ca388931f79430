"""examples/equinox_model.py and examples/flax_nnx_model.py, shown in docs/frameworks.md.

jaxbp's layers inside an equinox module (its gradients verified leaf by leaf with
``verify_vjp``, then trained with optax) and a flax nnx module (trained with
``nnx.Optimizer``). Skipped without the frameworks extra (``.[dev]`` includes it).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained(losses: np.ndarray) -> bool:
    """The loss came down: the last five steps' mean below the first five's, by a margin."""
    return bool(np.all(np.isfinite(losses)) and losses[-5:].mean() < 0.95 * losses[:5].mean())


def test_equinox_module_leaves_are_verified_by_name_and_the_module_trains(capsys):
    pytest.importorskip("equinox", reason="pip install -e '.[frameworks]'")
    example = load_example("equinox_model")
    out = example.main(steps=30)
    report = out["report"]
    assert report.passed
    printed = capsys.readouterr().out
    rows = re.findall(r"^\s+(\S+)\s+float64\s+\d", printed, re.M)
    assert rows == ["m.conv_w", "m.conv_b", "m.w1", "m.b1", "x"], printed
    assert "skipped labels: int32" in printed
    # docs/frameworks.md shows this report: its rows name the same leaves
    page = (ROOT / "docs/frameworks.md").read_text(encoding="utf-8")
    shown = re.search(r"```text\n(.*?)```", page, re.S)[1]
    assert re.findall(r"^\s+(\S+)\s+float64\s+\d", shown, re.M) == rows
    assert trained(out["losses"]), out["losses"]


def test_equinox_verification_catches_a_wrong_backward_inside_the_module():
    """The check is not vacuous: a layer with a wrong backward, inside the same module, fails on a named leaf."""
    pytest.importorskip("equinox", reason="pip install -e '.[frameworks]'")
    import jax
    import jax.numpy as jnp

    import jaxbp
    from jaxbp import autodiff, manual

    example = load_example("equinox_model")

    @jax.custom_vjp
    def bad_relu(x):
        return manual.relu(x)

    bad_relu.defvjp(lambda x: (manual.relu(x), x), lambda x, dy: (dy * (x > 0) * 1.01,))  # 1 % off

    class Bad:
        relu = staticmethod(bad_relu)

        def __getattr__(self, name):
            return getattr(manual, name)

    def loss_bad(m, x, labels):
        return manual.softmax_cross_entropy(m(x, Bad()), labels)

    model = example.SmallCNN(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 1)))
    labels = jnp.arange(4)
    report = jaxbp.verify_vjp(
        loss_bad, example.loss_autodiff, model, x, labels, dtypes=("float64",), explore=False, transforms=False
    )
    assert not report.passed
    assert "m.conv_w" in str(report)
    assert autodiff.relu is not bad_relu


def test_flax_nnx_model_of_jaxbp_layers_trains_with_optax(capsys):
    pytest.importorskip("flax.nnx", reason="pip install -e '.[frameworks]'")
    example = load_example("flax_nnx_model")
    out = example.main(steps=30)
    assert out["worst"] < 1e-4
    assert trained(out["losses"]), out["losses"]
    assert "train loss" in capsys.readouterr().out

"""experiments/autodiff_ratio.py times a model's convolutions alone: it must find every one of them
(residual branches and projections included) with its stride, or its "rest" would be wrong."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from jaxbp import bench, models

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "autodiff_ratio.py"
_spec = importlib.util.spec_from_file_location("autodiff_ratio_experiment", SCRIPT)
ar = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(ar)


@pytest.mark.parametrize("name", ["cnn", "resnet", "autoencoder"])
def test_the_convolutions_found_carry_every_conv_flop_of_the_model(name):
    model = models.get_model(name, 10)
    plan = bench.layer_plan(model, (28, 28, 1))
    convs = ar.conv_shapes(plan)
    found = sum(2 * math.prod(w) * -(-h // s) * -(-wd // s) for (h, wd, _), w, s in convs)
    dense = sum(2 * math.prod(i.param_shapes["w"]) for i in plan if i.kind == "dense")
    expected = models.flops(model, (28, 28, 1)) - dense
    if name == "autoencoder":  # its transposed convolutions are no conv2d: not found, not counted
        expected -= sum(2 * i.input_shape[0] * i.input_shape[1] * math.prod(i.param_shapes["w"])
                        for i in plan if i.kind == "convT")  # fmt: skip
    assert found == expected
    if name == "resnet":  # two stages, each a stride-2 3x3, a 3x3 and a stride-2 1x1 projection
        assert [(w[0], s) for _, w, s in convs] == [(3, 1), (3, 2), (3, 1), (1, 2), (3, 2), (3, 1), (1, 2)]

"""experiments/throughput.py's PyTorch twins: every built-in model's twin has jaxbp's parameter
count and, layer by layer, its output shapes (so a timing compares the same network)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import jax
import pytest

from jaxbp import bench, models
from jaxbp.choices import MODELS

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "throughput.py"
_spec = importlib.util.spec_from_file_location("throughput_experiment", SCRIPT)
tp = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(tp)


@pytest.mark.parametrize("name", MODELS)
def test_each_models_twin_has_its_parameters_and_shapes(name):
    model = models.get_model(name, 10)
    plan = bench.layer_plan(model, (28, 28, 1))
    twin = tp.torch_model(plan, torch)
    _, params, _ = model.init(0, (28, 28, 1))
    assert sum(p.numel() for p in twin.parameters()) == sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    out_shape = (1, 28, 28) if model.objective == "reconstruct" else (10,)
    assert tuple(twin(torch.zeros(2, 1, 28, 28)).shape) == (2, *out_shape)
    for info in plan:  # each layer's twin alone, as the per-layer table times it
        y = tp.torch_model([info], torch)(torch.zeros(2, *tp._nchw(info.input_shape)))
        assert tuple(y.shape[1:]) == tp._nchw(info.output_shape), info.name


def test_a_conv_that_pads_asymmetrically_gets_a_pad_in_front():
    """XLA's SAME pads a stride-2 3x3 conv of 28 rows by (0, 1); PyTorch's Conv2d pads both sides alike."""
    info = bench.LayerInfo("conv1", "conv", (28, 28, 8), (14, 14, 32), {"w": (3, 3, 8, 32), "b": (32,)})
    module = tp._torch_conv(info, torch)
    assert isinstance(module[0], torch.nn.ZeroPad2d) and module[0].padding == (0, 1, 0, 1)
    depthwise = info._replace(input_shape=(14, 14, 32), output_shape=(14, 14, 32), param_shapes={"w": (7, 7, 1, 32)})
    conv = tp._torch_conv(depthwise, torch)
    assert (conv.groups, conv.padding, conv.stride) == (32, (3, 3), (1, 1))

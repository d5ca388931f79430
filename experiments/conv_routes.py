"""The convolution's kernel-aware routes in the whole train step, against the routes before them.

``jaxbp.layers.conv`` reads, while tracing, whether XLA:CPU will run convolutions on
YNNPACK's kernels (:func:`jaxbp.layers.conv.convolutions_on_ynnpack`) and picks the weight
gradient's route (im2col there, one convolution otherwise) and the input gradient's shape
(one row taller there, so that XLA keeps it on its own kernel), and the forward's shape
(one row taller there too, for inputs of 16 channels or more). This compiles the manual
train step of ``--model`` three times under each XLA flag set, in ONE process: as the layer
builds it now (``kernel-aware``), with the forward as tall as its output (``plain forward``),
and with the routes it had before both (``im2col-always``: the weight gradient through
im2col for inputs of at most 32 channels per group, the input gradient and the output as
tall as x), then times all of them and PyTorch's step interleaved (glibc's allocator
defaults for all).

    python experiments/conv_routes.py                  # ~1 min on 2 cores
    python experiments/conv_routes.py --model cnn-bn --repeats 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "")  # each flag set goes to its own compilations as options


@contextlib.contextmanager
def im2col_always():
    """Trace with the routes of before: im2col for narrow inputs, dx and y as tall as x, whatever the kernels."""
    from jaxbp.layers import conv

    check = conv._check_conv

    def before(*args, **kwargs):
        with mock.patch.object(conv, "convolutions_on_ynnpack", return_value=True):
            return check(*args, **kwargs)._replace(dx_extra_row=False, y_extra_row=False)

    with mock.patch.object(conv, "_check_conv", before):
        yield


@contextlib.contextmanager
def plain_forward():
    """Trace with the kernel-aware backward but the forward as tall as its output, wherever it runs."""
    from jaxbp.layers import conv

    check = conv._check_conv

    with mock.patch.object(conv, "_check_conv", lambda *a, **k: check(*a, **k)._replace(y_extra_row=False)):
        yield


VARIANTS = {"im2col-always": im2col_always, "plain forward": plain_forward, "kernel-aware": contextlib.nullcontext}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    from throughput import pytorch_step, traced_under

    from jaxbp import bench, xla_flags

    flag_sets = {"XLA's defaults": "", "jaxbp's AVX-512 flags": xla_flags.CPU_XLA_FLAGS_BY_ISA["avx512"].flags}
    calls = {}
    for set_name, flags in flag_sets.items():
        for variant, routes in VARIANTS.items():
            with traced_under(flags), routes():
                steps, step_args = bench.compile_train_steps(
                    args.model, grads=("manual",), compiler_options=bench.flag_options(flags)
                )
            calls[f"{set_name}, {variant}"] = lambda c=steps["manual"], a=step_args: c.executable(*a)
    twin = pytorch_step(args.model, 128)
    if twin is not None:
        calls["PyTorch eager"] = twin[0]
    timings = bench.time_interleaved(calls, repeats=args.repeats, warmup=3)
    print(f"manual {args.model} train step, batch 128, float32, {args.repeats} interleaved rounds, one process")
    print(f"CPU: {xla_flags.cpu_model()} ({xla_flags.CPU_ISA})")
    for name, t in timings.items():
        print(f"  {name:<40} {1e3 * t.median:7.2f} ms  IQR {100 * t.spread:5.1f} %")


if __name__ == "__main__":
    main()

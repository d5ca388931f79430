"""The kernel-aware routes (convolution, batch norm) in the whole train step, each against the routes before it.

``jaxbp.kernels.conv`` reads, while tracing, whether XLA:CPU will run convolutions on
YNNPACK's kernels (:func:`jaxbp.kernels.conv.convolutions_on_ynnpack`) and, where it will,
routes conv2d to formulate three of them so that YNNPACK refuses them and XLA's own, faster, kernel runs
them: the input gradient one row taller than x, the forward one row taller than its output
(inputs of 16 channels or more), the weight gradient over x dilated by 2. This compiles the
manual train step of ``--model`` in ONE process under XLA's defaults at each stage:

* ``before``: the weight gradient through im2col for inputs of at most 32 channels per
  group, whatever the kernels, the input gradient and the output as tall as x;
* ``+ taller dx``: im2col only where convolutions run on YNNPACK, dx one row taller there;
* ``+ taller forward``: the forward one row taller too;
* ``kernel-aware``: the weight gradient over dilated x;
* ``+ one-channel taps``: a first layer of one input channel takes its forward as sums over the
  taps, channel-major, where :func:`jaxbp.kernels.conv.conv_route` says;
* ``+ batch-norm view``: as the layers build it now (batch norm over few channels reads x as rows of
  64 values where :func:`jaxbp.kernels.norm.batch_norm_lanes` says);

and under jaxbp's AVX-512 flags (convolutions on XLA's kernels, element-wise ops on YNNPACK; the AVX2
flags too until they left element-wise ops to XLA) ``before`` and the last three stages, then times all of them and
PyTorch's step interleaved (glibc's allocator defaults for all, or with ``--policy command`` the
``jaxbp`` command's: :func:`jaxbp.allocator.set_policy`). ``--stages`` picks some of the stages.

    python experiments/conv_routes.py                  # ~1 min on 2 cores
    python experiments/conv_routes.py --model cnn-bn --repeats 60
    python experiments/conv_routes.py --model resnet --policy command --stages "kernel-aware,+ one-channel taps"
    python experiments/conv_routes.py --model resnet --policy command --stages "+ one-channel taps,+ batch-norm view"
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
def routes_at(stage: int):
    """Trace conv2d and batch norm with the routes of ``stage`` (0: before, 1: + taller dx, 2: + taller
    forward, 3: kernel-aware, 4: + one-channel taps, 5: now)."""
    import numpy as np

    from jaxbp.kernels import conv as kernels, norm as norm_kernels

    choose = kernels.conv_route

    def patched(x_shape, w_shape, dtype, stride, pads, dilation, groups, out_hw):
        route = choose(x_shape, w_shape, dtype, stride, pads, dilation, groups, out_hw)
        if stage >= 4:
            return route
        if stage == 3:
            return route._replace(one_channel_taps=False)
        kh, kw, cin_g, _ = w_shape
        on_ynnpack = kernels.convolutions_on_ynnpack()
        block = 0
        if cin_g <= 32 and (stage == 0 or on_ynnpack):  # the im2col route of before, its blocks as now
            block = kernels.im2col_images_per_block(x_shape[0], out_hw, kh * kw * x_shape[3], np.dtype(dtype).itemsize)
        return route._replace(
            im2col_block=block,
            dw_lhs_dilation=1,
            dx_extra_row=route.dx_extra_row and stage >= 1,
            y_extra_row=route.y_extra_row and stage >= 2,
            one_channel_taps=False,
        )

    lanes = norm_kernels.batch_norm_lanes if stage >= 5 else (lambda x_shape: 0)
    with mock.patch.object(kernels, "conv_route", patched), mock.patch.object(norm_kernels, "batch_norm_lanes", lanes):
        yield


STAGES = {
    "before": 0,
    "+ taller dx": 1,
    "+ taller forward": 2,
    "kernel-aware": 3,
    "+ one-channel taps": 4,
    "+ batch-norm view": 5,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--policy", choices=("glibc-defaults", "command"), default="glibc-defaults")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of: " + ", ".join(STAGES))
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",")]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown stage {unknown[0]!r} (choose from: {', '.join(STAGES)})")
    from throughput import pytorch_step, traced_under

    from jaxbp import allocator, bench, xla_flags

    if args.policy == "command":
        allocator.set_policy()
    flag_sets = {"XLA's defaults": "", "jaxbp's AVX-512 flags": xla_flags.CPU_XLA_FLAGS_BY_ISA["avx512"].flags}
    calls = {}
    for set_name, flags in flag_sets.items():
        for variant in stages:
            stage = STAGES[variant]
            if flags and stage not in (0, 3, 4, 5):  # the same program as the current one off YNNPACK
                continue
            with traced_under(flags), routes_at(stage):
                steps, step_args = bench.compile_train_steps(
                    args.model, grads=("manual",), compiler_options=bench.flag_options(flags)
                )
            calls[f"{set_name}, {variant}"] = lambda c=steps["manual"], a=step_args: c.executable(*a)
    twin = pytorch_step(args.model, 128)
    if twin is not None:
        calls["PyTorch eager"] = twin[0]
    timings = bench.time_interleaved(calls, repeats=args.repeats, warmup=3)
    print(f"manual {args.model} train step, batch 128, float32, {args.repeats} interleaved rounds, one process")
    print(f"CPU: {xla_flags.cpu_model()} ({xla_flags.CPU_ISA}); allocator: {allocator.describe()}")
    for name, t in timings.items():
        print(f"  {name:<40} {1e3 * t.median:7.2f} ms  IQR {100 * t.spread:5.1f} %")


if __name__ == "__main__":
    main()

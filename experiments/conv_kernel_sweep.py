"""The measurements behind conv2d's kernel-aware routes, over a range of convolution shapes.

Where XLA:CPU runs convolutions on YNNPACK (XLA's default in jaxlib 0.10), ``jaxbp.kernels.conv``
routes some of them to formulations so that YNNPACK refuses them and XLA's own kernel runs them. Which
ones, and from how many channels on, rests on this sweep: for each shape (batch, size, Cin ->
Cout, stride, groups; 3x3 SAME), the bare kernels, compiled under the flags this process runs
with and timed interleaved in one process:

* ``fwd``: the forward convolution as it is, and ``fwd taller``: one row taller and cropped
  (stride 1 only: at stride 2 the output stays smaller than the input, and YNNPACK takes both);
* ``dw im2col``: the weight gradient by blocked im2col and matmuls, ``dw conv``: as one
  convolution, ``dw conv dilated``: the same convolution over x dilated by 2.

    XLA_FLAGS="" python experiments/conv_kernel_sweep.py --json experiments/results/conv_kernel_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import allocator, bench, xla_flags
from jaxbp.kernels import conv as kernels
from jaxbp.layers import conv

# (batch, height = width, Cin, Cout, stride, groups)
SHAPES = [
    (128, 28, 1, 32, 1, 1),  # the cnn's conv1
    (128, 28, 3, 32, 1, 1),
    (128, 28, 8, 32, 1, 1),
    (128, 28, 16, 32, 1, 1),
    (128, 14, 16, 64, 1, 1),
    (128, 14, 32, 64, 1, 1),  # the cnn's conv2
    (128, 14, 64, 64, 1, 1),
    (128, 7, 64, 128, 1, 1),
    (128, 28, 32, 64, 2, 1),
    (128, 14, 64, 128, 2, 1),
    (32, 14, 32, 64, 1, 1),
    (512, 14, 32, 64, 1, 1),
    (128, 14, 32, 64, 1, 2),  # grouped
    (128, 14, 64, 64, 1, 4),
    (128, 14, 32, 32, 1, 32),  # depthwise
]


def shape_calls(batch, size, cin, cout, stride, groups, rng) -> dict:
    """{kernel: zero-argument call} for one convolution shape."""
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, cin // groups, cout)), jnp.float32)
    cfg = conv.conv_config(x, w, None, stride, "SAME", 1, groups)
    out = -(-size // stride)
    dy = jnp.asarray(rng.standard_normal((batch, out, out, cout)), jnp.float32)
    block = kernels.im2col_images_per_block(batch, (out, out), 9 * cin, 4)
    fns = {
        "fwd": (lambda x, w: conv.convolution(x, w, None, cfg, extra_row=False), (x, w)),
        "dw im2col": (lambda x, dy: conv.conv2d_dw_im2col(x, dy, w.shape, cfg._replace(route=cfg.route._replace(im2col_block=block))), (x, dy)),
        "dw conv": (lambda x, dy: conv.conv2d_dw_conv(x, dy, w.shape, cfg._replace(route=cfg.route._replace(dw_lhs_dilation=1))), (x, dy)),
        "dw conv dilated": (lambda x, dy: conv.conv2d_dw_conv(x, dy, w.shape, cfg._replace(route=cfg.route._replace(dw_lhs_dilation=2))), (x, dy)),
    }  # fmt: skip
    if stride == 1:
        fns["fwd taller"] = (lambda x, w: conv.convolution(x, w, None, cfg, extra_row=True), (x, w))
    calls = {}
    for name, (fn, args) in fns.items():
        executable = bench.compile_ahead(fn, *args).executable
        calls[name] = lambda e=executable, a=args: e(*a)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    allocator.set_policy()
    rng = np.random.default_rng(0)
    flags = os.environ.get("XLA_FLAGS", "")
    print(f"CPU: {xla_flags.cpu_model()} ({xla_flags.CPU_ISA}); XLA_FLAGS: {flags or '(none)'}; jax {jax.__version__}")
    print(f"bare kernels, float32, 3x3 SAME, {opts.repeats} interleaved rounds per shape (median ms)")
    rows = []
    for shape in SHAPES:
        timings = bench.time_interleaved(shape_calls(*shape, rng), repeats=opts.repeats, warmup=2)
        medians = {name: 1e3 * t.median for name, t in timings.items()}
        rows.append({"shape": dict(zip(("batch", "size", "cin", "cout", "stride", "groups"), shape)), "ms": medians})
        n, size, cin, cout, stride, groups = shape
        label = f"N{n} {size}x{size} {cin}->{cout} s{stride} g{groups}"
        print(f"  {label:<26} " + "  ".join(f"{k} {v:6.2f}" for k, v in medians.items()), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps({"cpu": xla_flags.cpu_model(), "isa": xla_flags.CPU_ISA, "xla_flags": flags,
                                         "jax": jax.__version__, "repeats": opts.repeats, "rows": rows}, indent=1))  # fmt: skip
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()

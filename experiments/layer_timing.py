"""Manual vs autodiff backward of conv2d and max_pool2d at the ``cnn`` model's shapes (batch 128, float32).

For each layer: ``jax.vjp`` of the manual function and of its plain-JAX twin, then

* ``bwd``: the pullback alone, jit-compiled, residuals precomputed (the hand-derived rule
  against the transpose that autodiff derives);
* ``fwd+bwd``: ``jax.vjp`` and the pullback in one jit-compiled function (what a train step pays).

All variants run in one process, interleaved round by round (so a noisy neighbour slows
both alike), after a warm-up; the table reports medians (and minima) over the rounds and the
ratio autodiff / manual (above 1: the manual backward is faster).

``--kernels`` times instead the bare kernels of the cnn's two convolutions, the floor a
train step cannot go under on this machine: ``lax.conv_general_dilated`` forward (as tall
as its output, and one row taller), the manual ``dx`` (a convolution, as tall as x and one row
taller) and the ``dw`` routes (im2col, the convolution, the convolution over x dilated by 2),
the same FLOPs as one plain matmul,
and PyTorch's (oneDNN) forward, backward-data and backward-weights kernels when PyTorch is
importable; each with its GFLOP/s.

    python experiments/layer_timing.py [--repeats 30] [--batch 128]
    python experiments/layer_timing.py --kernels --json experiments/results/throughput_kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import autodiff, manual


def _configs(batch: int):
    """(name, layer, argument shapes, kwargs): the cnn model's conv and pool layers."""
    return [
        ("conv1 3x3 1->32 SAME", "conv2d", [(batch, 28, 28, 1), (3, 3, 1, 32), (32,)], {"padding": "SAME"}),
        ("conv1 3x3 1->32 VALID", "conv2d", [(batch, 28, 28, 1), (3, 3, 1, 32), (32,)], {"padding": "VALID"}),
        ("conv2 3x3 32->64 SAME", "conv2d", [(batch, 14, 14, 32), (3, 3, 32, 64), (64,)], {"padding": "SAME"}),
        ("conv2 3x3 32->64 VALID 13x13", "conv2d", [(batch, 13, 13, 32), (3, 3, 32, 64), (64,)], {"padding": "VALID"}),
        ("max_pool 2x2/2 28x28x32", "max_pool2d", [(batch, 28, 28, 32)], {"window": 2}),
        ("max_pool 2x2/2 14x14x64", "max_pool2d", [(batch, 14, 14, 64)], {"window": 2}),
        # not in the cnn: the other backward routes, for reference
        ("max_pool 3x3/2 overlap 28x28x32", "max_pool2d", [(batch, 28, 28, 32)], {"window": 3, "stride": 2}),
        ("avg_pool 2x2/2 28x28x32", "avg_pool2d", [(batch, 28, 28, 32)], {"window": 2}),
        ("avg_pool 3x3/2 overlap 28x28x32", "avg_pool2d", [(batch, 28, 28, 32)], {"window": 3, "stride": 2}),
    ]


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _output_and_grads(f, args, ct):
    """The output too, as a train step needs it: XLA must not drop the forward."""
    y, pullback = jax.vjp(f, *args)
    return y, pullback(ct)


def _candidates(layer: str, shapes, kwargs, rng):
    args = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
    y_shape = jax.eval_shape(partial(getattr(autodiff, layer), **kwargs), *args).shape
    dy = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
    out = {}
    for label, fn in (("manual", getattr(manual, layer)), ("autodiff", getattr(autodiff, layer))):
        f = partial(fn, **kwargs)
        _, pullback = jax.vjp(f, *args)
        bwd = jax.jit(lambda pb, ct: pb(ct))  # the residuals travel in the pullback's pytree
        step = jax.jit(lambda a, ct, f=f: _output_and_grads(f, a, ct))
        out[label] = {"bwd": (bwd, (pullback, dy)), "fwd+bwd": (step, (args, dy))}
    # Same gradients (float32, summation order differs): a guard against timing a wrong rule.
    g_man = out["manual"]["bwd"][0](*out["manual"]["bwd"][1])
    g_ref = out["autodiff"]["bwd"][0](*out["autodiff"]["bwd"][1])
    err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(g_man, g_ref))
    return out, err


def _kernel_calls(batch: int, rng):
    """{name: (zero-argument call, FLOPs)} for conv1 (no dx: the model's input) and conv2 of the cnn."""
    from jax import lax

    from jaxbp.bench import compile_ahead
    from jaxbp.kernels import conv as kernels
    from jaxbp.layers import conv as conv_module

    def routed(cfg, **fields):  # cfg with these fields of its route replaced
        return cfg._replace(route=cfg.route._replace(**fields))

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
    calls = {}
    for name, (h, cin, cout) in {"conv1": (28, 1, 32), "conv2": (14, 32, 64)}.items():
        x = jnp.asarray(rng.standard_normal((batch, h, h, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
        dy = jnp.asarray(rng.standard_normal((batch, h, h, cout)), jnp.float32)
        flops = 2 * batch * h * h * 9 * cin * cout
        cfg = conv_module.conv_config(x, w, None, 1, "SAME", 1, 1)
        block = kernels.im2col_images_per_block(
            batch, (h, h), 9 * cin, 4
        )  # the layer's blocks, whichever route it takes
        fns = {
            "fwd": (lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), (x, w)),
            "dw im2col": (lambda x, dy: conv_module.conv2d_dw_im2col(x, dy, w.shape, routed(cfg, im2col_block=block)), (x, dy)),
            "dw conv": (lambda x, dy: conv_module.conv2d_dw_conv(x, dy, w.shape, routed(cfg, dw_lhs_dilation=1)), (x, dy)),
            "dw conv, x dilated": (lambda x, dy: conv_module.conv2d_dw_conv(x, dy, w.shape, routed(cfg, dw_lhs_dilation=2)), (x, dy)),
            "matmul": (jnp.matmul, (jnp.ones((batch * h * h, 9 * cin), jnp.float32), jnp.ones((9 * cin, cout), jnp.float32))),
            "matmul dw-shaped": (jnp.matmul, (jnp.ones((cout, batch * h * h), jnp.float32), jnp.ones((batch * h * h, 9 * cin), jnp.float32))),
        }  # fmt: skip
        fns["fwd one row taller"] = (  # the manual forward where it keeps off YNNPACK (16+ channels)
            lambda x, w: conv_module.convolution(x, w, None, cfg, extra_row=True),
            (x, w),
        )
        if name != "conv1":  # dx as tall as x, and one row taller (cropped): what keeps it off YNNPACK
            fns["dx"] = (
                lambda dy, w: conv_module.conv2d_dx(dy, w, x.shape, routed(cfg, dx_extra_row=False)),
                (dy, w),
            )
            fns["dx one row taller"] = (
                lambda dy, w: conv_module.conv2d_dx(dy, w, x.shape, routed(cfg, dx_extra_row=True)),
                (dy, w),
            )
        for what, (fn, args) in fns.items():
            executable = compile_ahead(fn, *args).executable
            calls[f"{name} jax {what}"] = (lambda e=executable, a=args: e(*a), flops)
        if torch is not None:
            xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(name != "conv1")
            wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
            dyt = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())

            def backward(mask, xt=xt, wt=wt, dyt=dyt, cout=cout):
                args = ([cout], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
                return lambda: torch.ops.aten.convolution_backward(dyt, xt, wt, *args)

            calls[f"{name} torch fwd"] = (
                lambda xt=xt, wt=wt: torch.nn.functional.conv2d(xt.detach(), wt, padding=1),
                flops,
            )
            calls[f"{name} torch dw"] = (backward([False, True, False]), flops)
            if name != "conv1":
                calls[f"{name} torch dx"] = (backward([True, False, False]), flops)
    return calls


def kernels(batch: int, repeats: int, warmup: int) -> dict:
    """The bare kernels of the cnn's convolutions, jax and PyTorch, interleaved in one process."""
    from jaxbp import xla_flags
    from jaxbp.bench import time_interleaved

    calls = _kernel_calls(batch, np.random.default_rng(0))
    timings = time_interleaved({k: c for k, (c, _) in calls.items()}, repeats=repeats, warmup=warmup)
    print(f"bare kernels, batch {batch}, float32, {repeats} interleaved rounds (median ms, IQR %, GFLOP/s)")
    rows = {}
    for name, (_, flops) in calls.items():
        t = timings[name]
        rows[name] = {"median_ms": 1e3 * t.median, "spread": t.spread, "gflops_per_s": flops / t.median / 1e9}
        print(f"  {name:<30} {1e3 * t.median:8.2f} {100 * t.spread:6.1f} {flops / t.median / 1e9:8.1f}", flush=True)
    return {"batch_size": batch, "repeats": repeats, "xla": xla_flags.describe(), "kernels": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--only", default="", help="run the configurations whose name contains this")
    parser.add_argument("--kernels", action="store_true", help="time the bare convolution kernels instead")
    parser.add_argument("--json", type=Path, help="with --kernels: write the timings there")
    opts = parser.parse_args(argv)
    if opts.kernels:
        from jaxbp.xla_flags import set_default_xla_flags

        set_default_xla_flags()  # (before any computation) the flags the jaxbp command runs under
        result = kernels(opts.batch, opts.repeats, opts.warmup)
        if opts.json:
            opts.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {opts.json}")
        return
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, repeats {opts.repeats}")
    header = f"{'configuration':<32} {'what':<8} {'manual ms':>16} {'autodiff ms':>16} {'ratio':>6}  rel err"
    print(header + "\n" + "-" * len(header))
    for name, layer, shapes, kwargs in _configs(opts.batch):
        if opts.only not in name:
            continue
        fns, err = _candidates(layer, shapes, kwargs, rng)
        for what in ("bwd", "fwd+bwd"):
            pairs = {label: fns[label][what] for label in ("manual", "autodiff")}
            for _ in range(opts.warmup):
                for fn, args in pairs.values():
                    _timed(fn, *args)
            times = {label: [] for label in pairs}
            for _ in range(opts.repeats):  # interleaved: manual, autodiff, manual, ...
                for label, (fn, args) in pairs.items():
                    times[label].append(_timed(fn, *args))
            med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            low = {k: 1e3 * float(np.min(v)) for k, v in times.items()}
            cells = [f"{med[k]:7.2f} ({low[k]:6.2f})" for k in ("manual", "autodiff")]
            ratio = med["autodiff"] / med["manual"]
            print(f"{name:<32} {what:<8} {cells[0]:>16} {cells[1]:>16} {ratio:6.2f}  {err:.1e}", flush=True)


if __name__ == "__main__":
    main()

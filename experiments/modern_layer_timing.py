"""The modern-convnet layers (issue 27), forward + backward (every input's gradient), float32: jaxbp
manual against its autodiff twin and PyTorch eager, all in one process, interleaved round by round (a
noisy neighbour slows every variant alike); medians and interquartile ranges over the rounds.

Shapes: the depthwise 7x7 convolution of a ConvNeXt block, batch 64, 14x14x128, SAME
(``conv2d(x, w, padding="SAME", groups=128)``, with the route the manual layer took before the
depthwise taps, convolutions, for reference); the transposed convolution k4 s2 p1, 7x7x64 -> 14x14x32,
batch 64; and at the shapes of the ``convnext`` and ``autoencoder`` models (batch 128) and of a
ConvNeXt stage (batch 64, 14x14x128): layer norm over the channels, group norm (32 groups), GELU
(exact and tanh), SiLU, 2x upsampling (nearest, bilinear), channel concatenation (a U-Net skip) and
the mean squared error. PyTorch runs each on NCHW tensors, and on channels_last ones where the
layout changes its kernel (convolutions, group norm, upsampling); layer norm over the channels runs
on NHWC tensors as ConvNeXt's PyTorch code does.

Each XLA flag set needs its own process (XLA reads XLA_FLAGS once): without ``--flags`` the script
runs itself once under jaxbp's flags for this CPU and once under XLA's defaults (``XLA_FLAGS=""``),
and writes both to the JSON. Both set the allocator policy of the ``jaxbp`` command
(:mod:`jaxbp.allocator`), which PyTorch's calls in the same process get too.

    python experiments/modern_layer_timing.py [--rounds 15] [--json experiments/results/modern_layer_timing.json]
    python experiments/modern_layer_timing.py --only norm --rounds 3      # the cases whose name has "norm"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def forward_backward(fn, dy, *args):
    """``(fn(*args), the pullback of dy)``: the output is returned, as PyTorch's is computed, so that
    XLA cannot drop the forward of a layer whose backward does not read its output."""
    import jax

    y, pullback = jax.vjp(fn, *args)
    return y, pullback(dy)


class Case(NamedTuple):
    """A layer at one shape: ``jax_fn(ops, *arrays)``; ``torch_fn(torch, *tensors)`` its PyTorch
    twin on tensors laid out as ``layouts`` says per argument (:data:`TORCH_LAYOUTS`) and as
    ``out_layout`` for the output's cotangent; ``channels_last``: time PyTorch's channels_last
    memory format too (activations and weights)."""

    name: str
    shapes: tuple
    jax_fn: Callable
    torch_fn: Callable
    layouts: tuple
    out_layout: str
    channels_last: bool = False


#: How each argument of a :class:`Case` reaches PyTorch: "nchw" an NHWC array transposed, "oihw" a
#: conv2d kernel from HWIO, "iohw" a conv_transpose2d kernel ([Cin, Cout/G, KH, KW]) from
#: [KH, KW, Cin, Cout/G]; "nhwc", "vec" and "scalar" as they are.
TORCH_LAYOUTS = {
    "nchw": lambda a: a.transpose(0, 3, 1, 2),
    "oihw": lambda a: a.transpose(3, 2, 0, 1),
    "iohw": lambda a: a.transpose(2, 3, 0, 1),
    "nhwc": lambda a: a,
    "vec": lambda a: a,
    "scalar": lambda a: a,
}

#: The depthwise 7x7 convolution of a ConvNeXt block (also timed on its route before the taps).
DEPTHWISE = Case(
    "depthwise 7x7 SAME, 64x14x14x128, groups=128",
    ((64, 14, 14, 128), (7, 7, 1, 128)),
    lambda ops, x, w: ops.conv2d(x, w, padding="SAME", groups=128),
    lambda torch, x, w: torch.nn.functional.conv2d(x, w, padding=3, groups=128),
    ("nchw", "oihw"),
    "nchw",
    True,
)
TRANSPOSE = Case(
    "conv_transpose2d k4 s2 p1, 64x7x7x64 -> 64x14x14x32",
    ((64, 7, 7, 64), (4, 4, 64, 32)),
    lambda ops, x, w: ops.conv_transpose2d(x, w, stride=2, padding=1),
    lambda torch, x, w: torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1),
    ("nchw", "iohw"),
    "nchw",
    True,
)


def _cases() -> list[Case]:
    """The two convolutions, then the normalisations, activations, upsampling, concatenation and
    loss at the new models' shapes."""
    ln = lambda c: lambda torch, x, g, b: torch.nn.functional.layer_norm(x, (c,), g, b, eps=1e-6)  # noqa: E731
    gn = lambda torch, x, g, b: torch.nn.functional.group_norm(x, 32, g, b, eps=1e-5)  # noqa: E731
    up = lambda mode: lambda torch, x: torch.nn.functional.interpolate(x, scale_factor=2, mode=mode)  # noqa: E731
    nhwc_vec = ("nhwc", "vec", "vec")
    return [
        DEPTHWISE,
        TRANSPOSE,
        Case("layer_norm over C, 128x14x14x32 (convnext ln)", ((128, 14, 14, 32), (32,), (32,)),
             lambda ops, x, g, b: ops.layer_norm(x, g, b, eps=1e-6), ln(32), nhwc_vec, "nhwc"),
        Case("layer_norm over C, 64x14x14x128 (ConvNeXt stage)", ((64, 14, 14, 128), (128,), (128,)),
             lambda ops, x, g, b: ops.layer_norm(x, g, b, eps=1e-6), ln(128), nhwc_vec, "nhwc"),
        Case("group_norm 32 groups, 64x14x14x128", ((64, 14, 14, 128), (128,), (128,)),
             lambda ops, x, g, b: ops.group_norm(x, g, b, groups=32), gn, ("nchw", "vec", "vec"), "nchw", True),
        Case("gelu exact, 128x14x14x128 (convnext bottleneck)", ((128, 14, 14, 128),),
             lambda ops, x: ops.gelu(x), lambda torch, x: torch.nn.functional.gelu(x), ("nchw",), "nchw"),
        Case("gelu tanh, 128x14x14x128", ((128, 14, 14, 128),), lambda ops, x: ops.gelu(x, approximate=True),
             lambda torch, x: torch.nn.functional.gelu(x, approximate="tanh"), ("nchw",), "nchw"),
        Case("silu, 128x14x14x128", ((128, 14, 14, 128),), lambda ops, x: ops.silu(x),
             lambda torch, x: torch.nn.functional.silu(x), ("nchw",), "nchw"),
        Case("upsample2d nearest x2, 64x14x14x32", ((64, 14, 14, 32),), lambda ops, x: ops.upsample2d(x, 2),
             up("nearest"), ("nchw",), "nchw", True),
        Case("upsample2d bilinear x2, 64x14x14x32", ((64, 14, 14, 32),),
             lambda ops, x: ops.upsample2d(x, 2, "bilinear"), up("bilinear"), ("nchw",), "nchw", True),
        Case("concatenate channels, 2 x 64x28x28x32", ((64, 28, 28, 32), (64, 28, 28, 32)),
             lambda ops, a, b: ops.concatenate([a, b], axis=-1), lambda torch, a, b: torch.cat([a, b], dim=1),
             ("nchw", "nchw"), "nchw", True),
        Case("mse_loss, 128x28x28x1 (autoencoder)", ((128, 28, 28, 1), (128, 28, 28, 1)),
             lambda ops, a, b: ops.mse_loss(a, b), lambda torch, a, b: torch.nn.functional.mse_loss(a, b),
             ("nchw", "nchw"), "scalar"),
    ]  # fmt: skip


def _case_step(case: Case, ops):
    """The jitted forward plus the pullback of every argument, as a train step pays them: ``(dy, *arrays)``."""
    import jax

    return jax.jit(lambda dy, *a: forward_backward(lambda *a: case.jax_fn(ops, *a), dy, *a))


def _case_variants(case: Case, rng):
    """``({variant: jitted step}, args, torch step or None)`` of a :class:`Case`: jaxbp manual and
    autodiff (and, for :data:`DEPTHWISE`, the manual route before the taps)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxbp import autodiff, manual
    from jaxbp.kernels import conv as kernels

    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in case.shapes]
    out = jax.eval_shape(lambda *a: case.jax_fn(manual, *a), *arrays)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    args = (jnp.asarray(dy), *map(jnp.asarray, arrays))
    variants = {"jaxbp manual": _case_step(case, manual), "jaxbp autodiff": _case_step(case, autodiff)}
    if case is DEPTHWISE:
        before = _case_step(case, manual)
        saved = kernels.DEPTHWISE_TAPS_CHANNELS
        kernels.DEPTHWISE_TAPS_CHANNELS = 10**9  # the route before the taps: convolutions (traced now, while patched)
        try:
            jax.block_until_ready(before(*args))
        finally:
            kernels.DEPTHWISE_TAPS_CHANNELS = saved
        variants["jaxbp manual, convolutions (before)"] = before
    return variants, args, _torch_case_step(case, arrays, dy)


def _torch_case_step(case: Case, arrays, dy):
    """PyTorch eager forward + backward of a :class:`Case`, or None without PyTorch: ``step(threads,
    channels_last)``, with PyTorch's default thread count unless ``threads`` says (one thread: on a
    loaded 2-core machine its two OpenMP threads wait on each other), on NCHW tensors or in the
    channels_last memory format."""
    try:
        import torch
    except ImportError:
        return None
    plain = [torch.tensor(TORCH_LAYOUTS[lay](a).copy()) for lay, a in zip(case.layouts, arrays)]
    dyt = torch.tensor(TORCH_LAYOUTS[case.out_layout](dy).copy())
    last = lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.clone()  # noqa: E731
    layouts = {False: (plain, dyt), True: ([last(t) for t in plain], last(dyt))}
    for tensors, _ in layouts.values():
        for t in tensors:
            t.requires_grad_(True)
    default_threads = torch.get_num_threads()

    def step(threads=None, channels_last=False):
        tensors, cot = layouts[channels_last]
        if threads:
            torch.set_num_threads(threads)
        try:
            return torch.autograd.grad(case.torch_fn(torch, *tensors), tensors, cot)
        finally:
            torch.set_num_threads(default_threads)

    return step


#: Seconds of rest before each timed call: XLA's and PyTorch's worker threads spin a while after a
#: call, and would otherwise run against the next variant (PyTorch eager measured 10x slower so).
PAUSE_S = 0.05


def _time(fn) -> float:
    import jax

    time.sleep(PAUSE_S)
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(rounds: int, only: str = "") -> dict:
    """Every variant of every layer (whose name contains ``only``), interleaved round by round:
    {layer: {variant: stats}}."""
    import numpy as np

    rng = np.random.default_rng(0)
    layers = {}
    for case in (case for case in _cases() if only in case.name):
        variants, args, torch_step = _case_variants(case, rng)
        calls = {v: (lambda f=f, args=args: f(*args)) for v, f in variants.items()}
        if torch_step is not None:
            calls["pytorch eager"] = torch_step
            calls["pytorch eager, 1 thread"] = lambda step=torch_step: step(threads=1)
            if case.channels_last:
                calls["pytorch eager, channels_last"] = lambda step=torch_step: step(channels_last=True)
        layers[case.name] = calls
    times = {name: {v: [] for v in calls} for name, calls in layers.items()}
    for name, calls in layers.items():  # compile and warm up
        for fn in calls.values():
            _time(fn)
            _time(fn)
    for _ in range(rounds):
        for name, calls in layers.items():
            for v, fn in calls.items():
                times[name][v].append(_time(fn))
    return {name: {v: _stats(t) for v, t in per.items()} for name, per in times.items()}


def _stats(seconds) -> dict:
    import numpy as np

    ms = np.asarray(seconds) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": round(float(med), 2), "iqr_ms": round(float(q3 - q1), 2), "rounds": len(ms)}


def _with_ratios(layers: dict) -> dict:
    for per in layers.values():
        torch_ms = per.get("pytorch eager", {}).get("median_ms")
        for stats in per.values():
            if torch_ms:
                stats["x_pytorch"] = round(stats["median_ms"] / torch_ms, 2)
    return layers


def _machine() -> dict:
    from jaxbp import allocator, xla_flags

    load = os.getloadavg()
    return {
        "cpu": xla_flags.cpu_model(),
        "isa": xla_flags.cpu_isa(),
        "cores": os.cpu_count(),
        "load_avg": load,
        "allocator": allocator.describe(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", default="experiments/results/modern_layer_timing.json")
    parser.add_argument("--only", default="", help="the layers whose name contains this")
    parser.add_argument("--flags", choices=["jaxbp", "default"], help="measure under one flag set (internal)")
    args = parser.parse_args(argv)
    if args.flags:  # a child: XLA_FLAGS is already set; print the measurement as JSON
        from jaxbp import allocator

        allocator.set_policy()  # the jaxbp command's policy, as throughput.py (PyTorch's calls get it too)
        before = _machine()
        layers = _with_ratios(measure(args.rounds, args.only))
        print(
            json.dumps(
                {
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "machine_before": before,
                    "machine_after": _machine(),
                    "layers": layers,
                }
            )
        )
        return 0
    from jaxbp import xla_flags

    results = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": _machine(), "runs": {}}
    for flags, value in (("jaxbp", xla_flags.CPU_XLA_FLAGS), ("default", "")):
        env = dict(os.environ, XLA_FLAGS=value)
        cmd = [sys.executable, __file__, "--flags", flags, "--rounds", str(args.rounds), "--only", args.only]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results["runs"][flags] = json.loads(out.strip().splitlines()[-1])
        _print(flags, results["runs"][flags])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _print(flags: str, run: dict) -> None:
    print(f"\nXLA_FLAGS={run['xla_flags']!r} ({flags}); load {run['machine_before']['load_avg']}")
    for layer, per in run["layers"].items():
        print(f"  {layer}")
        for v, s in per.items():
            ratio = f"  {s['x_pytorch']:.2f}x pytorch" if "x_pytorch" in s else ""
            print(f"    {v:40s} {s['median_ms']:9.2f} ms  IQR {s['iqr_ms']:7.2f}{ratio}")


if __name__ == "__main__":
    raise SystemExit(main())

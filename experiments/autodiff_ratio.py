"""How far the manual train step is from twice autodiff's speed, and what its convolutions leave for the rest.

For each ``--models`` model, in ONE process under this process's ``XLA_FLAGS`` (run it under the
flags to measure, e.g. jaxbp's AVX2 set): the manual and autodiff train steps
(:func:`jaxbp.bench.compile_train_steps`), the model's convolutions alone as the manual step runs
them (each conv layer's forward and hand-derived VJP at its shapes in one jitted function, the
first layer without dx: a train step never computes the input's gradient), and the float32 matmul
peak, timed interleaved (:func:`jaxbp.bench.time_interleaved`). Printed per model: both steps,
autodiff / manual, the convolutions' time and GFLOP/s, and what 2x leaves for everything else
(``autodiff / 2 - convolutions``) against what it takes now (``manual - convolutions``).

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce \\
        python experiments/autodiff_ratio.py --models cnn,cnn-bn,resnet --repeats 40
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import allocator, bench, manual, models, xla_flags
from jaxbp.choices import MODELS

BATCH = 128
INPUT_SHAPE = (28, 28, 1)


def conv_shapes(plan) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """(input shape [H, W, Cin], w shape, stride) of every convolution in a :func:`bench.layer_plan`,
    residual branches and projections included, in the order the forward runs them."""
    out = []
    for info in plan:
        stride = -(-info.input_shape[0] // info.output_shape[0]) if len(info.output_shape) == 3 else 1
        if info.kind == "conv":
            out.append((info.input_shape, info.param_shapes["w"], stride))
        out += conv_shapes(info.branch)
        if "proj" in info.param_shapes:
            out.append((info.input_shape, info.param_shapes["proj"]["w"], stride))
    return out


def convolutions_call(shapes, seed: int = 0):
    """A zero-argument call of every convolution's forward and manual VJP, and their FLOPs (3x the
    forward's, but 2x for the first layer's: no dx)."""
    rng = np.random.default_rng(seed)
    args, flops = [], 0
    for k, (in_shape, w_shape, stride) in enumerate(shapes):
        x = jnp.asarray(rng.standard_normal((BATCH, *in_shape)), jnp.float32)
        w = jnp.asarray(rng.standard_normal(w_shape) * 0.1, jnp.float32)
        y = jax.eval_shape(lambda x, w, s=stride: manual.conv2d(x, w, stride=s, padding="SAME"), x, w)
        dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        args.append((x, w, jnp.zeros(w_shape[3], jnp.float32), dy))
        forward = 2 * np.prod(y.shape[:3]) * np.prod(w_shape)
        flops += forward * (2 if k == 0 else 3)
    strides = [s for _, _, s in shapes]

    @jax.jit
    def all_convolutions(args):
        out = []
        for k, ((x, w, b, dy), s) in enumerate(zip(args, strides)):
            if k == 0:
                y, pullback = jax.vjp(lambda w, b, x=x, s=s: manual.conv2d(x, w, b, stride=s, padding="SAME"), w, b)
            else:
                y, pullback = jax.vjp(lambda x, w, b, s=s: manual.conv2d(x, w, b, stride=s, padding="SAME"), x, w, b)
            out.append((y, pullback(dy)))
        return out

    return (lambda: all_convolutions(args)), float(flops)


def measure(model_names, repeats: int) -> dict:
    calls, conv_flops = {}, {}
    for name in model_names:
        steps, step_args = bench.compile_train_steps(name, batch_size=BATCH, input_shape=INPUT_SHAPE)
        for grad, step in steps.items():
            calls[f"{name} {grad}"] = lambda c=step, a=step_args: c.executable(*a)
        plan = bench.layer_plan(models.get_model(name, 10), INPUT_SHAPE)
        calls[f"{name} convolutions"], conv_flops[name] = convolutions_call(conv_shapes(plan))
    calls["matmul"], matmul_flops = bench.matmul_call()
    t = bench.time_interleaved(calls, repeats=repeats, warmup=3)
    peak = matmul_flops / t["matmul"].median / 1e9
    result = {"cpu": xla_flags.cpu_model(), "isa": xla_flags.CPU_ISA, "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "repeats": repeats, "matmul_gflops_per_s": peak, "models": {}}  # fmt: skip
    for name in model_names:
        man, auto, conv = (t[f"{name} {k}"] for k in ("manual", "autodiff", "convolutions"))
        result["models"][name] = {
            "manual_ms": 1e3 * man.median, "manual_iqr": man.spread,
            "autodiff_ms": 1e3 * auto.median, "autodiff_iqr": auto.spread,
            "autodiff_over_manual": auto.median / man.median,
            "convolutions_ms": 1e3 * conv.median, "convolutions_iqr": conv.spread,
            "convolutions_gflops_per_s": conv_flops[name] / conv.median / 1e9,
            "rest_now_ms": 1e3 * (man.median - conv.median),
            "rest_at_2x_ms": 1e3 * (auto.median / 2 - conv.median),
        }  # fmt: skip
    return result


def report(result: dict) -> str:
    lines = [
        f"{result['cpu']} ({result['isa']}), XLA_FLAGS={result['xla_flags']!r}, {result['repeats']} interleaved "
        f"rounds, batch {BATCH}; float32 matmul peak {result['matmul_gflops_per_s']:.1f} GFLOP/s",
        f"{'model':8s} {'manual':>14s} {'autodiff':>14s} {'ratio':>6s} {'convolutions':>20s} "
        f"{'rest now':>9s} {'rest at 2x':>10s}",
    ]
    for name, r in result["models"].items():
        lines.append(
            f"{name:8s} {r['manual_ms']:7.2f} ({100 * r['manual_iqr']:3.0f}%) {r['autodiff_ms']:7.2f} "
            f"({100 * r['autodiff_iqr']:3.0f}%) {r['autodiff_over_manual']:5.2f}x {r['convolutions_ms']:7.2f} ms "
            f"{r['convolutions_gflops_per_s']:5.1f} GF/s {r['rest_now_ms']:9.2f} {r['rest_at_2x_ms']:10.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,cnn-bn,resnet", help="comma-separated model names")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown model {unknown[0]!r} (choose from: {', '.join(MODELS)})")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    allocator.set_policy()  # the jaxbp command's allocator policy
    result = measure(names, args.repeats)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Manual VJPs against autodiff, timed side by side in one process.

Machines are noisy, so nothing here compares two runs: every measurement times
the candidates *interleaved* in one process (A, B, A, B, ... with the order
alternating each round), after warm-up, and reports the median, the quartiles
and the ratio of medians. Steps are compiled ahead of time with
``jit(...).lower(...).compile()`` so the compile time and the compiled memory
(``memory_analysis()``) of each are measured too, and the timed calls go straight
to the executable.

* :func:`bench_train_step`: the whole jitted train step (forward, loss, backward,
  optimiser update) of a model with manual and with autodiff gradients, next to a
  plain float32 matmul (:func:`matmul_call`) whose GFLOP/s, measured in the same
  rounds, is the machine's peak the steps are compared with.
* :func:`bench_layers`: each layer of the model at the shapes it sees in that
  model: forward alone, and forward plus backward with the manual and the
  autodiff VJP.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import allocator, autodiff, manual, models, xla_flags


@dataclass
class Timing:
    """Seconds per call over the timed rounds."""

    median: float
    q25: float
    q75: float
    minimum: float
    rounds: int

    @classmethod
    def of(cls, samples: list[float]) -> "Timing":
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        return cls(statistics.median(samples), q[0], q[2], min(samples), len(samples))

    @property
    def spread(self) -> float:
        """Inter-quartile range relative to the median."""
        return (self.q75 - self.q25) / self.median if self.median else 0.0


def time_interleaved(calls: dict[str, Callable[[], Any]], *, repeats: int = 20, warmup: int = 2) -> dict[str, Timing]:
    """Time each zero-argument call ``repeats`` times, interleaved, after ``warmup`` untimed rounds.

    Each call's result is blocked on (``jax.block_until_ready``), so asynchronous
    dispatch does not hide work. Each round runs the calls in the order :func:`round_orders`
    gives: shuffled, and never one call twice in a row.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(calls[name]())
    samples: dict[str, list[float]] = {n: [] for n in names}
    for order in round_orders(names, repeats):
        for name in order:
            t0 = time.perf_counter()
            jax.block_until_ready(calls[name]())
            samples[name].append(time.perf_counter() - t0)
    return {n: Timing.of(s) for n, s in samples.items()}


def round_orders(names: Sequence[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of the calls in each timed round: a seeded shuffle, swapped so that no round
    starts with the call that ended the one before.

    A call that runs right after itself finds its buffers and code in cache and runs faster (the
    cnn's manual step, timed twice in one process: 1.4-4.2 ms, 3-10 %, faster in the slot that
    ran twice in a row at the turn of every round under the alternating order used before), so
    no call may follow itself, and each is preceded by every other about equally often.
    """
    rng = random.Random(seed)
    orders: list[list[str]] = []
    last = None
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        if len(order) > 1 and order[0] == last:
            order[0], order[-1] = order[-1], order[0]
        orders.append(order)
        last = order[-1]
    return orders


@dataclass
class Compiled:
    executable: Any
    compile_s: float
    temp_bytes: int | None
    argument_bytes: int | None
    output_bytes: int | None


def compile_ahead(fn: Callable, *args: Any, compiler_options: dict[str, Any] | None = None) -> Compiled:
    """Lower and compile ``jax.jit(fn)`` for ``args``, timing the compilation and reading its memory.

    ``compiler_options`` are XLA debug options for this one compilation (the fields
    ``XLA_FLAGS`` sets for the whole process, without the ``--``): see :func:`flag_options`.
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    t0 = time.perf_counter()
    executable = jitted.lower(*args).compile(compiler_options)
    compile_s = time.perf_counter() - t0
    try:
        mem = executable.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not report memory
        mem = None
    get = lambda name: None if mem is None else int(getattr(mem, name, 0))  # noqa: E731
    return Compiled(
        executable, compile_s, get("temp_size_in_bytes"), get("argument_size_in_bytes"), get("output_size_in_bytes")
    )


def _inputs(batch_size: int, input_shape: tuple[int, ...], num_classes: int, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch_size, *input_shape)), dtype)
    y = jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32)
    return x, y


def _cast_floats(tree: Any, dtype: str) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def flag_options(flags: str) -> dict[str, Any]:
    """``XLA_FLAGS``-style flags as :func:`compile_ahead`'s per-compilation options, so that
    several flag sets can be compiled, and timed against each other, in one process.

    ``"--xla_cpu_prefer_vector_width=512 --xla_cpu_experimental_ynn_fusion_type=eltwise,reduce"``
    -> ``{"xla_cpu_prefer_vector_width": 512, "xla_cpu_experimental_ynn_fusion_type":
    "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}`` (the library fusion types
    are an enum whose names the compile options spell out in full).
    """
    options: dict[str, Any] = {}
    for flag in flags.split():
        name, _, value = flag.removeprefix("--").partition("=")
        if name.endswith("_fusion_type"):
            options[name] = ",".join(f"LIBRARY_FUSION_TYPE_{v.upper()}" for v in value.split(",") if v)
        elif value.lstrip("-").isdigit():
            options[name] = int(value)
        elif value in ("true", "false"):
            options[name] = value == "true"
        else:
            options[name] = value
    return options


#: Side of the square float32 matmul whose speed stands for the machine's peak.
PEAK_MATMUL_SIZE = 1024


def matmul_call(n: int = PEAK_MATMUL_SIZE, dtype: str = "float32", seed: int = 0) -> tuple[Callable[[], Any], float]:
    """A compiled zero-argument ``[n, n] @ [n, n]`` call and its FLOPs (``2 n^3``): timed
    next to a train step, its GFLOP/s is the peak the step's GFLOP/s is a fraction of."""
    rng = np.random.default_rng(seed)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), dtype) for _ in range(2))
    executable = compile_ahead(jnp.matmul, a, b).executable
    return (lambda: executable(a, b)), 2.0 * n**3


def check_settings(model_name: str, input_shape: Sequence[int], *, warmup: int = 0, repeats: int = 1) -> None:
    """Raise ``ValueError`` naming the flag (``--input-shape``, ``--warmup``, ``--repeats``,
    ``--model``) when a benchmark cannot run with these settings: before any compilation.
    ``model_name`` is a built-in model or a user's spec (:func:`jaxbp.models.get_model` loads
    it, as ``jaxbp train --model`` does)."""
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    shape = tuple(input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input-shape must be three positive ints H,W,C, got {shape}")
    try:  # a built-in name, or a user's MODULE:FUNCTION / path/to/file.py:FUNCTION, loaded as train loads it
        model = models.get_model(model_name, 10)
    except models.ModelError as err:
        raise ValueError(f"--model: {err}") from None
    try:
        model.init(np.random.default_rng(0), shape)
    except models.ModelError as err:  # a user's layer whose init fails, or the wrong number of outputs
        raise ValueError(f"--model: {model_name!r}: {err}") from None
    except (ZeroDivisionError, ValueError) as err:
        raise ValueError(
            f"--input-shape {','.join(map(str, shape))}: model {model_name} cannot take it ({err})"
        ) from None


def compile_train_steps(
    model_name: str = "cnn",
    *,
    batch_size: int = 128,
    dtype: str = "float32",
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    seed: int = 0,
    grads: Sequence[str] = ("manual", "autodiff"),
    compiler_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Compiled], tuple]:
    """The model's jitted train step (SGD with momentum) per gradient mode, compiled ahead
    (with ``compiler_options``, see :func:`compile_ahead`), and the arguments to call it with."""
    from jaxbp import train

    model = models.get_model(model_name, num_classes)
    _, params, state = model.init(jax.random.key(seed), input_shape)
    params, state = _cast_floats(params, dtype), _cast_floats(state, dtype)
    optimizer = optax.sgd(0.01, momentum=0.9)
    opt_state = optimizer.init(params)
    x, y = _inputs(batch_size, input_shape, num_classes, dtype, seed)
    args = (params, opt_state, state, x, y, jnp.asarray(batch_size, jnp.int32), jax.random.key(seed))
    step = {g: train.make_train_step(model, optimizer, grad=g) for g in grads}
    return {g: compile_ahead(step[g], *args, compiler_options=compiler_options) for g in grads}, args


def bench_train_step(
    model_name: str = "cnn",
    *,
    batch_size: int = 128,
    dtype: str = "float32",
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    repeats: int = 20,
    warmup: int = 2,
    seed: int = 0,
    extra_calls: dict[str, Callable[[], Any]] | None = None,
    peak_size: int = PEAK_MATMUL_SIZE,
) -> dict[str, Any]:
    """Time the jitted train step with manual and with autodiff gradients, interleaved.

    Returns per mode: the :class:`Timing`, compile seconds, compiled temp/argument/output
    bytes, examples/s, achieved GFLOP/s (a train step counted as 3x the forward
    FLOPs: forward, input gradient, weight gradient) and its fraction of the
    ``matmul_peak`` measured in the same rounds; ``speedup`` = autodiff median /
    manual median; ``xla``: the XLA flags in effect, the CPU and why. ``extra_calls``
    (for example a PyTorch step of the same architecture) are interleaved with the two
    and reported under ``"extra"`` with their ratio to the manual step.
    """
    check_settings(model_name, input_shape, warmup=warmup, repeats=repeats)
    model = models.get_model(model_name, num_classes)
    compiled, args = compile_train_steps(model_name, batch_size=batch_size, dtype=dtype, input_shape=input_shape,
                                         num_classes=num_classes, seed=seed)  # fmt: skip
    calls = {g: (lambda c=c: c.executable(*args)) for g, c in compiled.items()}
    peak_call, peak_flops = matmul_call(peak_size, dtype=dtype)
    calls["matmul"] = peak_call
    timings = time_interleaved({**calls, **(extra_calls or {})}, repeats=repeats, warmup=warmup)
    forward_flops = models.flops(model, input_shape)
    step_flops = 3 * forward_flops * batch_size
    peak = peak_flops / timings["matmul"].median / 1e9
    result: dict[str, Any] = {
        "model": model_name,
        "batch_size": batch_size,
        "dtype": dtype,
        "input_shape": list(input_shape),
        "forward_flops_per_example": forward_flops,
        "repeats": repeats,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla": xla_flags.describe(model=model_name),  # the flags, the CPU (model, instruction set) and why these flags
        "allocator": allocator.describe(),  # large buffers kept in the heap, or page faults on every step
        "matmul_peak": {
            "size": peak_size,
            "timing": asdict(timings["matmul"]),
            "gflops_per_s": peak,
        },
    }
    for g in ("manual", "autodiff"):
        c, t = compiled[g], timings[g]
        result[g] = {
            "timing": asdict(t),
            "median_ms": 1e3 * t.median,
            "spread": t.spread,
            "compile_s": c.compile_s,
            "temp_bytes": c.temp_bytes,
            "argument_bytes": c.argument_bytes,
            "output_bytes": c.output_bytes,
            "examples_per_s": batch_size / t.median,
            "gflops_per_s": step_flops / t.median / 1e9,
            "fraction_of_peak": step_flops / t.median / 1e9 / peak,
        }
    result["speedup"] = timings["autodiff"].median / timings["manual"].median
    result["extra"] = {
        name: {
            "timing": asdict(timings[name]),
            "median_ms": 1e3 * timings[name].median,
            "spread": timings[name].spread,
            "examples_per_s": batch_size / timings[name].median,
            "ratio_to_manual": timings[name].median / timings["manual"].median,
        }
        for name in extra_calls or {}
    }
    return result


class LayerInfo(NamedTuple):
    """One layer of a model at the shapes it sees: per-example input and output shapes,
    the shapes of its parameters (``{"w": (3, 3, 1, 32), "b": (32,)}``) and, for a
    composite layer (a residual block), the plan of its branch."""

    name: str
    kind: str  # the layer's kind: "conv", "dense", "bn", "ln", "relu", "gelu", "res", ...
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    param_shapes: dict[str, tuple[int, ...]]
    branch: tuple[LayerInfo, ...] = ()


def layer_plan(model: models.Model, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Each layer of ``model`` with its kind and shapes (what a twin in another framework needs)."""
    plan, shape = [], tuple(input_shape)
    for name, layer in model.layers:
        out_shape, params, _ = layer.init(np.random.default_rng(0), shape)
        param_shapes = jax.tree.map(lambda v: tuple(np.shape(v)), params)  # nested for a Residual
        branch = tuple(layer_plan(layer.branch, shape)) if layer.branch is not None else ()
        plan.append(LayerInfo(name, layer.kind or name, shape, tuple(out_shape), param_shapes, branch))
        shape = tuple(out_shape)
    return plan


def _layer_calls(model: models.Model, batch_size: int, input_shape, dtype: str, seed: int):
    """For each layer of ``model``: (info, apply, fwd_bwd, args)."""
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    out = []
    for info, (_, layer) in zip(layer_plan(model, input_shape), model.layers):
        _, params, state = layer.init(key, info.input_shape)
        params, state = _cast_floats(params, dtype), (_cast_floats(state, dtype) if state else None)
        x = jnp.asarray(rng.standard_normal((batch_size, *info.input_shape)), dtype)
        ct = jnp.asarray(rng.standard_normal((batch_size, *info.output_shape)), dtype)

        def apply(ops, p, x, layer=layer, state=state):
            return layer.apply(p, x, ops=ops, train=True, rng=key, state=state)[0]

        def fwd_bwd(ops, apply=apply, first=not out):
            def f(p, x, ct):
                if first:  # the model's input: a train step never computes its gradient
                    y, pullback = jax.vjp(lambda p: apply(ops, p, x), p)
                else:
                    y, pullback = jax.vjp(lambda p, x: apply(ops, p, x), p, x)
                return y, pullback(ct)  # y too: the next layer reads it (and XLA must not drop the forward)

            return f

        out.append((info, apply, fwd_bwd, (params, x, ct)))
    return out


def bench_layers(
    model_name: str = "cnn",
    *,
    batch_size: int = 128,
    dtype: str = "float32",
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    repeats: int = 20,
    warmup: int = 2,
    seed: int = 0,
    extra_calls: Mapping[str, Mapping[str, Callable[[], Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Per layer of the model, at its shapes: forward, manual fwd+bwd and autodiff fwd+bwd, interleaved.

    The backward of the first layer computes only its parameters' gradients, as the
    train step does (the input needs none). The loss layer (softmax cross-entropy over
    the logits; mean squared error over the output for a model that reconstructs its
    input) is timed as a last row, named ``"loss"``. ``extra_calls`` maps a layer
    name (as in :func:`layer_plan`, or ``"loss"``) to more calls to interleave with that
    layer's (a PyTorch twin of the layer, say); their medians come back under ``"extra_ms"``.
    """
    check_settings(model_name, input_shape, warmup=warmup, repeats=repeats)
    model = models.get_model(model_name, num_classes)
    extra_calls = extra_calls or {}
    rows = []
    for info, apply, fwd_bwd, (params, x, ct) in _layer_calls(model, batch_size, input_shape, dtype, seed):
        fwd = compile_ahead(lambda p, x, apply=apply: apply(manual, p, x), params, x)
        man = compile_ahead(fwd_bwd(manual), params, x, ct)
        auto = compile_ahead(fwd_bwd(autodiff), params, x, ct)
        calls = {
            "forward": lambda: fwd.executable(params, x),
            "manual": lambda: man.executable(params, x, ct),
            "autodiff": lambda: auto.executable(params, x, ct),
        }
        t = time_interleaved({**calls, **extra_calls.get(info.name, {})}, repeats=repeats, warmup=warmup)
        rows.append(_layer_row(info.name, info.kind, (batch_size, *info.input_shape), t))
    # The loss: the fused softmax cross-entropy backward (or mse_loss's) against autodiff's chain.
    rng = np.random.default_rng(seed)
    if model.objective == "reconstruct":
        kind, out_shape = "mse_loss", (batch_size, *input_shape)
        target = jnp.asarray(rng.standard_normal(out_shape), dtype)
    else:
        kind, out_shape = "softmax_cross_entropy", (batch_size, num_classes)
        target = jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32)
    out = jnp.asarray(rng.standard_normal(out_shape), dtype)
    loss_calls = {}
    fwd = compile_ahead(lambda z: getattr(manual, kind)(z, target), out)
    loss_calls["forward"] = lambda: fwd.executable(out)
    for mode, ops in (("manual", manual), ("autodiff", autodiff)):
        c = compile_ahead(jax.grad(lambda z, ops=ops: getattr(ops, kind)(z, target)), out)
        loss_calls[mode] = lambda c=c: c.executable(out)
    timing = time_interleaved({**loss_calls, **extra_calls.get("loss", {})}, repeats=repeats, warmup=warmup)
    rows.append(_layer_row("loss", kind, out_shape, timing))
    return rows


def _layer_row(name: str, kind: str, shape: tuple[int, ...], t: dict[str, Timing]) -> dict[str, Any]:
    own = ("forward", "manual", "autodiff")
    return {
        "layer": name,
        "kind": kind,
        "input_shape": list(shape),
        "forward_ms": 1e3 * t["forward"].median,
        "manual_fwd_bwd_ms": 1e3 * t["manual"].median,
        "autodiff_fwd_bwd_ms": 1e3 * t["autodiff"].median,
        "manual_spread": t["manual"].spread,
        "speedup": t["autodiff"].median / t["manual"].median,
        "extra_ms": {k: 1e3 * v.median for k, v in t.items() if k not in own},
    }


def format_train_step(result: dict[str, Any]) -> str:
    """A small table of :func:`bench_train_step`'s result."""
    lines = [
        f"train step: model {result['model']}, batch {result['batch_size']}, {result['dtype']}, "
        f"{result['repeats']} interleaved rounds, backend {result['backend']}",
        f"  XLA_FLAGS: {result['xla_flags'] or '(none)'}",
        f"  why: {result['xla']['why']}",
        f"  allocator: {result['allocator']}",
        f"  CPU: {result['xla']['cpu'] or '(unknown)'} ({result['xla']['isa']}); float32 matmul "
        f"{result['matmul_peak']['size']}^3 peak {result['matmul_peak']['gflops_per_s']:.1f} GFLOP/s (same rounds)",
        f"  {'grad':<9} {'median ms':>10} {'IQR %':>6} {'compile s':>10} {'temp MiB':>9} {'ex/s':>8} {'GFLOP/s':>8}"
        f" {'of peak':>8}",
    ]
    for g in ("manual", "autodiff"):
        r = result[g]
        temp = "-" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.1f}"
        lines.append(
            f"  {g:<9} {r['median_ms']:10.2f} {100 * r['spread']:6.1f} {r['compile_s']:10.2f} {temp:>9} "
            f"{r['examples_per_s']:8.0f} {r['gflops_per_s']:8.1f} {100 * r['fraction_of_peak']:7.1f}%"
        )
    for name, r in result.get("extra", {}).items():
        lines.append(
            f"  {name:<9} {r['median_ms']:10.2f} {100 * r['spread']:6.1f} {'-':>10} {'-':>9} {r['examples_per_s']:8.0f}"
        )
    lines.append(f"  speedup (autodiff median / manual median): {result['speedup']:.2f}x")
    for name, r in result.get("extra", {}).items():
        lines.append(f"  {name} median / manual median: {r['ratio_to_manual']:.2f}x")
    return "\n".join(lines)


def format_layers(rows: list[dict[str, Any]]) -> str:
    """A table of :func:`bench_layers`' rows, with a column per extra call (PyTorch, say) and a total."""
    extras = list(dict.fromkeys(k for r in rows for k in r.get("extra_ms", {})))
    lines = [
        "per layer (ms, medians): forward alone, forward+backward manual and autodiff"
        + (f", and {', '.join(extras)}" if extras else ""),
        f"  {'layer':<8} {'kind':<22} {'input':<18} {'fwd':>7} {'manual':>8} {'autodiff':>9} {'speedup':>8}"
        + "".join(f" {k:>9}" for k in extras),
    ]
    for r in rows:
        shape = "x".join(str(s) for s in r["input_shape"])
        lines.append(
            f"  {r['layer']:<8} {r['kind']:<22} {shape:<18} {r['forward_ms']:7.2f} {r['manual_fwd_bwd_ms']:8.2f} "
            f"{r['autodiff_fwd_bwd_ms']:9.2f} {r['speedup']:7.2f}x"
            + "".join(f" {r.get('extra_ms', {}).get(k, float('nan')):9.2f}" for k in extras)
        )
    total = {k: sum(r[f"{k}_fwd_bwd_ms"] for r in rows) for k in ("manual", "autodiff")}
    lines.append(
        f"  {'sum':<8} {'':<22} {'':<18} {sum(r['forward_ms'] for r in rows):7.2f} {total['manual']:8.2f} "
        f"{total['autodiff']:9.2f} {total['autodiff'] / total['manual']:7.2f}x"
        + "".join(f" {sum(r.get('extra_ms', {}).get(k, 0.0) for r in rows):9.2f}" for k in extras)
    )
    return "\n".join(lines)

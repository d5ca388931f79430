"""Train-step throughput: manual VJPs vs autodiff vs PyTorch eager, per step and per layer, one process.

Everything compared in one table is timed in ONE process, interleaved, after warm-up
(:func:`jaxbp.bench.time_interleaved`): the jitted train step with manual VJPs, with
autodiff, a float32 matmul (the machine's peak, measured in the same rounds) and, when
PyTorch happens to be importable, a PyTorch eager train step of the same architecture
(SGD with momentum, float32, NCHW, the same thread count). PyTorch is not a dependency
of jaxbp.

Per layer (forward + backward at the shapes the layer sees in the model; the first layer
computes no input gradient, as in a train step), jaxbp's manual and autodiff times come
with PyTorch's for the same layer in the same rounds. The accounting then splits each
step into its layers and the time outside them: the optimizer update (timed alone,
jaxbp's jitted optax update and PyTorch's ``opt.step()``) and the rest (glue, copies,
what the layers lose or gain from being fused with their neighbours in one program).

XLA's CPU flags change convolution timings a lot. This process runs under the flags the
``jaxbp`` command sets when XLA_FLAGS is unset (:data:`jaxbp.xla_flags.CPU_XLA_FLAGS`,
chosen for this CPU's instruction set); a second process repeats the train-step table,
PyTorch included, under XLA's own defaults (``XLA_FLAGS=""``). ``--xla-sweep`` compiles
the steps under every flag set of :data:`XLA_FLAG_SETS` in one more process (started
under XLA's defaults; each set applied to its own compilations as compile options) and
times them all interleaved: the measurement the flags per instruction set in
:mod:`jaxbp.xla_flags` are chosen by. Every ratio is taken within one process, never across.

Every process also sets the allocator policy of the ``jaxbp`` command (:func:`jaxbp.allocator.set_policy`:
large blocks kept in glibc's heap, which PyTorch's steps in the same process get too, and
jaxbp's steps run on the calling thread); ``--glibc-defaults`` leaves glibc's and JAX's
defaults instead (a Python user who sets nothing), under which both pay page faults for
their large buffers on every step.

    python experiments/throughput.py                      # writes experiments/results/throughput.json
    python experiments/throughput.py --model cnn-bn --json experiments/results/throughput_cnn_bn.json
    python experiments/throughput.py --xla-sweep          # also the XLA flag sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

RESULTS = Path(__file__).parent / "results"
_YNN = "--xla_cpu_experimental_ynn_fusion_type="
_YNN_ALL = _YNN + "individual_convolution,individual_dot,eltwise,reduce"
# XLA:CPU flag sets (jaxlib 0.10): which ops go to YNNPACK / XNNPACK / oneDNN kernels, the
# vector width XLA's own loops are compiled for (256 bits unless told; AVX-512 has 512),
# how the program is scheduled, and whether Eigen's matmuls use the thread pool.
XLA_FLAG_SETS = {
    "default": "",
    "ynn-none": _YNN,
    "ynn-conv-dot": _YNN + "individual_convolution,individual_dot",
    "ynn-all": _YNN_ALL,
    "ynn-no-reduce": _YNN + "individual_convolution,individual_dot,eltwise",
    "ynn-no-conv": _YNN + "individual_dot,eltwise,reduce",
    "ynn-eltwise-reduce": _YNN + "eltwise,reduce",
    "ynn-dot-reduce": _YNN + "individual_dot,reduce",
    "xnn-conv-dot": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
    "onednn-dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "default-vec512": "--xla_cpu_prefer_vector_width=512",
    "ynn-all-vec512": _YNN_ALL + " --xla_cpu_prefer_vector_width=512",
    "ynn-all-concurrency": _YNN_ALL + " --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "ynn-all-memory": _YNN_ALL + " --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "ynn-all-fast-runtime": _YNN_ALL + " --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "ynn-all-eigen-1-thread": _YNN_ALL + " --xla_cpu_multi_thread_eigen=false",
}


# ------------------------------------------------------------------ the PyTorch twin


def _nchw(shape):
    """A per-example NHWC shape in PyTorch's order: (H, W, C) -> (C, H, W); flat shapes as they are."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


# The memory layout each layer kind of the twin wants a 4-D tensor in: PyTorch's convolutions,
# pools and batch norm take NCHW; layer norm and dense layers act on the last axis, so over the
# channels they take NHWC (ConvNeXt's PyTorch code permutes around them the same way); the
# element-wise layers take either.
_NHWC_KINDS = ("ln", "dense")
_ANY_LAYOUT_KINDS = ("relu", "gelu", "global_avg_pool", "res")


def _same_padding(size_in: int, size_out: int, stride: int, kernel: int) -> tuple[int, int]:
    """(low, high) padding that XLA's SAME (or VALID, where it is 0) gives along one axis."""
    total = max((size_out - 1) * stride + kernel - size_in, 0)
    return total // 2, total - total // 2


def _torch_conv(info, torch):
    """A Conv2d (with a ZeroPad2d in front where XLA pads asymmetrically) of a jaxbp conv layer:
    stride, padding and groups read off its shapes and weights."""
    nn = torch.nn
    kh, kw, cin_per_group, cout = info.param_shapes["w"]
    (hi, wi, cin), (ho, wo, _) = info.input_shape, info.output_shape
    stride = max(1, round(hi / ho))
    (top, bottom), (left, right) = _same_padding(hi, ho, stride, kh), _same_padding(wi, wo, stride, kw)
    if (hi + top + bottom - kh) // stride + 1 != ho:
        raise ValueError(f"no PyTorch twin for {info.name}: stride {stride} does not give {info.output_shape}")
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, groups=cin // cin_per_group,
                     padding=(top, left) if (top, left) == (bottom, right) else 0)  # fmt: skip
    return conv if (top, left) == (bottom, right) else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)


def _torch_conv_transpose(info, torch):
    kh, _, cin, cout = info.param_shapes["w"]
    hi, ho = info.input_shape[0], info.output_shape[0]
    stride = ho // hi
    padding = ((hi - 1) * stride + kh - ho) // 2  # out = (in - 1) stride - 2 padding + kernel
    return torch.nn.ConvTranspose2d(cin, cout, kh, stride=stride, padding=padding)


def torch_layers(plan, torch, layout: str = "nchw") -> tuple[list, str]:
    """PyTorch modules for a jaxbp layer plan (:func:`jaxbp.bench.layer_plan`), and the layout
    ("nchw" or "nhwc") of their 4-D output: a 4-D input arrives in ``layout``, and a permute is
    put in wherever a layer wants the other one (:data:`_NHWC_KINDS`)."""
    nn = torch.nn
    to = {"nhwc": Permute(torch, 0, 2, 3, 1), "nchw": Permute(torch, 0, 3, 1, 2)}
    out = []
    for info in plan:
        if len(info.input_shape) == 3 and info.kind not in _ANY_LAYOUT_KINDS:
            want = "nhwc" if info.kind in _NHWC_KINDS else "nchw"
            if want != layout:
                out.append(to[want])
                layout = want
        if info.kind == "conv":
            out.append(_torch_conv(info, torch))
        elif info.kind == "convT":
            out.append(_torch_conv_transpose(info, torch))
        elif info.kind == "dense":
            out.append(nn.Linear(*info.param_shapes["w"]))
        elif info.kind == "bn":
            out.append(nn.BatchNorm2d(info.param_shapes["gamma"][0], momentum=0.1, eps=1e-5))
        elif info.kind == "ln":
            out.append(nn.LayerNorm(info.param_shapes["gamma"][0], eps=1e-6))
        elif info.kind == "relu":
            out.append(nn.ReLU())
        elif info.kind == "gelu":
            out.append(nn.GELU())
        elif info.kind == "max_pool2d":
            out.append(nn.MaxPool2d(info.input_shape[0] // info.output_shape[0]))
        elif info.kind == "flatten":
            out.append(nn.Flatten())
        elif info.kind == "global_avg_pool":
            out.append(GlobalAvgPool(torch, layout))
        elif info.kind == "res":
            branch, branch_layout = torch_layers(info.branch, torch, layout)
            if branch_layout != layout:
                branch.append(to[layout])
            proj = None
            if "proj" in info.param_shapes:  # a strided 1x1 convolution: NCHW
                if layout != "nchw":
                    raise ValueError(f"no PyTorch twin for {info.name}: a projection on NHWC")
                proj = _torch_conv(info._replace(param_shapes=info.param_shapes["proj"]), torch)
            out.append(Residual(torch, nn.Sequential(*branch), proj))
        else:
            raise ValueError(f"no PyTorch twin for layer {info.name} ({info.kind})")
    return out, layout


def Permute(torch, *dims):
    class _Permute(torch.nn.Module):
        def forward(self, x):
            return x.permute(*dims)

    return _Permute()


def GlobalAvgPool(torch, layout: str):
    class _GlobalAvgPool(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3) if layout == "nchw" else (1, 2))

    return _GlobalAvgPool()


def Residual(torch, branch, proj):
    class _Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.branch, self.proj = branch, proj

        def forward(self, x):
            return (x if self.proj is None else self.proj(x)) + self.branch(x)

    return _Residual()


def torch_model(plan, torch):
    """The twin of a whole plan, NCHW in and out."""
    modules, layout = torch_layers(plan, torch)
    if layout == "nhwc" and len(plan[-1].output_shape) == 3:
        modules.append(Permute(torch, 0, 3, 1, 2))
    return torch.nn.Sequential(*modules)


def import_torch():
    """PyTorch set to this machine's thread count, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def torch_loss(torch, objective: str):
    """The PyTorch loss of a jaxbp model's objective (:attr:`jaxbp.models.Model.objective`):
    cross-entropy of class scores against labels, or mean squared error against the input."""
    return torch.nn.functional.mse_loss if objective == "reconstruct" else torch.nn.functional.cross_entropy


def pytorch_step(model_name: str, batch_size: int, seed: int = 0):
    """(a zero-argument PyTorch eager train step of the model, its optimizer step alone), or None."""
    from jaxbp import bench, models

    torch = import_torch()
    if torch is None:
        return None
    torch.manual_seed(seed)
    jax_model = models.get_model(model_name, 10)
    model = torch_model(bench.layer_plan(jax_model, (28, 28, 1)), torch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 1, 28, 28)
    target = x if jax_model.objective == "reconstruct" else torch.randint(0, 10, (batch_size,))
    loss_fn = torch_loss(torch, jax_model.objective)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # every parameter has a gradient and a momentum buffer: opt.step() alone is a full update
    return step, opt.step


def pytorch_layer_calls(model_name: str, batch_size: int, seed: int = 0):
    """{layer name: {"pytorch": forward + backward of that layer's twin}} (and "loss"), or {}."""
    from jaxbp import bench, models

    torch = import_torch()
    if torch is None:
        return {}
    torch.manual_seed(seed)
    jax_model = models.get_model(model_name, 10)
    plan = bench.layer_plan(jax_model, (28, 28, 1))
    calls = {}
    for i, info in enumerate(plan):
        module = torch_model([info], torch)
        x = torch.randn(batch_size, *_nchw(info.input_shape), requires_grad=i > 0)  # no dx for the input
        ct = torch.randn(batch_size, *_nchw(info.output_shape))

        def call(module=module, x=x, ct=ct):
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(ct)

        calls[info.name] = {"pytorch": call}
    reconstruct = jax_model.objective == "reconstruct"
    logits = torch.randn(batch_size, *((1, 28, 28) if reconstruct else (10,)), requires_grad=True)
    labels = torch.randn(batch_size, 1, 28, 28) if reconstruct else torch.randint(0, 10, (batch_size,))
    loss = torch_loss(torch, jax_model.objective)

    def loss_call():
        logits.grad = None
        loss(logits, labels).backward()

    calls["loss"] = {"pytorch": loss_call}
    return calls


# ------------------------------------------------------------------ measurements


def update_timing(model_name: str, torch_update, repeats: int, warmup: int) -> dict:
    """The optimizer update alone (SGD with momentum): jaxbp's jitted optax update, and PyTorch's."""
    import jax
    import optax

    from jaxbp import bench, models

    _, params, _ = models.get_model(model_name, 10).init(jax.random.key(0), (28, 28, 1))
    optimizer = optax.sgd(0.01, momentum=0.9)
    opt_state = optimizer.init(params)

    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    compiled = bench.compile_ahead(update, params, opt_state, params).executable
    calls = {"jaxbp": lambda: compiled(params, opt_state, params)}
    if torch_update is not None:
        calls["pytorch"] = torch_update
    return {k: 1e3 * t.median for k, t in bench.time_interleaved(calls, repeats=repeats, warmup=warmup).items()}


def accounting(step: dict, layers: list[dict], update_ms: dict) -> dict:
    """Each step's median split into the sum of its layers, the optimizer update and the rest."""
    out = {}
    columns = {"manual": "manual_fwd_bwd_ms", "autodiff": "autodiff_fwd_bwd_ms"}
    step_ms = {"manual": step["manual"]["median_ms"], "autodiff": step["autodiff"]["median_ms"]}
    if "pytorch" in step.get("extra", {}):
        step_ms["pytorch"] = step["extra"]["pytorch"]["median_ms"]
    for who, ms in step_ms.items():
        layer_ms = sum(r[columns[who]] if who in columns else r["extra_ms"].get("pytorch", 0.0) for r in layers)
        upd = update_ms.get("pytorch" if who == "pytorch" else "jaxbp", 0.0)
        out[who] = {"step_ms": ms, "layers_ms": layer_ms, "update_ms": upd, "rest_ms": ms - layer_ms - upd}
    return out


def format_accounting(acc: dict) -> str:
    lines = ["where the step's time goes (ms, medians): the layers' fwd+bwd, the update, the rest"]
    lines.append(f"  {'':<9} {'step':>8} {'layers':>8} {'update':>8} {'rest':>8}")
    for who, a in acc.items():
        lines.append(f"  {who:<9} {a['step_ms']:8.2f} {a['layers_ms']:8.2f} {a['update_ms']:8.2f} {a['rest_ms']:8.2f}")
    return "\n".join(lines)


def traced_under(flags: str):
    """``XLA_FLAGS`` set to ``flags`` for the tracing inside (a context manager): the layers read
    it to pick the formulation that suits the kernels XLA will choose (:mod:`jaxbp.layers.conv`),
    so steps compiled with these flags as options are traced as in a process started under them.
    XLA reads the process's own ``XLA_FLAGS`` first (:func:`jaxbp.xla_flags.read_flags_now`), so
    that ``flags`` never become the process's."""
    from jaxbp import xla_flags

    xla_flags.read_flags_now()
    return mock.patch.dict(os.environ, {"XLA_FLAGS": flags})


def sweep(args) -> dict:
    """Every flag set of :data:`XLA_FLAG_SETS`, applied per compilation (so all in this one
    process, started under XLA's defaults), the manual and autodiff steps timed interleaved."""
    from jaxbp import bench, xla_flags

    calls, compiled = {}, {}
    grads = tuple(args.sweep_grads.split(","))
    for name, flags in XLA_FLAG_SETS.items():
        if args.sweep_sets and name not in args.sweep_sets.split(","):
            continue
        try:
            with traced_under(flags):
                steps, step_args = bench.compile_train_steps(
                    args.model, batch_size=args.batch_size, compiler_options=bench.flag_options(flags), grads=grads
                )
        except Exception as err:  # noqa: BLE001 - a flag this jaxlib does not know
            compiled[name] = {"flags": flags, "error": str(err).splitlines()[0]}
            continue
        for g, c in steps.items():
            calls[f"{name}/{g}"] = lambda c=c, a=step_args: c.executable(*a)
        compiled[name] = {"flags": flags, "temp_bytes": steps["manual"].temp_bytes}
    timings = bench.time_interleaved(calls, repeats=args.repeats, warmup=args.warmup)
    for name, entry in compiled.items():
        for g in grads if "error" not in entry else ():
            t = timings[f"{name}/{g}"]
            entry[g] = {"median_ms": 1e3 * t.median, "spread": t.spread, "timing": dataclasses.asdict(t)}
    return {"model": args.model, "batch_size": args.batch_size, "repeats": args.repeats,
            "cpu": xla_flags.cpu_model(), "isa": xla_flags.CPU_ISA, "flag_sets": compiled}  # fmt: skip


def format_sweep(result: dict) -> str:
    sets = result["flag_sets"]
    ok = {k: v for k, v in sets.items() if "error" not in v}
    ref = ok.get("default", next(iter(ok.values()), None))
    lines = [f"  {'flag set':<16} {'manual ms':>10} {'IQR %':>6} {'autodiff ms':>12} {'vs default':>10}  flags"]
    for name, v in sets.items():
        if "error" in v:
            lines.append(f"  {name:<16} failed: {v['error']}")
            continue
        m, a = v["manual"], v.get("autodiff", {"median_ms": float("nan")})
        lines.append(
            f"  {name:<16} {m['median_ms']:10.2f} {100 * m['spread']:6.1f} {a['median_ms']:12.2f} "
            f"{ref['manual']['median_ms'] / m['median_ms']:9.3f}x  {v['flags'] or '(none)'}"
        )
    return "\n".join(lines)


def pair_timing(model_name: str, batch_size: int, repeats: int, warmup: int, torch_step) -> dict:
    """The manual step against PyTorch's (and the matmul peak), interleaved WITHOUT the autodiff
    step: autodiff's 135 MiB of temp buffers, mapped and unmapped each call, slow down whichever
    call follows it, so in the full table the manual step's times split in two groups."""
    from jaxbp import bench

    steps, step_args = bench.compile_train_steps(model_name, batch_size=batch_size, grads=("manual",))
    peak_call, peak_flops = bench.matmul_call()
    calls = {"manual": lambda: steps["manual"].executable(*step_args), "matmul": peak_call}
    if torch_step is not None:
        calls["pytorch"] = torch_step
    t = bench.time_interleaved(calls, repeats=repeats, warmup=warmup)
    out = {k: {"median_ms": 1e3 * v.median, "spread": v.spread, "timing": dataclasses.asdict(v)} for k, v in t.items()}
    out["matmul"]["gflops_per_s"] = peak_flops / t["matmul"].median / 1e9
    if "pytorch" in t:
        out["pytorch_median_over_manual_median"] = t["pytorch"].median / t["manual"].median
    return out


def format_pair(pair: dict) -> str:
    m = pair["manual"]
    line = f"manual vs PyTorch without autodiff in the rounds: manual {m['median_ms']:.2f} ms (IQR {100 * m['spread']:.0f} %)"
    if "pytorch" in pair:
        p = pair["pytorch"]
        line += f", PyTorch {p['median_ms']:.2f} ms (IQR {100 * p['spread']:.0f} %): {pair['pytorch_median_over_manual_median']:.2f}x"
    return line + f"; matmul {pair['matmul']['gflops_per_s']:.1f} GFLOP/s"


def measure(args) -> dict:
    import jax

    from jaxbp import allocator, bench, xla_flags

    extra, torch = {}, None
    twin = None if args.no_torch else pytorch_step(args.model, args.batch_size)
    if twin is not None:
        import torch

        extra["pytorch"] = twin[0]
    t0 = time.perf_counter()
    result = {
        "train_step": bench.bench_train_step(
            args.model, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, extra_calls=extra
        ),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu": xla_flags.cpu_model(),
            "isa": xla_flags.CPU_ISA,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "pytorch": None if torch is None else torch.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "allocator": allocator.describe(),
            "load_average_at_start": os.getloadavg(),
        },
    }
    print(bench.format_train_step(result["train_step"]), flush=True)
    result["manual_vs_pytorch"] = pair_timing(
        args.model, args.batch_size, args.repeats, args.warmup, extra.get("pytorch")
    )
    print(format_pair(result["manual_vs_pytorch"]), flush=True)
    if not args.no_layers:
        torch_calls = {} if args.no_torch else pytorch_layer_calls(args.model, args.batch_size)
        result["layers"] = bench.bench_layers(
            args.model, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, extra_calls=torch_calls
        )
        print(bench.format_layers(result["layers"]), flush=True)
        result["update_ms"] = update_timing(args.model, None if twin is None else twin[1], args.repeats, args.warmup)
        result["accounting"] = accounting(result["train_step"], result["layers"], result["update_ms"])
        print(format_accounting(result["accounting"]), flush=True)
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-default-flags", action="store_true", help="skip the second process under XLA's defaults")
    parser.add_argument("--xla-sweep", action="store_true", help="also time the JAX steps under each XLA flag set")
    parser.add_argument("--sweep-only", action="store_true", help="the flag sweep alone (no step or layer tables)")
    parser.add_argument(
        "--sweep-sets", default="", help="comma-separated names of XLA_FLAG_SETS to sweep (default all)"
    )
    parser.add_argument("--sweep-grads", default="manual,autodiff", help="the steps to sweep: manual,autodiff")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's allocator and JAX's dispatch at their defaults in every process (a Python user who "
        "sets nothing), not the policy the jaxbp command sets (jaxbp.allocator.set_policy)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sweep-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.glibc_defaults:  # as the jaxbp command, in this and every child process: PyTorch's steps too
        from jaxbp import allocator

        allocator.set_policy()

    if args.sweep_child:  # every flag set in this one process: JSON on stdout's last line
        print(json.dumps(sweep(args)))
        return

    if args.child:  # one flag set: JSON on stdout's last line
        args.no_layers = True
        print(json.dumps(measure(args)))
        return

    from jaxbp import bench, xla_flags

    xla_flags.set_default_xla_flags(model=args.model)  # what `jaxbp bench --model M` runs under, before JAX starts
    if args.sweep_only:
        args.xla_sweep, args.no_default_flags = True, True
    result = {} if args.sweep_only else measure(args)

    def child(flags: str, torch: bool, sweep: bool = False) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--sweep-child" if sweep else "--child",
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--sweep-sets",
            args.sweep_sets,
            "--sweep-grads",
            args.sweep_grads,
        ]
        cmd += ([] if torch else ["--no-torch"]) + (["--glibc-defaults"] if args.glibc_defaults else [])  # fmt: skip
        proc = subprocess.run(cmd, check=False, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"flags": flags, "error": proc.stderr.strip().splitlines()[-1:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    if not args.no_default_flags:
        print("\nthe same under XLA's default flags (XLA_FLAGS=''), in a second process:", flush=True)
        default = child("", torch=not args.no_torch)
        result["xla_default_flags"] = default
        if "error" in default:
            print(default["error"], flush=True)
        else:
            print(bench.format_train_step(default["train_step"]), flush=True)
            print(format_pair(default["manual_vs_pytorch"]), flush=True)
    if args.xla_sweep:
        print("\nXLA flag sweep: every flag set compiled in one process started under XLA's defaults, interleaved:")
        out = child("", torch=False, sweep=True)
        result["xla_sweep"] = out
        if "error" in out:
            print(f"failed: {out['error']}")
        else:
            print(format_sweep(out), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

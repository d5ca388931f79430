"""Train-step throughput: manual VJPs vs autodiff (and PyTorch eager when installed), one process.

Everything compared in one table is timed in ONE process, interleaved, after warm-up
(:func:`jaxbp.bench.time_interleaved`): the jitted train step with manual VJPs, with
autodiff, and, when PyTorch happens to be importable, a PyTorch eager train step of
the same architecture (SGD with momentum, float32, NCHW, the same thread count).
PyTorch is not a dependency of jaxbp.

XLA's CPU flags change convolution timings a lot, and they can only be set before
JAX starts. This process runs under the flags the ``jaxbp`` command sets when XLA_FLAGS
is unset (:data:`jaxbp.cli.CPU_XLA_FLAGS`); a second process repeats the train-step
table, PyTorch included, under XLA's own defaults (``XLA_FLAGS=""``), and
``--xla-sweep`` re-runs the JAX part in a subprocess per flag set. Every ratio is
taken within one process, never across.

    python experiments/throughput.py                      # writes experiments/results/throughput.json
    python experiments/throughput.py --xla-sweep          # also the XLA flag sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# Library fusions of XLA:CPU (jaxlib 0.10): which ops go to YNNPACK / XNNPACK kernels.
XLA_FLAG_SETS = {
    "default": "",
    "ynn-none": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn-conv-dot": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot",
    "ynn-all": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot,eltwise,reduce",
    "xnn-conv-dot": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
}


def pytorch_step(batch_size: int, seed: int = 0):
    """A zero-argument PyTorch eager train step of the ``cnn`` architecture, or None."""
    try:
        import torch
    except ImportError:
        return None, None
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step, torch.__version__


def measure(args) -> dict:
    import jax

    from jaxbp import bench

    extra, torch_version = {}, None
    if not args.no_torch:
        step, torch_version = pytorch_step(args.batch_size)
        if step is not None:
            extra["pytorch"] = step
    t0 = time.perf_counter()
    result = {
        "train_step": bench.bench_train_step(
            args.model, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, extra_calls=extra
        ),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "pytorch": torch_version,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_at_start": os.getloadavg(),
        },
    }
    print(bench.format_train_step(result["train_step"]), flush=True)
    if not args.no_layers:
        result["layers"] = bench.bench_layers(args.model, batch_size=args.batch_size, repeats=args.repeats)
        print(bench.format_layers(result["layers"]), flush=True)
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
    parser.add_argument("--xla-sweep", action="store_true", help="also time the JAX steps under each XLA flag set")
    parser.add_argument("--json", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one flag set: JSON on stdout's last line
        args.no_layers = True
        print(json.dumps(measure(args)))
        return

    from jaxbp import bench, cli

    cli.set_default_xla_flags()  # what `jaxbp bench` runs under, before JAX starts
    result = measure(args)

    def child(flags: str, torch: bool) -> dict:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--batch-size", str(args.batch_size),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)] + ([] if torch else ["--no-torch"])  # fmt: skip
        proc = subprocess.run(cmd, check=False, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"flags": flags, "error": proc.stderr.strip().splitlines()[-1:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    print("\nthe same under XLA's default flags (XLA_FLAGS=''), in a second process:", flush=True)
    default = child("", torch=not args.no_torch)
    result["xla_default_flags"] = default
    print(bench.format_train_step(default["train_step"]) if "error" not in default else default["error"], flush=True)
    if args.xla_sweep:
        result["xla_sweep"] = {}
        for name, flags in XLA_FLAG_SETS.items():
            out = child(flags, torch=False)
            if "error" in out:
                result["xla_sweep"][name] = out
                print(f"XLA flags {name!r}: failed: {out['error']}")
                continue
            child_step = out["train_step"]
            result["xla_sweep"][name] = {
                "flags": flags,
                "manual_ms": child_step["manual"]["median_ms"],
                "autodiff_ms": child_step["autodiff"]["median_ms"],
                "speedup": child_step["speedup"],
            }
            print(f"XLA flags {name!r} ({flags or 'none'}): manual {child_step['manual']['median_ms']:.1f} ms, "
                  f"autodiff {child_step['autodiff']['median_ms']:.1f} ms, speedup {child_step['speedup']:.2f}x")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

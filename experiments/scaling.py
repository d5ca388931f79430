"""Cost as work grows: examples/s of the train step at batch 16 ... 512, manual vs autodiff vs PyTorch.

For each batch size, in ONE process, interleaved after warm-up (:func:`jaxbp.bench.bench_train_step`):
the jitted ``cnn`` train step with manual VJPs and with autodiff, and, when PyTorch is
importable, the PyTorch eager step of the same architecture; plus the compiled temp
memory of the two JAX steps (``memory_analysis()``); then the manual and PyTorch steps again,
interleaved without the autodiff step, which slows down whichever call follows it. Runs under
the XLA flags the ``jaxbp`` command sets (:mod:`jaxbp.xla_flags`) and its allocator policy
(:mod:`jaxbp.allocator`), PyTorch's steps too. Writes ``experiments/results/scaling.json`` and
``scaling.png`` (examples/s and temp memory against the batch size, log axes).

    python experiments/scaling.py                  # ~3 min on 2 cores
    python experiments/scaling.py --batches 16,64 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def measure(model: str, batches: list[int], repeats: int, warmup: int, torch: bool) -> dict:
    import jax
    from throughput import pair_timing, pytorch_step

    from jaxbp import bench, xla_flags

    rows = []
    for batch in batches:
        twin = pytorch_step(model, batch) if torch else None
        extra = {} if twin is None else {"pytorch": twin[0]}
        r = bench.bench_train_step(model, batch_size=batch, repeats=repeats, warmup=warmup, extra_calls=extra)
        row = {
            "batch_size": batch,
            "matmul_gflops_per_s": r["matmul_peak"]["gflops_per_s"],
            **{
                g: {
                    "median_ms": r[g]["median_ms"],
                    "spread": r[g]["spread"],
                    "examples_per_s": r[g]["examples_per_s"],
                    "gflops_per_s": r[g]["gflops_per_s"],
                    "temp_bytes": r[g]["temp_bytes"],
                    "compile_s": r[g]["compile_s"],
                }
                for g in ("manual", "autodiff")
            },
        }
        if "pytorch" in r["extra"]:
            p = r["extra"]["pytorch"]
            row["pytorch"] = {"median_ms": p["median_ms"], "spread": p["spread"], "examples_per_s": p["examples_per_s"]}
        # The manual step against PyTorch's without the autodiff step in the rounds (it slows
        # down whichever call follows it): what a training run of either sees.
        pair = pair_timing(model, batch, repeats, warmup, extra.get("pytorch"))
        row["without_autodiff"] = {
            g: {"median_ms": v["median_ms"], "spread": v["spread"], "examples_per_s": 1e3 * batch / v["median_ms"]}
            for g, v in pair.items()
            if g in ("manual", "pytorch")
        }
        rows.append(row)
        cells = [f"{g} {row[g]['examples_per_s']:7.0f} ex/s" for g in ("manual", "autodiff", "pytorch") if g in row]
        cells += [f"{g} alone {v['examples_per_s']:7.0f} ex/s" for g, v in row["without_autodiff"].items()]
        temps = [f"{g} {row[g]['temp_bytes'] / 2**20:.1f} MiB" for g in ("manual", "autodiff")]
        print(f"batch {batch:4d}: {', '.join(cells)}; temp {', '.join(temps)}", flush=True)
    torch_version = None
    if torch:
        try:
            import torch as torch_module

            torch_version = torch_module.__version__
        except ImportError:
            pass
    return {
        "model": model,
        "repeats": repeats,
        "rows": rows,
        "machine": {
            "cpu": xla_flags.cpu_model(),
            "isa": xla_flags.CPU_ISA,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "pytorch": torch_version,
            "xla": xla_flags.describe(),
            "load_average_at_start": os.getloadavg(),
        },
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = [r["batch_size"] for r in rows]
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"manual": ("C0", "o", "manual VJPs"), "autodiff": ("C1", "s", "autodiff"), "pytorch": ("C2", "^", "")}
    torch_label = f"PyTorch {result['machine']['pytorch']} eager"
    for who, (color, marker, label) in styles.items():
        if who not in rows[0]:
            continue
        label = (label or torch_label) + (", all three in the rounds" if who != "autodiff" else "")
        dashed = who != "autodiff"
        ax.plot(batches, [r[who]["examples_per_s"] for r in rows], marker=marker, color=color, label=label,
                linestyle="--" if dashed else "-", alpha=0.5 if dashed else 1.0)  # fmt: skip
        if who in rows[0].get("without_autodiff", {}):
            ax.plot(batches, [r["without_autodiff"][who]["examples_per_s"] for r in rows], marker=marker,
                    color=color, label=(styles[who][2] or torch_label) + ", without autodiff")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("examples / s (median of interleaved rounds)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{result['model']} train step, float32")
    for who in ("manual", "autodiff"):
        color, marker, label = styles[who]
        mem.plot(batches, [r[who]["temp_bytes"] / 2**20 for r in rows], marker=marker, color=color, label=label)
    mem.set_xscale("log", base=2)
    mem.set_yscale("log")
    mem.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    mem.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    mem.set_xticks(batches, [str(b) for b in batches])
    mem.set_xlabel("batch size")
    mem.set_ylabel("compiled temp memory (MiB)")
    mem.grid(alpha=0.3, which="both")
    mem.legend()
    mem.set_title("XLA temp buffers of the jitted step")
    m = result["machine"]
    fig.suptitle(f"{m['cpu']} ({m['isa']}), {m['cpus']} CPUs, jax {m['jax']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batches", default="16,32,64,128,256,512")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling", help="writes OUT.json and OUT.png")
    args = parser.parse_args()

    from jaxbp import allocator, xla_flags

    allocator.set_policy()  # what `jaxbp bench` runs under (PyTorch's steps get it too)
    xla_flags.set_default_xla_flags()  # before JAX starts
    batches = [int(b) for b in args.batches.split(",")]
    result = measure(args.model, batches, args.repeats, args.warmup, torch=not args.no_torch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

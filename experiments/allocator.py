"""The allocator policy of the ``jaxbp`` command (:mod:`jaxbp.allocator`) against glibc's defaults.

An allocator policy holds for a whole process, so policies cannot be interleaved in one:
each round starts one process per policy, in alternating order, and each process times
``--steps`` calls of a jitted manual train step (after warm-up), counting the minor page
faults they take (``getrusage``). The table gives, per model, XLA flags, batch size and
policy, the median over the rounds of each process's median step time, the range of
those, and the page faults per step.

The policies (:data:`POLICIES`): glibc's defaults; jaxbp's heap thresholds; those and one
malloc arena for every thread; those and CPU computations run on the calling thread
(``jax_cpu_enable_async_dispatch`` off), which allocates a step's buffers from the main
arena instead of a worker thread's (whose heaps hold 64 MiB at most); and that dispatch
alone (glibc's defaults otherwise: one line of a library user's script).
``--flags command`` runs under the XLA flags the ``jaxbp`` command sets for the model,
``--flags xla-defaults`` under XLA's own (``XLA_FLAGS=""``).

    python experiments/allocator.py                      # writes experiments/results/allocator.json (~7 min)
    python experiments/allocator.py --batches 128 --rounds 3
    # experiments/results/allocator_dispatch_avx2*.json (~35 min in all):
    python experiments/allocator.py --models cnn-bn,resnet,cnn,autoencoder --batches 128 \
        --flags xla-defaults,command --rounds 3 --steps 30 --json experiments/results/allocator_dispatch_avx2.json
    python experiments/allocator.py --models convnext --batches 128 --flags xla-defaults --rounds 3 --steps 20 \
        --json experiments/results/allocator_dispatch_avx2_convnext.json
    python experiments/allocator.py --models resnet,cnn-bn --batches 128 --flags command \
        --policies jaxbp,jaxbp-sync --rounds 7 --steps 30 --json experiments/results/allocator_dispatch_avx2_command_flags.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# jaxbp-one-arena: the policy plus one malloc arena for all threads (M_ARENA_MAX = 1), the
# variant that also keeps blocks larger than a thread arena's 64 MiB heaps in the heap;
# jaxbp-sync: the policy plus computations run on the calling thread (no async dispatch);
# sync: that dispatch alone, glibc's defaults otherwise
POLICIES = ("glibc-defaults", "jaxbp", "jaxbp-one-arena", "jaxbp-sync", "sync")
FLAGS = ("command", "xla-defaults")


def child(policy: str, model: str, flags: str, batch: int, steps: int) -> dict:
    """Time the manual step of ``model`` in this process under ``policy`` and ``flags``."""
    import resource
    import time

    from jaxbp import allocator, xla_flags

    if policy.startswith("jaxbp") and not allocator.keep_blocks_in_heap():
        raise SystemExit("the allocator policy could not be set here (not glibc, or MALLOC_* set)")
    if policy == "jaxbp-one-arena":
        import ctypes

        assert ctypes.CDLL(None).mallopt(-8, 1) == 1  # M_ARENA_MAX
    if flags == "xla-defaults":
        os.environ["XLA_FLAGS"] = ""
    xla_flags.set_default_xla_flags(model=model)
    if policy.endswith("sync") and not allocator.run_on_calling_thread():  # jaxbp-sync: the command's set_policy
        raise SystemExit("the dispatch could not be set here (JAX_CPU_ENABLE_ASYNC_DISPATCH set)")
    import jax

    from jaxbp import bench

    compiled, args = bench.compile_train_steps(model, batch_size=batch, grads=("manual",))
    step = compiled["manual"].executable
    for _ in range(5):
        jax.block_until_ready(step(*args))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "median_ms": 1e3 * statistics.median(times),
        "page_faults_per_step": faults / steps,
        "temp_mib": compiled["manual"].temp_bytes / 2**20,
        "allocator": allocator.describe(),
        "async_dispatch": bool(jax.config.values["jax_cpu_enable_async_dispatch"]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def measure(
    models: list[str], flag_choices: list[str], batches: list[int], rounds: int, steps: int, policies=POLICIES
) -> dict:
    from jaxbp import allocator

    users = allocator.users_tunables(os.environ)  # left out: each child sets its own policy
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in users and k not in ("XLA_FLAGS", "JAX_CPU_ENABLE_ASYNC_DISPATCH")
    }
    rows = []
    for model, flags, batch in ((m, f, b) for m in models for f in flag_choices for b in batches):
        runs = {p: [] for p in policies}
        for r in range(rounds):
            for policy in policies if r % 2 == 0 else reversed(policies):
                cmd = [sys.executable, __file__, "--child", policy, "--models", model, "--flags", flags,
                       "--batches", str(batch), "--steps", str(steps)]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                runs[policy].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for policy, got in runs.items():
            ms = [g["median_ms"] for g in got]
            rows.append({
                "model": model, "flags": flags, "xla_flags": got[0]["xla_flags"],
                "batch_size": batch, "policy": policy, "allocator": got[0]["allocator"],
                "async_dispatch": got[0]["async_dispatch"],
                "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                "page_faults_per_step": statistics.median(g["page_faults_per_step"] for g in got),
                "temp_mib": got[0]["temp_mib"], "runs": got,
            })  # fmt: skip
            r = rows[-1]
            print(
                f"{model:<12} {flags:<13} batch {batch:4d}  {policy:<15} {r['median_ms']:7.2f} ms (range {r['min_ms']:.2f}-{r['max_ms']:.2f}), "
                f"{r['page_faults_per_step']:8.1f} page faults/step, temp {r['temp_mib']:.1f} MiB",
                flush=True,
            )
    return {"rounds": rounds, "steps": steps, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn", help="comma-separated built-in models")
    parser.add_argument(
        "--flags", default="command", help="comma-separated: command (the jaxbp command's XLA flags), xla-defaults"
    )
    parser.add_argument("--batches", default="64,128,512")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, of: " + ", ".join(POLICIES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", type=Path, default=RESULTS / "allocator.json")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    models, flag_choices = args.models.split(","), args.flags.split(",")
    policies = tuple(args.policies.split(","))
    if not set(flag_choices) <= set(FLAGS):
        parser.error(f"--flags must name some of {', '.join(FLAGS)}, got {args.flags!r}")
    if not set(policies) <= set(POLICIES):
        parser.error(f"--policies must name some of {', '.join(POLICIES)}, got {args.policies!r}")
    if args.child:
        print(json.dumps(child(args.child, models[0], flag_choices[0], batches[0], args.steps)))
        return
    from jaxbp import xla_flags

    result = measure(models, flag_choices, batches, args.rounds, args.steps, policies)
    result["machine"] = {"cpu": xla_flags.cpu_model(), "isa": xla_flags.CPU_ISA, "cores": os.cpu_count(),
                         "libc": " ".join(platform.libc_ver()), "isa_xla_flags": xla_flags.CPU_XLA_FLAGS}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

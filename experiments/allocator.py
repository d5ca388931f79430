"""The allocator policy of the ``jaxbp`` command (:mod:`jaxbp.allocator`) against glibc's defaults.

An allocator policy holds for a whole process, so the two cannot be interleaved in one:
each round starts one process per policy, in alternating order, and each process times
``--steps`` calls of the jitted manual ``cnn`` train step (after warm-up) under the XLA
flags the ``jaxbp`` command sets, counting the minor page faults they take
(``getrusage``). The table gives, per batch size and policy, the median over the rounds
of each process's median step time, the range of those, and the page faults per step.

    python experiments/allocator.py                      # writes experiments/results/allocator.json (~4 min)
    python experiments/allocator.py --batches 128 --rounds 3
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
# variant that also keeps blocks larger than a thread arena's 64 MiB heaps in the heap
POLICIES = ("glibc-defaults", "jaxbp", "jaxbp-one-arena")


def child(policy: str, batch: int, steps: int) -> dict:
    """Time the manual step in this process under ``policy``."""
    import resource
    import time

    from jaxbp import allocator, xla_flags

    if policy != "glibc-defaults" and not allocator.keep_blocks_in_heap():
        raise SystemExit("the allocator policy could not be set here (not glibc, or MALLOC_* set)")
    if policy == "jaxbp-one-arena":
        import ctypes

        assert ctypes.CDLL(None).mallopt(-8, 1) == 1  # M_ARENA_MAX
    xla_flags.set_default_xla_flags()
    import jax

    from jaxbp import bench

    compiled, args = bench.compile_train_steps("cnn", batch_size=batch, grads=("manual",))
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
    }


def measure(batches: list[int], rounds: int, steps: int) -> dict:
    from jaxbp import allocator

    users = allocator.users_tunables(os.environ)  # left out: each child sets its own policy
    env = {k: v for k, v in os.environ.items() if k not in users}
    rows = []
    for batch in batches:
        runs = {p: [] for p in POLICIES}
        for r in range(rounds):
            for policy in POLICIES if r % 2 == 0 else reversed(POLICIES):
                cmd = [sys.executable, __file__, "--child", policy, "--batches", str(batch), "--steps", str(steps)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                runs[policy].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for policy, got in runs.items():
            ms = [g["median_ms"] for g in got]
            rows.append({
                "batch_size": batch, "policy": policy, "allocator": got[0]["allocator"],
                "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                "page_faults_per_step": statistics.median(g["page_faults_per_step"] for g in got),
                "temp_mib": got[0]["temp_mib"], "runs": got,
            })  # fmt: skip
            r = rows[-1]
            print(
                f"batch {batch:4d}  {policy:<15} {r['median_ms']:7.2f} ms (range {r['min_ms']:.2f}-{r['max_ms']:.2f}), "
                f"{r['page_faults_per_step']:8.1f} page faults/step, temp {r['temp_mib']:.1f} MiB",
                flush=True,
            )
    return {"rounds": rounds, "steps": steps, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,128,512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", type=Path, default=RESULTS / "allocator.json")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(child(args.child, batches[0], args.steps)))
        return
    from jaxbp import xla_flags

    result = measure(batches, args.rounds, args.steps)
    result["machine"] = {"cpu": xla_flags.cpu_model(), "isa": xla_flags.CPU_ISA, "cores": os.cpu_count(),
                         "libc": " ".join(platform.libc_ver()), "xla_flags": xla_flags.CPU_XLA_FLAGS}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

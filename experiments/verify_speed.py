"""How long a verdict takes: ``assert_vjp`` in a user's test suite, ``jaxbp check`` and ``jaxbp devices``.

Measures, on this machine (CPU model and ISA recorded):

* ``assert_vjp(softplus, softplus_reference, x)`` for x of shape (3, 4): the first call of the
  process (compilation included), then ``--repeats`` calls with new values at the same shapes
  (median and spread), then one call on a 1e6-element input;
* the wall time of ``jaxbp check`` (every registered layer) and ``jaxbp devices``, each in a
  fresh process (``--no-cli`` skips them).

Usage: python experiments/verify_speed.py [--repeats 5] [--no-cli] [--out experiments/results/verify_speed.json]
Writes the JSON and prints a summary. Run it on a quiet machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]


def cpu() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "cores": os.cpu_count()}


def assert_vjp_times(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxbp.testing import assert_vjp

    def softplus_reference(x):
        return jnp.logaddexp(x, 0.0)

    @jax.custom_vjp
    def softplus(x):
        return softplus_reference(x)

    softplus.defvjp(lambda x: (softplus_reference(x), x), lambda x, dy: (dy * jax.nn.sigmoid(x),))
    rng = np.random.default_rng(0)

    def timed(x):
        t0 = time.perf_counter()
        assert_vjp(softplus, softplus_reference, x)
        return time.perf_counter() - t0

    first = timed(rng.standard_normal((3, 4)))
    again = sorted(timed(rng.standard_normal((3, 4))) for _ in range(repeats))
    big = timed(rng.standard_normal(10**6))
    return {
        "first_call_s": first,
        "repeat_median_s": again[len(again) // 2],
        "repeat_min_s": again[0],
        "repeat_max_s": again[-1],
        "one_million_elements_s": big,
    }


def cli_time(argv: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxbp.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    return {"argv": argv, "wall_s": time.perf_counter() - t0, "exit": proc.returncode}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cli", action="store_true", help="skip jaxbp check and jaxbp devices")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "verify_speed.json"))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    result = {"cpu": cpu(), "load_average_1min_before": load, "assert_vjp": assert_vjp_times(args.repeats)}
    print(json.dumps(result["assert_vjp"], indent=1), flush=True)
    if not args.no_cli:
        result["check"] = cli_time(["check"])
        print(result["check"], flush=True)
        result["devices"] = cli_time(["devices"])
        print(result["devices"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Gradient agreement of every registered layer: manual VJP vs autodiff vs finite differences.

Runs ``jaxbp.suite.check_registry`` over every layer and configuration in float64
and float32 (matmul precision "highest", seed 0) and writes

    experiments/results/gradient_agreement.json   every report in full
    experiments/results/gradient_agreement.md     the summary table (Markdown)

Usage: python experiments/gradient_agreement.py [--seed N] [--out DIR] [--layer NAME ...]
Exit status 1 if any configuration fails (the files are written either way).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

from jaxbp import registry, suite, verify

DTYPES = ("float64", "float32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--layer", action="append", help="only these layers (default: all registered)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    reports = suite.check_registry(args.layer, dtypes=DTYPES, seed=args.seed, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    out = Path(args.out)
    meta = {"seed": args.seed, "matmul_precision": "highest", "seconds": round(seconds, 1),
            "layers": sorted({r.layer for r in reports})}  # fmt: skip
    suite.write_json(out / "gradient_agreement.json", reports, DTYPES, **meta)
    n_failed = sum(not r.passed for r in reports)
    layers = sorted({r.layer for r in reports})
    missing = sorted(set(registry.REGISTRY) - set(layers)) if args.layer else []
    md = [
        "# Gradient agreement: manual VJP vs autodiff vs finite differences",
        "",
        (
            f"{len(reports)} configurations of {len(layers)} layers, {len(reports) - n_failed} pass; "
            f"backend {jax.default_backend()}, jax {jax.__version__}, matmul precision highest, seed {args.seed}, "
            f"{seconds:.0f} s. Regenerate with `python experiments/gradient_agreement.py` "
            "(or `jaxbp check --json FILE`)."
        ),
        "",
        (
            "* **vs autodiff**: worst over arguments and 3 random cotangents of "
            "`max|manual - autodiff| / max|autodiff|`; tolerance 1e-10 in float64, the layer's "
            "`rtol_float32` (1e-5 unless the registry says otherwise) in float32."
        ),
        (
            "* **vs FD**: the manual VJP along 2 random unit directions against float64 central differences "
            "of the reference forward (at the inputs rounded to the dtype), relative to the typical size of a "
            f"directional derivative; tolerance {verify.FD_TOLERANCE:.0e} (float32: its own tolerance). "
            "`-` where the inputs sit on a kink on purpose (ties, ReLU at 0)."
        ),
        (
            "* **fwd** forward outputs equal, **jit** op by op and compiled, **vmap** per-example VJPs of a "
            "batch vs a loop, **g(g)** grad-of-grad in the inputs, **g(ct)** in the cotangent, **0ct** each "
            "output alone with symbolic-zero cotangents for the others (multi-output layers only), **expl** "
            "the same VJPs at the inputs scaled by 1e-3, 10 and 100 (and zeros and ties where smooth), float64; "
            "**jvp** `n/a`: `jax.custom_vjp` has no forward mode (a known limitation, not a failure)."
        ),
        "",
        "## Per layer (the worst of its configurations)",
        "",
        suite.format_markdown(reports, DTYPES, per_layer=True),
        "",
        "## Every configuration",
        "",
        suite.format_markdown(reports, DTYPES),
        "",
    ]
    if missing:
        md.insert(3, f"Not included: {', '.join(missing)}.")
    (out / "gradient_agreement.md").write_text("\n".join(md), encoding="utf-8")
    print(suite.format_table(reports, DTYPES))
    print(f"wrote {out / 'gradient_agreement.json'} and {out / 'gradient_agreement.md'} ({seconds:.0f} s)")
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())

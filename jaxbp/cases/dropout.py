"""Registry cases of ``dropout``: rates 0, 0.25 and 0.5, typed and raw PRNG keys."""

from __future__ import annotations

import jax
import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, key, normal

SPECS: tuple[LayerSpec, ...] = (
    LayerSpec(
        "dropout",
        manual.dropout,
        autodiff.dropout,
        (
            Case("rate-0", args_of(normal(2, 3, 3, 4), key(0)), {"rate": 0.0}),
            Case("rate-0.5-rbg-key", args_of(normal(2, 3, 3, 4), key(1, "rbg")), {"rate": 0.5}),
            Case("rate-0.25-raw-key", args_of(normal(2, 3, 3, 4), lambda rng: jax.random.PRNGKey(2)), {"rate": 0.25}),
        ),
        # Observed error 0: dx is the very multiply-and-select autodiff derives. The default is kept
        # rather than 0 so that a backend that fuses the scale differently is not failed on an ulp.
        rtol_float32=1e-5,
        bad_inputs=(
            BadInput(
                "rate-1", args_of(normal(3), key(0)), {"rate": 1.0}, r"dropout: rate must be in \[0, 1\), got 1.0"
            ),
            BadInput("rate-negative", args_of(normal(3), key(0)), {"rate": -0.1}, r"got -0.1"),
            BadInput(
                "rate-array",
                args_of(normal(3), key(0)),
                {"rate": np.array([0.5])},
                "rate must be a Python float",
            ),
            BadInput(
                "key-shape",
                args_of(normal(3), lambda rng: jax.random.split(jax.random.key(0))),
                {"rate": 0.5},
                r"single PRNG key.*\(2,\)",
            ),
            BadInput(
                "not-a-key",
                args_of(normal(3), normal(2)),
                {"rate": 0.5},
                "key must be a jax.random.key or a raw uint32 key",
            ),
            BadInput(
                "int-x", args_of(lambda rng: np.ones(3, np.int32), key(0)), {"rate": 0.5}, "x must be a floating-point"
            ),
        ),
    ),
)

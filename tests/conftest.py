"""Shared test setup.

Tests run on the CPU with 64-bit types available where a check asks for them
(``jaxbp.verify`` switches ``jax_enable_x64`` on around its float64 checks).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

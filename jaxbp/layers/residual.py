r"""The residual add: the skip connection of a residual block, ``y = x + f(x)``.

``residual_add(skip, branch)`` with ``skip`` and ``branch`` of one shape and dtype (no
broadcasting: a shape mismatch is a wiring error, reported at trace time)::

    forward:   y       = skip + branch
    backward:  dskip   = dy          (the add passes the cotangent through unchanged ...)
               dbranch = dy          (... to both of its inputs: the fan-out of dy)

In a block ``y = x + f(x)`` (or ``P(x) + f(x)`` with a 1x1 projection ``P`` where the
shape changes) the input ``x`` is read twice, so its cotangent is the sum of the two
paths: ``dx = dy + J_f(x)^T dy`` (or ``J_P^T dy + J_f^T dy``). Every term of that sum is
a hand-derived VJP (this module's ``dskip``/``dbranch``, then the layers of ``f`` and
``P``); adding the two cotangents that reach ``x`` is the chain rule's sum over a
variable's uses, which JAX's transpose performs as it does for any value read twice. So a
residual network trained on :mod:`jaxbp.manual` has no derivative that ``jax.grad``
derives: the add is an explicit ``jax.custom_vjp`` here, not a ``+`` left to autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.layers import _checks


def _check(skip, branch) -> None:
    _checks.require_float("residual_add", "skip", skip)
    _checks.require_float("residual_add", "branch", branch)
    if jnp.shape(skip) != jnp.shape(branch) or jnp.result_type(skip) != jnp.result_type(branch):
        _checks.fail(
            "residual_add",
            f"skip and branch must have the same shape and dtype, got {tuple(jnp.shape(skip))} "
            f"{jnp.result_type(skip)} and {tuple(jnp.shape(branch))} {jnp.result_type(branch)}",
        )


def residual_add_reference(skip: jax.Array, branch: jax.Array) -> jax.Array:
    """``skip + branch``, both of one shape and dtype."""
    _check(skip, branch)
    return skip + branch


def residual_add(skip: jax.Array, branch: jax.Array) -> jax.Array:
    """``skip + branch`` with a hand-derived VJP: ``dskip = dbranch = dy``."""
    _check(skip, branch)
    return _residual_add(skip, branch)


@jax.custom_vjp
def _residual_add(skip, branch):
    return residual_add_reference(skip, branch)


def _residual_add_fwd(skip, branch):
    return residual_add_reference(skip, branch), None  # the backward reads nothing but dy


def _residual_add_bwd(res, dy):
    dskip = dy  # dskip = dy: the skip path
    dbranch = dy  # dbranch = dy: the branch f(x) (the fan-out of the cotangent)
    return dskip, dbranch


_residual_add.defvjp(_residual_add_fwd, _residual_add_bwd)

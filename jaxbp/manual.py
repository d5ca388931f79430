"""Layers whose backward passes are derived by hand (``jax.custom_vjp``).

Same names and signatures as :mod:`jaxbp.autodiff`, so a model written against
one namespace runs with the other: ``ops.conv2d(x, w, b, stride=2)``.

``GRADIENTS = "manual"`` marks the namespace (:mod:`jaxbp.autodiff` has
``"autodiff"``): a layer that holds two implementations of itself
(:func:`jaxbp.models.Custom`) reads it to pick one; see :func:`jaxbp.models.gradients_of`.
"""

from jaxbp.layers.activation import gelu, leaky_relu, log_softmax, relu, sigmoid, silu, softmax, tanh
from jaxbp.layers.concat import concatenate
from jaxbp.layers.conv import conv2d
from jaxbp.layers.conv_transpose import conv_transpose2d
from jaxbp.layers.dense import dense, flatten
from jaxbp.layers.dropout import dropout
from jaxbp.layers.global_pool import global_avg_pool
from jaxbp.layers.loss import mse_loss, sigmoid_binary_cross_entropy, softmax_cross_entropy
from jaxbp.layers.norm import batch_norm, group_norm, layer_norm
from jaxbp.layers.pool import avg_pool2d, max_pool2d
from jaxbp.layers.residual import residual_add
from jaxbp.layers.upsample import upsample2d

GRADIENTS = "manual"  # not a layer: which gradients this namespace gives (see the docstring)

__all__ = [
    "avg_pool2d",
    "batch_norm",
    "concatenate",
    "conv2d",
    "conv_transpose2d",
    "dense",
    "dropout",
    "flatten",
    "gelu",
    "global_avg_pool",
    "group_norm",
    "layer_norm",
    "leaky_relu",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "relu",
    "residual_add",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "silu",
    "softmax",
    "softmax_cross_entropy",
    "tanh",
    "upsample2d",
]

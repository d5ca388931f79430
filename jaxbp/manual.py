"""Layers whose backward passes are derived by hand (``jax.custom_vjp``).

Same names and signatures as :mod:`jaxbp.autodiff`, so a model written against
one namespace runs with the other: ``ops.conv2d(x, w, b, stride=2)``.
"""

from jaxbp.layers.activation import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from jaxbp.layers.conv import conv2d
from jaxbp.layers.dense import dense, flatten
from jaxbp.layers.dropout import dropout
from jaxbp.layers.loss import sigmoid_binary_cross_entropy, softmax_cross_entropy
from jaxbp.layers.norm import batch_norm
from jaxbp.layers.pool import avg_pool2d, max_pool2d

__all__ = [
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "dense",
    "dropout",
    "flatten",
    "leaky_relu",
    "log_softmax",
    "max_pool2d",
    "relu",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "softmax",
    "softmax_cross_entropy",
    "tanh",
]

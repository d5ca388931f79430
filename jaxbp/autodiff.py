"""Plain-JAX layers whose gradients come from ``jax.grad`` (the reference).

Same names and signatures as :mod:`jaxbp.manual`; each is the ``*_reference``
forward of the layer module, so both namespaces compute identical outputs.
``GRADIENTS = "autodiff"`` marks the namespace (see :mod:`jaxbp.manual`).
"""

from jaxbp.layers.activation import (
    gelu_reference as gelu,
    leaky_relu_reference as leaky_relu,
    log_softmax_reference as log_softmax,
    relu_reference as relu,
    sigmoid_reference as sigmoid,
    silu_reference as silu,
    softmax_reference as softmax,
    tanh_reference as tanh,
)
from jaxbp.layers.concat import concatenate_reference as concatenate
from jaxbp.layers.conv import conv2d_reference as conv2d
from jaxbp.layers.conv_transpose import conv_transpose2d_reference as conv_transpose2d
from jaxbp.layers.dense import dense_reference as dense, flatten_reference as flatten
from jaxbp.layers.dropout import dropout_reference as dropout
from jaxbp.layers.global_pool import global_avg_pool_reference as global_avg_pool
from jaxbp.layers.loss import (
    mse_loss_reference as mse_loss,
    sigmoid_binary_cross_entropy_reference as sigmoid_binary_cross_entropy,
    softmax_cross_entropy_reference as softmax_cross_entropy,
)
from jaxbp.layers.norm import (
    batch_norm_reference as batch_norm,
    group_norm_reference as group_norm,
    layer_norm_reference as layer_norm,
)
from jaxbp.layers.pool import avg_pool2d_reference as avg_pool2d, max_pool2d_reference as max_pool2d
from jaxbp.layers.residual import residual_add_reference as residual_add
from jaxbp.layers.upsample import upsample2d_reference as upsample2d

GRADIENTS = "autodiff"  # not a layer: which gradients this namespace gives

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

"""The built-in models (:data:`jaxbp.choices.MODELS`), built from :mod:`jaxbp.models.layers`."""

from __future__ import annotations

from jaxbp.choices import INITS, MODELS
from jaxbp.models.layers import (
    BatchNorm,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Flatten,
    Gelu,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    MaxPool,
    Model,
    ModelError,
    Relu,
    Residual,
    serial,
)
from jaxbp.models.user import check_model_name, checked_output, load_model

__all__ = ["autoencoder", "convnext_block", "get_model"]


def get_model(name: str, num_classes: int, *, dropout: float = 0.0, init: str = "he") -> Model:
    """A built-in model by name (see :data:`jaxbp.choices.MODELS`), or a user's model by spec (see
    :func:`load_model`). ``dropout`` before the last dense; ``init`` one of :data:`jaxbp.choices.INITS`.

    ``dropout`` and ``init`` shape the built-in models only: a user's model is built by
    its own code, so for a spec anything but their defaults (0 and "he") is a
    :class:`ModelError` rather than an option silently ignored.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if check_model_name(name) not in MODELS:
        if dropout != 0.0 or init != "he":
            raise ModelError(
                f"{name!r}: dropout and init apply to the built-in models only; "
                "put Dropout or your own initialisation into the model itself"
            )
        return load_model(name, num_classes)
    if name == "autoencoder":
        if dropout:
            raise ModelError(f"autoencoder: dropout {dropout} applies to a classifier's last dense; it has none")
        return checked_output(autoencoder(init=init), num_classes)
    last = "glorot" if init == "he" else init
    head = ([Dropout(dropout)] if dropout > 0 else []) + [Dense(num_classes, init=last)]
    if name == "mlp":
        return serial(Flatten, Dense(256, init=init), Relu, *head)
    if name == "convnext":
        return serial(*_convnext(init), *head)
    if name == "resnet":
        return serial(Conv(8, init=init), BatchNorm(), Relu, *_block(32, init), *_block(64, init), GlobalAvgPool, *head)
    bn = [BatchNorm()] if name == "cnn-bn" else []
    return serial(
        Conv(32, init=init), *bn, Relu, MaxPool(2),
        Conv(64, init=init), *bn, Relu, MaxPool(2),
        Flatten, Dense(128, init=init), Relu, *head,
    )  # fmt: skip


def _block(features: int, init: str) -> list[Layer]:
    """resnet's stage: a stride-2 residual block (conv-bn-relu-conv-bn, 1x1 projection), then ReLU."""
    branch = (Conv(features, stride=2, init=init), BatchNorm(), Relu, Conv(features, init=init), BatchNorm())
    return [Residual(*branch, init=init), Relu]


def convnext_block(channels: int, init: str = "he") -> Layer:
    """ConvNeXt's block (Liu et al. 2022), ``x + f(x)``: a 7x7 depthwise convolution, layer norm,
    then an inverted bottleneck of two pointwise (dense) layers, 4x wide, with GELU between."""
    return Residual(
        Conv(channels, 7, groups=channels, init=init),
        LayerNorm(),
        Dense(4 * channels, init=init),
        Gelu,
        Dense(channels, init=init),
        init=init,
    )


def _convnext(init: str) -> list[Layer]:
    """convnext's trunk: a 2x2 stride-2 stem (28 -> 14), a block of 32 channels, a 2x2 stride-2
    downsampling to 64 channels (14 -> 7), a block, then the channels' means, layer-normed."""
    return [
        Conv(32, 2, stride=2, padding="VALID", init=init), LayerNorm(), convnext_block(32, init),
        LayerNorm(), Conv(64, 2, stride=2, padding="VALID", init=init), convnext_block(64, init),
        GlobalAvgPool, LayerNorm(),
    ]  # fmt: skip


def autoencoder(channels: int = 1, width: int = 16, init: str = "he") -> Model:
    """A convolutional autoencoder for ``[H, W, channels]`` images, H and W multiples of 4: two
    stride-2 3x3 convolutions down (``width``, ``2 width`` channels, ReLU), two 4x4 stride-2
    transposed convolutions up (``width``, then ``channels``). The output has the input's
    shape; train it on a reconstruction loss such as ``ops.mse_loss(y, x)``
    (``experiments/autoencoder.py``). Its objective is ``"reconstruct"``: ``jaxbp train --model
    autoencoder`` trains the one-channel version on mean squared error against its input."""
    return serial(
        Conv(width, 3, stride=2, init=init), Relu, Conv(2 * width, 3, stride=2, init=init), Relu,
        ConvTranspose(width, 4, stride=2, padding=1, init=init), Relu,
        ConvTranspose(channels, 4, stride=2, padding=1, init="glorot"),
        objective="reconstruct",
    )  # fmt: skip

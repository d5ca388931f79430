"""A user's model by name: ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``, loaded and checked."""

from __future__ import annotations

from pathlib import Path

from jaxbp.choices import MODELS
from jaxbp.loading import LoadError, first_line, load_function, split_spec, user_code
from jaxbp.models.layers import Model, ModelError

__all__ = ["check_model_name", "checked_output", "load_model", "short_name"]


def check_model_name(name: str) -> str:
    """``name`` if it is a built-in model or a well-formed ``MODULE:FUNCTION`` /
    ``path/to/file.py:FUNCTION`` spec (nothing is imported); :class:`ModelError` otherwise."""
    if name in MODELS:
        return name
    if isinstance(name, str) and ":" in name:
        try:
            split_spec(name)
        except LoadError as e:
            raise ModelError(str(e)) from None
        return name
    raise ModelError(
        f"unknown model {name!r}; choose one of {', '.join(MODELS)}, "
        "or give MODULE:FUNCTION or path/to/file.py:FUNCTION"
    )


def short_name(name: str) -> str:
    """A file-name-safe name of a model: a built-in name as it is, a spec as
    ``<module>.<function>`` (``examples/custom_layer.py:make_model`` -> ``custom_layer.make_model``)."""
    if name in MODELS:
        return name
    module_part, attr_path = split_spec(check_model_name(name))
    module = Path(module_part).stem if module_part.endswith(".py") else module_part.rsplit(".", 1)[-1]
    return f"{module}.{attr_path}"


def load_model(spec: str, num_classes: int) -> Model:
    """The model ``FUNCTION(num_classes)`` of a ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``
    spec (loaded by :func:`jaxbp.loading.load_function`); it must return a :class:`Model`
    built with :func:`serial`. Any failure is a one-line :class:`ModelError` naming the spec."""
    check_model_name(spec)
    try:
        fn = load_function(spec)
        with user_code(spec, f"calling it with num_classes={num_classes}"):
            model = fn(num_classes)
    except LoadError as e:
        raise ModelError(str(e)) from None
    except Exception as e:  # the user's code may raise anything
        raise ModelError(
            f"{spec!r}: calling it with num_classes={num_classes} raised {type(e).__name__}: {first_line(e)}"
        ) from e
    if not isinstance(model, Model):
        raise ModelError(
            f"{spec!r} returned a {type(model).__name__}, not a jaxbp.models.Model (build it with jaxbp.models.serial)"
        )
    return checked_output(model, num_classes)


def checked_output(model: Model, num_classes: int) -> Model:
    """``model`` whose ``init`` refuses an output it cannot be trained on: other than
    ``(num_classes,)`` per example for a classifier (a user's model with fewer outputs than
    classes would train on, silently, to chance accuracy), other than the input's shape for a
    model that reconstructs its input."""

    def init(key, input_shape):
        out_shape, params, state = model.init(key, input_shape)
        if model.objective == "reconstruct":
            if tuple(out_shape) != tuple(input_shape):
                raise ModelError(
                    f"it reconstructs its input, but its output has shape {tuple(out_shape)} per example and the "
                    f"input {tuple(input_shape)}"
                )
        elif tuple(out_shape) != (num_classes,):
            raise ModelError(
                f"its output has shape {tuple(out_shape)} per example, but the data set has {num_classes} classes "
                f"(num_classes={num_classes}): end the model with Dense(num_classes)"
            )
        return out_shape, params, state

    return model._replace(init=init)

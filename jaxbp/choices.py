"""The values jaxbp's options take, each list defined once, for the library and the command line.

Plain tuples, and this module imports nothing: ``jaxbp`` builds its parser (and answers
``--help``) from them without importing JAX, and the modules that act on a choice
(:mod:`jaxbp.models`, :mod:`jaxbp.train`, :mod:`jaxbp.bench`, :mod:`jaxbp.devices`,
:mod:`jaxbp.datafiles`) import them from here. The dtypes of ``jaxbp check`` are those
:mod:`jaxbp.verify.tolerances` has a tolerance for (``verify`` imports nothing of jaxbp).
"""

__all__ = [
    "AUGMENTS",
    "BACKENDS",
    "BENCH_DTYPES",
    "DATASETS",
    "DEFAULT_COORDINATOR_TIMEOUT_S",
    "GRADS",
    "INITS",
    "MATMUL_PRECISIONS",
    "MODELS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "SCHEDULES",
    "TRAIN_DTYPES",
]

#: The data sets :func:`jaxbp.data.load` reads (``digits`` is bundled with scikit-learn).
DATASETS = ("digits", "mnist", "fashion-mnist")
#: The built-in models of :func:`jaxbp.models.get_model`.
MODELS = ("cnn", "cnn-bn", "mlp", "resnet", "convnext", "autoencoder")
#: What a model is trained for (:attr:`jaxbp.models.Model.objective`): class scores under
#: softmax cross-entropy (accuracy reported), or its input back under mean squared error.
OBJECTIVES = ("classify", "reconstruct")
#: Initialisation schemes of the built-in models (see :mod:`jaxbp.models`).
INITS = ("he", "uniform")

# A training run (jaxbp.train.TrainConfig).
#: Where the gradients come from: hand-derived, ``jax.grad``, or both checked against each other.
GRADS = ("manual", "autodiff", "compare")
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")
#: Random shifts (crop) and horizontal flips (flip) of the train images.
AUGMENTS = ("none", "crop", "flip", "crop-flip")
#: The dtypes of a training run's parameters and activations.
TRAIN_DTYPES = ("float32", "float64")

#: The dtypes ``jaxbp bench`` times the train step and the layers in.
BENCH_DTYPES = ("float32", "bfloat16")

#: The three levels of ``jax.default_matmul_precision`` (JAX's other names for them, such as
#: "float32" or "tensorfloat32", are aliases): a training run, ``jaxbp check`` and ``jaxbp devices``.
MATMUL_PRECISIONS = ("default", "high", "highest")

#: The JAX backends ``jaxbp devices`` looks for.
BACKENDS = ("cpu", "gpu", "tpu")

#: Seconds a process of a multi-process run waits for the coordinator (and process 0 for the
#: others) before it gives up (:class:`jaxbp.parallel.DistributedConfig`, ``--coordinator-timeout``).
DEFAULT_COORDINATOR_TIMEOUT_S = 60

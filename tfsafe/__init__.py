"""tfsafe: compress Keras models for phones and edge devices while keeping them safe.

Importing tfsafe selects Keras 2 (``tf_keras``) for TensorFlow Model Optimization; see
:mod:`tfsafe._keras`.
"""

from tfsafe._keras import keras, tf, tfmot, to_tf_keras
from tfsafe.data import (
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    membership_split,
)
from tfsafe.errors import InputError, MissingDependencyError, TfsafeError, UnsupportedModelError
from tfsafe.io import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "__version__", "keras", "tf", "tfmot", "to_tf_keras",
    "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "load_dataset", "membership_split",
    "TfsafeError", "InputError", "UnsupportedModelError", "MissingDependencyError",
    "load_model", "save_model",
]

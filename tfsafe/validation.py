"""Input checks shared by every public entry point, so bad data fails early and clearly."""

import numpy as np

from tfsafe.errors import InputError, UnsupportedModelError

__all__ = ["check_features", "check_labels", "check_xy", "check_model", "check_fraction", "model_input_shape",
           "model_num_classes"]


def check_features(x, name="x", expected_shape=None, dtype=np.float32):
    """Return ``x`` as an array after checking it is numeric, finite and of the right shape.

    Args:
        x: Array-like of inputs.
        name: Name used in error messages.
        expected_shape: Per-example shape (without the batch axis) the model expects; ``None``
            entries match any size.
        dtype: The dtype to return (default float32); ``None`` keeps the numeric dtype of ``x``
            (e.g. int8 inputs already quantized for a ``.tflite`` file).

    Example:
        >>> check_features([[0.0, 1.0]], expected_shape=(2,)).dtype
        dtype('float32')
    """
    try:
        arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a numeric array: {err}") from err
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        raise InputError(f"{name} must be a numeric array, got dtype {arr.dtype}.")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {arr.shape}); pass at least one example.")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name} contains {bad} NaN or infinite values; clean or impute them.")
    if expected_shape is not None:
        expected = tuple(expected_shape)
        got = arr.shape[1:]
        if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
            raise InputError(
                f"{name} has per-example shape {got}, but the model expects (batch,) + {expected}. "
                "Reshape the data (e.g. add a channel axis with x[..., None])."
            )
    return arr


def check_labels(y, num_classes=None, name="y", n=None):
    """Return integer class labels; accepts one-hot rows. Checks range and length."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] > 1:
        arr = arr.argmax(axis=1)
    arr = arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
    if arr.ndim != 1:
        raise InputError(f"{name} must be a vector of class ids or one-hot rows, got shape {arr.shape}.")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"{name} must hold integer class ids; found non-integer values.")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integer class ids, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if n is not None and len(arr) != n:
        raise InputError(f"{name} has {len(arr)} labels but there are {n} examples.")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} has negative class ids (min {arr.min()}).")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise InputError(
            f"{name} has class id {arr.max()} but the model has {num_classes} outputs "
            f"(ids must be in 0..{num_classes - 1})."
        )
    return arr


def check_model(model, name="model"):
    """Return ``model`` as a tf_keras model (Keras 3 models are converted)."""
    from tfsafe._keras import to_tf_keras  # noqa: PLC0415

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        raise UnsupportedModelError(
            f"{name} is a path; load it first with tfsafe.load_model('{model}')."
        )
    return to_tf_keras(model)


def model_input_shape(model):
    """Per-example input shape of a single-input model."""
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else model.input_shape
    return tuple(shape[1:])


def model_num_classes(model):
    """Number of classes of a single-output classifier (2 for a one-unit binary head)."""
    return max(2, int(model.outputs[0].shape[-1]))


def check_xy(model, x, y, name="data"):
    """Check ``(x, y)`` against ``model``: finite inputs of the right shape, labels in range."""
    x = check_features(x, f"{name} x", model_input_shape(model))
    y = check_labels(y, model_num_classes(model), f"{name} y", n=len(x))
    return x, y


def check_fraction(value, name, low=0.0, high=1.0, include_high=False):
    """Check ``low <= value < high`` (or ``<= high``) and return it as float."""
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a number, got {value!r}.") from err
    ok = low <= value <= high if include_high else low <= value < high
    if not ok:
        bracket = "]" if include_high else ")"
        raise InputError(f"{name} must be in [{low}, {high}{bracket}, got {value}.")
    return value

"""The targets a safety test can run on: Keras models, callables and ``.tflite`` files.

The deployed int8 model is itself evaluated (conversion can change safety), but it has no
gradients: it is the *target* of transfer attacks and of the black-box tests (clean accuracy,
corruptions, membership). A ``.tflite`` path becomes a
:class:`tflite_export.runtime.TFLiteModel` (LiteRT, quantizing float inputs and dequantizing
outputs with the tensors' own scale and zero point), the one ``.tflite`` runner of the project;
it is importable from here as ``TFLiteModel`` too.
"""

import os

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import check_output_kind, class_scores, predict_logits

__all__ = ["as_target", "is_tflite_path", "predict_outputs", "predict_labels", "target_outputs"]


def is_tflite_path(obj):
    """True when ``obj`` is a path (str / PathLike) ending in ``.tflite``."""
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).endswith(".tflite")


def as_target(model):
    """A ``.tflite`` path becomes a :class:`TFLiteModel`; anything else is returned unchanged."""
    if not is_tflite_path(model):
        return model
    from tflite_export.runtime import TFLiteModel  # LiteRT only when a file is evaluated

    return TFLiteModel(model)


def target_outputs(model, x, batch_size=256, output=None):
    """Outputs of any target as ``(n, classes >= 2)`` scores, and what they are.

    Args:
        model: a Keras model (its logits), a ``.tflite`` path / ``TFLiteModel`` (its outputs,
            whose kind the side-car or the file's last op gives), or a callable / object with
            ``predict(x)``.
        x: inputs.
        batch_size: examples per call.
        output: ``"logits"`` or ``"probabilities"``: what a callable or ``.tflite`` file
            returns, when the file does not say (ignored for Keras models, which say
            themselves).

    Returns:
        ``(scores, kind)``: float32 ``(n, classes)`` with one-unit heads widened to two
        classes (``[0, z]`` / ``[1 - p, p]``), and ``kind`` (``None`` when it is unknown and
        the output is wide enough not to need it).

    Raises:
        InputError: a one-unit output whose kind nobody states.
    """
    if output is not None:
        output = check_output_kind(output, "output")
    model = as_target(model)
    if isinstance(model, keras.Model):
        return predict_logits(model, x, batch_size), "logits"
    if getattr(model, "is_tflite", False):
        raw = model.predict(x, batch_size=batch_size)
        kind = output or model.output_kind
    elif hasattr(model, "predict"):
        raw = np.asarray(model.predict(x), np.float32)
        kind = output
    elif callable(model):
        x = np.asarray(x, np.float32)
        raw = np.concatenate([np.asarray(model(tf.constant(x[i:i + batch_size])), np.float32)
                              for i in range(0, len(x), batch_size)], axis=0)
        kind = output
    else:
        raise InputError(f"Cannot run a {type(model).__name__}; pass a Keras model, a .tflite path or a callable.")
    if raw.ndim == 1 or (raw.ndim == 2 and raw.shape[1] == 1):
        if kind is None:
            raise InputError(
                "The model has one output unit and nothing says whether it is a logit or a sigmoid "
                "probability; pass output='logits' or output='probabilities'."
            )
        return class_scores(raw, kind), kind
    return np.asarray(raw, np.float32), kind


def predict_outputs(model, x, batch_size=256, output=None):
    """Outputs of a Keras model (its logits), a callable or a ``.tflite`` target as
    ``(n, classes >= 2)`` scores (see :func:`target_outputs`)."""
    return target_outputs(model, x, batch_size, output)[0]


def predict_labels(model, x, batch_size=256, output=None):
    """Predicted class ids of any model kind :func:`predict_outputs` accepts."""
    return predict_outputs(model, x, batch_size, output).argmax(axis=1)


def __getattr__(name):
    # The runner lives in tflite_export; imported on first use so that importing the safety
    # tests does not load the exporter.
    if name == "TFLiteModel":
        from tflite_export.runtime import TFLiteModel

        return TFLiteModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

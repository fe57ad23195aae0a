"""The targets a safety test can run on: Keras models, callables and ``.tflite`` files.

The deployed int8 model is itself evaluated (conversion can change safety), but it has no
gradients: it is the *target* of transfer attacks and of the black-box tests (clean accuracy,
corruptions, membership). A ``.tflite`` path becomes a
:class:`tflite_export.runtime.TFLiteModel` (LiteRT, quantizing float inputs and dequantizing
outputs with the tensors' own scale and zero point), the one ``.tflite`` runner of the project;
it is importable from here as ``TFLiteModel`` too.
"""

import os

from tfsafe.models import predict_logits

__all__ = ["as_target", "is_tflite_path", "predict_outputs", "predict_labels"]


def is_tflite_path(obj):
    """True when ``obj`` is a path (str / PathLike) ending in ``.tflite``."""
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).endswith(".tflite")


def as_target(model):
    """A ``.tflite`` path becomes a :class:`TFLiteModel`; anything else is returned unchanged."""
    if not is_tflite_path(model):
        return model
    from tflite_export.runtime import TFLiteModel  # noqa: PLC0415 - LiteRT only when a file is evaluated

    return TFLiteModel(model)


def predict_outputs(model, x, batch_size=256):
    """Outputs of a Keras model (its logits), a callable (whatever it returns) or a ``.tflite`` target."""
    model = as_target(model)
    if getattr(model, "is_tflite", False):
        return model.predict(x, batch_size=batch_size)
    return predict_logits(model, x, batch_size)


def predict_labels(model, x, batch_size=256):
    """Predicted class ids of any model kind :func:`predict_outputs` accepts."""
    return predict_outputs(model, x, batch_size).argmax(axis=1)


def __getattr__(name):
    # The runner lives in tflite_export; imported on first use so that importing the safety
    # tests does not load the exporter.
    if name == "TFLiteModel":
        from tflite_export.runtime import TFLiteModel  # noqa: PLC0415

        return TFLiteModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

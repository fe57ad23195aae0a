"""Does the exported file compute what the Keras model computes?

:func:`check_parity` runs the Keras model and an exported ``.tflite`` / ``.onnx`` file on the
same inputs and reports top-1 agreement, the largest and mean absolute difference of their
(dequantized) outputs, and the accuracy of each when labels are given.

What is compared: the model's own outputs. A Keras model that ends with a softmax or sigmoid
is compared on **probabilities** (the exported file ends with the same activation); any other
model on **logits**; a one-unit (binary) head as two classes. ``ParityReport.compared`` says which, so a logit difference of 0.3 is not
mistaken for a probability difference.
"""

import dataclasses

import numpy as np

from tfsafe.errors import TfsafeError
from tfsafe.models import class_scores, output_kind, predict_logits, predict_proba
from tfsafe.validation import check_features, check_labels, check_model, model_input_shape, model_num_classes

__all__ = ["ParityError", "ParityReport", "check_parity"]


class ParityError(TfsafeError):
    """The exported model disagrees with the Keras model more than allowed.

    Attributes:
        report: the :class:`ParityReport` that failed.
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class ParityReport:
    """Agreement between a Keras model and an exported file on the same inputs.

    Attributes:
        path: the exported file.
        format: ``"tflite"`` or ``"onnx"``.
        compared: ``"probabilities"`` (Keras model ends with softmax) or ``"logits"``.
        n: number of examples.
        top1_agreement: fraction of examples where both predict the same class.
        max_abs_diff, mean_abs_diff: over all output values (dequantized for int8 files).
        keras_accuracy, exported_accuracy: top-1 accuracy when labels were given, else None.
    """

    path: str
    format: str
    compared: str
    n: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    keras_accuracy: float = None
    exported_accuracy: float = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def summary(self):
        text = (f"top-1 agreement {self.top1_agreement:.4f} on {self.n} examples, {self.compared} "
                f"max |diff| {self.max_abs_diff:.4g}, mean |diff| {self.mean_abs_diff:.4g}")
        if self.keras_accuracy is not None:
            text += f", accuracy Keras {self.keras_accuracy:.4f} vs exported {self.exported_accuracy:.4f}"
        return text


def keras_outputs(model, x):
    """Outputs the exported file is compared against: probabilities or logits, and which.

    A model ending in a softmax or sigmoid is compared on probabilities, any other on logits;
    a one-unit head gives two columns (``[1 - p, p]`` or ``[0, z]``).
    """
    if output_kind(model) == "probabilities":
        return predict_proba(model, x), "probabilities"
    return predict_logits(model, x), "logits"


def check_parity(keras_model, exported_path, x, y=None, batch_size=256, exported=None):
    """Compare ``keras_model`` with an exported ``.tflite`` or ``.onnx`` file on ``x``.

    Args:
        keras_model: the model that was exported (wrapped models are run as they are, in
            inference mode).
        exported_path: path of the ``.tflite`` or ``.onnx`` file.
        x: float inputs, shaped like the model's input.
        y: optional integer labels (or one-hot rows) for the accuracy of each model.
        batch_size: examples per call of the exported model.
        exported: an already opened :class:`~tflite_export.runtime.TFLiteModel` /
            ``ONNXModel`` for ``exported_path`` (optional).

    Returns:
        A :class:`ParityReport`.

    Example:
        >>> report = check_parity(model, "model_int8.tflite", x_test, y_test)  # doctest: +SKIP
        >>> report.top1_agreement >= 0.99  # doctest: +SKIP
        True
    """
    from tflite_export.runtime import is_tflite_file, load_exported  # noqa: PLC0415

    keras_model = check_model(keras_model, "keras_model")
    x = check_features(x, "x", model_input_shape(keras_model))
    if y is not None:
        y = check_labels(y, model_num_classes(keras_model), "y", n=len(x))
    runner = exported if exported is not None else load_exported(exported_path)
    reference, compared = keras_outputs(keras_model, x)
    outputs = runner.predict(x, batch_size=batch_size)
    if outputs.ndim == 2 and outputs.shape[1] == 1:  # a one-unit head, exported from this model
        outputs = class_scores(outputs, compared)
    if outputs.shape != reference.shape:
        raise ParityError(
            f"'{exported_path}' outputs shape {outputs.shape} but the Keras model {reference.shape}; "
            "the file was exported from a different model."
        )
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    pred_exported, pred_keras = outputs.argmax(axis=1), reference.argmax(axis=1)
    return ParityReport(
        path=str(exported_path),
        format="tflite" if is_tflite_file(exported_path) else "onnx",
        compared=compared,
        n=int(len(x)),
        top1_agreement=float(np.mean(pred_exported == pred_keras)),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        keras_accuracy=None if y is None else float(np.mean(pred_keras == y)),
        exported_accuracy=None if y is None else float(np.mean(pred_exported == y)),
    )

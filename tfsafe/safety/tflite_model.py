"""Run a ``.tflite`` classifier as a black-box target for the safety tests.

The deployed int8 model is itself evaluated (conversion can change safety), but it has no
gradients: it is the *target* of transfer attacks and of the black-box tests (clean accuracy,
corruptions, membership). :class:`TFLiteModel` runs it with the LiteRT interpreter
(``ai_edge_litert``), quantizing float inputs and dequantizing outputs with the tensors'
own scale and zero point.
"""

import os
import weakref

import numpy as np

from tfsafe.errors import InputError, MissingDependencyError
from tfsafe.validation import check_features

__all__ = ["TFLiteModel", "as_target", "is_tflite_path", "predict_outputs", "predict_labels",
           "compiled_logits"]


def is_tflite_path(obj):
    """True when ``obj`` is a path (str / PathLike) ending in ``.tflite``."""
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).endswith(".tflite")


class TFLiteModel:
    """A ``.tflite`` classifier with a numpy ``predict``; handles int8 / uint8 quantized tensors.

    Args:
        path: Path of the ``.tflite`` file.
        num_threads: Interpreter threads (default: LiteRT's choice).

    Example:
        >>> target = TFLiteModel("model_int8.tflite")  # doctest: +SKIP
        >>> target.predict(x_test).argmax(1)  # doctest: +SKIP
    """

    is_tflite = True

    def __init__(self, path, num_threads=None):
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
        except ImportError as err:
            raise MissingDependencyError("Running .tflite files needs LiteRT: pip install ai-edge-litert") from err
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"TFLite file '{self.path}' does not exist.")
        try:
            self._interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        except (ValueError, RuntimeError) as err:
            raise InputError(f"'{self.path}' is not a valid .tflite model: {err}") from err
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"'{self.path}' has {len(inputs)} inputs and {len(outputs)} outputs; tfsafe "
                             "evaluates single-input, single-output classifiers.")
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.num_classes = int(self._output["shape"][-1])
        self._batch = None

    def __repr__(self):
        return f"TFLiteModel('{self.path}', input_shape={self.input_shape}, num_classes={self.num_classes})"

    def _quantize(self, x):
        dtype = self._input["dtype"]
        if dtype in (np.int8, np.uint8, np.int16):
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, q):
        if self._output["dtype"] in (np.int8, np.uint8, np.int16):
            scale, zero_point = self._output["quantization"]
            return (q.astype(np.float32) - zero_point) * scale
        return q.astype(np.float32)

    def _resize(self, n):
        if self._batch == n:
            return
        self._interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = n

    def _run(self, xb):
        self._interpreter.set_tensor(self._input["index"], self._quantize(xb))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._output["index"]))

    def predict(self, x, batch_size=256):
        """Dequantized outputs (logits or probabilities, whatever the file outputs) on ``x``."""
        x = check_features(x, "x", self.input_shape)
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            try:
                self._resize(len(xb))
                out.append(self._run(xb))
            except (ValueError, RuntimeError):  # fixed batch dimension: one example at a time
                self._resize(1)
                out.append(np.concatenate([self._run(xb[i:i + 1]) for i in range(len(xb))]))
        return np.concatenate(out).astype(np.float32)

    def accuracy(self, x, y, batch_size=256):
        """Top-1 accuracy on ``(x, y)``."""
        return float(np.mean(self.predict(x, batch_size).argmax(axis=1) == np.asarray(y).reshape(-1)))


def as_target(model):
    """A ``.tflite`` path becomes a :class:`TFLiteModel`; anything else is returned unchanged."""
    return TFLiteModel(model) if is_tflite_path(model) else model


def predict_outputs(model, x, batch_size=256):
    """Outputs of a Keras model (its logits), a callable (whatever it returns) or a ``.tflite`` target."""
    model = as_target(model)
    if getattr(model, "is_tflite", False):
        return model.predict(x, batch_size=batch_size)
    from tfsafe._keras import tf  # noqa: PLC0415

    fn = compiled_logits(model)
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(fn(tf.constant(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)]).astype(np.float32)


_COMPILED = weakref.WeakKeyDictionary()


def compiled_logits(model):
    """A cached ``tf.function`` computing a Keras model's logits in inference mode (callables as is)."""
    from tfsafe._keras import keras, tf  # noqa: PLC0415
    from tfsafe.models import logits_model  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        return model
    if model not in _COMPILED:
        lm = logits_model(model)
        _COMPILED[model] = tf.function(lambda t: lm(t, training=False), reduce_retracing=True)
    return _COMPILED[model]


def predict_labels(model, x, batch_size=256):
    """Predicted class ids of any model kind :func:`predict_outputs` accepts."""
    return predict_outputs(model, x, batch_size).argmax(axis=1)

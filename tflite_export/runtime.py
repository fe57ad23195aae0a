"""Run exported models from Python with float inputs and float outputs.

:class:`TFLiteModel` wraps LiteRT's interpreter (``ai_edge_litert``; ``tf.lite.Interpreter`` is
deprecated): it quantizes float inputs with the input tensor's scale and zero point,
dequantizes outputs, and feeds data in batches, so an int8 ``.tflite`` can be evaluated like a
Keras model (accuracy, attacks by transfer, membership audits on its outputs). It is the one
``.tflite`` runner of the project: the parity checks, the host benchmark and the safety tests
(:mod:`tfsafe.safety.tflite_model`, which treats ``.tflite`` paths as black-box targets) all
use it. :class:`ONNXModel` does the same for ``.onnx`` files through onnxruntime, and
:func:`load_exported` picks the right one for a path.
"""

import os

import numpy as np

from tflite_export.sidecar import read_output_kind
from tfsafe.errors import InputError, MissingDependencyError, UnsupportedModelError
from tfsafe.models import check_output_kind, class_scores, num_classes_of_outputs
from tfsafe.validation import check_features

__all__ = ["TFLiteModel", "ONNXModel", "load_exported", "is_tflite_file"]


def is_tflite_file(path):
    """True when ``path`` starts like a TFLite flatbuffer (file identifier ``TFL3``)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:8] == b"TFL3"


def _check_file(path, kind):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{kind} file '{path}' does not exist.")
    if os.path.getsize(path) == 0:
        raise InputError(f"{kind} file '{path}' is empty; export the model again.")
    return path


def _short(err):
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


class TFLiteModel:
    """A ``.tflite`` file loaded with LiteRT, callable on float numpy arrays.

    Args:
        path: the ``.tflite`` file.
        num_threads: CPU threads of the interpreter (``None``: LiteRT's default).
        use_xnnpack: apply LiteRT's default XNNPack CPU delegate (``False`` runs the builtin
            kernels only).
        batch_size: examples per ``invoke`` in :meth:`predict`.
        output_kind: ``"logits"`` or ``"probabilities"`` to state what the output holds
            (default: read from the side-car or the file).

    Attributes:
        input_details, output_details: LiteRT's tensor details of the single input/output.
        input_shape: per-example input shape (``None`` for free dimensions).
        num_classes: classes of the output (its last axis; 2 for a one-unit binary head).
        output_kind: ``"probabilities"`` or ``"logits"``: from the side-car JSON written by
            ``to_tflite`` when it is there, else from the op producing the output (SOFTMAX /
            LOGISTIC), else ``None`` (unknown; pass ``output_kind=``).
        stateful: the file keeps variable tensors between invocations (e.g. the states of a
            fused LSTM); every ``invoke`` then starts from ``reset_all_variables()``, so each
            batch is run independently like the Keras model.
        is_tflite: ``True``; how the safety tests tell a ``.tflite`` target (no gradients)
            from a Keras model.

    Raises:
        InputError: a missing, empty or corrupt file.
        UnsupportedModelError: a model LiteRT cannot prepare (e.g. an op the delegate cannot
            run; try ``use_xnnpack=False``), or several inputs/outputs.

    Example:
        >>> m = TFLiteModel("model_int8.tflite")  # doctest: +SKIP
        >>> probs_or_logits = m.predict(x_test)  # float32, like the Keras model  # doctest: +SKIP
    """

    is_tflite = True

    def __init__(self, path, num_threads=None, use_xnnpack=True, batch_size=64, output_kind=None):
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            from tflite_export import flatbuffer  # reads LiteRT's schema module
        except ImportError as err:
            raise MissingDependencyError("Running .tflite files needs LiteRT: pip install ai-edge-litert") from err

        self.path = _check_file(path, "TFLite")
        self.num_threads = num_threads
        self.use_xnnpack = use_xnnpack
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(
                model_path=self.path, num_threads=num_threads, experimental_op_resolver_type=resolver
            )
        except (ValueError, RuntimeError) as err:
            raise InputError(
                f"'{self.path}' is not a valid .tflite model ({_short(err)}). The file may be "
                "truncated or not a TFLite flatbuffer; export it again with tflite_export.to_tflite."
            ) from err
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UnsupportedModelError(
                f"'{self.path}' has {len(inputs)} inputs and {len(outputs)} outputs; TFLiteModel "
                "runs single-input, single-output models."
            )
        signature = inputs[0]["shape_signature"]
        self._dynamic_batch = int(signature[0]) == -1
        self._fixed_batch = None if self._dynamic_batch else int(signature[0])
        self.input_shape = tuple(None if d == -1 else int(d) for d in signature[1:])
        self.output_width = int(outputs[0]["shape"][-1])
        self.num_classes = num_classes_of_outputs(self.output_width)
        with open(self.path, "rb") as f:
            content = f.read()
        self.stateful = flatbuffer.has_state(content)
        if output_kind is not None:
            self.output_kind = check_output_kind(output_kind, "output_kind")
        else:
            self.output_kind = read_output_kind(self.path) or flatbuffer.output_kind(content)
        self._batch = None
        self.allocate(self._fixed_batch or 1)

    def __repr__(self):
        return f"TFLiteModel('{self.path}', input_shape={self.input_shape}, num_classes={self.num_classes})"

    def allocate(self, batch, example_shape=None):
        """Size the input for `batch` examples of `example_shape` (free dimensions of the file:
        the batch, a sequence length) and allocate tensors."""
        example_shape = tuple(example_shape) if example_shape is not None else tuple(
            1 if d is None else d for d in self.input_shape)
        if (batch, example_shape) == self._batch:
            return
        index = self.interpreter.get_input_details()[0]["index"]
        if self._dynamic_batch or None in self.input_shape:
            self.interpreter.resize_tensor_input(index, [batch, *example_shape], strict=False)
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError as err:
            hint = " Try use_xnnpack=False." if self.use_xnnpack else ""
            raise UnsupportedModelError(
                f"LiteRT could not prepare '{self.path}': {_short(err)}.{hint}"
            ) from err
        self._batch = (batch, example_shape)
        self.input_details = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()[0]

    @property
    def input_quantization(self):
        """``(scale, zero_point)`` of the input; ``(0.0, 0)`` for a float input."""
        return tuple(self.input_details["quantization"])

    @property
    def output_quantization(self):
        """``(scale, zero_point)`` of the output; ``(0.0, 0)`` for a float output."""
        return tuple(self.output_details["quantization"])

    def quantize_input(self, x):
        """Float inputs as the input tensor's dtype (``q = round(x / scale) + zero_point``).

        Arrays already of an integer input dtype are passed through unchanged.
        """
        dtype = self.input_details["dtype"]
        x = np.asarray(x)
        if np.issubdtype(dtype, np.floating):
            return x.astype(dtype)
        if x.dtype == dtype:
            return x
        scale, zero_point = self.input_quantization
        if scale == 0:  # an integer input that is not quantized: token ids, category codes
            if x.dtype.kind == "f" and np.any(x != np.round(x)):
                raise InputError(
                    f"'{self.path}' takes {np.dtype(dtype).name} inputs (e.g. token ids) but x holds "
                    "non-integer values; pass the integer ids the model was trained on."
                )
            return x.astype(dtype)
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float64) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize_output(self, q):
        """Raw outputs as float32 (``(q - zero_point) * scale`` for quantized outputs)."""
        q = np.asarray(q)
        scale, zero_point = self.output_quantization
        if np.issubdtype(q.dtype, np.floating) or scale == 0:
            return q.astype(np.float32)
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def invoke(self, batch):
        """Run one already-quantized batch and return the raw output tensor."""
        self.allocate(len(batch), np.shape(batch)[1:])
        if self.stateful:  # independent batches: start from the initial state, as Keras does
            self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self.input_details["index"], batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_details["index"])

    def predict(self, x, batch_size=None):
        """Float32 outputs for ``x`` (float inputs are quantized as the file requires)."""
        x = check_features(x, "x", self.input_shape, dtype=None)
        q = self.quantize_input(x)
        step = self._fixed_batch or int(batch_size or self.batch_size)
        outputs = []
        for start in range(0, len(q), step):
            chunk = q[start:start + step]
            n = len(chunk)
            if self._fixed_batch and n < step:  # pad the last batch of a fixed-batch model
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            outputs.append(self.dequantize_output(self.invoke(chunk))[:n].copy())
        return np.concatenate(outputs, axis=0)

    __call__ = predict

    def accuracy(self, x, y, batch_size=None):
        """Top-1 accuracy on ``(x, y)`` (integer labels; a one-unit output is a binary classifier)."""
        return float(np.mean(self.predict_labels(x, batch_size) == np.asarray(y).reshape(-1)))

    def class_outputs(self, x, batch_size=None):
        """:meth:`predict` as ``(n, classes >= 2)``: a one-unit output ``z`` or ``p`` becomes
        ``[0, z]`` or ``[1 - p, p]`` (needs :attr:`output_kind`)."""
        outputs = self.predict(x, batch_size)
        if outputs.shape[-1] != 1:
            return outputs
        return class_scores(outputs, self._known_kind())

    def predict_labels(self, x, batch_size=None):
        """Predicted class ids."""
        return self.class_outputs(x, batch_size).argmax(axis=1)

    def _known_kind(self):
        if self.output_kind is None:
            raise InputError(
                f"Cannot tell whether '{self.path}' outputs logits or probabilities (no side-car "
                "JSON, and the last op is not SOFTMAX / LOGISTIC or an affine op). State it: "
                "TFLiteModel(path, output_kind='logits'|'probabilities'), output=... in the tfsafe "
                "call, or --output_kind on the command line."
            )
        return self.output_kind


class ONNXModel:
    """An ``.onnx`` file run with onnxruntime's CPU provider, with the same :meth:`predict`.

    Example:
        >>> m = ONNXModel("model.onnx")  # doctest: +SKIP
        >>> m.predict(x_test).shape  # doctest: +SKIP
        (360, 10)
    """

    def __init__(self, path, num_threads=None, batch_size=256):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingDependencyError("ONNX needs onnxruntime: pip install onnxruntime") from err
        self.path = _check_file(path, "ONNX")
        self.batch_size = int(batch_size)
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise InputError(f"'{self.path}' is not a valid ONNX model ({_short(err)}).") from err
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UnsupportedModelError(f"'{self.path}' must have one input and one output.")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])

    def predict(self, x, batch_size=None):
        """Float32 outputs for ``x``."""
        x = check_features(x, "x", self.input_shape)
        step = int(batch_size or self.batch_size)
        outs = [self.session.run(None, {self.input_name: x[i:i + step]})[0] for i in range(0, len(x), step)]
        return np.concatenate(outs, axis=0).astype(np.float32)

    __call__ = predict


def load_exported(path, **kwargs):
    """Open a ``.tflite`` or ``.onnx`` file as :class:`TFLiteModel` or :class:`ONNXModel`."""
    path = _check_file(path, "Exported model")
    if is_tflite_file(path):
        return TFLiteModel(path, **kwargs)
    if path.endswith(".onnx"):
        return ONNXModel(path, **kwargs)
    if path.endswith(".tflite"):
        return TFLiteModel(path, **kwargs)  # raises a clear error for a corrupt file
    raise InputError(f"'{path}' is neither a TFLite flatbuffer nor an .onnx file.")

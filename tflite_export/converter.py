"""Running TensorFlow's TFLite converter with tfsafe's settings, and its errors in one line.

:func:`convert_keras` sets the optimizations of each mode (int8 full-integer with int8 I/O,
dynamic range, float16, float32; optionally TFLite's sparse weight encoding), gives recurrent
models a fixed batch of 1 (TFLite's builtin LSTM needs it), captures the converter's C++
diagnostics and turns a failure into one :class:`~tfsafe.errors.UnsupportedModelError` naming
the ops without a builtin kernel. :func:`tflite_export.convert.to_tflite` builds on it.
"""

import contextlib
import os
import re
import sys
import tempfile
import warnings

from tfsafe._keras import keras, tf
from tfsafe.errors import UnsupportedModelError
from tfsafe.models import flat_layers

__all__ = ["convert_keras"]


def _converter_error(err, mode, text=None):
    text = str(err) if text is None else text
    ops = set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if select:
        ops.update(op.strip() for op in select.group(1).split(",") if op.strip())
    if ops:
        message = (
            f"TFLite has no builtin kernel for the TensorFlow op(s) {', '.join(sorted(ops))}; "
            "tflite_export writes builtin-only files (no Flex/Select TF ops, which phones would "
            "need an extra 5+ MB runtime for). Replace the layer(s) using them with standard layers."
        )
    else:
        lines = [line.strip()[:200] for line in text.splitlines() if "error" in line.lower()][:2]
        detail = " | ".join(lines) or " ".join(text.split())[:300]
        message = f"The TFLite converter failed for mode='{mode}': {detail}"
    if mode == "int8":
        message += " If an op has no int8 kernel, export with mode='dynamic' (int8 weights, float activations)."
    return UnsupportedModelError(message)


def _is_recurrent(model):
    """A recurrent layer that is still a loop (LSTM, or a GRU over a free number of steps)."""
    def loops(layer):
        inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
        return isinstance(inner, keras.layers.RNN) and not inner.unroll

    return any(loops(layer) for layer in flat_layers(model))


def _needs_fixed_batch(text):
    """The converter failed on TensorFlow's dynamic tensor lists (a recurrent loop over a free
    batch size); with a batch of 1 it lowers them (LSTM fuses to UNIDIRECTIONAL_SEQUENCE_LSTM)."""
    return "TensorList" in text or "tensor_list" in text


@contextlib.contextmanager
def _captured_stderr():
    """Send what the converter's C++ side prints on file descriptor 2 to a temp file.

    Yields a list that holds the captured text once the block ends (the converter writes tens
    of KB of MLIR diagnostics there, which the error message summarizes instead).
    """
    captured = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebooks): nothing to capture
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read().decode(errors="replace"))


def _converter(model, fixed_batch):
    if not fixed_batch:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    spec = model.inputs[0]
    signature = tf.TensorSpec([1, *spec.shape[1:]], spec.dtype)
    fn = tf.function(lambda t: model(t, training=False)).get_concrete_function(signature)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn], model)


def convert_keras(model, mode, calibration=None, integer_io=True, sparse=False, fixed_batch=None):
    """Convert ``model`` to ``.tflite`` bytes in ``mode``.

    Recurrent models (or a failure on dynamic tensor lists) get a fixed batch of 1, which
    TFLite's builtin kernels support.
    """
    if fixed_batch is None:
        fixed_batch = _is_recurrent(model)
    float_input = model.inputs[0].dtype.is_floating
    converter = _converter(model, fixed_batch)
    optimizations = [] if mode == "float32" else [tf.lite.Optimize.DEFAULT]
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if integer_io:
            if float_input:  # integer inputs (token ids) stay as they are
                converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with warnings.catch_warnings(), _captured_stderr() as log:
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected..."
        try:
            return converter.convert()
        except Exception as err:  # ConverterError and friends become one clear error
            failure = err
    text = f"{failure}\n{''.join(log)}"
    if not fixed_batch and _needs_fixed_batch(text):
        return convert_keras(model, mode, calibration, integer_io, sparse, fixed_batch=True)
    raise _converter_error(failure, mode, text) from failure

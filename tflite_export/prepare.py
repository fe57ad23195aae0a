"""Turn what the user hands to an exporter into a plain Keras model and clean float arrays.

- :func:`prepare_model`: a single-input, single-output ``tf_keras`` model of standard layers
  (Keras 3 models are converted, tfsafe / TF-MOT wrappers are stripped with
  :func:`tfsafe.compress.strip.strip`).
- :func:`calibration_array`: representative data for int8 calibration as a float32 array of
  the model's input shape (arrays, ``tf.data.Dataset`` or a generator function).
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.compress.strip import is_wrapped, strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import flat_layers
from tfsafe.validation import check_features, check_model, model_input_shape

__all__ = ["prepare_model", "calibration_array", "weight_sparsity", "unroll_recurrent", "loop_recurrent_layers"]

# Recurrent layers TFLite has no fused kernel for: their loop becomes a WHILE op, which int8
# calibration cannot run (it crashes the process) and XNNPack does not accelerate. With a known
# number of time steps they are unrolled into plain ops instead. LSTM fuses into
# UNIDIRECTIONAL_SEQUENCE_LSTM and is left as it is.
_UNROLLED_RNNS = ("GRU", "SimpleRNN")

# TF-MOT quantization-aware-training wrappers are meant to go through the TFLite converter as
# they are (the converter reads their fake-quant ranges), so they are not an error.
_CONVERTER_NATIVE_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
# Input dtypes a file may take: float features, or integer ids that are fed as they are (an
# int8 export quantizes activations and weights, never token ids).
_INPUT_DTYPES = (tf.float32, tf.int32, tf.int64)


def _is_compression_wrapper(layer):
    """A wrapper that is not a standard Keras layer (Bidirectional, TimeDistributed are fine)."""
    cls = type(layer)
    if not isinstance(layer, keras.layers.Wrapper) or cls.__name__ in _CONVERTER_NATIVE_WRAPPERS:
        return False
    return not cls.__module__.startswith("tf_keras")


def _strip_clustering(model):
    from tfsafe._keras import tfmot

    has_cluster = any(type(layer).__name__.startswith("ClusterWeights") for layer in flat_layers(model))
    return tfmot.clustering.keras.strip_clustering(model) if has_cluster else model


def prepare_model(model, name="model"):
    """Return a plain, single-input, single-output ``tf_keras`` model ready for conversion.

    Wrapped models (tfsafe compression wrappers, TF-MOT pruning and clustering) are stripped
    first, so masks and quantization grids are baked into ordinary weights. The input model
    is never modified.

    Raises:
        UnsupportedModelError: not a Keras model, a wrapper no stripper is registered for, or
            a model with several inputs or outputs.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> prepare_model(small_cnn()).name
        'small_cnn'
    """
    model = check_model(model, name)
    model = _strip_clustering(model)
    if is_wrapped(model):
        model = strip(model)
    leftover = [layer for layer in flat_layers(model) if _is_compression_wrapper(layer)]
    if leftover:
        layer = leftover[0]
        raise UnsupportedModelError(
            f"Layer '{layer.name}' is a {type(layer).__name__} wrapper that tfsafe cannot strip "
            "(no stripper is registered for it). Strip it yourself before export, or register "
            "one with tfsafe.compress.strip.register_stripper(wrapper_class, fn)."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"'{model.name}' has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "tflite_export handles single-input, single-output classifiers."
        )
    if model.inputs[0].dtype not in _INPUT_DTYPES:
        raise UnsupportedModelError(
            f"'{model.name}' takes {model.inputs[0].dtype.name} inputs; tflite_export handles "
            "float32 inputs (images, features) and int32 / int64 ids (tokens, categories). Cast "
            "inside the model if needed."
        )
    return model


def _rnn_to_unroll(layer):
    inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    return type(inner).__name__ in _UNROLLED_RNNS and not inner.unroll


def loop_recurrent_layers(model):
    """Names of GRU / SimpleRNN layers that stay loops (WHILE ops) after :func:`unroll_recurrent`:
    their number of time steps is not fixed."""
    return [layer.name for layer in flat_layers(model)
            if _rnn_to_unroll(layer) and layer.input_shape[1] is None]


def unroll_recurrent(model):
    """A copy of ``model`` whose GRU / SimpleRNN layers (also inside ``Bidirectional``) with a
    fixed number of time steps are unrolled (same weights, same outputs); ``model`` itself when
    there are none.

    Unrolled, they convert to plain FULLY_CONNECTED / ADD / MUL / LOGISTIC / TANH ops that
    quantize to int8 and run with a free batch size.
    """
    targets = [layer for layer in model.layers if _rnn_to_unroll(layer) and layer.input_shape[1] is not None]
    if not targets:
        return model

    def unrolled(layer):
        if layer not in targets:
            return None
        config = layer.get_config()
        if isinstance(layer, keras.layers.Bidirectional):
            config["layer"]["config"]["unroll"] = True
            if config.get("backward_layer"):
                config["backward_layer"]["config"]["unroll"] = True
        else:
            config["unroll"] = True
        return type(layer).from_config(config), layer.get_weights()

    return clone_with_weights(model, unrolled, "to_tflite")


def weight_sparsity(model):
    """Fraction of exact zeros among the kernels (weights with 2+ dims) of ``model``."""
    kernels = [w for w in model.get_weights() if w.ndim >= 2]
    total = sum(w.size for w in kernels)
    return float(sum(int(np.count_nonzero(w == 0)) for w in kernels) / total) if total else 0.0


def _collect(items, limit):
    arrays, count = [], 0
    for item in items:
        if isinstance(item, dict):
            item = next(iter(item.values()))
        if isinstance(item, (list, tuple)):
            if not item:
                raise InputError("representative_data yielded an empty list; yield [x] or (x, y).")
            item = item[0]  # [x] (the TFLite convention) or (x, y)
        arr = np.asarray(item)
        arrays.append(arr)
        count += 1 if arr.ndim == 0 else len(arr)
        if count >= limit:
            break
    return arrays


def _check_dtype(arr, name, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and np.any(arr != np.round(arr))):
            raise InputError(
                f"{name} has dtype {arr.dtype} with non-integer values, but the model takes "
                f"{np.dtype(dtype).name} ids (e.g. token ids); pass the ids the model is trained on."
            )
        return
    if arr.dtype.kind != "f":
        hint = " / 255" if arr.dtype == np.uint8 else ""
        raise InputError(
            f"{name} has dtype {arr.dtype}, but the model takes float32 inputs. Prepare it exactly "
            f"like the training inputs, e.g. x.astype('float32'){hint}."
        )


def calibration_array(data, input_shape, max_samples=500, name="representative_data", seed=0, dtype=np.float32,
                      mode="int8"):
    """Representative inputs as an array ``(n, *input_shape)`` of the model's input dtype, at most
    ``max_samples``.

    Args:
        data: a float array of examples, a ``tf.data.Dataset`` (of ``x`` or ``(x, y)``,
            batched or not), or a function returning an iterable of examples or ``[x]`` lists.
        input_shape: per-example input shape of the model.
        max_samples: number of examples to keep; larger arrays are subsampled at random
            (data sorted by class would otherwise calibrate on one class).
        name: used in error messages.
        seed: seed of the subsampling.
        dtype: the model's input dtype: float32, or int32 / int64 for ids (integer-valued
            data is accepted and cast).
        mode: the export mode that needs the data (named in the error).

    Raises:
        InputError: missing data, integer or non-numeric dtype, wrong shape, NaN/inf.
    """
    if data is None:
        raise InputError(
            f"mode='{mode}' needs {name}: pass a few hundred training inputs (e.g. x_train[:500]) "
            "so the converter can measure activation ranges."
        )
    if isinstance(data, tf.data.Dataset):
        arrays = _collect(data.as_numpy_iterator(), max_samples)
    elif callable(data):
        arrays = _collect(data(), max_samples)
    else:
        arrays = None
    if arrays is not None:
        if not arrays:
            raise InputError(f"{name} produced no examples.")
        for arr in arrays:
            _check_dtype(arr, name, dtype)
        # Unbatched elements have the input's rank; add the batch axis.
        arrays = [a[None] if a.ndim == len(input_shape) else a for a in arrays]
        try:
            data = np.concatenate(arrays, axis=0)
        except ValueError as err:
            raise InputError(f"{name} yields examples of different shapes: {err}") from err
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be an array of examples: {err}") from err
    if arr.dtype == object:
        raise InputError(f"{name} is a ragged or non-numeric array; pass examples of one shape.")
    _check_dtype(arr, name, dtype)
    arr = check_features(arr, name, tuple(input_shape), dtype=dtype)
    if len(arr) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(arr), max_samples, replace=False))
        arr = arr[keep]
    return arr


def input_shape_of(model):
    """Per-example input shape of a prepared model (``None`` for free dimensions)."""
    return tuple(model_input_shape(model))

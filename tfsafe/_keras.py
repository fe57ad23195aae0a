"""The one place that chooses the Keras tfsafe runs on.

TF-MOT only works with Keras 2 (``tf_keras``), while TensorFlow 2.16+ ships Keras 3 as
``tf.keras``. Importing this module sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is
imported, so ``tf.keras``, TF-MOT and tfsafe all see the same ``tf_keras``. Every other tfsafe
module imports ``tf``, ``keras`` and ``tfmot`` from here.

Keras 3 models are accepted through :func:`to_tf_keras`, which rebuilds a Sequential or
Functional model of standard layers in ``tf_keras`` with the same weights.
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    import warnings

    warnings.warn(
        "TensorFlow was imported before tfsafe without TF_USE_LEGACY_KERAS=1; tfsafe uses "
        "tf_keras directly, but tf.keras in your code is Keras 3. Import tfsafe first or set "
        "TF_USE_LEGACY_KERAS=1 to use one Keras everywhere.",
        stacklevel=2,
    )
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

from tfsafe.errors import UnsupportedModelError  # noqa: E402

__all__ = ["tf", "keras", "tfmot", "is_tf_keras_model", "is_keras3_model", "to_tf_keras"]

# Layers whose Keras 3 config can be read by tf_keras's layer of the same class name.
_CONVERTIBLE_LAYERS = frozenset(
    {
        "InputLayer", "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D",
        "Conv2DTranspose", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
        "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Dropout",
        "SpatialDropout2D", "BatchNormalization", "LayerNormalization", "Activation", "ReLU",
        "LeakyReLU", "ELU", "Softmax", "Add", "Concatenate", "Multiply", "Average",
        "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Rescaling", "Normalization",
        "Embedding", "Permute", "Identity",
    }
)
# Keras 3 config keys that tf_keras layers do not accept.
_KERAS3_ONLY_KEYS = ("dtype_policy", "quantization_config", "lora_rank", "lora_alpha",
                     "synchronized", "optional")


def is_tf_keras_model(obj):
    """True when ``obj`` is a ``tf_keras`` (Keras 2) model, the kind tfsafe works on."""
    return isinstance(obj, keras.Model)


def is_keras3_model(obj):
    """True when ``obj`` is a Keras 3 model (``keras.Model`` from the ``keras`` package)."""
    module = type(obj).__module__
    if not module.startswith("keras"):
        return False
    try:
        import keras as keras3  # noqa: PLC0415
    except ImportError:
        return False
    return isinstance(obj, keras3.Model)


def _clean_layer_config(config):
    config = dict(config)
    for key in _KERAS3_ONLY_KEYS:
        config.pop(key, None)
    dtype = config.get("dtype")
    if isinstance(dtype, dict):  # Keras 3 serializes the DTypePolicy as an object.
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    if "batch_shape" in config:  # InputLayer
        config["batch_input_shape"] = config.pop("batch_shape")
    for key, value in list(config.items()):
        if key.endswith("_initializer"):
            # The weights are copied after rebuilding, so initializers never run; Keras 3
            # initializer configs carry arguments tf_keras does not know.
            config.pop(key)
        elif isinstance(value, dict) and "class_name" in value and "module" in value:
            # Initializers, regularizers and constraints: tf_keras reads class_name + config.
            config[key] = {"class_name": value["class_name"], "config": value.get("config", {})}
    return config


def _rebuild_layer(layer3):
    class_name = type(layer3).__name__
    if class_name not in _CONVERTIBLE_LAYERS or not hasattr(keras.layers, class_name):
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' of type {class_name} to tf_keras: "
            f"tfsafe converts only standard layers ({', '.join(sorted(_CONVERTIBLE_LAYERS))}). "
            "Rebuild the model with tf_keras (import tf_keras as keras) or replace this layer."
        )
    config = _clean_layer_config(layer3.get_config())
    try:
        return getattr(keras.layers, class_name).from_config(config)
    except (TypeError, ValueError) as err:
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' ({class_name}) to tf_keras: {err}"
        ) from err


def to_tf_keras(model):
    """Return ``model`` as a ``tf_keras`` model with the same architecture and weights.

    A ``tf_keras`` model is returned unchanged. A Keras 3 Sequential or Functional model of
    standard layers is rebuilt layer by layer in ``tf_keras`` and its weights are copied, so
    the outputs are identical. Anything else raises :class:`UnsupportedModelError` naming the
    layer that cannot be converted.

    Args:
        model: A ``tf_keras.Model`` or a Keras 3 ``keras.Model``.

    Returns:
        A ``tf_keras.Model``.

    Example:
        >>> import keras  # Keras 3
        >>> k3 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> k2 = to_tf_keras(k3)
        >>> type(k2).__module__.startswith("tf_keras")
        True
    """
    if is_tf_keras_model(model):
        return model
    if not is_keras3_model(model):
        raise UnsupportedModelError(
            f"Expected a Keras model, got {type(model).__name__}. Pass a tf_keras or Keras 3 "
            "model, or load one with tfsafe.load_model(path)."
        )
    class_name = type(model).__name__
    if class_name == "Sequential":
        layers = [_rebuild_layer(layer) for layer in model.layers]
        input_shape = tuple(model.inputs[0].shape[1:])
        rebuilt = keras.Sequential([keras.Input(input_shape)] + layers, name=model.name)
    elif class_name == "Functional":
        rebuilt = _rebuild_functional(model)
    else:
        raise UnsupportedModelError(
            f"Cannot convert a subclassed Keras 3 model ({class_name}): tfsafe can rebuild "
            "only Sequential and Functional models. Express it as a Functional model."
        )
    weights = model.get_weights()
    if len(weights) != len(rebuilt.get_weights()):
        raise UnsupportedModelError(
            f"Converted model has {len(rebuilt.get_weights())} weight tensors but the Keras 3 "
            f"model has {len(weights)}; a layer changed its variables between versions."
        )
    rebuilt.set_weights(weights)
    return rebuilt


def _rebuild_functional(model):
    tensors = {}
    for input_tensor in model.inputs:
        layer3 = input_tensor._keras_history.operation
        tensors[id(input_tensor)] = keras.Input(
            tuple(input_tensor.shape[1:]), name=layer3.name, dtype=input_tensor.dtype
        )
    # Keras 3 keeps the graph in model._operations in topological order.
    for node_layer in model.layers:
        if type(node_layer).__name__ == "InputLayer":
            continue
        new_layer = _rebuild_layer(node_layer)
        for node in node_layer._inbound_nodes:
            args = node.arguments
            inputs = args.args[0] if args.args else next(iter(args.kwargs.values()))
            if isinstance(inputs, (list, tuple)):
                if not all(id(t) in tensors for t in inputs):
                    continue
                new_inputs = [tensors[id(t)] for t in inputs]
            else:
                if id(inputs) not in tensors:
                    continue
                new_inputs = tensors[id(inputs)]
            outputs = new_layer(new_inputs)
            for out3, out2 in zip(node.outputs, tf.nest.flatten(outputs)):
                tensors[id(out3)] = out2
    try:
        inputs = [tensors[id(t)] for t in model.inputs]
        outputs = [tensors[id(t)] for t in model.outputs]
    except KeyError as err:
        raise UnsupportedModelError(
            "Could not trace the Keras 3 functional graph (shared layers or nested models); "
            "rebuild the model with tf_keras."
        ) from err
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )

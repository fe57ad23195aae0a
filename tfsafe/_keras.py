"""The one place that chooses the Keras tfsafe runs on.

TF-MOT only works with Keras 2 (``tf_keras``), while TensorFlow 2.16+ ships Keras 3 as
``tf.keras``. Importing this module sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is
imported, so ``tf.keras``, TF-MOT and tfsafe all see the same ``tf_keras``. Every other tfsafe
module imports ``tf``, ``keras`` and ``tfmot`` from here.

Keras 3 models are accepted through :func:`to_tf_keras`, which rebuilds a Sequential or
Functional model of standard layers in ``tf_keras`` with the same weights.
"""

import inspect
import logging
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

__all__ = ["tf", "keras", "tfmot", "is_tf_keras_model", "is_keras3_model", "to_tf_keras", "flatten_nested",
           "has_nested_models", "class_name_of"]

# Layers whose Keras 3 config can be read by tf_keras's layer of the same class name (after
# the key translations below).
_CONVERTIBLE_LAYERS = frozenset(
    {
        "InputLayer", "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D",
        "Conv2DTranspose", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
        "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Dropout",
        "SpatialDropout1D", "SpatialDropout2D", "AlphaDropout", "BatchNormalization",
        "LayerNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax",
        "Add", "Subtract", "Concatenate", "Multiply", "Average", "Maximum", "Minimum",
        "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D",
        "UpSampling2D", "Rescaling", "Normalization", "Embedding", "Permute", "Identity",
        "RepeatVector", "LSTM", "GRU", "SimpleRNN", "Bidirectional", "TimeDistributed",
        "CenterCrop", "Resizing",
    }
)
# Layers that are the identity at inference (training-time augmentation and noise). They are
# converted to tf_keras Identity layers with a logged note.
_INFERENCE_IDENTITY_LAYERS = frozenset(
    {
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
        "RandomBrightness", "RandomHue", "RandomSaturation", "RandomSharpness", "RandomGrayscale",
        "RandomShear", "RandomPosterization", "RandomInvert", "RandomErasing",
        "RandomGaussianBlur", "RandomColorJitter", "RandomColorDegeneration",
        "RandomPerspective", "RandomElasticTransform", "RandomApply", "RandomChoice",
        "AugMix", "RandAugment", "CutMix", "MixUp", "GaussianNoise", "GaussianDropout",
        "ActivityRegularization",
    }
)
# Keras 3 config keys that tf_keras layers do not accept and that do not change inference.
_KERAS3_ONLY_KEYS = ("dtype_policy", "quantization_config", "lora_rank", "lora_alpha",
                     "synchronized", "optional", "seed_generator")
# Keras 3 keys renamed in tf_keras: {class: {keras3_key: tf_keras_key}}.
_RENAMED_KEYS = {"LeakyReLU": {"negative_slope": "alpha"}}


@keras.utils.register_keras_serializable(package="tfsafe")
def hard_sigmoid(x):
    """Keras 3's ``hard_sigmoid``: ``relu6(x + 3) / 6`` (tf_keras' own is ``0.2 x + 0.5``)."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@keras.utils.register_keras_serializable(package="tfsafe")
def hard_silu(x):
    """Keras 3's ``hard_silu`` / ``hard_swish``: ``x * relu6(x + 3) / 6`` (MobileNetV3)."""
    return x * hard_sigmoid(x)


# Keras 3 activation names tf_keras knows under another name (or with another formula).
_ACTIVATION_NAMES = {"silu": "swish", "hard_silu": "tfsafe>hard_silu", "hard_swish": "tfsafe>hard_silu",
                     "hard_sigmoid": "tfsafe>hard_sigmoid"}
# Arguments every tf_keras layer accepts through ``**kwargs`` (base Layer).
_BASE_LAYER_KEYS = {"trainable", "name", "dtype", "dynamic", "input_dim", "input_shape",
                    "batch_input_shape", "batch_size", "weights", "activity_regularizer",
                    "autocast", "implementation"}

_log = logging.getLogger("tfsafe")


def is_tf_keras_model(obj):
    """True when ``obj`` is a ``tf_keras`` (Keras 2) model, the kind tfsafe works on."""
    return isinstance(obj, keras.Model)


def _keras3():
    try:
        import keras as keras3  # optional: only present with Keras 3 installed
    except ImportError:
        return None
    return keras3


def is_keras3_model(obj):
    """True when ``obj`` is a Keras 3 model (``keras.Model`` from the ``keras`` package)."""
    if not type(obj).__module__.startswith("keras"):
        return False
    keras3 = _keras3()
    return keras3 is not None and isinstance(obj, keras3.Model)


def _accepted_keys(cls):
    keys = set(_BASE_LAYER_KEYS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            keys.update(p for p in inspect.signature(init).parameters if p not in ("self", "kwargs", "args"))
    return keys


def _keras3_default(layer3, key):
    for klass in type(layer3).__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            param = inspect.signature(init).parameters.get(key)
            if param is not None and param.default is not inspect.Parameter.empty:
                return param.default
    return inspect.Parameter.empty


def _clean_layer_config(layer3, cls):
    """Translate a Keras 3 layer's config into one ``cls`` (the tf_keras class) accepts."""
    class_name = type(layer3).__name__
    config = dict(layer3.get_config())
    for key in _KERAS3_ONLY_KEYS:
        config.pop(key, None)
    for old, new in _RENAMED_KEYS.get(class_name, {}).items():
        if old in config:
            config[new] = config.pop(old)
    dtype = config.get("dtype")
    if isinstance(dtype, dict):  # Keras 3 serializes the DTypePolicy as an object.
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    if "batch_shape" in config:  # InputLayer
        config["batch_input_shape"] = config.pop("batch_shape")
    if isinstance(config.get("activation"), str):
        config["activation"] = _ACTIVATION_NAMES.get(config["activation"], config["activation"])
    for key, value in list(config.items()):
        if key.endswith("_initializer"):
            # The weights are copied after rebuilding, so initializers never run; Keras 3
            # initializer configs carry arguments tf_keras does not know.
            config.pop(key)
        elif isinstance(value, dict) and "class_name" in value and "module" in value:
            # Regularizers and constraints: tf_keras reads class_name + config.
            config[key] = {"class_name": value["class_name"], "config": value.get("config", {})}
    accepted = _accepted_keys(cls)
    for key in [k for k in config if k not in accepted]:
        value = config.pop(key)
        default = _keras3_default(layer3, key)
        if value in (None, False) or (default is not inspect.Parameter.empty and value == default):
            continue  # a Keras 3 option left at its default: tf_keras behaves the same
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' ({class_name}) to tf_keras: option "
            f"{key}={value!r} has no tf_keras equivalent. Set it to its default "
            f"({'unset' if default is inspect.Parameter.empty else repr(default)}) or rebuild the "
            "model with tf_keras."
        )
    return config


def _rebuild_layer(layer3):
    """A new, unbuilt tf_keras layer equivalent to the Keras 3 ``layer3`` at inference."""
    class_name = type(layer3).__name__
    if class_name in _INFERENCE_IDENTITY_LAYERS:
        _log.warning("tfsafe: Keras 3 layer '%s' (%s) is the identity at inference; converted to an "
                     "Identity layer.", layer3.name, class_name)
        return keras.layers.Identity(name=layer3.name)
    if class_name not in _CONVERTIBLE_LAYERS or not hasattr(keras.layers, class_name):
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' of type {class_name} to tf_keras: "
            f"tfsafe converts only standard layers ({', '.join(sorted(_CONVERTIBLE_LAYERS))}) and "
            "inference-time identities (augmentation, noise). Rebuild the model with tf_keras "
            "(import tf_keras as keras) or replace this layer."
        )
    if class_name in ("Bidirectional", "TimeDistributed"):
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' ({class_name}): wrapper layers are not "
            "converted; rebuild the model with tf_keras."
        )
    cls = getattr(keras.layers, class_name)
    config = _clean_layer_config(layer3, cls)
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as err:
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' ({class_name}) to tf_keras: {err}"
        ) from err


def _copy_weights(layer3, layer2):
    weights = layer3.get_weights()
    if class_name_of(layer3) == "Normalization" and len(weights) != len(layer2.weights):
        # Keras 3 keeps no variables when mean / variance are given in the config.
        return
    if len(weights) != len(layer2.weights):
        raise UnsupportedModelError(
            f"Cannot convert Keras 3 layer '{layer3.name}' ({class_name_of(layer3)}): it has "
            f"{len(weights)} weight tensors but the tf_keras layer has {len(layer2.weights)}."
        )
    layer2.set_weights(weights)


def class_name_of(obj):
    """The class name of ``obj`` (``type(obj).__name__``)."""
    return type(obj).__name__


def to_tf_keras(model):
    """Return ``model`` as a ``tf_keras`` model with the same architecture and weights.

    A ``tf_keras`` model is returned unchanged. A Keras 3 Sequential or Functional model is
    rebuilt in ``tf_keras`` and its weights are copied layer by layer, so the outputs are the
    same. Supported: the standard layers (config keys translated, e.g. LeakyReLU
    ``negative_slope`` -> ``alpha``; a Keras-3-only option at a non-default value is refused
    naming the key), nested models used as layers (converted recursively), inline ops
    between layers (``x[:, :48]``, ``keras.ops.relu(x)``, ``x * 2.0``: replayed with the
    TensorFlow backend, so they become tf_keras ``TFOpLambda`` layers) and integer inputs.
    Augmentation and noise layers, the identity at inference, become ``Identity`` layers and a
    note is logged on the ``tfsafe`` logger.

    Args:
        model: A ``tf_keras.Model`` or a Keras 3 ``keras.Model``.

    Returns:
        A ``tf_keras.Model``.

    Raises:
        UnsupportedModelError: a subclassed model, or a layer / op that cannot be converted
            (named in the message).

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
    class_name = class_name_of(model)
    if class_name not in ("Sequential", "Functional"):
        raise UnsupportedModelError(
            f"Cannot convert a subclassed Keras 3 model ({class_name}, '{model.name}'): tfsafe can "
            "rebuild only Sequential and Functional models. Express it as a Functional model."
        )
    try:
        model_inputs = model.inputs
    except (AttributeError, ValueError):
        model_inputs = None
    if not model_inputs:
        raise UnsupportedModelError(
            f"Keras 3 model '{model.name}' has no defined input; build it with keras.Input(shape) "
            "before converting."
        )
    if class_name == "Sequential":
        return _rebuild_sequential(model)
    return _rebuild_functional(model)


def _rebuild_sequential(model):
    input3 = model.inputs[0]
    layers = []
    for layer3 in model.layers:
        layers.append(to_tf_keras(layer3) if is_keras3_model(layer3) else _rebuild_layer(layer3))
    rebuilt = keras.Sequential(
        [keras.Input(tuple(input3.shape[1:]), dtype=input3.dtype)] + layers, name=model.name)
    for layer3, layer2 in zip(model.layers, layers):
        if not is_keras3_model(layer3):
            _copy_weights(layer3, layer2)
    return rebuilt


def _apply_op(op, args, kwargs):
    """Replay a Keras 3 op (not a layer) on tf_keras tensors with the TensorFlow backend."""
    try:
        return op.call(*args, **kwargs)
    except Exception as err:  # any failure means the op cannot be replayed
        raise UnsupportedModelError(
            f"Cannot convert the inline op '{op.name}' ({class_name_of(op)}) of the Keras 3 model to "
            f"tf_keras ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}). "
            "Express it as a Keras layer or rebuild the model with tf_keras."
        ) from err


def _rebuild_functional(model):
    keras3 = _keras3()
    tensors = {}
    for input_tensor in model.inputs:
        layer3 = input_tensor._keras_history.operation
        tensors[id(input_tensor)] = keras.Input(
            tuple(input_tensor.shape[1:]), name=layer3.name, dtype=input_tensor.dtype
        )
    converted = {}  # id(Keras 3 layer) -> tf_keras layer: shared layers stay shared
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if class_name_of(op) == "InputLayer":
                continue
            flat_inputs = [t for t in tf.nest.flatten((node.arguments.args, node.arguments.kwargs))
                           if isinstance(t, keras3.KerasTensor)]
            missing = [t for t in flat_inputs if id(t) not in tensors]
            if missing:
                raise UnsupportedModelError(
                    f"Cannot convert Keras 3 model '{model.name}': the input of '{op.name}' "
                    f"({class_name_of(op)}) comes from outside the model's graph."
                )
            args, kwargs = node.arguments.fill_in(tensors)
            if isinstance(op, keras3.Model):
                if id(op) not in converted:
                    converted[id(op)] = to_tf_keras(op)
                outputs = converted[id(op)](*args, **kwargs)
            elif isinstance(op, keras3.layers.Layer):
                new = id(op) not in converted
                if new:
                    converted[id(op)] = _rebuild_layer(op)
                outputs = converted[id(op)](*args, **kwargs)
                if new:
                    _copy_weights(op, converted[id(op)])
            else:
                outputs = _apply_op(op, args, kwargs)
            for out3, out2 in zip(node.outputs, tf.nest.flatten(outputs)):
                tensors[id(out3)] = out2
    inputs = [tensors[id(t)] for t in model.inputs]
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )


class _Reused(list):
    """A tensor list whose ``pop`` keeps the value (tf_keras ``Node.map_arguments`` pops)."""

    def pop(self, index=-1):
        return self[index]


def has_nested_models(model):
    """True when a layer of the tf_keras ``model`` is itself a model."""
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def flatten_nested(model):
    """Return ``model`` with every nested model (a backbone used as a layer) inlined.

    The result is one Functional ``tf_keras`` model that calls the same layer objects (so it
    shares their weights with ``model``) in the same order. A model without nested models is
    returned unchanged.

    Raises:
        UnsupportedModelError: when a nested model is subclassed (its graph is unknown).

    Example:
        >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
        >>> [type(l).__name__ for l in flatten_nested(outer).layers]
        ['InputLayer', 'Dense', 'Dense']
    """
    if not has_nested_models(model):
        return model
    _check_graph_network(model)
    inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=t.name.split(":")[0].split("/")[0])
              for t in model.inputs]
    outputs = _replay(model, inputs)
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)


def _check_graph_network(model):
    if not getattr(model, "_is_graph_network", False):
        raise UnsupportedModelError(
            f"'{model.name}' is a subclassed model used as a layer; tfsafe can only see inside "
            "Sequential and Functional models. Express it as a Functional model."
        )


def _replay(model, inputs):
    tensors = {str(id(x)): _Reused([y]) for x, y in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(t not in tensors for t in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            layer = node.layer
            if isinstance(layer, keras.Model):
                _check_graph_network(layer)
                inner = tf.nest.flatten(args[0] if args else next(iter(kwargs.values())))
                outputs = _replay(layer, inner)
            else:
                outputs = layer(*args, **kwargs)
            for out_id, value in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensors[out_id] = _Reused([value])
    flat = [tensors[str(id(x))][-1] for x in tf.nest.flatten(model._nested_outputs)]
    return tf.nest.pack_sequence_as(model._nested_outputs, flat)

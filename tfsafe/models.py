"""Small reference models and helpers to read a classifier's logits and probabilities.

tfsafe accepts classifiers that end in a softmax or sigmoid (probabilities) or not (logits),
including one-unit binary heads. Attacks and audits need logits, since a saturated softmax
hides gradients and membership signal, so :func:`logits_model` returns a view of the model
without its final activation, and a one-unit head ``z`` becomes the two-class logits
``[0, z]`` (:func:`class_scores` does the same for outputs already computed, e.g. by a
``.tflite`` file or a callable). Whether outputs are probabilities is read from the model
(:func:`output_kind`), never guessed from their values.
"""

import weakref

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError

__all__ = ["small_cnn", "lenet", "mlp", "small_resnet", "logits_model", "ends_with_softmax", "final_activation",
           "output_kind", "check_output_kind", "class_scores", "to_probabilities", "num_classes_of_outputs",
           "BinaryLogits", "compiled_logits", "predict_logits", "predict_proba", "accuracy", "copy_model",
           "compile_classifier", "flat_layers"]


def small_cnn(input_shape=(8, 8, 1), num_classes=10, filters=(16, 32), dense=64, name="small_cnn"):
    """A small conv net for digits-size inputs (the demo and test model).

    Example:
        >>> model = small_cnn((8, 8, 1), 10)
        >>> model.output_shape
        (None, 10)
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def lenet(input_shape=(28, 28, 1), num_classes=10, name="lenet"):
    """The LeNet of the ATMC paper: conv20@5x5, pool, conv50@5x5, pool, fc500 + ReLU, fc10."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(20, 5, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(50, 5, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(500, activation="relu", name="fc1"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name=name,
    )


def small_resnet(input_shape=(32, 32, 3), num_classes=10, filters=(16, 32, 64), blocks=1, bn_momentum=0.9,
                 name="small_resnet"):
    """A small residual CNN with batch norm for CIFAR-size inputs (He et al., 2016, scaled down).

    A 3x3 Conv-BN-ReLU stem, then one stage per entry of ``filters`` of ``blocks`` basic blocks
    (Conv-BN-ReLU-Conv-BN, added to the shortcut, then ReLU); every stage after the first starts
    with stride 2 and a 1x1 Conv-BN projection shortcut. Global average pooling and a logits
    layer close it. Only standard Keras layers, so TF-MOT pruning and tfsafe's compressors
    wrap it layer by layer. ``bn_momentum`` 0.9 (not Keras' 0.99) lets the moving statistics
    settle within the few hundred steps small training sets give.

    Args:
        input_shape: ``(height, width, channels)``.
        num_classes: Width of the logits output.
        filters: Filters of each stage; one stride-2 downsampling per stage after the first.
        blocks: Basic blocks per stage.
        bn_momentum: Momentum of every BatchNormalization.

    Returns:
        A functional ``keras.Model`` mapping float32 ``(batch, *input_shape)`` to ``(batch, num_classes)`` logits.

    Example:
        >>> small_resnet((32, 32, 3), 10).output_shape
        (None, 10)
    """
    def conv_bn(x, f, kernel, stride, label):
        x = keras.layers.Conv2D(f, kernel, strides=stride, padding="same", use_bias=False, name=f"{label}_conv")(x)
        return keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{label}_bn")(x)

    inputs = keras.Input(input_shape)
    x = keras.layers.ReLU(name="stem_relu")(conv_bn(inputs, filters[0], 3, 1, "stem"))
    for s, f in enumerate(filters):
        for b in range(int(blocks)):
            label = f"s{s + 1}b{b + 1}"
            stride = 2 if s > 0 and b == 0 else 1
            shortcut = x if stride == 1 and x.shape[-1] == f else conv_bn(x, f, 1, stride, f"{label}_proj")
            h = keras.layers.ReLU(name=f"{label}_relu1")(conv_bn(x, f, 3, stride, f"{label}_1"))
            h = conv_bn(h, f, 3, 1, f"{label}_2")
            x = keras.layers.ReLU(name=f"{label}_relu2")(keras.layers.Add(name=f"{label}_add")([shortcut, h]))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def mlp(input_shape=(8, 8, 1), num_classes=10, units=(128,), name="mlp"):
    """A plain multilayer perceptron."""
    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(u, activation="relu", name=f"fc{i + 1}") for i, u in enumerate(units)]
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name)


OUTPUT_KINDS = ("logits", "probabilities")
_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def _activation_name(layer):
    """Name of the activation a layer applies last (``"softmax"``, ``"sigmoid"``, ...) or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if not hasattr(layer, "activation") and getattr(layer, "layer", None) is not None:
        return _activation_name(layer.layer)  # a wrapper (TF-MOT pruning, PrunableSafe): its layer's
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    for name in _PROBABILITY_ACTIVATIONS:
        if activation is getattr(keras.activations, name):
            return name
    return getattr(activation, "__name__", None)


def _output_node(model):
    """``(layer, node_index)`` producing the single output of a graph model, or ``(None, None)``."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1 or not hasattr(outputs[0], "_keras_history"):
        return None, None
    history = outputs[0]._keras_history
    return history.layer, history.node_index


def final_activation(model):
    """The activation the model's output passes through last, looking inside nested models.

    Returns:
        ``"softmax"``, ``"sigmoid"``, another activation's name, or None (no activation).
    """
    layer, _ = _output_node(model)
    if layer is None:
        layer = model.layers[-1] if getattr(model, "layers", None) else None
    if layer is None:
        return None
    if isinstance(layer, keras.Model):
        return final_activation(layer)
    return _activation_name(layer)


def ends_with_softmax(model):
    """True when the model's output is a softmax (layer activation, Activation or Softmax)."""
    return final_activation(model) == "softmax"


def output_kind(model):
    """``"probabilities"`` when a Keras model ends in a softmax or sigmoid, else ``"logits"``.

    Read from the model's graph (nested models included), never from the output values: a
    dequantized int8 softmax does not sum to one exactly.
    """
    return "probabilities" if final_activation(model) in _PROBABILITY_ACTIVATIONS else "logits"


def check_output_kind(kind, name="output"):
    """``kind`` if it is ``"logits"`` or ``"probabilities"``, else an :class:`InputError`."""
    if kind not in OUTPUT_KINDS:
        raise InputError(f"{name} must be 'logits' or 'probabilities', got {kind!r}.")
    return kind


def class_scores(outputs, kind):
    """A classifier's raw outputs as ``(n, classes)`` logits or probabilities, ``classes >= 2``.

    A one-unit output is a binary classifier: the logit ``z`` becomes ``[0, z]`` (softmax of it
    is ``[1 - sigmoid(z), sigmoid(z)]``), the probability ``p`` becomes ``[1 - p, p]``. Wider
    outputs are returned unchanged.

    Args:
        outputs: ``(n,)``, ``(n, 1)`` or ``(n, classes)`` numpy array.
        kind: ``"logits"`` or ``"probabilities"`` (what ``outputs`` are).

    Returns:
        float32 array ``(n, max(2, classes))``.
    """
    check_output_kind(kind, "kind")
    out = np.asarray(outputs, np.float32)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise InputError(f"Expected classifier outputs of shape (examples, classes), got {out.shape}.")
    if out.shape[1] != 1:
        return out
    if kind == "logits":
        return np.concatenate([np.zeros_like(out), out], axis=1)
    return np.concatenate([1.0 - out, out], axis=1)


def to_probabilities(outputs, kind):
    """``(n, classes >= 2)`` probabilities from logits or probabilities (one-unit heads widened)."""
    scores = class_scores(outputs, kind)
    return scores if kind == "probabilities" else tf.nn.softmax(scores).numpy()


def num_classes_of_outputs(width):
    """Classes of a classifier whose output has ``width`` values: 2 for a one-unit (binary) head."""
    return max(2, int(width))


@keras.utils.register_keras_serializable(package="tfsafe")
class BinaryLogits(keras.layers.Layer):
    """``z`` of shape ``(batch, 1)`` -> ``[0, z]``: the two-class logits of a one-unit head.

    ``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]``, so cross-entropy on these logits is the
    binary cross-entropy of the sigmoid head and class 1 is the positive class.
    """

    def call(self, inputs):
        return tf.concat([tf.zeros_like(inputs), inputs], axis=-1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([2])


def _pre_activation(model, name):
    """A functional model sharing ``model``'s weights whose output skips the final softmax /
    sigmoid (nested models are opened); None when there is nothing to remove."""
    if final_activation(model) not in _PROBABILITY_ACTIVATIONS:
        return None
    layer, node_index = _output_node(model)
    if layer is None:
        return None
    inputs = layer._inbound_nodes[node_index].input_tensors
    if isinstance(layer, keras.Model):
        inner = _pre_activation(layer, f"{layer.name}_logits")
        if inner is None:
            return None
        return keras.Model(model.inputs, inner(inputs), name=name)
    if isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
        return keras.Model(model.inputs, inputs, name=name)
    # Dense/Conv with a softmax/sigmoid activation: re-run the layer's own call without it.
    outputs = _WithoutActivation(layer, name=f"{layer.name}_logits")(inputs)
    return keras.Model(model.inputs, outputs, name=name)


def logits_model(model):
    """Return a model with the same weights that outputs logits, at least two per example.

    The final softmax or sigmoid (layer activation, ``Activation``, ``Softmax``; inside nested
    models too) is removed, so attacks differentiate the pre-activation logits rather than the
    log of a saturated probability. A one-unit head (sigmoid or linear) becomes the two-class
    logits ``[0, z]`` (:class:`BinaryLogits`). A model that already outputs two or more logits
    is returned unchanged. The returned model shares variables with ``model``: training one
    trains the other.
    """
    if not isinstance(model, keras.Model):
        return model
    logits = _pre_activation(model, f"{model.name}_logits")
    if logits is None and not _one_unit(model):
        return model
    base = logits if logits is not None else model
    if _one_unit(base):
        return keras.Model(base.inputs, BinaryLogits(name="binary_logits")(base.outputs[0]),
                           name=f"{model.name}_logits")
    return base


def _one_unit(model):
    outputs = getattr(model, "outputs", None)
    return bool(outputs) and len(outputs) == 1 and outputs[0].shape[-1] == 1


class _WithoutActivation(keras.layers.Layer):
    """Runs ``layer.call`` with its activation switched to linear (shares its weights)."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs):
        target = self.layer
        while not hasattr(target, "activation") and getattr(target, "layer", None) is not None:
            target = target.layer  # a wrapper (TF-MOT pruning, PrunableSafe) calls its layer's activation
        saved = target.activation
        target.activation = keras.activations.linear
        try:
            return self.layer.call(inputs)
        finally:
            target.activation = saved


_COMPILED_LOGITS = weakref.WeakKeyDictionary()


def compiled_logits(model):
    """A cached ``tf.function`` computing a Keras model's logits in inference mode.

    One compiled function per model (a new ``tf.function`` per call would retrace every time).
    Anything that is not a Keras model (a callable returning logits) is returned as it is.
    """
    if not isinstance(model, keras.Model):
        return model
    fn = _COMPILED_LOGITS.get(model)
    if fn is None:
        lm = logits_model(model)
        fn = tf.function(lambda t: lm(t, training=False), reduce_retracing=True)
        _COMPILED_LOGITS[model] = fn
    return fn


def predict_logits(model, x, batch_size=512):
    """Logits of ``model`` (a Keras model or a callable returning logits) on ``x``, as float32 numpy.

    Keras models run in inference mode through :func:`compiled_logits`. One-unit outputs come
    back as two-class logits ``[0, z]``.
    """
    fn = compiled_logits(model)
    x = np.asarray(x, np.float32)
    outs = [np.asarray(fn(tf.constant(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return class_scores(np.concatenate(outs, axis=0), "logits")


def predict_proba(model, x, batch_size=512):
    """Class probabilities of ``model`` on ``x`` (inference mode)."""
    logits = predict_logits(model, x, batch_size)
    return tf.nn.softmax(logits).numpy()


def accuracy(model, x, y=None, batch_size=512):
    """Top-1 accuracy of ``model`` on integer labels: ``accuracy(model, x, y)`` or
    ``accuracy(model, (x, y))`` (e.g. ``splits.test``).

    Raises:
        InputError: ``y`` missing and ``x`` is not an ``(x, y)`` pair.
    """
    if y is None:
        if not (isinstance(x, (tuple, list)) and len(x) == 2):
            raise InputError("accuracy(model, x, y) or accuracy(model, (x, y)): labels are missing.")
        x, y = x
    logits = predict_logits(model, x, batch_size)
    return float(np.mean(logits.argmax(axis=1) == np.asarray(y).reshape(-1)))


def copy_model(model):
    """A clone of ``model`` (same architecture, new variables) holding the same weights.

    Example:
        >>> original = small_cnn()
        >>> copy = copy_model(original)
        >>> copy is not original and all((a == b).all() for a, b in zip(copy.get_weights(), original.get_weights()))
        True
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def compile_classifier(model, learning_rate=1e-3):
    """Compile ``model`` for plain training: Adam, cross-entropy (on logits, or on the
    probabilities of a model that ends with a softmax / sigmoid; binary for a one-unit head)
    and accuracy.

    Example:
        >>> compile_classifier(small_cnn()).optimizer.__class__.__name__
        'Adam'
    """
    from_logits = output_kind(model) == "logits"
    if model.outputs[0].shape[-1] == 1:  # a one-unit binary head on 0/1 labels
        loss = keras.losses.BinaryCrossentropy(from_logits=from_logits)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])
    return model


def flat_layers(model):
    """The layers of ``model`` in order, with nested models expanded into their own layers."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer)
        else:
            yield layer

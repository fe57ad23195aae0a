"""Small reference models and helpers to read a classifier's logits and probabilities.

tfsafe accepts classifiers that end in a softmax (probabilities) or not (logits). Attacks and
audits need logits, since a saturated softmax hides gradients and membership signal, so
:func:`logits_model` returns a view of the model without its final softmax.
"""

import weakref

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError

__all__ = ["small_cnn", "lenet", "mlp", "logits_model", "ends_with_softmax", "compiled_logits",
           "predict_logits", "predict_proba", "accuracy", "copy_model", "compile_classifier", "flat_layers"]


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


def mlp(input_shape=(8, 8, 1), num_classes=10, units=(128,), name="mlp"):
    """A plain multilayer perceptron."""
    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(u, activation="relu", name=f"fc{i + 1}") for i, u in enumerate(units)]
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name)


def ends_with_softmax(model):
    """True when the model's output is a softmax (layer activation, Activation or Softmax)."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


def logits_model(model):
    """Return a model with the same weights that outputs logits (the final softmax removed).

    A model that already outputs logits is returned unchanged. The returned model shares
    variables with ``model``: training one trains the other.
    """
    if not ends_with_softmax(model):
        return model
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax) or isinstance(last, keras.layers.Activation):
        pre = last.input
        return keras.Model(model.inputs, pre, name=f"{model.name}_logits")

    # Dense/Conv with activation='softmax': re-run the layer's own call without the activation.
    outputs = _WithoutActivation(last, name=f"{last.name}_logits")(last.input)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_logits")


class _WithoutActivation(keras.layers.Layer):
    """Runs ``layer.call`` with its activation switched to linear (shares its weights)."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs):
        saved = self.layer.activation
        self.layer.activation = keras.activations.linear
        try:
            return self.layer.call(inputs)
        finally:
            self.layer.activation = saved


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

    Keras models run in inference mode through :func:`compiled_logits`.
    """
    fn = compiled_logits(model)
    x = np.asarray(x, np.float32)
    outs = [np.asarray(fn(tf.constant(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0).astype(np.float32)


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
    probabilities of a model that ends with a softmax) and accuracy.

    Example:
        >>> compile_classifier(small_cnn()).optimizer.__class__.__name__
        'Adam'
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_with_softmax(model)),
                  metrics=["accuracy"])
    return model


def flat_layers(model):
    """The layers of ``model`` in order, with nested models expanded into their own layers."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer)
        else:
            yield layer

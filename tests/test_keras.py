import keras as keras3
import numpy as np
import pytest

from tfsafe._keras import is_keras3_model, keras, to_tf_keras
from tfsafe.errors import UnsupportedModelError


def _x(shape, n=6, seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def test_sequential_keras3_model_converts_with_identical_outputs():
    k3 = keras3.Sequential([
        keras3.Input((8, 8, 1)),
        keras3.layers.Conv2D(4, 3, activation="relu", kernel_initializer="he_normal"),
        keras3.layers.BatchNormalization(),
        keras3.layers.MaxPooling2D(),
        keras3.layers.Flatten(),
        keras3.layers.Dropout(0.2),
        keras3.layers.Dense(10, activation="softmax"),
    ])
    x = _x((8, 8, 1))
    k2 = to_tf_keras(k3)
    assert isinstance(k2, keras.Model) and is_keras3_model(k3) and not is_keras3_model(k2)
    np.testing.assert_allclose(k2.predict(x, verbose=0), k3.predict(x, verbose=0), atol=1e-6)


def test_functional_keras3_model_with_branches_converts():
    inputs = keras3.Input((8, 8, 1))
    h = keras3.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras3.layers.ReLU()(h)
    a = keras3.layers.GlobalAveragePooling2D()(h)
    b = keras3.layers.Flatten()(keras3.layers.MaxPooling2D()(h))
    out = keras3.layers.Dense(3)(keras3.layers.Concatenate()([a, b]))
    k3 = keras3.Model(inputs, out)
    x = _x((8, 8, 1))
    np.testing.assert_allclose(to_tf_keras(k3).predict(x, verbose=0), k3.predict(x, verbose=0), atol=1e-6)


def test_tf_keras_model_is_returned_unchanged(trained_cnn):
    assert to_tf_keras(trained_cnn) is trained_cnn


def test_unsupported_keras3_layer_is_named():
    class Custom(keras3.layers.Layer):
        def call(self, x):
            return x * 2

    k3 = keras3.Sequential([keras3.Input((4,)), Custom(name="my_custom"), keras3.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="my_custom.*Custom"):
        to_tf_keras(k3)


def test_non_model_is_rejected():
    with pytest.raises(UnsupportedModelError, match="Expected a Keras model"):
        to_tf_keras("model.keras")

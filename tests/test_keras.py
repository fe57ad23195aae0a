import keras as keras3
import numpy as np
import pytest

from tfsafe._keras import flatten_nested, is_keras3_model, keras, to_tf_keras
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


def _close(k2, k3, x, tol=1e-5):
    np.testing.assert_allclose(k2.predict(x, verbose=0), k3.predict(x, verbose=0), rtol=tol, atol=tol)


def _backbone():
    inputs = keras3.Input((8, 8, 1))
    h = keras3.layers.Conv2D(4, 3, padding="same", name="bb_conv")(inputs)
    h = keras3.layers.BatchNormalization(name="bb_bn")(h)
    h = keras3.layers.Add(name="bb_add")([h, keras3.layers.ReLU(name="bb_relu")(h)])
    return keras3.Model(inputs, h, name="backbone")


def test_nested_backbone_in_sequential_and_functional_converts():
    x = _x((8, 8, 1))
    backbone = _backbone()
    seq = keras3.Sequential([keras3.Input((8, 8, 1)), backbone, keras3.layers.GlobalAveragePooling2D(),
                             keras3.layers.Dense(3)])
    inputs = keras3.Input((8, 8, 1))
    func = keras3.Model(inputs, keras3.layers.Dense(2)(keras3.layers.Flatten()(backbone(inputs))))
    for k3 in (seq, func):
        k2 = to_tf_keras(k3)
        assert any(isinstance(layer, keras.Model) for layer in k2.layers)  # the backbone stays a model
        _close(k2, k3, x)
        flat = flatten_nested(k2)
        assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
        _close(flat, k3, x)


def test_inline_ops_are_converted_faithfully():
    inputs = keras3.Input((64,))
    h = keras3.layers.Dense(64)(inputs)
    h = h[:, :48]
    h = keras3.ops.relu(h)
    h = h * 2.0
    k3 = keras3.Model(inputs, keras3.layers.Dense(3)(h))
    k2 = to_tf_keras(k3)
    assert k2.layers[-2].output_shape == (None, 48)
    _close(k2, k3, np.random.default_rng(1).normal(size=(5, 64)).astype("float32"))
    clone = keras.Model.from_config(k2.get_config())  # the op layers serialize
    assert len(clone.layers) == len(k2.layers)


def test_sequential_keeps_integer_input_dtype():
    k3 = keras3.Sequential([keras3.Input((20,), dtype="int32"), keras3.layers.Embedding(50, 4),
                            keras3.layers.GlobalAveragePooling1D(), keras3.layers.Dense(2)])
    k2 = to_tf_keras(k3)
    assert k2.inputs[0].dtype == "int32"
    tokens = np.random.default_rng(0).integers(0, 50, size=(4, 20)).astype("int32")
    _close(k2, k3, tokens)


def test_keras3_only_config_keys_are_translated_or_refused():
    x = _x((6,))
    ok = keras3.Sequential([keras3.Input((6,)), keras3.layers.Dense(6), keras3.layers.LayerNormalization(),
                            keras3.layers.LeakyReLU(negative_slope=0.2), keras3.layers.Dense(2)])
    k2 = to_tf_keras(ok)
    assert k2.layers[2].get_config()["alpha"] == pytest.approx(0.2)
    _close(k2, ok, x - 0.5)
    rms = keras3.Sequential([keras3.Input((6,)), keras3.layers.LayerNormalization(rms_scaling=True, name="ln")])
    with pytest.raises(UnsupportedModelError, match="'ln'.*rms_scaling=True"):
        to_tf_keras(rms)


def test_augmentation_layers_become_identity_with_a_note(caplog):
    k3 = keras3.Sequential([
        keras3.Input((8, 8, 1)), keras3.layers.RandomFlip(), keras3.layers.RandomRotation(0.1),
        keras3.layers.RandomZoom(0.1), keras3.layers.RandomTranslation(0.1, 0.1), keras3.layers.RandomContrast(0.1),
        keras3.layers.GaussianNoise(0.1), keras3.layers.GaussianDropout(0.1), keras3.layers.Conv2D(2, 3),
        keras3.layers.Flatten(), keras3.layers.Dense(2),
    ])
    with caplog.at_level("WARNING", logger="tfsafe"):
        k2 = to_tf_keras(k3)
    assert [type(layer).__name__ for layer in k2.layers[:7]] == ["Identity"] * 7
    assert "RandomFlip" in caplog.text and "identity at inference" in caplog.text
    _close(k2, k3, _x((8, 8, 1)))


def test_keras3_hard_swish_and_hard_sigmoid_keep_their_formula():
    k3 = keras3.Sequential([keras3.Input((5,)), keras3.layers.Activation("hard_silu"),
                            keras3.layers.Activation("hard_sigmoid")])
    _close(to_tf_keras(k3), k3, np.linspace(-5, 5, 10, dtype="float32").reshape(2, 5))


def test_an_op_that_cannot_be_replayed_is_named():
    class HostOp(keras3.Operation):
        def call(self, x):
            return np.asarray(x) * 2.0  # needs concrete values: cannot run on symbolic tensors

        def compute_output_spec(self, x):
            return keras3.KerasTensor(x.shape, x.dtype)

    inputs = keras3.Input((4,))
    k3 = keras3.Model(inputs, keras3.layers.Dense(2)(HostOp(name="host_op")(keras3.layers.Dense(4)(inputs))))
    with pytest.raises(UnsupportedModelError, match="inline op 'host_op' \\(HostOp\\)") as info:
        to_tf_keras(k3)
    assert "shared" not in str(info.value) and "nested" not in str(info.value)

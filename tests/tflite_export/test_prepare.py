import numpy as np
import pytest
from conftest import clone

from tflite_export.prepare import calibration_array, prepare_model, weight_sparsity
from tfsafe._keras import keras, tf, tfmot
from tfsafe.compress.strip import is_wrapped
from tfsafe.errors import InputError, UnsupportedModelError

SHAPE = (8, 8, 1)


def test_calibration_array_from_arrays_datasets_and_generators(digits):
    (x, y), _ = digits
    arr = calibration_array(x, SHAPE, max_samples=100)
    assert arr.shape == (100,) + SHAPE and arr.dtype == np.float32
    # A random subset, not the first rows: data sorted by class must not calibrate on one class.
    assert not np.array_equal(arr, x[:100])
    assert all(any(np.array_equal(a, b) for b in x) for a in arr[:5])
    assert len(calibration_array(x[:30], SHAPE)) == 30

    batched = tf.data.Dataset.from_tensor_slices((x[:50], y[:50])).batch(16)
    assert np.array_equal(calibration_array(batched, SHAPE), x[:50])
    unbatched = tf.data.Dataset.from_tensor_slices(x[:20])
    assert np.array_equal(calibration_array(unbatched, SHAPE), x[:20])

    def generator():  # the TFLite convention: yield [x] with a batch axis of 1
        for i in range(40):
            yield [x[i:i + 1]]

    assert np.array_equal(calibration_array(generator, SHAPE, max_samples=25), x[:25])


def test_calibration_array_rejects_bad_data(digits):
    (x, _), _ = digits
    with pytest.raises(InputError, match="mode='int8' needs representative_data"):
        calibration_array(None, SHAPE)
    with pytest.raises(InputError, match="mode='int4' needs representative_data"):
        calibration_array(None, SHAPE, mode="int4")
    with pytest.raises(InputError, match=r"per-example shape \(8, 8, 3\)"):
        calibration_array(np.repeat(x, 3, axis=-1), SHAPE)
    with pytest.raises(InputError, match="dtype int64"):
        calibration_array(x.astype(np.int64), SHAPE)
    with pytest.raises(InputError, match="dtype <U"):
        calibration_array(np.array([["a"]]), SHAPE)
    with pytest.raises(InputError, match="produced no examples"):
        calibration_array(lambda: iter([]), SHAPE)
    with pytest.raises(InputError, match="dtype uint8"):
        calibration_array(tf.data.Dataset.from_tensor_slices((x[:4] * 255).astype(np.uint8)), SHAPE)
    inf = x[:10].copy()
    inf[0, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        calibration_array(inf, SHAPE)


def test_prepare_model_strips_tfmot_pruning(trained_cnn):
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(clone(trained_cnn))
    assert is_wrapped(wrapped)
    plain = prepare_model(wrapped)
    assert not is_wrapped(plain)
    assert [type(layer).__name__ for layer in plain.layers[1:3]] == ["Conv2D", "MaxPooling2D"]
    assert prepare_model(trained_cnn) is trained_cnn  # plain models pass through unchanged


def test_prepare_model_rejects_what_it_cannot_export():
    a, b = keras.Input((4,)), keras.Input((4,))
    two_inputs = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(UnsupportedModelError, match="2 inputs"):
        prepare_model(two_inputs)
    ids = keras.Input((4,), dtype="int32")  # token ids are exported as int32 inputs
    assert prepare_model(keras.Model(ids, keras.layers.Embedding(10, 2)(ids))).inputs[0].dtype == "int32"
    half = keras.Input((4,), dtype="float16")
    with pytest.raises(UnsupportedModelError, match="float16 inputs"):
        prepare_model(keras.Model(half, keras.layers.Dense(2)(half)))
    with pytest.raises(UnsupportedModelError, match="Expected a Keras model"):
        prepare_model(object())


def test_weight_sparsity_counts_zero_kernel_entries():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(2)])
    kernel, bias, kernel2, bias2 = model.get_weights()
    kernel[:2] = 0  # 10 of 20 entries
    model.set_weights([kernel, bias + 0, np.ones_like(kernel2), bias2])
    assert weight_sparsity(model) == pytest.approx(10 / 30)  # biases are not counted

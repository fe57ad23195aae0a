import json
import warnings

import numpy as np
import pytest

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.preprocessing import (
    InputRangeWarning,
    Preprocessing,
    check_range,
    decide_preprocessing,
    default_attack_eps,
    model_preprocessing,
)


def _images(n=6, shape=(4, 4, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_uint8_and_float_images_give_identical_model_inputs():
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 4, 4, 1)
    stored_float = every_value.astype(np.float32) / 255
    from_uint8 = decide_preprocessing(every_value)
    from_float = decide_preprocessing(stored_float)
    assert (from_uint8.mode, from_uint8.scale, from_uint8.expected_range) == ("0-1", 1 / 255, (0.0, 1.0))
    assert from_float.is_identity and from_float.expected_range == (0.0, 1.0)
    a, b = from_uint8.apply(every_value), from_float.apply(stored_float)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # bit-identical, not just close
    # Whole-number pixels stored as float (Keras' image loader) take the same 1/255 path.
    as_float_pixels = every_value.astype(np.float32)
    pre = decide_preprocessing(as_float_pixels)
    assert pre.mode == "0-1" and "8-bit-range" in pre.reason
    np.testing.assert_array_equal(pre.apply(as_float_pixels), b)


def test_explicit_normalizations():
    x = _images()
    minus = decide_preprocessing(x, "-1-1")
    np.testing.assert_allclose(minus.apply(np.array([[0, 255]], np.uint8)), [[-1.0, 1.0]], atol=1e-6)
    assert minus.expected_range == (-1.0, 1.0) and minus.source == "argument"
    none = decide_preprocessing(x, "none")
    np.testing.assert_array_equal(none.apply(x), x.astype(np.float32))
    assert none.expected_range is None
    std = decide_preprocessing(x, "mean_std")
    out = std.apply(x, check=False)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(-1, 3).std(axis=0), 1, atol=1e-4)
    assert len(std.scale) == 3
    # Tabular "0-1" maps each feature's min..max onto [0, 1]; a constant feature stays finite.
    tab = np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0], [1.0, 20.0, 5.0]], np.float32)
    mm = decide_preprocessing(tab, "0-1")
    np.testing.assert_allclose(mm.apply(tab), [[0, 0, 0], [1, 1, 0], [0.5, 0.5, 0]], atol=1e-6)
    with pytest.raises(InputError, match="Unknown normalization 'unit'"):
        decide_preprocessing(x, "unit")
    with pytest.raises(InputError, match="token sequences"):
        decide_preprocessing(np.array([[3, 7, 9]]), "0-1")


def test_data_rule_for_tabular_and_sequences():
    tab = decide_preprocessing(np.array([[0.5, 3.0], [1.0, -2.0]], np.float32))
    assert tab.is_identity and tab.expected_range is None and "tabular" in tab.reason
    tokens = np.array([[3, 7, 9], [1, 2, 0]])
    seq = decide_preprocessing(tokens)
    assert seq.keep_dtype and seq.apply(tokens).dtype == tokens.dtype


def test_model_rescaling_layer_means_raw_input():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    own = model_preprocessing(model)
    assert own.mode == "model" and own.is_identity
    np.testing.assert_allclose(own.expected_range, (0.0, 255.0))
    x = _images()
    pre = decide_preprocessing(x, model=model)
    assert pre == own
    np.testing.assert_array_equal(pre.apply(x), x.astype(np.float32))
    with pytest.warns(InputRangeWarning, match="already scales its inputs"):
        explicit = decide_preprocessing(x, "0-1", model=model)
    assert explicit.mode == "0-1"
    nested = keras.Sequential([keras.Input((4, 4, 3)), keras.Sequential([keras.layers.Normalization(mean=0.5,
                                                                                                    variance=1.0)]),
                               keras.layers.Flatten(), keras.layers.Dense(2)])
    assert "Normalization" in model_preprocessing(nested).reason
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert model_preprocessing(plain) is None


def test_range_warning_names_the_numbers():
    decided_on_float = decide_preprocessing(_images().astype(np.float32) / 255)
    with pytest.warns(InputRangeWarning, match=r"span \[0, 255\] but the model expects about \[0, 1\].*8-bit"):
        decided_on_float.apply(np.array([[0, 255]], np.uint8), name="audit.npz x")
    with pytest.warns(InputRangeWarning, match="scaled twice"):
        message = check_range(np.array([0.0, 1.0]), (0.0, 255.0), name="x")
    assert "[0, 1]" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_range(np.array([-0.1, 1.2]), (0.0, 1.0)) is None  # slightly outside is fine


def test_record_round_trip_and_sidecar_forms():
    pre = decide_preprocessing(_images(), "mean_std")
    record = json.loads(json.dumps(pre.to_dict()))
    assert record["schema"] == "tfsafe.preprocessing/1" and record["formula"] == "x_model = x * scale + offset"
    back = Preprocessing.from_dict(record)
    assert back == pre
    side = Preprocessing.from_dict({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.5]})
    np.testing.assert_allclose(side.apply(np.full((1, 3), 0.5, np.float32)), [[0, 0, 0]])
    simple = Preprocessing.from_dict({"scale": 1 / 255, "offset": 0.0})
    assert simple.mode == "custom" and simple.source == "record"
    assert decide_preprocessing(_images(), {"scale": 2.0}).source == "argument"
    with pytest.raises(InputError, match="Unknown preprocessing keys"):
        Preprocessing.from_dict({"scale": 1.0, "shift": 2})
    with pytest.raises(InputError, match="per-channel scale"):
        side.apply(np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="non-zero"):
        Preprocessing(scale=0.0)


@pytest.mark.parametrize("shape, pre, expected", [
    ((28, 28, 1), (0, 1), (0.1, 0.2, 0.3)),
    ((32, 32, 3), (0, 1), (2 / 255, 4 / 255, 8 / 255)),
    ((8, 8, 1), (0, 1), (0.1 / 3, 0.2 / 3, 0.1)),
    ((32, 32, 3), (0, 255), (2.0, 4.0, 8.0)),  # a model with its own Rescaling(1/255): raw pixels
])
def test_default_attack_eps_follows_the_input_range(shape, pre, expected):
    x = np.zeros((2, *shape), np.float32)
    got = default_attack_eps(x, Preprocessing(expected_range=pre))
    np.testing.assert_allclose(got["radii"], expected)
    assert got["eps"] == pytest.approx(expected[-1]) and got["kind"] == "image" and got["rule"]


def test_default_attack_eps_tabular_and_sequence():
    binary = np.random.default_rng(0).integers(0, 2, (50, 6)).astype(np.float32)
    binary[:, 0] = 1.0  # a constant feature does not count
    tab = default_attack_eps(binary)
    assert tab["eps"] == pytest.approx(0.1) and "median per-feature range" in tab["rule"]
    wide = binary * np.array([1, 10, 10, 10, 20, 20], np.float32)
    assert default_attack_eps(wide)["eps"] == pytest.approx(1.0)
    seq = default_attack_eps(np.array([[3, 7, 9], [1, 2, 0]]))
    assert seq["eps"] is None and seq["radii"] == () and "token" in seq["rule"]


def test_records_are_fitted_to_how_the_data_is_stored():
    from tfsafe.preprocessing import fit_record

    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    unit = pixels.astype(np.float32) / 255
    for_uint8 = decide_preprocessing(pixels)  # recorded by a run on uint8 pixels: x / 255
    assert fit_record(pixels, for_uint8) == for_uint8
    refit = fit_record(unit, for_uint8.to_dict())
    assert refit.is_identity and "stored in [0, 1] (not [0, 255])" in refit.reason
    np.testing.assert_array_equal(refit.apply(unit), for_uint8.apply(pixels))
    # A model with its own Rescaling(1/255): uint8 fed raw, [0, 1] floats mapped back to [0, 255].
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    raw = decide_preprocessing(pixels, model=model)
    assert raw.mode == "model" and raw.is_identity
    up = decide_preprocessing(unit, model=model)
    assert up.mode == "model" and up.scale == 255.0 and up.source == "model"
    np.testing.assert_allclose(up.apply(unit), pixels.astype(np.float32), atol=1e-4)
    # Per-channel statistics and tabular records are applied as recorded.
    std = decide_preprocessing(pixels, "mean_std")
    assert fit_record(unit, std) == std
    # An explicit normalization wins over the record, with a warning naming both ranges.
    with pytest.warns(InputRangeWarning, match=r"normalization='none' gives model inputs in \[0, 255\] where the "
                                               r"record gives \[0, 1\].*contradicts"):
        explicit = decide_preprocessing(pixels, "none", recorded=for_uint8)
    assert explicit.mode == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decide_preprocessing(pixels, "0-1", recorded=for_uint8).scale == for_uint8.scale  # agrees: silent

"""Safety-set selection: deterministic, from the given pool, uncertain + diverse, MLP fallback."""

import numpy as np
import pytest
from conftest import compile_classifier
from safety_helpers import rounded_model

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.models import mlp
from tfsafe.safety.safety_set import safety_scores, select_safety_set


@pytest.fixture(scope="module")
def pool(digits_splits):
    return digits_splits.validation


def test_selection_is_reproducible_and_valid(trained_cnn, pool):
    x, y = pool
    idx, details = select_safety_set(trained_cnn, x, y, 40, seed=0, return_details=True)
    assert details["saliency"] == "grad_cam"
    assert idx.dtype == np.int64 and len(idx) == 40 and len(np.unique(idx)) == 40
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < len(x)
    np.testing.assert_array_equal(idx, select_safety_set(trained_cnn, x, y, 40, seed=0))
    # Diversity: every cluster contributes, so several classes are present.
    assert len(np.unique(y[idx])) >= 6
    assert len(np.unique(details["clusters"][idx])) == 10


def test_selection_prefers_uncertain_and_salient_examples(trained_cnn, pool):
    x, y = pool
    idx, details = select_safety_set(trained_cnn, x, y, 30, weights=(0.0, 1.0), return_details=True)
    assert details["uncertainty"][idx].mean() > details["uncertainty"].mean()
    idx, details = select_safety_set(trained_cnn, x, y, 30, weights=(1.0, 0.0), return_details=True)
    assert details["intensity"][idx].mean() > details["intensity"].mean()


def test_inference_mode_with_dropout(pool):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Dropout(0.5), keras.layers.Flatten(), keras.layers.Dense(10),
    ])
    xv, yv = pool
    first = safety_scores(model, xv, yv)
    second = safety_scores(model, xv, yv)
    np.testing.assert_array_equal(first["intensity"], second["intensity"])  # dropout off
    np.testing.assert_array_equal(
        select_safety_set(model, xv, yv, 20, seed=3), select_safety_set(model, xv, yv, 20, seed=3))


def test_mlp_falls_back_to_input_saliency(digits, pool):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(mlp((8, 8, 1), 10, units=(32,)))
    model.fit(x, y, epochs=1, verbose=0)
    xv, yv = pool
    idx, details = select_safety_set(model, xv, yv, 25, return_details=True)
    assert details["saliency"] == "input_gradient" and len(idx) == 25
    assert np.all(details["intensity"] > 0)


def test_nested_model_uses_inner_conv_layer(trained_cnn, pool):
    x, y = pool
    model = rounded_model(trained_cnn)  # input layer + nested small_cnn
    idx, details = select_safety_set(model, x, y, 20, return_details=True)
    assert details["saliency"] == "grad_cam" and len(idx) == 20
    direct = safety_scores(trained_cnn, x, y)
    nested = safety_scores(model, x, y)
    assert nested["embeddings"].shape == direct["embeddings"].shape == (len(x), 64)  # input of the logits layer
    assert not any("call" in vars(layer) for layer in model.submodules)  # observation hooks removed


def test_bad_inputs(trained_cnn, pool):
    x, y = pool
    for size in (0, len(x) + 1, 2.5):
        with pytest.raises(InputError, match="size"):
            select_safety_set(trained_cnn, x, y, size)
    bad = x[:30].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        select_safety_set(trained_cnn, bad, y[:30], 5)
    with pytest.raises(InputError):
        select_safety_set(trained_cnn, x, y, 5, weights=(0.0, 0.0))
    with pytest.raises(InputError):
        select_safety_set(trained_cnn, x, y, 5, layer="no_such_layer")

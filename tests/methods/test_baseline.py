"""The TF-MOT baseline prunes what TF-MOT can prune and keeps the rest (a user's Rescaling layer),
with RelaxLoss when asked."""

import numpy as np
import pytest
from conftest import member_loss

import tfsafe.methods
from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.splits import MembershipSplits


def test_baseline_prunes_a_model_with_its_own_rescaling_layer():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 64)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    splits = MembershipSplits.from_arrays(train=(x[:48], y[:48]), test=(x[48:], y[48:]))
    result = tfsafe.methods.get("baseline", target_sparsity=0.5, epochs=1, batch_size=16).compress(
        model, splits, verbose=0)
    kinds = [type(layer).__name__ for layer in result.stripped.layers]
    assert "Rescaling" in kinds
    kernels = [layer.kernel.numpy() for layer in result.stripped.layers if hasattr(layer, "kernel")]
    assert all(abs((k == 0).mean() - 0.5) < 0.05 for k in kernels)


def test_relax_alpha_keeps_the_members_loss_near_alpha(memorizer):
    dense, splits = memorizer
    losses = {}
    for alpha in (None, 1.0):
        keras.utils.set_random_seed(0)
        method = tfsafe.methods.get("baseline", target_sparsity=0.5, epochs=15, batch_size=64, learning_rate=1e-2,
                                    relax_alpha=alpha)
        losses[alpha] = member_loss(method.compress(dense, splits, verbose=0).stripped, splits)
    assert losses[None] < 0.3  # plain fine-tuning re-memorizes the members
    assert 0.6 < losses[1.0] < 1.3


def test_relax_alpha_trains_a_one_unit_sigmoid_head():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    splits = MembershipSplits.from_arrays(train=(x[:120], y[:120]), test=(x[120:], y[120:]))
    result = tfsafe.methods.get("baseline", target_sparsity=0.5, epochs=30, batch_size=16, learning_rate=1e-2,
                                relax_alpha=0.3).compress(model, splits, verbose=0)
    assert result.stripped.output_shape == (None, 1)
    assert np.mean((result.stripped(x[120:]).numpy()[:, 0] > 0.5) == y[120:]) > 0.8
    with pytest.raises(InputError, match="relax_alpha must be > 0"):
        tfsafe.methods.get("baseline", relax_alpha=0)

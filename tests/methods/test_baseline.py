"""The TF-MOT baseline prunes what TF-MOT can prune and keeps the rest (a user's Rescaling layer)."""

import numpy as np

import tfsafe.methods
from tfsafe._keras import keras
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

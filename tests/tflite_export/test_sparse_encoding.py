"""TFLite's sparse weight encoding is kept only where LiteRT reads it right (float16 NaN, int8 1x16 blocks)."""

import numpy as np
import pytest

from tflite_export import to_tflite
from tflite_export.converter import convert_keras
from tflite_export.runtime import TFLiteModel
from tflite_export.sparse_encoding import sparse_encoding_faults
from tfsafe._keras import keras
from tfsafe.models import mlp


def _sparse(model, fraction, seed=0):
    """``model`` with the smallest ``fraction`` of every kernel set to zero and random biases."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim >= 2:
            w = np.where(np.abs(w) < np.quantile(np.abs(w), fraction), 0.0, w).astype(np.float32)
        else:
            w = (0.1 * rng.normal(size=w.shape)).astype(np.float32)
        weights.append(w)
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def mostly_zero_mlp():
    keras.utils.set_random_seed(0)
    return _sparse(mlp((8, 8, 1), 10), 0.99)


def test_float16_block_sparse_without_densify_is_refused_and_the_file_is_finite(mostly_zero_mlp, digits, tmp_path):
    (_, _), (xt, yt) = digits
    # The converter's own sparse float16 file feeds a 1x4 block encoding to DEQUANTIZE: NaN.
    raw = convert_keras(mostly_zero_mlp, "float16", sparse=True)
    faults = sparse_encoding_faults(raw)
    assert faults and all("DEQUANTIZE reads the sparse-encoded" in f for f in faults)
    path = tmp_path / "raw.tflite"
    path.write_bytes(raw)
    assert not np.isfinite(TFLiteModel(str(path), use_xnnpack=False).predict(xt[:4])).all()

    result = to_tflite(mostly_zero_mlp, tmp_path / "f16.tflite", "float16", sparsity=True, verify=(xt, yt))
    info = result.sparsity
    assert info["tried"] and info["shrank"] and not info["used"]
    assert "DEQUANTIZE" in info["reason"] and result.bytes == info["dense_bytes"]
    out = TFLiteModel(result.path).predict(xt[:64])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, mostly_zero_mlp(xt[:64]).numpy(), atol=1e-2)


def test_int8_sparse_dense_layer_with_12_inputs_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(4)])
    model = _sparse(model, 0.9)
    y = model(x).numpy().argmax(axis=1)
    raw = convert_keras(model, "int8", x[:100], sparse=True)
    assert any("1x16 blocks" in f and "12 inputs" in f for f in sparse_encoding_faults(raw))
    result = to_tflite(model, tmp_path / "m.tflite", "int8", x[:100], sparsity=True, verify=(x, y))
    assert result.sparsity["tried"] and not result.sparsity["used"] and "1x16" in result.sparsity["reason"]
    assert result.parity.top1_agreement >= 0.99  # the dense encoding, read right

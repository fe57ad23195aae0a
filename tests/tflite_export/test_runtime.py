import shutil

import numpy as np
import pytest

from tflite_export import ONNXModel, TFLiteModel, load_exported, to_tflite
from tfsafe._keras import keras, tf
from tfsafe.errors import InputError, UnsupportedModelError


def test_quantizes_inputs_and_dequantizes_outputs(int8_tflite, digits):
    _, (xt, _) = digits
    model = TFLiteModel(int8_tflite.path)
    scale, zero_point = model.input_quantization
    assert model.input_shape == (8, 8, 1) and model.input_details["dtype"] == np.int8
    q = model.quantize_input(np.array([0.0, 0.5, 1.0, 7.0, -7.0], np.float32))
    assert q.dtype == np.int8
    expected = np.clip(np.round(np.array([0.0, 0.5, 1.0]) / scale) + zero_point, -128, 127)
    assert q[:3].tolist() == expected.tolist() and q[3] == 127 and q[4] == -128  # saturates
    raw = model.invoke(model.quantize_input(xt[:4]))
    out_scale, out_zero = model.output_quantization
    assert raw.dtype == np.int8
    assert np.allclose(model.dequantize_output(raw), (raw.astype(np.float32) - out_zero) * out_scale)
    assert np.array_equal(model.predict(xt[:4]), model.dequantize_output(raw))
    # Already-quantized int8 inputs are passed through unchanged.
    assert np.array_equal(model.predict(model.quantize_input(xt[:16])), model.predict(xt[:16]))


def test_predict_is_independent_of_batching_and_threads(int8_tflite, digits):
    _, (xt, _) = digits
    full = TFLiteModel(int8_tflite.path).predict(xt, batch_size=512)
    assert full.shape == (len(xt), 10) and full.dtype == np.float32
    assert np.array_equal(TFLiteModel(int8_tflite.path, batch_size=7).predict(xt), full)
    assert np.array_equal(TFLiteModel(int8_tflite.path, num_threads=2).predict(xt), full)
    builtin = TFLiteModel(int8_tflite.path, use_xnnpack=False).predict(xt)
    assert np.mean(builtin.argmax(1) == full.argmax(1)) >= 0.99  # other kernels, same int8 arithmetic
    assert np.abs(builtin - full).max() <= 2 * int8_tflite.output["scale"] + 1e-6


def test_fixed_batch_model_pads_the_last_batch(tmp_path, digits):
    _, (xt, _) = digits
    inputs = keras.Input((8, 8, 1), batch_size=4)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    result = to_tflite(model, tmp_path / "fixed.tflite", "float32")
    runner = TFLiteModel(result.path)
    out = runner.predict(xt[:10])
    assert out.shape == (10, 3)
    assert np.allclose(out, model.predict(xt[:10], verbose=0), atol=1e-5)


def test_bad_files_and_inputs(int8_tflite, digits, tmp_path):
    _, (xt, _) = digits
    with pytest.raises(InputError, match="does not exist"):
        TFLiteModel(tmp_path / "missing.tflite")
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        TFLiteModel(empty)
    good = open(int8_tflite.path, "rb").read()
    for name, data in [("garbage", np.random.default_rng(0).bytes(4000)), ("truncated", good[: len(good) // 2])]:
        bad = tmp_path / f"{name}.tflite"
        bad.write_bytes(data)
        with pytest.raises(InputError, match="not a valid .tflite model"):
            TFLiteModel(bad)
        with pytest.raises(InputError, match="not a valid .tflite model"):
            load_exported(bad)
    model = TFLiteModel(int8_tflite.path)
    with pytest.raises(InputError, match=r"expects \(batch,\) \+ \(8, 8, 1\)"):
        model.predict(xt[..., 0])
    with pytest.raises(InputError, match="NaN"):
        model.predict(np.full((2, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(InputError, match="numeric"):
        model.predict(np.array([["a"]]))
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(InputError, match="neither a TFLite flatbuffer nor an .onnx"):
        load_exported(other)
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"not onnx at all")
    with pytest.raises(InputError, match="not a valid ONNX model"):
        ONNXModel(bad_onnx)


def test_multi_output_files_are_refused(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    path = tmp_path / "two.tflite"
    # Converted directly: to_tflite itself refuses multi-output models.
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(UnsupportedModelError, match="2 outputs"):
        TFLiteModel(path)


def test_output_kind_from_the_sidecar_else_the_last_op(int8_tflite, tmp_path):
    assert TFLiteModel(int8_tflite.path).output_kind == "logits"  # side-car written by to_tflite
    bare = tmp_path / "bare.tflite"
    shutil.copyfile(int8_tflite.path, bare)  # no side-car: FULLY_CONNECTED is the last op
    runner = TFLiteModel(bare)
    assert runner.output_kind == "logits" and not runner.stateful
    assert TFLiteModel(bare, output_kind="probabilities").output_kind == "probabilities"
    with pytest.raises(InputError, match="output_kind must be"):
        TFLiteModel(bare, output_kind="scores")

import json
import os

import numpy as np
import pytest
from conftest import clone, compile_classifier

from tflite_export import ParityError, TFLiteModel, to_tflite
from tflite_export.flatbuffer import float_ops, list_ops
from tfsafe._keras import keras, tf, tfmot
from tfsafe.errors import InputError, UnsupportedModelError


def _files(folder):
    return sorted(os.listdir(folder))


def test_int8_export_is_full_integer_and_verified(int8_tflite):
    r = int8_tflite
    data = open(r.path, "rb").read()
    assert r.format == "tflite" and r.mode == "int8"
    assert r.bytes == len(data) == os.path.getsize(r.path) and 0 < r.gzip_bytes < r.bytes
    assert r.input["dtype"] == "int8" and r.output["dtype"] == "int8"
    assert r.input["scale"] > 0 and -128 <= r.input["zero_point"] <= 127
    assert float_ops(data) == []  # every op runs on int8 tensors
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(r.ops)
    assert r.parity.compared == "logits" and r.parity.top1_agreement >= 0.99 and r.parity.path == r.path
    # Per-channel weights: one scale per output channel of every conv / dense kernel.
    details = TFLiteModel(r.path).interpreter.get_tensor_details()
    kernels = {d["name"]: d for d in details if d["name"].endswith(("Conv2D", "MatMul")) and len(d["shape"]) >= 2}
    assert len(kernels) == 4
    for d in kernels.values():
        assert d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == d["shape"][0] > 1


def test_int8_sidecar_tells_the_app_how_to_feed_the_model(int8_tflite):
    with open(int8_tflite.metadata_path) as f:
        meta = json.load(f)
    runtime = TFLiteModel(int8_tflite.path)
    scale, zero_point = runtime.input_quantization
    assert meta["file"] == os.path.basename(int8_tflite.path) and meta["mode"] == "int8"
    assert meta["input"]["scale"] == pytest.approx(scale) and meta["input"]["zero_point"] == zero_point
    assert meta["input"]["shape"] == [-1, 8, 8, 1] and meta["input"]["value_range"] == [0.0, 1.0]
    assert "round(x / scale) + zero_point" in meta["input"]["quantize"]
    assert meta["output"]["kind"] == "logits"
    assert meta["output"]["scale"] == pytest.approx(runtime.output_quantization[0])
    assert meta["parity"]["top1_agreement"] == int8_tflite.parity.top1_agreement


def test_float_modes_sizes_and_parity(trained_cnn, digits, tmp_path):
    _, (xt, yt) = digits
    results = {mode: to_tflite(trained_cnn, tmp_path / f"m_{mode}.tflite", mode, verify=(xt, yt),
                               labels=[str(i) for i in range(10)], normalization={"scale": 1 / 16})
               for mode in ("float32", "float16", "dynamic")}
    f32, f16, dyn = results["float32"], results["float16"], results["dynamic"]
    assert f32.bytes > f16.bytes > dyn.bytes  # float16 halves the weights, dynamic stores int8 weights
    for r in results.values():
        assert r.input["dtype"] == "float32" and "scale" not in r.input
    assert f32.parity.max_abs_diff < 1e-4 and f32.parity.top1_agreement == 1.0
    assert f16.parity.max_abs_diff < 0.05 and f16.parity.top1_agreement >= 0.99
    assert dyn.parity.top1_agreement >= 0.98
    assert "DEQUANTIZE" in f16.ops  # float16 weights are dequantized to float32 at load
    meta = json.load(open(dyn.metadata_path))
    assert meta["labels"][3] == "3" and meta["normalization"] == {"scale": 1 / 16}


def test_int8_with_float_io(trained_cnn, digits, int8_tflite, tmp_path):
    (x, _), (xt, _) = digits
    r = to_tflite(trained_cnn, tmp_path / "float_io.tflite", "int8", x, integer_io=False)
    assert r.input["dtype"] == "float32" and r.output["dtype"] == "float32"
    data = open(r.path, "rb").read()
    ops = [op["op"] for op in list_ops(data)]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert float_ops(data) == []  # float only at the QUANTIZE / DEQUANTIZE edges
    out_float_io = TFLiteModel(r.path).predict(xt)
    out_int8_io = TFLiteModel(int8_tflite.path).predict(xt)
    # Same calibration, same quantized graph: identical up to one output quantization step.
    assert np.abs(out_float_io - out_int8_io).max() <= 2 * int8_tflite.output["scale"] + 1e-6


@pytest.fixture(scope="module")
def pruned_cnn(trained_cnn):
    """trained_cnn wrapped by TF-MOT prune_low_magnitude with 80% of each kernel masked, in the
    state UpdatePruningStep leaves it (masks set, weights multiplied by the masks)."""
    model = tfmot.sparsity.keras.prune_low_magnitude(
        clone(trained_cnn), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.8, 0))
    for layer in model.layers:
        for weight, mask, _ in getattr(layer, "pruning_vars", []):
            w = weight.numpy()
            keep = np.abs(w) > np.quantile(np.abs(w), 0.8)
            mask.assign(keep.astype(w.dtype))
            weight.assign(w * keep)
    return model


def test_pruned_model_is_stripped_and_sparse_encoding_reported(pruned_cnn, digits, tmp_path):
    _, (xt, yt) = digits
    r = to_tflite(pruned_cnn, tmp_path / "pruned.tflite", "float32", verify=(xt, yt))
    s = r.sparsity
    assert s["weight_sparsity"] == pytest.approx(0.8, abs=0.02) and s["tried"]
    assert s["shrank"] == (s["sparse_bytes"] < s["dense_bytes"]) and s["shrank"]
    assert s["used"] == (s["shrank"] and s["runs_with_xnnpack"])
    assert r.bytes == (s["sparse_bytes"] if s["used"] else s["dense_bytes"])
    assert ("DENSIFY" in r.ops) == s["used"]
    assert r.parity.top1_agreement == 1.0 and r.parity.max_abs_diff < 1e-4  # masks baked into the weights

    plain = to_tflite(pruned_cnn, tmp_path / "dense_enc.tflite", "float32", sparsity=False)
    assert not plain.sparsity["tried"] and plain.bytes == s["dense_bytes"]


def test_int8_sparse_encoding_forced(pruned_cnn, digits, tmp_path):
    (x, _), (xt, _) = digits
    r = to_tflite(pruned_cnn, tmp_path / "sparse_int8.tflite", "int8", x, sparsity=True)
    s = r.sparsity
    assert s["tried"] and s["used"] == s["shrank"]
    if s["used"] and not s["runs_with_xnnpack"]:
        with pytest.raises(UnsupportedModelError, match="use_xnnpack=False"):
            TFLiteModel(r.path)
    out = TFLiteModel(r.path, use_xnnpack=s["runs_with_xnnpack"]).predict(xt)
    agreement = np.mean(out.argmax(1) == pruned_cnn.predict(xt, verbose=0).argmax(1))
    assert agreement >= 0.97


def test_tfmot_qat_model_converts_from_its_fake_quant_graph(trained_cnn, digits, tmp_path):
    # TF-MOT's QAT wrappers go through the converter as they are (strip() copies them).
    (x, y), (xt, yt) = digits
    qat = compile_classifier(tfmot.quantization.keras.quantize_model(clone(trained_cnn)), 1e-4)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)  # sets the fake-quant ranges
    r = to_tflite(qat, tmp_path / "qat_int8.tflite", "int8", x, verify=(xt, yt), min_agreement=0.9)
    assert r.input["dtype"] == "int8" and not float_ops(open(r.path, "rb").read())
    assert r.parity.exported_accuracy > 0.85


def test_not_a_model_or_unstrippable_wrapper(tmp_path):
    with pytest.raises(UnsupportedModelError, match="load it first"):
        to_tflite("model.keras", tmp_path / "a.tflite", "float32")
    with pytest.raises(UnsupportedModelError, match="Expected a Keras model"):
        to_tflite(42, tmp_path / "a.tflite", "float32")

    class Scale(keras.layers.Wrapper):  # a compression wrapper nobody registered a stripper for
        def call(self, inputs):
            return self.layer(inputs) * 0.5

    inputs = keras.Input((4,))
    wrapped = keras.Model(inputs, Scale(keras.layers.Dense(2))(inputs))
    with pytest.raises(UnsupportedModelError, match="no stripper is registered"):
        to_tflite(wrapped, tmp_path / "a.tflite", "float32")

    class Subclassed(keras.Model):  # strip() cannot rebuild subclassed models
        def __init__(self):
            super().__init__()
            self.dense = tfmot.sparsity.keras.prune_low_magnitude(keras.layers.Dense(2))

        def call(self, inputs):
            return self.dense(inputs)

    sub = Subclassed()
    sub(np.zeros((1, 4), np.float32))
    with pytest.raises(UnsupportedModelError, match="Subclassed|subclassed"):
        to_tflite(sub, tmp_path / "a.tflite", "float32")
    assert _files(tmp_path) == []


def _model_with(layer):
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(3)(layer(keras.layers.Dense(4)(inputs))))


def test_op_without_int8_kernel_names_it_and_suggests_dynamic(tmp_path):
    model = _model_with(keras.layers.Lambda(tf.math.sin, name="sine"))
    data = np.random.default_rng(0).random((32, 8), dtype=np.float32)
    with pytest.raises(UnsupportedModelError, match="SIN") as err:
        to_tflite(model, tmp_path / "sin.tflite", "int8", data)
    assert "mode='dynamic'" in str(err.value) and "sine" in str(err.value)
    assert _files(tmp_path) == []
    r = to_tflite(model, tmp_path / "sin.tflite", "dynamic")  # the suggestion works
    assert r.ops.get("SIN") == 1
    mixed = to_tflite(model, tmp_path / "mixed.tflite", "int8", data, allow_float_ops=True)
    assert [op["op"] for op in float_ops(open(mixed.path, "rb").read())] == ["SIN"]


def test_op_without_builtin_kernel(tmp_path, capfd):
    model = _model_with(keras.layers.Lambda(tf.math.erf))
    capfd.readouterr()
    with pytest.raises(UnsupportedModelError, match="Erf") as err:
        to_tflite(model, tmp_path / "erf.tflite", "float32")
    assert _files(tmp_path) == []
    # One line for the user; the converter's MLIR diagnostics do not reach the terminal.
    assert "\n" not in str(err.value) and len(str(err.value)) < 600
    assert len(capfd.readouterr().err) < 2000


def test_bad_representative_data(trained_cnn, digits, tmp_path):
    (x, _), _ = digits
    path = tmp_path / "m.tflite"
    with pytest.raises(InputError, match="needs representative_data"):
        to_tflite(trained_cnn, path, "int8")
    with pytest.raises(InputError, match=r"per-example shape \(8, 8\)"):
        to_tflite(trained_cnn, path, "int8", x[..., 0])
    with pytest.raises(InputError, match="dtype uint8.*float32"):
        to_tflite(trained_cnn, path, "int8", (x * 255).astype(np.uint8))
    bad = x[:50].copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        to_tflite(trained_cnn, path, "int8", bad)
    with pytest.raises(InputError, match="verify x"):
        to_tflite(trained_cnn, path, "float32", verify=(x[:, :4], None))
    assert _files(tmp_path) == []


def test_bad_arguments(trained_cnn, tmp_path):
    with pytest.raises(InputError, match="mode must be one of"):
        to_tflite(trained_cnn, tmp_path / "m.tflite", "int3")
    with pytest.raises(InputError, match=r"must end in \.tflite"):
        to_tflite(trained_cnn, tmp_path / "m.bin", "float32")
    with pytest.raises(InputError, match="min_agreement"):
        to_tflite(trained_cnn, tmp_path / "m.tflite", "float32", min_agreement=1.5)
    with pytest.raises(InputError, match="num_calibration_samples"):
        to_tflite(trained_cnn, tmp_path / "m.tflite", "int8", num_calibration_samples=0)
    with pytest.raises(InputError, match="sparsity must be"):
        to_tflite(trained_cnn, tmp_path / "m.tflite", "float32", sparsity="maybe")
    with pytest.raises(InputError, match="labels has 3 names"):
        to_tflite(trained_cnn, tmp_path / "m.tflite", "float32", labels=["a", "b", "c"])
    assert _files(tmp_path) == []


def test_parity_failure_leaves_no_file(trained_cnn, digits, tmp_path):
    (x, _), (xt, yt) = digits
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous export")  # an older file must survive a failed export
    # Inputs 40x outside the calibrated range saturate the int8 input: a real disagreement.
    with pytest.raises(ParityError, match="No file was written") as err:
        to_tflite(trained_cnn, path, "int8", x, verify=(xt * 40, yt))
    assert err.value.report.top1_agreement < 0.99
    assert path.read_bytes() == b"previous export" and _files(tmp_path) == ["m.tflite"]


def test_keras3_model_is_accepted(digits, tmp_path):
    import keras as keras3

    _, (xt, _) = digits
    k3 = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(), keras3.layers.Dense(10)])
    r = to_tflite(k3, tmp_path / "k3.tflite", "float32")
    assert np.allclose(TFLiteModel(r.path).predict(xt[:20]), k3.predict(xt[:20], verbose=0), atol=1e-5)

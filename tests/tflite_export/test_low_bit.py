"""Sub-8-bit export (mode="int4" / "learned") through ai-edge-quantizer, read back from the file."""

import json
import os

import numpy as np
import pytest
from conftest import compile_classifier

from tflite_export import to_tflite
from tflite_export.low_bit import channel_grid, stored_kernels
from tfsafe._keras import keras
from tfsafe.compress.quantization import channel_bits, learnable_layers, quantize_learnable, restore_channels
from tfsafe.compress.quantization import storage_bits as bits_to_store
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import mlp


def _upsampled(x):
    return np.kron(x, np.ones((1, 3, 3, 1), np.float32))  # 8x8 digits -> 24x24


@pytest.fixture(scope="module")
def wide_mlp(digits):
    """An MLP on 24x24 digits (74k weights, fan-in 576) so that weights, not per-channel scales
    and the graph, dominate the file."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(mlp((24, 24, 1), 10, units=(128,)))
    model.fit(_upsampled(x), y, epochs=4, batch_size=32, verbose=0)
    return model


def test_int4_stores_4_bit_weights_exactly_and_agrees(wide_mlp, digits, tmp_path):
    (x, _), (xt, yt) = digits
    x, xt = _upsampled(x[:200]), _upsampled(xt)
    int8 = to_tflite(wide_mlp, tmp_path / "m8.tflite", "int8", x)
    int4 = to_tflite(wide_mlp, tmp_path / "m4.tflite", "int4", x, verify=(xt, yt))
    assert int4.parity.top1_agreement >= 0.99
    assert int4.bytes <= 0.6 * int8.bytes
    assert int4.input["dtype"] == "int8" and int4.output["dtype"] == "int8"
    sidecar = json.load(open(int4.metadata_path))
    assert sidecar["mode"] == "int4"
    assert {name: entry["storage_bits"] for name, entry in sidecar["layer_bits"].items()} == {"fc1": 4, "logits": 4}
    assert all(entry["exact"] for entry in sidecar["layer_bits"].values())
    # The file holds 16 levels per output channel: w = s * k, k in [-8, 7], s = max|w| / 7.
    data = open(int4.path, "rb").read()
    stored = stored_kernels(data, {"mlp/fc1/MatMul"})
    bits, values = stored["mlp/fc1/MatMul"]
    kernel = wide_mlp.get_layer("fc1").kernel.numpy().T
    step = np.abs(kernel).max(axis=1, keepdims=True) / 7
    assert bits == 4
    np.testing.assert_allclose(values, np.round(kernel / step) * step, atol=1e-6)


def _self_compressed(model, layer_bits, dead=()):
    """A learnable-bit model with every channel of layer i at layer_bits[i] (and ``dead`` channels at 0)."""
    qmodel = quantize_learnable(model, init_bits=8)
    for layer, bits in zip(learnable_layers(qmodel), layer_bits):
        restore_channels(layer, np.arange(channel_bits(layer).size), bits=float(bits))
        if layer.name in dict(dead):
            variable = next(v for v in layer.weights if v.name.endswith("kernel_bits:0"))
            values = variable.numpy()
            values[: dict(dead)[layer.name]] = 0.0
            variable.assign(values)
    return qmodel


def test_learned_mode_stores_each_layer_at_the_bits_it_learned(trained_cnn, digits, tmp_path):
    (x, _), (xt, yt) = digits
    qmodel = _self_compressed(trained_cnn, [3, 6, 4, 8], dead=[("quant_conv2", 4)])
    result = to_tflite(qmodel, tmp_path / "learned.tflite", "learned", x[:200], verify=(xt, yt))
    assert result.parity.top1_agreement >= 0.99  # against the stripped model, which the file holds exactly
    sidecar = json.load(open(result.metadata_path))["layer_bits"]
    for layer in learnable_layers(qmodel):
        name = layer.layer.name
        needed = int(bits_to_store(channel_bits(layer)).max())
        assert sidecar[name]["needed_bits"] == needed
        assert sidecar[name]["learned_bits"] == pytest.approx(needed)
        assert sidecar[name]["storage_bits"] == (4 if needed <= 4 else 8)
        assert sidecar[name]["exact"] and sidecar[name]["max_weight_error"] < 1e-6
    assert [sidecar[n]["storage_bits"] for n in ("conv1", "conv2", "fc1", "logits")] == [4, 8, 4, 8]


def _depthwise_model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    kernel = model.get_layer("dw").depthwise_kernel
    step = np.float32(0.0625)
    kernel.assign(np.clip(np.round(kernel.numpy() / step), -4, 3) * step)  # a 3-bit grid
    return model


def test_layer_without_int4_kernel_one_line_and_no_file(digits, tmp_path):
    (x, _), _ = digits
    model = _depthwise_model()
    target = tmp_path / "dw.tflite"
    with pytest.raises(UnsupportedModelError, match="layer 'dw' \\(DepthwiseConv2D\\)") as err:
        to_tflite(model, target, "int4", x[:50])
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []
    # learned mode keeps it, at 8 bits, exactly, and says why.
    result = to_tflite(model, target, "learned", x[:50])
    entry = result.layer_bits["dw"]
    assert entry["op"] == "DEPTHWISE_CONV_2D" and entry["needed_bits"] == 3
    assert entry["storage_bits"] == 8 and "no INT4 kernel" in entry["reason"] and entry["exact"]
    with pytest.raises(InputError, match="integer_io=False"):
        to_tflite(model, tmp_path / "io.tflite", "learned", x[:50], integer_io=False)


def test_channel_grid_reads_bits_and_refuses_float_weights():
    step = np.array([0.3, 0.01], np.float32)
    codes = np.array([[-4, 1], [3, -128], [0, 127], [2, 5]], np.float32)
    bits, found = channel_grid(codes * step)
    assert bits.tolist() == [3, 8]
    np.testing.assert_allclose(found, step, rtol=1e-6)
    floats = np.random.default_rng(0).standard_normal((25, 3))
    assert channel_grid(floats)[0].tolist() == [32, 32, 32]
    assert channel_grid(np.zeros((4, 1)))[0].tolist() == [0]


def test_learned_grid_stays_exact_through_batchnorm_folding(digits, tmp_path):
    (x, _), _ = digits
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(keras.layers.MaxPooling2D(2)(h))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h)))
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 2, 8)])
    kernel = model.get_layer("conv").kernel
    step = rng.uniform(0.01, 0.05, 8).astype(np.float32)
    kernel.assign(np.clip(np.round(kernel.numpy() / step), -4, 3) * step)  # a 3-bit grid per channel
    result = to_tflite(model, tmp_path / "bn.tflite", "learned", x[:50])
    entry = result.layer_bits["conv"]
    assert entry["storage_bits"] == 4 and entry["needed_bits"] == 3
    assert entry["exact"] and entry["max_weight_error"] < 1e-6


def test_self_compression_with_max_bits_4_exports_4_bit_weights_exactly(trained_cnn, digits, tmp_path):
    from tfsafe.compress.strip import strip
    from tfsafe.io import load_model, save_model
    from tfsafe.methods.self_compress import SelfCompressingModel

    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(0)
    qmodel = quantize_learnable(trained_cnn, init_bits=4, max_bits=4)
    trainer = SelfCompressingModel(qmodel, gamma=0.02, bits_optimizer=keras.optimizers.Adam(0.1))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(x[:640], y[:640], epochs=1, batch_size=64, verbose=0)
    bits = np.concatenate([channel_bits(layer) for layer in learnable_layers(qmodel)])
    assert bits.max() <= 4.0 and (bits < 4.0).any()  # trained under the ceiling, some channels lower
    # The ceiling holds through restorations and is part of the saved config.
    fc1 = qmodel.get_layer("quant_fc1")
    restore_channels(fc1, [0], bits=6.0)
    assert channel_bits(fc1)[0] == 4.0
    save_model(qmodel, tmp_path / "q.keras")
    loaded = load_model(tmp_path / "q.keras")
    assert [layer.quantize_config.max_bits for layer in learnable_layers(loaded)] == [4] * 4
    np.testing.assert_allclose(loaded(xt[:16]).numpy(), qmodel(xt[:16]).numpy(), atol=1e-5)

    int8 = to_tflite(qmodel, tmp_path / "m8.tflite", "int8", x[:64])
    learned = to_tflite(qmodel, tmp_path / "learned.tflite", "learned", x[:64], verify=(xt, yt))
    assert learned.parity.top1_agreement >= 0.99
    assert learned.bytes < int8.bytes
    sidecar = json.load(open(learned.metadata_path))["layer_bits"]
    layers = ("conv1", "conv2", "fc1", "logits")
    assert {name: e["storage_bits"] for name, e in sidecar.items()} == dict.fromkeys(layers, 4)
    assert all(e["exact"] and e["max_weight_error"] < 1e-6 for e in sidecar.values())
    # Read back from the file: 4-bit tensors holding the stripped model's kernels (the learned grid).
    stripped = strip(qmodel)
    data = open(learned.path, "rb").read()
    stored = stored_kernels(data, {"small_cnn/fc1/MatMul", "small_cnn/logits/MatMul"})
    for name in ("fc1", "logits"):
        width, values = stored[f"small_cnn/{name}/MatMul"]
        assert width == 4
        np.testing.assert_allclose(values, stripped.get_layer(name).kernel.numpy().T, atol=1e-6)


def test_activation_ranges_cover_the_whole_calibration_set(trained_cnn, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    (x, _), _ = digits
    calibration = x[:64]
    result = to_tflite(trained_cnn, tmp_path / "m4.tflite", "int4", calibration)
    out = Interpreter(model_path=result.path).get_output_details()[0]
    scale, zero = out["quantization"]
    logits = trained_cnn(calibration).numpy()
    # ai-edge-quantizer's own moving average of per-example ranges would clip the top logits.
    assert (-128 - zero) * scale <= logits.min() + 0.05 * np.ptp(logits)
    assert (127 - zero) * scale >= logits.max() - 0.05 * np.ptp(logits)

"""LearnableBitQuant: quantizer math, TF-MOT wrapping, channel removal, serialization, int8 grid."""

import math

import numpy as np
import pytest
from conftest import clone

from tfsafe import metrics
from tfsafe._keras import keras, tf, tfmot
from tfsafe.compress import quantization as q
from tfsafe.compress.channel_removal import removal_plan
from tfsafe.compress.exact_int8 import exact_int8_model, to_int8_tflite
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.io import load_model, save_model
from tfsafe.objectives import size_penalty


def _set_bits(layer, values):
    variable = q.quant_variables(layer)["bits"]
    variable.assign(np.asarray(values, np.float32).reshape(variable.shape))


def _kill(layer, channels):
    bits = q.quant_variables(layer)["bits"].numpy().reshape(-1)
    bits[list(channels)] = 0.0
    _set_bits(layer, bits)


# --- quantizer math ---------------------------------------------------------------------------

def test_grid_clamp_and_rounding():
    x = tf.constant([-9.0, -4.4, -0.6, 0.2, 1.4, 2.5, 5.7])
    out = q.quantize_to_grid(x, tf.constant(3.0), tf.constant(0.0)).numpy()
    # 3 bits: levels -4..3; tf.round rounds half to even (2.5 -> 2).
    np.testing.assert_array_equal(out, [-4, -4, -1, 0, 1, 2, 3])
    scaled = q.quantize_to_grid(x * 0.25, tf.constant(3.0), tf.constant(-2.0)).numpy()
    np.testing.assert_allclose(scaled, out * 0.25)
    assert np.all(q.quantize_to_grid(x, tf.constant(0.0), tf.constant(0.0)).numpy() == 0)
    assert np.all(q.quantize_to_grid(x, tf.constant(-1.5), tf.constant(1.0)).numpy() == 0)  # b < 0 counts as 0


def test_ste_gradients_reach_x_bits_and_exponent():
    x = tf.constant([0.3, 1.6, 9.0, -7.0])
    b = tf.Variable(3.0)
    e = tf.Variable(0.0)
    xv = tf.Variable(x)
    with tf.GradientTape(persistent=True) as tape:
        out = q.quantize_to_grid(xv, b, e)
        total = tf.reduce_sum(out)
    gx, gb, ge = tape.gradient(total, [xv, b, e])
    # Straight-through: 1 inside the clamp range, 0 where clipped.
    np.testing.assert_array_equal(gx.numpy(), [1, 1, 0, 0])
    # b moves the clamp bounds: +ln2 * 2^(b-1) for the value clipped at the top, -ln2 * 2^(b-1) at the bottom.
    assert float(gb) == pytest.approx(math.log(2) * 4 - math.log(2) * 4, abs=1e-5)
    with tf.GradientTape() as tape:
        top = q.quantize_to_grid(tf.constant([9.0]), b, e)
    assert float(tape.gradient(top, b)) == pytest.approx(math.log(2) * 4)
    # e: ln2 * (q - x) for values inside the range, ln2 * q for clipped ones.
    qv = out.numpy()
    expected = math.log(2) * ((qv[0] - 0.3) + (qv[1] - 1.6) + qv[2] + qv[3])
    assert float(ge) == pytest.approx(expected, rel=1e-5)


def test_storage_bits_counts_the_integer_levels():
    np.testing.assert_array_equal(q.storage_bits([0.0, 0.4, 1.0, 2.0, 2.1, 2.5, 8.0]), [0, 1, 1, 2, 2, 3, 8])


# --- TF-MOT wrapping --------------------------------------------------------------------------

def test_quantize_learnable_weight_only_on_grid(trained_cnn, digits):
    (x, _), _ = digits
    qmodel = q.quantize_learnable(trained_cnn, init_bits=6)
    layers = q.learnable_layers(qmodel)
    assert [layer.name for layer in layers] == ["quant_conv1", "quant_conv2", "quant_fc1", "quant_logits"]
    assert all(isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2) for layer in layers)
    # Weight-only: no input quantize layer, no activation or output quantizers.
    assert not any(type(layer).__name__ == "QuantizeLayer" for layer in qmodel.layers)
    assert all(not layer._quantize_activations and not layer._output_quantizers for layer in layers)
    for layer in layers:
        kernel = q.quantized_kernel(layer)
        k = kernel / 2.0 ** q.quant_variables(layer)["exponent"].numpy()
        np.testing.assert_allclose(k, np.round(k), atol=1e-4)
        assert np.round(k).min() >= -32 and np.round(k).max() <= 31
    assert float(size_penalty(qmodel)) == pytest.approx(6.0)
    agree = np.mean(qmodel(x[:300], training=False).numpy().argmax(1) == trained_cnn(x[:300]).numpy().argmax(1))
    assert agree > 0.97
    assert metrics.average_bits(qmodel) < 7.0  # kernels at 6 bits, biases at 32


def test_size_penalty_gradient_is_weights_per_channel(trained_cnn):
    qmodel = q.quantize_learnable(trained_cnn, init_bits=4)
    conv2 = qmodel.get_layer("quant_conv2")
    bits = q.quant_variables(conv2)["bits"]
    with tf.GradientTape() as tape:
        value = size_penalty(qmodel)
    total = sum(q.learnable_kernel(layer).shape.num_elements() for layer in q.learnable_layers(qmodel))
    np.testing.assert_allclose(tape.gradient(value, bits).numpy(), 3 * 3 * 16 / total, rtol=1e-6)


def test_bad_input_is_rejected(trained_cnn):
    for bits in (-1, 2.5, 0, True, "8", float("nan")):
        with pytest.raises(InputError, match="init_bits"):
            q.quantize_learnable(trained_cnn, init_bits=bits)
    with pytest.raises(InputError, match="max_bits"):
        q.quantize_learnable(trained_cnn, init_bits=4, max_bits=3.5)
    with pytest.raises(UnsupportedModelError, match="pool1"):
        q.quantize_learnable(trained_cnn, layers=["conv1", "pool1"])
    with pytest.raises(InputError, match="No layer named"):
        q.quantize_learnable(trained_cnn, layers=["nope"])
    no_target = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Reshape((16, 1)), keras.layers.Conv1D(2, 1)])
    with pytest.raises(UnsupportedModelError, match="no Conv2D"):
        q.quantize_learnable(no_target)
    transpose = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2DTranspose(2, 3, name="up")])
    with pytest.raises(UnsupportedModelError, match="Conv2DTranspose"):
        q.quantize_learnable(transpose, layers=["up"])


# --- zero bits -> physical removal ------------------------------------------------------------

def test_zero_bit_channels_are_removed_with_same_outputs(trained_cnn, digits):
    (x, _), _ = digits
    qmodel = q.quantize_learnable(trained_cnn, init_bits=4)
    _kill(qmodel.get_layer("quant_conv1"), [0, 3, 5])
    _kill(qmodel.get_layer("quant_conv2"), range(0, 32, 4))
    _kill(qmodel.get_layer("quant_fc1"), range(10))
    _kill(qmodel.get_layer("quant_logits"), [2])  # a model output: must stay
    conv1 = qmodel.get_layer("quant_conv1")
    feature = keras.Model(qmodel.inputs, conv1.output)(x[:8], training=False).numpy()
    assert np.all(feature[..., [0, 3, 5]] == 0)  # zero kernel and gated bias: relu(0)
    stripped = strip(qmodel)
    shapes = {layer.name: layer.output_shape[-1] for layer in stripped.layers}
    assert shapes["conv1"] == 13 and shapes["conv2"] == 24 and shapes["fc1"] == 54 and shapes["logits"] == 10
    assert stripped.get_layer("fc1").kernel.shape == (2 * 2 * 24, 54)  # Flatten: 4 positions x kept channels
    np.testing.assert_allclose(stripped(x[:64]).numpy(), qmodel(x[:64], training=False).numpy(),
                               atol=1e-4)
    assert all(type(layer).__module__.startswith("tf_keras") for layer in stripped.layers)
    size = q.learned_size(qmodel)
    assert size["channels_removed"] == 3 + 8 + 10
    assert size["kernel_weights"] == 9 * 13 + 9 * 13 * 24 + 96 * 54 + 54 * 10
    assert stripped.count_params() < trained_cnn.count_params()


def _bn_model(second_padding):
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("tanh", name="act")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="valid", name="dw")(h) if second_padding == "valid" else h
    h = keras.layers.Conv2D(4, 1 if second_padding == "valid" else 3, padding=second_padding, name="c2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    outputs = keras.layers.Dense(3, name="out")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 1.5, 6), rng.normal(0, 1, 6), rng.normal(0, 1, 6), rng.uniform(0.5, 2, 6)])
    return model


@pytest.mark.parametrize("second_padding", ["valid", "same"])
def test_batchnorm_constants_fold_or_keep_the_channel(second_padding):
    model = _bn_model(second_padding)
    x = np.random.default_rng(0).random((16, 8, 8, 2)).astype(np.float32)
    qmodel = q.quantize_learnable(model, init_bits=5)
    _kill(qmodel.get_layer("quant_c1"), [1, 4])
    _kill(qmodel.get_layer("quant_c2"), [0])
    plan = removal_plan(qmodel)
    stripped = strip(qmodel)
    np.testing.assert_allclose(stripped(x).numpy(), qmodel(x, training=False).numpy(), atol=1e-4)
    # c2's zero-bit channel outputs exactly 0 (linear, bias gated): Flatten -> Dense drops it.
    assert stripped.get_layer("c2").filters == 3
    if second_padding == "valid":
        # tanh(BN(0)) is a non-zero constant: it flows through pool and the valid depthwise conv
        # into the 1x1 conv, whose bias absorbs it; the channels go.
        assert stripped.get_layer("c1").filters == 4 and stripped.get_layer("bn").gamma.shape == (4,)
        assert stripped.get_layer("dw").depthwise_kernel.shape[2] == 4
        assert "c2" in plan.bias_fold
    else:
        # A 'same' conv cannot absorb a non-zero constant (borders): the channels stay.
        assert stripped.get_layer("c1").filters == 6 and plan.kept_dead["c1"] == 2


# --- restoring --------------------------------------------------------------------------------

def test_restore_channels_refits_the_exponent(trained_cnn):
    qmodel = q.quantize_learnable(trained_cnn, init_bits=4)
    layer = qmodel.get_layer("quant_conv2")
    _kill(layer, [1, 2])
    assert np.all(q.quantized_kernel(layer)[..., [1, 2]] == 0)
    q.restore_channels(layer, [2], bits=2.0)
    assert q.channel_bits(layer)[1] == 0 and q.channel_bits(layer)[2] == 2.0
    kernel = q.quantized_kernel(layer)[..., 2]
    assert np.count_nonzero(kernel) > 0
    latent = q.learnable_kernel(layer).numpy()[..., 2]
    assert np.abs(kernel).max() == pytest.approx(np.abs(latent).max(), rel=1e-5)  # 2^e * (2^(b-1) - 1) = max|w|
    with pytest.raises(InputError):
        q.restore_channels(layer, [1], bits=0)


# --- serialization ----------------------------------------------------------------------------

def test_save_and_load_without_quantize_scope(trained_cnn, digits, tmp_path):
    (x, _), _ = digits
    qmodel = q.quantize_learnable(clone(trained_cnn), init_bits=5)
    _kill(qmodel.get_layer("quant_conv2"), [3, 7])
    path = save_model(qmodel, tmp_path / "q.keras")
    for loaded in (load_model(path), keras.models.load_model(path)):
        np.testing.assert_array_equal(loaded(x[:32], training=False).numpy(), qmodel(x[:32], training=False).numpy())
        np.testing.assert_array_equal(q.channel_bits(loaded.get_layer("quant_conv2")),
                                      q.channel_bits(qmodel.get_layer("quant_conv2")))
        assert isinstance(loaded.get_layer("quant_conv2").quantize_config, q.LearnableBitQuantizeConfig)
    layer = keras.utils.deserialize_keras_object(keras.utils.serialize_keras_object(q.LearnableBitQuant(3)))
    assert layer == q.LearnableBitQuant(3)


# --- int8 TFLite ------------------------------------------------------------------------------

def _int8_kernels(blob):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    kernels = {}
    for detail in interpreter.get_tensor_details():
        params = detail["quantization_parameters"]
        if detail["dtype"] == np.int8 and len(detail["shape"]) == 4 and params["scales"].size > 1:
            kernels[detail["name"]] = (interpreter.get_tensor(detail["index"]), params["scales"])
    return kernels


def _find(kernels, name):
    return next(v for k, v in kernels.items() if f"/{name}/" in k)


def test_int8_export_stores_the_learned_integers(trained_cnn, digits):
    (x, _), _ = digits
    qmodel = q.quantize_learnable(trained_cnn, init_bits=4)
    _kill(qmodel.get_layer("quant_conv2"), [0, 5])
    _set_bits(qmodel.get_layer("quant_fc1"), np.linspace(1.0, 7.9, 64))  # 1..8 storage bits
    exact = exact_int8_model(qmodel)
    np.testing.assert_allclose(exact(x[:32], training=False).numpy(), strip(qmodel)(x[:32]).numpy(), atol=1e-4)
    kernels = _int8_kernels(to_int8_tflite(exact, x[:16]))
    plan = removal_plan(qmodel)
    for name in ("conv1", "conv2", "fc1", "logits"):
        source = qmodel.get_layer(f"quant_{name}")
        keep = plan.output_keep[name]
        in_keep = plan.input_keep.get(name)
        learned = q.quantized_kernel(source)
        if in_keep is not None:
            learned = np.take(learned, np.flatnonzero(in_keep), axis=learned.ndim - 2)
        learned = learned[..., keep]
        scale = 2.0 ** q.quant_variables(source)["exponent"].numpy()[keep]
        codes, tflite_scale = _find(kernels, f"quant_{name}")
        codes = np.moveaxis(codes, 0, -1).reshape(learned.shape)  # TFLite: (out, h, w, in)
        np.testing.assert_allclose(tflite_scale, scale, rtol=1e-6)  # per-channel scale = 2^e
        np.testing.assert_array_equal(codes, np.round(learned / scale))  # int8 = the learned k
        np.testing.assert_allclose(codes * tflite_scale, learned, rtol=1e-6, atol=1e-12)


def test_plain_int8_conversion_is_exact_only_for_special_channels(trained_cnn, digits):
    """TFLite's own per-channel scale is max|w| / 127: the learned 2^e * k survives only when
    max|k| divides 127 * k for every level (ternary channels, or max|k| = 127)."""
    (x, _), _ = digits
    qmodel = q.quantize_learnable(trained_cnn, init_bits=3, layers=["conv2"])
    layer = qmodel.get_layer("quant_conv2")
    _set_bits(layer, [2.0] * 16 + [3.0] * 16)  # levels -2..1 (not exact) and -4..3
    latent = q.learnable_kernel(layer)
    values = latent.numpy()
    values[..., 0] = np.sign(values[..., 0]) * 2.0 ** q.quant_variables(layer)["exponent"].numpy()[0]  # ternary
    latent.assign(values)
    stripped = strip(qmodel)
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i : i + 1]] for i in range(16))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    codes, scales = _find(_int8_kernels(converter.convert()), "conv2")
    learned = np.moveaxis(q.quantized_kernel(layer), -1, 0)
    dequantized = codes * scales[:, None, None, None]
    np.testing.assert_allclose(dequantized[0], learned[0], rtol=1e-6)  # ternary: exact
    step = 2.0 ** q.quant_variables(layer)["exponent"].numpy()
    errors = np.abs(dequantized - learned).max(axis=(1, 2, 3))
    assert np.any(errors[1:] > 1e-3 * step[1:])  # generic channels: not the learned values...
    np.testing.assert_array_equal(np.round(dequantized / step[:, None, None, None]),
                                  np.round(learned / step[:, None, None, None]))  # ...but within half a step

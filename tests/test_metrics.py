import numpy as np
import pytest

from tfsafe import metrics
from tfsafe._keras import keras, tfmot


def _hand_built():
    """Dense(4->3) with a known kernel and bias: 12 + 3 = 15 params, 5 non-zeros."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    kernel = np.zeros((4, 3), "float32")
    kernel[0, 0], kernel[1, 1], kernel[2, 2], kernel[3, 0] = 1, 2, 3, 4
    model.layers[0].set_weights([kernel, np.array([0, 0, 5], "float32")])
    return model


def test_counts_of_a_hand_built_model():
    model = _hand_built()
    assert metrics.count_params(model) == 15
    assert metrics.count_nonzero(model) == 5
    assert metrics.sparsity(model) == pytest.approx(1 - 4 / 12)  # kernels only
    overall, layers = metrics.sparsity(model, per_layer=True, kernels_only=False)
    assert overall == pytest.approx(1 - 5 / 15) and layers == {"d": pytest.approx(1 - 5 / 15)}
    assert metrics.average_bits(model) == 32
    assert metrics.ideal_bytes(model) == 5 * 32 / 8
    assert metrics.compression_ratio(model) == pytest.approx(20 / 60)


def test_registered_weight_stats_drive_bits_and_bytes():
    class FourBitDense(keras.layers.Dense):
        pass

    metrics.register_weight_stats(
        FourBitDense, lambda layer: [metrics.WeightStat(layer.name, "kernel", layer.kernel.numpy(), bits=4),
                                     metrics.WeightStat(layer.name, "codebook", shape=(16,), params=16,
                                                        nonzeros=16, bits=32, kind="codebook")])
    model = keras.Sequential([keras.Input((4,)), FourBitDense(2, use_bias=False)])
    model.layers[0].set_weights([np.ones((4, 2), "float32")])
    assert metrics.average_bits(model) == 4
    assert metrics.ideal_bytes(model) == (8 * 4 + 16 * 32) / 8
    assert metrics.count_params(model) == 8


def test_relu_count_for_all_three_relu_forms():
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(2, 3, activation="relu")(inputs)  # 4*4*2 = 32
    h = keras.layers.Conv2D(3, 3)(h)
    h = keras.layers.ReLU()(h)  # 2*2*3 = 12
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5)(h)
    h = keras.layers.Activation("relu")(h)  # 5
    h = keras.layers.Dense(4, activation="tanh")(h)
    h = keras.layers.LeakyReLU()(h)  # not a ReLU
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    assert metrics.relu_count(model) == 32 + 12 + 5


def test_relu_count_recurses_into_nested_models_and_registry():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, activation="relu")])
    assert metrics.relu_count(outer) == 5

    class HalfReLU(keras.layers.ReLU):
        pass

    metrics.register_relu_counter(HalfReLU, lambda layer: 1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), HalfReLU()])
    assert metrics.relu_count(model) == 1


def test_tfmot_pruned_model_reports_mask_sparsity(trained_cnn, digits):
    from conftest import clone, compile_classifier

    (x, y), _ = digits
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        clone(trained_cnn), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.75, 0, frequency=1))
    compile_classifier(pruned).fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0,
                                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    size = metrics.model_size(pruned, reference=trained_cnn)
    assert size["params"] == trained_cnn.count_params()  # masks and step counters not counted
    assert metrics.sparsity(pruned) == pytest.approx(0.75, abs=0.01)
    assert size["compression_ratio"] < 0.3
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    assert metrics.count_nonzero(stripped) == size["nonzeros"]


def _learned_bits_model(trained_cnn, layer_bits, dead=()):
    from tfsafe.compress.quantization import channel_bits, learnable_layers, quantize_learnable, restore_channels

    qmodel = quantize_learnable(trained_cnn, init_bits=8)
    for layer, bits in zip(learnable_layers(qmodel), layer_bits):
        restore_channels(layer, np.arange(channel_bits(layer).size), bits=float(bits))
        if layer.name in dict(dead):
            variable = next(v for v in layer.weights if v.name.endswith("kernel_bits:0"))
            values = variable.numpy()
            values[: dict(dead)[layer.name]] = 0.0
            variable.assign(values)
    return qmodel


def test_stripped_self_compressed_model_reports_the_bits_it_ships_with(trained_cnn):
    from tfsafe import strip

    wrapped = _learned_bits_model(trained_cnn, [3, 5, 4, 8])
    stripped = strip(wrapped)
    size, shipped = metrics.model_size(wrapped), metrics.model_size(stripped)
    assert shipped["average_bits"] == pytest.approx(size["average_bits"], rel=1e-6)
    assert shipped["ideal_bytes"] == pytest.approx(size["ideal_bytes"], rel=1e-6)
    assert shipped["params"] == size["params"] and shipped["nonzeros"] == size["nonzeros"]
    assert size["average_bits"] < 8
    records = getattr(stripped, metrics.DEPLOY_BITS_ATTR)
    assert {name: r["bits"] for name, r in records.items()} == {"conv1": 3, "conv2": 5, "fc1": 4, "logits": 8}
    # Zero-bit channels are removed: the stripped model ships fewer weights, at the same per-layer bits.
    pruned = strip(_learned_bits_model(trained_cnn, [3, 5, 4, 8], dead=[("quant_conv2", 8)]))
    assert metrics.model_size(pruned)["params"] < shipped["params"]
    kernels = {s["layer"]: s["bits"] for s in metrics.deployed_stats(pruned) if s["kind"] == "kernel"}
    assert kernels == {"conv1": 3, "conv2": 5, "fc1": 4, "logits": 8}
    # A plain model keeps 32 bits.
    assert metrics.model_size(trained_cnn)["average_bits"] == 32


def test_factorized_model_reports_the_merged_params_it_deploys(trained_cnn):
    from tfsafe import strip
    from tfsafe.compress.factorization import factorize

    model = factorize(trained_cnn, bits=4)
    for layer in model.layers:
        if hasattr(layer, "A"):  # an ATMC-like projection: 15 non-zero k-means levels
            a = layer.A.numpy()
            table = np.quantile(a, np.linspace(0, 1, 15)).astype("float32")
            layer.A.assign(table[np.abs(a[..., None] - table).argmin(-1)])
    size = metrics.model_size(model, reference=trained_cnn)
    assert size["params"] == trained_cnn.count_params()
    assert size["stored_params"] > 2 * trained_cnn.count_params()  # A, B, C
    kernels = [s for s in metrics.deployed_stats(model) if s["kind"] == "kernel"]
    assert all(s["bits"] == 4 for s in kernels)
    shipped = metrics.model_size(strip(model), reference=trained_cnn)
    for key in ("params", "nonzeros", "average_bits", "ideal_bytes", "compression_ratio"):
        assert shipped[key] == pytest.approx(size[key], rel=1e-6), key
    # A dense B moves the merged kernel off the codebook: 32 bits, still the merged params.
    layer = model.get_layer("fc1")
    layer.B.assign(np.random.default_rng(0).standard_normal(layer.B.shape).astype("float32"))
    fc1 = [s for s in metrics.deployed_stats(model) if s["layer"] == "fc1" and s["kind"] == "kernel"]
    assert [s["bits"] for s in fc1] == [32]
    assert metrics.model_size(model)["params"] == trained_cnn.count_params()


def test_wrapped_channel_pruned_model_counts_what_the_channel_masks_leave(trained_cnn):
    from tfsafe import strip
    from tfsafe.compress.pruning import prune_safe

    wrapped = prune_safe(trained_cnn, 0.5, granularity="channel")
    stripped = strip(wrapped)
    size, shipped = metrics.model_size(wrapped), metrics.model_size(stripped)
    for key in ("params", "nonzeros", "average_bits", "ideal_bytes"):
        assert size[key] == pytest.approx(shipped[key], rel=1e-6), key
    assert size["nonzeros"] == sum(int(np.count_nonzero(w)) for w in stripped.get_weights())
    # Layer by layer, the consumers' rows of the pruned channels were counted too (over-reported).
    layerwise = metrics.count_nonzero(metrics.weight_stats(wrapped))
    assert size["nonzeros"] < layerwise
    assert size["stored_params"] == trained_cnn.count_params()  # the wrapped form itself is unchanged
    # The same for self-compression's zero-bit channels: the wrapped model counts as it ships.
    learned = _learned_bits_model(trained_cnn, [3, 5, 4, 8], dead=[("quant_conv2", 8)])
    size, shipped = metrics.model_size(learned), metrics.model_size(strip(learned))
    for key in ("params", "nonzeros", "ideal_bytes"):
        assert size[key] == pytest.approx(shipped[key], rel=1e-6), key

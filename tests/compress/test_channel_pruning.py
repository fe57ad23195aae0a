"""Channel granularity: prune_safe(..., granularity="channel"), DynamicSparsity per channel, and
strip() removing the pruned channels physically (Add, BatchNormalization, Concatenate,
DepthwiseConv2D, SeparableConv2D)."""

import numpy as np
import pytest
from conftest import compile_classifier

from tfsafe._keras import keras
from tfsafe.compress.channel_removal import plan_channel_removal
from tfsafe.compress.dynamic_sparsity import DynamicSparsity, drop_and_grow, prune_to_target, read_masks
from tfsafe.compress.pruning import PrunableSafe, prunable_wrappers, prune_safe
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.io import load_model, save_model


def _randomize(model, seed=0):
    """Random weights and BatchNormalization statistics, so that every constant is non-trivial."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0.0, 0.5, n), rng.normal(0.0, 0.3, n),
                               rng.uniform(0.5, 2.0, n)])
        elif layer.weights:
            layer.set_weights([rng.normal(0.0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def _residual_model():
    x = inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    y = keras.layers.Conv2D(6, 1, name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.Add(name="add")([x, y])
    z = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    z = keras.layers.BatchNormalization(name="bn3")(z)
    z = keras.layers.ReLU(6.0, name="r3")(z)
    s = keras.layers.SeparableConv2D(4, 1, name="sep")(x)
    x = keras.layers.Concatenate(name="cat")([z, s])
    x = keras.layers.Conv2D(5, 1, activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(x))


def _set_dead(model, dead):
    for layer in prunable_wrappers(model):
        mask = np.ones(layer.masks[0].shape, np.float32).reshape(-1)
        mask[dead.get(layer.layer.name, [])] = 0
        layer.masks[0].assign(mask.reshape(layer.masks[0].shape))
        layer.apply_masks()


@pytest.fixture(scope="module")
def residual():
    dense = _randomize(_residual_model())
    pruned = _randomize(prune_safe(dense, 0.0, granularity="channel"))  # BN statistics differ from dense
    # Channels 0, 1 are dead in both Add branches (removable), channel 2 only in c2 (must stay);
    # the depthwise drops the same channels, so its "same" padding sees no constant.
    _set_dead(pruned, {"c1": [0, 1], "c2": [0, 1, 2], "dw": [0, 1], "sep": [0], "c3": [4]})
    return dense, pruned, strip(pruned)


def test_output_layer_stays_dense_and_every_channel_layer_is_wrapped(residual):
    _, pruned, _ = residual
    wrapped = {layer.layer.name: layer for layer in prunable_wrappers(pruned)}
    assert sorted(wrapped) == ["c1", "c2", "c3", "dw", "sep"]  # logits: the classes stay
    assert wrapped["dw"].masks[0].shape == (6, 1) and wrapped["sep"].masks[0].shape == (4,)


def test_masked_channel_outputs_exact_zero_before_batchnorm(residual):
    _, pruned, _ = residual
    probe = keras.Model(pruned.inputs, pruned.get_layer("prunable_safe_c1").output)
    out = probe(np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)).numpy()
    assert np.all(out[..., :2] == 0.0) and np.all(np.abs(out[..., 2:]).max(axis=(0, 1, 2)) > 0)


def test_strip_removes_channels_exactly_through_add_bn_concat_depthwise(residual):
    dense, pruned, stripped = residual
    x = np.random.default_rng(2).normal(size=(6, 8, 8, 3)).astype(np.float32)
    masked, plain = pruned(x, training=False).numpy(), stripped(x, training=False).numpy()
    np.testing.assert_allclose(plain, masked, rtol=1e-5, atol=1e-5 * np.abs(masked).max())
    # Hand count: c1 3*3*3*4+4, bn1 4*4, c2 4*4+4, bn2 16, dw 3*3*4+4, bn3 16, sep 4+4*3+3,
    # c3 (4+3)*4+4, logits 4*3+3.
    assert dense.count_params() == 449
    assert stripped.count_params() == 112 + 16 + 20 + 16 + 40 + 16 + 19 + 32 + 15
    assert stripped.get_layer("c2").filters == 4  # channel 2 is dead in c2 only: the Add keeps it
    plan = plan_channel_removal(pruned)
    assert plan.kept_dead == {"c1": 0, "c2": 1, "sep": 0, "c3": 0}
    assert all(type(layer).__name__ != "PrunableSafe" for layer in stripped.layers)


@pytest.mark.parametrize("next_layer", ["conv", "separable"])
def test_same_padding_nonzero_constants_keep_one_carrier_channel(next_layer):
    x = inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(5, 3, padding="same", name="a")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    if next_layer == "conv":
        x = keras.layers.Conv2D(3, 3, padding="same", strides=2, name="b")(x)
    else:
        x = keras.layers.SeparableConv2D(3, 3, padding="same", name="b")(x)
    model = _randomize(keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(x))))
    pruned = prune_safe(model, 0.0, granularity="channel")
    _set_dead(pruned, {"a": [0, 1, 3]})
    stripped = strip(pruned)
    # BN turns each dead channel into a non-zero constant that a 3x3 "same" conv sees unevenly at
    # the border, so no bias can absorb it. A Conv2D keeps one of them as a carrier and merges
    # the others into that channel's input weights (the zero padding hits them alike); the
    # per-channel depthwise filters of a SeparableConv2D cannot merge, so all three stay.
    assert stripped.get_layer("a").filters == (3 if next_layer == "conv" else 5)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(stripped(x).numpy(), pruned(x).numpy(), rtol=1e-5, atol=1e-6)


def test_prune_safe_channel_counts_are_exact():
    model = _residual_model()
    pruned = prune_safe(model, 0.5, granularity="channel", init="uniform")
    counts = {layer.layer.name: layer.mask_counts() for layer in prunable_wrappers(pruned)}
    # 14 = round(0.5 * 27) channels; the half channel left over goes to c3 (largest remainder).
    assert counts == {"c1": (3, 6), "c2": (3, 6), "dw": (3, 6), "sep": (2, 4), "c3": (3, 5)}
    erk = prune_safe(model, 0.5, granularity="channel")
    assert sum(layer.mask_counts()[0] for layer in prunable_wrappers(erk)) == round(0.5 * 27)


def test_add_branches_and_depthwise_share_one_mask_so_every_pruned_channel_goes():
    model = _randomize(_residual_model())
    pruned = compile_classifier(prune_safe(model, 0.5, granularity="channel", init="uniform"))
    wrapped = {layer.layer.name: layer for layer in prunable_wrappers(pruned)}
    assert {name: layer.channel_group for name, layer in wrapped.items()} == {
        "c1": "c1", "c2": "c1", "dw": "c1", "sep": None, "c3": None}
    masks = [wrapped[name].masks[0].numpy().reshape(-1) for name in ("c1", "c2", "dw")]
    assert all(np.array_equal(masks[0], m) for m in masks) and masks[0].sum() == 3
    rng = np.random.default_rng(5)
    data = rng.normal(size=(16, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, 16)
    callback = DynamicSparsity(update_every=1, drop_fraction=0.7, end_step=3, grow="gradient",
                               grad_data=(data[0][:8], data[1][:8]), seed=2)
    pruned.fit(*data, batch_size=8, epochs=1, callbacks=[callback], verbose=0)
    after = [wrapped[name].masks[0].numpy().reshape(-1) for name in ("c1", "c2", "dw")]
    assert callback.history[0]["changed"] > 0 and not np.array_equal(after[0], masks[0])
    assert all(np.array_equal(after[0], m) for m in after) and after[0].sum() == 3
    assert len(read_masks(prunable_wrappers(pruned))) == 3  # the group, sep, c3
    plan = plan_channel_removal(pruned)
    assert plan.kept_dead == {"c1": 0, "c2": 0, "sep": 0, "c3": 0}  # nothing dead had to stay
    stripped = strip(pruned)
    x = data[0][:4]
    masked = pruned(x, training=False).numpy()
    np.testing.assert_allclose(stripped(x, training=False).numpy(), masked, rtol=1e-5,
                               atol=1e-5 * np.abs(masked).max())
    assert stripped.get_layer("dw").depthwise_kernel.shape == (3, 3, 3, 1)


def test_drop_and_grow_scores_channels_by_norm():
    kernel = np.array([[3.0, 0.1, 1.0, 0.0], [0.0, 0.1, -1.0, 0.0]])  # channel norms 3, 0.14, 1.41, 0
    mask = np.array([1.0, 1.0, 1.0, 0.0])
    grads = np.array([[0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 5.0]])
    new = drop_and_grow([kernel], [mask], 0.34, np.random.default_rng(0), grads=[grads], grow="gradient")
    assert new[0].tolist() == [1.0, 0.0, 1.0, 1.0]
    # Channel A = (1, 1) vs B = (1.6, 0): L2 drops A (1.41 < 1.6), L1 drops B (1.6 < 2).
    two, two_mask = np.array([[1.0, 1.6, 0.0], [1.0, 0.0, 0.0]]), np.array([1.0, 1.0, 0.0])
    for norm, expected in (("l2", [0.0, 1.0, 1.0]), ("l1", [1.0, 0.0, 1.0])):
        assert drop_and_grow([two], [two_mask], 0.5, np.random.default_rng(0), norm=norm)[0].tolist() == expected
    with pytest.raises(InputError, match="matching shapes"):
        drop_and_grow([kernel], [np.ones(3)], 0.5, np.random.default_rng(0))


def test_dynamic_sparsity_keeps_channel_count_and_regrows_live_channels():
    x = inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(12, activation="relu", name="fc")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    pruned = compile_classifier(prune_safe(model, 0.5, granularity="channel", init="uniform"))
    rng = np.random.default_rng(0)
    data = rng.random((32, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 32)
    before = read_masks(prunable_wrappers(pruned))
    callback = DynamicSparsity(update_every=1, drop_fraction=0.5, end_step=3, grow="gradient",
                               grad_data=(data[0][:8], data[1][:8]), seed=1)
    pruned.fit(*data, batch_size=16, epochs=1, callbacks=[callback], verbose=0)
    after = read_masks(prunable_wrappers(pruned))
    assert [m.shape for m in after] == [(8,), (12,)]
    assert [int(m.sum()) for m in after] == [int(m.sum()) for m in before] == [4, 6]
    assert callback.history and callback.history[0]["changed"] > 0
    for layer in prunable_wrappers(pruned):  # dead channels are zero, live ones are not
        keep = layer.masks[0].numpy() > 0
        kernel = layer.layer.kernel.numpy()
        assert np.all(kernel[..., ~keep] == 0) and np.all(layer.layer.bias.numpy()[~keep] == 0)
        assert np.all(np.abs(kernel[..., keep]).reshape(-1, keep.sum()).max(axis=0) > 0)
    prune_to_target(prunable_wrappers(pruned), 0.75)
    assert sum(int(m.sum()) for m in read_masks(prunable_wrappers(pruned))) == 5


def test_channel_wrapper_config_round_trip(tmp_path):
    wrapper = PrunableSafe(keras.layers.Conv2D(4, 3, name="conv"), sparsity=0.5, granularity="channel")
    model = keras.Sequential([keras.Input((6, 6, 2)), wrapper])
    config = wrapper.get_config()
    assert config["granularity"] == "channel"
    again = PrunableSafe.from_config(config)
    assert again.granularity == "channel" and again.sparsity == 0.5
    save_model(model, tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    layer = loaded.layers[0]
    assert layer.granularity == "channel"
    np.testing.assert_array_equal(layer.masks[0].numpy(), wrapper.masks[0].numpy())
    assert int(layer.masks[0].numpy().sum()) == 2


def test_layers_without_channels_get_one_line_errors():
    with pytest.raises(UnsupportedModelError, match="'emb' \\(Embedding\\) cannot take granularity='channel'"):
        PrunableSafe(keras.layers.Embedding(10, 4, name="emb"), granularity="channel")
    with pytest.raises(InputError, match="granularity must be one of"):
        PrunableSafe(keras.layers.Dense(3), granularity="filter")
    x = inp = keras.Input((10, 2))
    x = keras.layers.Conv1D(4, 3, name="conv1d")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.Dense(5, name="fc")(x)))
    with pytest.raises(UnsupportedModelError, match="'conv1d' \\(Conv1D\\).*skip_layers=\\['conv1d'\\]"):
        prune_safe(model, 0.5, granularity="channel")
    pruned = prune_safe(model, 0.5, granularity="channel", skip_layers=["conv1d"])
    assert [layer.layer.name for layer in prunable_wrappers(pruned)] == ["fc"]
    single = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="only")])
    with pytest.raises(UnsupportedModelError, match="no layer to prune by channel"):
        prune_safe(single, 0.5, granularity="channel")


@pytest.mark.slow
def test_mobilenet_v2_strips_exactly():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    _randomize(model)
    pruned = prune_safe(model, 0.5, granularity="channel", init="uniform")
    stripped = strip(pruned)
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
    masked, plain = pruned(x, training=False).numpy(), stripped(x, training=False).numpy()
    np.testing.assert_allclose(plain, masked, rtol=1e-5, atol=1e-5 * np.abs(masked).max())
    assert stripped.count_params() < 0.6 * model.count_params()


def test_shared_layer_keeps_its_channels_and_stays_exact():
    a_in, b_in = keras.Input((6, 6, 2)), keras.Input((6, 6, 2))
    shared = keras.layers.Conv2D(4, 1, name="shared")
    h = keras.layers.Add()([shared(keras.layers.Conv2D(2, 1, name="pre")(a_in)), shared(b_in)])
    h = keras.layers.Conv2D(3, 1, name="mid")(h)
    model = _randomize(keras.Model([a_in, b_in], keras.layers.Dense(2, name="out")(keras.layers.Flatten()(h))))
    pruned = prune_safe(model, 0.5, granularity="channel", init="uniform")
    stripped = strip(pruned)
    # One set of weights serves two calls: neither its outputs nor its inputs (pre's) can shrink.
    assert stripped.get_layer("shared").filters == 4 and stripped.get_layer("pre").filters == 2
    assert stripped.get_layer("mid").filters == 1
    x = [np.random.default_rng(6).random((2, 6, 6, 2)).astype(np.float32)] * 2
    np.testing.assert_allclose(stripped(x).numpy(), pruned(x).numpy(), rtol=1e-5, atol=1e-6)

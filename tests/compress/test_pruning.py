"""PrunableSafe, prune_safe, drop-and-regrow and the DynamicSparsity callback."""

import numpy as np
import pytest
from conftest import clone, compile_classifier

from tfsafe._keras import keras, tf, tfmot
from tfsafe.compress.dynamic_sparsity import (
    DynamicSparsity,
    cosine_fraction,
    dense_gradients,
    drop_and_grow,
    read_masks,
    read_weights,
)
from tfsafe.compress.pruning import PrunableSafe, layer_densities, prunable_wrappers, prune_safe
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import count_nonzero, sparsity
from tfsafe.models import small_cnn


def _active(model):
    return sum(layer.mask_counts()[0] for layer in prunable_wrappers(model))


def _total(model):
    return sum(layer.mask_counts()[1] for layer in prunable_wrappers(model))


def test_prune_safe_hits_target_exactly_and_leaves_input_alone(trained_cnn, digits):
    before = [w.copy() for w in trained_cnn.get_weights()]
    pruned = prune_safe(trained_cnn, 0.9)
    assert [type(layer).__name__ for layer in pruned.layers].count("PrunableSafe") == 4
    assert _active(pruned) == round(0.1 * _total(pruned))
    assert all(np.array_equal(a, b) for a, b in zip(before, trained_cnn.get_weights()))
    # ERK: the tiny first conv and the logits layer stay denser than the big fc1.
    _, per_layer = sparsity(pruned, per_layer=True)
    assert per_layer["conv1"] < per_layer["fc1"] and per_layer["logits"] < per_layer["fc1"]
    # Magnitude masks keep the largest weights of each kernel.
    for layer in prunable_wrappers(pruned):
        original = trained_cnn.get_layer(layer.layer.name).kernel.numpy()
        mask = layer.masks[0].numpy().astype(bool)
        assert np.abs(original[mask]).min() >= np.abs(original[~mask]).max()
    (_, _), (xt, _) = digits
    manual = clone(trained_cnn)
    for layer in prunable_wrappers(pruned):
        target = manual.get_layer(layer.layer.name)
        target.kernel.assign(target.kernel * layer.masks[0])
    np.testing.assert_allclose(pruned.predict(xt, verbose=0), manual.predict(xt, verbose=0), atol=1e-5)


def test_uniform_init_and_layer_densities():
    pruned = prune_safe(small_cnn(), 0.75, init="uniform")
    _, per_layer = sparsity(pruned, per_layer=True)
    assert all(abs(s - 0.75) < 0.01 for s in per_layer.values())
    counts = layer_densities([(3, 3, 1, 16), (1000, 64), (64, 10)], 0.1, "erk")
    assert sum(counts) == round(0.1 * (144 + 64000 + 640))
    assert counts[0] / 144 > counts[1] / 64000


def test_masked_weights_get_no_gradient_and_masks_survive_fit(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(1)
    pruned = compile_classifier(prune_safe(small_cnn(), 0.8, mask_init="random"))
    masks = read_masks(prunable_wrappers(pruned))
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y[:32], pruned(x[:32]), from_logits=True)
    grads = tape.gradient(loss, [w for layer in prunable_wrappers(pruned) for w in layer.pruned_weights])
    for grad, mask in zip(grads, masks):
        assert np.all(grad.numpy()[mask == 0] == 0)
    pruned.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    for layer, mask in zip(prunable_wrappers(pruned), masks):
        np.testing.assert_array_equal(layer.masks[0].numpy(), mask)


def test_drop_and_grow_is_exact_pure_and_regrows_elsewhere():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(20, 10)), rng.normal(size=(3, 3, 4))]
    masks = [(rng.random(w.shape) < 0.3).astype(np.float32) for w in weights]
    copies = [m.copy() for m in masks]
    new = drop_and_grow(weights, masks, 0.5, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(masks, copies))  # inputs untouched
    for w, old, m in zip(weights, masks, new):
        assert m.sum() == old.sum()
        dropped = (old > 0) & (m == 0)
        grown = (old == 0) & (m > 0)
        assert dropped.sum() == grown.sum() == int(0.5 * old.sum())
        kept = (old > 0) & (m > 0)
        assert np.abs(w[dropped]).max() <= np.abs(w[kept]).min()  # the smallest went
    other = drop_and_grow(weights, masks, 0.5, np.random.default_rng(2))
    assert not all(np.array_equal(a, b) for a, b in zip(new, other))  # different candidates
    glob = drop_and_grow(weights, masks, 0.5, np.random.default_rng(1), scope="global")
    assert sum(m.sum() for m in glob) == sum(m.sum() for m in masks)
    grads = [rng.normal(size=w.shape) for w in weights]
    rigl = drop_and_grow(weights, masks, 0.5, np.random.default_rng(1), grads=grads, grow="gradient")
    for g, old, m in zip(grads, masks, rigl):
        grown = (old == 0) & (m > 0)
        others = (old == 0) & (m == 0)
        assert np.abs(g[grown]).min() >= np.abs(g[others]).max()
    with pytest.raises(InputError):
        drop_and_grow(weights, masks, 0.5, rng, grow="gradient")


def test_cosine_fraction():
    assert cosine_fraction(0, 0.5, 100) == pytest.approx(0.5)
    assert cosine_fraction(50, 0.5, 100) == pytest.approx(0.25)
    assert cosine_fraction(100, 0.5, 100) == 0.0


def test_dynamic_sparsity_keeps_count_and_regrows_at_zero(trained_cnn, digits):
    (x, y), _ = digits
    pruned = compile_classifier(prune_safe(trained_cnn, 0.9), lr=1e-3)
    callback = DynamicSparsity(update_every=5, drop_fraction=0.3, end_step=40, seed=0)
    count = _active(pruned)
    pruned.fit(x[:640], y[:640], epochs=2, batch_size=32, verbose=0, callbacks=[callback])
    assert [h["step"] for h in callback.history] == [5, 10, 15, 20, 25, 30, 35]
    assert all(h["changed"] > 0 for h in callback.history)
    assert _active(pruned) == count
    # A direct update: the regrown weights are zero, the survivors unchanged.
    wrappers = prunable_wrappers(pruned)
    old_masks, old_weights = read_masks(wrappers), read_weights(wrappers)
    callback.step = 10
    callback.update()
    for old_m, old_w, layer in zip(old_masks, old_weights, wrappers):
        new_m, new_w = layer.masks[0].numpy(), layer.pruned_weights[0].numpy()
        assert new_m.sum() == old_m.sum()
        assert np.all(new_w[(old_m == 0) & (new_m > 0)] == 0)
        kept = (old_m > 0) & (new_m > 0)
        np.testing.assert_array_equal(new_w[kept], old_w[kept])
        assert np.all(new_w[new_m == 0] == 0)


def test_gradient_regrowth_and_dense_init(trained_cnn, digits):
    (x, y), _ = digits
    dense = compile_classifier(prune_safe(trained_cnn, 0.8, init="dense"))
    assert _active(dense) == _total(dense)
    grads = dense_gradients(dense, x[:64], y[:64])
    assert all(np.any(g != 0) for g in grads)
    callback = DynamicSparsity(update_every=4, drop_fraction=0.3, end_step=16, grow="gradient",
                               grad_data=(x[:64], y[:64]), target_sparsity=0.8, scope="global")
    dense.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    assert _active(dense) == round(0.2 * _total(dense))
    assert [h["step"] for h in callback.history] == [4, 8]


def test_serialization_round_trip(tmp_path, trained_cnn, digits):
    (_, _), (xt, _) = digits
    pruned = prune_safe(trained_cnn, 0.7, init="uniform")
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered as tfsafe>PrunableSafe
    assert isinstance(loaded.layers[1], PrunableSafe)
    np.testing.assert_allclose(loaded.predict(xt, verbose=0), pruned.predict(xt, verbose=0), atol=1e-6)
    for a, b in zip(prunable_wrappers(loaded), prunable_wrappers(pruned)):
        np.testing.assert_array_equal(a.masks[0].numpy(), b.masks[0].numpy())
    config = prunable_wrappers(pruned)[0].get_config()
    again = PrunableSafe.from_config(config)
    assert again.sparsity == config["sparsity"] and again.layer.name == "conv1"


def test_strip_bakes_zeros_into_plain_layers(trained_cnn, digits):
    (_, _), (xt, _) = digits
    pruned = prune_safe(trained_cnn, 0.9)
    plain = strip(pruned)
    assert not any(isinstance(layer, PrunableSafe) for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(xt, verbose=0), pruned.predict(xt, verbose=0), atol=1e-5)
    assert count_nonzero(plain) == count_nonzero(pruned)  # metrics read the masks
    assert sparsity(plain) == pytest.approx(sparsity(pruned))
    assert sparsity(plain) >= 0.9 - 1e-3


class _Scale(tfmot.sparsity.keras.PrunableLayer, keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1], 4), initializer="ones")

    def call(self, inputs):
        return tf.matmul(inputs, self.scale)

    def get_prunable_weights(self):
        return [self.scale]


class _ListHeld(tfmot.sparsity.keras.PrunableLayer, keras.layers.Layer):
    """Keeps its kernel in a list, so PrunableSafe masks it in place (TF-MOT's way)."""

    def build(self, input_shape):
        self.kernels = [self.add_weight(name="k", shape=(input_shape[-1], 3), initializer="ones")]

    def call(self, inputs):
        return tf.matmul(inputs, self.kernels[0])

    def get_prunable_weights(self):
        return list(self.kernels)


class _NoPrunableInfo(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.w


def test_custom_layers_and_rnn():
    custom = keras.Sequential([keras.Input((6,)), _Scale(), keras.layers.Dense(3)])
    pruned = prune_safe(custom, 0.5, init="uniform")
    assert isinstance(pruned.layers[0], PrunableSafe) and pruned.layers[0].masks[0].shape == (6, 4)
    x = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    np.testing.assert_allclose(strip(pruned).predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)
    held = prune_safe(keras.Sequential([keras.Input((6,)), _ListHeld()]), 0.5, init="uniform")
    assert held.layers[0]._targets == [None]
    mask = held.layers[0].masks[0].numpy()
    np.testing.assert_allclose(held.predict(x, verbose=0), x @ mask, atol=1e-5)
    rnn = keras.Sequential([keras.Input((4, 3)), keras.layers.SimpleRNN(5), keras.layers.Dense(2)])
    pruned_rnn = prune_safe(rnn, 0.6, init="uniform")
    assert len(pruned_rnn.layers[0].masks) == 2  # kernel and recurrent kernel, as TF-MOT
    again = keras.Sequential.from_config(pruned_rnn.get_config())
    assert again.layers[0].sparsity == pruned_rnn.layers[0].sparsity  # one sparsity per weight
    xs = np.random.default_rng(1).random((3, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(strip(pruned_rnn).predict(xs, verbose=0), pruned_rnn.predict(xs, verbose=0),
                               atol=1e-5)


def test_bad_input():
    with pytest.raises(InputError, match="target_sparsity"):
        prune_safe(small_cnn(), 1.0)
    with pytest.raises(InputError, match="target_sparsity"):
        prune_safe(small_cnn(), -0.1)
    with pytest.raises(InputError, match="init"):
        prune_safe(small_cnn(), 0.5, init="magic")
    nothing = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Activation("relu")])
    with pytest.raises(UnsupportedModelError, match="nothing to prune"):
        prune_safe(nothing, 0.5)
    custom = keras.Sequential([keras.Input((3,)), _NoPrunableInfo(name="mystery"), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="mystery.*get_prunable_weights"):
        prune_safe(custom, 0.5)
    assert isinstance(prune_safe(custom, 0.5, skip_layers=["mystery"]).layers[1], PrunableSafe)
    with pytest.raises(UnsupportedModelError, match="already wrapped"):
        prune_safe(prune_safe(small_cnn(), 0.5), 0.5)
    with pytest.raises(UnsupportedModelError):
        PrunableSafe(keras.layers.Flatten())


def _conv_bn():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization(),
                             keras.layers.Flatten(), keras.layers.Dense(10)])


def test_layers_tf_mot_leaves_dense_stay_dense():
    model = _conv_bn()
    pruned = prune_safe(model, 0.5, init="uniform")
    assert [type(layer).__name__ for layer in pruned.layers] == [
        "PrunableSafe", "BatchNormalization", "Flatten", "PrunableSafe"]
    tfmot_pruned = tfmot.sparsity.keras.prune_low_magnitude(model)  # TF-MOT decides the same per class
    assert [bool(layer.pruning_vars) for layer in tfmot_pruned.layers] == [True, False, False, True]
    assert sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
    inputs = keras.Input((6, 4))
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(4)(inputs))
    h = keras.layers.Reshape((6, 4, 1))(h)
    h = keras.layers.DepthwiseConv2D(3, name="dw")(h)  # TF-MOT knows it and prunes nothing in it
    functional = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    kinds = [type(layer).__name__ for layer in prune_safe(functional, 0.5).layers]
    assert kinds.count("PrunableSafe") == 2 and "LayerNormalization" in kinds and "DepthwiseConv2D" in kinds


def test_tf_mot_pruned_model_is_refused_up_front():
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(_conv_bn())
    with pytest.raises(UnsupportedModelError, match="prune_low_magnitude.*strip_pruning"):
        prune_safe(wrapped, 0.5)
    assert isinstance(prune_safe(tfmot.sparsity.keras.strip_pruning(wrapped), 0.5).layers[0], PrunableSafe)


def test_nested_backbone_is_pruned_in_place_of_the_model_layer():
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="bb_conv"),
                                 keras.layers.BatchNormalization(name="bb_bn")], name="backbone")
    inputs = keras.Input((8, 8, 1))
    functional = keras.Model(inputs, keras.layers.Dense(10, name="head")(keras.layers.Flatten()(backbone(inputs))))
    sequential = keras.Sequential([keras.Input((8, 8, 1)), backbone, keras.layers.Flatten(), keras.layers.Dense(10)])
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    for model in (sequential, functional):
        pruned = prune_safe(model, 0.5, init="uniform")
        names = [w.layer.name for w in prunable_wrappers(pruned)]
        assert names[0] == "bb_conv" and len(names) == 2
        dense = prune_safe(model, 0.0, init="dense")
        np.testing.assert_allclose(dense.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
        np.testing.assert_allclose(strip(pruned).predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)


def test_strip_reaches_wrappers_inside_a_nested_model():
    inner = keras.Sequential([keras.Input((6,)), PrunableSafe(keras.layers.Dense(4), sparsity=0.5)], name="inner")
    outer = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(2)])
    stripped = strip(outer)
    assert [type(layer).__name__ for layer in stripped.layers] == ["InputLayer", "Dense", "Dense"]
    x = np.random.default_rng(0).random((3, 6)).astype(np.float32)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), outer.predict(x, verbose=0), atol=1e-6)
    assert int(np.count_nonzero(stripped.layers[1].kernel.numpy())) == 12

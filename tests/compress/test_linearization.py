"""PolyReLUMask, linearize(), the SNL mask search, binarization, DualBatchNormalization, strip
and int8 TFLite export of linearized models."""

import numpy as np
import pytest
from conftest import clone

from tfsafe._keras import keras, tf
from tfsafe.compress.dual_bn import (
    DualBatchNormalization,
    bn_route,
    dual_batchnorm,
    dual_bn_layers,
    set_bn_route,
    with_inference_path,
)
from tfsafe.compress.linearization import (
    PolyReLUMask,
    binarize_masks,
    find_relus,
    linearize,
    mask_layers,
    mask_relu_count,
)
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.methods.relu_mask_search import ReLUBudgetSchedule, ReLUMaskSearch, search_relu_mask
from tfsafe.metrics import model_size, relu_count
from tfsafe.objectives import attention_transfer_loss, distillation_loss


def _bn_model():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.BatchNormalization(momentum=0.5),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(12),
        keras.layers.Activation("relu"),
        keras.layers.Dense(10),
    ], name="bn_model")


def _save_load(model, tmp_path, name="m.keras"):
    path = str(tmp_path / name)
    model.save(path)
    return keras.models.load_model(path)  # no custom_objects: layers are registered


# --------------------------------------------------------------------------- PolyReLUMask


def test_mask_identity_and_relu_per_unit():
    layer = PolyReLUMask()
    x = tf.constant([[-2.0, -1.0, 3.0, 4.0]])
    np.testing.assert_allclose(layer(x).numpy(), [[0.0, 0.0, 3.0, 4.0]])  # starts as an exact ReLU
    layer.alpha.assign([0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(layer(x).numpy(), [[-2.0, 0.0, 3.0, 4.0]])
    assert layer.relu_count() == 2 and layer.unit_count() == 4


def test_mask_polynomial_and_relaxed_mix():
    layer = PolyReLUMask(linear="poly", poly_init=(0.25, 0.5))
    x = tf.constant([[-2.0, 2.0]])
    layer(x)
    layer.alpha.assign([0.0, 0.0])
    np.testing.assert_allclose(layer(x).numpy(), [[0.25 * 4 - 1.0, 0.25 * 4 + 1.0]])
    layer.alpha.assign([0.5, 0.5])  # relaxed: halfway between p(x) and ReLU(x)
    np.testing.assert_allclose(layer(x).numpy(), [[0.5 * 0.0, 0.5 * (2.0 + 2.0)]])
    assert layer.relu_count() == 2  # 0.5 > threshold: still a ReLU during the search


def test_mask_is_per_channel_and_pixel_for_conv(trained_cnn):
    masked = linearize(trained_cnn)
    conv_mask = masked.get_layer("conv1_relu")
    assert tuple(conv_mask.alpha.shape) == (8, 8, 16)
    assert mask_relu_count(masked) == relu_count(trained_cnn) == 8 * 8 * 16 + 4 * 4 * 32 + 64


def test_bad_mask_arguments():
    with pytest.raises(InputError, match="linear"):
        PolyReLUMask(linear="cubic")
    with pytest.raises(InputError, match="threshold"):
        PolyReLUMask(threshold=1.5)


# --------------------------------------------------------------------------- linearize


def test_linearize_finds_every_relu_kind_and_keeps_outputs(digits):
    (x, _), _ = digits
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.ReLU(max_value=6.0, name="relu6"),
        keras.layers.LeakyReLU(0.1, name="leaky"),  # not a ReLU to relu_count: left alone
        keras.layers.Flatten(),
        keras.layers.Dense(8, name="d1"),
        keras.layers.ReLU(name="relu_layer"),
        keras.layers.Dense(8, name="d2"),
        keras.layers.Activation("relu", name="act"),
        keras.layers.Dense(3, name="out"),
    ])
    assert find_relus(model) == ["conv", "relu6", "relu_layer", "act"]
    masked = linearize(model)
    kinds = {layer.name: type(layer).__name__ for layer in masked.layers}
    assert kinds["conv"] == "Conv2D" and masked.get_layer("conv").get_config()["activation"] == "linear"
    assert kinds["conv_relu"] == kinds["relu_layer"] == kinds["act"] == kinds["relu6"] == "PolyReLUMask"
    assert masked.get_layer("relu6").max_value == 6.0 and kinds["leaky"] == "LeakyReLU"
    assert mask_relu_count(masked) == relu_count(model) == 6 * 6 * 4 * 2 + 8 + 8
    np.testing.assert_allclose(masked(x[:16]).numpy(), model(x[:16]).numpy(), atol=1e-6)
    assert model.get_layer("conv").get_config()["activation"] == "relu"  # input untouched


def test_linearize_functional_with_branches(digits):
    (x, _), _ = digits
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(inputs)
    b = keras.layers.ReLU(name="b_relu")(b)
    merged = keras.layers.Add(name="add")([a, b])
    out = keras.layers.Dense(3, name="out")(keras.layers.Flatten()(merged))
    model = keras.Model(inputs, out)
    masked = linearize(model, linear="poly")
    assert [m.name for m in mask_layers(masked)] == ["a_relu", "b_relu"]
    np.testing.assert_allclose(masked(x[:8]).numpy(), model(x[:8]).numpy(), atol=1e-6)


def test_bad_budgets_and_models(trained_cnn, digits):
    (x, y), _ = digits
    total = relu_count(trained_cnn)
    with pytest.raises(InputError, match="larger than the model's ReLU count"):
        linearize(trained_cnn, relu_budget=total + 1, x=x, y=y)
    for bad in (0, -5, 2.5, "10", True):
        with pytest.raises(InputError, match="relu_budget"):
            linearize(trained_cnn, relu_budget=bad, x=x, y=y)
    with pytest.raises(InputError, match="pass x"):
        linearize(trained_cnn, relu_budget=10)
    with pytest.raises(InputError, match="pass x"):
        linearize(trained_cnn, relu_budget=10, x=x, search=search_relu_mask)  # a search needs y
    no_relu = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(UnsupportedModelError, match="no ReLU"):
        linearize(no_relu)
    with pytest.raises(UnsupportedModelError, match="no PolyReLUMask"):
        binarize_masks(no_relu, 3)
    with pytest.raises(InputError, match="larger than"):
        binarize_masks(linearize(trained_cnn), total + 1)


# --------------------------------------------------------------------------- binarize + search


def test_binarize_keeps_exactly_the_budget_largest_alphas(trained_cnn):
    masked = linearize(trained_cnn)
    rng = np.random.default_rng(0)
    for layer in mask_layers(masked):
        layer.alpha.assign(rng.uniform(size=layer.alpha.shape).astype(np.float32))
    alphas = np.concatenate([m.alpha.numpy().ravel() for m in mask_layers(masked)])
    frozen = binarize_masks(masked, 123)
    assert mask_relu_count(frozen) == relu_count(frozen) == 123
    kept = np.concatenate([m.alpha.numpy().ravel() for m in mask_layers(frozen)])
    assert set(np.unique(kept)) == {0.0, 1.0}
    assert alphas[kept == 1].min() >= alphas[kept == 0].max()
    assert all(m.frozen and not m.trainable_weights for m in mask_layers(frozen))
    assert mask_relu_count(masked) > 123  # the relaxed model is not modified


def test_sensitivity_allocation_meets_budget_within_layer_caps(trained_cnn, digits):
    (x, y), _ = digits
    masked = linearize(trained_cnn)
    frozen = binarize_masks(masked, 900, allocation="sensitivity", x=x[:256], y=y[:256])
    counts = [m.relu_count() for m in mask_layers(frozen)]
    assert sum(counts) == 900
    assert all(c <= m.unit_count() for c, m in zip(counts, mask_layers(frozen)))
    assert min(counts) > 0  # every layer matters on digits
    with pytest.raises(InputError, match="pass x and y"):
        binarize_masks(masked, 10, allocation="sensitivity")


def test_search_reaches_budget_and_keeps_accuracy(trained_cnn, digits):
    (x, y), (xt, yt) = digits
    from tfsafe.models import accuracy

    keras.utils.set_random_seed(1)
    masked = linearize(clone(trained_cnn))
    schedule = search_relu_mask(masked, x, y, relu_budget=160, epochs=15, batch_size=64)
    assert schedule.reached and mask_relu_count(masked) <= 160
    counts = [h["relu_count"] for h in schedule.history]
    assert counts[-1] < counts[0]
    frozen = binarize_masks(masked, 160)
    assert relu_count(frozen) == 160
    assert accuracy(frozen, xt, yt) > 0.85  # 10x fewer ReLUs, before any fine-tuning


def test_penalty_grows_when_relu_count_stalls(trained_cnn, digits):
    (x, y), _ = digits
    masked = linearize(clone(trained_cnn))
    search = ReLUMaskSearch(masked, penalty=1e-6, mask_learning_rate=1e-6)  # far too weak to move alpha
    search.compile(optimizer=keras.optimizers.SGD(0.0))
    schedule = ReLUBudgetSchedule(10, check_every=2)
    search.fit(x[:512], y[:512], epochs=1, batch_size=32, callbacks=[schedule], verbose=0)
    assert not schedule.reached
    assert float(search.penalty.numpy()) == pytest.approx(1e-6 * 1.1 ** 7, rel=1e-4)  # 8 checks, 7 stalls


# --------------------------------------------------------------------------- serialization


@pytest.mark.parametrize("linear", ["identity", "poly"])
def test_mask_model_round_trip(trained_cnn, digits, tmp_path, linear):
    (x, _), _ = digits
    masked = linearize(trained_cnn, linear=linear)
    for layer in mask_layers(masked):
        layer.alpha.assign(np.random.default_rng(0).uniform(size=layer.alpha.shape).astype(np.float32))
    frozen = binarize_masks(masked, 200)
    for model in (masked, frozen):
        loaded = _save_load(model, tmp_path)
        np.testing.assert_allclose(loaded(x[:16]).numpy(), model(x[:16]).numpy(), atol=1e-6)
        assert mask_relu_count(loaded) == mask_relu_count(model)
        assert [m.frozen for m in mask_layers(loaded)] == [m.frozen for m in mask_layers(model)]


def test_dual_bn_round_trip_keeps_both_paths(digits, tmp_path):
    (x, _), _ = digits
    model = dual_batchnorm(_bn_model())
    layer = dual_bn_layers(model)[0]
    layer.bn_adversarial.gamma.assign(np.full(4, 3.0, np.float32))
    loaded = _save_load(model, tmp_path)
    for path in ("clean", "adversarial"):
        with bn_route(model, path), bn_route(loaded, path):
            np.testing.assert_allclose(loaded(x[:8]).numpy(), model(x[:8]).numpy(), atol=1e-6)
    assert isinstance(loaded.layers[1], DualBatchNormalization)


# --------------------------------------------------------------------------- dual BN


def test_dual_bn_routes_statistics_per_batch(digits):
    (x, _), _ = digits
    model = dual_batchnorm(_bn_model())
    layer = dual_bn_layers(model)[0]
    np.testing.assert_allclose(model(x[:8]).numpy(), _bn_model_like(model)(x[:8]).numpy(), atol=1e-6)

    @tf.function
    def step(clean, adversarial):
        set_bn_route(model, "adversarial")
        model(adversarial, training=True)
        set_bn_route(model, "clean")
        model(clean, training=True)
        set_bn_route(model, "inference")

    clean_before = layer.bn_clean.moving_mean.numpy().copy()
    adv_before = layer.bn_adversarial.moving_mean.numpy().copy()
    step(tf.constant(x[:32]), tf.constant(x[:32] * 0.0 + 1.0))
    clean_delta = layer.bn_clean.moving_mean.numpy() - clean_before
    adv_delta = layer.bn_adversarial.moving_mean.numpy() - adv_before
    assert np.abs(clean_delta).max() > 0 and np.abs(adv_delta).max() > 0
    assert not np.allclose(clean_delta, adv_delta)  # each path saw its own batch
    assert float(layer.route.numpy()) == 0.0  # back on the deployed (clean) path
    with bn_route(model, "adversarial"):
        adv_out = model(x[:8]).numpy()
    assert not np.allclose(adv_out, model(x[:8]).numpy())


def _bn_model_like(dual):
    """A plain BN model with the clean path's weights (what strip() should produce)."""
    return strip(dual)


def test_dual_bn_strip_and_inference_path(digits):
    (x, _), _ = digits
    model = dual_batchnorm(_bn_model())
    layer = dual_bn_layers(model)[0]
    layer.bn_adversarial.moving_mean.assign(np.full(4, 0.7, np.float32))
    clean = strip(model)
    assert type(clean.layers[1]) is keras.layers.BatchNormalization
    np.testing.assert_allclose(clean(x[:8]).numpy(), model(x[:8]).numpy(), atol=1e-6)
    adv_model = with_inference_path(model, "adversarial")
    adv = strip(adv_model)
    np.testing.assert_allclose(adv.layers[1].moving_mean.numpy(), np.full(4, 0.7))
    with bn_route(model, "adversarial"):
        np.testing.assert_allclose(adv(x[:8]).numpy(), model(x[:8]).numpy(), atol=1e-6)
    assert model_size(model)["params"] == model_size(clean)["params"]  # only the deployed path counts
    with pytest.raises(InputError, match="path"):
        set_bn_route(model, "noisy")
    with pytest.raises(UnsupportedModelError, match="no BatchNormalization"):
        dual_batchnorm(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


# --------------------------------------------------------------------------- strip + TFLite


def test_strip_masks_to_plain_layers(trained_cnn, digits):
    (x, _), _ = digits
    masked = linearize(trained_cnn)
    masked.get_layer("conv1_relu").alpha.assign(np.zeros((8, 8, 16), np.float32))  # fully linear
    partial = masked.get_layer("fc1_relu")
    partial.alpha.assign((np.arange(64) % 2).astype(np.float32))
    stripped = strip(masked)
    kinds = {layer.name: type(layer).__name__ for layer in stripped.layers}
    assert kinds["conv1_relu"] == "Activation" and kinds["conv2_relu"] == "ReLU"
    assert kinds["fc1_relu"] == "PolyReLUMask" and stripped.get_layer("fc1_relu").frozen
    np.testing.assert_allclose(stripped(x[:8]).numpy(), masked(x[:8]).numpy(), atol=1e-5)
    assert relu_count(stripped) == relu_count(masked) == 4 * 4 * 32 + 32
    partial.alpha.assign(np.full(64, 0.5, np.float32))
    with pytest.raises(UnsupportedModelError, match="binarize_masks"):
        strip(masked)


def test_linearized_model_converts_to_int8_tflite(trained_cnn, digits, tmp_path):
    (x, y), (xt, yt) = digits
    from tflite_export.convert import to_tflite

    frozen = binarize_masks(linearize(trained_cnn, linear="poly"), 400, allocation="sensitivity", x=x, y=y)
    result = to_tflite(frozen, str(tmp_path / "lin.tflite"), "int8", x[:200], verify=(xt, yt), min_agreement=0.9)
    assert result.input["dtype"] == "int8"
    assert {"MUL", "ADD", "RELU"} <= set(result.ops)  # masks as elementwise ops
    assert result.parity.top1_agreement >= 0.9
    assert relu_count(strip(frozen)) == 400


# --------------------------------------------------------------------------- objectives


def test_distillation_and_attention_transfer_losses():
    s = tf.constant([[2.0, 0.0, -1.0]])
    t = tf.constant([[0.0, 2.0, -1.0]])
    assert float(distillation_loss(s, s)) == pytest.approx(0.0, abs=1e-6)
    kd4, kd1 = float(distillation_loss(s, t, 4.0)), float(distillation_loss(s, t, 1.0))
    assert kd4 > 0 and kd1 > 0 and kd4 != pytest.approx(kd1)
    a = tf.random.stateless_uniform((2, 4, 4, 3), seed=(1, 2))
    assert float(attention_transfer_loss([a], [a * 3.0])) == pytest.approx(0.0, abs=1e-7)  # scale-free
    assert float(attention_transfer_loss([a], [tf.reverse(a, axis=[1])])) > 0
    with pytest.raises(ValueError, match="pair up"):
        attention_transfer_loss([a], [a, a])


# --------------------------------------------------------------------------- every ReLU form, exact budgets


def _relu6_residual_cnn():
    """MobileNet-style: fused relu6, ReLU(max_value=6), Activation('relu6'), a residual Add."""
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu6", name="c1")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="c2")(a)
    b = keras.layers.ReLU(max_value=6.0, name="r6")(b)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.Conv2D(4, 1, name="c3")(x)
    x = keras.layers.Activation("relu6", name="act6")(x)
    x = keras.layers.Dense(8, activation="relu", name="d1")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="relu6_res")


def test_masked_relu6_unit_is_relu6_when_kept():
    layer = PolyReLUMask(max_value=6.0)
    x = tf.constant([[-2.0, 3.0, 9.0, 9.0]])
    np.testing.assert_allclose(layer(x).numpy(), [[0.0, 3.0, 6.0, 6.0]])
    layer.alpha.assign([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(layer(x).numpy(), [[0.0, 3.0, 6.0, 9.0]])
    thresholded = PolyReLUMask(relu_threshold=1.0)
    np.testing.assert_allclose(thresholded(tf.constant([[0.5, 2.0]])).numpy(), [[0.0, 2.0]])


def test_relu6_residual_cnn_budget_is_met_exactly(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = _relu6_residual_cnn()
    total = relu_count(model)
    assert total == 8 * 8 * 4 * 3 + 8  # ReLU6 in every form is counted
    masked = linearize(model)
    assert mask_relu_count(masked) == total
    np.testing.assert_allclose(masked(x[:8]).numpy(), model(x[:8]).numpy(), atol=1e-5)
    frozen = linearize(model, relu_budget=total // 10, x=x[:128])
    assert relu_count(frozen) == mask_relu_count(frozen) == total // 10  # exactly 10x fewer
    stripped = strip(frozen)
    assert relu_count(stripped) == total // 10
    np.testing.assert_allclose(stripped(x[:8]).numpy(), frozen(x[:8]).numpy(), rtol=1e-5, atol=1e-5)


def test_relu6_only_model_and_search_hook(digits):
    (x, y), _ = digits
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu6"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    total = relu_count(model)
    assert total == 6 * 6 * 4
    calls = []

    def search(masked, xs, ys, budget, **kwargs):
        calls.append((budget, kwargs))
        for layer in mask_layers(masked):  # a "search" that prefers the last units
            layer.alpha.assign(np.linspace(0, 1, layer.alpha.shape.num_elements(), dtype=np.float32)
                               .reshape(layer.alpha.shape))

    frozen = linearize(model, relu_budget=7, x=x[:32], y=y[:32], search=search, epochs=1)
    assert calls == [(7, {"epochs": 1})]
    kept = mask_layers(frozen)[0].alpha.numpy().ravel()
    assert kept[-7:].sum() == 7 and kept.sum() == 7
    stripped = strip(linearize(model, relu_budget=total, x=x[:32]))
    assert [type(layer).__name__ for layer in stripped.layers][-3] == "ReLU"
    assert stripped.layers[-3].max_value == 6.0


def test_nested_backbone_is_linearized_and_made_dual(digits):
    (x, _), _ = digits
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="nb_conv"),
                                 keras.layers.BatchNormalization(name="nb_bn"),
                                 keras.layers.ReLU(6.0, name="nb_relu6")], name="nested_backbone")
    model = keras.Sequential([keras.Input((8, 8, 1)), backbone, keras.layers.Flatten(), keras.layers.Dense(3)])
    masked = linearize(model)
    assert [m.name for m in mask_layers(masked)] == ["nb_relu6"]
    np.testing.assert_allclose(masked(x[:4]).numpy(), model(x[:4]).numpy(), atol=1e-6)
    dual = dual_batchnorm(model)
    assert [layer.name for layer in dual_bn_layers(dual)] == ["nb_bn"]
    np.testing.assert_allclose(dual(x[:4]).numpy(), model(x[:4]).numpy(), atol=1e-5)

import numpy as np
import pytest

from tfsafe import metrics
from tfsafe._keras import keras, tf
from tfsafe.compress.factorization import (
    FactorizedConv2D,
    FactorizedDense,
    LowRankConv2D,
    LowRankDense,
    factor_bits,
    factorize,
    frozen_kernels,
    low_rank,
    low_rank_ranks_for_budget,
)
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError


def _conv_zoo():
    """Strides, dilation, 'same' padding, no bias and a softmax head: the geometry cases."""
    inputs = keras.Input((9, 9, 2))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(5, (2, 3), dilation_rate=(2, 1), use_bias=False, name="c2")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def _randomize_factors(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (FactorizedDense, FactorizedConv2D)):
            layer.B.assign(0.05 * rng.standard_normal(layer.B.shape).astype(np.float32))
            layer.C.assign(0.05 * rng.standard_normal(layer.C.shape).astype(np.float32))


def test_factorize_is_identity_at_start(trained_cnn, digits):
    (x, _), _ = digits
    fact = factorize(trained_cnn)
    kinds = {layer.name: type(layer).__name__ for layer in fact.layers}
    assert kinds["conv1"] == "FactorizedConv2D" and kinds["fc1"] == "FactorizedDense"
    layer = fact.get_layer("fc1")
    assert not np.any(layer.B.numpy()) and not np.any(layer.C.numpy())
    np.testing.assert_allclose(fact.predict(x[:64], verbose=0), trained_cnn.predict(x[:64], verbose=0),
                               rtol=1e-5, atol=1e-5)
    zoo = _conv_zoo()
    xz = np.random.default_rng(1).random((4, 9, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(factorize(zoo)(xz), zoo(xz), rtol=1e-5, atol=1e-6)


def test_merge_gives_same_outputs():
    zoo = _conv_zoo()
    fact = factorize(zoo)
    _randomize_factors(fact)
    xz = np.random.default_rng(2).random((4, 9, 9, 2)).astype(np.float32)
    plain = strip(fact)
    assert [type(layer).__name__ for layer in plain.layers[1:]] == ["Conv2D", "Conv2D", "Flatten", "Dense"]
    np.testing.assert_allclose(plain(xz), fact(xz), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fact(xz), zoo(xz), atol=1e-4)  # B and C really changed the function
    # The merged kernel is (B + I) A + C over the flattened kernel matrix.
    layer = fact.get_layer("c1")
    a, b, c = (v.numpy() for v in (layer.A, layer.B, layer.C))
    expected = ((b + np.eye(len(b))) @ a + c).T.reshape(3, 3, 2, 4)
    np.testing.assert_allclose(plain.get_layer("c1").kernel.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: FactorizedDense(3, activation="relu", bits=4),
    lambda: FactorizedConv2D(3, 2, strides=2, padding="same", bits=8),
    lambda: LowRankDense(3, rank=2),
    lambda: LowRankConv2D(3, (2, 2), rank=2, dilation_rate=2),
])
def test_serialization_round_trip(tmp_path, make):
    layer = make()
    shape = (6, 6, 2) if "Conv" in type(layer).__name__ else (5,)
    model = keras.Sequential([keras.Input(shape), layer, keras.layers.Flatten(), keras.layers.Dense(2)])
    for var in layer.weights:
        var.assign(np.random.default_rng(3).standard_normal(var.shape).astype(np.float32) * 0.1)
    x = np.random.default_rng(4).random((3,) + shape).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layers are registered
    assert type(loaded.layers[0]) is type(layer)
    assert loaded.layers[0].get_config() == layer.get_config()
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)


def test_low_rank_full_rank_is_exact_and_budget_is_respected(trained_cnn, digits):
    (x, _), _ = digits
    full = low_rank(trained_cnn, ranks=10_000)
    np.testing.assert_allclose(full.predict(x[:32], verbose=0), trained_cnn.predict(x[:32], verbose=0),
                               rtol=1e-4, atol=1e-4)
    budget = 4000
    ranks = low_rank_ranks_for_budget(trained_cnn, budget)
    small = low_rank(trained_cnn, ranks)
    stored = sum(s["params"] for s in metrics.weight_stats(small) if s["kind"] == "kernel")
    assert stored <= budget
    assert all(isinstance(small.get_layer(name), (LowRankDense, LowRankConv2D)) for name in ranks)
    with pytest.raises(InputError, match="budget"):
        low_rank_ranks_for_budget(trained_cnn, 10)


def test_weight_stats_count_factors_bits_and_codebooks():
    model = keras.Sequential([keras.Input((6,)), FactorizedDense(4, bits=2, name="fd")])
    layer = model.layers[0]
    a = np.zeros((4, 6), np.float32)
    a[0, :3] = [0.5, -0.5, 0.25]  # 3 distinct non-zeros fit a 2-bit codebook
    layer.A.assign(a)
    c = np.zeros((4, 6), np.float32)
    c[1, 1] = 0.7
    layer.C.assign(c)
    stats = {s["name"]: s for s in metrics.weight_stats(model)}
    assert stats["A"]["nonzeros"] == 3 and stats["A"]["bits"] == 2
    assert stats["A_codebook"]["params"] == 3 and stats["A_codebook"]["kind"] == "codebook"
    assert stats["B"]["nonzeros"] == 0 and stats["C"]["nonzeros"] == 1
    # 5 distinct values do not fit 2 bits: counted as float32.
    assert factor_bits(np.array([1.0, 2, 3, 4, 5]), 2) == (32, 0)
    assert factor_bits(np.array([1.0, 0, 1]), 32) == (32, 0)
    # A dense float B (16 x 32 bits) costs more than the merged W (13 non-zeros x 32 bits).
    layer.B.assign(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))
    names = {s["name"] for s in metrics.weight_stats(model)}
    assert "merged_W" in names and "B" not in names


def test_frozen_kernels_skip_weight_gradients():
    model = keras.Sequential([keras.Input((3,)), FactorizedDense(2)])
    x = tf.ones((1, 3))
    with tf.GradientTape() as tape:
        with frozen_kernels(model):
            frozen_out = model(x)
        live_out = model(x)
        loss = tf.reduce_sum(frozen_out)
    np.testing.assert_allclose(frozen_out, live_out)
    assert tape.gradient(loss, model.layers[0].A) is None
    assert model.layers[0]._frozen_kernel is None


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_bad_input_errors(trained_cnn):
    with pytest.raises(UnsupportedModelError, match="pool1.*only Dense and Conv2D"):
        factorize(trained_cnn, layers=["pool1"])
    with pytest.raises(InputError, match="no top-level layer named 'nope'"):
        factorize(trained_cnn, layers=["nope"])
    depthwise = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.DepthwiseConv2D(3, name="dw")])
    with pytest.raises(UnsupportedModelError, match="DepthwiseConv2D"):
        factorize(depthwise, layers="dw")
    with pytest.raises(UnsupportedModelError, match="no top-level Dense or Conv2D"):
        factorize(depthwise)
    regularized = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_regularizer="l2", name="d")])
    with pytest.raises(UnsupportedModelError, match="kernel_regularizer"):
        factorize(regularized, layers=["d"])
    sub = _Subclassed()
    sub(tf.ones((1, 3)))
    with pytest.raises(UnsupportedModelError, match="subclassed|Sequential or Functional"):
        factorize(sub)
    for bits in (0, 9, 16, 2.5, True):
        with pytest.raises(InputError, match="bits"):
            factorize(trained_cnn, bits=bits)
    with pytest.raises(InputError, match="rank"):
        low_rank(trained_cnn, ranks=0)

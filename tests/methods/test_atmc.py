import numpy as np
import pytest
from conftest import clone

from tfsafe import metrics
from tfsafe._keras import keras, tf
from tfsafe.compress.factorization import FactorizedConv2D, factorize
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.methods import atmc_baselines
from tfsafe.methods.atmc import (
    ADMMUpdate,
    ATMCModel,
    atmc_compress,
    budget_for_ratio,
    compressible_groups,
    kmeans_quantize,
    topk_masks,
)
from tfsafe.objectives import admm_penalty
from tfsafe.safety.robust_accuracy import adversarial_accuracy


def _nnz(variables):
    return int(sum(np.count_nonzero(v.numpy()) for v in variables))


def test_topk_masks_exact_k_and_floors():
    rng = np.random.default_rng(0)
    big, small = rng.random(1000).astype(np.float32) + 1.0, rng.random(50).astype(np.float32) * 1e-3
    # Without floors the tiny layer would be emptied; with a floor of 5 it keeps its 5 largest.
    masks = [m.numpy() for m in topk_masks([tf.constant(big), tf.constant(small)], 100, [1, 5])]
    assert masks[0].sum() + masks[1].sum() == 100
    assert masks[1].sum() == 5 and set(np.flatnonzero(masks[1])) == set(np.argsort(small)[-5:])
    assert set(np.flatnonzero(masks[0])) == set(np.argsort(big)[-95:])
    # Floors already met by the global top-k: same set as a plain global top-k (the hint only speeds up).
    flat = np.concatenate([big, small * 1e6])
    masks = topk_masks([tf.constant(big), tf.constant(small * 1e6)], 300, [1, 1], hint=tf.constant(1.5))
    chosen = np.flatnonzero(np.concatenate([m.numpy() for m in masks]))
    assert set(chosen) == set(np.argsort(flat)[-300:])
    masks = topk_masks([tf.constant(big)], 40, [1], hint=tf.constant(100.0))  # hint too high: full path
    assert masks[0].numpy().sum() == 40


def test_projection_keeps_exactly_budget_without_empty_layers(trained_cnn):
    net = factorize(clone(trained_cnn))
    atmc = ATMCModel(net, eps=0.1, steps=2, budget=3000, bits=32, min_layer_fraction=0.02)
    atmc.project()
    groups = compressible_groups(net)
    variables = [v for _, factors in groups for _, v in factors]
    assert _nnz(variables) == 3000
    for (layer, factors), floor in zip(groups, atmc.floors):
        assert _nnz([v for _, v in factors]) >= floor > 0, layer.name
    restored = ATMCModel.from_config(atmc.get_config())
    assert (restored.budget, restored.bits, restored.floors) == (3000, 32, atmc.floors)
    # The same code prunes a plain model's kernels (NAP / AP baselines).
    plain = clone(trained_cnn)
    ATMCModel(plain, eps=0.0, budget=2500, adv_weight=0.0).project()
    kernels = [layer.kernel for layer in plain.layers if hasattr(layer, "kernel")]
    assert _nnz(kernels) == 2500


def test_kmeans_quantizer_codebook_and_zero():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((40, 30)).astype(np.float32)
    values[values.__abs__() < 0.3] = 0.0
    for bits in (1, 2, 4):
        q, centres = kmeans_quantize(values, bits, max_iter=1000)
        distinct = np.unique(q)
        assert len(distinct) <= 2 ** bits + 1 and 0.0 in distinct
        assert np.all(q[values == 0] == 0)
        assert len(centres) <= 2 ** bits and not np.any(centres == 0)
        # Lloyd fixed point: every non-zero centre is the mean of the values snapped to it.
        for c in np.unique(q[q != 0]):
            assert np.isclose(values[q == c].mean(), c, atol=1e-5)
    # Finer codebooks quantize better.
    errors = [np.abs(kmeans_quantize(values, b)[0] - values).mean() for b in (1, 3, 6)]
    assert errors[0] > errors[1] > errors[2]
    support = np.zeros_like(values, bool)
    support[:5] = True
    q, _ = kmeans_quantize(values, 2, support=support)
    assert not np.any(q[5:]) and np.count_nonzero(q[:5]) > 0
    for bits in (0, 9, 32, 3.0):
        with pytest.raises(InputError, match="bits"):
            kmeans_quantize(values, bits)


def test_admm_updates(trained_cnn):
    net = factorize(clone(trained_cnn))
    atmc = ATMCModel(net, eps=0.1, steps=2, budget=4000, bits=2, rho=0.5)
    atmc.project()
    atmc.admm_init()
    thetas = [v.numpy() for v in atmc.variables_]
    for z, theta in zip(atmc.Z, thetas):  # Z starts as the quantized theta, pruned like theta
        assert len(np.unique(z.numpy())) <= 5 and np.all(z.numpy()[theta == 0] == 0)
    rng = np.random.default_rng(0)
    old_u = [0.01 * rng.standard_normal(u.shape).astype(np.float32) for u in atmc.U]
    for u, value in zip(atmc.U, old_u):
        u.assign(value)
    penalty = float(atmc.penalty())
    expected = 0.25 * sum(np.sum((t - z.numpy() + u) ** 2) for t, z, u in zip(thetas, atmc.Z, old_u))
    assert np.isclose(penalty, expected, rtol=1e-4)
    assert np.isclose(float(admm_penalty([tf.ones(3)], [tf.zeros(3)], [tf.ones(3)], 2.0)), 12.0)
    codebooks = [None if c is None else c.copy() for c in atmc.codebooks]
    atmc.admm_update(rho_growth=2.0)
    for i, (theta, u_old) in enumerate(zip(thetas, old_u)):
        z = atmc.Z[i].numpy()
        expected_z, _ = kmeans_quantize(theta + u_old, 2, support=theta != 0, init=codebooks[i])
        np.testing.assert_allclose(z, expected_z, atol=1e-6)
        # U += theta - Z, then rescaled by rho_old / rho_new = 1/2 (scaled dual form).
        np.testing.assert_allclose(atmc.U[i].numpy(), (u_old + theta - z) / 2.0, atol=1e-6)
    assert np.isclose(float(atmc.current_rho.numpy()), 1.0)


def test_bad_budgets_and_bits(trained_cnn):
    net = factorize(clone(trained_cnn))
    with pytest.raises(InputError, match="per-layer floors"):
        ATMCModel(net, eps=0.1, budget=10, min_layer_fraction=0.05)
    with pytest.raises(InputError, match="exceeds"):
        ATMCModel(net, eps=0.1, budget=10 ** 9)
    for budget in (0, 2.5, "100"):
        with pytest.raises(InputError, match="budget"):
            ATMCModel(net, eps=0.1, budget=budget)
    for bits in (0, 9, 16):
        with pytest.raises(InputError, match="bits"):
            ATMCModel(net, eps=0.1, budget=1000, bits=bits)
    with pytest.raises(InputError, match="factorize"):
        ATMCModel(clone(trained_cnn), eps=0.1, budget=1000, bits=8)
    with pytest.raises(InputError, match="no room"):
        budget_for_ratio(net, 1e-5, 8)
    pool_only = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.MaxPooling2D(2), keras.layers.Flatten()])
    with pytest.raises(UnsupportedModelError, match="no Dense/Conv2D"):
        ATMCModel(pool_only, eps=0.1)
    with pytest.raises(InputError, match="every"):
        ADMMUpdate(every=0)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(InputError, match="only with an ATMCModel"):
        plain.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0, callbacks=[ADMMUpdate(every=1)])


def test_short_atmc_run_on_digits(trained_cnn, digits_splits):
    x, y = digits_splits.train
    xv, yv = digits_splits.validation
    xt, yt = digits_splits.test
    keras.utils.set_random_seed(1)
    net = factorize(trained_cnn)
    budget = budget_for_ratio(net, 0.1, 4, reference=trained_cnn)
    result = atmc_compress(trained_cnn, x[:400], y[:400], budget=budget, bits=4, eps=0.1, steps=3, epochs=2,
                           batch_size=64, validation_data=(xv, yv), admm_every=5, select_steps=5, rho_growth=1.2)
    compressed = result.model
    assert len(result.checks) == 2 and result.best["epoch"] in (1, 2)
    layers = [layer for layer in compressed.layers if hasattr(layer, "factors")]
    variables = [v for layer in layers for _, v in layer.factors()]
    assert _nnz(variables) <= budget
    assert all(len(np.unique(v.numpy())) <= 2 ** 4 + 1 for v in variables)
    assert all(layer.bits == 4 for layer in layers)
    assert metrics.compression_ratio(compressed, reference=trained_cnn) <= 0.1
    clean = float(np.mean(compressed.predict(xt, verbose=0).argmax(1) == yt))
    assert clean > 0.8
    assert adversarial_accuracy(compressed, xt[:100], yt[:100], 0.1, steps=10) > 0.2
    plain = strip(compressed)  # export path: plain Dense/Conv2D with the same function
    assert not any(isinstance(layer, FactorizedConv2D) for layer in plain.layers)
    # What ships meets the budget too (the deploy stage): non-zeros, 16 codebook values per kernel, bytes.
    kernels = [layer.kernel.numpy() for layer in plain.layers if hasattr(layer, "kernel")]
    assert sum(int(np.count_nonzero(k)) for k in kernels) <= budget
    assert all(len(np.unique(k[k != 0])) <= 16 for k in kernels)
    assert metrics.model_size(plain, reference=trained_cnn)["compression_ratio"] <= 0.1
    assert result.deploy["after"]["deployed_ideal_bytes"] <= result.deploy["before"]["deployed_ideal_bytes"]
    np.testing.assert_allclose(plain.predict(xt[:32], verbose=0), compressed.predict(xt[:32], verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_baselines_share_the_same_code(trained_cnn, digits_splits):
    x, y = digits_splits.train
    kwargs = {"epochs": 1, "steps": 2, "batch_size": 64}
    budget = 3000
    pruned = atmc_baselines.adversarial_pruning(trained_cnn, x[:128], y[:128], budget, eps=0.1, **kwargs).model
    assert _nnz([layer.kernel for layer in pruned.layers if hasattr(layer, "kernel")]) <= budget
    low = atmc_baselines.adversarial_low_rank(trained_cnn, x[:128], y[:128], budget, eps=0.1, **kwargs).model
    assert sum(s["params"] for s in metrics.weight_stats(low) if s["kind"] == "kernel") <= budget
    assert trained_cnn.get_layer("fc1").kernel.numpy().all()  # the shared fixture was not pruned

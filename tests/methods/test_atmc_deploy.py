"""ATMC's deploy stage (the budget on the merged kernels strip() ships), its schedule and fast training."""

import numpy as np
import pytest
from conftest import clone

import tfsafe
from tfsafe import metrics
from tfsafe._keras import keras
from tfsafe.compress.factorization import factorize
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError
from tfsafe.methods.atmc import ATMCModel, budget_for_ratio, deploy_merged
from tfsafe.methods.atmc_deploy import DeployFineTuneModel, project_merged
from tfsafe.methods.atmc_projection import layer_floors


def _dense_factors(model, seed=0):
    """``factorize(model)`` with a dense ``B`` and ``C`` that leave ``W`` unchanged (what hurts deployment)."""
    net = factorize(clone(model))
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if hasattr(layer, "B"):
            w = layer.matrix().numpy()
            b = 0.05 * rng.standard_normal(layer.B.shape).astype(np.float32)
            a = layer.A.numpy()
            layer.B.assign(b)
            layer.C.assign(w - (b + np.eye(b.shape[0], dtype=np.float32)) @ a)
    return net


def _kernels(model):
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


def test_deploy_stage_puts_budget_and_codebook_on_the_shipped_kernels(trained_cnn, digits_splits):
    x, y = digits_splits.train
    xv, yv = digits_splits.validation
    xt, yt = digits_splits.test
    net = _dense_factors(trained_cnn)
    budget = budget_for_ratio(net, 0.1, 4, reference=trained_cnn)
    ATMCModel(net, eps=0.1, budget=budget, bits=4).hard_project()  # the factors meet the budget ...
    assert sum(int(np.count_nonzero(v.numpy())) for layer in net.layers if hasattr(layer, "factors")
               for _, v in layer.factors()) <= budget
    before = sum(int(np.count_nonzero(w)) for w in _kernels(strip(net)).values())
    assert before > 1.3 * budget  # ... but the merged kernels that ship do not
    keras.utils.set_random_seed(0)
    out = deploy_merged(net, x, y, budget, 4, eps=0.1, epochs=1, validation_data=(xv, yv), batch_size=64,
                        steps=2, select_steps=3, dense=trained_cnn)
    shipped = strip(net)
    kernels = _kernels(shipped)
    floors = layer_floors([(layer, None) for layer in net.layers if hasattr(layer, "B")], 0.01)
    assert sum(int(np.count_nonzero(w)) for w in kernels.values()) <= budget
    for (name, w), floor in zip(kernels.items(), floors):
        assert 0 < np.count_nonzero(w) and len(np.unique(w[w != 0])) <= 16, name
        assert out["layers"][name]["nonzeros"] == np.count_nonzero(w) >= floor - 1  # snapping may zero one
    for layer in net.layers:
        if hasattr(layer, "B"):
            assert not layer.B.numpy().any() and not layer.C.numpy().any() and layer.bits == 4
    size = metrics.model_size(shipped, reference=trained_cnn)
    assert size["ideal_bytes"] <= 0.1 * size["dense_bytes"] + 1e-6
    assert out["after"]["deployed_ideal_bytes"] == out["after"]["factors_ideal_bytes"] == size["ideal_bytes"]
    assert out["before"]["deployed_ideal_bytes"] > 3 * out["after"]["deployed_ideal_bytes"]
    assert [c["epoch"] for c in out["checks"]] == [0, 1] and "val_pgd_accuracy" in out["checks"][0]
    np.testing.assert_allclose(shipped.predict(xt[:32], verbose=0), net.predict(xt[:32], verbose=0), atol=1e-4)
    assert _accuracy(shipped, xt, yt) > 0.8 * _accuracy(trained_cnn, xt, yt)


def test_fine_tune_keeps_mask_and_codebook_and_moves_weights(trained_cnn, digits_splits):
    x, y = digits_splits.train
    net = factorize(clone(trained_cnn))
    project_merged(net, 4000, 2)
    start = {layer.name: layer.A.numpy().copy() for layer in net.layers if hasattr(layer, "A")}
    trainer = DeployFineTuneModel(net, eps=0.1, steps=1, attack="fgsm_rs")
    trainer.compile(optimizer=keras.optimizers.Adam(0.02))
    keras.utils.set_random_seed(0)
    trainer.fit(x, y, epochs=2, batch_size=32, verbose=0)
    trainer.hard_project()
    moved = 0
    for layer in net.layers:
        if hasattr(layer, "A"):
            a, a0 = layer.A.numpy(), start[layer.name]
            assert set(np.unique(a)) <= set(np.unique(a0)) | {0.0}, layer.name
            assert not np.any(a[a0 == 0]) and not layer.B.numpy().any() and not layer.C.numpy().any()
            moved += int(np.sum(a != a0))
    assert moved > 0  # straight-through: float copies crossed to other codebook entries
    with pytest.raises(InputError, match="project_merged"):
        DeployFineTuneModel(clone(trained_cnn), eps=0.1)


@pytest.mark.parametrize("attack", ["fgsm_rs", "free"])
def test_fast_attacks_train_atmc_under_the_budget(trained_cnn, digits_splits, attack):
    x, y = digits_splits.train
    net = factorize(clone(trained_cnn))
    atmc = ATMCModel(net, eps=0.1, steps=2, budget=3000, bits=32, attack=attack, free_replays=2)
    atmc.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = atmc.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    variables = [v for layer in net.layers if hasattr(layer, "factors") for _, v in layer.factors()]
    assert sum(int(np.count_nonzero(v.numpy())) for v in variables) <= 3000
    assert ATMCModel.from_config(atmc.get_config()).attack == attack


def test_method_stages_schedule_and_guard(trained_cnn, digits_splits):
    method = tfsafe.methods.get("atmc", ratio=0.2, bits=4, eps=0.3, epochs=1, steps=1, select_steps=2,
                                batch_size=64, attack="fgsm_rs", pretrained_robust=True, deploy_epochs=1)
    assert method.stages == ("factorize", "train", "deploy")
    with pytest.warns(UserWarning, match="does not look adversarially trained"):
        result = method.compress(trained_cnn, digits_splits, verbose=0)
    info = result.info
    assert info["input_pgd_accuracy"] < 0.1
    assert info["guard"]["records"] and info["deploy"]["after"]["deployed_ideal_bytes"] <= 0.2 * 4 * \
        trained_cnn.count_params()
    kernels = _kernels(result.stripped)
    assert sum(int(np.count_nonzero(w)) for w in kernels.values()) <= info["budget"]
    assert metrics.model_size(result.stripped, reference=trained_cnn)["compression_ratio"] <= 0.2
    for name in ("attack", "deploy_epochs"):
        with pytest.raises(InputError, match=name):
            tfsafe.methods.get("atmc", **{name: "x" if name == "attack" else -1})

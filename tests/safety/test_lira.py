import numpy as np
import pytest

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.models import mlp
from tfsafe.safety.lira import lira_audit, load_reference_stats, train_reference_models


def _build():
    model = mlp((8, 8, 1), 10, units=(64,))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def lira_setup(digits):
    """A pool of 160 digits with random labels (pure memorization) and a target on half."""
    (x, _), _ = digits
    rng = np.random.default_rng(1)
    pool = (x[:160], rng.integers(0, 10, 160))
    is_member = np.zeros(160, bool)
    is_member[rng.permutation(160)[:80]] = True
    keras.utils.set_random_seed(5)
    target = _build()
    target.fit(pool[0][is_member], pool[1][is_member], epochs=60, batch_size=16, verbose=0)
    return pool, is_member, target


def test_shards_train_disjoint_models_and_resume(tmp_path, lira_setup):
    pool, is_member, target = lira_setup
    fit = {"epochs": 60, "batch_size": 16}
    logs = []
    a = train_reference_models(_build, pool, tmp_path, num_models=4, shard=(0, 2), fit_kwargs=fit, log=logs.append)
    b = train_reference_models(_build, pool, tmp_path, num_models=4, shard="1/2", fit_kwargs=fit, log=logs.append)
    assert [p[-8:] for p in a] == ["0000.npz", "0002.npz"] and [p[-8:] for p in b] == ["0001.npz", "0003.npz"]
    train_reference_models(_build, pool, tmp_path, num_models=4, shard=(0, 2), fit_kwargs=fit, log=logs.append)
    assert sum("skipping" in m for m in logs) == 2  # resumed: nothing retrained
    masks, stats = load_reference_stats(tmp_path, pool)
    assert masks.shape == stats.shape == (4, 160) and (masks.sum(1) == 80).all()

    audit = lira_audit(target, pool, is_member, tmp_path)
    assert {r["attack"] for r in audit.attacks} == {"lira", "offset"}
    assert audit.worst["auc"] > 0.8  # memorized random labels are obvious to LiRA

    other_pool = (pool[0], (pool[1] + 1) % 10)
    with pytest.raises(InputError, match="different audit pool"):
        load_reference_stats(tmp_path, other_pool)


def test_bad_shard_and_missing_models(tmp_path, lira_setup):
    pool, is_member, target = lira_setup
    with pytest.raises(InputError, match="i/n"):
        train_reference_models(_build, pool, tmp_path, shard="first")
    with pytest.raises(InputError, match="invalid"):
        train_reference_models(_build, pool, tmp_path, shard=(3, 2))
    with pytest.raises(InputError, match="Found 0 reference models"):
        lira_audit(target, pool, is_member, tmp_path)

"""One memorizing target and its reference models, built once per test session and shared by
test_lira.py and test_rmia.py (a cached function: a fixture would need a conftest edit)."""

import functools
import tempfile

import numpy as np

import tfsafe
from tfsafe._keras import keras
from tfsafe.models import mlp
from tfsafe.safety.lira import train_reference_models

POOL, POPULATION = 400, 200
FIT = {"epochs": 40, "batch_size": 25}


def build():
    model = mlp((8, 8, 1), 10, units=(128,))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@functools.cache
def reference_setup():
    """Digits with random labels (only memorization fits them), a target trained on a random
    half of a 400-example pool, 4 reference models on complementary pool halves (online /
    offline, trained as 2 shards) in ``pool_dir``, and one reference model trained on half of
    a separate 200-example population (offline, every pool example OUT) in ``population_dir``.
    """
    (x, _), _ = tfsafe.load_digits()
    rng = np.random.default_rng(1)
    pool = (x[:POOL], rng.integers(0, 10, POOL))
    population = (x[POOL:POOL + POPULATION], rng.integers(0, 10, POPULATION))
    is_member = np.zeros(POOL, bool)
    is_member[rng.permutation(POOL)[: POOL // 2]] = True
    keras.utils.set_random_seed(5)
    target = build()
    target.fit(pool[0][is_member], pool[1][is_member], verbose=0, **FIT)
    pool_dir, population_dir = tempfile.mkdtemp(prefix="tfsafe-lira-"), tempfile.mkdtemp(prefix="tfsafe-rmia-")
    logs = []
    for shard in ("0/2", "1/2"):
        train_reference_models(build, pool, pool_dir, num_models=4, shard=shard, fit_kwargs=FIT, log=logs.append)
    train_reference_models(build, pool, population_dir, num_models=1, population=population, train_on="population",
                           fit_kwargs=FIT, log=logs.append)
    return {"pool": pool, "population": population, "is_member": is_member, "target": target,
            "pool_dir": pool_dir, "population_dir": population_dir, "logs": logs}

"""RLNet with fast adversarial training (FGSM-RS, free) and its catastrophic-overfitting guard."""

import numpy as np
import pytest

import tfsafe
from tfsafe._keras import keras
from tfsafe.compress.dual_bn import dual_batchnorm, dual_bn_layers
from tfsafe.errors import InputError
from tfsafe.methods.rlnet import RLNetTrainer, RobustLoss, RobustLossGuard, rlnet_cnn, train_robust_teacher


@pytest.fixture(scope="module")
def bn_model(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = rlnet_cnn((8, 8, 1), 10, filters=(8, 16), dense=32, dual_bn=False, name="small")
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:512], y[:512], epochs=3, batch_size=64, verbose=0)
    return model


def test_fgsm_rs_teacher_training_runs_with_the_guard(bn_model, digits):
    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(0)
    teacher, history = train_robust_teacher(bn_model, x[:128], y[:128], eps=0.1, epochs=1, batch_size=64,
                                            pgd_steps=2, attack="fgsm_rs", validation_data=(xt[:64], yt[:64]),
                                            ramp_epochs=0.0, return_history=True)
    assert np.isfinite(history.history["loss"][-1])
    records = history.guard["records"]
    assert len(records) == 1 and 0.0 <= records[0]["holdout_pgd_accuracy"] <= 1.0
    assert all(float(layer.route.numpy()) == 0.0 for layer in dual_bn_layers(teacher))  # back on inference


def test_free_training_carries_the_perturbation(bn_model, digits):
    (x, y), _ = digits
    model = dual_batchnorm(bn_model)
    before = [w.copy() for w in model.get_weights()]
    trainer = RLNetTrainer(model, RobustLoss(eps=0.1, attack="free", free_replays=2, augment=False))
    trainer.compile(keras.optimizers.Adam(1e-3))
    trainer.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, shuffle=False)
    delta = trainer.free_delta.numpy()  # stored for the next minibatch, inside the ball and the pixel range
    assert delta.shape == (32, 8, 8, 1) and 0 < np.abs(delta).max() <= 0.1 + 1e-6
    assert (x[32:64] + delta).min() >= -1e-6 and (x[32:64] + delta).max() <= 1 + 1e-6
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_guard_falls_back_to_pgd_on_a_collapse(bn_model, digits):
    _, (xt, yt) = digits
    model = dual_batchnorm(bn_model)
    loss = RobustLoss(eps=0.1, pgd_steps=2, attack="fgsm_rs", augment=False)
    trainer = RLNetTrainer(model, loss)
    guard = RobustLossGuard(xt[:64], yt[:64], eps=0.1, steps=3)
    guard.set_model(trainer)
    guard.on_train_begin()
    guard.best = 1.0  # an earlier epoch held 100%: today's accuracy is a collapse
    logs = {}
    guard.on_epoch_end(0, logs)
    assert bool(loss.use_pgd.numpy()) and guard.triggered_epoch == 0 and logs["overfitting_guard"] == 1.0
    assert all(float(layer.route.numpy()) == 0.0 for layer in dual_bn_layers(model))  # back on inference
    x32, y32 = xt[:32], yt[:32]
    assert np.isfinite(float(loss(model, x32, y32)))  # PGD now crafts the adversarial path's inputs
    with pytest.raises(InputError, match="RLNetTrainer"):
        plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        plain.compile(optimizer="sgd", loss="mse")
        plain.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0, callbacks=[RobustLossGuard(xt[:4], yt[:4])])


def test_attack_is_a_method_parameter():
    method = tfsafe.methods.get("rlnet", attack="fgsm_rs")
    assert method.get_config()["attack"] == "fgsm_rs"
    assert type(method).from_config(method.get_config()).attack == "fgsm_rs"
    with pytest.raises(InputError, match="attack"):
        tfsafe.methods.get("rlnet", attack="fgsm")
    with pytest.raises(InputError, match="attack"):
        RobustLoss(eps=0.1, attack="pgd20")

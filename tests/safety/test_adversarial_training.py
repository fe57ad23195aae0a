"""Adversarial training through Model.fit: robustness gain, TRADES, checkpoints, saving, MirroredStrategy."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import clone, compile_classifier

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.models import accuracy, small_cnn
from tfsafe.safety.adversarial_training import AdversarialModel, CatastrophicOverfittingGuard, EpsilonRamp
from tfsafe.safety.robust_accuracy import adversarial_accuracy


@pytest.fixture(scope="module")
def test_set(digits):
    _, (xt, yt) = digits
    return xt[:200], yt[:200]


def test_pgd_training_beats_standard_training(digits, trained_cnn, test_set):
    (x, y), _ = digits
    xt, yt = test_set
    keras.utils.set_random_seed(1)
    adv = AdversarialModel(small_cnn(), eps=0.1, steps=5, adv_weight=0.5)
    adv.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    seen = []
    ramp_probe = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(
        float(adv.current_eps.numpy())))
    history = adv.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[EpsilonRamp(1.0), ramp_probe])
    assert {"loss", "clean_loss", "adv_loss", "adv_accuracy", "accuracy"} <= set(history.history)
    assert seen[0] < 0.01 and seen[-1] == pytest.approx(0.1) and seen == sorted(seen)
    robust = adversarial_accuracy(adv.model, xt, yt, 0.1)
    standard = adversarial_accuracy(trained_cnn, xt, yt, 0.1)
    assert accuracy(adv.model, xt, yt) > 0.85
    assert robust > standard + 0.1, (robust, standard)


def test_trades_and_checkpoints_and_serialization(digits, tmp_path):
    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(2)
    base = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])
    adv = AdversarialModel(base, eps=0.05, steps=3, loss="trades", trades_beta=3.0)
    adv.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    ckpt = str(tmp_path / "ckpt.weights.h5")
    history = adv.fit(x, y, epochs=3, batch_size=64, verbose=0, validation_data=(xt, yt),
                      callbacks=[keras.callbacks.ModelCheckpoint(ckpt, save_weights_only=True)])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "val_accuracy" in history.history and history.history["accuracy"][-1] > 0.5
    restored = AdversarialModel(keras.models.clone_model(base), eps=0.05, steps=3, loss="trades")
    restored(xt[:2])
    restored.load_weights(ckpt)
    np.testing.assert_allclose(restored.predict(xt[:16], verbose=0), adv.predict(xt[:16], verbose=0), atol=1e-6)
    path = str(tmp_path / "adv.keras")
    adv.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert isinstance(loaded, AdversarialModel) and loaded.loss_type == "trades" and loaded.eps == 0.05
    np.testing.assert_allclose(loaded.predict(xt[:16], verbose=0), adv.predict(xt[:16], verbose=0), atol=1e-6)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tfsafe
    from tfsafe._keras import keras
    from tfsafe.models import mlp
    from tfsafe.safety.adversarial_training import AdversarialModel, CatastrophicOverfittingGuard, EpsilonRamp
    (x, y), _ = tfsafe.load_digits()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        adv = AdversarialModel(mlp((8, 8, 1), 10, units=(32,)), eps=0.1, steps=2)
        adv.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    before = [w.copy() for w in adv.get_weights()]
    hist = adv.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0, callbacks=[EpsilonRamp(1.0)])
    changed = any(abs(a - b).max() > 0 for a, b in zip(before, adv.get_weights()))
    fast = {}
    for attack in ("fgsm_rs", "free"):
        with strategy.scope():
            model = AdversarialModel(mlp((8, 8, 1), 10, units=(32,)), eps=0.1, attack=attack, free_replays=2)
            model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
        fast[attack] = model.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0).history["loss"]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": hist.history["loss"],
                      "eps": float(adv.current_eps.numpy()), "changed": bool(changed), "fast": fast}))
""")


def test_adversarial_training_under_mirrored_strategy():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["changed"] and result["eps"] == pytest.approx(0.1)
    assert all(np.isfinite(result["loss"])) and result["loss"][-1] < result["loss"][0]
    for attack, loss in result["fast"].items():
        assert all(np.isfinite(loss)) and loss[-1] < loss[0], (attack, loss)


def test_compile_requires_no_loss(trained_cnn):
    adv = AdversarialModel(clone(trained_cnn), eps=0.1, steps=2)
    with pytest.warns(UserWarning, match="ignored"):
        adv.compile(optimizer="adam", loss="mse")
    compile_classifier(clone(trained_cnn))  # the plain model keeps its normal compile


def test_bad_arguments():
    for kwargs in ({"eps": -1.0}, {"eps": 0.1, "steps": 0}, {"eps": 0.1, "loss": "fgsm"},
                   {"eps": 0.1, "adv_weight": 1.5}, {"eps": 0.1, "norm": "l1"}, {"eps": 0.1, "attack": "cw"},
                   {"eps": 0.1, "attack": "fgsm_rs", "loss": "trades"},
                   {"eps": 0.1, "attack": "free", "free_replays": 0},
                   {"eps": 0.1, "attack": "fgsm_rs", "fgsm_alpha": 0}):
        with pytest.raises(InputError) as err:
            AdversarialModel(small_cnn(), **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError):
        EpsilonRamp(ramp_epochs=-1)
    with pytest.raises(InputError):
        CatastrophicOverfittingGuard(np.zeros((2, 8, 8, 1)), np.zeros(2), action="restart")


def _negate_logits_after_epoch(adv, epoch):
    """A callback that negates the logits layer's kernel and bias at the end of ``epoch``."""

    def negate(done, logs):
        if done == epoch:
            weights = adv.model.get_weights()
            adv.model.set_weights([-w if i >= len(weights) - 2 else w for i, w in enumerate(weights)])

    return keras.callbacks.LambdaCallback(on_epoch_end=negate)


def _fast_model(attack, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    adv = AdversarialModel(small_cnn(), eps=0.1, steps=5, adv_weight=1.0, attack=attack, **kwargs)
    adv.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    return adv


def test_fgsm_rs_training_is_robust_and_the_guard_stays_quiet(digits, trained_cnn, test_set):
    (x, y), _ = digits
    xt, yt = test_set
    adv = _fast_model("fgsm_rs", 3)
    guard = CatastrophicOverfittingGuard(x[-200:], y[-200:], steps=10)
    history = adv.fit(x[:-200], y[:-200], epochs=6, batch_size=32, verbose=0, callbacks=[guard])
    assert guard.triggered_epoch is None and not bool(adv.use_pgd.numpy())
    assert history.history["overfitting_guard"] == [0.0] * 6
    assert [r["holdout_pgd_accuracy"] for r in guard.records] == history.history["holdout_pgd_accuracy"]
    robust = adversarial_accuracy(adv.model, xt, yt, 0.1)
    assert robust > adversarial_accuracy(trained_cnn, xt, yt, 0.1) + 0.1 and accuracy(adv.model, xt, yt) > 0.8


@pytest.mark.parametrize("action", ["pgd", "stop"])
def test_guard_acts_when_pgd_accuracy_collapses(digits, action):
    (x, y), _ = digits
    adv = _fast_model("fgsm_rs", 4)
    guard = CatastrophicOverfittingGuard(x[-200:], y[-200:], steps=10, max_drop=0.2, action=action)

    # Epochs 0-2 train; epoch 3 ends with its logits layer negated, so held-out PGD accuracy
    # collapses (to ~0) as it does in catastrophic overfitting.
    history = adv.fit(x[:600], y[:600], epochs=5, batch_size=32, verbose=0,
                      callbacks=[_negate_logits_after_epoch(adv, 3), guard])
    accs = history.history["holdout_pgd_accuracy"]
    assert guard.triggered_epoch == 3 and max(accs[:3]) - accs[3] > 0.2, accs
    assert history.history["overfitting_guard"][2:4] == [0.0, 1.0] and guard.records[3]["action"] == action
    if action == "pgd":
        assert bool(adv.use_pgd.numpy()) and len(accs) == 5  # training went on, now with PGD examples
    else:
        assert len(accs) == 4 and not bool(adv.use_pgd.numpy())  # stopped, best epoch's weights restored
        best = int(np.argmax(accs))
        assert adversarial_accuracy(adv.model, x[-200:], y[-200:], 0.1, steps=10) == pytest.approx(accs[best])


def test_free_training_improves_pgd_accuracy_and_saves(digits, trained_cnn, test_set, tmp_path):
    (x, y), _ = digits
    xt, yt = test_set
    adv = _fast_model("free", 5, free_replays=4)
    history = adv.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert adv.optimizer.iterations.numpy() == 4 * 3 * int(np.ceil(len(x) / 32))  # m updates per minibatch
    delta = adv.free_delta.numpy()
    assert delta.shape == (32, 8, 8, 1) and 0 < np.abs(delta).max() <= 0.1 + 1e-6
    assert history.history["loss"][-1] < history.history["loss"][0]
    robust = adversarial_accuracy(adv.model, xt, yt, 0.1)
    assert robust > adversarial_accuracy(trained_cnn, xt, yt, 0.1) + 0.05, robust
    path = str(tmp_path / "free.keras")
    adv.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert loaded.attack == "free" and loaded.free_replays == 4
    np.testing.assert_allclose(loaded.predict(xt[:16], verbose=0), adv.predict(xt[:16], verbose=0), atol=1e-6)
    ckpt = str(tmp_path / "free.weights.h5")
    adv.save_weights(ckpt)
    restored = AdversarialModel(keras.models.clone_model(adv.model), eps=0.1, attack="free", free_replays=4)
    restored(xt[:2])
    restored.load_weights(ckpt)
    np.testing.assert_allclose(restored.predict(xt[:16], verbose=0), adv.predict(xt[:16], verbose=0), atol=1e-6)


def test_guard_restore_best_keeps_the_best_epoch_without_a_collapse(digits):
    (x, y), _ = digits
    adv = _fast_model("fgsm_rs", 5)
    guard = CatastrophicOverfittingGuard(x[-200:], y[-200:], steps=10, max_drop=1.0, action="stop",
                                         restore_best=True)

    # The last epoch ends with its logits layer negated: held-out PGD accuracy falls, but
    # max_drop=1.0 never counts it as a collapse, so only restore_best brings the best back.
    history = adv.fit(x[:600], y[:600], epochs=3, batch_size=32, verbose=0,
                      callbacks=[_negate_logits_after_epoch(adv, 2), guard])
    accs = history.history["holdout_pgd_accuracy"]
    assert guard.triggered_epoch is None and accs[2] < max(accs[:2]) - 0.2, accs
    assert guard.best_epoch == int(np.argmax(accs)) < 2
    final = adversarial_accuracy(adv.model, x[-200:], y[-200:], 0.1, steps=10)
    assert final == pytest.approx(accs[guard.best_epoch]) and final > accs[2] + 0.2


@pytest.mark.parametrize("attack, clean_metrics, passes", [
    ("pgd", True, 3 + 2), ("pgd", False, 3 + 1),  # 3 attack steps + training pass (+ clean metrics pass)
    ("fgsm_rs", True, 3), ("fgsm_rs", False, 2),
    ("free", True, 4 + 1), ("free", False, 4),  # 4 replays (+ one clean metrics pass, not one per replay)
])
def test_clean_metrics_pass_runs_once_per_minibatch_or_not_at_all(digits, attack, clean_metrics, passes):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    adv = AdversarialModel(small_cnn(), eps=0.1, steps=3, adv_weight=1.0, attack=attack, free_replays=4,
                           clean_metrics=clean_metrics)
    adv.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"], run_eagerly=True)
    calls, logits = [], adv._logits

    def counting(inputs, training=False):
        calls.append(training)
        return logits(inputs, training=training)

    adv._logits = counting
    logs = adv.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0).history
    assert len(calls) == passes, calls
    assert ("clean_loss" in logs) == clean_metrics
    if not clean_metrics:  # the compiled metrics then see the adversarial examples
        assert logs["accuracy"] == pytest.approx(logs["adv_accuracy"])
    assert AdversarialModel.from_config(adv.get_config()).clean_metrics == clean_metrics

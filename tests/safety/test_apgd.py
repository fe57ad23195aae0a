"""APGD must be a sound, strong attack: eps 0 = clean, monotone in eps, at least as strong as PGD,
the paper's step-size schedule, DLR fallbacks, BPDA, transfer onto int8 .tflite, bad input."""

import numpy as np
import pytest
from safety_helpers import rounded_model

from tflite_export.runtime import TFLiteModel
from tfsafe._keras import keras, tf
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import accuracy, mlp
from tfsafe.safety.apgd import apgd_attack, checkpoints, dlr_loss, resolve_loss, targeted_dlr_loss
from tfsafe.safety.robust_accuracy import adversarial_accuracy, attack_notes, transfer_attack
from tfsafe.safety.tests import PGDTest

N = 150
APGD = ("apgd-ce", "apgd-dlr", "apgd-t")


@pytest.fixture(scope="module")
def test_set(digits):
    _, (xt, yt) = digits
    return xt[:N], yt[:N]


@pytest.fixture(scope="module")
def two_class(digits):
    """An MLP trained on digits 0 vs 1 (two logits)."""
    (x, y), (xt, yt) = digits
    keep, keep_t = y < 2, yt < 2
    keras.utils.set_random_seed(0)
    model = mlp((8, 8, 1), 2, units=(16,))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[keep], y[keep], epochs=10, batch_size=32, verbose=0)
    return model, xt[keep_t][:60], yt[keep_t][:60]


def test_checkpoints_follow_the_papers_sequence():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); checks after w_j = p_j N steps.
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert [i + 1 for i, _ in checkpoints(100)] == [round(100 * v) for v in p[1:]]
    assert [k for _, k in checkpoints(100)] == [22, 19, 16, 13, 10, 7, 6, 6]
    assert checkpoints(20)[0] == (3, 4) and all(k >= 1 for _, k in checkpoints(5))


def test_dlr_losses_have_the_papers_values():
    logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])
    assert float(dlr_loss(tf.constant([0]), logits)[0]) == pytest.approx(-(3 - 1) / (3 - 0))
    assert float(dlr_loss(tf.constant([1]), logits)[0]) == pytest.approx(-(1 - 3) / (3 - 0))
    assert float(targeted_dlr_loss(tf.constant([0]), tf.constant([2]), logits)[0]) == pytest.approx(-3 / 3.5)
    # Scale invariant: multiplying the logits does not change DLR.
    assert float(dlr_loss(tf.constant([0]), 7 * logits)[0]) == pytest.approx(-2 / 3, rel=1e-5)


def test_eps_zero_is_clean_and_monotone_in_eps(trained_cnn, test_set):
    x, y = test_set
    clean = accuracy(trained_cnn, x, y)
    for attack in (*APGD, "worst"):
        assert adversarial_accuracy(trained_cnn, x, y, 0.0, attack=attack, steps=10) == pytest.approx(clean)
    for attack in ("apgd-ce", "apgd-dlr"):
        values = list(adversarial_accuracy(trained_cnn, x, y, [0.0, 0.05, 0.1, 0.2], attack=attack).values())
        assert all(b <= a + 0.01 for a, b in zip(values, values[1:])), (attack, values)
        assert values[-1] < 0.1 < 0.9 < values[0]
    l2 = adversarial_accuracy(trained_cnn, x, y, [0.0, 0.5, 1.0], attack="apgd-ce", norm="l2")
    assert l2[0.0] == pytest.approx(clean) and l2[1.0] <= l2[0.5] + 0.01 <= clean + 0.01


def test_apgd_is_at_least_as_strong_as_pgd_and_worst_is_below_each(trained_cnn, test_set):
    x, y = test_set
    eps, steps = 0.1, 20
    pgd, pgd_mask = adversarial_accuracy(trained_cnn, x, y, eps, attack="pgd", steps=steps, return_mask=True)
    masks = {a: adversarial_accuracy(trained_cnn, x, y, eps, attack=a, steps=steps, return_mask=True)[1]
             for a in ("apgd-ce", "apgd-dlr")}
    apgd_worst = float((masks["apgd-ce"] & masks["apgd-dlr"]).mean())
    assert 0.2 < pgd < 0.9  # an eps where the comparison means something
    assert apgd_worst <= pgd + 0.02, (apgd_worst, pgd)
    worst, worst_mask = adversarial_accuracy(trained_cnn, x, y, eps, attack="worst", steps=steps, return_mask=True)
    # Per example: "worst" breaks everything any of its attacks breaks.
    assert not np.any(worst_mask & ~(pgd_mask & masks["apgd-ce"] & masks["apgd-dlr"]))
    assert worst <= min(pgd, apgd_worst)
    targeted = adversarial_accuracy(trained_cnn, x, y, eps, attack="apgd-t", steps=steps, target_classes=3)
    assert targeted <= pgd + 0.02


def test_perturbations_stay_in_ball_and_range_and_are_seeded(trained_cnn, test_set):
    x, y = test_set
    x_inf = apgd_attack(trained_cnn, x, y, 0.1, steps=10, loss="dlr")
    assert np.abs(x_inf - x).max() <= 0.1 + 1e-5 and x_inf.min() >= 0 and x_inf.max() <= 1
    np.testing.assert_array_equal(x_inf, apgd_attack(trained_cnn, x, y, 0.1, steps=10, loss="dlr"))
    x_l2 = apgd_attack(trained_cnn, x, y, 0.5, steps=10, norm="l2")
    assert np.linalg.norm((x_l2 - x).reshape(len(x), -1), axis=1).max() <= 0.5 + 1e-4


def test_dlr_on_two_classes_falls_back_to_ce_and_says_so(two_class):
    model, x, y = two_class
    assert resolve_loss("dlr", 2) == ("ce", pytest.approx(resolve_loss("dlr", 2)[1]))
    assert resolve_loss("dlr-targeted", 3)[0] == "dlr" and resolve_loss("dlr", 10) == ("dlr", None)
    with pytest.warns(UserWarning, match="DLR needs >= 3 classes"):
        dlr = adversarial_accuracy(model, x, y, 0.3, attack="apgd-dlr", steps=10)
    assert dlr == adversarial_accuracy(model, x, y, 0.3, attack="apgd-ce", steps=10)
    assert any("fell back" in n for n in attack_notes(model, x, ["worst"]))
    res = PGDTest(0.3, steps=10, extra_attacks=("apgd-ce", "apgd-dlr")).run(model, (x, y))
    assert res["attack_set"] == ["pgd", "apgd-ce", "apgd-dlr"] and "DLR needs >= 3 classes" in res["notes"][0]


def test_bpda_and_transfer_to_int8_tflite(trained_cnn, test_set, int8_tflite):
    x, y = test_set
    model = rounded_model(trained_cnn)
    plain = adversarial_accuracy(model, x, y, 0.15, attack="apgd-ce", steps=10)
    bpda = adversarial_accuracy(model, x, y, 0.15, attack="apgd-ce", steps=10, bpda=True)
    assert bpda < plain - 0.3
    result = transfer_attack(trained_cnn, int8_tflite.path, x, y, 0.2, attack="apgd-dlr", steps=10)
    assert result["target_clean_accuracy"] > 0.9 and result["attack"] == "apgd-dlr"
    assert result["target_adv_accuracy"] < result["target_clean_accuracy"] - 0.4
    with pytest.raises(UnsupportedModelError, match="no gradients"):
        apgd_attack(TFLiteModel(int8_tflite.path), x, y, 0.1)


@pytest.mark.parametrize("kwargs", [
    {"eps": -0.1}, {"eps": 1.5}, {"eps": 40.0, "norm": "l2"}, {"eps": 0.1, "steps": 0}, {"eps": 0.1, "norm": "l1"},
    {"eps": 0.1, "loss": "hinge"}, {"eps": 0.1, "restarts": 0}, {"eps": 0.1, "target_classes": 0},
])
def test_bad_apgd_arguments(trained_cnn, test_set, kwargs):
    x, y = test_set
    with pytest.raises(InputError) as err:
        apgd_attack(trained_cnn, x[:4], y[:4], **kwargs)
    assert "\n" not in str(err.value)


def test_bad_attack_names_and_ranges(trained_cnn, test_set):
    x, y = test_set
    with pytest.raises(InputError, match="attack must be one of"):
        adversarial_accuracy(trained_cnn, x[:4], y[:4], 0.1, attack="autoattack")
    with pytest.raises(InputError, match="outside the data range"):
        adversarial_accuracy(trained_cnn, x[:4], y[:4], 2.0, attack="worst")
    with pytest.raises(InputError, match="extra_attacks"):
        PGDTest(0.1, extra_attacks=("fgsm",))

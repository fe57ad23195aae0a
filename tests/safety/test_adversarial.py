"""Attacks must be strong and honest: sanity checks, BPDA, transfer onto int8 .tflite, bad input."""


import numpy as np
import pytest
from safety_helpers import int8_tflite, rounded_model

from tfsafe._keras import tf
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import accuracy
from tfsafe.safety.adversarial import fgsm_attack, pgd_attack, pgd_perturb
from tfsafe.safety.bpda import has_bpda_layers
from tfsafe.safety.robust_accuracy import adversarial_accuracy, transfer_attack, zero_gradient_fraction
from tfsafe.safety.tflite_model import TFLiteModel

N = 200


@pytest.fixture(scope="module")
def test_set(digits):
    _, (xt, yt) = digits
    return xt[:N], yt[:N]


def test_eps_zero_gives_clean_accuracy(trained_cnn, test_set):
    x, y = test_set
    clean = accuracy(trained_cnn, x, y)
    assert adversarial_accuracy(trained_cnn, x, y, 0.0) == pytest.approx(clean)
    assert adversarial_accuracy(trained_cnn, x, y, 0.0, attack="fgsm") == pytest.approx(clean)
    assert adversarial_accuracy(trained_cnn, x, y, 0.0, norm="l2") == pytest.approx(clean)


def test_accuracy_does_not_rise_with_eps_and_pgd_beats_fgsm(trained_cnn, test_set):
    x, y = test_set
    pgd = adversarial_accuracy(trained_cnn, x, y, [0.0, 0.05, 0.1, 0.2])
    values = list(pgd.values())
    assert all(b <= a + 0.01 for a, b in zip(values, values[1:])), pgd
    assert values[-1] < 0.2 < values[0]  # the attack really works at eps 0.2 on an undefended model
    for eps in (0.05, 0.1):
        assert pgd[eps] <= adversarial_accuracy(trained_cnn, x, y, eps, attack="fgsm") + 0.02
    l2 = adversarial_accuracy(trained_cnn, x, y, [0.25, 0.5, 1.0], norm="l2")
    assert l2[1.0] <= l2[0.5] + 0.01 <= l2[0.25] + 0.02


def test_more_steps_or_restarts_never_help(trained_cnn, test_set):
    x, y = test_set
    one = adversarial_accuracy(trained_cnn, x, y, 0.08, steps=20, restarts=1)
    three = adversarial_accuracy(trained_cnn, x, y, 0.08, steps=20, restarts=3)
    assert three <= one  # restart r uses the same noise whatever the count: guaranteed by construction
    few = adversarial_accuracy(trained_cnn, x, y, 0.08, steps=3)
    many = adversarial_accuracy(trained_cnn, x, y, 0.08, steps=40)
    assert many <= few + 0.01


def test_perturbations_stay_in_ball_and_range(trained_cnn, test_set):
    x, y = test_set
    x_inf = pgd_attack(trained_cnn, x, y, 0.1, steps=10)
    assert np.abs(x_inf - x).max() <= 0.1 + 1e-5 and x_inf.min() >= 0 and x_inf.max() <= 1
    x_l2 = pgd_attack(trained_cnn, x, y, 0.5, steps=10, norm="l2")
    assert np.linalg.norm((x_l2 - x).reshape(len(x), -1), axis=1).max() <= 0.5 + 1e-4
    x_fgsm = fgsm_attack(trained_cnn, x, y, 0.1)
    assert np.abs(x_fgsm - x).max() <= 0.1 + 1e-5
    # Deterministic for a seed.
    np.testing.assert_array_equal(x_inf, pgd_attack(trained_cnn, x, y, 0.1, steps=10))


def test_targeted_attack_hits_target(trained_cnn, test_set):
    x, y = test_set
    target = (y + 1) % 10
    x_adv = pgd_attack(trained_cnn, x, target, 0.3, steps=30, targeted=True)
    hit = np.mean(trained_cnn.predict(x_adv, verbose=0).argmax(1) == target)
    assert hit > 0.8


def test_pgd_perturb_is_graph_safe(trained_cnn, test_set):
    x, y = test_set
    fn = tf.function(lambda a, b: pgd_perturb(trained_cnn, a, b, 0.2, 10, seed=3))
    out = fn(tf.constant(x[:32]), tf.constant(y[:32]))
    np.testing.assert_allclose(out.numpy(), pgd_perturb(trained_cnn, x[:32], y[:32], 0.2, 10, seed=3).numpy(),
                               atol=1e-5)
    assert accuracy(trained_cnn, out.numpy(), y[:32]) < accuracy(trained_cnn, x[:32], y[:32])


def test_bpda_breaks_rounding_model_where_pgd_fails(trained_cnn, test_set):
    x, y = test_set
    model = rounded_model(trained_cnn)
    assert has_bpda_layers(model) and not has_bpda_layers(trained_cnn)
    assert zero_gradient_fraction(model, x, y) == 1.0
    clean = accuracy(model, x, y)
    plain = adversarial_accuracy(model, x, y, 0.15, steps=20)
    bpda = adversarial_accuracy(model, x, y, 0.15, steps=20, bpda=True)
    surrogate = adversarial_accuracy(model, x, y, 0.15, steps=20, bpda=trained_cnn)
    assert plain > clean - 0.25  # no gradient: PGD can only use its random start
    assert bpda < plain - 0.3 and surrogate < plain - 0.3
    # The forward pass is unchanged in BPDA mode.
    x_adv = pgd_attack(model, x, y, 0.15, steps=5, bpda=True)
    assert np.all(np.isfinite(model.predict(x_adv, verbose=0)))


def test_transfer_attack_on_int8_tflite(trained_cnn, test_set, tmp_path, digits):
    x, y = test_set
    path = int8_tflite(trained_cnn, digits[0][0], tmp_path / "cnn_int8.tflite")
    target = TFLiteModel(path)
    assert target.input_details["dtype"] == np.int8 and target.output_details["dtype"] == np.int8
    keras_pred = trained_cnn.predict(x, verbose=0).argmax(1)
    assert np.mean(target.predict(x).argmax(1) == keras_pred) > 0.95
    result = transfer_attack(trained_cnn, path, x, y, 0.2)
    assert result["target_clean_accuracy"] > 0.9
    assert result["target_adv_accuracy"] < result["target_clean_accuracy"] - 0.4
    assert result["mask"].mean() == pytest.approx(result["target_adv_accuracy"])
    with pytest.raises(UnsupportedModelError):
        pgd_attack(target, x, y, 0.1)


@pytest.mark.parametrize("kwargs", [
    {"eps": -0.1}, {"eps": float("nan")}, {"eps": 0.1, "steps": 0}, {"eps": 0.1, "norm": "l3"},
    {"eps": 0.1, "restarts": 0}, {"eps": 0.1, "loss": "hinge"}, {"eps": 0.1, "step_size": -1.0},
])
def test_bad_attack_arguments(trained_cnn, test_set, kwargs):
    x, y = test_set
    with pytest.raises(InputError):
        pgd_attack(trained_cnn, x[:4], y[:4], **kwargs)


def test_bad_attack_data(trained_cnn, test_set):
    x, y = test_set
    bad = x[:4].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pgd_attack(trained_cnn, bad, y[:4], 0.1)
    with pytest.raises(InputError, match="shape"):
        pgd_attack(trained_cnn, x[:4, :, :, 0], y[:4], 0.1)
    with pytest.raises(InputError):
        pgd_attack(trained_cnn, x[:4], y[:3], 0.1)
    with pytest.raises(InputError):
        adversarial_accuracy(trained_cnn, x[:4], y[:4], 0.1, attack="cw")

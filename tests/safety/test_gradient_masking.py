"""Gradient-masking checks: pass on an honest model, flag a masked one (in evaluate_safety too)."""

import json

import pytest
from conftest import clone
from safety_helpers import rounded_model

from tfsafe._keras import keras, tf
from tfsafe.safety.evaluate import evaluate_safety
from tfsafe.safety.gradient_masking import (
    check_large_eps,
    check_monotone_eps,
    check_zero_gradients,
    gradient_masking_checks,
)
from tfsafe.safety.robust_accuracy import adversarial_accuracy

N = 120


@pytest.fixture(scope="module")
def test_set(digits):
    _, (xt, yt) = digits
    return xt[:N], yt[:N]


@pytest.fixture(scope="module")
def masked_model(trained_cnn):
    """``trained_cnn`` behind a rounding Lambda without a BPDA surrogate: every gradient is zero."""
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, clone(trained_cnn)(keras.layers.Lambda(lambda t: tf.round(t * 3.0) / 3.0)(inputs)))


def test_monotone_eps_check():
    ok = check_monotone_eps({0.1: 0.6, 0.2: 0.3}, clean_accuracy=0.95)
    assert ok["passed"] and ok["accuracy_by_eps"] == {"0": 0.95, "0.1": 0.6, "0.2": 0.3}
    bad = check_monotone_eps({0.1: 0.3, 0.2: 0.5}, clean_accuracy=0.95)
    assert bad["passed"] is False and bad["rises"] == [{"eps": 0.2, "from": 0.3, "to": 0.5}]
    assert check_monotone_eps({0.1: 0.3})["passed"] is None  # one point: nothing to compare


def test_honest_model_passes_every_check(trained_cnn, test_set):
    x, y = test_set
    whitebox = adversarial_accuracy(trained_cnn, x, y, 0.1, attack="worst", steps=10)
    res = gradient_masking_checks(trained_cnn, x, y, 0.1, accuracy_by_eps={0.1: whitebox, 0.2: 0.05},
                                  clean_accuracy=0.98, whitebox_accuracy=whitebox, source=trained_cnn, steps=10)
    checks = res["checks"]
    assert res["passed"] and res["flags"] == [], res
    assert set(checks) == {"monotone_eps", "zero_gradients", "more_iterations", "large_eps", "transfer"}
    more = checks["more_iterations"]
    assert more["accuracy_4x_steps"] <= more["accuracy"] + 0.01 and more["accuracy_more_restarts"] <= more["accuracy"]
    assert checks["large_eps"]["eps"] == 0.5 and checks["large_eps"]["accuracy"] <= 0.05
    assert checks["zero_gradients"]["zero_gradient_fraction"] == 0.0
    json.dumps(res)


def test_masked_model_is_flagged(masked_model, trained_cnn, test_set):
    x, y = test_set
    zero = check_zero_gradients(masked_model, x, y)
    assert zero["passed"] is False and zero["zero_gradient_fraction"] == 1.0 and zero["bpda"] is False
    large = check_large_eps(masked_model, x, y, steps=10)
    assert large["passed"] is False and large["accuracy"] > 0.05  # no gradient: only the random start moves
    res = gradient_masking_checks(masked_model, x, y, 0.15, whitebox_accuracy=0.9, source=trained_cnn, steps=10)
    assert not res["passed"] and res["checks"]["transfer"]["passed"] is False
    assert res["checks"]["transfer"]["transfer_accuracy"] < 0.9 - 0.3
    assert any("zero on 100%" in f for f in res["flags"]) and any("transfer" in f for f in res["flags"])
    # With a BPDA surrogate the gradient the attack uses is not zero: the zero-gradient check passes.
    assert check_zero_gradients(rounded_model(trained_cnn), x, y)["passed"]


def test_evaluate_safety_reports_flags_and_the_attack_set(masked_model, trained_cnn, test_set):
    x, y = test_set
    honest = evaluate_safety(trained_cnn, (x, y), tests=["clean", "pgd"], eps=[0.05, 0.1], steps=10)
    assert honest["flags"] == [] and honest["robustness"]["masked"] is False
    assert honest["robustness"]["attacks"] == ["pgd", "apgd-ce", "apgd-dlr"]
    assert honest["gradient_masking"]["passed"] and honest["robustness"]["gradient_masking_passed"]
    masked = evaluate_safety(masked_model, (x, y), tests=["clean", "pgd"], eps=[0.05, 0.1], steps=10)
    assert masked["robustness"]["masked"] is True and not masked["robustness"]["gradient_masking_passed"]
    assert any("gradient masking" in f for f in masked["flags"])
    assert masked["robustness"]["pgd_accuracy"] > honest["robustness"]["pgd_accuracy"]  # looks robust, is flagged
    json.dumps(masked)
    off = evaluate_safety(trained_cnn, (x, y), tests=["clean"], masking_checks=False)
    assert off["gradient_masking"] is None and off["flags"] == []

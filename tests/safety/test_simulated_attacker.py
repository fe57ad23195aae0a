"""The simulated membership attacker used by MIA-SafeCompress."""

import numpy as np
import pytest

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.models import mlp, small_cnn
from tfsafe.safety.simulated_attacker import SimulatedAttacker, _best_threshold_accuracy, nasr_attacker


def test_threshold_attacker_fits_on_one_half_and_scores_the_other():
    low, high = np.linspace(0, 1, 50), np.linspace(2, 3, 50)
    assert _best_threshold_accuracy(low, high, low * 0.9, high + 0.1) == 1.0
    same = np.random.default_rng(0).random(200)
    assert abs(_best_threshold_accuracy(same[:50], same[50:100], same[100:150], same[150:]) - 0.5) < 0.2


def test_attacker_sees_overfitting_but_not_an_untrained_model(digits):
    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(0)
    overfit = mlp((8, 8, 1), 10, units=(512,))
    overfit.compile(keras.optimizers.Adam(1e-2),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    overfit.fit(x[:120], y[:120], epochs=80, batch_size=120, verbose=0)  # memorizes 120 examples
    attacker = SimulatedAttacker(10, (x[:120], y[:120]), (xt[:120], yt[:120]), epochs=10, seed=0)
    leaky = attacker.attack(overfit)
    assert leaky["attack_accuracy"] >= 0.6
    assert leaky["advantage"] == pytest.approx(2 * (leaky["attack_accuracy"] - 0.5))
    untrained = SimulatedAttacker(10, (x[:120], y[:120]), (xt[:120], yt[:120]), epochs=10, seed=0)
    assert untrained.attack(small_cnn())["attack_accuracy"] < leaky["attack_accuracy"]
    attacker.accept(0)
    assert attacker.get_state() is not None


def test_nasr_attacker_shape_and_bad_input(digits):
    assert nasr_attacker(7).input_shape == [(None, 7), (None, 7)]
    (x, y), _ = digits
    with pytest.raises(InputError, match="at least 4"):
        SimulatedAttacker(10, (x[:2], y[:2]), (x[2:4], y[2:4]))

"""Loss terms in tfsafe.objectives."""

import numpy as np
import pytest

from tfsafe._keras import keras, tf
from tfsafe.objectives import (
    EntropyRegularizedLoss,
    adversarial_regularization,
    entropy_regularized_loss,
    membership_attack_loss,
)


def _numpy_ce_entropy(labels, logits):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ce = -np.log(p[np.arange(len(labels)), labels])
    h = -(p * np.log(p)).sum(axis=1)
    return ce, h


def test_entropy_regularized_loss_is_ce_minus_weighted_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 8)
    ce, h = _numpy_ce_entropy(labels, logits)
    expected = np.mean(ce - 0.1 * h)
    assert float(entropy_regularized_loss(labels, logits, 0.1)) == pytest.approx(expected, rel=1e-5)
    loss = EntropyRegularizedLoss(weight=0.1)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-5)
    probs = tf.nn.softmax(logits).numpy()
    assert float(EntropyRegularizedLoss(0.1, from_logits=False)(labels, probs)) == pytest.approx(expected, rel=1e-4)
    assert float(EntropyRegularizedLoss(0.0)(labels, logits)) == pytest.approx(np.mean(ce), rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, EntropyRegularizedLoss) and again.weight == 0.1


def test_entropy_term_pushes_toward_less_confident_outputs():
    logits = tf.Variable([[4.0, 0.0, 0.0]])
    with tf.GradientTape(persistent=True) as tape:
        plain = entropy_regularized_loss([0], logits, 0.0)
        regularized = entropy_regularized_loss([0], logits, 1.0)
    # With the entropy bonus the correct logit is pushed up less (less confidence).
    assert tape.gradient(regularized, logits).numpy()[0, 0] > tape.gradient(plain, logits).numpy()[0, 0]


def test_membership_attack_loss_rewards_separating_members():
    good = membership_attack_loss([5.0, 4.0], [-5.0, -4.0])
    bad = membership_attack_loss([-5.0, -4.0], [5.0, 4.0])
    assert float(good) < 0.05 < float(bad)


@pytest.mark.parametrize("form", ["bce", "log"])
def test_adversarial_regularization_sign_hides_members(form):
    """Minimizing the term must move the attacker's output on members towards non-member."""
    scores = tf.Variable([2.0, 0.5, -1.0])
    with tf.GradientTape() as tape:
        term = adversarial_regularization(scores, weight=1.0, form=form)
    grad = tape.gradient(term, scores).numpy()
    assert np.all(grad > 0)  # descent lowers P(member)
    lower = adversarial_regularization(scores - 1.0, weight=1.0, form=form)
    assert float(lower) < float(term)
    # Through a real classifier and a fixed attacker: a few descent steps on the term lower
    # the attacker's membership probability on the training batch.
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    attacker = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    x = np.random.default_rng(0).random((16, 4)).astype(np.float32)

    def member_probability():
        return float(tf.reduce_mean(tf.sigmoid(attacker(tf.nn.softmax(classifier(x))))))

    start = member_probability()
    optimizer = keras.optimizers.SGD(0.5)
    for _ in range(20):
        with tf.GradientTape() as tape:
            term = adversarial_regularization(attacker(tf.nn.softmax(classifier(x))), 1.0, form)
        grads = tape.gradient(term, classifier.trainable_variables)
        optimizer.apply_gradients(zip(grads, classifier.trainable_variables))
    assert member_probability() < start
    with pytest.raises(ValueError):
        adversarial_regularization(scores, form="inverted")

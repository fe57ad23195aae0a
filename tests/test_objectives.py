"""Loss terms in tfsafe.objectives."""

import numpy as np
import pytest

from tfsafe._keras import keras, tf
from tfsafe.objectives import (
    EntropyRegularizedLoss,
    RelaxLoss,
    adversarial_regularization,
    class_logits,
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


def test_relax_loss_is_the_ordinary_loss_above_alpha_and_alternates_below():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(6, 4)) * 3).astype(np.float32)
    labels = np.argmax(logits, axis=1)
    labels[:2] = (labels[:2] + 1) % 4  # two misclassified examples
    ce, h = _numpy_ce_entropy(labels, logits)
    high = RelaxLoss(alpha=float(ce.mean()) - 0.01, entropy_weight=0.1)
    assert float(high(labels, logits)) == pytest.approx(np.mean(ce - 0.1 * h), rel=1e-5)
    low = RelaxLoss(alpha=float(ce.mean()) + 1.0)
    assert float(low(labels, logits)) == pytest.approx(-np.mean(ce), rel=1e-5)  # gradient ascent
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p_true = p[np.arange(6), labels]
    target = np.tile(((1 - p_true) / 3)[:, None], (1, 4))
    target[np.arange(6), labels] = p_true
    target[:2] = np.eye(4)[labels[:2]]  # misclassified examples keep their one-hot target
    flattened = -(target * np.log(p)).sum(axis=1).mean()
    assert float(low(labels, logits)) == pytest.approx(flattened, rel=1e-5)  # posterior flattening
    assert float(low(labels, logits)) == pytest.approx(-np.mean(ce), rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(high))
    assert isinstance(again, RelaxLoss) and again.alpha == high.alpha and again.entropy_weight == 0.1


def test_relax_loss_flattening_evens_out_the_other_classes():
    logits = tf.Variable([[3.0, 1.0, -1.0]])
    loss = RelaxLoss(alpha=10.0)
    loss([0], logits)  # the ascent step; the next call flattens
    with tf.GradientTape() as tape:
        value = loss([0], logits)
    step = -tape.gradient(value, logits).numpy()[0]
    assert step[2] > 0 > step[1]  # the non-true classes move toward each other


def test_relax_loss_keeps_the_training_loss_near_alpha():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype(np.float32)
    y = rng.integers(0, 4, 256)  # random labels: only memorization lowers the loss

    def train(loss):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Input((20,)), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(4)])
        model.compile(keras.optimizers.Adam(1e-2), loss=loss)
        model.fit(x, y, epochs=40, batch_size=64, verbose=0)
        return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x)))

    plain = train(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    relaxed = train(RelaxLoss(alpha=0.8))
    assert plain < 0.3  # the plain model memorizes the random labels
    assert 0.5 < relaxed < 1.1


def test_one_unit_heads_are_read_as_binary_classifiers():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.2], [0.9], [0.4], [0.6]], np.float32)
    bce = float(keras.losses.BinaryCrossentropy()(labels[:, None].astype("float32"), probs))
    assert float(EntropyRegularizedLoss(0.0, from_logits=False)(labels, probs)) == pytest.approx(bce, rel=1e-4)
    logits = np.log(probs / (1 - probs))
    assert float(EntropyRegularizedLoss(0.0)(labels, logits)) == pytest.approx(bce, rel=1e-4)
    assert float(RelaxLoss(alpha=0.01)(labels, logits)) == pytest.approx(bce, rel=1e-4)  # above alpha: plain CE
    np.testing.assert_allclose(tf.nn.softmax(class_logits(probs, from_logits=False)).numpy()[:, 1], probs[:, 0],
                               rtol=1e-5)

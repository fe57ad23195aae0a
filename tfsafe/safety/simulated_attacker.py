"""The simulated membership attacker that MIA-SafeCompress tests candidate models with.

Two attackers look at a model's outputs on members (training examples) and on *reference*
non-members (never the audit non-members):

- a Nasr-style network (Nasr, Shokri, Houmansadr 2018): a prediction branch reads the
  prediction vector, a label branch reads the one-hot label, and a joint head outputs the
  logit of P(member). The prediction vector is given as scaled log-probabilities
  (:func:`attack_features`), a monotone transform of the softmax that keeps the tiny
  differences between confident outputs visible. It is trained on one half of the members
  and reference examples and scored on the other half, and it keeps its weights between
  rounds (a warm start, so it follows the model it attacks).
- a loss-threshold attacker: the threshold on the per-example loss that best separates the
  training halves, scored on the held-out halves.

The attack accuracy of the test is the better of the two (the worst case for the model).
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import predict_logits
from tfsafe.objectives import membership_attack_loss
from tfsafe.safety.tests import SafetyTest, register_test

__all__ = ["nasr_attacker", "attack_features", "SimulatedAttacker", "SimulatedAttackerTest"]


def attack_features(logits):
    """The prediction-branch input: ``clip(log_softmax(logits), -20, 0) / 10``."""
    return tf.clip_by_value(tf.nn.log_softmax(logits), -20.0, 0.0) / 10.0


def nasr_attacker(num_classes, prediction_units=(128, 64), label_units=(64,), joint_units=(64,),
                  name="nasr_attacker"):
    """Nasr et al.'s membership attacker: prediction branch + one-hot label branch -> P(member) logit.

    Example:
        >>> attacker = nasr_attacker(10)
        >>> attacker.output_shape
        (None, 1)
    """
    prediction = keras.Input((num_classes,), name="prediction")
    labels = keras.Input((num_classes,), name="one_hot_labels")
    a = prediction
    for i, units in enumerate(prediction_units):
        a = keras.layers.Dense(units, activation="relu", name=f"prediction_{i}")(a)
    b = labels
    for i, units in enumerate(label_units):
        b = keras.layers.Dense(units, activation="relu", name=f"label_{i}")(b)
    h = keras.layers.Concatenate(name="joint")([a, b])
    for i, units in enumerate(joint_units):
        h = keras.layers.Dense(units, activation="relu", name=f"joint_{i}")(h)
    score = keras.layers.Dense(1, name="member_logit")(h)
    return keras.Model([prediction, labels], score, name=name)


def _halves(n, rng):
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2:]


def _best_threshold_accuracy(train_member, train_other, eval_member, eval_other):
    """Members have lower loss: fit the threshold on the training halves, score it on the others."""
    values = np.concatenate([train_member, train_other])
    truth = np.concatenate([np.ones(len(train_member)), np.zeros(len(train_other))])
    order = np.argsort(values, kind="stable")
    sorted_truth = truth[order]
    # Predict "member" for the first i examples (lowest loss): balanced accuracy at each cut.
    tpr = np.concatenate([[0.0], np.cumsum(sorted_truth) / max(1, len(train_member))])
    fpr = np.concatenate([[0.0], np.cumsum(1 - sorted_truth) / max(1, len(train_other))])
    best = int(np.argmax(tpr - fpr))
    sorted_values = values[order]
    threshold = -np.inf if best == 0 else sorted_values[best - 1]
    hit_member = np.mean(eval_member <= threshold)
    hit_other = np.mean(eval_other > threshold)
    return 0.5 * (hit_member + hit_other)


class SimulatedAttacker:
    """Trains and scores the simulated attackers on a model's outputs.

    Args:
        num_classes: classes of the model under test.
        members: ``(x, y)`` from the training data.
        reference: ``(x, y)`` non-members for the attacker (e.g. ``MembershipSplits.reference``);
            never the audit non-members.
        size: at most this many members and as many reference examples (balanced).
        epochs: attacker epochs per test after the first; the first test trains 3x as long.
        batch_size, learning_rate: attacker training.
        seed: seeds the halves and the attacker.

    Example:
        >>> import numpy as np
        >>> from tfsafe.models import small_cnn
        >>> x = np.random.rand(40, 8, 8, 1).astype("float32"); y = np.arange(40) % 10
        >>> attacker = SimulatedAttacker(10, (x[:20], y[:20]), (x[20:], y[20:]), epochs=1)
        >>> 0.0 <= attacker.attack(small_cnn())["attack_accuracy"] <= 1.0
        True
    """

    def __init__(self, num_classes, members, reference, size=500, epochs=5, batch_size=64,
                 learning_rate=1e-3, seed=0):
        rng = np.random.default_rng(seed)
        (xm, ym), (xr, yr) = members, reference
        n = min(len(xm), len(xr), int(size))
        if n < 4:
            raise InputError(f"The simulated attacker needs at least 4 members and 4 reference examples, got {n}.")
        pick_m = rng.choice(len(xm), n, replace=False)
        pick_r = rng.choice(len(xr), n, replace=False)
        self.members = (np.asarray(xm)[pick_m], np.asarray(ym).reshape(-1)[pick_m])
        self.reference = (np.asarray(xr)[pick_r], np.asarray(yr).reshape(-1)[pick_r])
        self.split_members = _halves(n, rng)
        self.split_reference = _halves(n, rng)
        self.num_classes = int(num_classes)
        self.epochs, self.batch_size, self.learning_rate = int(epochs), int(batch_size), float(learning_rate)
        self.seed = seed
        self.network = nasr_attacker(self.num_classes)
        self.optimizer = keras.optimizers.Adam(self.learning_rate)
        self._train_step = tf.function(self._step)
        self._rng = rng
        self._accepted = None
        self._pending = []

    def _features(self, logits, y):
        features = attack_features(logits).numpy()
        one_hot = np.eye(self.num_classes, dtype=np.float32)[y]
        loss = -tf.nn.log_softmax(logits).numpy()[np.arange(len(y)), y]
        return features, one_hot, loss

    def _step(self, features, one_hot, member):
        with tf.GradientTape() as tape:
            scores = tf.reshape(self.network([features, one_hot], training=True), [-1])
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=member, logits=scores))
        grads = tape.gradient(loss, self.network.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.network.trainable_variables))
        return loss

    def _train(self, features, one_hot, member, epochs):
        n = len(member)
        for _ in range(epochs):
            order = self._rng.permutation(n)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                self._train_step(tf.constant(features[idx]), tf.constant(one_hot[idx]), tf.constant(member[idx]))

    def attack(self, model):
        """Train the attackers on ``model``'s outputs and score them on held-out examples.

        Returns:
            dict: ``nasr_accuracy``, ``threshold_accuracy``, ``attack_accuracy`` (the larger)
            and ``advantage`` = ``2 * max(0, attack_accuracy - 0.5)``.
        """
        pm, om, lm = self._features(predict_logits(model, self.members[0]), self.members[1])
        pr, orf, lr = self._features(predict_logits(model, self.reference[0]), self.reference[1])
        (tm, em), (tr, er) = self.split_members, self.split_reference
        if self._accepted is None:
            epochs = 3 * self.epochs
        else:
            self.network.set_weights(self._accepted)
            epochs = self.epochs
        member = np.concatenate([np.ones(len(tm)), np.zeros(len(tr))]).astype(np.float32)
        self._train(np.concatenate([pm[tm], pr[tr]]), np.concatenate([om[tm], orf[tr]]), member, epochs)
        scores_m = self.network([pm[em], om[em]], training=False).numpy().ravel()
        scores_r = self.network([pr[er], orf[er]], training=False).numpy().ravel()
        nasr = 0.5 * (np.mean(scores_m > 0) + np.mean(scores_r <= 0))
        threshold = _best_threshold_accuracy(lm[tm], lr[tr], lm[em], lr[er])
        self._pending.append(self.network.get_weights())
        accuracy = float(max(nasr, threshold))
        return {
            "nasr_accuracy": float(nasr),
            "threshold_accuracy": float(threshold),
            "attack_accuracy": accuracy,
            "advantage": 2.0 * max(0.0, accuracy - 0.5),
            "attacker_loss": float(membership_attack_loss(scores_m, scores_r)),
        }

    def accept(self, index=-1):
        """Keep the attacker weights trained in the ``index``-th call since the last accept."""
        if self._pending:
            self._accepted = self._pending[index]
        self._pending = []

    def get_state(self):
        """Accepted attacker weights (list of arrays) or ``None``."""
        return self._accepted

    def set_state(self, weights):
        """Restore weights returned by :meth:`get_state` (resume)."""
        self._accepted = None if weights is None else [np.asarray(w) for w in weights]


@register_test
class SimulatedAttackerTest(SafetyTest):
    """The simulated attacker as a :class:`~tfsafe.safety.tests.SafetyTest`: score = ``1 - advantage``.

    It trains on ``data.members`` (training examples) vs. ``data.nonmembers``, which during
    model selection must be *reference* data (``splits.reference`` or validation), never the
    audit non-members. The attacker is built on the first run and warm-started from the last
    accepted weights after that (call :meth:`accept` with the index of the chosen run).

    Args:
        size, epochs: see :class:`SimulatedAttacker`.
        seed: seeds the attacker.
        attacker: an existing :class:`SimulatedAttacker` to use instead of building one.

    Example:
        >>> import numpy as np
        >>> from tfsafe.models import small_cnn
        >>> x = np.random.rand(40, 8, 8, 1).astype("float32"); y = np.arange(40) % 10
        >>> test = SimulatedAttackerTest(epochs=1)
        >>> data = {"test": (x, y), "members": (x[:20], y[:20]), "nonmembers": (x[20:], y[20:])}
        >>> 0.0 <= test.run(small_cnn(), data)["score"] <= 1.0
        True
    """

    name = "simulated_attacker"

    def __init__(self, size=500, epochs=5, seed=0, attacker=None):
        self.size, self.epochs, self.seed = int(size), int(epochs), int(seed)
        self.attacker = attacker

    def get_config(self):
        return {"size": self.size, "epochs": self.epochs, "seed": self.seed}

    def _run(self, model, data):
        if self.attacker is None:
            if data.members is None or data.nonmembers is None:
                return {"skipped": "data has no members / reference non-members", "score": None}
            num_classes = int(model.output_shape[-1])
            self.attacker = SimulatedAttacker(num_classes, data.members, data.nonmembers, size=self.size,
                                              epochs=self.epochs, seed=self.seed)
        result = self.attacker.attack(model)
        result["score"] = float(1.0 - result["advantage"])
        return result

    def accept(self, index=-1):
        """Keep the attacker trained in the ``index``-th run since the last accept (warm start)."""
        if self.attacker is not None:
            self.attacker.accept(index)

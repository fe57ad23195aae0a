"""Nasr et al.'s min-max adversarial regularization against membership inference, as a Keras model."""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.models import logits_model
from tfsafe.objectives import adversarial_regularization, membership_attack_loss
from tfsafe.safety.simulated_attacker import attack_features, nasr_attacker
from tfsafe.validation import model_num_classes

__all__ = ["AdversarialRegularization"]


class AdversarialRegularization(keras.Model):
    """Nasr et al.'s min-max training as a Keras model (train with ``compile`` + ``fit``).

    Each ``train_step`` first trains the attacker to tell the batch's members from a random
    batch of reference data (:func:`~tfsafe.objectives.membership_attack_loss`), then trains
    the classifier on ``task loss + adversarial_regularization(attacker(members))``: the
    classifier is pushed to make the attacker say "non-member" on its own training examples.

    Args:
        classifier: the model being trained (logits or softmax output).
        reference: ``(x, y)`` non-members the attacker trains against (not the audit set).
        adversarial_weight: lambda.
        attacker: the attacker network (default :func:`nasr_attacker`).
        attacker_learning_rate: Adam learning rate of the attacker.
    """

    def __init__(self, classifier, reference, adversarial_weight=1.0, attacker=None, attacker_learning_rate=1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.num_classes = model_num_classes(classifier)
        self.attacker = attacker if attacker is not None else nasr_attacker(self.num_classes)
        self.adversarial_weight = float(adversarial_weight)
        self.reference_x = tf.constant(np.asarray(reference[0], np.float32))
        self.reference_y = tf.constant(np.asarray(reference[1]).reshape(-1).astype(np.int32))
        self.attacker_optimizer = keras.optimizers.Adam(attacker_learning_rate)
        self._logits = logits_model(classifier)

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def _scores(self, logits, labels):
        return self.attacker([attack_features(logits), tf.one_hot(labels, self.num_classes)])

    def train_step(self, data):
        x, y = data[0], tf.cast(tf.reshape(data[1], [-1]), tf.int32)
        idx = tf.random.uniform([tf.shape(x)[0]], 0, tf.shape(self.reference_x)[0], tf.int32)
        xr, yr = tf.gather(self.reference_x, idx), tf.gather(self.reference_y, idx)
        member_logits = self._logits(x, training=False)
        reference_logits = self._logits(xr, training=False)
        with tf.GradientTape() as tape:
            attack_loss = membership_attack_loss(self._scores(member_logits, y), self._scores(reference_logits, yr))
        grads = tape.gradient(attack_loss, self.attacker.trainable_variables)
        self.attacker_optimizer.apply_gradients(zip(grads, self.attacker.trainable_variables))
        with tf.GradientTape() as tape:
            logits = self._logits(x, training=True)
            task = self.compiled_loss(y, logits, regularization_losses=self.classifier.losses)
            privacy = adversarial_regularization(self._scores(logits, y), self.adversarial_weight)
            loss = task + privacy
        variables = self.classifier.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.compiled_metrics.update_state(y, logits)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update(attack_loss=attack_loss, privacy_loss=privacy)
        return logs

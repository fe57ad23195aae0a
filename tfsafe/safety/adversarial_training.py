"""Adversarial training as Keras training: PGD (Madry) or TRADES inside ``train_step``.

:class:`AdversarialModel` wraps a classifier; every training step crafts PGD examples with
:func:`tfsafe.safety.adversarial.pgd_perturb` against the current weights and trains on them,
so ``fit``, callbacks, checkpoints and ``tf.distribute`` strategies work unchanged.
:class:`EpsilonRamp` grows eps over the first epoch(s), which large-eps training needs to start.
Both are re-exported by :mod:`tfsafe.safety.adversarial`.
"""

import warnings

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import ends_with_softmax, logits_model
from tfsafe.objectives import softmax_cross_entropy, weighted_mean, weighted_softmax_cross_entropy

__all__ = ["AdversarialModel", "EpsilonRamp"]


def _attacks():
    # Imported when used: tfsafe.safety.adversarial re-exports this module's classes at import.
    from tfsafe.safety import adversarial  # noqa: PLC0415

    return adversarial


@keras.utils.register_keras_serializable(package="tfsafe")
class AdversarialModel(keras.Model):
    """Wraps a classifier so that ``fit`` trains it on PGD examples crafted in every step.

    Madry (``loss="madry"``): ``(1 - adv_weight) * CE(clean) + adv_weight * CE(PGD)``.
    TRADES (``loss="trades"``): ``CE(clean) + trades_beta * KL(p(clean) || p(PGD))``, with the
    attack maximizing the KL term. The loss is always computed on logits (a final softmax is
    bypassed), so ``compile`` needs only the optimizer and metrics. The current radius is the
    non-trainable variable ``current_eps`` (see :class:`EpsilonRamp`). Build and compile it inside
    ``strategy.scope()`` to train under ``tf.distribute``.

    Args:
        model: The Keras classifier to train (its weights are trained in place).
        eps: Attack radius during training.
        steps: PGD steps per training example.
        step_size: PGD step; default ``2.5 * eps / steps`` of the *current* eps.
        adv_weight: Weight of the adversarial loss (Madry).
        loss: ``"madry"`` or ``"trades"``.
        norm: ``"linf"`` or ``"l2"``.
        trades_beta: Weight of the TRADES KL term.
        clip: Valid input range.

    Example:
        >>> adv = AdversarialModel(small_cnn(), eps=0.1, steps=5)
        >>> adv.compile(optimizer="adam", metrics=["accuracy"])
        >>> adv.fit(x, y, epochs=1, verbose=0)  # doctest: +SKIP
    """

    def __init__(self, model, eps, steps=10, step_size=None, adv_weight=0.5, loss="madry", norm="linf",
                 trades_beta=6.0, clip=(0.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        _attacks()._check_attack_args(eps, steps, norm, "ce", step_size)
        if loss not in ("madry", "trades"):
            raise InputError(f"loss must be 'madry' or 'trades', got {loss!r}.")
        if not 0.0 <= float(adv_weight) <= 1.0:
            raise InputError(f"adv_weight must be in [0, 1], got {adv_weight}.")
        self.model = model
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = None if step_size is None else float(step_size)
        self.adv_weight = float(adv_weight)
        self.loss_type = loss
        self.norm = norm
        self.trades_beta = float(trades_beta)
        self.clip = None if clip is None else tuple(float(c) for c in clip)
        self.current_eps = tf.Variable(self.eps, trainable=False, dtype=tf.float32, name="current_eps")
        self._logits = logits_model(model)
        self._softmax_out = ends_with_softmax(model)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "clean_loss", "adv_loss")}
        self._adv_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values()) + [self._adv_accuracy] + super().metrics

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):  # noqa: D102
        if loss is not None:
            warnings.warn("AdversarialModel computes its own loss (cross-entropy on logits); the `loss` "
                          "passed to compile() is ignored.", stacklevel=2)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _craft(self, x, y):
        if self.loss_type == "madry":
            return _attacks().pgd_perturb(self._logits, x, y, self.current_eps, self.steps, self.step_size, self.norm,
                               clip=self.clip)
        clean_p = tf.stop_gradient(tf.nn.softmax(self._logits(x, training=False)))

        def kl(_, logits):
            return tf.reduce_sum(clean_p * (tf.math.log(clean_p + 1e-12) - tf.nn.log_softmax(logits)), -1)

        # TRADES starts close to x; a full uniform start leaves the KL gradient at zero.
        start = x + 0.001 * tf.random.normal(tf.shape(x))
        start = start if self.clip is None else tf.clip_by_value(start, *self.clip)
        x_adv = _attacks().pgd_perturb(self._logits, start, y, self.current_eps, self.steps, self.step_size, self.norm,
                            random_start=False, clip=None, loss=kl)
        delta = tf.clip_by_value(x_adv - x, -self.current_eps, self.current_eps) if self.norm == "linf" else x_adv - x
        return x + delta if self.clip is None else tf.clip_by_value(x + delta, *self.clip)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        x_adv = tf.stop_gradient(self._craft(x, y))
        pure_adversarial = self.loss_type == "madry" and self.adv_weight == 1.0
        if pure_adversarial:  # the clean pass only feeds the metrics: keep it off the tape
            clean_logits = tf.stop_gradient(self._logits(x, training=False))
        with tf.GradientTape() as tape:
            if not pure_adversarial:
                clean_logits = self._logits(x, training=True)
            adv_logits = self._logits(x_adv, training=True)
            clean_loss = weighted_softmax_cross_entropy(y, clean_logits, sample_weight)
            if self.loss_type == "madry":
                adv_loss = weighted_softmax_cross_entropy(y, adv_logits, sample_weight)
                loss = (1.0 - self.adv_weight) * clean_loss + self.adv_weight * adv_loss
            else:
                p = tf.nn.softmax(clean_logits)
                kl = tf.reduce_sum(p * (tf.nn.log_softmax(clean_logits) - tf.nn.log_softmax(adv_logits)), -1)
                adv_loss = weighted_mean(kl, sample_weight)
                loss = clean_loss + self.trades_beta * adv_loss
            if self.model.losses:
                loss += tf.add_n(self.model.losses)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / tf.cast(replicas, loss.dtype)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        for name, value in (("loss", loss), ("clean_loss", clean_loss), ("adv_loss", adv_loss)):
            self._trackers[name].update_state(value)
        self._adv_accuracy.update_state(y, adv_logits, sample_weight)
        outputs = tf.nn.softmax(clean_logits) if self._softmax_out else clean_logits
        self.compiled_metrics.update_state(y, outputs, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        logits = self._logits(x, training=False)
        self._trackers["clean_loss"].update_state(softmax_cross_entropy(y, logits))
        outputs = tf.nn.softmax(logits) if self._softmax_out else logits
        self.compiled_metrics.update_state(y, outputs, sample_weight)
        return {m.name: m.result() for m in [self._trackers["clean_loss"]] + self.compiled_metrics.metrics}

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update({
            "model": keras.utils.serialize_keras_object(self.model), "eps": self.eps, "steps": self.steps,
            "step_size": self.step_size, "adv_weight": self.adv_weight, "loss": self.loss_type,
            "norm": self.norm, "trades_beta": self.trades_beta, "clip": self.clip,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.utils.deserialize_keras_object(config["model"])
        return cls(**config)


class EpsilonRamp(keras.callbacks.Callback):
    """Ramps an :class:`AdversarialModel`'s ``current_eps`` linearly from ``start`` to its ``eps``.

    PGD training at a large eps often fails to start (the model collapses to a constant
    prediction); growing eps over the first epoch(s), batch by batch, avoids that.

    Args:
        ramp_epochs: Epochs (fractional allowed) over which eps grows to its target.
        start: Starting eps.
        target: What holds ``eps`` (float) and ``current_eps`` (a ``tf.Variable``); default the
            model being fit, which must then be an :class:`AdversarialModel` (RLNet passes its
            ``RobustLoss``).

    Example:
        >>> adv.fit(x, y, epochs=3, callbacks=[EpsilonRamp(ramp_epochs=1.0)])  # doctest: +SKIP
    """

    def __init__(self, ramp_epochs=1.0, start=0.0, target=None):
        super().__init__()
        if float(ramp_epochs) < 0:
            raise InputError(f"ramp_epochs must be >= 0, got {ramp_epochs}.")
        self.ramp_epochs = float(ramp_epochs)
        self.start = float(start)
        self.target = target
        self._epoch = 0

    def _target(self):
        if self.target is not None:
            return self.target
        if not isinstance(self.model, AdversarialModel):
            raise InputError("EpsilonRamp works only with an AdversarialModel (or pass target=).")
        return self.model

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        target = self._target()
        steps = self.params.get("steps") or 1
        progress = (self._epoch * steps + batch) / max(self.ramp_epochs * steps, 1e-12)
        target.current_eps.assign(self.start + (target.eps - self.start) * min(1.0, progress))

    def on_train_end(self, logs=None):
        target = self._target()
        target.current_eps.assign(target.eps)

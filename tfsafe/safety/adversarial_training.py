"""Adversarial training as Keras training: PGD (Madry), TRADES, FGSM-RS or free, in ``train_step``.

:class:`AdversarialModel` wraps a classifier; every training step crafts adversarial examples
against the current weights (:func:`tfsafe.safety.adversarial.pgd_perturb`) and trains on them,
so ``fit``, callbacks, checkpoints and ``tf.distribute`` strategies work unchanged. Besides PGD,
two cheap attacks: FGSM with a random start and step ``1.25 eps`` ("Fast is better than free",
Wong, Rice and Kolter, ICLR 2020) and "free" training (Shafahi et al., NeurIPS 2019: every
minibatch is replayed ``m`` times, each replay updating the weights and the perturbation, which
carries over to the next minibatch). :class:`CatastrophicOverfittingGuard` watches PGD accuracy
on a held-out batch and falls back to PGD (or stops) when fast training collapses.
:class:`EpsilonRamp` grows eps over the first epoch(s), which large-eps training needs to start.
"""

import warnings

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import ends_with_softmax, logits_model
from tfsafe.objectives import softmax_cross_entropy, weighted_mean, weighted_softmax_cross_entropy
from tfsafe.safety.adversarial import check_attack_args, pgd_perturb
from tfsafe.safety.robust_accuracy import adversarial_accuracy

__all__ = ["AdversarialModel", "EpsilonRamp", "CatastrophicOverfittingGuard", "TRAIN_ATTACKS"]

TRAIN_ATTACKS = ("pgd", "fgsm_rs", "free")


@keras.utils.register_keras_serializable(package="tfsafe")
class AdversarialModel(keras.Model):
    """Wraps a classifier so that ``fit`` trains it on PGD examples crafted in every step.

    Madry (``loss="madry"``): ``(1 - adv_weight) * CE(clean) + adv_weight * CE(PGD)``.
    TRADES (``loss="trades"``): ``CE(clean) + trades_beta * KL(p(clean) || p(PGD))``, with the
    attack maximizing the KL term. The loss is always computed on logits (a final softmax is
    bypassed), so ``compile`` needs only the optimizer and metrics. The current radius is the
    non-trainable variable ``current_eps`` (see :class:`EpsilonRamp`). Build and compile it inside
    ``strategy.scope()`` to train under ``tf.distribute``.

    ``attack`` picks how the training examples are crafted (Madry loss only for the fast ones):

    - ``"pgd"``: ``steps`` PGD steps from a random start (Madry et al., 2018).
    - ``"fgsm_rs"``: one signed-gradient step of ``fgsm_alpha * eps`` (1.25 eps) from a uniform
      random start, projected back on the ball: about the cost of two forward-backward passes.
    - ``"free"``: each minibatch is replayed ``free_replays`` times; every replay updates the
      weights and takes one ``eps`` signed-gradient step on the perturbation, which is kept in the
      non-trainable variable ``free_delta`` and reused by the next minibatch. Train for about
      ``epochs / free_replays`` epochs to spend what standard training spends.

    The boolean variable ``use_pgd`` (set by :class:`CatastrophicOverfittingGuard`) switches a
    fast model to PGD examples (``steps`` steps) without retracing.

    With ``adv_weight=1`` nothing of the clean batch is trained; its forward pass only feeds the
    clean loss and the compiled metrics, once per minibatch (free training runs it after the
    replays, not in each). ``clean_metrics=False`` skips it: a PGD-7 step gets about 1/25
    cheaper, an FGSM-RS step about 1/7, and the compiled metrics then see the adversarial logits.

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
        attack: ``"pgd"``, ``"fgsm_rs"`` or ``"free"``.
        fgsm_alpha: FGSM-RS step as a multiple of the current eps (Wong et al.: 1.25).
        free_replays: Replays per minibatch of free training (the paper's ``m``).
        clean_metrics: Report the clean loss and compiled metrics on clean inputs (one extra
            forward pass per minibatch when ``adv_weight=1``); ``False`` reports the compiled
            metrics on the adversarial examples and no clean loss.

    Raises:
        InputError: bad eps / steps / norm, unknown ``loss`` or ``attack``, TRADES with a fast
            attack, ``free_replays`` < 1 or a non-positive ``fgsm_alpha``.

    Example:
        >>> adv = AdversarialModel(small_cnn(), eps=0.1, steps=5)
        >>> adv.compile(optimizer="adam", metrics=["accuracy"])
        >>> adv.fit(x, y, epochs=1, verbose=0)  # doctest: +SKIP
    """

    def __init__(self, model, eps, steps=10, step_size=None, adv_weight=0.5, loss="madry", norm="linf",
                 trades_beta=6.0, clip=(0.0, 1.0), attack="pgd", fgsm_alpha=1.25, free_replays=4,
                 clean_metrics=True, **kwargs):
        super().__init__(**kwargs)
        check_attack_args(eps, steps, norm, "ce", step_size)
        if loss not in ("madry", "trades"):
            raise InputError(f"loss must be 'madry' or 'trades', got {loss!r}.")
        if attack not in TRAIN_ATTACKS:
            raise InputError(f"attack must be one of {TRAIN_ATTACKS}, got {attack!r}.")
        if attack != "pgd" and loss != "madry":
            raise InputError(f"attack={attack!r} trains with loss='madry' only; use attack='pgd' for TRADES.")
        if int(free_replays) < 1 or not float(fgsm_alpha) > 0:
            raise InputError(f"free_replays must be >= 1 and fgsm_alpha > 0, got {free_replays}, {fgsm_alpha}.")
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
        self.attack = attack
        self.fgsm_alpha = float(fgsm_alpha)
        self.free_replays = int(free_replays)
        self.clean_metrics = bool(clean_metrics)
        self.current_eps = tf.Variable(self.eps, trainable=False, dtype=tf.float32, name="current_eps")
        self.use_pgd = tf.Variable(False, trainable=False, dtype=tf.bool, name="use_pgd")
        self.free_delta = None
        if attack == "free":
            # One perturbation per replica (ON_READ), batch dimension free: a smaller last batch
            # uses and updates only its first rows.
            shape = [None, *model.input_shape[1:]]
            self.free_delta = tf.Variable(tf.zeros([0, *shape[1:]]), shape=tf.TensorShape(shape), trainable=False,
                                          name="free_delta", synchronization=tf.VariableSynchronization.ON_READ,
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._logits = logits_model(model)
        self._softmax_out = ends_with_softmax(model)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "clean_loss", "adv_loss")}
        self._adv_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values()) + [self._adv_accuracy] + super().metrics

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        if loss is not None:
            warnings.warn("AdversarialModel computes its own loss (cross-entropy on logits); the `loss` "
                          "passed to compile() is ignored.", stacklevel=2)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _pgd(self, x, y):
        return pgd_perturb(self._logits, x, y, self.current_eps, self.steps, self.step_size, self.norm, clip=self.clip)

    def _craft(self, x, y):
        if self.loss_type == "madry" and self.attack == "fgsm_rs":
            def fast():
                return pgd_perturb(self._logits, x, y, self.current_eps, 1, self.fgsm_alpha * self.current_eps,
                                   self.norm, random_start=True, clip=self.clip)

            return tf.cond(self.use_pgd, lambda: self._pgd(x, y), fast)
        if self.loss_type == "madry":
            return self._pgd(x, y)
        clean_p = tf.stop_gradient(tf.nn.softmax(self._logits(x, training=False)))

        def kl(_, logits):
            return tf.reduce_sum(clean_p * (tf.math.log(clean_p + 1e-12) - tf.nn.log_softmax(logits)), -1)

        # TRADES starts close to x; a full uniform start leaves the KL gradient at zero.
        start = x + 0.001 * tf.random.normal(tf.shape(x))
        start = start if self.clip is None else tf.clip_by_value(start, *self.clip)
        x_adv = pgd_perturb(self._logits, start, y, self.current_eps, self.steps, self.step_size, self.norm,
                            random_start=False, clip=None, loss=kl)
        delta = tf.clip_by_value(x_adv - x, -self.current_eps, self.current_eps) if self.norm == "linf" else x_adv - x
        return x + delta if self.clip is None else tf.clip_by_value(x + delta, *self.clip)

    def _project(self, x, delta):
        if self.norm == "linf":
            delta = tf.clip_by_value(delta, -self.current_eps, self.current_eps)
        else:
            norms = tf.sqrt(tf.reduce_sum(tf.reshape(delta * delta, [tf.shape(delta)[0], -1]), 1) + 1e-12)
            scale = tf.minimum(1.0, self.current_eps / norms)
            delta = delta * tf.reshape(scale, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
        return delta if self.clip is None else tf.clip_by_value(x + delta, *self.clip) - x

    def _pure_adversarial(self):
        return self.loss_type == "madry" and self.adv_weight == 1.0

    def _metric_logits(self, x):
        """Clean logits for the metrics only (off the tape), or ``None`` when they are skipped."""
        return tf.stop_gradient(self._logits(x, training=False)) if self.clean_metrics else None

    def _loss(self, x, x_adv, y, sample_weight, clean_pass=True):
        """Madry loss (and its parts) of ``x_adv``; run inside the caller's tape.

        ``clean_pass=False`` leaves out the clean forward pass where it is not trained
        (``adv_weight=1``): the clean loss and logits are then ``None``.
        """
        clean_logits = clean_loss = None
        if not self._pure_adversarial():
            clean_logits = self._logits(x, training=True)
        elif clean_pass:  # the clean pass only feeds the metrics: keep it off the tape
            clean_logits = self._metric_logits(x)
        adv_logits = self._logits(x_adv, training=True)
        if clean_logits is not None:
            clean_loss = weighted_softmax_cross_entropy(y, clean_logits, sample_weight)
        adv_loss = weighted_softmax_cross_entropy(y, adv_logits, sample_weight)
        loss = adv_loss if clean_loss is None else (1.0 - self.adv_weight) * clean_loss + self.adv_weight * adv_loss
        if self.model.losses:
            loss += tf.add_n(self.model.losses)
        return loss, clean_loss, adv_loss, clean_logits, adv_logits

    def _free_step(self, x, y, sample_weight):
        """Free training (Shafahi et al., 2019): ``free_replays`` weight + perturbation updates."""
        n = tf.shape(x)[0]
        stored = self.free_delta.read_value()
        take = tf.minimum(n, tf.shape(stored)[0])
        delta = tf.concat([stored[:take], tf.zeros_like(x[take:])], 0)
        delta = tf.cond(self.use_pgd, lambda: tf.stop_gradient(self._pgd(x, y)) - x, lambda: delta)
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        variables = self.model.trainable_variables
        for _ in range(self.free_replays):
            delta = self._project(x, delta)
            x_adv = x + delta
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss, clean_loss, adv_loss, clean_logits, adv_logits = self._loss(
                    x, x_adv, y, sample_weight, clean_pass=False)
                scaled = loss / replicas
            grads = tape.gradient(scaled, variables + [x_adv])
            self.optimizer.apply_gradients(zip(grads[:-1], variables))
            g = grads[-1]
            if self.norm == "linf":
                step = tf.sign(g)
            else:
                norms = tf.sqrt(tf.reduce_sum(tf.reshape(g * g, [n, -1]), 1) + 1e-12)
                step = g / tf.reshape(norms, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
            delta = tf.stop_gradient(delta + self.current_eps * step)
        delta = self._project(x, delta)
        self.free_delta.assign(tf.concat([delta, stored[take:]], 0))
        if self._pure_adversarial():  # metrics once per minibatch, after the replays
            clean_logits = self._metric_logits(x)
            clean_loss = None if clean_logits is None else weighted_softmax_cross_entropy(y, clean_logits,
                                                                                          sample_weight)
        return loss, clean_loss, adv_loss, clean_logits, adv_logits

    def _finish(self, y, sample_weight, loss, clean_loss, adv_loss, clean_logits, adv_logits):
        for name, value in (("loss", loss), ("clean_loss", clean_loss), ("adv_loss", adv_loss)):
            if value is not None:
                self._trackers[name].update_state(value)
        self._adv_accuracy.update_state(y, adv_logits, sample_weight)
        logits = adv_logits if clean_logits is None else clean_logits
        outputs = tf.nn.softmax(logits) if self._softmax_out else logits
        self.compiled_metrics.update_state(y, outputs, sample_weight)
        skipped = {"clean_loss"} if clean_loss is None else set()
        return {m.name: m.result() for m in self.metrics if m.name not in skipped}

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        if self.attack == "free":
            return self._finish(y, sample_weight, *self._free_step(tf.cast(x, tf.float32), y, sample_weight))
        x_adv = tf.stop_gradient(self._craft(x, y))
        with tf.GradientTape() as tape:
            if self.loss_type == "madry":
                loss, clean_loss, adv_loss, clean_logits, adv_logits = self._loss(x, x_adv, y, sample_weight)
            else:
                clean_logits = self._logits(x, training=True)
                adv_logits = self._logits(x_adv, training=True)
                clean_loss = weighted_softmax_cross_entropy(y, clean_logits, sample_weight)
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
        return self._finish(y, sample_weight, loss, clean_loss, adv_loss, clean_logits, adv_logits)

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
            "norm": self.norm, "trades_beta": self.trades_beta, "clip": self.clip, "attack": self.attack,
            "fgsm_alpha": self.fgsm_alpha, "free_replays": self.free_replays, "clean_metrics": self.clean_metrics,
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


class CatastrophicOverfittingGuard(keras.callbacks.Callback):
    """Measures PGD accuracy on a held-out batch after every epoch; acts when it collapses.

    Fast adversarial training can overfit catastrophically: within an epoch the model learns to
    defeat the one-step attack while PGD accuracy falls to about zero (Wong et al., 2020). When
    the held-out PGD accuracy drops more than ``max_drop`` below its best, the guard either
    switches the model to PGD examples for the rest of training (``action="pgd"``) or stops
    training and restores the weights of the best epoch (``action="stop"``, Wong et al.'s early
    stopping). The history gets ``holdout_pgd_accuracy`` and ``overfitting_guard`` (1 once
    triggered) per epoch; :attr:`triggered_epoch` and :attr:`records` keep the same.

    Args:
        x, y: Held-out batch (not training data), e.g. 256 validation examples.
        eps: Attack radius; default the model's training ``eps``.
        steps, restarts: PGD settings of the check (cheap: 10 steps, 1 start).
        max_drop: Drop from the best accuracy that counts as a collapse (0.2 = 20 points).
        action: ``"pgd"`` (fall back to PGD training) or ``"stop"``.
        restore_best: At the end of training, restore the weights of the epoch with the best
            held-out PGD accuracy even without a collapse (Wong et al.'s early stopping).

    Example:
        >>> guard = CatastrophicOverfittingGuard(x_val[:256], y_val[:256])
        >>> adv.fit(x, y, epochs=10, callbacks=[guard])  # doctest: +SKIP
    """

    def __init__(self, x, y, eps=None, steps=10, restarts=1, max_drop=0.2, action="pgd", batch_size=256,
                 restore_best=False):
        super().__init__()
        if action not in ("pgd", "stop"):
            raise InputError(f"action must be 'pgd' or 'stop', got {action!r}.")
        if not 0.0 < float(max_drop) <= 1.0:
            raise InputError(f"max_drop must be in (0, 1], got {max_drop}.")
        check_attack_args(0.0 if eps is None else eps, steps, "linf", "ce")
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y)
        self.eps, self.steps, self.restarts = eps, int(steps), int(restarts)
        self.max_drop, self.action, self.batch_size = float(max_drop), action, int(batch_size)
        self.restore_best = bool(restore_best)
        self.records, self.triggered_epoch, self.best, self._best_weights = [], None, -1.0, None
        self.best_epoch = None

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, AdversarialModel):
            raise InputError("CatastrophicOverfittingGuard works only with an AdversarialModel.")

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        eps = model.eps if self.eps is None else float(self.eps)
        acc = adversarial_accuracy(model.model, self.x, self.y, eps, steps=self.steps, restarts=self.restarts,
                                   norm=model.norm, clip=model.clip, batch_size=self.batch_size)
        collapsed = self.triggered_epoch is None and self.best - acc > self.max_drop
        if acc > self.best:
            self.best, self._best_weights, self.best_epoch = acc, model.get_weights(), epoch
        if collapsed:
            self.triggered_epoch = epoch
            if self.action == "pgd":
                model.use_pgd.assign(True)
            else:
                model.stop_training = True
                model.set_weights(self._best_weights)
        self.records.append({"epoch": epoch, "holdout_pgd_accuracy": acc, "best": self.best,
                             "triggered": collapsed, "action": self.action if collapsed else None})
        if logs is not None:
            logs["holdout_pgd_accuracy"] = acc
            logs["overfitting_guard"] = float(self.triggered_epoch is not None)

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)

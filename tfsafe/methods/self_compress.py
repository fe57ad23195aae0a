"""Safety-driven self-compressing networks: learned bits per channel, a safety set, restores.

The pipeline (:func:`self_compress`):

1. pick a safety set of critical, uncertain and diverse examples with
   :func:`tfsafe.safety.safety_set.select_safety_set` on the float model, from *validation*
   data (or training data) -- never from test data, whose accuracy it would then inflate;
2. wrap Conv2D/Dense/DepthwiseConv2D layers with learnable bit depth and exponent per output
   channel (:func:`tfsafe.compress.quantization.quantize_learnable`);
3. train with ``CE + gamma * Q + lambda * safety CE`` (:class:`SelfCompressingModel`, Model.fit)
   while :class:`SafetyMonitor` measures safety-set accuracy every N steps and, when it falls
   more than a threshold below the *best* accuracy seen so far, restores a fraction of the
   zero-bit channels (comparing with the previous check only, as the public code does, never
   fires on a slow drift);
4. strip: zero-bit channels are removed physically (:func:`tfsafe.compress.strip.strip`).

``lambda = 0`` and ``restore=False`` give the unsafe self-compression baseline.
"""

import dataclasses
import math
import warnings

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.quantization import (
    dead_channels,
    learnable_layers,
    learned_size,
    quant_variables,
    quantize_learnable,
    restore_channels,
)
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError
from tfsafe.methods.base import CompressionMethod, check_choice, check_int, check_number, nonempty
from tfsafe.models import accuracy, logits_model
from tfsafe.objectives import safety_loss, size_penalty, softmax_cross_entropy
from tfsafe.safety.safety_set import choose_safety_set
from tfsafe.safety.tests import SafetyData, run_selection
from tfsafe.validation import check_fraction, check_model, check_xy

__all__ = ["SelfCompress", "SelfCompressingModel", "SafetyMonitor", "SelfCompressResult", "self_compress"]


class SelfCompressingModel(keras.Model):
    """Trains a learnable-bit model on ``CE + gamma * Q + lambda * safety CE`` with ``fit``.

    Each step concatenates a random batch of safety examples to the training batch (one
    forward pass), so the safety term costs ``safety_batch_size`` extra examples per step.
    The weights use the compiled optimizer; bit depths and exponents use ``bits_optimizer``
    (Adam's step size does not depend on the gradient's scale, so the speed at which bits fall
    is set by its learning rate and the tradeoff by ``gamma``).

    Args:
        model: a model from :func:`quantize_learnable` (logits or softmax output).
        gamma: weight of the size penalty Q (bits per weight).
        safety_data: ``(x, y)`` safety set, or None.
        safety_weight: lambda, the weight of the safety-set cross-entropy.
        safety_batch_size: safety examples per step.
        bits_optimizer: optimizer for bit depths and exponents (default Adam(1e-2)).

    Example:
        >>> from tfsafe.models import small_cnn
        >>> trainer = SelfCompressingModel(quantize_learnable(small_cnn()), gamma=0.05)
        >>> trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
        >>> _ = trainer.fit(x, y, epochs=1, verbose=0)  # doctest: +SKIP
    """

    def __init__(self, model, gamma=0.05, safety_data=None, safety_weight=0.0, safety_batch_size=32,
                 bits_optimizer=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.logits = logits_model(model)
        self.gamma = tf.Variable(float(gamma), trainable=False, name="gamma")
        self.safety_weight = tf.Variable(float(safety_weight), trainable=False, name="safety_weight")
        self.safety_batch_size = int(safety_batch_size)
        self.bits_optimizer = bits_optimizer or keras.optimizers.Adam(1e-2)
        self.safety_x = self.safety_y = None
        if safety_data is not None:
            sx, sy = check_xy(model, *safety_data, name="safety")
            self.safety_x, self.safety_y = tf.constant(sx), tf.constant(sy)
        self._quant_ids = {id(v) for layer in learnable_layers(model) for v in quant_variables(layer).values()}
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "ce", "bits", "safety_loss")}
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return list(self.trackers.values()) + [self.accuracy_metric]

    def call(self, inputs, training=False):
        return self.logits(inputs, training=training)

    def _uses_safety(self):
        return self.safety_x is not None and self.safety_batch_size > 0

    def train_step(self, data):
        x, y = data[0], data[1]
        batch = tf.shape(x)[0]
        if self._uses_safety():
            idx = tf.random.uniform([self.safety_batch_size], 0, tf.shape(self.safety_x)[0], dtype=tf.int32)
            x_all = tf.concat([x, tf.gather(self.safety_x, idx)], axis=0)
        else:
            x_all = x
        with tf.GradientTape() as tape:
            logits_all = self.logits(x_all, training=True)
            logits = logits_all[:batch]
            ce = softmax_cross_entropy(y, logits)
            bits = size_penalty(self.model)
            loss = ce + self.gamma * bits
            s_loss = tf.constant(0.0)
            if self._uses_safety():
                s_loss = safety_loss(tf.gather(self.safety_y, idx), logits_all[batch:])
                loss = loss + self.safety_weight * s_loss
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        weight_pairs, bit_pairs = [], []
        for g, v in zip(grads, variables):
            if g is not None:
                (bit_pairs if id(v) in self._quant_ids else weight_pairs).append((g, v))
        self.optimizer.apply_gradients(weight_pairs)
        if bit_pairs:
            self.bits_optimizer.apply_gradients(bit_pairs)
        for name, value in (("loss", loss), ("ce", ce), ("bits", bits), ("safety_loss", s_loss)):
            self.trackers[name].update_state(value)
        self.accuracy_metric.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data[0], data[1]
        logits = self.logits(x, training=False)
        self.trackers["ce"].update_state(softmax_cross_entropy(y, logits))
        self.accuracy_metric.update_state(y, logits)
        return {"ce": self.trackers["ce"].result(), "accuracy": self.accuracy_metric.result()}


class SafetyMonitor(keras.callbacks.Callback):
    """Every ``every`` steps, measure safety-set accuracy; on a drop from the best, restore channels.

    The rule: ``best - accuracy > threshold`` where ``best`` is the highest accuracy seen so
    far (including the check before training), so a slow drift that never drops much between
    two checks still fires. A restoration brings ``ceil(restore_fraction * zero-bit channels)``
    randomly chosen zero-bit channels back at ``restore_bits`` bits (their exponents refitted),
    then waits ``cooldown`` checks before it may fire again. Every check is in ``history`` and
    every restoration in ``restorations`` (both JSON-able lists of dicts).

    Args:
        model: the learnable-bit model being trained.
        safety_data: ``(x, y)`` safety set.
        every: steps between checks.
        threshold: accuracy drop (fraction, e.g. 0.02 = 2 points) that triggers a restoration.
        restore_fraction: fraction of the zero-bit channels to restore.
        restore_bits: bit depth restored channels restart with.
        cooldown: checks to skip after a restoration.
        restore: False measures and logs only (the unsafe baseline).
        seed: seed of the channel choice.
        tests: ``[SafetyTest | (SafetyTest, weight), ...]``: what a check measures, as their
            :func:`~tfsafe.safety.tests.selection_score` on the safety set (``test`` and
            ``safety_set`` of the data) and ``validation``; ``None`` measures safety-set accuracy.
        validation: ``(x, y)`` the tests may also use (e.g. a PGD test's examples); default the
            safety set.

    Example:
        >>> monitor = SafetyMonitor(qmodel, (x_safe, y_safe), every=50, threshold=0.02)  # doctest: +SKIP
        >>> trainer.fit(x, y, callbacks=[monitor])  # doctest: +SKIP
        >>> monitor.restorations[0]["count"]  # doctest: +SKIP
        12
    """

    def __init__(self, model, safety_data, every=50, threshold=0.02, restore_fraction=0.5, restore_bits=2.0,
                 cooldown=1, restore=True, seed=0, tests=None, validation=None):
        super().__init__()
        self.qmodel = model
        self.tests = None if tests is None else [t if isinstance(t, (tuple, list)) else (t, 1.0) for t in tests]
        self.validation = validation
        self.safety_x, self.safety_y = check_xy(model, *safety_data, name="safety")
        if int(every) < 1:
            raise InputError(f"every must be a positive number of steps, got {every!r}.")
        self.every = int(every)
        self.threshold = check_fraction(threshold, "threshold", 0.0, 1.0)
        self.restore_fraction = check_fraction(restore_fraction, "restore_fraction", 0.0, 1.0, include_high=True)
        if not float(restore_bits) > 0:
            raise InputError(f"restore_bits must be positive, got {restore_bits!r}.")
        self.restore_bits = float(restore_bits)
        self.cooldown = int(cooldown)
        self.restore = bool(restore)
        self.rng = np.random.default_rng(seed)
        self.best = None
        self.step = 0
        self._wait = 0
        self.history = []
        self.restorations = []

    def measure(self):
        """Safety-set accuracy of the model now (inference mode), or the tests' selection score."""
        if not self.tests:
            return accuracy(self.qmodel, self.safety_x, self.safety_y)
        safety = (self.safety_x, self.safety_y)
        data = SafetyData(test=safety, safety_set=safety, validation=self.validation or safety)
        _, score = run_selection(self.qmodel, self.tests, data)
        return float(score) if score is not None else accuracy(self.qmodel, self.safety_x, self.safety_y)

    def zero_bit_channels(self):
        """``[(layer, flat channel index), ...]`` of every zero-bit channel."""
        layers = learnable_layers(self.qmodel)
        return [(layer, int(c)) for layer in layers for c in np.flatnonzero(dead_channels(layer))]

    def check(self, safety_accuracy=None, allow_restore=True):
        """Apply the rule once (measuring unless ``safety_accuracy`` is given); returns the record."""
        acc = self.measure() if safety_accuracy is None else float(safety_accuracy)
        best = acc if self.best is None else max(self.best, acc)
        drop = best - acc
        zero = self.zero_bit_channels()
        record = {"step": self.step, "safety_accuracy": acc, "best": best, "drop": drop,
                  "zero_bit_channels": len(zero), "restored": 0}
        if self._wait > 0:
            self._wait -= 1
        elif self.restore and allow_restore and drop > self.threshold and zero:
            count = max(1, math.ceil(self.restore_fraction * len(zero))) if self.restore_fraction > 0 else 0
            chosen = sorted(self.rng.choice(len(zero), size=count, replace=False).tolist()) if count else []
            by_layer = {}
            for i in chosen:
                layer, channel = zero[i]
                by_layer.setdefault(layer.name, (layer, []))[1].append(channel)
            for layer, channels in by_layer.values():
                restore_channels(layer, channels, bits=self.restore_bits)
            record["restored"] = len(chosen)
            self.restorations.append({
                "step": self.step, "safety_accuracy": acc, "best": best, "drop": drop, "count": len(chosen),
                "bits": self.restore_bits,
                "channels": [{"layer": zero[i][0].name, "channel": zero[i][1]} for i in chosen],
            })
            self._wait = self.cooldown
        self.best = best
        self.history.append(record)
        return record

    def on_train_begin(self, logs=None):
        if self.best is None:
            self.check()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.check()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["safety_accuracy"] = self.history[-1]["safety_accuracy"]

    def to_dict(self):
        return {"every": self.every, "threshold": self.threshold, "restore_fraction": self.restore_fraction,
                "restore_bits": self.restore_bits, "best": self.best, "history": self.history,
                "restorations": self.restorations}


@dataclasses.dataclass
class SelfCompressResult:
    """What :func:`self_compress` returns.

    Attributes:
        model: the trained learnable-bit model (TF-MOT wrappers; saves and loads as is).
        stripped: plain Keras model with zero-bit channels removed and weights on the grid.
        safety_indices: indices of the safety set into the pool it came from.
        safety_source: ``"validation"``, ``"train"`` or ``"given"``.
        size: :func:`tfsafe.compress.quantization.learned_size` of ``model``.
        monitor: :meth:`SafetyMonitor.to_dict` (checks and restorations).
        history: ``fit`` history (per-epoch loss, ce, bits, safety_loss, accuracy...).
    """

    model: object
    stripped: object
    safety_indices: np.ndarray
    safety_source: str
    size: dict
    monitor: dict
    history: dict

    def to_dict(self):
        return {"safety_indices": self.safety_indices, "safety_source": self.safety_source, "size": self.size,
                "monitor": self.monitor, "history": self.history}


def _initial_bits(init_bits, max_bits):
    """``init_bits`` checked against the ceiling ``max_bits`` (``None`` starts at the ceiling)."""
    if init_bits is None:
        return max_bits
    init_bits = check_number(init_bits, "init_bits", strict=True)
    if init_bits > max_bits:
        raise InputError(f"init_bits ({init_bits:g}) must be <= max_bits ({max_bits:g}); lower init_bits or leave "
                         "it out (None starts every channel at max_bits).")
    return init_bits


def _train(model, x, y, validation, safety, *, init_bits, max_bits, gamma, safety_weight, safety_batch_size,
           epochs, batch_size, learning_rate, bits_learning_rate, monitor_every, threshold, restore_fraction,
           restore_bits, cooldown, restore, seed, tests, callbacks, verbose):
    """Quantize ``model`` with learnable bits and train it; returns ``(qmodel, monitor, fit history)``."""
    qmodel = quantize_learnable(model, init_bits=init_bits, max_bits=max_bits)
    trainer = SelfCompressingModel(
        qmodel, gamma=gamma, safety_data=safety, safety_weight=safety_weight, safety_batch_size=safety_batch_size,
        bits_optimizer=keras.optimizers.Adam(bits_learning_rate))
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    monitor = SafetyMonitor(qmodel, safety, every=monitor_every, threshold=threshold,
                            restore_fraction=restore_fraction, restore_bits=restore_bits, cooldown=cooldown,
                            restore=restore, seed=seed, tests=tests, validation=validation)
    fit = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=validation,
                      callbacks=[monitor, *callbacks], verbose=verbose)
    monitor.check(allow_restore=False)  # the final state, after the last step
    return qmodel, monitor, {k: [float(v) for v in vals] for k, vals in fit.history.items()}


class SelfCompress(CompressionMethod):
    """Safety-driven self-compression as a compression method (see the module docstring).

    Stages: ``safety_set`` (select it from validation data with the float model) and ``train``
    (learnable bits per channel, ``CE + gamma Q + lambda safety CE``, :class:`SafetyMonitor`).

    Args:
        gamma: weight of the size penalty Q (learned bits per weight).
        safety_weight: lambda, weight of the safety-set cross-entropy (0 disables it).
        safety_size: examples in the safety set (capped at the pool's size).
        init_bits: initial bit depth of every channel (``None``: ``max_bits``).
        max_bits: the bit-depth ceiling: bits stay in ``[0, max_bits]`` during training (and
            restorations), so every channel fits that storage width. ``4`` is the deploy target
            of ``to_tflite(..., mode="learned")``: every Conv2D / Dense kernel is then stored at 4
            bits, exactly on its learned grid; ``8`` (every channel fits int8) gives a learned
            file no smaller than the int8 one (a ``.tflite`` layer has one storage width, and
            one 8-bit channel makes the whole layer 8 bits).
        epochs: training epochs.
        batch_size: training batch size.
        learning_rate: Adam learning rate of the weights.
        bits_learning_rate: Adam learning rate of bit depths and exponents.
        monitor_every: steps between safety checks.
        threshold: drop below the best check (fraction) that triggers a restoration.
        restore_fraction: share of the zero-bit channels a restoration brings back.
        restore_bits: bit depth restored channels restart with.
        cooldown: checks skipped after a restoration.
        restore: ``False`` never restores (with ``safety_weight=0``: the unsafe baseline).
        safety_batch_size: safety examples added to every training batch.
        safety_from: ``"validation"`` or ``"train"``: the safety set's pool (default validation,
            the members when the validation split is empty).
        safety_indices: explicit indices into that pool instead of a selection.
        tests: what a safety check measures, ``[SafetyTest | (test, weight), ...]`` combined by
            ``selection_score`` on the safety set; ``None`` is safety-set accuracy.

    Raises:
        InputError: a value outside its range (one line naming it).
    """

    name = "self_compress"
    stages = ("safety_set", "train")

    def __init__(self, gamma=0.1, safety_weight=1.0, safety_size=100, init_bits=None, max_bits=8, epochs=30,
                 batch_size=32, learning_rate=1e-3, bits_learning_rate=1e-2, monitor_every=50, threshold=0.02,
                 restore_fraction=0.5, restore_bits=2.0, cooldown=1, restore=True, safety_batch_size=32,
                 safety_from=None, safety_indices=None, tests=None):
        self.gamma = check_number(gamma, "gamma")
        self.safety_weight = check_number(safety_weight, "safety_weight")
        self.safety_size = check_int(safety_size, "safety_size")
        self.max_bits = check_number(max_bits, "max_bits", strict=True)
        _initial_bits(init_bits, self.max_bits)  # checked now; None (start at max_bits) is kept as given
        self.init_bits = init_bits
        self.epochs = check_int(epochs, "epochs")
        self.batch_size = check_int(batch_size, "batch_size")
        self.learning_rate = check_number(learning_rate, "learning_rate", strict=True)
        self.bits_learning_rate = check_number(bits_learning_rate, "bits_learning_rate", strict=True)
        self.monitor_every = check_int(monitor_every, "monitor_every")
        self.threshold = check_fraction(threshold, "threshold", 0.0, 1.0)
        self.restore_fraction = check_fraction(restore_fraction, "restore_fraction", 0.0, 1.0, include_high=True)
        self.restore_bits = check_number(restore_bits, "restore_bits", strict=True)
        self.cooldown = check_int(cooldown, "cooldown", 0)
        self.restore = bool(restore)
        self.safety_batch_size = check_int(safety_batch_size, "safety_batch_size", 0)
        self.safety_from = None if safety_from is None else check_choice(safety_from, "safety_from",
                                                                         ("validation", "train"))
        self.safety_indices = None if safety_indices is None else [int(i) for i in safety_indices]
        self.tests = None if tests is None else self._selection_tests(tests)

    def _stage_safety_set(self, run):
        validation = run.validation if nonempty(run.validation) else None
        indices, source, _ = choose_safety_set(run.models["input"], run.train, validation, self.safety_size,
                                               self.safety_indices, self.safety_from, run.seed)
        run.state["info"].update(safety_indices=indices.tolist(), safety_source=source)

    def _stage_train(self, run):
        info = run.state["info"]
        validation = run.validation if nonempty(run.validation) else None
        pool = run.train if info["safety_source"].endswith("train") or validation is None else validation
        indices = np.asarray(info["safety_indices"], np.int64)
        safety = (pool[0][indices], pool[1][indices])
        qmodel, monitor, history = _train(
            run.models["input"], *run.train, validation, safety,
            init_bits=_initial_bits(self.init_bits, self.max_bits), max_bits=self.max_bits, gamma=self.gamma,
            safety_weight=self.safety_weight, safety_batch_size=self.safety_batch_size,
            epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            bits_learning_rate=self.bits_learning_rate, monitor_every=self.monitor_every, threshold=self.threshold,
            restore_fraction=self.restore_fraction, restore_bits=self.restore_bits, cooldown=self.cooldown,
            restore=self.restore, seed=run.seed, tests=self.tests, callbacks=run.callbacks, verbose=run.verbose)
        run.models["model"] = qmodel
        run.state["history"]["train"] = history
        summary = monitor.to_dict()
        info.update(size=learned_size(qmodel), monitor={k: v for k, v in summary.items() if k != "history"})
        run.state["selection"] = {
            "score": "safety-set accuracy" if self.tests is None else "selection_score of the tests on the safety set",
            "tests": ([{"name": "safety_set", "weight": 1.0}] if self.tests is None
                      else [{"name": t.name, "weight": w} for t, w in self.tests]),
            "checks": summary["history"], "kept": "final", "early": False,
            "restorations": len(summary["restorations"]),
        }


def self_compress(model, x, y, validation_data=None, *, safety_size=200, safety_indices=None, safety_from=None,
                  init_bits=None, max_bits=8, gamma=0.05, safety_weight=1.0, safety_batch_size=32, epochs=5,
                  batch_size=128, learning_rate=1e-3, bits_learning_rate=1e-2, monitor_every=50, threshold=0.02,
                  restore_fraction=0.5, restore_bits=2.0, cooldown=1, restore=True, seed=0, callbacks=(),
                  verbose=0):
    """Deprecated: use ``SelfCompress(...).compress(model, splits)``. Same arguments as 0.x.

    Args:
        model: trained tf_keras (or Keras 3) classifier, logits or softmax output.
        x, y: training data.
        validation_data: ``(x_val, y_val)``; the safety set is drawn from it when given.
        safety_size, safety_indices, safety_from: see :func:`tfsafe.safety.safety_set.choose_safety_set`.
        init_bits, max_bits, gamma, safety_weight, safety_batch_size, epochs, batch_size,
        learning_rate, bits_learning_rate, monitor_every, threshold, restore_fraction,
        restore_bits, cooldown, restore: see :class:`SelfCompress`.
        seed: seeds TensorFlow, the safety set and the monitor.
        callbacks: more Keras callbacks for ``fit``.
        verbose: ``fit`` verbosity.

    Returns:
        :class:`SelfCompressResult`.

    Raises:
        InputError: bad data, bits, weights or safety indices.
        UnsupportedModelError: a model without quantizable layers or a subclassed model.
    """
    warnings.warn("self_compress() is deprecated; use tfsafe.methods.get('self_compress', ...).compress(model, "
                  "splits).", DeprecationWarning, stacklevel=2)
    model = check_model(model)
    x, y = check_xy(model, x, y, name="training")
    if validation_data is not None:
        validation_data = check_xy(model, *validation_data, name="validation")
    for name, value in (("gamma", gamma), ("safety_weight", safety_weight)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a non-negative number, got {value!r}.")
    init_bits = _initial_bits(init_bits, check_number(max_bits, "max_bits", strict=True))
    keras.utils.set_random_seed(seed)
    indices, source, safety = choose_safety_set(model, (x, y), validation_data, safety_size, safety_indices,
                                                safety_from, seed)
    qmodel, monitor, history = _train(
        model, x, y, validation_data, safety, init_bits=init_bits, max_bits=max_bits, gamma=gamma,
        safety_weight=safety_weight, safety_batch_size=safety_batch_size, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, bits_learning_rate=bits_learning_rate, monitor_every=monitor_every,
        threshold=threshold, restore_fraction=restore_fraction, restore_bits=restore_bits, cooldown=cooldown,
        restore=restore, seed=seed, tests=None, callbacks=callbacks, verbose=verbose)
    return SelfCompressResult(model=qmodel, stripped=strip(qmodel), safety_indices=indices, safety_source=source,
                              size=learned_size(qmodel), monitor=monitor.to_dict(), history=history)

"""ATMC: adversarially trained model compression (Gui et al., NeurIPS 2019), solved with ADMM.

Each compressed layer is factorized as ``W = (B + I) A + C``
(:mod:`tfsafe.compress.factorization`). Training minimizes

    0.5 CE(clean) + 0.5 CE(PGD) + (rho / 2) sum_i ||theta_i - Z_i + U_i||^2

over the factors ``theta = {A, B, C}`` of every layer, where

- every batch, after the optimizer step, ``theta`` is projected onto the budget: the ``k``
  largest magnitudes over all factors of all layers are kept (global top-k), with a per-layer
  floor so that no layer is emptied (:func:`topk_masks`);
- every ``N`` batches (:class:`ADMMUpdate`), ``Z = kmeans(theta + U)`` on the support of
  ``theta`` with ``2^bits`` non-zero centres and a fixed zero per tensor
  (:func:`kmeans_quantize`), then ``U += theta - Z``, and ``rho`` grows on a schedule;
- at the end the model is hard-projected (prune to ``k``, snap every factor onto its
  k-means codebook), and :class:`BestProjectedCheckpoint` keeps the projected model with the
  best validation PGD accuracy.

``bits=32`` skips quantization (ATMC-32bit); ``budget=None`` skips pruning. The same
:class:`ATMCModel` trains the paper's baselines (see :mod:`tfsafe.methods.atmc_baselines`).
"""

import dataclasses

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.factorization import check_bits, factorize, frozen_kernels, matrix_layers
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.objectives import admm_penalty, weighted_softmax_cross_entropy
from tfsafe.safety.adversarial import pgd_perturb
from tfsafe.safety.adversarial_training import AdversarialModel, EpsilonRamp
from tfsafe.safety.robust_accuracy import adversarial_accuracy

__all__ = [
    "ATMCModel", "ADMMUpdate", "BestProjectedCheckpoint", "ATMCResult", "atmc_compress",
    "compressible_groups", "topk_masks", "kmeans_quantize", "budget_for_ratio",
]


# ---------------------------------------------------------------------------------------------
# Which tensors are compressed


def compressible_groups(model):
    """``[(layer, [(name, variable), ...]), ...]``: what the budget and quantizer act on.

    Factorized / low-rank layers contribute their factors; a model without any contributes the
    kernels of its plain Dense and Conv2D layers (for the NAP / AP baselines).
    """
    groups = [(layer, layer.factors()) for layer in matrix_layers(model)]
    if groups:
        return groups
    plain = [(layer, [("kernel", layer.kernel)]) for layer in model.layers
             if type(layer) in (keras.layers.Dense, keras.layers.Conv2D)]
    if not plain:
        raise UnsupportedModelError(
            f"Model '{model.name}' has no Dense/Conv2D or factorized layer to compress; "
            "call tfsafe.compress.factorization.factorize(model) on a model with such layers.")
    return plain


def _dense_size(layer):
    """Entries of the layer's weight matrix W (out x fan_in): the floor is a fraction of it."""
    if hasattr(layer, "fan_in"):
        return layer.out_dim * layer.fan_in
    return int(np.prod(layer.kernel.shape))


def _floors(groups, min_layer_fraction):
    return [max(1, int(np.ceil(min_layer_fraction * _dense_size(layer)))) for layer, _ in groups]


# ---------------------------------------------------------------------------------------------
# Global top-k projection


def _topk_indices(values, k, hint=None):
    """Indices of the ``k`` largest entries of 1-D ``values`` (exact; ``hint`` only speeds it up).

    When at least ``k`` entries reach ``hint``, the top-k lies among them, so top_k runs on
    that much smaller candidate set.
    """
    if hint is None:
        return tf.math.top_k(values, k, sorted=False).indices

    def fast():
        candidates = tf.where(values >= hint)[:, 0]
        best = tf.math.top_k(tf.gather(values, candidates), k, sorted=False).indices
        return tf.cast(tf.gather(candidates, best), tf.int32)

    def full():
        return tf.math.top_k(values, k, sorted=False).indices

    enough = tf.reduce_sum(tf.cast(values >= hint, tf.int32)) >= k
    return tf.cond(enough, fast, full)


def topk_masks(magnitudes, k, floors, hint=None):
    """0/1 masks keeping exactly ``k`` entries: each layer's ``floors[l]`` largest, then the global largest.

    Args:
        magnitudes: One 1-D tensor of absolute values per layer (all factors concatenated).
        k: Total entries to keep (``sum(floors) <= k <= total size``).
        floors: Entries every layer keeps at least.
        hint: Optional lower bound guess of the k-th largest magnitude (speed only).

    Returns:
        A list of float32 masks shaped like ``magnitudes``.

    Example:
        >>> [m.numpy().tolist() for m in topk_masks([tf.constant([3., 1.]), tf.constant([.1, .2])], 2, [1, 1])]
        [[1.0, 0.0], [0.0, 1.0]]
    """
    sizes = [int(m.shape[0]) for m in magnitudes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = tf.concat(magnitudes, axis=0)
    total = int(offsets[-1])

    def to_mask(indices):
        return tf.scatter_nd(tf.cast(indices[:, None], tf.int32), tf.ones_like(indices, tf.float32), [total])

    def global_only():
        return to_mask(_topk_indices(flat, k, hint))

    def with_floors():
        floor_idx = tf.concat([_topk_indices(magnitudes[i], floors[i]) + int(offsets[i]) for i in range(len(sizes))], 0)
        floor_mask = to_mask(floor_idx)
        rest = tf.where(floor_mask > 0, -tf.ones_like(flat), flat)
        extra = k - int(sum(floors))
        return floor_mask + (to_mask(_topk_indices(rest, extra)) if extra > 0 else 0.0)

    mask = global_only()
    # The global top-k already holds every layer's own top-`floor` when it keeps >= floor of each
    # layer; only otherwise is the (slower) floor-first selection needed. Both give the same set.
    counts = tf.stack([tf.reduce_sum(mask[int(offsets[i]):int(offsets[i + 1])]) for i in range(len(sizes))])
    starved = tf.reduce_any(counts < tf.constant(floors, tf.float32))
    mask = tf.cond(starved, with_floors, lambda: mask)
    return [mask[int(offsets[i]):int(offsets[i + 1])] for i in range(len(sizes))]


# ---------------------------------------------------------------------------------------------
# k-means (Lloyd) quantization with a fixed zero


def kmeans_quantize(values, bits, support=None, init=None, max_iter=30):
    """Snap ``values`` onto ``2^bits`` non-zero k-means centres plus a fixed zero.

    Lloyd's algorithm in 1-D on the entries in ``support`` (default: the non-zero entries);
    entries outside the support become 0, and entries nearest to 0 are pruned too. So the
    result has at most ``2^bits + 1`` distinct values, zero included.

    Args:
        values: Array to quantize.
        bits: 1..8.
        support: Boolean array of entries allowed to be non-zero (e.g. the pruning mask).
        init: Optional starting centres (e.g. the previous codebook); default: quantiles.
        max_iter: Lloyd iterations at most (stops earlier when assignments settle).

    Returns:
        ``(quantized, centres)``: an array shaped like ``values`` and the non-zero centres.

    Example:
        >>> q, c = kmeans_quantize(np.array([0.0, 1.0, 1.1, -2.0, -2.1]), bits=1)
        >>> len(np.unique(q)) <= 3 and q[0] == 0.0
        True
    """
    bits = check_bits(bits)
    if bits == 32:
        raise InputError("kmeans_quantize needs bits in 1..8; bits=32 means no quantization.")
    values = np.asarray(values, np.float32)
    support = values != 0 if support is None else np.asarray(support, bool)
    if support.shape != values.shape:
        raise InputError(f"support has shape {support.shape} but values have shape {values.shape}.")
    out = np.zeros_like(values)
    data = values[support].astype(np.float64)
    n_centres = 2 ** bits
    distinct = np.unique(data[data != 0])
    if distinct.size <= n_centres:
        out[support] = data
        return out, distinct.astype(np.float32)
    if init is not None and np.size(init) == n_centres:
        centres = np.sort(np.asarray(init, np.float64))
    else:
        centres = np.quantile(data, (np.arange(n_centres) + 0.5) / n_centres)
    assignment = None
    for _ in range(max_iter):
        table = np.sort(np.concatenate([centres, [0.0]]))
        nearest = _nearest(data, table)
        if assignment is not None and np.array_equal(nearest, assignment):
            break
        assignment = nearest
        sums = np.bincount(assignment, weights=data, minlength=table.size)
        counts = np.bincount(assignment, minlength=table.size)
        zero_slot = int(np.searchsorted(table, 0.0))
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), table)
        centres = np.delete(updated, zero_slot)  # zero is fixed, never moved
    table = np.sort(np.concatenate([centres, [0.0]]))
    out[support] = table[_nearest(data, table)]
    return out, np.sort(centres).astype(np.float32)


def _nearest(data, table):
    """Index of the nearest entry of the sorted ``table`` for each value of ``data``."""
    cuts = (table[1:] + table[:-1]) / 2
    return np.searchsorted(cuts, data)


# ---------------------------------------------------------------------------------------------
# Budget helper


def budget_for_ratio(model, ratio, bits, reference=None):
    """The largest non-zero budget ``k`` whose size is at most ``ratio`` of the dense float32 model.

    Size is counted as in :mod:`tfsafe.metrics`: ``k * bits`` for the compressed factors, 32
    bits for every value outside them (biases, other layers) and, below 32 bits, a float32
    codebook entry per distinct non-zero of each tensor, bounded by ``min(2^bits, tensor size)``
    per tensor and by ``k`` in total (every codebook entry is used by a non-zero).

    Args:
        model: The (factorized) model to compress.
        ratio: Target ``compressed bits / (dense params x 32)``.
        bits: 1..8 or 32.
        reference: The dense model (default: ``model`` stripped back to plain layers).

    Example:
        >>> budget_for_ratio(factorize(lenet()), 0.05, 8, reference=lenet())  # doctest: +SKIP
        77834
    """
    from tfsafe.compress.strip import strip  # noqa: PLC0415

    bits = check_bits(bits)
    reference = strip(model) if reference is None else reference
    dense_bits = reference.count_params() * 32
    groups = compressible_groups(model)
    compressed = {id(var) for _, factors in groups for _, var in factors}
    fixed_bits = 32 * sum(int(np.prod(w.shape)) for w in model.weights if id(w) not in compressed)
    room = float(ratio) * dense_bits - fixed_bits
    if bits == 32:
        k = int(room // 32)
    else:
        entries = sum(min(2 ** bits, int(np.prod(var.shape))) for _, factors in groups for _, var in factors)
        # k <= entries: every non-zero may need its own codebook entry; otherwise all entries are paid.
        k = int(room // (bits + 32))
        if k > entries:
            k = max(entries, int((room - 32 * entries) // bits))
    if k < 1:
        raise InputError(f"A compression ratio of {ratio} at {bits} bits leaves no room for weights "
                         f"(biases and other layers take {fixed_bits} of {dense_bits} bits).")
    return k


# ---------------------------------------------------------------------------------------------
# The training wrapper


@keras.utils.register_keras_serializable(package="tfsafe")
class ATMCModel(AdversarialModel):
    """Adversarial training with a global non-zero budget and k-means quantization through ADMM.

    Wraps ``model`` (usually from :func:`~tfsafe.compress.factorization.factorize`); ``fit``
    trains it in place. Use with :class:`tfsafe.safety.adversarial_training.EpsilonRamp`,
    :class:`ADMMUpdate` and :class:`BestProjectedCheckpoint`, or call :func:`atmc_compress`.

    Args:
        model: The classifier (logits or softmax output).
        eps: Linf PGD radius for training.
        steps: PGD steps per batch.
        budget: Total non-zeros ``k`` over all compressed tensors, or ``None`` (no pruning).
        bits: 1..8 (k-means codebook of ``2^bits`` values + zero per tensor, via ADMM) or 32.
        adv_weight: Weight of CE(PGD); ``0`` trains on clean data only (no attack crafted).
        rho: Initial ADMM penalty weight.
        min_layer_fraction: Per-layer floor: every layer keeps at least this fraction of its
            dense matrix size (and at least 1 entry).
        fixed_mask: Prune once (at the first step) and keep that mask (one-shot pruning +
            fine-tuning, the AP / NAP baselines) instead of re-projecting every batch.
        step_size: PGD step; default ``1.25 * eps / steps`` of the current eps (ATMC's code).

    Example:
        >>> net = factorize(small_cnn())
        >>> atmc = ATMCModel(net, eps=0.1, steps=3, budget=2000, bits=4)
        >>> atmc.compile(optimizer="adam")
        >>> atmc.fit(x, y, epochs=1, callbacks=[ADMMUpdate(every=10)])  # doctest: +SKIP
    """

    def __init__(self, model, eps, steps=10, budget=None, bits=32, adv_weight=0.5, rho=0.1,
                 min_layer_fraction=0.01, fixed_mask=False, step_size=None, **kwargs):
        super().__init__(model, eps, steps=steps, step_size=step_size, adv_weight=adv_weight, **kwargs)
        self.budget = None if budget is None else _check_budget(budget)
        self.bits = check_bits(bits)
        self.rho = float(rho)
        self.min_layer_fraction = float(min_layer_fraction)
        self.fixed_mask = bool(fixed_mask)
        if not self.rho > 0:
            raise InputError(f"rho must be > 0, got {rho}.")
        if not 0.0 <= self.min_layer_fraction <= 1.0:
            raise InputError(f"min_layer_fraction must be in [0, 1], got {min_layer_fraction}.")
        self.groups = compressible_groups(model)
        self.floors = _floors(self.groups, self.min_layer_fraction)
        if self.bits < 32 and not matrix_layers(model):
            raise InputError("bits < 32 needs factorized layers (they record their bits for size accounting); "
                             "call tfsafe.compress.factorization.factorize(model) first.")
        total = sum(int(np.prod(v.shape)) for _, factors in self.groups for _, v in factors)
        if self.budget is not None:
            if self.budget > total:
                raise InputError(f"budget {self.budget} exceeds the {total} compressible values of the model; "
                                 f"use a budget of at most {total} (or None for no pruning).")
            if self.budget < sum(self.floors):
                raise InputError(
                    f"budget {self.budget} is below the per-layer floors ({sum(self.floors)} = "
                    f"min_layer_fraction {self.min_layer_fraction} of each layer); raise the budget or lower "
                    "min_layer_fraction.")
        self.variables_ = [v for _, factors in self.groups for _, v in factors]
        self.current_rho = tf.Variable(self.rho, trainable=False, dtype=tf.float32, name="rho")
        self.threshold = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="kth_magnitude")
        self.masks = [tf.Variable(tf.ones_like(v), trainable=False, name=f"mask_{i}")
                      for i, v in enumerate(self.variables_)] if self.fixed_mask else []
        self.mask_ready = tf.Variable(False, trainable=False, name="mask_ready")
        quantized = self.variables_ if self.bits < 32 else []
        self.Z = [tf.Variable(v, trainable=False, name=f"Z_{i}") for i, v in enumerate(quantized)]
        self.U = [tf.Variable(tf.zeros_like(v), trainable=False, name=f"U_{i}") for i, v in enumerate(quantized)]
        self.codebooks = [None] * len(self.variables_)
        # The logits view, softmax flag, loss trackers and adversarial accuracy come from
        # AdversarialModel (its test_step is used as is); ATMC adds the ADMM penalty.
        self._trackers["admm_penalty"] = keras.metrics.Mean(name="admm_penalty")

    @property
    def metrics(self):
        return list(self._trackers.values()) + [self._adv_accuracy] + self.compiled_metrics.metrics

    # -- projection ---------------------------------------------------------------------------

    def _layer_magnitudes(self):
        return [tf.concat([tf.reshape(tf.abs(v), [-1]) for _, v in factors], 0) for _, factors in self.groups]

    def _assign_masks(self, layer_masks):
        for (_, factors), mask in zip(self.groups, layer_masks):
            start = 0
            for _, var in factors:
                size = int(np.prod(var.shape))
                yield var, tf.reshape(mask[start:start + size], var.shape)
                start += size

    def _compute_masks(self):
        magnitudes = self._layer_magnitudes()
        layer_masks = topk_masks(magnitudes, self.budget, self.floors, hint=0.5 * self.threshold)
        kept = tf.concat([tf.boolean_mask(m, mask > 0) for m, mask in zip(magnitudes, layer_masks)], 0)
        self.threshold.assign(tf.reduce_min(kept))
        return list(self._assign_masks(layer_masks))

    def project(self):
        """Keep the ``budget`` largest magnitudes (per-layer floors first); zero the rest."""
        if self.budget is None:
            return
        if not self.fixed_mask:
            for var, mask in self._compute_masks():
                var.assign(var * mask)
            return

        def refresh():
            for (_, mask), store in zip(self._compute_masks(), self.masks):
                store.assign(mask)
            self.mask_ready.assign(True)
            return tf.constant(True)

        tf.cond(self.mask_ready, lambda: tf.constant(False), refresh)
        for var, mask in zip(self.variables_, self.masks):
            var.assign(var * mask)

    # -- ADMM ---------------------------------------------------------------------------------

    def _quantize_all(self, sources):
        out = []
        for i, (var, source) in enumerate(zip(self.variables_, sources)):
            support = var.numpy() != 0
            quantized, centres = kmeans_quantize(source, self.bits, support=support, init=self.codebooks[i])
            self.codebooks[i] = centres if centres.size == 2 ** self.bits else None
            out.append(quantized)
        return out

    def admm_init(self):
        """``Z = quant(theta)``, ``U = 0`` (called at the start of training)."""
        if self.bits == 32:
            return
        for z, u, q in zip(self.Z, self.U, self._quantize_all([v.numpy() for v in self.variables_])):
            z.assign(q)
            u.assign(tf.zeros_like(u))

    def admm_update(self, rho_growth=1.0, rho_max=None):
        """One ADMM round: ``Z = quant(theta + U)`` on theta's support, ``U += theta - Z``, grow rho."""
        if self.bits == 32:
            return
        thetas = [v.numpy() for v in self.variables_]
        for z, u, theta, q in zip(self.Z, self.U, thetas,
                                  self._quantize_all([t + u.numpy() for t, u in zip(thetas, self.U)])):
            z.assign(q)
            u.assign(u.numpy() + theta - q)
        old = float(self.current_rho.numpy())
        new = old * float(rho_growth) if rho_max is None else min(old * float(rho_growth), float(rho_max))
        if new != old:
            self.current_rho.assign(new)
            for u in self.U:  # scaled duals are u / rho: rescale when rho changes
                u.assign(u * (old / new))

    def penalty(self):
        """The ADMM term ``(rho / 2) sum ||theta - Z + U||^2`` (0 without quantization)."""
        if self.bits == 32:
            return tf.constant(0.0)
        return admm_penalty(self.variables_, self.Z, self.U, self.current_rho)

    def hard_project(self):
        """Final projection: prune to the budget and snap every tensor onto its k-means codebook.

        Sets ``bits`` on the factorized layers so that :mod:`tfsafe.metrics` counts them right.
        """
        if self.budget is not None:
            for var, mask in (zip(self.variables_, self.masks) if self.fixed_mask and bool(self.mask_ready.numpy())
                              else self._compute_masks()):
                var.assign(var * mask)
        if self.bits < 32:
            for var, q in zip(self.variables_, self._quantize_all([v.numpy() for v in self.variables_])):
                var.assign(q)
        for layer in matrix_layers(self.model):
            if hasattr(layer, "bits"):
                layer.bits = self.bits

    # -- training -----------------------------------------------------------------------------

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        adversarial = self.adv_weight > 0
        if adversarial:
            step = self.step_size if self.step_size is not None else 1.25 * self.current_eps / self.steps
            with frozen_kernels(self.model):
                x_adv = tf.stop_gradient(pgd_perturb(self._logits, x, y, self.current_eps, self.steps, step,
                                                     clip=self.clip))
        with tf.GradientTape() as tape:
            clean_logits = self._logits(x, training=True)
            clean_loss = weighted_softmax_cross_entropy(y, clean_logits, sample_weight)
            if adversarial:
                adv_logits = self._logits(x_adv, training=True)
                adv_loss = weighted_softmax_cross_entropy(y, adv_logits, sample_weight)
            else:
                adv_logits, adv_loss = clean_logits, clean_loss
            penalty = self.penalty()
            loss = (1.0 - self.adv_weight) * clean_loss + self.adv_weight * adv_loss + penalty
            if self.model.losses:
                loss += tf.add_n(self.model.losses)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.project()
        for name, value in (("loss", loss), ("clean_loss", clean_loss), ("adv_loss", adv_loss),
                            ("admm_penalty", penalty)):
            self._trackers[name].update_state(value)
        self._adv_accuracy.update_state(y, adv_logits, sample_weight)
        self.compiled_metrics.update_state(y, tf.nn.softmax(clean_logits) if self._softmax_out else clean_logits,
                                           sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        config = super().get_config()
        config.update({"budget": self.budget, "bits": self.bits, "rho": self.rho,
                       "min_layer_fraction": self.min_layer_fraction, "fixed_mask": self.fixed_mask})
        for key in ("loss", "norm", "trades_beta"):
            config.pop(key, None)
        return config


def _check_budget(budget):
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InputError(f"budget must be a positive integer number of non-zeros (or None), got {budget!r}.")
    return int(budget)


# ---------------------------------------------------------------------------------------------
# Callbacks


class ADMMUpdate(keras.callbacks.Callback):
    """Every ``every`` batches: ``Z = quant(theta + U)``, ``U += theta - Z``, ``rho *= rho_growth``.

    Also projects ``theta`` onto the budget and initializes ``Z``, ``U`` when training starts.

    Example:
        >>> atmc.fit(x, y, callbacks=[ADMMUpdate(every=20, rho_growth=1.1)])  # doctest: +SKIP
    """

    def __init__(self, every=50, rho_growth=1.0, rho_max=None):
        super().__init__()
        if int(every) < 1:
            raise InputError(f"every must be >= 1 batch, got {every}.")
        if float(rho_growth) < 1.0:
            raise InputError(f"rho_growth must be >= 1, got {rho_growth}.")
        self.every = int(every)
        self.rho_growth = float(rho_growth)
        self.rho_max = rho_max
        self._seen = 0

    def _atmc(self):
        if not isinstance(self.model, ATMCModel):
            raise InputError("ADMMUpdate works only with an ATMCModel.")
        return self.model

    def on_train_begin(self, logs=None):
        atmc = self._atmc()
        atmc.project()
        atmc.admm_init()

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen % self.every == 0:
            self._atmc().admm_update(self.rho_growth, self.rho_max)


class BestProjectedCheckpoint(keras.callbacks.Callback):
    """At each epoch end, hard-project a copy, measure validation PGD accuracy, keep the best.

    At the end of training the wrapped model holds the best projected weights (so the result
    meets the budget and bit width exactly). ``history`` lists every check.

    Args:
        validation_data: ``(x_val, y_val)`` -- never the test or audit data.
        eps: PGD radius for selection (the target eps, not the ramped one).
        steps, restarts: PGD settings of the selection attack.
        every: Check every ``every`` epochs (the last epoch is always checked).
    """

    def __init__(self, validation_data, eps, steps=20, restarts=1, every=1):
        super().__init__()
        self.x_val, self.y_val = validation_data
        self.eps = float(eps)
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.every = max(1, int(every))
        self.history = []
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        atmc = self.model
        net = atmc.model
        raw = net.get_weights()
        atmc.hard_project()
        pgd = adversarial_accuracy(net, self.x_val, self.y_val, self.eps, steps=self.steps, restarts=self.restarts)
        clean = float(np.mean(net.predict(self.x_val, batch_size=512, verbose=0).argmax(axis=1) == self.y_val))
        self.history.append({"epoch": epoch + 1, "val_pgd_accuracy": pgd, "val_clean_accuracy": clean})
        if self.best is None or (pgd, clean) > (self.best["val_pgd_accuracy"], self.best["val_clean_accuracy"]):
            self.best = dict(self.history[-1], weights=net.get_weights())
        net.set_weights(raw)
        if logs is not None:
            logs["val_projected_pgd_accuracy"] = pgd

    def on_train_end(self, logs=None):
        if self.best is not None:
            self.model.model.set_weights(self.best["weights"])
            self.model.hard_project()  # idempotent on projected weights; sets the layers' bits


# ---------------------------------------------------------------------------------------------
# One call


@dataclasses.dataclass
class ATMCResult:
    """What :func:`atmc_compress` returns.

    Attributes:
        model: The compressed (factorized, pruned and quantized) model; ``strip()`` merges it.
        history: Keras ``History.history`` of the training.
        checks: Validation checks of the projected model (``BestProjectedCheckpoint.history``).
        best: The selected check (epoch and validation accuracies).
    """

    model: object
    history: dict
    checks: list
    best: dict


def atmc_compress(model, x, y, budget, bits=8, eps=0.3, epochs=5, validation_data=None, batch_size=128,
                  steps=10, learning_rate=1e-3, adv_weight=0.5, rho=0.1, rho_growth=1.0, rho_max=None,
                  admm_every=50, ramp_epochs=0.0, select_steps=20, min_layer_fraction=0.01, fixed_mask=False,
                  factorized=True, verbose=0, callbacks=None):
    """Compress ``model`` with ATMC: factorize, PGD-train under the budget with ADMM, project.

    Args:
        model: A trained classifier (plain Dense/Conv2D layers, or already factorized).
        x, y: Training data (inputs in [0, 1], integer labels).
        budget: Total non-zeros over all factors (see :func:`budget_for_ratio`), or ``None``.
        bits: 1..8 or 32.
        eps, steps: PGD radius and steps for training (step ``1.25 * eps / steps``).
        epochs, batch_size, learning_rate: Training schedule (Adam).
        validation_data: ``(x_val, y_val)`` for choosing the best projected checkpoint by PGD
            accuracy; without it the last projected model is returned.
        adv_weight: Weight of CE(PGD) (0.5 in the paper; 0 = clean training).
        rho, rho_growth, rho_max, admm_every: ADMM penalty and schedule.
        ramp_epochs: Epochs over which eps grows from 0 (needed from scratch at large eps).
        select_steps: PGD steps of the validation selection attack.
        min_layer_fraction, fixed_mask: See :class:`ATMCModel`.
        factorized: Factorize plain Dense/Conv2D layers first (``W = (B + I) A + C``).
        verbose: Keras verbosity.
        callbacks: Extra Keras callbacks.

    Returns:
        :class:`ATMCResult`. A plain ``model`` is factorized into a new model; a model that is
        already factorized (or ``factorized=False``) is trained in place.

    Example:
        >>> result = atmc_compress(trained, x, y, budget=3000, bits=4, eps=0.1, epochs=1)  # doctest: +SKIP
        >>> tfsafe.metrics.compression_ratio(result.model, reference=trained)  # doctest: +SKIP
    """
    from tfsafe.validation import check_xy  # noqa: PLC0415

    net = factorize(model, bits=32) if factorized and not matrix_layers(model) else model
    x, y = check_xy(net, x, y, "training")
    if int(epochs) < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}.")
    atmc = ATMCModel(net, eps=eps, steps=steps, budget=budget, bits=bits, adv_weight=adv_weight, rho=rho,
                     min_layer_fraction=min_layer_fraction, fixed_mask=fixed_mask)
    atmc.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"])
    checkpoint = None
    cbs = [ADMMUpdate(every=admm_every, rho_growth=rho_growth, rho_max=rho_max)]
    if adv_weight > 0 and ramp_epochs > 0:
        cbs.append(EpsilonRamp(ramp_epochs=ramp_epochs))
    if validation_data is not None:
        xv, yv = check_xy(net, *validation_data, name="validation")
        checkpoint = BestProjectedCheckpoint((xv, yv), eps=eps, steps=select_steps)
        cbs.append(checkpoint)
    history = atmc.fit(x, y, epochs=int(epochs), batch_size=int(batch_size), verbose=verbose,
                       callbacks=cbs + list(callbacks or []))
    if checkpoint is None:
        atmc.hard_project()
    checks = checkpoint.history if checkpoint else []
    best = {k: v for k, v in (checkpoint.best or {}).items() if k != "weights"} if checkpoint else {}
    return ATMCResult(model=net, history=history.history, checks=checks, best=best)

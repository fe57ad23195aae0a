"""ATMC's training model: PGD adversarial training under a global budget, k-means quantization by ADMM."""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.factorization import check_bits, frozen_kernels, matrix_layers
from tfsafe.errors import InputError
from tfsafe.methods.atmc_projection import compressible_groups, kmeans_quantize, layer_floors, topk_masks
from tfsafe.objectives import admm_penalty, weighted_softmax_cross_entropy
from tfsafe.safety.adversarial import pgd_perturb
from tfsafe.safety.adversarial_training import AdversarialModel

__all__ = ["ATMCModel", "check_budget", "atmc_pgd"]


# ---------------------------------------------------------------------------------------------
# The training wrapper


@keras.utils.register_keras_serializable(package="tfsafe")
class ATMCModel(AdversarialModel):
    """Adversarial training with a global non-zero budget and k-means quantization through ADMM.

    Wraps ``model`` (usually from :func:`~tfsafe.compress.factorization.factorize`); ``fit``
    trains it in place. Use with :class:`tfsafe.safety.adversarial.EpsilonRamp`,
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
        attack: How training examples are crafted (see
            :class:`~tfsafe.safety.adversarial_training.AdversarialModel`): ``"pgd"`` (the paper),
            ``"fgsm_rs"`` (FGSM from a random start, Wong et al. 2020; about ``steps / 1`` times
            cheaper) or ``"free"`` (Shafahi et al. 2019: ``free_replays`` optimizer steps per
            minibatch, each followed by the ADMM penalty; the budget projection runs after the
            replays). :class:`~tfsafe.safety.adversarial_training.CatastrophicOverfittingGuard`
            switches a fast model to PGD through ``use_pgd``.
        **kwargs: ``fgsm_alpha``, ``free_replays``, ``clip``, ``name`` (as in ``AdversarialModel``).

    Example:
        >>> net = factorize(small_cnn())
        >>> atmc = ATMCModel(net, eps=0.1, steps=3, budget=2000, bits=4)
        >>> atmc.compile(optimizer="adam")
        >>> atmc.fit(x, y, epochs=1, callbacks=[ADMMUpdate(every=10)])  # doctest: +SKIP
    """

    def __init__(self, model, eps, steps=10, budget=None, bits=32, adv_weight=0.5, rho=0.1,
                 min_layer_fraction=0.01, fixed_mask=False, step_size=None, **kwargs):
        super().__init__(model, eps, steps=steps, step_size=step_size, adv_weight=adv_weight, **kwargs)
        self.budget = None if budget is None else check_budget(budget)
        self.bits = check_bits(bits)
        self.rho = float(rho)
        self.min_layer_fraction = float(min_layer_fraction)
        self.fixed_mask = bool(fixed_mask)
        if not self.rho > 0:
            raise InputError(f"rho must be > 0, got {rho}.")
        if not 0.0 <= self.min_layer_fraction <= 1.0:
            raise InputError(f"min_layer_fraction must be in [0, 1], got {min_layer_fraction}.")
        self.groups = compressible_groups(model)
        self.floors = layer_floors(self.groups, self.min_layer_fraction)
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

    def _pgd(self, x, y):
        return atmc_pgd(self, x, y)

    def _loss(self, x, x_adv, y, sample_weight, **kwargs):
        # Free training's replays go through here: each one pays the ADMM penalty too.
        loss, *rest = super()._loss(x, x_adv, y, sample_weight, **kwargs)
        return (loss + self.penalty(), *rest)

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
        if adversarial and self.attack == "free":
            loss, clean_loss, adv_loss, clean_logits, adv_logits = self._free_step(
                tf.cast(x, tf.float32), y, sample_weight)
            self.project()
            return self._report(y, sample_weight, loss, clean_loss, adv_loss, self.penalty(), clean_logits,
                                adv_logits)
        if adversarial:
            with frozen_kernels(self.model):
                x_adv = tf.stop_gradient(self._craft(x, y))
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
        return self._report(y, sample_weight, loss, clean_loss, adv_loss, penalty, clean_logits, adv_logits)

    def _report(self, y, sample_weight, loss, clean_loss, adv_loss, penalty, clean_logits, adv_logits):
        self._trackers["admm_penalty"].update_state(penalty)
        return self._finish(y, sample_weight, loss, clean_loss, adv_loss, clean_logits, adv_logits)

    def get_config(self):
        config = super().get_config()
        config.update({"budget": self.budget, "bits": self.bits, "rho": self.rho,
                       "min_layer_fraction": self.min_layer_fraction, "fixed_mask": self.fixed_mask})
        for key in ("loss", "norm", "trades_beta"):
            config.pop(key, None)
        return config


def atmc_pgd(model, x, y):
    """PGD examples for an ATMC-style model: step ``1.25 * eps / steps`` of the current eps unless set."""
    step = model.step_size if model.step_size is not None else 1.25 * model.current_eps / model.steps
    return pgd_perturb(model._logits, x, y, model.current_eps, model.steps, step, model.norm, clip=model.clip)


def check_budget(budget):
    """``budget`` as a positive int (non-zeros to keep), else :class:`InputError`."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InputError(f"budget must be a positive integer number of non-zeros (or None), got {budget!r}.")
    return int(budget)

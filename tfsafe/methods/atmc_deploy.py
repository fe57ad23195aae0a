"""ATMC's deploy stage: the budget on the kernel each layer ships, not only on its factors.

ATMC's budget (``k`` non-zeros over ``A``, ``B``, ``C`` and ``2^bits``-entry codebooks) holds
for the factors of ``W = (B + I) A + C``, but a phone runs one kernel per layer:
:func:`~tfsafe.compress.strip.strip` merges the factors, and so does the TFLite converter
(it constant-folds ``(B + I) A + C``). A non-zero ``B`` makes ``B A`` dense in every row it
mixes and moves ``W`` off the codebook, so the merged kernel can be many times larger than
the factors (MNIST LeNet at ratio 0.1, 4 bits: 42 KB of factors, 641 KB merged at 32 bits).

Two ways to make what ships meet the budget:

(a) put the budget on the merged kernel -- merge, keep the ``k`` largest merged magnitudes
    (global top-k with the same per-layer floors as training), snap each kernel onto a
    ``2^bits``-entry k-means codebook with a fixed zero, then fine-tune briefly with the mask
    and the codebook fixed;
(b) ship the factors as three sparse matmuls per layer.

This module does (a). (b) costs three ops per layer (more latency), its factors are stored
densely by TFLite unless each one is sparse-encoded, int8 / int4 quantization applies per
factor (the product's error compounds), and the converter would fold it back to (a)'s form
anyway unless the factors are kept as runtime inputs. (a) is how users deploy: one kernel
per layer, on which int8 / int4 storage and the sparse encoding apply directly. The merged
kernel with ``k`` non-zeros and one codebook per layer costs at most what
:func:`~tfsafe.methods.atmc_projection.budget_for_ratio` allowed for the factors (it charged
up to three codebooks per layer).

After :func:`project_merged`, each factorized layer holds ``A = W`` (pruned and quantized),
``B = C = 0``: the stored form and the deployed form are the same, and
:class:`DeployFineTuneModel` trains ``A`` only, adversarially as ATMC trains, with a
straight-through estimator: each step evaluates the loss at the snapped weights and applies
the gradient to a float copy, so a weight can move to another codebook entry over many
steps, while the mask and the codebook stay fixed.
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.factorization import frozen_kernels, matrix_layers
from tfsafe.errors import InputError
from tfsafe.methods.atmc_model import atmc_pgd
from tfsafe.methods.atmc_projection import kmeans_quantize, layer_floors, topk_masks
from tfsafe.safety.adversarial_training import AdversarialModel

__all__ = ["sparse_plus_low_rank_layers", "project_merged", "DeployFineTuneModel"]


def sparse_plus_low_rank_layers(model):
    """The ``W = (B + I) A + C`` layers of ``model`` (top level), in order."""
    return [layer for layer in matrix_layers(model) if all(hasattr(layer, n) for n in ("A", "B", "C"))]


def project_merged(model, budget, bits, min_layer_fraction=0.01):
    """Merge every ``(B + I) A + C`` layer, prune the merged kernels to ``budget``, quantize them; in place.

    Args:
        model: A model with :class:`~tfsafe.compress.factorization.FactorizedDense` /
            ``FactorizedConv2D`` layers (what ATMC trains).
        budget: Total non-zeros over the merged kernels (global top-k, each layer keeping at
            least ``min_layer_fraction`` of its matrix and one entry), or ``None`` (no pruning).
        bits: 1..8: one k-means codebook of ``2^bits`` non-zero entries plus a fixed zero per
            kernel; 32: no quantization.
        min_layer_fraction: Per-layer floor, as in :class:`~tfsafe.methods.atmc_model.ATMCModel`.

    Returns:
        ``{layer name: {"nonzeros": int, "codebook": entries}}`` of the projected kernels.

    Raises:
        InputError: no factorized layer, or a budget below the per-layer floors.
    """
    layers = sparse_plus_low_rank_layers(model)
    if not layers:
        raise InputError(f"Model '{model.name}' has no (B + I) A + C layer to merge; factorize it first.")
    merged = [layer.matrix().numpy() for layer in layers]
    if budget is None:
        masks = [w != 0 for w in merged]
    else:
        floors = layer_floors([(layer, None) for layer in layers], min_layer_fraction)
        total = sum(w.size for w in merged)
        if not sum(floors) <= int(budget):
            raise InputError(f"budget {budget} is below the per-layer floors ({sum(floors)}); raise it or lower "
                             "min_layer_fraction.")
        chosen = topk_masks([tf.constant(np.abs(w).ravel()) for w in merged], min(int(budget), total), floors)
        masks = [m.numpy().reshape(w.shape) > 0 for m, w in zip(chosen, merged)]
    summary = {}
    for layer, w, mask in zip(layers, merged, masks):
        kept = np.where(mask, w, 0.0).astype(np.float32)
        if bits < 32:
            kept, centres = kmeans_quantize(kept, bits, support=mask)
        layer.A.assign(kept)
        layer.B.assign(tf.zeros_like(layer.B))
        layer.C.assign(tf.zeros_like(layer.C))
        layer.bits = int(bits)
        summary[layer.name] = {"nonzeros": int(np.count_nonzero(kept)),
                               "codebook": int(np.unique(kept[kept != 0]).size) if bits < 32 else 0}
    return summary


@keras.utils.register_keras_serializable(package="tfsafe")
class DeployFineTuneModel(AdversarialModel):
    """Adversarial fine-tuning of merged ATMC kernels with their mask and codebook fixed.

    Wraps a model after :func:`project_merged`: every ``(B + I) A + C`` layer has ``B = C = 0``
    and ``A`` on its codebook (the distinct non-zero values of ``A``, read at construction,
    plus zero) with its mask (``A != 0``). Training updates ``A`` (straight-through: the loss
    and the attack see ``A`` snapped to the nearest codebook entry, the gradient updates the
    float ``A``, which is then masked), biases and every other trainable weight; ``B`` and
    ``C`` never change. :meth:`hard_project` snaps ``A`` for good (call it after ``fit``;
    :class:`~tfsafe.methods.atmc_callbacks.BestProjectedCheckpoint` does).

    The loss is ATMC's ``(1 - adv_weight) CE(clean) + adv_weight CE(adv)``; adversarial
    examples come from PGD (``1.25 eps / steps`` steps) or, for ``attack="fgsm_rs"`` and
    ``"free"`` (whose replays do not combine with snapping), from FGSM with a random start.

    Args:
        model: The projected model (trained in place).
        eps, steps, adv_weight, attack, step_size: As in :class:`ATMCModel`.
        **kwargs: ``fgsm_alpha``, ``clip``, ``name``.
    """

    def __init__(self, model, eps, steps=10, adv_weight=0.5, attack="pgd", step_size=None, **kwargs):
        kwargs.pop("free_replays", None)
        super().__init__(model, eps, steps=steps, step_size=step_size, adv_weight=adv_weight,
                         attack="pgd" if attack == "pgd" else "fgsm_rs", **kwargs)
        layers = sparse_plus_low_rank_layers(model)
        if not layers:
            raise InputError(f"DeployFineTuneModel needs (B + I) A + C layers in '{model.name}'; call "
                             "project_merged(model, budget, bits) first.")
        self.requested_attack = attack
        self._A = [layer.A for layer in layers]
        values = [layer.A.numpy() for layer in layers]
        self._masks = [tf.constant((v != 0).astype(np.float32)) for v in values]
        # Sorted codebook with zero, per layer; None leaves a 32-bit layer unsnapped.
        self._tables = [tf.constant(np.union1d(v[v != 0], [0.0]).astype(np.float32)) if layer.bits < 32 else None
                        for layer, v in zip(layers, values)]
        frozen = {v.ref() for layer in layers for v in (layer.B, layer.C)}
        self._variables = [v for v in model.trainable_variables if v.ref() not in frozen]

    def _pgd(self, x, y):
        return atmc_pgd(self, x, y)

    def _snapped(self, a, mask, table):
        if table is None:
            return a * mask
        cuts = (table[1:] + table[:-1]) / 2
        index = tf.searchsorted(cuts, tf.reshape(a, [-1]))
        return tf.reshape(tf.gather(table, index), tf.shape(a)) * mask

    def hard_project(self):
        """Snap every ``A`` onto its codebook and mask (what ships)."""
        for a, mask, table in zip(self._A, self._masks, self._tables):
            a.assign(self._snapped(a, mask, table))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        latent = [a.read_value() for a in self._A]
        self.hard_project()
        if self.adv_weight > 0:
            with frozen_kernels(self.model):
                x_adv = tf.stop_gradient(self._craft(x, y))
        else:
            x_adv = x
        with tf.GradientTape() as tape:
            loss, clean_loss, adv_loss, clean_logits, adv_logits = self._loss(x, x_adv, y, sample_weight)
        grads = tape.gradient(loss, self._variables)
        for a, value in zip(self._A, latent):
            a.assign(value)
        self.optimizer.apply_gradients(zip(grads, self._variables))
        for a, mask in zip(self._A, self._masks):
            a.assign(a * mask)
        return self._finish(y, sample_weight, loss, clean_loss, adv_loss, clean_logits, adv_logits)

    def get_config(self):
        config = super().get_config()
        config["attack"] = self.requested_attack
        for key in ("loss", "norm", "trades_beta", "free_replays"):
            config.pop(key, None)
        return config

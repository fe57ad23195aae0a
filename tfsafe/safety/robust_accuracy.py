"""Accuracy under attack: one attack, the per-example worst case over several, and transfer.

:func:`adversarial_accuracy` runs FGSM, PGD (:mod:`tfsafe.safety.adversarial`) or APGD
(:mod:`tfsafe.safety.apgd`) and reports the fraction of examples still classified correctly;
``attack="worst"`` takes the per-example worst case over PGD, APGD-CE and APGD-DLR, each run
on every example exactly as it runs alone (same batches, same seeds), so "worst" is never above
any of them. :func:`transfer_attack` crafts on a
differentiable source (e.g. the float model) and evaluates any target, an int8 ``.tflite``
file included. :func:`zero_gradient_fraction` measures gradient masking.
"""

import contextlib
import warnings

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.safety.adversarial import fgsm_attack, pgd_attack
from tfsafe.safety.apgd import apgd_attack, num_classes_of, resolve_loss
from tfsafe.safety.attack_core import attack_objective, logits_fn, validated_attack_inputs
from tfsafe.safety.bpda import straight_through
from tfsafe.safety.tflite_model import as_target, predict_labels

__all__ = ["ATTACKS", "WORST_CASE", "adversarial_examples", "adversarial_accuracy", "attack_notes",
           "zero_gradient_fraction", "transfer_attack"]

ATTACKS = ("pgd", "fgsm", "apgd-ce", "apgd-dlr", "apgd-t", "worst")
WORST_CASE = ("pgd", "apgd-ce", "apgd-dlr")
_APGD_LOSS = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}
_PGD_KEYS = ("norm", "step_size", "random_start", "clip", "targeted", "loss", "bpda", "batch_size", "seed",
             "training")
_APGD_KEYS = ("norm", "clip", "bpda", "batch_size", "seed", "training", "target_classes")
_FGSM_KEYS = ("clip", "loss", "bpda", "batch_size")


def _check_attack_name(attack):
    if attack not in ATTACKS:
        raise InputError(f"attack must be one of {ATTACKS}, got {attack!r}.")


def attack_notes(model, x, attacks, bpda=False):
    """Notes on attacks that cannot run as named on ``model`` (DLR on a 2-class model...).

    Args:
        model: Keras model or callable returning logits.
        x: A batch of inputs (one example is used).
        attacks: Attack names (``"worst"`` expands to :data:`WORST_CASE`).

    Returns:
        list of one-line strings, empty when every attack runs as named.
    """
    names = [a for name in attacks for a in (WORST_CASE if name == "worst" else (name,))]
    apgd = [a for a in names if a in _APGD_LOSS]
    if not apgd or len(x) == 0:
        return []
    classes = num_classes_of(model, np.asarray(x[:1], np.float32), bpda)
    notes = [resolve_loss(_APGD_LOSS[a], classes)[1] for a in dict.fromkeys(apgd)]
    return [n for n in notes if n]


def adversarial_examples(model, x, y, eps, attack="pgd", steps=20, restarts=1, **kwargs):
    """Adversarial inputs from one named attack (not ``"worst"``), as ``np.ndarray``.

    Args:
        model: Keras model or callable returning logits.
        x, y: Inputs and integer labels.
        eps: Attack radius.
        attack: ``"pgd"``, ``"fgsm"``, ``"apgd-ce"``, ``"apgd-dlr"`` or ``"apgd-t"``.
        steps, restarts: Iterations and random starts (ignored by FGSM).
        **kwargs: Options of the attack (others are ignored, so one set serves all attacks).
    """
    _check_attack_name(attack)
    if attack == "worst":
        raise InputError("adversarial_examples runs one attack; use adversarial_accuracy(attack='worst').")
    if attack == "pgd":
        return pgd_attack(model, x, y, eps, steps=steps, restarts=restarts,
                          **{k: v for k, v in kwargs.items() if k in _PGD_KEYS})
    if attack == "fgsm":
        return fgsm_attack(model, x, y, eps, **{k: v for k, v in kwargs.items() if k in _FGSM_KEYS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback note is reported by the caller
        return apgd_attack(model, x, y, eps, steps=steps, restarts=restarts, loss=_APGD_LOSS[attack],
                           **{k: v for k, v in kwargs.items() if k in _APGD_KEYS})


def adversarial_accuracy(model, x, y, eps, attack="pgd", steps=20, restarts=1, return_mask=False, **kwargs):
    """Accuracy of ``model`` on adversarial examples (untargeted).

    Args:
        model: Keras model or callable returning logits.
        x, y: Inputs and integer labels.
        eps: Attack radius, or a list of radii (then a dict ``{eps: accuracy}`` is returned).
        attack: ``"pgd"``, ``"fgsm"``, ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"`` (targeted
            DLR, >= 4 classes) or ``"worst"`` (per-example worst case over PGD, APGD-CE and
            APGD-DLR). APGD-DLR on a 2-class model falls back to CE with a ``UserWarning``.
        steps, restarts: Iterations and random starts of PGD / APGD (ignored by FGSM).
        return_mask: Also return the per-example boolean "still correct" array.
        **kwargs: More attack options (``norm``, ``step_size``, ``loss`` for PGD, ``bpda``,
            ``clip``, ``seed``, ``batch_size``, ``target_classes`` for APGD-T...).

    Returns:
        Accuracy as a float (and the mask if asked).

    Raises:
        InputError: unknown attack, bad eps / steps / norm / loss, data not matching the model.

    Example:
        >>> adversarial_accuracy(model, x, y, eps=0.3, attack="worst", steps=40)  # doctest: +SKIP
        0.01
    """
    if isinstance(eps, (list, tuple, np.ndarray)):
        return {float(e): adversarial_accuracy(model, x, y, e, attack, steps, restarts, return_mask, **kwargs)
                for e in eps}
    _check_attack_name(attack)
    x, y = validated_attack_inputs(model, x, y, False)
    for note in attack_notes(model, x, [attack], kwargs.get("bpda", False)):
        warnings.warn(note, stacklevel=2)
    mask = np.ones(len(x), bool)
    for name in WORST_CASE if attack == "worst" else (attack,):
        if len(x):
            x_adv = adversarial_examples(model, x, y, eps, name, steps, restarts, **kwargs)
            mask &= predict_labels(model, x_adv, kwargs.get("batch_size", 256)) == y
    return (float(mask.mean()), mask) if return_mask else float(mask.mean())


def zero_gradient_fraction(model, x, y, batch_size=256, bpda=False):
    """Fraction of examples whose loss gradient with respect to the input is exactly zero.

    A high value means white-box attacks cannot move (rounding, quantization or other
    gradient masking); attack such a model with ``bpda`` or :func:`transfer_attack` instead.
    With ``bpda`` the gradient measured is the one a BPDA attack uses.
    """
    x, y = validated_attack_inputs(model, x, y, False)
    fn = logits_fn(model, False, bpda if bpda is not True else None)
    use_layers = bpda is True and isinstance(model, keras.layers.Layer)
    zero = []
    with straight_through(model) if use_layers else contextlib.nullcontext():
        for start in range(0, len(x), batch_size):
            xb = tf.constant(x[start:start + batch_size])
            with tf.GradientTape() as tape:
                tape.watch(xb)
                labels = tf.constant(y[start:start + batch_size], tf.int32)
                loss = tf.reduce_sum(attack_objective("ce", tf.cast(fn(xb), tf.float32), labels, False))
            grad = tape.gradient(loss, xb)
            if grad is None:
                zero.append(np.ones(len(xb), bool))
            else:
                zero.append(np.all(np.reshape(grad.numpy(), (len(xb), -1)) == 0, axis=1))
    return float(np.concatenate(zero).mean()) if zero else 0.0


def transfer_attack(source, target, x, y, eps, attack="pgd", steps=20, restarts=1, batch_size=256, **kwargs):
    """Craft adversarial examples on ``source`` and evaluate them on ``target``.

    Args:
        source: Differentiable Keras model (or callable returning logits) to craft on.
        target: Keras model, ``.tflite`` path or :class:`tflite_export.runtime.TFLiteModel`.
        x, y: Inputs and integer labels.
        eps: Attack radius.
        attack: Any name :func:`adversarial_accuracy` takes; ``"worst"`` transfers each of
            PGD, APGD-CE and APGD-DLR and keeps the per-example worst case on the target.
        steps, restarts, **kwargs: As in :func:`adversarial_accuracy`.

    Returns:
        dict with ``target_clean_accuracy``, ``target_adv_accuracy``, ``source_adv_accuracy``,
        ``eps``, ``attack`` and the per-example ``mask`` (target still correct on clean and
        adversarial inputs).

    Example:
        >>> transfer_attack(float_model, "model_int8.tflite", x, y, eps=0.1)  # doctest: +SKIP
    """
    _check_attack_name(attack)
    target = as_target(target)
    x, y = validated_attack_inputs(source, x, y, False)
    clean_ok = predict_labels(target, x, batch_size) == y
    adv_ok, source_ok = clean_ok.copy(), np.ones(len(x), bool)
    for name in WORST_CASE if attack == "worst" else (attack,):
        x_adv = adversarial_examples(source, x, y, eps, name, steps, restarts, batch_size=batch_size, **kwargs)
        adv_ok &= predict_labels(target, x_adv, batch_size) == y
        source_ok &= predict_labels(source, x_adv, batch_size) == y
    return {
        "eps": float(eps),
        "attack": attack,
        "target_clean_accuracy": float(clean_ok.mean()),
        "target_adv_accuracy": float(adv_ok.mean()),
        "source_adv_accuracy": float(source_ok.mean()),
        "mask": adv_ok,
    }

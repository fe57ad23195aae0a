"""APGD: the parameter-free PGD of AutoAttack (Croce and Hein, ICML 2020), Linf and L2.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks" replaces PGD's fixed step with a schedule that needs no tuning:

- the step starts at ``2 eps`` and is halved (per example) at checkpoints ``w_j = p_j N``,
  ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, when
  (1) fewer than ``rho = 0.75`` of the steps since the last checkpoint raised the loss, or
  (2) the step was not halved at the last checkpoint and the best loss has not improved since;
  after a halving the iterate restarts from the best point found so far;
- each step is a momentum step: ``z = P(x_k + eta grad)``,
  ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with ``alpha = 0.75``
  (``1`` on the first step).

Losses: cross-entropy (``"ce"``), the Difference of Logits Ratio (``"dlr"``,
``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, scale invariant, needs >= 3 classes) and its
targeted form (``"dlr-targeted"``, ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, needs >= 4
classes; run once per target among the top ``target_classes`` non-true classes). With too few
classes the loss falls back (targeted DLR -> DLR -> CE) and :func:`resolve_loss` says so. The
checkpoint arithmetic follows the authors' reference implementation (``autopgd_base.py``):
interval lengths ``0.22 N``, shrinking by ``0.03 N`` to at least ``0.06 N``.

Like :func:`tfsafe.safety.adversarial.pgd_attack`, every run keeps the iterate with the largest
misclassification margin (the clean input included; so eps = 0 gives clean accuracy), restarts
attack only what earlier runs left correct, the graph is one ``tf.function`` per model and
setting (batch dimension ``None``), seeds are stateless, ``bpda=True`` / ``bpda=<model>`` uses
straight-through surrogates, and the logits come from the same function PGD uses.
"""

import contextlib
import functools
import warnings
import weakref

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.safety.attack_core import (
    NORMS,
    cached_attack,
    check_attack_args,
    check_eps_range,
    expand_to,
    logits_fn,
    per_example_norm,
    success_margin,
    success_margins,
    validated_attack_inputs,
)
from tfsafe.safety.bpda import straight_through

__all__ = ["APGD_LOSSES", "apgd_attack", "resolve_loss", "checkpoints", "dlr_loss", "targeted_dlr_loss"]

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75  # alpha
RHO = 0.75  # fraction of loss-raising steps below which the step is halved


def checkpoints(steps):
    """Iterations (0-based) after which APGD may halve its step, and each interval's length.

    Returns:
        list of ``(iteration, interval_length)`` pairs, in order.

    Example:
        >>> checkpoints(100)[:3]
        [(21, 22), (40, 19), (56, 16)]
    """
    steps = int(steps)
    first, shortest, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, i, k = [], 0, first
    while i + k <= steps:
        i += k
        out.append((i - 1, k))
        k = max(k - shrink, shortest)
    return out


def dlr_loss(y, logits):
    """Per-example DLR loss (higher = closer to misclassification); needs >= 3 classes."""
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    onehot = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
    true = tf.reduce_sum(logits * onehot, -1)
    other = tf.reduce_max(logits - 1e9 * onehot, -1)
    return -(true - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(y, target, logits):
    """Per-example targeted DLR loss towards ``target``; needs >= 4 classes."""
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    n = tf.shape(logits)[-1]
    true = tf.reduce_sum(logits * tf.one_hot(y, n, dtype=logits.dtype), -1)
    goal = tf.reduce_sum(logits * tf.one_hot(target, n, dtype=logits.dtype), -1)
    return -(true - goal) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def resolve_loss(loss, num_classes):
    """The loss APGD really uses for ``num_classes`` classes, and a note when it had to fall back.

    Returns:
        ``(loss, note)``: ``note`` is ``None`` unless the loss was replaced.
    """
    if loss not in APGD_LOSSES:
        raise InputError(f"APGD loss must be one of {APGD_LOSSES}, got {loss!r}.")
    if loss == "dlr-targeted" and num_classes < 4:
        fallback = "dlr" if num_classes >= 3 else "ce"
        return fallback, (f"targeted DLR needs >= 4 classes; the model has {num_classes}, so APGD used the "
                          f"{fallback.upper()} loss instead")
    if loss == "dlr" and num_classes < 3:
        return "ce", (f"DLR needs >= 3 classes; the model has {num_classes}, so APGD-DLR fell back to the "
                      "cross-entropy loss (it equals APGD-CE here)")
    return loss, None


def _random_direction(x, eps, norm, seed):
    # The reference implementation starts on the ball's surface (Linf: scaled so max |t| = eps).
    shape = tf.shape(x)
    if norm == "linf":
        t = tf.random.stateless_uniform(shape, seed, -1.0, 1.0)
        scale = tf.reduce_max(tf.abs(tf.reshape(t, [shape[0], -1])), axis=1) + 1e-12
    else:
        t = tf.random.stateless_normal(shape, seed)
        scale = per_example_norm(t)
    return eps * t / expand_to(scale, x)


def _apgd(fn, x, y, target, eps, schedule, norm, clip, loss, seed):
    """One APGD run (graph code). ``schedule[i]`` > 0 marks a checkpoint after iteration ``i``
    and holds its interval length; its length is the number of iterations."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    target = tf.cast(target, tf.int32)
    eps = tf.cast(eps, tf.float32)
    steps = tf.shape(schedule)[0]
    lo, hi = (None, None) if clip is None else (float(clip[0]), float(clip[1]))

    def project(x_adv):
        delta = x_adv - x
        if norm == "linf":
            delta = tf.clip_by_value(delta, -eps, eps)
        else:
            delta = delta * expand_to(tf.minimum(1.0, eps / per_example_norm(delta)), x)
        out = x + delta
        return out if lo is None else tf.clip_by_value(out, lo, hi)

    def evaluate(x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = tf.cast(fn(x_adv), tf.float32)
            if loss == "ce":
                per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            elif loss == "dlr":
                per_example = dlr_loss(y, logits)
            else:
                per_example = targeted_dlr_loss(y, target, logits)
            total = tf.reduce_sum(per_example)
        grad = tape.gradient(total, x_adv)
        grad = tf.zeros_like(x_adv) if grad is None else grad  # no gradient: the attack cannot move
        return per_example, grad, success_margin(logits, y, False)

    def direction(grad):
        if norm == "linf":
            return tf.sign(grad)
        return grad / expand_to(per_example_norm(grad), x)

    def keep_better(score, x_adv, best_margin, best_adv):
        better = score > best_margin
        return tf.where(better, score, best_margin), tf.where(expand_to(better, x), x_adv, best_adv)

    best_margin, best_adv = success_margin(tf.cast(fn(x), tf.float32), y, False), x
    x_adv = project(x + _random_direction(x, eps, norm, seed))
    loss_now, grad, margin = evaluate(x_adv)
    best_margin, best_adv = keep_better(margin, x_adv, best_margin, best_adv)
    step = 2.0 * eps * tf.ones_like(loss_now)
    state = dict(x_adv=x_adv, x_old=x_adv, grad=grad, loss_prev=loss_now, x_best=x_adv, grad_best=grad,
                 loss_best=loss_now, step=step, increases=tf.zeros_like(loss_now),
                 reduced_last=tf.zeros_like(loss_now, tf.bool), loss_best_last=loss_now,
                 best_margin=best_margin, best_adv=best_adv)

    def body(i, s):
        s = dict(s)
        alpha = tf.where(i > 0, MOMENTUM, 1.0)
        momentum = s["x_adv"] - s["x_old"]
        z = project(s["x_adv"] + expand_to(s["step"], x) * direction(s["grad"]))
        x_new = project(s["x_adv"] + alpha * (z - s["x_adv"]) + (1.0 - alpha) * momentum)
        loss_new, grad, margin = evaluate(x_new)
        s["best_margin"], s["best_adv"] = keep_better(margin, x_new, s["best_margin"], s["best_adv"])
        improved = loss_new > s["loss_best"]
        s["x_best"] = tf.where(expand_to(improved, x), x_new, s["x_best"])
        s["grad_best"] = tf.where(expand_to(improved, x), grad, s["grad_best"])
        s["loss_best"] = tf.where(improved, loss_new, s["loss_best"])
        s["increases"] += tf.cast(loss_new > s["loss_prev"], tf.float32)
        s["loss_prev"], s["x_old"] = loss_new, s["x_adv"]
        interval = schedule[i]
        at_check = interval > 0
        # Condition 1: too few loss-raising steps; condition 2: step kept and best loss not improved.
        halve = at_check & ((s["increases"] <= RHO * interval)
                            | (~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])))
        s["step"] = tf.where(halve, s["step"] / 2.0, s["step"])
        s["x_adv"] = tf.where(expand_to(halve, x), s["x_best"], x_new)
        s["grad"] = tf.where(expand_to(halve, x), s["grad_best"], grad)
        s["reduced_last"] = tf.where(at_check, halve, s["reduced_last"])
        s["loss_best_last"] = tf.where(at_check, s["loss_best"], s["loss_best_last"])
        s["increases"] = tf.where(at_check, tf.zeros_like(s["increases"]), s["increases"])
        return i + 1, s

    _, state = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), state))
    return state["best_adv"]


_COMPILED = weakref.WeakKeyDictionary()


def _attack_graph(model, fn, use_layers, norm, clip, loss, x, y, target, eps, schedule, seed):
    with straight_through(model) if use_layers else contextlib.nullcontext():
        return _apgd(fn, x, y, target, eps, schedule, norm, clip, loss, seed)


def _compiled(model, input_shape, norm, clip, loss, bpda, training):
    clip = None if clip is None else tuple(float(c) for c in clip)

    def build():
        fn = logits_fn(model, training, bpda)
        use_layers = bpda is True and isinstance(model, keras.layers.Layer)
        signature = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int64),
                     tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([None], tf.float32), tf.TensorSpec([2], tf.int32)]
        return tf.function(functools.partial(_attack_graph, model, fn, use_layers, norm, clip, loss),
                           input_signature=signature)

    return cached_attack(_COMPILED, model, (tuple(input_shape), norm, clip, loss, bpda, training), build)


def num_classes_of(model, x, bpda=False, training=False):
    """Number of logits the attacks see (after the same output-to-logits step PGD uses)."""
    return int(logits_fn(model, training, bpda if bpda is not True else None)(tf.constant(x[:1])).shape[-1])


def apgd_attack(model, x, y, eps, steps=100, restarts=1, norm="linf", loss="ce", target_classes=9,
                clip=(0.0, 1.0), bpda=False, batch_size=256, seed=0, training=False):
    """Batched, compiled APGD; returns the worst case per example over restarts (and targets).

    Args:
        model: Keras model (logits or softmax output) or a callable ``x -> logits``.
        x: Inputs, float32 ``[n, ...]`` in ``clip``.
        y: Integer true labels ``[n]`` (the attack is untargeted in what it reports: success
            means misclassification, also for the targeted loss).
        eps: Radius of the Linf / L2 ball (>= 0, within the data range).
        steps: Iterations per run (the paper uses 100).
        restarts: Random starts per run (per target class for ``"dlr-targeted"``).
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"`` (falls back with fewer classes; a
            ``UserWarning`` says so, see :func:`resolve_loss`).
        target_classes: For ``"dlr-targeted"``: how many of the highest-scoring wrong classes
            (on the clean input) to target, one run each.
        clip: ``(low, high)`` valid input range, or ``None``.
        bpda: ``True`` for registered straight-through surrogates, or a differentiable model for
            the backward pass (forward stays ``model``).
        batch_size: Examples per compiled call.
        seed: Base seed of the random starts (deterministic).
        training: Run the model in training mode.

    Returns:
        ``np.ndarray`` of adversarial inputs, float32, shaped like ``x``.

    Raises:
        InputError: bad eps / steps / norm / loss / restarts, or data not matching the model.
        UnsupportedModelError: a model without gradients (a ``.tflite`` file: use
            :func:`tfsafe.safety.robust_accuracy.transfer_attack`).

    Example:
        >>> x_adv = apgd_attack(model, x, y, eps=0.3, steps=100, loss="dlr")  # doctest: +SKIP
    """
    check_attack_args(eps, steps, norm, "ce")
    if loss not in APGD_LOSSES:
        raise InputError(f"APGD loss must be one of {APGD_LOSSES}, got {loss!r}.")
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}.")
    if int(restarts) < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}.")
    if int(target_classes) < 1:
        raise InputError(f"target_classes must be >= 1, got {target_classes}.")
    logits_fn(model, training, None)  # a .tflite target fails here with its one-line error
    x, y = validated_attack_inputs(model, x, y, False)
    check_eps_range(eps, norm, clip, x.shape[1:])
    if len(x) == 0:
        return x.copy()
    classes = num_classes_of(model, x, bpda, training)
    loss, note = resolve_loss(loss, classes)
    if note:
        warnings.warn(note, stacklevel=2)
    attack = _compiled(model, x.shape[1:], norm, clip, loss, bpda, bool(training))
    schedule = np.zeros(int(steps), np.float32)
    for i, length in checkpoints(steps):
        schedule[i] = length
    schedule = tf.constant(schedule)
    runs = [None]
    if loss == "dlr-targeted":
        logits = np.concatenate([np.asarray(logits_fn(model, training, None)(tf.constant(x[i:i + batch_size])))
                                 for i in range(0, len(x), batch_size)])
        ranked = np.argsort(-logits, axis=1)
        ranked = np.array([row[row != label] for row, label in zip(ranked, y)])  # wrong classes, best first
        runs = [ranked[:, t] for t in range(min(int(target_classes), classes - 1))]
    best_x, best_score = x.copy(), np.full(len(x), -np.inf, np.float32)
    run = 0
    for targets in runs:
        for _ in range(int(restarts)):
            active = np.arange(len(x)) if run == 0 else np.flatnonzero(best_score <= 0)
            for start in range(0, len(active), batch_size):
                idx = active[start:start + batch_size]
                tgt = y[idx] if targets is None else targets[idx]
                run_seed = tf.constant([int(seed) * 1000 + 500 + run, start], tf.int32)
                adv = attack(tf.constant(x[idx]), tf.constant(y[idx], tf.int64), tf.constant(tgt, tf.int64),
                             tf.constant(float(eps)), schedule, run_seed).numpy()
                score = success_margins(model, adv, y[idx], False, len(adv), training)
                better = score > best_score[idx]
                best_x[idx[better]] = adv[better]
                best_score[idx[better]] = score[better]
            run += 1
    return best_x

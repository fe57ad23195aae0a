"""Gradient attacks: FGSM and PGD (Linf / L2, random start, restarts, CE / margin losses).

Attacks take a classifier and return adversarial inputs in the clip range (default [0, 1]).
The evaluation attacks are built to be strong, since a robustness number from a weak attack
is a bug:

- PGD starts from a random point in the eps-ball, keeps the *best iterate* of every run
  (the point with the largest misclassification margin, the clean input included) and takes
  the worst case per example over restarts. So eps = 0 gives clean accuracy exactly, and
  more restarts never raise accuracy.
- Models with non-differentiable parts are attacked with BPDA (:mod:`tfsafe.safety.bpda`):
  ``bpda=True`` runs registered layers exactly in the forward pass and backpropagates through
  their differentiable surrogate; ``bpda=<model>`` uses a whole differentiable model (e.g. the
  float model) for the backward pass.

What every gradient attack shares (the logits function, argument checks, success margin) is
in :mod:`tfsafe.safety.attack_core`; APGD is in :mod:`tfsafe.safety.apgd`. Accuracy under
attack, the worst case over attacks and transfer attacks are in
:mod:`tfsafe.safety.robust_accuracy`; adversarial training is in
:mod:`tfsafe.safety.adversarial_training`.
"""

import contextlib
import functools
import weakref

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.safety.attack_core import (
    LOSSES,
    NORMS,
    attack_objective,
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

__all__ = ["NORMS", "LOSSES", "check_attack_args", "cached_attack", "pgd_perturb", "pgd_attack", "fgsm_attack"]


# ---------------------------------------------------------------------------------------------
# The PGD core (graph-safe)
# ---------------------------------------------------------------------------------------------
def _random_start(x, eps, norm, seed):
    shape = tf.shape(x)
    if norm == "linf":
        if seed is None:
            return tf.random.uniform(shape, -1.0, 1.0) * eps
        return tf.random.stateless_uniform(shape, seed, -1.0, 1.0) * eps
    if seed is None:
        direction = tf.random.normal(shape)
        u = tf.random.uniform(shape[:1])
    else:
        direction = tf.random.stateless_normal(shape, seed)
        u = tf.random.stateless_uniform(shape[:1], seed + 1)
    dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
    radius = eps * tf.pow(u, 1.0 / dims)
    return direction / expand_to(per_example_norm(direction), x) * expand_to(radius, x)


def _pgd(model_fn, x, y, eps, steps, step_size, norm, random_start, clip, targeted, loss, seed, keep_best):
    def fn(t):  # float32 logits even under mixed precision (the margin uses large constants)
        return tf.cast(model_fn(t), tf.float32)

    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    eps = tf.cast(eps, tf.float32)
    steps = tf.cast(steps, tf.int32)
    if step_size is None:
        step = 2.5 * eps / tf.cast(tf.maximum(steps, 1), tf.float32)
    else:
        step = tf.cast(step_size, tf.float32)
    lo, hi = (None, None) if clip is None else (float(clip[0]), float(clip[1]))

    def project(x_adv):
        delta = x_adv - x
        if norm == "linf":
            delta = tf.clip_by_value(delta, -eps, eps)
        else:
            scale = tf.minimum(1.0, eps / per_example_norm(delta))
            delta = delta * expand_to(scale, x)
        out = x + delta
        return out if lo is None else tf.clip_by_value(out, lo, hi)

    x_adv = project(x + _random_start(x, eps, norm, seed)) if random_start else x
    if keep_best:
        best_x, best_score = x, success_margin(fn(x), y, targeted)
    else:
        best_x, best_score = x_adv, tf.zeros_like(y, tf.float32)

    def body(i, x_adv, best_x, best_score):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = fn(x_adv)
            objective = tf.reduce_sum(attack_objective(loss, logits, y, targeted))
        grad = tape.gradient(objective, x_adv)
        if grad is None:  # e.g. tf.round has no gradient: the attack cannot move (use bpda)
            grad = tf.zeros_like(x_adv)
        if keep_best:
            score = tf.stop_gradient(success_margin(logits, y, targeted))
            better = score > best_score
            best_x = tf.where(expand_to(better, x), x_adv, best_x)
            best_score = tf.where(better, score, best_score)
        if norm == "linf":
            update = step * tf.sign(grad)
        else:
            update = step * grad / expand_to(per_example_norm(grad), x)
        return i + 1, project(tf.stop_gradient(x_adv + update)), best_x, best_score

    _, x_adv, best_x, best_score = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x_adv, best_x, best_score)
    )
    if not keep_best:
        return x_adv
    final = success_margin(fn(x_adv), y, targeted)
    return tf.where(expand_to(final > best_score, x), x_adv, best_x)


def pgd_perturb(model, x, y, eps, steps, step_size=None, norm="linf", random_start=True, clip=(0.0, 1.0),
                targeted=False, training=False, loss="ce", bpda=False, seed=None, keep_best=False):
    """Projected gradient descent: one run, returned as a ``tf.Tensor`` (graph-safe).

    Usable inside a ``train_step`` or any ``tf.function``. For evaluation prefer
    :func:`pgd_attack`, which batches, compiles and takes the worst case over restarts.

    Args:
        model: Keras model (logits or softmax output; differentiated through its logits) or a
            callable ``x -> logits``.
        x: Inputs, a batch.
        y: Integer true labels (untargeted) or target labels (``targeted=True``).
        eps: Radius of the Linf / L2 ball (number or scalar tensor, >= 0).
        steps: Number of gradient steps (int or scalar tensor).
        step_size: Step length; default ``2.5 * eps / steps``.
        norm: ``"linf"`` or ``"l2"``.
        random_start: Start from a uniform random point of the ball.
        clip: ``(low, high)`` valid input range, or ``None``.
        targeted: Move towards class ``y`` instead of away from it.
        training: Run the model in training mode (dropout, batch statistics).
        loss: ``"ce"`` (cross-entropy), ``"margin"`` (Carlini-Wagner logit margin) or a
            callable ``(y, logits) -> per-example loss`` to maximize.
        bpda: ``True`` to backpropagate through registered straight-through surrogates, or a
            differentiable model used for the backward pass (forward stays ``model``).
        seed: ``None`` for stateful randomness, or an int / shape-[2] int tensor for a
            deterministic (stateless) random start.
        keep_best: Return the iterate with the largest success margin seen (the clean input
            included) instead of the last one.

    Returns:
        Adversarial inputs, a float32 tensor shaped like ``x``.

    Example:
        >>> x_adv = pgd_perturb(model, x[:8], y[:8], eps=0.1, steps=10)  # doctest: +SKIP
    """
    check_attack_args(eps, steps, norm, loss, step_size)
    check_eps_range(eps, norm, clip)
    fn = logits_fn(model, training, bpda)
    if isinstance(seed, (int, np.integer)):
        seed = tf.constant([int(seed), 0], tf.int32)
    use_layers = bpda is True and isinstance(model, keras.layers.Layer)
    with straight_through(model) if use_layers else contextlib.nullcontext():
        return _pgd(fn, x, y, eps, steps, step_size, norm, random_start, clip, targeted, loss, seed, keep_best)


# ---------------------------------------------------------------------------------------------
# Batched, compiled evaluation attacks
# ---------------------------------------------------------------------------------------------
_COMPILED = weakref.WeakKeyDictionary()


def _attack_graph(model, fn, use_layers, config, x, y, eps, steps, step_size, seed):
    norm, random_start, clip, targeted, loss = config
    with straight_through(model) if use_layers else contextlib.nullcontext():
        return _pgd(fn, x, y, eps, steps, step_size, norm, random_start, clip, targeted, loss, seed, True)


def _compiled_attack(model, input_shape, norm, random_start, clip, targeted, loss, bpda, training):
    clip = None if clip is None else tuple(clip)

    def build():
        fn = logits_fn(model, training, bpda)
        use_layers = bpda is True and isinstance(model, keras.layers.Layer)
        # A batch dimension of None: one trace serves every batch and subset size.
        signature = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int64),
                     tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([2], tf.int32)]
        config = (norm, random_start, clip, targeted, loss)
        return tf.function(functools.partial(_attack_graph, model, fn, use_layers, config), input_signature=signature)

    key = (tuple(input_shape), norm, random_start, clip, targeted, loss, bpda, training)
    return cached_attack(_COMPILED, model, key, build)


def pgd_attack(model, x, y, eps, steps=20, step_size=None, restarts=1, norm="linf", random_start=True,
               clip=(0.0, 1.0), targeted=False, loss="ce", bpda=False, batch_size=256, seed=0, training=False):
    """Batched, compiled PGD; returns the worst case per example over ``restarts`` runs.

    Each run keeps its best iterate (largest misclassification margin, the clean input
    included); across runs the example with the largest margin wins. Later runs attack only
    the examples earlier runs did not break. Deterministic for a given ``seed``; run ``r`` does
    the same whatever ``restarts`` is, so more restarts never help the model.

    Args:
        model: Keras model or callable returning logits.
        x, y: Inputs and integer labels (targets when ``targeted``).
        eps: Radius (>= 0). steps, step_size, norm, random_start, clip, targeted, loss, bpda,
            training: as in :func:`pgd_perturb`.
        restarts: Number of random restarts (>= 1).
        batch_size: Examples per compiled call.
        seed: Base seed of the random starts.

    Returns:
        ``np.ndarray`` of adversarial inputs, float32, shaped like ``x``.

    Example:
        >>> x_adv = pgd_attack(model, x, y, eps=0.3, steps=40, restarts=2)  # doctest: +SKIP
    """
    check_attack_args(eps, steps, norm, loss, step_size)
    if int(restarts) < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}.")
    x, y = validated_attack_inputs(model, x, y, targeted)
    check_eps_range(eps, norm, clip, x.shape[1:])
    attack = _compiled_attack(model, x.shape[1:], norm, bool(random_start), clip, bool(targeted), loss, bpda,
                              bool(training))
    default_step = 2.5 * float(eps) / int(steps)
    step = tf.constant(default_step if step_size is None else float(step_size), tf.float32)
    best_x, best_score = x.copy(), np.full(len(x), -np.inf, np.float32)
    for r in range(int(restarts)):
        # Later restarts only attack the examples no earlier run has broken (same worst case, less work).
        active = np.arange(len(x)) if r == 0 else np.flatnonzero(best_score <= 0)
        for start in range(0, len(active), batch_size):
            idx = active[start:start + batch_size]
            run_seed = tf.constant([int(seed) * 1000 + r, start], tf.int32)
            adv = attack(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(float(eps)), tf.constant(int(steps)),
                         step, run_seed).numpy()
            score = success_margins(model, adv, y[idx], targeted, len(adv), training)
            better = score > best_score[idx]
            best_x[idx[better]] = adv[better]
            best_score[idx[better]] = score[better]
    return best_x


def fgsm_attack(model, x, y, eps, clip=(0.0, 1.0), targeted=False, loss="ce", bpda=False, batch_size=256):
    """Fast gradient sign method: one signed-gradient step of size ``eps`` from ``x``.

    Example:
        >>> x_adv = fgsm_attack(model, x, y, eps=0.1)  # doctest: +SKIP
    """
    return pgd_attack(model, x, y, eps, steps=1, step_size=max(float(eps), 1e-12), restarts=1,
                      random_start=False, clip=clip, targeted=targeted, loss=loss, bpda=bpda,
                      batch_size=batch_size)

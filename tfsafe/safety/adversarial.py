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

This module also holds what every attack shares (the logits function, argument checks,
success margin, projections), which :mod:`tfsafe.safety.apgd` builds on. Accuracy under
attack, the worst case over attacks and transfer attacks are in
:mod:`tfsafe.safety.robust_accuracy`; adversarial training is in
:mod:`tfsafe.safety.adversarial_training`.
"""

import contextlib
import functools
import weakref

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import compiled_logits, logits_model
from tfsafe.safety.bpda import straight_through
from tfsafe.validation import (
    check_continuous_inputs,
    check_features,
    check_labels,
    model_input_shape,
    model_num_classes,
)

__all__ = ["NORMS", "LOSSES", "check_attack_args", "cached_attack", "pgd_perturb", "pgd_attack", "fgsm_attack"]

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")

# ---------------------------------------------------------------------------------------------
# The PGD core (graph-safe)
# ---------------------------------------------------------------------------------------------
def _logits_fn(model, training, bpda):
    if getattr(model, "is_tflite", False):
        raise UnsupportedModelError(
            "A .tflite model has no gradients; attack it with transfer_attack(source, target=...) "
            "from a Keras source model."
        )
    if isinstance(model, keras.Model):
        lm = logits_model(model)

        def fn(x):
            return lm(x, training=training)
    elif callable(model):
        def fn(x):  # a one-unit logit z is the binary classifier [0, z]
            z = model(x)
            return tf.concat([tf.zeros_like(z), z], axis=-1) if z.shape[-1] == 1 else z
    else:
        raise UnsupportedModelError(
            f"Expected a Keras model or a callable returning logits, got {type(model).__name__}.")
    if bpda is not None and bpda is not False and bpda is not True:
        # Whole-model BPDA: forward through the model, backward through the surrogate model.
        surrogate = _logits_fn(bpda, training, None)
        exact_fn = fn

        def fn(x):
            exact = exact_fn(x)
            approx = surrogate(x)
            return approx + tf.stop_gradient(exact - approx)
    return fn


def check_attack_args(eps, steps, norm, loss, step_size=None):
    if isinstance(eps, (int, float, np.number)):
        if not np.isfinite(eps) or eps < 0:
            raise InputError(f"eps must be a finite number >= 0, got {eps}.")
    if isinstance(steps, (int, np.integer)) and steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}.")
    if isinstance(step_size, (int, float, np.number)) and not (np.isfinite(step_size) and step_size > 0):
        raise InputError(f"step_size must be a positive number, got {step_size}.")
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}.")
    if not (loss in LOSSES or callable(loss)):
        raise InputError(f"loss must be one of {LOSSES} or a callable(y, logits) -> per-example loss, got {loss!r}.")



def _check_eps_range(eps, norm, clip, x_shape=None):
    """eps must fit the data range: Linf <= high - low, L2 <= (high - low) * sqrt(input size)."""
    if clip is None or not isinstance(eps, (int, float, np.number)):
        return
    span = float(clip[1]) - float(clip[0])
    if not span > 0:
        raise InputError(f"clip must be (low, high) with low < high, got {tuple(clip)}.")
    limit = span if norm == "linf" else (span * float(np.sqrt(np.prod(x_shape))) if x_shape is not None else None)
    if limit is not None and float(eps) > limit + 1e-9:
        raise InputError(f"eps={eps:g} is outside the data range: a {norm} radius above {limit:g} covers every "
                         f"input in clip={tuple(clip)}; use a radius in the data's units (e.g. 0.3 for [0, 1] "
                         f"MNIST, 8/255 for [0, 1] CIFAR-10).")


def _margin(logits, y, targeted):
    """Per-example success margin: > 0 means the attack succeeded (misclassified / hit target)."""
    onehot = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
    label_logit = tf.reduce_sum(logits * onehot, axis=-1)
    other = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
    return label_logit - other if targeted else other - label_logit


def _objective(loss, logits, y, targeted):
    if callable(loss):
        return loss(y, logits)
    if loss == "margin":
        return _margin(logits, y, targeted)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return -ce if targeted else ce


def _per_example_norm(t):
    return tf.sqrt(tf.reduce_sum(tf.reshape(t * t, [tf.shape(t)[0], -1]), axis=1) + 1e-12)


def _expand(v, like):
    return tf.reshape(v, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


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
    return direction / _expand(_per_example_norm(direction), x) * _expand(radius, x)


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
            scale = tf.minimum(1.0, eps / _per_example_norm(delta))
            delta = delta * _expand(scale, x)
        out = x + delta
        return out if lo is None else tf.clip_by_value(out, lo, hi)

    x_adv = project(x + _random_start(x, eps, norm, seed)) if random_start else x
    if keep_best:
        best_x, best_score = x, _margin(fn(x), y, targeted)
    else:
        best_x, best_score = x_adv, tf.zeros_like(y, tf.float32)

    def body(i, x_adv, best_x, best_score):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = fn(x_adv)
            objective = tf.reduce_sum(_objective(loss, logits, y, targeted))
        grad = tape.gradient(objective, x_adv)
        if grad is None:  # e.g. tf.round has no gradient: the attack cannot move (use bpda)
            grad = tf.zeros_like(x_adv)
        if keep_best:
            score = tf.stop_gradient(_margin(logits, y, targeted))
            better = score > best_score
            best_x = tf.where(_expand(better, x), x_adv, best_x)
            best_score = tf.where(better, score, best_score)
        if norm == "linf":
            update = step * tf.sign(grad)
        else:
            update = step * grad / _expand(_per_example_norm(grad), x)
        return i + 1, project(tf.stop_gradient(x_adv + update)), best_x, best_score

    _, x_adv, best_x, best_score = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x_adv, best_x, best_score)
    )
    if not keep_best:
        return x_adv
    final = _margin(fn(x_adv), y, targeted)
    return tf.where(_expand(final > best_score, x), x_adv, best_x)


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
    _check_eps_range(eps, norm, clip)
    fn = _logits_fn(model, training, bpda)
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


def cached_attack(compiled, model, key, build):
    """``build()`` once per ``(model, key)`` in the weak map ``compiled`` (one trace per setting).

    Shared by PGD and APGD; a model that cannot be weakly referenced is compiled uncached.
    """
    try:
        cache = compiled.setdefault(model, {})
    except TypeError:  # not weak-referenceable: compile without caching
        cache = {}
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _compiled_attack(model, input_shape, norm, random_start, clip, targeted, loss, bpda, training):
    clip = None if clip is None else tuple(clip)

    def build():
        fn = _logits_fn(model, training, bpda)
        use_layers = bpda is True and isinstance(model, keras.layers.Layer)
        # A batch dimension of None: one trace serves every batch and subset size.
        signature = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int64),
                     tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([2], tf.int32)]
        config = (norm, random_start, clip, targeted, loss)
        return tf.function(functools.partial(_attack_graph, model, fn, use_layers, config), input_signature=signature)

    key = (tuple(input_shape), norm, random_start, clip, targeted, loss, bpda, training)
    return cached_attack(_COMPILED, model, key, build)


def _validated(model, x, y, targeted):
    if isinstance(model, keras.Model):
        check_continuous_inputs(model, "A gradient attack")
        x = check_features(x, "x", model_input_shape(model))
        y = check_labels(y, model_num_classes(model), "y (targets)" if targeted else "y", n=len(x))
    else:
        x = check_features(x, "x")
        y = check_labels(y, None, "y", n=len(x))
    return x, y


def _margins_numpy(model, x, y, targeted, batch_size, training=False):
    fn = compiled_logits(model) if not training else _logits_fn(model, True, None)
    out = []
    for i in range(0, len(x), batch_size):
        logits = tf.convert_to_tensor(fn(tf.constant(x[i:i + batch_size])), tf.float32)
        out.append(_margin(logits, tf.constant(y[i:i + batch_size], tf.int32), targeted).numpy())
    return np.concatenate(out)


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
    x, y = _validated(model, x, y, targeted)
    _check_eps_range(eps, norm, clip, x.shape[1:])
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
            score = _margins_numpy(model, adv, y[idx], targeted, len(adv), training)
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

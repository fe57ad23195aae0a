"""What every gradient attack shares: the logits function, argument checks, the success margin.

:mod:`tfsafe.safety.adversarial` (PGD, FGSM), :mod:`tfsafe.safety.apgd` (APGD) and
:mod:`tfsafe.safety.robust_accuracy` build on these. The logits function routes one-unit sigmoid
heads to two-class logits ``[0, z]`` and applies whole-model BPDA; the margin is > 0 exactly when
an attack succeeded.
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import compiled_logits, logits_model
from tfsafe.validation import (
    check_continuous_inputs,
    check_features,
    check_labels,
    model_input_shape,
    model_num_classes,
)

__all__ = ["NORMS", "LOSSES", "logits_fn", "check_attack_args", "check_eps_range", "success_margin",
           "attack_objective", "per_example_norm", "expand_to", "cached_attack", "validated_attack_inputs",
           "success_margins"]

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


def logits_fn(model, training, bpda):
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
        surrogate = logits_fn(bpda, training, None)
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


def check_eps_range(eps, norm, clip, x_shape=None):
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


def success_margin(logits, y, targeted):
    """Per-example success margin: > 0 means the attack succeeded (misclassified / hit target)."""
    onehot = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
    label_logit = tf.reduce_sum(logits * onehot, axis=-1)
    other = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
    return label_logit - other if targeted else other - label_logit


def attack_objective(loss, logits, y, targeted):
    if callable(loss):
        return loss(y, logits)
    if loss == "margin":
        return success_margin(logits, y, targeted)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return -ce if targeted else ce


def per_example_norm(t):
    return tf.sqrt(tf.reduce_sum(tf.reshape(t * t, [tf.shape(t)[0], -1]), axis=1) + 1e-12)


def expand_to(v, like):
    return tf.reshape(v, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


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


def validated_attack_inputs(model, x, y, targeted):
    if isinstance(model, keras.Model):
        check_continuous_inputs(model, "A gradient attack")
        x = check_features(x, "x", model_input_shape(model))
        y = check_labels(y, model_num_classes(model), "y (targets)" if targeted else "y", n=len(x))
    else:
        x = check_features(x, "x")
        y = check_labels(y, None, "y", n=len(x))
    return x, y


def success_margins(model, x, y, targeted, batch_size, training=False):
    fn = compiled_logits(model) if not training else logits_fn(model, True, None)
    out = []
    for i in range(0, len(x), batch_size):
        logits = tf.convert_to_tensor(fn(tf.constant(x[i:i + batch_size])), tf.float32)
        out.append(success_margin(logits, tf.constant(y[i:i + batch_size], tf.int32), targeted).numpy())
    return np.concatenate(out)

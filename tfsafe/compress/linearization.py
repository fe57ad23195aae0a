"""Fewer ReLUs: a per-unit ReLU mask searched under a ReLU budget (SNL / RLNet style).

Private inference pays for every ReLU with a garbled circuit, so a model that computes the
nonlinearity on fewer units is faster. :class:`PolyReLUMask` replaces a ReLU with

    alpha * ReLU(x) + (1 - alpha) * p(x)

per unit (channel x pixel for feature maps), where ``p`` is the identity or a learned
polynomial ``a x^2 + b x`` (one ``a, b`` per channel) and ``ReLU`` is the layer's own form
(plain, ReLU6 / ``max_value``, ``threshold``). :func:`linearize` puts a mask on every ReLU that
:func:`tfsafe.metrics.relu_count` counts; with a budget and data it keeps the units whose ReLU
differs most from the identity on that data, or runs a mask search passed as ``search`` (the
SNL search lives in :mod:`tfsafe.methods.relu_mask_search`). :func:`binarize_masks` keeps
exactly ``relu_budget`` units and freezes the mask.

The ReLU count of a mask layer is the number of units whose mask is on (``alpha > threshold``;
after binarization ``alpha`` is exactly 0 or 1).
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import copy_layer_weights, layer_entry, rebuild
from tfsafe.compress.strip import register_stripper
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_relu_counter, register_weight_stats, relu_count
from tfsafe.models import logits_model
from tfsafe.objectives import softmax_cross_entropy
from tfsafe.validation import check_features, check_model

__all__ = [
    "PolyReLUMask", "UnitInterval", "linearize", "find_relus", "mask_layers", "mask_relu_count",
    "mask_unit_count", "binarize_masks", "check_relu_budget", "relu_form",
]

LINEAR_MODES = ("identity", "poly")


@keras.utils.register_keras_serializable(package="tfsafe")
class UnitInterval(keras.constraints.Constraint):
    """Clips a weight to [0, 1] after every optimizer step (keeps mask values meaningful)."""

    def __call__(self, w):
        return tf.clip_by_value(w, 0.0, 1.0)


@keras.utils.register_keras_serializable(package="tfsafe")
class PolyReLUMask(keras.layers.Layer):
    """A ReLU whose units can be switched to a linear or low-degree polynomial function.

    ``output = p(x) + alpha * (ReLU(x) - p(x))`` with one ``alpha`` per unit (the full
    per-example shape: channel x pixel for feature maps), ``ReLU`` the masked layer's form
    (``max(x, 0)``, capped at ``max_value`` (ReLU6), zero below ``relu_threshold``) and
    ``p(x) = x`` (``linear="identity"``)
    or ``p(x) = a x^2 + b x`` with ``a, b`` learned per channel (``linear="poly"``, initialised to
    ``poly_init = (a, b)``, a small ``a`` so the start is nearly linear and stable).

    During the search ``alpha`` is trainable in [0, 1]. ``frozen=True`` makes it a fixed binary
    mask (a non-trainable weight); :func:`binarize_masks` produces frozen layers. The layer is
    made of elementwise ops only (RELU, SUB, MUL, ADD), so it converts to int8 TFLite.

    Args:
        linear: ``"identity"`` or ``"poly"``: the function of masked-off units.
        frozen: Whether ``alpha`` is a fixed (non-trainable) mask.
        poly_init: Initial ``(a, b)`` of the polynomial.
        threshold: A unit counts as a ReLU when ``alpha > threshold``.
        initial_alpha: Initial mask value (1.0: the layer starts as an exact ReLU).
        max_value: Cap of the ReLU a kept unit computes (6.0 for ReLU6; ``None``: no cap).
        relu_threshold: Inputs below it give 0 in a kept unit (``ReLU(threshold=...)``).

    Example:
        >>> layer = PolyReLUMask()
        >>> layer(tf.constant([[-2.0, 3.0]])).numpy().tolist()
        [[0.0, 3.0]]
        >>> _ = layer.alpha.assign([0.0, 1.0])  # first unit linear, second a ReLU
        >>> layer(tf.constant([[-2.0, 3.0]])).numpy().tolist(), layer.relu_count()
        ([[-2.0, 3.0]], 1)
    """

    def __init__(self, linear="identity", frozen=False, poly_init=(0.01, 1.0), threshold=0.01,
                 initial_alpha=1.0, max_value=None, relu_threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        if linear not in LINEAR_MODES:
            raise InputError(f"linear must be one of {LINEAR_MODES}, got {linear!r}.")
        if not 0.0 <= float(threshold) < 1.0:
            raise InputError(f"threshold must be in [0, 1), got {threshold}.")
        self.linear = linear
        self.frozen = bool(frozen)
        self.poly_init = tuple(float(v) for v in poly_init)
        self.threshold = float(threshold)
        self.initial_alpha = float(initial_alpha)
        self.max_value = None if max_value is None else float(max_value)
        self.relu_threshold = float(relu_threshold)

    def build(self, input_shape):
        shape = tuple(input_shape[1:])
        if any(d is None for d in shape):
            raise UnsupportedModelError(
                f"PolyReLUMask '{self.name}' needs a fixed per-example shape, got {shape}; "
                "give the model a fully defined input shape."
            )
        self.alpha = self.add_weight(
            "alpha", shape=shape, initializer=keras.initializers.Constant(self.initial_alpha),
            constraint=UnitInterval(), trainable=not self.frozen,
        )
        if self.linear == "poly":
            channels = (shape[-1],)
            self.poly_a = self.add_weight(
                "poly_a", shape=channels, initializer=keras.initializers.Constant(self.poly_init[0]))
            self.poly_b = self.add_weight(
                "poly_b", shape=channels, initializer=keras.initializers.Constant(self.poly_init[1]))
        super().build(input_shape)

    def linear_part(self, x):
        """``p(x)``: what a masked-off unit computes."""
        if self.linear == "identity":
            return x
        return (self.poly_a * x + self.poly_b) * x

    def relu_part(self, x):
        """What a unit that keeps its ReLU computes (the masked layer's ReLU form)."""
        if self.max_value == 6.0 and self.relu_threshold == 0.0:
            return tf.nn.relu6(x)
        return keras.activations.relu(x, max_value=self.max_value, threshold=self.relu_threshold)

    def call(self, inputs):
        linear = self.linear_part(inputs)
        return linear + self.alpha * (self.relu_part(inputs) - linear)

    def mask(self):
        """Boolean numpy mask of the units that compute a ReLU."""
        return self.alpha.numpy() > self.threshold

    def relu_count(self):
        """Number of units that compute a ReLU."""
        return int(np.count_nonzero(self.mask()))

    def unit_count(self):
        """Number of units (the ReLU count of the all-ReLU layer)."""
        return int(np.prod(self.alpha.shape))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "linear": self.linear, "frozen": self.frozen, "poly_init": list(self.poly_init),
            "threshold": self.threshold, "initial_alpha": self.initial_alpha,
            "max_value": self.max_value, "relu_threshold": self.relu_threshold,
        })
        return config


# ----------------------------------------------------------------------------- finding ReLUs


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)


_ACTIVATION_FORMS = {"relu": {"max_value": None, "relu_threshold": 0.0},
                     "relu6": {"max_value": 6.0, "relu_threshold": 0.0}}


def relu_form(layer):
    """``(kind, form)`` for a layer applying a ReLU that ``relu_count`` counts, else ``None``.

    ``kind`` is ``"layer"`` (a ``ReLU`` / ``Activation`` layer) or ``"fused"``
    (``activation="relu"`` / ``"relu6"`` inside a Conv, Dense...); ``form`` holds the
    :class:`PolyReLUMask` arguments of that ReLU (``max_value``, ``relu_threshold``). ReLUs with a
    negative slope (leaky) are not ReLUs to ``relu_count`` and are left alone.
    """
    if isinstance(layer, PolyReLUMask):
        return None
    if isinstance(layer, keras.layers.ReLU):
        slope = float(np.asarray(layer.negative_slope)) if layer.negative_slope is not None else 0.0
        if slope != 0.0:
            return None
        max_value = None if layer.max_value is None else float(np.asarray(layer.max_value))
        return "layer", {"max_value": max_value, "relu_threshold": float(np.asarray(layer.threshold))}
    name = _activation_name(layer)
    if name not in _ACTIVATION_FORMS:
        return None
    if isinstance(layer, keras.layers.Activation):
        return "layer", dict(_ACTIVATION_FORMS[name])
    if hasattr(layer, "get_config") and "activation" in layer.get_config():
        return "fused", dict(_ACTIVATION_FORMS[name])
    return None


def _relu_kind(layer):
    """``"layer"``, ``"fused"`` or ``None``: how ``layer`` applies a ReLU (see :func:`relu_form`)."""
    found = relu_form(layer)
    return found[0] if found else None


def find_relus(model):
    """Names of the layers of ``model`` that apply a ReLU (layers or fused activations)."""
    return [layer.name for layer in model.layers if relu_form(layer)]


def mask_layers(model):
    """The :class:`PolyReLUMask` layers of ``model``, in graph order."""
    return [layer for layer in model.layers if isinstance(layer, PolyReLUMask)]


def mask_relu_count(model):
    """Number of units that compute a ReLU across the mask layers of ``model``."""
    return sum(layer.relu_count() for layer in mask_layers(model))


def mask_unit_count(model):
    """Number of units across the mask layers (their all-ReLU count)."""
    return sum(layer.unit_count() for layer in mask_layers(model))


def check_relu_budget(relu_budget, total):
    """Return ``relu_budget`` as an int after checking ``0 < relu_budget <= total``."""
    if isinstance(relu_budget, bool) or not isinstance(relu_budget, (int, np.integer, float)):
        raise InputError(f"relu_budget must be a positive integer, got {relu_budget!r}.")
    if relu_budget != int(relu_budget) or relu_budget <= 0:
        raise InputError(
            f"relu_budget must be a positive integer, got {relu_budget}; pass the number of ReLU "
            "units to keep (e.g. total // 10 for 10x fewer ReLUs)."
        )
    if relu_budget > total:
        raise InputError(
            f"relu_budget={int(relu_budget)} is larger than the model's ReLU count ({total}); "
            f"pass a budget in 1..{total}."
        )
    return int(relu_budget)


# ----------------------------------------------------------------------------- linearize


def linearize(model, relu_budget=None, x=None, y=None, linear="identity", poly_init=(0.01, 1.0),
              threshold=0.01, allocation="global", search=None, **search_kwargs):
    """Put a :class:`PolyReLUMask` on every ReLU of ``model``; optionally keep only a budget.

    Every ReLU that :func:`tfsafe.metrics.relu_count` counts is masked: ``ReLU`` layers (plain,
    ``max_value`` such as ReLU6, ``threshold``), ``Activation("relu")`` / ``Activation("relu6")``
    and layers with ``activation="relu"`` / ``"relu6"`` (Conv, Dense, ...), which are split into
    the layer with a linear activation plus a mask layer named ``<layer>_relu``. A kept unit
    computes the same ReLU form as before. Nested models are inlined first. The returned model
    computes exactly what ``model`` computes until the masks change; ``model`` is not modified.

    Args:
        model: A Sequential or Functional ``tf_keras`` (or Keras 3) model.
        relu_budget: Number of ReLU units to keep. ``None`` returns the relaxed (all-ReLU)
            masked model. Otherwise the masks are binarized to exactly ``relu_budget`` units and
            frozen: without ``search``, the units kept are those whose ReLU differs most from the
            identity on ``x`` (mean ``|ReLU(z) - z|`` of the unit's input ``z``; units whose
            input is nearly always positive cost least to linearize); with ``search`` the masks
            are trained first.
        x, y: Data for the budget (``y`` needed by ``search`` and ``allocation="sensitivity"``).
        linear: ``"identity"`` or ``"poly"``: what masked-off units compute.
        poly_init: Initial ``(a, b)`` of ``a x^2 + b x``.
        threshold: ``alpha > threshold`` counts as a ReLU during a search.
        allocation: ``"global"`` (top-k units over all layers) or ``"sensitivity"`` (per-layer
            budgets from each layer's loss increase when fully linearized).
        search: Optional ``fn(masked, x, y, relu_budget, **search_kwargs)`` training the relaxed
            masks in place, e.g. :func:`tfsafe.methods.relu_mask_search.search_relu_mask` (SNL).
        **search_kwargs: Passed to ``search``.

    Returns:
        The masked model (a new model). With a budget, ``relu_count(result) == relu_budget``.

    Raises:
        UnsupportedModelError: when the model has no ReLU or cannot be rewritten.
        InputError: for a budget <= 0 or above the model's ReLU count, or a budget without data.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> masked = linearize(small_cnn())
        >>> mask_relu_count(masked)
        1600
    """
    model = check_model(model)
    if linear not in LINEAR_MODES:
        raise InputError(f"linear must be one of {LINEAR_MODES}, got {linear!r}.")
    if not find_relus(model) and not mask_layers(model):
        raise UnsupportedModelError(
            f"'{model.name}' has no ReLU to linearize (looked for ReLU / ReLU6 layers, "
            "Activation('relu' / 'relu6') and layers with activation='relu' / 'relu6')."
        )
    mask_config = {"linear": linear, "poly_init": list(poly_init), "threshold": threshold}

    def replace(layer):
        found = relu_form(layer)
        if found is None:
            return None
        kind, form = found
        if kind == "layer":
            return [layer_entry(PolyReLUMask, dict(mask_config, name=layer.name, **form))]
        config = layer.get_config()
        config["activation"] = "linear"
        return [layer_entry(layer, config),
                layer_entry(PolyReLUMask, dict(mask_config, name=f"{layer.name}_relu", **form))]

    if relu_budget is not None:
        budget = check_relu_budget(relu_budget, relu_count(model))
        if x is None or (y is None and (search is not None or allocation == "sensitivity")):
            raise InputError(
                "linearize(relu_budget=...) chooses the units on data: pass x (and y for a search or "
                "allocation='sensitivity'), or call linearize(model) and binarize_masks() yourself."
            )
        x = check_features(x, "x", tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype.as_numpy_dtype)
    masked, _ = rebuild(model, replace)
    if relu_budget is None:
        return masked
    if search is not None:
        search(masked, x, y, budget, **search_kwargs)
    else:
        _set_alpha_from_data(masked, x)
    result = binarize_masks(masked, budget, allocation=allocation, x=x, y=y)
    left = relu_count(result)
    if left != budget:
        raise UnsupportedModelError(
            f"linearize() kept {left} ReLU units instead of {budget}: layers "
            f"{[n for n in find_relus(result)]} apply a ReLU tfsafe cannot mask."
        )
    return result


def _set_alpha_from_data(masked, x, max_examples=256):
    """Set each relaxed mask's ``alpha`` to its unit's mean ``|ReLU(z) - z|`` on ``x``, scaled
    into [0, 1] over all units, so :func:`binarize_masks` keeps the most nonlinear units."""
    masks = mask_layers(masked)
    probe = keras.Model(masked.inputs, [m.input for m in masks])
    outputs = probe.predict(x[:max_examples], batch_size=64, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    scores = [np.mean(np.abs(m.relu_part(tf.constant(z)).numpy() - z), axis=0) for m, z in zip(masks, outputs)]
    top = max(float(np.max(score)) for score in scores) or 1.0
    for layer, score in zip(masks, scores):
        layer.alpha.assign((score / top).astype(np.float32))


# ----------------------------------------------------------------------------- binarize


def _layer_budgets_by_sensitivity(model, masks, budget, x, y, batch_size=256):
    """Split ``budget`` across layers in proportion to each layer's loss increase when it is
    fully linearized (so the ReLU density of a layer follows its loss increase per unit)."""
    lm = logits_model(model)
    x, y = x[:1024], y[:1024]

    def loss():
        return float(np.mean([softmax_cross_entropy(y[i:i + batch_size], lm(x[i:i + batch_size], training=False))
                              for i in range(0, len(x), batch_size)]))

    base = loss()
    weights = []
    for layer in masks:
        saved = layer.alpha.numpy()
        layer.alpha.assign(np.zeros_like(saved))
        weights.append(max(loss() - base, 1e-6))
        layer.alpha.assign(saved)
    caps = np.array([layer.unit_count() for layer in masks], dtype=np.int64)
    share = np.array(weights) / np.sum(weights)
    budgets = np.zeros(len(masks), dtype=np.int64)
    remaining, open_ = budget, np.ones(len(masks), bool)
    while remaining > 0 and open_.any():  # water-filling: capped layers hand their surplus on
        want = remaining * share * open_ / np.sum(share * open_)
        add = np.minimum(np.floor(want).astype(np.int64), caps - budgets)
        if add.sum() == 0:  # hand out the rounding remainder one unit at a time
            order = np.argsort(-(want - np.floor(want)))
            for i in order:
                if remaining and open_[i] and budgets[i] < caps[i]:
                    budgets[i] += 1
                    remaining -= 1
            open_ &= budgets < caps
            continue
        budgets += add
        remaining -= int(add.sum())
        open_ &= budgets < caps
    return budgets


def binarize_masks(model, relu_budget, allocation="global", x=None, y=None):
    """Keep exactly ``relu_budget`` ReLU units (largest ``alpha``) and freeze the masks.

    Args:
        model: A model with :class:`PolyReLUMask` layers (e.g. after the search).
        relu_budget: Number of units that stay ReLU.
        allocation: ``"global"`` ranks all units together; ``"sensitivity"`` first gives each
            layer a budget in proportion to the loss increase when that layer alone is fully
            linearized (needs ``x, y``; capped at the layer's size), then ranks within the layer.

    Returns:
        A new model whose mask layers are frozen binary masks; ``mask_relu_count`` of it equals
        ``relu_budget``.

    Example:
        >>> from tfsafe.models import mlp
        >>> frozen = binarize_masks(linearize(mlp(units=(32,))), relu_budget=8)
        >>> mask_relu_count(frozen)
        8
    """
    masks = mask_layers(model)
    if not masks:
        raise UnsupportedModelError(f"'{model.name}' has no PolyReLUMask layers; call linearize() first.")
    budget = check_relu_budget(relu_budget, sum(m.unit_count() for m in masks))
    alphas = [m.alpha.numpy() for m in masks]
    if allocation == "global":
        flat = np.concatenate([a.reshape(-1) for a in alphas])
        keep = np.zeros(flat.size, bool)
        keep[np.argsort(-flat, kind="stable")[:budget]] = True
        splits = np.cumsum([a.size for a in alphas])[:-1]
        new_alphas = [k.reshape(a.shape) for k, a in zip(np.split(keep, splits), alphas)]
    elif allocation == "sensitivity":
        if x is None or y is None:
            raise InputError("allocation='sensitivity' measures each layer's loss: pass x and y.")
        budgets = _layer_budgets_by_sensitivity(model, masks, budget, np.asarray(x, np.float32), np.asarray(y))
        new_alphas = []
        for a, b in zip(alphas, budgets):
            keep = np.zeros(a.size, bool)
            keep[np.argsort(-a.reshape(-1), kind="stable")[:b]] = True
            new_alphas.append(keep.reshape(a.shape))
    else:
        raise InputError(f"allocation must be 'global' or 'sensitivity', got {allocation!r}.")

    by_name = {m.name: a.astype(np.float32) for m, a in zip(masks, new_alphas)}

    def freeze(layer):
        if not isinstance(layer, PolyReLUMask):
            return None
        return [layer_entry(PolyReLUMask, dict(layer.get_config(), frozen=True))]

    frozen, _ = rebuild(model, freeze)
    for layer in mask_layers(frozen):
        copy_layer_weights(model.get_layer(layer.name), layer)
        layer.alpha.assign(by_name[layer.name])
    return frozen


# ----------------------------------------------------------------------------- strip / metrics


def _strip_mask(layer):
    """Fully-on masks become their ReLU form (ReLU, ReLU6...), fully-off identity masks a linear
    Activation, others stay frozen masks."""
    alpha = layer.alpha.numpy()
    if not np.all((alpha == 0.0) | (alpha == 1.0)):
        raise UnsupportedModelError(
            f"PolyReLUMask '{layer.name}' is still relaxed (mask values between 0 and 1); call "
            "binarize_masks(model, relu_budget) before strip() or export."
        )
    if np.all(alpha == 1.0):
        return keras.layers.ReLU(max_value=layer.max_value, threshold=layer.relu_threshold, name=layer.name), []
    if np.all(alpha == 0.0) and layer.linear == "identity":
        return keras.layers.Activation("linear", name=layer.name), []
    new = PolyReLUMask.from_config(dict(layer.get_config(), frozen=True))
    # Frozen: the weights are ordered trainable (poly) first, then alpha.
    weights = ([layer.poly_a.numpy(), layer.poly_b.numpy()] if layer.linear == "poly" else []) + [alpha]
    return new, weights


register_stripper(PolyReLUMask, _strip_mask)


def _mask_weight_stats(layer):
    """Deployed weights: the polynomial coefficients and the mask (a 1-bit map once frozen)."""
    stats = []
    if layer.linear == "poly":
        stats += [WeightStat(layer.name, "poly_a", layer.poly_a.numpy()),
                  WeightStat(layer.name, "poly_b", layer.poly_b.numpy())]
    alpha = layer.alpha.numpy()
    stats.append(WeightStat(layer.name, "alpha", shape=alpha.shape, params=alpha.size, nonzeros=alpha.size,
                            bits=1 if layer.frozen else 32, kind="other"))
    return stats


register_relu_counter(PolyReLUMask, lambda layer: layer.relu_count())
register_weight_stats(PolyReLUMask, _mask_weight_stats)

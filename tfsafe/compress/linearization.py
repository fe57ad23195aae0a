"""Fewer ReLUs: a per-unit ReLU mask searched under a ReLU budget (SNL / RLNet style).

Private inference pays for every ReLU with a garbled circuit, so a model that computes the
nonlinearity on fewer units is faster. :class:`PolyReLUMask` replaces a ReLU with

    alpha * ReLU(x) + (1 - alpha) * p(x)

per unit (channel x pixel for feature maps), where ``p`` is the identity or a learned
polynomial ``a x^2 + b x`` (one ``a, b`` per channel). The search (:class:`ReLUMaskSearch` +
:class:`ReLUBudgetSchedule`) trains ``alpha`` in [0, 1] with an L1 penalty whose weight grows
1.1x whenever the ReLU count stalls, until the count reaches the budget;
:func:`binarize_masks` then keeps exactly ``relu_budget`` units and freezes the mask.

The ReLU count of a mask layer is the number of units whose mask is on (``alpha > threshold``;
after binarization ``alpha`` is exactly 0 or 1).
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import copy_layer_weights, layer_entry, rebuild
from tfsafe.compress.strip import register_stripper
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_relu_counter, register_weight_stats
from tfsafe.objectives import softmax_cross_entropy

__all__ = [
    "PolyReLUMask", "UnitInterval", "linearize", "find_relus", "mask_layers", "mask_relu_count",
    "mask_unit_count", "binarize_masks", "ReLUMaskSearch", "ReLUBudgetSchedule", "search_relu_mask",
    "check_relu_budget",
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
    per-example shape: channel x pixel for feature maps) and ``p(x) = x`` (``linear="identity"``)
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

    Example:
        >>> layer = PolyReLUMask()
        >>> layer(tf.constant([[-2.0, 3.0]])).numpy().tolist()
        [[0.0, 3.0]]
        >>> _ = layer.alpha.assign([0.0, 1.0])  # first unit linear, second a ReLU
        >>> layer(tf.constant([[-2.0, 3.0]])).numpy().tolist(), layer.relu_count()
        ([[-2.0, 3.0]], 1)
    """

    def __init__(self, linear="identity", frozen=False, poly_init=(0.01, 1.0), threshold=0.01,
                 initial_alpha=1.0, **kwargs):
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

    def call(self, inputs):
        linear = self.linear_part(inputs)
        return linear + self.alpha * (tf.nn.relu(inputs) - linear)

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
        })
        return config


# ----------------------------------------------------------------------------- finding ReLUs


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)


def _relu_kind(layer):
    """How ``layer`` applies a plain ReLU: "layer" (it is one), "fused" (activation='relu'), None."""
    if isinstance(layer, PolyReLUMask):
        return None
    if isinstance(layer, keras.layers.ReLU):
        plain = (layer.max_value is None and float(layer.negative_slope) == 0.0
                 and float(layer.threshold) == 0.0)
        return "layer" if plain else None
    if isinstance(layer, keras.layers.Activation):
        return "layer" if _activation_name(layer) == "relu" else None
    if _activation_name(layer) == "relu" and hasattr(layer, "get_config") and "activation" in layer.get_config():
        return "fused"
    return None


def find_relus(model):
    """Names of the layers of ``model`` that apply a plain ReLU (layers or fused activations)."""
    return [layer.name for layer in model.layers if _relu_kind(layer)]


def mask_layers(model):
    """The :class:`PolyReLUMask` layers of ``model``, in graph order."""
    return [layer for layer in model.layers if isinstance(layer, PolyReLUMask)]


def mask_relu_count(model):
    """Number of units that compute a ReLU across the mask layers of ``model``."""
    return sum(layer.relu_count() for layer in mask_layers(model))


def mask_unit_count(model):
    """Number of units across the mask layers (their all-ReLU count)."""
    return sum(layer.unit_count() for layer in mask_layers(model))


def _relu_units(model):
    """ReLU units :func:`linearize` would mask: outputs of plain-ReLU layers plus existing masks."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, PolyReLUMask):
            total += layer.unit_count()
        elif _relu_kind(layer):
            for node in layer._inbound_nodes:
                shapes = node.output_shapes if isinstance(node.output_shapes, list) else [node.output_shapes]
                for shape in shapes:
                    if any(d is None for d in shape[1:]):
                        raise UnsupportedModelError(
                            f"ReLU layer '{layer.name}' has an unknown output size {shape}; give the model "
                            "a fully defined input shape to linearize it."
                        )
                    total += int(np.prod(shape[1:]))
    return total


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
              threshold=0.01, allocation="global", **search_kwargs):
    """Put a :class:`PolyReLUMask` on every ReLU of ``model``; optionally search it to a budget.

    ReLU layers and ``Activation("relu")`` layers are replaced by a mask layer; layers with
    ``activation="relu"`` (Conv, Dense, ...) are split into the layer with a linear activation
    plus a mask layer named ``<layer>_relu``. ReLUs with a cap, slope or threshold (ReLU6,
    leaky) are left alone. The returned model computes exactly what ``model`` computes until the
    masks change. The input model is not modified.

    Args:
        model: A Sequential or Functional ``tf_keras`` model.
        relu_budget: Number of ReLU units to keep. ``None`` returns the relaxed (all-ReLU) masked
            model. With ``x, y`` the SNL search runs (:func:`search_relu_mask`) and the masks are
            binarized to exactly ``relu_budget`` ReLUs and frozen.
        x, y: Training data for the search (integer labels).
        linear: ``"identity"`` or ``"poly"``: what masked-off units compute.
        poly_init: Initial ``(a, b)`` of ``a x^2 + b x``.
        threshold: ``alpha > threshold`` counts as a ReLU during the search.
        allocation: ``"global"`` (top-k units over all layers) or ``"sensitivity"`` (per-layer
            budgets from each layer's loss increase when fully linearized; needs data).
        **search_kwargs: Passed to :func:`search_relu_mask` (epochs, batch_size, ...).

    Returns:
        The masked model (a new model).

    Raises:
        UnsupportedModelError: when the model has no plain ReLU or cannot be rewritten.
        InputError: for a budget <= 0 or above the model's ReLU count, or a budget without data.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> masked = linearize(small_cnn())
        >>> mask_relu_count(masked)
        1600
    """
    from tfsafe.validation import check_model  # noqa: PLC0415

    model = check_model(model)
    if linear not in LINEAR_MODES:
        raise InputError(f"linear must be one of {LINEAR_MODES}, got {linear!r}.")
    if not find_relus(model) and not mask_layers(model):
        raise UnsupportedModelError(
            f"'{model.name}' has no ReLU to linearize (looked for ReLU layers, Activation('relu') "
            "and layers with activation='relu')."
        )
    mask_config = {"linear": linear, "poly_init": list(poly_init), "threshold": threshold}

    def replace(layer):
        kind = _relu_kind(layer)
        if kind == "layer":
            return [layer_entry(PolyReLUMask, dict(mask_config, name=layer.name))]
        if kind == "fused":
            config = layer.get_config()
            config["activation"] = "linear"
            return [layer_entry(layer, config),
                    layer_entry(PolyReLUMask, dict(mask_config, name=f"{layer.name}_relu"))]
        return None

    if relu_budget is not None:
        budget = check_relu_budget(relu_budget, _relu_units(model))
        if x is None or y is None:
            raise InputError(
                "linearize(relu_budget=...) searches the mask on data: pass x and y, or call "
                "linearize(model) and then search_relu_mask(...) yourself."
            )
    masked, _ = rebuild(model, replace)
    if relu_budget is None:
        return masked
    search_relu_mask(masked, x, y, budget, **search_kwargs)
    return binarize_masks(masked, budget, allocation=allocation, x=x, y=y)


# ----------------------------------------------------------------------------- binarize


def _layer_budgets_by_sensitivity(model, masks, budget, x, y, batch_size=256):
    """Split ``budget`` across layers in proportion to each layer's loss increase when it is
    fully linearized (so the ReLU density of a layer follows its loss increase per unit)."""
    from tfsafe.models import logits_model  # noqa: PLC0415

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


# ----------------------------------------------------------------------------- search


class ReLUMaskSearch(keras.Model):
    """Trains a masked model on ``task_loss + penalty * sum(alpha)`` (the SNL relaxation).

    The weights use the optimizer given to ``compile``; the mask values use their own
    ``mask_optimizer``: SGD with momentum, not Adam, because Adam's per-parameter normalization
    would move every penalized ``alpha`` at the same speed whatever its effect on the loss, so
    the final ranking of units would be noise. With SGD a unit's ``alpha`` falls by
    ``lr * (penalty + dLoss/dalpha)``: units the loss needs fall slower and survive. Values are
    clipped to [0, 1] after every step. The ``penalty`` variable is what
    :class:`ReLUBudgetSchedule` grows.

    Args:
        model: A model with relaxed (non-frozen) :class:`PolyReLUMask` layers.
        penalty: Initial L1 weight on the mask values.
        mask_learning_rate: SGD (momentum 0.9) learning rate for the mask values.
        task_loss: ``fn(model, x, y) -> scalar`` computed under ``tf.GradientTape``; the default
            is cross-entropy on the logits. RLNet passes its robust (PGD + dual BN) loss here.

    Example:
        >>> from tfsafe.models import mlp
        >>> search = ReLUMaskSearch(linearize(mlp(units=(16,))))
        >>> search.compile(keras.optimizers.Adam(1e-3))
    """

    def __init__(self, model, penalty=1e-3, mask_learning_rate=1.0, task_loss=None, **kwargs):
        super().__init__(**kwargs)
        from tfsafe.models import logits_model  # noqa: PLC0415

        self.model = model
        self.logits = logits_model(model)
        self.masks = [m for m in mask_layers(model) if not m.frozen]
        if not self.masks:
            raise UnsupportedModelError("ReLUMaskSearch needs relaxed PolyReLUMask layers; call linearize() first.")
        self.penalty = tf.Variable(float(penalty), trainable=False, dtype=tf.float32, name="mask_penalty")
        self.mask_optimizer = keras.optimizers.SGD(mask_learning_rate, momentum=0.9)
        self.task_loss = task_loss or (lambda m, x, y: softmax_cross_entropy(y, self.logits(x, training=True)))
        self.loss_tracker = keras.metrics.Mean("task_loss")
        self.relu_tracker = keras.metrics.Mean("relu_fraction")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.relu_tracker]

    def train_step(self, data):
        x, y = data[0], data[1]
        alphas = [m.alpha for m in self.masks]
        alpha_ids = {id(v) for v in alphas}
        weights = [v for v in self.model.trainable_variables if id(v) not in alpha_ids]
        with tf.GradientTape() as tape:
            task = self.task_loss(self.model, x, y)
            l1 = tf.add_n([tf.reduce_sum(a) for a in alphas])
            loss = task + self.penalty * l1
        grads = tape.gradient(loss, weights + alphas)
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads[:len(weights)], weights) if g is not None])
        self.mask_optimizer.apply_gradients(zip(grads[len(weights):], alphas))
        for a in alphas:
            a.assign(tf.clip_by_value(a, 0.0, 1.0))
        total = float(sum(m.unit_count() for m in self.masks))
        on = tf.add_n([tf.reduce_sum(tf.cast(m.alpha > m.threshold, tf.float32)) for m in self.masks])
        self.loss_tracker.update_state(task)
        self.relu_tracker.update_state(on / total)
        return {"task_loss": self.loss_tracker.result(), "relu_fraction": on / total}

    def test_step(self, data):
        x, y = data[0], data[1]
        self.loss_tracker.update_state(softmax_cross_entropy(y, self.logits(x, training=False)))
        return {"task_loss": self.loss_tracker.result()}


class ReLUBudgetSchedule(keras.callbacks.Callback):
    """Grows the L1 penalty 1.1x when the ReLU count stalls; stops when it meets the budget.

    Checked every ``check_every`` batches. The count "stalls" when it has not fallen below
    ``(1 - min_drop)`` times the best count seen since the last check.

    Args:
        relu_budget: Target number of ReLU units.
        check_every: Batches between checks.
        growth: Factor applied to the penalty on a stall (SNL: 1.1).
        min_drop: Relative drop that counts as progress.
    """

    def __init__(self, relu_budget, check_every=5, growth=1.1, min_drop=0.01):
        super().__init__()
        self.relu_budget = int(relu_budget)
        self.check_every = int(check_every)
        self.growth = float(growth)
        self.min_drop = float(min_drop)
        self.history = []
        self.reached = False
        self._best = None
        self._batches = 0

    def _count(self):
        return sum(m.relu_count() for m in mask_layers(self._search_model()))

    def _search_model(self):
        return self.model.model if isinstance(self.model, ReLUMaskSearch) else self.model

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches % self.check_every:
            return
        count = self._count()
        penalty = self.model.penalty
        if count <= self.relu_budget:
            self.reached = True
            self.model.stop_training = True
        elif self._best is not None and count > (1.0 - self.min_drop) * self._best:
            penalty.assign(penalty * self.growth)
        self._best = count if self._best is None else min(self._best, count)
        self.history.append({"batch": self._batches, "relu_count": count, "penalty": float(penalty.numpy())})


def search_relu_mask(model, x, y, relu_budget, epochs=30, batch_size=64, learning_rate=1e-3,
                     penalty=1e-3, mask_learning_rate=1.0, check_every=5, task_loss=None,
                     callbacks=None, verbose=0):
    """Train the relaxed masks of ``model`` (in place) until at most ``relu_budget`` stay on.

    Returns the :class:`ReLUBudgetSchedule` (``.reached``, ``.history``). If the budget is not
    reached within ``epochs`` the masks are left as they are; :func:`binarize_masks` still
    keeps exactly ``relu_budget`` units (those with the largest ``alpha``).

    Example:
        >>> from tfsafe.data import load_digits
        >>> from tfsafe.models import mlp
        >>> (x, y), _ = load_digits()
        >>> masked = linearize(mlp(units=(32,)))
        >>> schedule = search_relu_mask(masked, x, y, relu_budget=8, epochs=20)
        >>> mask_relu_count(binarize_masks(masked, 8))
        8
    """
    from tfsafe.validation import check_xy  # noqa: PLC0415

    masks = [m for m in mask_layers(model) if not m.frozen]
    if not masks:
        raise UnsupportedModelError(f"'{model.name}' has no relaxed PolyReLUMask layers; call linearize() first.")
    budget = check_relu_budget(relu_budget, sum(m.unit_count() for m in masks))
    x, y = check_xy(model, x, y)
    search = ReLUMaskSearch(model, penalty=penalty, mask_learning_rate=mask_learning_rate, task_loss=task_loss)
    search.compile(optimizer=keras.optimizers.Adam(learning_rate))
    schedule = ReLUBudgetSchedule(budget, check_every=check_every)
    search.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=[schedule] + list(callbacks or []),
               verbose=verbose, shuffle=True)
    return schedule


# ----------------------------------------------------------------------------- strip / metrics


def _strip_mask(layer):
    """Fully-on masks become ReLU, fully-off identity masks disappear, others stay frozen masks."""
    alpha = layer.alpha.numpy()
    if not np.all((alpha == 0.0) | (alpha == 1.0)):
        raise UnsupportedModelError(
            f"PolyReLUMask '{layer.name}' is still relaxed (mask values between 0 and 1); call "
            "binarize_masks(model, relu_budget) before strip() or export."
        )
    if np.all(alpha == 1.0):
        return keras.layers.ReLU(name=layer.name), []
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

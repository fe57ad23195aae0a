"""Dynamic sparse training: drop the weakest active weights, regrow as many elsewhere.

:func:`drop_and_grow` is a pure function of ``(weights, masks, grads, rng)``: it drops the
``fraction`` smallest-magnitude active weights and regrows the same number among the inactive
ones (not the ones it just dropped), at random (SET) or where the dense gradient is largest
(RigL). The count of active weights never changes, per weight tensor (``scope="layer"``) or
over the whole model (``scope="global"``). Regrown weights start at zero.

Channel masks (``prune_safe(..., granularity="channel")``: a mask whose shape is the trailing
part of its weight's shape) are updated per channel: the drop score is the channel's L2 (or
L1) norm, the regrowth score the norm of its dense gradient, and counts are in channels.
Regrown channels restart at the scale of the live ones
(:func:`~tfsafe.compress.channel_pruning.regrown_init`), since an all-zero channel would stay
dead behind a ReLU. Wrappers sharing a ``channel_group`` form one slot of :func:`read_masks` /
:func:`read_weights` / :func:`dense_gradients` / :func:`write_masks` (their kernels stacked as
``(rows, channels)``), so every update keeps their masks equal.

:class:`DynamicSparsity` is the Keras callback that runs it every ``update_every`` steps with a
cosine-decayed fraction, on a model wrapped by :func:`~tfsafe.compress.pruning.prune_safe`.
"""

import math

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.channel_pruning import channel_scores, check_norm, regrown_init
from tfsafe.compress.pruning import _keep_count, prunable_wrappers
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.validation import check_fraction

__all__ = ["drop_and_grow", "cosine_fraction", "DynamicSparsity", "read_masks", "read_weights",
           "write_masks", "dense_gradients", "prune_to_target", "GROW_MODES", "SCOPES"]

GROW_MODES = ("random", "gradient")
SCOPES = ("layer", "global")


def cosine_fraction(step, initial_fraction, end_step):
    """``initial_fraction / 2 * (1 + cos(pi * step / end_step))``, and 0 from ``end_step`` on."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return 0.5 * initial_fraction * (1.0 + math.cos(math.pi * step / end_step))


def _drop_grow_flat(w, m, g, fraction, rng, grow):
    active = m > 0
    n_active = int(active.sum())
    n_inactive = m.size - n_active
    k = min(int(fraction * n_active), n_inactive)
    new = active.copy()
    if k <= 0:
        return new
    magnitude = np.where(active, np.abs(w), np.inf)
    # Ties (e.g. many exact zeros) are broken at random, not by position.
    drop = np.lexsort((rng.random(m.size), magnitude))[:k]
    candidates = np.flatnonzero(~active)  # excludes the weights dropped just now
    if grow == "random":
        chosen = rng.choice(candidates, k, replace=False)
    else:
        scores = np.abs(g[candidates])
        chosen = candidates[np.lexsort((rng.random(candidates.size), -scores))[:k]]
    new[drop] = False
    new[chosen] = True
    return new


def drop_and_grow(weights, masks, fraction, rng, grads=None, grow="random", scope="layer", norm="l2"):
    """New masks after one drop-and-regrow update (pure: inputs are not modified).

    Args:
        weights: list of arrays (the prunable weights).
        masks: list of 0/1 arrays of the same shapes, or of a trailing part of them (channel
            masks: one entry per output channel, scored by the channel's ``norm``).
        fraction: share of the active weights to drop (and regrow), in [0, 1].
        rng: a ``numpy.random.Generator``; different generators give different candidates.
        grads: list of dense gradients (required for ``grow="gradient"``).
        grow: ``"random"`` (SET) or ``"gradient"`` (RigL: largest ``|grad|``).
        scope: ``"layer"`` keeps every tensor's count; ``"global"`` ranks all weights together
            and keeps only the total count.
        norm: ``"l2"`` or ``"l1"``: the channel score of channel masks.

    Returns:
        A list of new masks (same dtypes as ``masks``).

    Example:
        >>> w, m = [np.array([3., -1., 0.5, 0.])], [np.array([1., 1., 1., 0.])]
        >>> new = drop_and_grow(w, m, 0.34, np.random.default_rng(0))
        >>> new[0].tolist()
        [1.0, 1.0, 0.0, 1.0]
    """
    if grow not in GROW_MODES:
        raise InputError(f"grow must be one of {GROW_MODES}, got {grow!r}.")
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {SCOPES}, got {scope!r}.")
    fraction = check_fraction(fraction, "fraction", 0.0, 1.0, include_high=True)
    if grow == "gradient" and grads is None:
        raise InputError("grow='gradient' needs grads (dense gradients of the loss, one per weight).")
    check_norm(norm)
    weights = [np.asarray(w) for w in weights]
    masks = [np.asarray(m) for m in masks]
    if len(weights) != len(masks) or any(w.ndim < m.ndim or w.shape[w.ndim - m.ndim:] != m.shape
                                         for w, m in zip(weights, masks)):
        raise InputError("weights and masks must be lists of arrays of matching shapes (a channel mask "
                         "matches the trailing axes of its weight).")
    flat_grads = [np.zeros(m.size) if grads is None else channel_scores(g, m.shape, norm).ravel() for m, g in
                  zip(masks, grads if grads is not None else masks)]
    weights = [channel_scores(w, m.shape, norm) if w.shape != m.shape else w for w, m in zip(weights, masks)]
    if scope == "layer":
        new = [_drop_grow_flat(w.ravel(), m.ravel(), g, fraction, rng, grow)
               for w, m, g in zip(weights, masks, flat_grads)]
    else:
        joined = _drop_grow_flat(np.concatenate([w.ravel() for w in weights]),
                                 np.concatenate([m.ravel() for m in masks]),
                                 np.concatenate(flat_grads), fraction, rng, grow)
        new = np.split(joined, np.cumsum([m.size for m in masks])[:-1])
    return [n.reshape(m.shape).astype(m.dtype) for n, m in zip(new, masks)]


def _slots(wrappers):
    """One entry per independent mask: ``[(layer, weight, mask), ...]`` (several for a ``channel_group``)."""
    slots, groups = [], {}
    for layer in wrappers:
        group = getattr(layer, "channel_group", None)
        for weight, mask in zip(layer.pruned_weights, layer.masks):
            if group is None:
                slots.append([(layer, weight, mask)])
            elif group in groups:
                groups[group].append((layer, weight, mask))
            else:
                groups[group] = [(layer, weight, mask)]
                slots.append(groups[group])
    return slots


def _joined(slot, arrays):
    """A slot's arrays (one per member, shaped like its weight) as one ``(rows, channels)`` array."""
    if len(slot) == 1 and getattr(slot[0][0], "channel_group", None) is None:
        return arrays[0]
    n = int(np.prod(slot[0][2].shape))
    return np.concatenate([np.reshape(a, (-1, n)) for a in arrays], axis=0)


def read_masks(wrappers):
    """Masks of all wrappers as one flat list of arrays (one flat channel mask per ``channel_group``)."""
    return [slot[0][2].numpy() if len(slot) == 1 and getattr(slot[0][0], "channel_group", None) is None
            else slot[0][2].numpy().reshape(-1) for slot in _slots(wrappers)]


def read_weights(wrappers):
    """The masked prunable weights of all wrappers (what the forward pass uses; full kernels also
    for channel masks; a ``channel_group``'s kernels stacked as ``(rows, channels)``)."""
    return [_joined(slot, [w.numpy() * m.numpy() for _, w, m in slot]) for slot in _slots(wrappers)]


def write_masks(wrappers, masks, seed=0):
    """Install new masks; weights outside the old mask (including regrown ones) become zero.

    Regrown channels of channel masks restart at the live channels' scale instead (``seed``
    seeds them); their bias restarts at zero.
    """
    for i, slot in enumerate(_slots(wrappers)):
        for k, (layer, weight, mask) in enumerate(slot):
            new = np.asarray(masks[i], mask.dtype.as_numpy_dtype).reshape(mask.shape)
            old = mask.numpy()
            value = weight.numpy() * old * new
            if tuple(mask.shape) != tuple(weight.shape):
                regrown = (new > 0) & (old == 0)
                if regrown.any():
                    value = regrown_init(value, old * new, regrown, np.random.default_rng([seed, i, k, int(new.sum())]))
            weight.assign(value)
            mask.assign(new)
            if getattr(layer, "channel_bias", None) is not None:
                layer.apply_masks()


def dense_gradients(model, x, y, wrappers=None):
    """Gradients of the loss w.r.t. every prunable weight as if its mask were all ones.

    Evaluated at the masked weights (pruned entries are zero), so ``|grad|`` at an inactive
    entry is how fast the loss would fall if it were regrown (RigL's criterion). Uses the
    compiled loss, or softmax cross-entropy on the logits when the model is not compiled.
    """
    from tfsafe.models import logits_model
    from tfsafe.objectives import softmax_cross_entropy

    wrappers = prunable_wrappers(model) if wrappers is None else wrappers
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    saved = [m.numpy() for layer in wrappers for m in layer.masks]
    for layer in wrappers:
        layer.apply_masks()
        for mask in layer.masks:
            mask.assign(tf.ones_like(mask))
    try:
        variables = [w for layer in wrappers for w in layer.pruned_weights]
        with tf.GradientTape() as tape:
            if getattr(model, "compiled_loss", None) is not None:
                y_pred = model(x, training=False)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
            else:
                loss = softmax_cross_entropy(y, logits_model(model)(x, training=False))
        grads = tape.gradient(loss, variables)
    finally:
        for mask, value in zip([m for layer in wrappers for m in layer.masks], saved):
            mask.assign(value)
    by_variable = {id(v): np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
                   for g, v in zip(grads, variables)}
    return [_joined(slot, [by_variable[id(w)] for _, w, _ in slot]) for slot in _slots(wrappers)]


def prune_to_target(wrappers, target_sparsity, norm="l2"):
    """One-shot global magnitude pruning of the wrappers' weights (or channels, by ``norm``) to ``target_sparsity``."""
    masks = read_masks(wrappers)
    scores = [channel_scores(w, m.shape, norm) for w, m in zip(read_weights(wrappers), masks)]
    sizes = [s.size for s in scores]
    keep = _keep_count(sum(sizes), target_sparsity)
    flat = np.concatenate([s.ravel() for s in scores])
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(-flat, kind="stable")[:keep]] = True
    parts = np.split(chosen, np.cumsum(sizes)[:-1])
    write_masks(wrappers, [p.reshape(m.shape).astype(np.float32) for p, m in zip(parts, masks)])


class DynamicSparsity(keras.callbacks.Callback):
    """Keras callback: every ``update_every`` steps, drop and regrow weights (SET / RigL).

    The dropped share starts at ``drop_fraction`` and decays with a cosine to 0 at
    ``end_step`` (default: ``end_fraction`` of the steps of this ``fit``); no updates after.
    The number of active weights stays exactly the same.

    Args:
        update_every: steps between updates.
        drop_fraction: initial share of active weights dropped per update (SafeCompress: 0.5).
        end_step: step of the last update (counted from the optimizer's iterations, so a
            resumed run continues the schedule); default from ``end_fraction``.
        end_fraction: ``end_step`` as a share of this fit's total steps when not given.
        grow: ``"random"`` or ``"gradient"``.
        scope: ``"layer"`` or ``"global"``.
        grad_data: ``(x, y)`` batch for the dense gradient (required for ``grow="gradient"``).
        target_sparsity: if given and the model is less sparse (``prune_safe(init="dense")``),
            prune to it by global magnitude when training starts.
        seed: seeds the regrowth.
        norm: ``"l2"`` or ``"l1"``: channel score of channel-granularity masks (drop by the
            channel's weight norm, regrow by its gradient norm).

    Example:
        >>> from tfsafe.models import small_cnn
        >>> from tfsafe.compress.pruning import prune_safe
        >>> model = prune_safe(small_cnn(), 0.8)
        >>> callback = DynamicSparsity(update_every=10, drop_fraction=0.3)
    """

    def __init__(self, update_every=100, drop_fraction=0.3, end_step=None, end_fraction=0.75,
                 grow="random", scope="layer", grad_data=None, target_sparsity=None, seed=0, verbose=0,
                 norm="l2"):
        super().__init__()
        if int(update_every) < 1:
            raise InputError(f"update_every must be >= 1, got {update_every}.")
        self.update_every = int(update_every)
        self.drop_fraction = check_fraction(drop_fraction, "drop_fraction", 0.0, 1.0, include_high=True)
        self.end_step = end_step
        self.end_fraction = check_fraction(end_fraction, "end_fraction", 0.0, 1.0, include_high=True)
        if grow not in GROW_MODES:
            raise InputError(f"grow must be one of {GROW_MODES}, got {grow!r}.")
        if grow == "gradient" and grad_data is None:
            raise InputError("grow='gradient' needs grad_data=(x, y): a batch for the dense gradient.")
        if scope not in SCOPES:
            raise InputError(f"scope must be one of {SCOPES}, got {scope!r}.")
        self.grow, self.scope, self.grad_data = grow, scope, grad_data
        self.target_sparsity = (None if target_sparsity is None
                                else check_fraction(target_sparsity, "target_sparsity", 0.0, 1.0))
        self.seed, self.verbose = seed, verbose
        self.norm = check_norm(norm)
        self.history = []

    def on_train_begin(self, logs=None):
        self.wrappers = prunable_wrappers(self.model)
        if not self.wrappers:
            raise UnsupportedModelError("DynamicSparsity needs a model wrapped with prune_safe() / PrunableSafe.")
        self.step = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer is not None else 0
        self._end = self.end_step
        if self._end is None:
            steps, epochs = self.params.get("steps"), self.params.get("epochs")
            if not steps:
                raise InputError("DynamicSparsity cannot tell how many steps this fit has; pass end_step.")
            self._end = self.step + int(self.end_fraction * steps * epochs)
        self._rng = np.random.default_rng([self.seed, self.step])
        if self.target_sparsity is not None:
            active = sum(layer.mask_counts()[0] for layer in self.wrappers)
            total = sum(layer.mask_counts()[1] for layer in self.wrappers)
            if 1.0 - active / total < self.target_sparsity - 0.5 / total:
                prune_to_target(self.wrappers, self.target_sparsity, self.norm)

    def fraction(self, step=None):
        """Share of active weights the update at ``step`` drops."""
        return cosine_fraction(self.step if step is None else step, self.drop_fraction, self._end)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.update_every == 0 and self.step < self._end:
            self.update()

    def new_masks(self, rng):
        """Candidate masks for the current step, from ``rng`` (does not install them)."""
        grads = None
        if self.grow == "gradient":
            x, y = self.grad_data
            grads = dense_gradients(self.model, x, y, self.wrappers)
        return drop_and_grow(read_weights(self.wrappers), read_masks(self.wrappers), self.fraction(), rng,
                             grads=grads, grow=self.grow, scope=self.scope, norm=self.norm)

    def update(self):
        """Drop and regrow now."""
        old = read_masks(self.wrappers)
        new = self.new_masks(self._rng)
        write_masks(self.wrappers, new, seed=self.seed + self.step)
        changed = int(sum(np.sum((a > 0) & (b == 0)) for a, b in zip(old, new)))
        self.history.append({"step": self.step, "fraction": self.fraction(), "changed": changed})
        if self.verbose:
            print(f"DynamicSparsity step {self.step}: regrew {changed} weights")

    def on_train_end(self, logs=None):
        for layer in self.wrappers:
            layer.apply_masks()

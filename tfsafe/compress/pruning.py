"""PrunableSafe: a mask per prunable weight, applied in ``call``; ``prune_safe`` wraps a model.

Which weights are prunable follows TF-MOT exactly: a layer's own
``get_prunable_weights()`` (``tfmot.sparsity.keras.PrunableLayer``) if it has one, else TF-MOT's
registry of built-in layers (``PruneRegistry``: Dense/Conv kernels, Embedding tables, RNN and
attention kernels). Unlike ``prune_low_magnitude``, the mask is not tied to a schedule: it is a
plain non-trainable variable that callbacks rewrite (:class:`~tfsafe.compress.dynamic_sparsity.DynamicSparsity`
drops and regrows weights; MIA-SafeCompress picks among candidate masks).

The mask is applied functionally: ``call`` hands the wrapped layer ``weight * mask`` in place of
the weight, so gradients reach only active weights and no variable is rewritten per step.
:func:`tfsafe.compress.strip.strip` bakes the zeros into plain Keras layers.
"""

import contextlib
import inspect

import numpy as np
from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer, prune_registry
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from tfsafe._keras import keras, tf
from tfsafe.compress import channel_pruning
from tfsafe.compress.channel_removal import register_channel_source, remove_dead_channels
from tfsafe.compress.densities import DENSITY_INITS, layer_densities
from tfsafe.compress.strip import masked_weights, register_model_pass, register_stripper
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_weight_stats, short_name
from tfsafe.validation import check_fraction, check_model

__all__ = ["PrunableSafe", "prune_safe", "is_prunable", "prunable_wrappers", "layer_densities",
           "MASK_INITS", "DENSITY_INITS", "GRANULARITIES"]

MASK_INITS = ("magnitude", "random")
GRANULARITIES = channel_pruning.GRANULARITIES


def is_prunable(layer):
    """True when TF-MOT knows which weights of ``layer`` to prune (and there are some)."""
    if isinstance(layer, prunable_layer.PrunableLayer):
        return True
    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return hasattr(layer, "get_prunable_weights")
    # Decided by the class (TF-MOT's registry), even when prune_low_magnitude has already given
    # the layer a get_prunable_weights() returning [] (BatchNormalization after strip_pruning).
    if registry._is_rnn_layer(layer) or registry._is_mha_layer(layer):
        return True
    return bool(registry._weight_names(layer))


def _prunable_weights(layer):
    if not (isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights")):
        prune_registry.PruneRegistry.make_prunable(layer)  # TF-MOT's own way: adds get_prunable_weights
    return list(layer.get_prunable_weights())


def _locate(layer, weight):
    """``(owner, attribute)`` holding ``weight`` in ``layer`` or its sublayers, or ``None``."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        for attr, value in vars(sub).items():
            if value is weight:
                return sub, attr
    return None


@contextlib.contextmanager
def _swapped(targets, values):
    # object.__setattr__ skips Keras attribute tracking, so the layer's weight lists and
    # checkpoint dependencies stay exactly as they were.
    saved = []
    try:
        for target, value in zip(targets, values):
            if target is not None:
                owner, attr = target
                saved.append((owner, attr, vars(owner)[attr]))
                object.__setattr__(owner, attr, value)
        yield
    finally:
        for owner, attr, old in reversed(saved):
            object.__setattr__(owner, attr, old)


def _keep_count(size, sparsity):
    return int(min(size, max(1, round((1.0 - sparsity) * size))))


@keras.utils.register_keras_serializable(package="tfsafe")
class PrunableSafe(keras.layers.Wrapper):
    """Wraps a layer and multiplies each of its prunable weights by a binary mask in ``call``.

    The masks are non-trainable variables (saved with the model). Their initial content keeps
    the ``1 - sparsity`` largest-magnitude entries of each weight (``mask_init="magnitude"``) or
    a random subset (``mask_init="random"``); after that, callbacks own them.

    Args:
        layer: the layer to wrap: a built-in layer TF-MOT can prune (Dense, Conv, Embedding,
            RNN, MultiHeadAttention...) or a layer with ``get_prunable_weights()``.
        sparsity: fraction of zeros in each prunable weight at build time, in [0, 1); a list
            gives one value per prunable weight.
        mask_init: ``"magnitude"`` or ``"random"``.
        seed: seeds ``mask_init="random"``.
        granularity: ``"weight"`` (one mask entry per weight) or ``"channel"`` (one per output
            channel of a Dense / Conv2D / DepthwiseConv2D / SeparableConv2D, broadcast over the
            kernel and applied to the bias; see :mod:`tfsafe.compress.channel_pruning`).
            ``sparsity`` then counts channels.
        channel_group: name shared by channel-granularity wrappers whose masks must stay equal
            (the branches of an Add, a DepthwiseConv2D and its input's producer; set by
            :func:`prune_safe`): dynamic sparsity updates them as one mask.
        **kwargs: standard layer arguments (``name``...).

    Example:
        >>> from tfsafe._keras import keras
        >>> model = keras.Sequential([keras.Input((4,)), PrunableSafe(keras.layers.Dense(8), sparsity=0.5)])
        >>> int(model.layers[0].masks[0].numpy().sum())
        16
    """

    def __init__(self, layer, sparsity=0.0, mask_init="magnitude", seed=None, granularity="weight", channel_group=None,
                 **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise UnsupportedModelError(f"PrunableSafe wraps a Keras layer, got {type(layer).__name__}.")
        if isinstance(layer, PrunableSafe):
            raise UnsupportedModelError(f"Layer '{layer.name}' is already wrapped in PrunableSafe.")
        channel_pruning.check_granularity(granularity)
        if granularity == "channel":
            channel_pruning.check_channel_layer(layer)
        if granularity == "weight" and not is_prunable(layer):
            raise UnsupportedModelError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has nothing TF-MOT can prune. Give it a "
                "get_prunable_weights() method (subclass tfmot.sparsity.keras.PrunableLayer) that returns "
                "the kernels to prune, or leave it unwrapped."
            )
        values = sparsity if isinstance(sparsity, (list, tuple)) else [sparsity]
        for value in values:
            check_fraction(value, "sparsity", 0.0, 1.0)
        if mask_init not in MASK_INITS:
            raise InputError(f"mask_init must be one of {MASK_INITS}, got {mask_init!r}.")
        kwargs.setdefault("name", f"prunable_safe_{layer.name}")
        super().__init__(layer, **kwargs)
        self._set_sparsity(sparsity)
        self.mask_init = mask_init
        self.seed = seed
        self.granularity = granularity
        self.channel_group = channel_group if granularity == "channel" else None
        self._set_untracked("masks", [])
        self._set_untracked("channel_bias", None)
        if not hasattr(self, "_batch_input_shape") and hasattr(layer, "_batch_input_shape"):
            self._batch_input_shape = layer._batch_input_shape  # first layer of a Sequential
        self._call_has_training = "training" in inspect.signature(layer.call).parameters

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.granularity == "channel":
            kernel, bias, mask_shapes = channel_pruning.channel_weights(self.layer)
            self._set_untracked("pruned_weights", [kernel])
            self._set_untracked("channel_bias", bias)
            mask_shapes = [mask_shapes]
        else:
            self._set_untracked("pruned_weights", _prunable_weights(self.layer))
            mask_shapes = [w.shape for w in self.pruned_weights]
        if not self.pruned_weights:
            raise UnsupportedModelError(f"Layer '{self.layer.name}' reports no prunable weights.")
        sparsities = self._sparsities()
        masks = []
        for weight, shape in zip(self.pruned_weights, mask_shapes):
            masks.append(self.add_weight(
                name=f"{short_name(weight)}_mask", shape=shape, dtype=weight.dtype,
                initializer="ones", trainable=False,
            ))
        self._set_untracked("masks", masks)
        targets = [_locate(self.layer, w) for w in self.pruned_weights]
        if self.channel_bias is not None:
            targets.append(_locate(self.layer, self.channel_bias))
        self._set_untracked("_targets", targets)
        if any(s > 0 for s in sparsities):
            with tf.init_scope():
                self.reset_masks()

    def _set_untracked(self, name, value):
        # The variables are already tracked by add_weight / the wrapped layer; plain lists keep
        # them from being saved a second time under another checkpoint name.
        object.__setattr__(self, name, value)

    def _set_sparsity(self, sparsity):
        # A plain list (not Keras' tracked ListWrapper) so get_config stays JSON.
        value = [float(s) for s in sparsity] if isinstance(sparsity, (list, tuple)) else float(sparsity)
        self._set_untracked("sparsity", value)

    def _sparsities(self):
        n = len(getattr(self, "pruned_weights", [])) or 1
        if isinstance(self.sparsity, list):
            if len(self.sparsity) != n:
                raise InputError(
                    f"'{self.name}' got {len(self.sparsity)} sparsities for {n} prunable weights."
                )
            return [float(s) for s in self.sparsity]
        return [float(self.sparsity)] * n

    def reset_masks(self, sparsity=None, mask_init=None):
        """Recompute the masks from the current weights (largest magnitudes or random)."""
        if sparsity is not None:
            self._set_sparsity(sparsity)
        method = mask_init or self.mask_init
        rng = np.random.default_rng(self.seed)
        for weight, mask, s in zip(self.pruned_weights, self.masks, self._sparsities()):
            values = weight.numpy()
            size = int(np.prod(mask.shape))
            keep = _keep_count(size, s)
            if method == "magnitude":
                scores = channel_pruning.channel_scores(values, mask.shape)  # |w| when shapes match
                order = np.argsort(-scores.ravel(), kind="stable")[:keep]
            else:
                order = rng.choice(size, keep, replace=False)
            new = np.zeros(size, dtype=mask.dtype.as_numpy_dtype)
            new[order] = 1
            mask.assign(new.reshape(mask.shape))
        self.apply_masks()

    def apply_masks(self):
        """Zero the stored weights (and, per channel, biases) where the mask is 0 (``call`` masks anyway)."""
        for weight, value in zip(self._masked_variables(), self._masked_values()):
            weight.assign(value)

    def _masked_variables(self):
        extra = [] if self.channel_bias is None else [self.channel_bias]
        return list(self.pruned_weights) + extra

    def _masked_values(self):
        values = [weight * tf.cast(mask, weight.dtype) for weight, mask in zip(self.pruned_weights, self.masks)]
        if self.channel_bias is not None:
            bias = self.channel_bias
            values.append(bias * tf.reshape(tf.cast(self.masks[0], bias.dtype), [-1]))
        return values

    def call(self, inputs, training=None, **kwargs):
        masked, in_place = self._masked_values(), []
        for weight, value, target in zip(self._masked_variables(), masked, self._targets):
            if target is None:  # weight not held by an attribute: mask it in place
                in_place.append(weight.assign(value))
        if self._call_has_training:
            kwargs["training"] = training
        with _swapped(self._targets, masked):
            return self.layer.call(inputs, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def mask_counts(self):
        """``(active, total)`` entries over this layer's masks (channels with ``granularity="channel"``)."""
        active = sum(int(np.count_nonzero(m.numpy())) for m in self.masks)
        return active, sum(int(np.prod(m.shape)) for m in self.masks)

    def get_config(self):
        config = super().get_config()
        config.update({"sparsity": self.sparsity, "mask_init": self.mask_init, "seed": self.seed,
                       "granularity": self.granularity, "channel_group": self.channel_group})
        return config


def _masked(layer):
    masked = masked_weights(layer.layer, list(zip(layer.pruned_weights, layer.masks)))
    if layer.channel_bias is None:
        return masked
    keep = layer.masks[0].numpy().reshape(-1)
    return [(w, value * keep.astype(value.dtype) if w is layer.channel_bias else value, pruned)
            for w, value, pruned in masked]


def _strip_prunable_safe(layer):
    inner = layer.layer
    return inner.__class__.from_config(inner.get_config()), [value for _, value, _ in _masked(layer)]


register_stripper(PrunableSafe, _strip_prunable_safe)


def _prunable_safe_stats(layer):
    return [WeightStat(layer.layer.name, short_name(w), value, kind="kernel" if pruned else None)
            for w, value, pruned in _masked(layer)]


register_weight_stats(PrunableSafe, _prunable_safe_stats)


def _channel_source(layer):
    if layer.granularity != "channel":
        return None
    weights = {short_name(w): value for w, value, _ in _masked(layer)}
    dead = layer.masks[0].numpy().reshape(-1) == 0
    return layer.layer, weights, dead


register_channel_source(PrunableSafe, _channel_source)
register_model_pass(remove_dead_channels)


def prunable_wrappers(model):
    """Every :class:`PrunableSafe` in ``model`` (nested models included), in layer order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, PrunableSafe):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(prunable_wrappers(layer))
    return found


def _check_layers(model, skip_layers):
    to_wrap = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name in skip_layers:
            continue
        if isinstance(layer, PrunableSafe):
            raise UnsupportedModelError(
                f"'{model.name}' is already wrapped (layer '{layer.name}'); strip() it first or keep training it."
            )
        if isinstance(layer, PruneLowMagnitude):
            raise UnsupportedModelError(
                f"Layer '{layer.name}' of '{model.name}' is already wrapped by TF-MOT's prune_low_magnitude; "
                "remove the TF-MOT wrappers first with tfmot.sparsity.keras.strip_pruning(model) (or "
                "tfsafe.strip(model)), then call prune_safe()."
            )
        if is_prunable(layer):
            to_wrap.append(layer)
        elif layer.trainable_weights and not prune_registry.PruneRegistry.supports(layer):
            # Layers TF-MOT knows but does not prune (BatchNormalization, LayerNormalization,
            # DepthwiseConv2D...) stay dense, as with prune_low_magnitude; unknown ones are refused.
            raise UnsupportedModelError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has trainable weights but TF-MOT does not know "
                "which to prune. Give it a get_prunable_weights() method (subclass "
                "tfmot.sparsity.keras.PrunableLayer) or leave it dense with "
                f"prune_safe(..., skip_layers=['{layer.name}'])."
            )
    if not to_wrap:
        raise UnsupportedModelError(
            f"'{model.name}' has nothing to prune: no Dense, Conv, Embedding, RNN or attention layer "
            "(or layer with get_prunable_weights) outside skip_layers."
        )
    return to_wrap


def prune_safe(model, target_sparsity, init="erk", mask_init="magnitude", skip_layers=(), seed=0,
               erk_power_scale=1.0, granularity="weight"):
    """Wrap every prunable layer of ``model`` in :class:`PrunableSafe` (like ``prune_low_magnitude``).

    The model is cloned (``keras.models.clone_model``), so ``model`` itself is not changed; the
    clone starts with ``model``'s weights and masks at ``target_sparsity`` over all prunable
    weights, distributed per layer by ``init``:

    - ``"erk"``: Erdos-Renyi-Kernel densities (small layers denser), as RigL and SafeCompress.
    - ``"uniform"``: every prunable weight at ``target_sparsity``.
    - ``"dense"``: all masks ones; :class:`~tfsafe.compress.dynamic_sparsity.DynamicSparsity`
      with ``target_sparsity`` prunes to the target by global magnitude when training starts.

    Args:
        model: a ``tf_keras`` (or Keras 3) Sequential or Functional model, built. Nested
            models (a backbone used as a layer) are inlined. Layers TF-MOT knows but does not
            prune (BatchNormalization, LayerNormalization, DepthwiseConv2D...) stay dense, as
            with ``prune_low_magnitude``.
        target_sparsity: fraction of prunable weights that are zero, in [0, 1).
        init: ``"erk"``, ``"uniform"`` or ``"dense"``.
        mask_init: which entries each mask keeps: ``"magnitude"`` (largest; right for trained
            models) or ``"random"`` (sparse training from scratch, as SET/RigL).
        skip_layers: names of layers to leave dense.
        seed: seeds random masks.
        erk_power_scale: exponent of the ERK ratio (1.0 = ERK; 0.0 = uniform).
        granularity: ``"weight"`` or ``"channel"``: whole output filters / units of Dense,
            Conv2D, DepthwiseConv2D (per depth channel) and SeparableConv2D (pointwise
            outputs), so that ``strip()`` removes them physically. ``target_sparsity`` then
            counts channels (ERK ratios from the kernel shapes, budgets in channels); the layers
            producing the model's outputs stay dense (the classes must stay), layers without
            channels to prune (BatchNormalization...) are left as they are, and the layers whose
            channels must go together (Add branches, a DepthwiseConv2D and its input's
            producer) share one mask (``channel_group``, their keep counts averaged).

    Returns:
        A new ``tf_keras`` model.

    Raises:
        InputError: ``target_sparsity`` outside [0, 1) or an unknown ``init``.
        UnsupportedModelError: nothing to prune, a custom layer with trainable weights and
            no ``get_prunable_weights()``, or a model already wrapped by ``prune_low_magnitude``
            (strip it first with ``tfmot.sparsity.keras.strip_pruning``); with
            ``granularity="channel"``, a prunable layer that has no channels to prune (Embedding,
            RNN, a custom layer), named.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> pruned = prune_safe(small_cnn(), 0.9)
        >>> from tfsafe.metrics import sparsity
        >>> round(sparsity(pruned), 2)
        0.9
    """
    target = check_fraction(target_sparsity, "target_sparsity", 0.0, 1.0)
    if init not in DENSITY_INITS:
        raise InputError(f"init must be one of {DENSITY_INITS}, got {init!r}.")
    if mask_init not in MASK_INITS:
        raise InputError(f"mask_init must be one of {MASK_INITS}, got {mask_init!r}.")
    model = check_model(model)
    if not model.built or not getattr(model, "inputs", None):
        raise UnsupportedModelError("prune_safe() needs a built model with known inputs; call it on data "
                                    "or give the model an Input first.")
    skip_layers = set(skip_layers)
    channel_pruning.check_granularity(granularity)
    if granularity == "channel":
        to_wrap = channel_pruning.channel_targets(model, skip_layers, is_prunable)
        parts = [channel_pruning.channel_weights(layer) for layer in to_wrap]
        shapes = [tuple(kernel.shape) for kernel, _, _ in parts]
        sizes = [int(np.prod(mask_shape)) for _, _, mask_shape in parts]
        per_layer = [1] * len(to_wrap)
    else:
        to_wrap = _check_layers(model, skip_layers)
        shapes = [tuple(w.shape) for layer in to_wrap for w in _prunable_weights(layer)]
        sizes = [int(np.prod(s)) for s in shapes]
        per_layer = [len(_prunable_weights(layer)) for layer in to_wrap]
    if init == "dense":
        counts = sizes
    else:
        counts = layer_densities(shapes, 1.0 - target, init, erk_power_scale, sizes=sizes)
    groups = {}
    if granularity == "channel":
        for group in channel_pruning.tie_groups(model, {layer.name for layer in to_wrap}):
            members = [i for i, layer in enumerate(to_wrap) if layer.name in group]
            keep = int(round(np.mean([counts[i] for i in members])))
            for i in members:
                counts[i] = keep
                groups[to_wrap[i].name] = min(group)
        # Averaging moved the total: give the difference back to the untied layers.
        diff = int(round((1.0 - target) * sum(sizes))) - sum(counts) if init != "dense" else 0
        free = [i for i, layer in enumerate(to_wrap) if layer.name not in groups]
        while diff and free:
            moved = False
            for i in free:
                step = 1 if diff > 0 else -1
                if diff and 1 <= counts[i] + step <= sizes[i]:
                    counts[i] += step
                    diff -= step
                    moved = True
            if not moved:
                break
    sparsities, start = {}, 0
    for layer, n in zip(to_wrap, per_layer):
        sparsities[layer.name] = [1.0 - c / float(size) for c, size in zip(counts[start:start + n],
                                                                           sizes[start:start + n])]
        start += n
    wrapped_ids = {id(layer) for layer in to_wrap}
    clones = {}

    def clone_layer(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if id(layer) in wrapped_ids:
            s = sparsities[layer.name]
            copy = PrunableSafe(copy, sparsity=s[0] if len(s) == 1 else s, mask_init=mask_init,
                                seed=seed + len(clones), granularity=granularity,
                                channel_group=groups.get(layer.name))
        clones[layer.name] = (layer, copy)
        return copy

    try:
        pruned = keras.models.clone_model(model, clone_function=clone_layer)
    except (TypeError, ValueError) as err:
        raise UnsupportedModelError(f"prune_safe() could not clone '{model.name}': {err}") from err
    for original, copy in clones.values():
        inner = copy.layer if isinstance(copy, PrunableSafe) else copy
        inner.set_weights(original.get_weights())
        if isinstance(copy, PrunableSafe) and copy.channel_group is None:
            copy.reset_masks()
    _tie_masks(prunable_wrappers(pruned), mask_init, seed)
    return pruned


def _tie_masks(wrappers, mask_init, seed):
    """One mask per ``channel_group``: the largest joint L2 channel norms (or a random draw)."""
    groups = {}
    for layer in wrappers:
        if layer.channel_group is not None:
            groups.setdefault(layer.channel_group, []).append(layer)
    rng = np.random.default_rng(seed)
    for members in groups.values():
        size = int(np.prod(members[0].masks[0].shape))
        keep = _keep_count(size, members[0]._sparsities()[0])
        if mask_init == "magnitude":
            scores = sum(channel_pruning.channel_scores(layer.pruned_weights[0].numpy(), layer.masks[0].shape)
                         .reshape(-1) ** 2 for layer in members)
            order = np.argsort(-scores, kind="stable")[:keep]
        else:
            order = rng.choice(size, keep, replace=False)
        new = np.zeros(size, np.float32)
        new[order] = 1
        for layer in members:
            layer.masks[0].assign(new.reshape(layer.masks[0].shape))
            layer.apply_masks()

"""Channel granularity for :class:`~tfsafe.compress.pruning.PrunableSafe`: one mask value per output channel.

With ``granularity="channel"`` a wrapper masks whole output filters / units instead of single
weights, so :func:`tfsafe.compress.strip.strip` can delete them (and the matching input
channels of the layers that read them, :mod:`tfsafe.compress.channel_removal`) and the deployed
model is smaller and faster, not only sparser. The layers that can take it, and what one mask
entry covers:

==================  ==========================  ===================  =======================
layer               masked weight               mask shape           one entry
==================  ==========================  ===================  =======================
Dense               ``kernel`` (in, out)        ``(out,)``           a unit
Conv2D              ``kernel`` (kh, kw, i, out) ``(out,)``           a filter
DepthwiseConv2D     ``depthwise_kernel``        ``(in, mult)``       one depth channel
SeparableConv2D     ``pointwise_kernel``        ``(out,)``           a pointwise filter
==================  ==========================  ===================  =======================

The mask broadcasts over the kernel's leading axes and multiplies the bias too, so a pruned
channel outputs exactly ``activation(0)``. Channel scores (the drop criterion of
:func:`~tfsafe.compress.dynamic_sparsity.drop_and_grow`, and ``mask_init="magnitude"``) are
the L2 (or L1) norm of the channel's kernel slice; the regrowth criterion is the norm of its
dense gradient, as in structured RigL variants. The layers whose outputs are the model's
outputs (through activations, pooling, Add...) keep all their channels: the classes must stay.
Layers whose channels can only be removed together (:func:`tie_groups`: the branches of an Add,
a DepthwiseConv2D and the producer of its input) share one mask (``channel_group``).

This module holds only the layer-level rules; it does not import :mod:`tfsafe.compress.pruning`.
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError, UnsupportedModelError

__all__ = ["GRANULARITIES", "CHANNEL_NORMS", "CHANNEL_LAYERS", "supports_channels", "check_channel_layer",
           "check_granularity", "check_norm", "channel_weights",
           "channel_scores", "output_layers", "channel_targets", "tie_groups", "regrown_init"]

GRANULARITIES = ("weight", "channel")
CHANNEL_NORMS = ("l2", "l1")
CHANNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                  keras.layers.SeparableConv2D)
# Layers whose output channels are computed afresh from all input channels: the walk back from
# a model output stops there.
_MIXING = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.SeparableConv2D)


def check_granularity(granularity):
    """Return ``granularity`` or raise :class:`InputError`."""
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    return granularity


def check_norm(norm):
    """Return ``norm`` or raise :class:`InputError`."""
    if norm not in CHANNEL_NORMS:
        raise InputError(f"norm must be one of {CHANNEL_NORMS}, got {norm!r}.")
    return norm


def supports_channels(layer):
    """True for the exact layer types above (subclasses may change what a channel is)."""
    return type(layer) in CHANNEL_LAYERS


def check_channel_layer(layer):
    """Return ``layer`` if it can take ``granularity="channel"``.

    Raises:
        UnsupportedModelError: naming the layer and the fix.
    """
    if not supports_channels(layer):
        raise _unsupported(layer)
    return layer


def _unsupported(layer):
    return UnsupportedModelError(
        f"Layer '{layer.name}' ({type(layer).__name__}) cannot take granularity='channel' (only "
        f"{', '.join(c.__name__ for c in CHANNEL_LAYERS)} can); leave it dense with "
        f"skip_layers=['{layer.name}'] or use granularity='weight'."
    )


def channel_weights(layer):
    """``(kernel, bias or None, mask_shape)`` of a built channel-capable layer.

    Raises:
        UnsupportedModelError: ``layer`` is not one of :data:`CHANNEL_LAYERS`.
    """
    if not supports_channels(layer):
        raise _unsupported(layer)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = layer.depthwise_kernel
        shape = tuple(int(d) for d in kernel.shape[-2:])
    else:
        kernel = layer.pointwise_kernel if isinstance(layer, keras.layers.SeparableConv2D) else layer.kernel
        shape = (int(kernel.shape[-1]),)
    bias = layer.bias if getattr(layer, "use_bias", False) else None
    return kernel, bias, shape


def channel_scores(values, mask_shape, norm="l2"):
    """Per-channel norm of ``values`` (a kernel or its gradient) over the axes the mask broadcasts on.

    Args:
        values: array whose trailing axes equal ``mask_shape``.
        mask_shape: shape of the channel mask.
        norm: ``"l2"`` or ``"l1"``.

    Returns:
        A float64 array of shape ``mask_shape``.
    """
    values = np.asarray(values, np.float64)
    mask_shape = tuple(mask_shape)
    if values.shape == mask_shape:
        return np.abs(values)
    if values.shape[values.ndim - len(mask_shape):] != mask_shape:
        raise InputError(f"a weight of shape {values.shape} does not end with its channel mask's shape {mask_shape}.")
    axes = tuple(range(values.ndim - len(mask_shape)))
    if check_norm(norm) == "l2":
        return np.sqrt(np.sum(values * values, axis=axes))
    return np.sum(np.abs(values), axis=axes)


def regrown_init(kernel, keep, regrown, rng):
    """Kernel values for channels that regrow: N(0, std of the live entries), other channels untouched.

    A regrown channel that started at exactly zero would stay dead behind a ReLU (zero
    pre-activation, zero gradient), so unlike weight-level RigL it restarts at the scale of the
    channels that are alive.

    Args:
        kernel: the current kernel (array).
        keep: 0/1 mask (channel shape) of channels alive before the update.
        regrown: bool mask (channel shape) of channels to initialise.
        rng: a ``numpy.random.Generator``.

    Returns:
        A new kernel array.
    """
    kernel = np.array(kernel, copy=True)
    live = np.broadcast_to(np.asarray(keep) > 0, kernel.shape)
    std = float(np.std(kernel[live])) if live.any() else 0.0
    if std == 0.0:
        std = float(np.sqrt(2.0 / max(1, kernel.size // max(1, np.asarray(keep).size))))
    where = np.broadcast_to(np.asarray(regrown, bool), kernel.shape)
    kernel[where] = rng.normal(0.0, std, size=int(where.sum())).astype(kernel.dtype)
    return kernel


def _history(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, []
    layer, node_index = history.layer, history.node_index
    node = layer._inbound_nodes[node_index]
    return layer, ([] if node.is_input else tf.nest.flatten(node.keras_inputs))


def output_layers(model):
    """Names of the channel-capable layers whose output channels reach a model output.

    Walks back from every model output through channel-preserving layers (activations, pooling,
    BatchNormalization, Add, Concatenate, DepthwiseConv2D...) and stops at the first Dense /
    Conv2D / SeparableConv2D on each path.
    """
    found, seen = set(), set()
    stack = list(tf.nest.flatten(model.outputs))
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        layer, inputs = _history(tensor)
        if layer is None or isinstance(layer, keras.layers.InputLayer):
            continue
        if supports_channels(layer):
            found.add(layer.name)
        if not isinstance(layer, _MIXING):
            stack.extend(inputs)
    return found


_INDEX_PRESERVING = (
    keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
    keras.layers.Dropout, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.ZeroPadding2D,
)
_ADD_LIKE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Average, keras.layers.Maximum,
             keras.layers.Minimum, keras.layers.Multiply)


def _producers(tensor, wrapped):
    """Wrapped layers whose output channel ``c`` is channel ``c`` of ``tensor``, or None if another source is."""
    layer, inputs = _history(tensor)
    if layer is None or isinstance(layer, keras.layers.InputLayer):
        return None
    if layer.name in wrapped:
        return {layer.name}
    elementwise = isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") not in (
        "softmax", "log_softmax")
    if (isinstance(layer, _INDEX_PRESERVING) or elementwise) and len(inputs) == 1:
        return _producers(inputs[0], wrapped)
    if isinstance(layer, _ADD_LIKE):
        found = set()
        for t in inputs:
            part = _producers(t, wrapped)
            if part is None:
                return None
            found |= part
        return found
    return None


def tie_groups(model, wrapped):
    """Sets of wrapped layer names whose channel masks must be equal for pruned channels to go.

    The layers feeding one Add (through BatchNormalization, activations, pooling...) are
    removed channel by channel from every branch or from none, and a DepthwiseConv2D (depth
    multiplier 1) drops a channel together with the layer producing its input. Tying their
    masks makes every pruned channel removable.

    Args:
        model: the unwrapped model.
        wrapped: names of the layers that will be wrapped.

    Returns:
        A list of sets (two or more names each).
    """
    parent = {name: name for name in wrapped}

    def find(name):
        while parent[name] != name:
            name = parent[name]
        return name

    def tie(names):
        names = sorted(names)
        for other in names[1:]:
            parent[find(other)] = find(names[0])

    for layer in model.layers:
        for node in layer._inbound_nodes:
            if node.is_input:
                continue
            inputs = tf.nest.flatten(node.keras_inputs)
            if isinstance(layer, _ADD_LIKE):
                parts = [_producers(t, wrapped) for t in inputs]
                if all(p is not None for p in parts):
                    tie(set().union(*parts))
            elif (isinstance(layer, keras.layers.DepthwiseConv2D) and layer.name in wrapped
                  and layer.depth_multiplier == 1):
                part = _producers(inputs[0], wrapped)
                if part is not None:
                    tie(part | {layer.name})
    groups = {}
    for name in wrapped:
        groups.setdefault(find(name), set()).add(name)
    return [g for g in groups.values() if len(g) > 1]


def channel_targets(model, skip_layers, is_prunable):
    """The layers ``prune_safe(..., granularity="channel")`` wraps.

    Channel-capable layers outside ``skip_layers`` and not producing the model's outputs.
    Layers without trainable weights and layers TF-MOT cannot prune (BatchNormalization...) are
    left as they are; channel removal passes through the standard ones.

    Args:
        model: a flat Sequential / Functional model.
        skip_layers: set of names to leave dense.
        is_prunable: ``fn(layer) -> bool`` (TF-MOT's view of prunable layers).

    Raises:
        UnsupportedModelError: a layer TF-MOT can prune but channels cannot (Embedding, RNN,
            attention, a custom ``PrunableLayer``, a Conv2D subclass...), named with the fix; or
            nothing is left to prune.
    """
    outputs = output_layers(model)
    to_wrap = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name in skip_layers:
            continue
        if isinstance(layer, keras.Model):
            raise UnsupportedModelError(
                f"Layer '{layer.name}' is a nested model; prune_safe() wraps flat Sequential/Functional "
                "models. Flatten it first."
            )
        if supports_channels(layer):
            if layer.name not in outputs:
                to_wrap.append(layer)
        elif is_prunable(layer) or isinstance(layer, CHANNEL_LAYERS):
            raise _unsupported(layer)
    if not to_wrap:
        raise UnsupportedModelError(
            f"'{model.name}' has no layer to prune by channel: granularity='channel' prunes Dense, Conv2D, "
            "DepthwiseConv2D and SeparableConv2D layers that do not produce the model's outputs."
        )
    return to_wrap

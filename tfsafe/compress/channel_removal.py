"""Physical removal of dead channels: the model pass behind ``strip()`` for channel pruning and learnable bits.

A dead output channel (pruned by a channel mask of ``PrunableSafe``, or a zero-bit channel of a
learnable-bit layer) outputs the constant ``activation(0)`` everywhere. Following that constant
through the graph tells where it can go:

- elementwise layers (activations, dropout), BatchNormalization and pooling keep it a
  per-channel constant (its value is recomputed through them), Flatten spreads it over the
  flattened features of that channel, zero padding keeps it but makes a non-zero one
  non-uniform (zero at the border), Concatenate shifts it by the offset of its input;
- Add-like merges keep a channel constant only where it is dead in every branch; channels
  merged there are removed together or kept together (union-find groups);
- a Dense consumer, or a Conv2D / SeparableConv2D with ``padding="valid"`` or a 1x1 kernel,
  drops the matching input channels and folds a non-zero uniform constant into its bias
  (exact); any convolution drops a constant that is exactly zero;
- a same-padded Conv2D cannot fold a non-zero constant into its bias (the border sees the zero
  padding): one such channel of the tensor stays as a carrier and the others merge into the
  carrier's input weights (``W[carrier] += value_j / value_carrier * W[j]``), except into
  kernels on a learned grid (``fixed_kernel``), where they stay;
- a DepthwiseConv2D drops a depth channel together with its input channel: when the input is a
  constant it can fold (the outputs become constants too), or when the depth channels are
  dead themselves (then even a non-uniform input goes);
- any other layer, or a model output, keeps the channel.

Channels that cannot go are kept (zero weights, zero bias) and the analysis is repeated until
it is consistent. Wrappers describe their dead channels with :func:`register_channel_source`;
:func:`plan_channel_removal` returns what to keep, :func:`apply_channel_removal` rebuilds the
layer-wise stripped model, and :func:`remove_dead_channels` (also named ``remove_channels``) is
the pass registered with :func:`tfsafe.compress.strip.register_model_pass`, so ``strip(model)``
returns the smaller model with the same outputs.
"""

import dataclasses

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.compress.strip import strip
from tfsafe.metrics import register_deploy_view, short_name

__all__ = ["RemovalPlan", "removal_plan", "remove_channels", "register_channel_source", "plan_channel_removal",
           "apply_channel_removal", "remove_dead_channels"]

_ELEMENTWISE = (
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.ThresholdedReLU,
    keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.ActivityRegularization,
)
_POOLING = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D, keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
)
_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D)

@dataclasses.dataclass
class RemovalPlan:
    """What :func:`remove_channels` does, keyed by the *stripped* layer names.

    Attributes:
        output_keep: Dense/Conv2D/SeparableConv2D source -> bool mask of the output channels kept.
        input_keep: Dense/Conv2D/SeparableConv2D/DepthwiseConv2D/BatchNormalization -> bool mask
            over its input features (channels, or flattened features after Flatten) kept; a
            DepthwiseConv2D loses the depth channels of the inputs it drops.
        bias_fold: consumer -> value added to its bias (constants of removed inputs).
        kept_dead: source -> number of dead channels that had to stay.
        merges: same-padded Conv2D -> ``(carrier, merged, ratios)``: input channels ``merged``
            (removed constants) fold into the kernel of the kept constant input ``carrier``.
    """

    output_keep: dict = dataclasses.field(default_factory=dict)
    input_keep: dict = dataclasses.field(default_factory=dict)
    bias_fold: dict = dataclasses.field(default_factory=dict)
    kept_dead: dict = dataclasses.field(default_factory=dict)
    merges: dict = dataclasses.field(default_factory=dict)

    @property
    def channels_removed(self):
        return int(sum((~keep).sum() for keep in self.output_keep.values()))


def _last_axis(layer):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = layer.input_spec.ndim if layer.input_spec is not None and layer.input_spec.ndim else None
    return len(axis) == 1 and (axis[0] == -1 or (rank is not None and axis[0] == rank - 1))


def _is_elementwise(layer):
    if isinstance(layer, _ELEMENTWISE):
        return True
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        return name not in ("softmax", "log_softmax")
    return False


def removal_plan(model):
    """Decide which dead channels of ``model`` can be removed exactly (:func:`plan_channel_removal`).

    Kept under this name for the learnable-bit code (``learned_size``, ``exact_int8_model``):
    zero-bit channels are one registered channel source among others.
    """
    return plan_channel_removal(model)


_CHANNEL_SOURCES = {}
_WEIGHTED = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
_MERGE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
          keras.layers.Maximum, keras.layers.Minimum)


def register_channel_source(cls, fn, fixed_kernel=False):
    """Register ``fn(layer) -> None | (core, weights, dead)`` for wrappers of type ``cls``.

    ``core`` is the wrapped standard layer (its config and type), ``weights`` a dict from short
    weight names (``"kernel"``, ``"depthwise_kernel"``, ``"pointwise_kernel"``, ``"bias"``) to
    the arrays the stripped layer holds, ``dead`` a bool array over the output channels whose
    pre-activation output is exactly zero for every input (``None``: no dead channels).
    ``fn`` returns ``None`` for an instance it cannot describe: nothing is removed through it.
    ``fixed_kernel=True`` (kernels on a learned grid) forbids merging constant input channels
    into a kept channel's kernel weights; folding into the bias stays allowed.
    """
    _CHANNEL_SOURCES[cls] = (fn, fixed_kernel)


def _channel_source(layer):
    for cls in type(layer).__mro__:
        if cls in _CHANNEL_SOURCES:
            fn, fixed = _CHANNEL_SOURCES[cls]
            source = fn(layer)
            return None if source is None else (*source, fixed)
    if hasattr(layer, "layer"):  # a wrapper nobody described: its weights are not the deployed ones
        return None
    return layer, {short_name(w): w.numpy() for w in layer.weights}, None, False


class _Groups:
    """Union-find over channel ids: channels that are removed together or kept together."""

    def __init__(self):
        self.parent = []

    def new(self):
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


@dataclasses.dataclass
class _Feat:
    src: np.ndarray  # per feature: removable channel id it carries (-1: none)
    value: np.ndarray  # its constant value (interior value where not uniform), where known
    uniform: np.ndarray  # the constant is the same at every spatial position
    const: np.ndarray  # a kept feature that is a known uniform constant (a carrier for merges)

    def known(self):
        return (self.src >= 0) | self.const


def _live(n):
    return _Feat(np.full(n, -1, np.int64), np.zeros(n, np.float32), np.ones(n, bool), np.zeros(n, bool))


def _carried(info, value, uniform=None):
    """``info`` with new constant values (same sources), zero where nothing is known."""
    known = info.known()
    uniform = info.uniform.copy() if uniform is None else uniform
    return _Feat(info.src.copy(), np.where(known, value, 0.0).astype(np.float32), uniform, info.const & uniform)


def _merge_targets(info):
    """For a same-padded Conv2D input: ``(carrier, merged)`` feature indices, or ``(None, merged)``.

    Removable non-zero uniform constants cannot fold into a bias (the border sees the zero
    padding), but they can fold into the input weights of one kept constant channel of the same
    tensor, which is zero-padded the same way: ``W[carrier] += sum_j value_j / value_carrier W[j]``.
    """
    merged = np.flatnonzero((info.src >= 0) & info.uniform & (info.value != 0))
    carriers = np.flatnonzero(info.const & (info.src < 0) & (info.value != 0))
    return (int(carriers[0]) if carriers.size else None), merged


def _spatial_free(core):
    """True when a constant input contributes the same amount at every output position."""
    return core.padding == "valid" or all(int(k) == 1 for k in core.kernel_size)


def _conv_fold_kernel(core, weights):
    """``(spatial, in, out)`` kernel whose sum over axis 0 is a constant input's contribution."""
    if isinstance(core, keras.layers.SeparableConv2D):
        dw, pw = weights["depthwise_kernel"], weights["pointwise_kernel"]
        dm = dw.shape[-1]
        per_in = dw.sum(axis=(0, 1))  # (in, dm)
        eff = np.einsum("im,imo->io", per_in, pw.reshape(per_in.shape[0], dm, -1))
        return eff[None]
    kernel = weights["kernel"]
    return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])


def _general_propagate(model, candidates):
    """One pass of the constant analysis. Returns (records, blocked (key, channel) pairs, id map)."""
    infos, records, groups = {}, {}, _Groups()
    shared = _shared_layers(model)
    ids, blocked = {}, set()

    def block(info, where=None):
        mask = info.src >= 0 if where is None else (info.src >= 0) & where
        blocked.update(int(i) for i in np.unique(info.src[mask]))

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            outputs = tf.nest.flatten(node.outputs)
            if node.is_input:
                for t in outputs:
                    infos[id(t)] = _live(int(t.shape[-1]))
                continue
            in_tensors = tf.nest.flatten(node.keras_inputs)
            inputs = [infos[id(t)] for t in in_tensors]
            out_n = int(outputs[0].shape[-1]) if outputs[0].shape.rank else 1
            out = _live(out_n)
            removed_in = any(i.known().any() for i in inputs)
            core_type = type(getattr(layer, "layer", layer))
            if id(layer) in shared:  # one set of weights for several calls: left as it is
                for info in inputs:
                    block(info)
            elif core_type in _WEIGHTED and len(outputs) == 1 and len(inputs) == 1:
                source = _channel_source(layer)
                if source is None:
                    block(inputs[0])
                else:
                    out = _weighted(source, inputs[0], out_n, candidates, ids, groups, block, records)
            elif not removed_in:
                pass
            elif isinstance(layer, keras.layers.BatchNormalization) and len(inputs) == 1 and _last_axis(layer):
                info = inputs[0]
                gamma = layer.gamma.numpy() if layer.scale else 1.0
                beta = layer.beta.numpy() if layer.center else 0.0
                value = gamma * (info.value - layer.moving_mean.numpy()) / np.sqrt(
                    layer.moving_variance.numpy() + layer.epsilon) + beta
                out = _carried(info, value)
                records[layer.name] = ("batchnorm", layer, info)
            elif _is_elementwise(layer) and len(inputs) == 1:
                info = inputs[0]
                out = _carried(info, np.asarray(layer(tf.constant(info.value[None, :]), training=False))[0])
            elif isinstance(layer, _POOLING) and getattr(layer, "data_format", "channels_last") == "channels_last":
                out = dataclasses.replace(inputs[0])
            elif isinstance(layer, _PADDING) and getattr(layer, "data_format", "channels_last") == "channels_last":
                info = inputs[0]
                out = _carried(info, info.value, info.uniform & (info.value == 0))
            elif isinstance(layer, keras.layers.Flatten) and layer.data_format == "channels_last":
                shape = in_tensors[0].shape
                repeats = int(np.prod(shape[1:-1])) if shape.rank > 2 else 1
                info = inputs[0]
                out = _Feat(*(np.tile(getattr(info, f), repeats) for f in ("src", "value", "uniform", "const")))
            elif isinstance(layer, _MERGE) and all(i.src.size == out_n for i in inputs):
                everywhere = np.all([i.src >= 0 for i in inputs], axis=0)
                for info in inputs:
                    block(info, ~everywhere)
                src = np.where(everywhere, inputs[0].src, -1)
                for info in inputs[1:]:
                    for a, b in zip(src[everywhere], info.src[everywhere]):
                        groups.union(int(a), int(b))
                value = np.asarray(layer._merge_function([tf.constant(i.value[None, :]) for i in inputs]))[0]
                uniform = np.all([i.uniform for i in inputs], axis=0)
                const = np.all([i.known() for i in inputs], axis=0) & ~everywhere & uniform
                out = _Feat(src, np.where(everywhere | const, value, 0.0).astype(np.float32), uniform, const)
            elif isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, len(outputs[0].shape) - 1):
                fields = ("src", "value", "uniform", "const")
                out = _Feat(*(np.concatenate([getattr(i, f) for i in inputs]) for f in fields))
            else:
                for info in inputs:
                    block(info)
            for t in outputs:
                infos[id(t)] = out
    for t in model.outputs:
        block(infos[id(t)])
    roots = {groups.find(i) for i in blocked}
    inverse = {v: k for k, v in ids.items()}
    return records, {inverse[i] for i in range(len(groups.parent)) if groups.find(i) in roots}


def _shared_layers(model):
    """ids of the layers called more than once in ``model``'s graph."""
    calls = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if not node.is_input:
                calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
    return {key for key, n in calls.items() if n > 1}


def _weighted(source, info, out_n, candidates, ids, groups, block, records):
    core, weights, dead, fixed = source
    key = core.name
    activation = getattr(core, "activation", None) or keras.activations.linear
    if isinstance(core, keras.layers.DepthwiseConv2D):
        kernel = weights["depthwise_kernel"]
        dm = kernel.shape[-1]
        bias = weights.get("bias", np.zeros(out_n, np.float32))
        dead = np.zeros(out_n, bool) if dead is None else dead
        foldable = info.uniform & ((info.value == 0) | _spatial_free(core))
        dead_in = dead.reshape(-1, dm).all(axis=1)
        block(info, ~foldable & ~dead_in)
        src = np.repeat(info.src, dm)
        pre = bias + np.repeat(np.where(info.known(), info.value, 0.0), dm) * kernel.sum(axis=(0, 1)).reshape(-1)
        live_value = np.asarray(activation(tf.constant(pre[None].astype(np.float32))))[0]
        value = np.where(dead, np.asarray(activation(tf.zeros((1, out_n))))[0], live_value)
        kept_const = (np.repeat(info.const & foldable, dm) | dead) & (src < 0)
        records[key] = ("depthwise", core, info)
        return _Feat(src, np.where((src >= 0) | kept_const, value, 0.0).astype(np.float32), np.ones(out_n, bool),
                     kept_const)
    if isinstance(core, keras.layers.Conv2D) and core.groups != 1:
        block(info)
    elif isinstance(core, keras.layers.Dense) or _spatial_free(core):
        block(info, ~info.uniform)
    elif isinstance(core, keras.layers.Conv2D) and not fixed:
        block(info, ~info.uniform)
        carrier, merged = _merge_targets(info)
        if carrier is None and merged.size:  # keep one constant channel: the others merge into it
            block(info, np.arange(info.src.size) == merged[np.argmax(np.abs(info.value[merged]))])
    else:
        block(info, ~info.uniform | (info.value != 0))
    records[key] = ("weighted", core, info, weights, fixed)
    out = _live(out_n)
    if dead is not None:
        for c in np.flatnonzero(dead):
            if (key, int(c)) in candidates:
                out.src[c] = ids.setdefault((key, int(c)), groups.new())
        out.const[:] = dead & (out.src < 0)
        out.value[:] = np.where(dead, np.asarray(activation(tf.zeros((1, out_n))))[0], 0.0)
    return out


def plan_channel_removal(model):
    """Which dead output channels of ``model`` (a wrapped model) :func:`apply_channel_removal` removes.

    Every channel-capable layer with a registered source (:func:`register_channel_source`)
    reports its dead output channels; a dead channel outputs the constant ``activation(0)``,
    which BatchNormalization, elementwise layers, pooling, padding, Flatten, Add-like merges and
    Concatenate carry on. A consumer drops the matching input channels and folds the constant's
    contribution into its bias (Dense; Conv2D / SeparableConv2D with ``padding="valid"`` or a
    1x1 kernel; any conv when the constant is 0); a DepthwiseConv2D removes its matching depth
    channels with them (exact also under ``padding="same"`` when those channels are themselves
    dead). Channels merged by an Add are removed from all branches or kept in all. A constant
    that cannot go (a model output, an unknown layer, a same-padded 3x3 conv on a non-zero
    constant) keeps its channel, and the analysis repeats until consistent.

    Returns:
        A :class:`RemovalPlan` keyed by layer names of the stripped model; empty for
        subclassed models or when nothing is dead.
    """
    plan = RemovalPlan()
    if not getattr(model, "_is_graph_network", False):
        return plan
    sources, shared = {}, _shared_layers(model)
    for layer in model.layers:
        if type(getattr(layer, "layer", layer)) in _WEIGHTED and id(layer) not in shared and any(
                cls in _CHANNEL_SOURCES for cls in type(layer).__mro__):
            source = _channel_source(layer)
            if source is not None and source[2] is not None and not isinstance(source[0], keras.layers.DepthwiseConv2D):
                sources[source[0].name] = source[2]
    candidates = {(key, int(c)) for key, dead in sources.items() for c in np.flatnonzero(dead)}
    if not candidates:
        return plan
    while True:
        records, blocked = _general_propagate(model, candidates)
        if not blocked:
            break
        candidates -= blocked
    for key, dead in sources.items():
        removable = np.array([(key, c) in candidates for c in range(dead.size)], bool)
        plan.output_keep[key] = ~removable
        plan.kept_dead[key] = int(dead.sum() - removable.sum())
    for key, record in records.items():
        kind, core, info = record[:3]
        removed = info.src >= 0
        if not removed.any():
            continue
        plan.input_keep[key] = ~removed
        if kind == "weighted" and isinstance(core, keras.layers.Conv2D) and not _spatial_free(core) and not record[4]:
            carrier, merged = _merge_targets(info)
            if merged.size:
                plan.merges[key] = (carrier, merged, info.value[merged] / info.value[carrier])
                removed = removed.copy()
                removed[merged] = False  # carried by the merge, not by the bias
        if kind == "weighted" and (info.value[removed] != 0).any():
            kernel = _conv_fold_kernel(core, record[3]) if not isinstance(core, keras.layers.Dense) else \
                record[3]["kernel"].reshape(1, -1, core.units)
            plan.bias_fold[key] = np.einsum("c,scu->u", info.value * removed, kernel).astype(np.float32)
    return plan


def apply_channel_removal(stripped, plan):
    """Rebuild the layer-wise ``stripped`` model without the channels ``plan`` removes."""

    def rebuild(layer):
        config = layer.get_config()
        weights = [w.numpy() for w in layer.weights]
        name = layer.name
        out_keep, in_keep = plan.output_keep.get(name), plan.input_keep.get(name)
        fold = plan.bias_fold.get(name)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            if in_keep is not None:
                weights[0] = weights[0][:, :, in_keep, :]
                if layer.use_bias:
                    weights[1] = weights[1].reshape(in_keep.size, -1)[in_keep].reshape(-1)
        elif isinstance(layer, (keras.layers.SeparableConv2D, keras.layers.Conv2D, keras.layers.Dense)):
            separable = isinstance(layer, keras.layers.SeparableConv2D)
            kernels = weights[:2] if separable else weights[:1]
            out_n = kernels[-1].shape[-1]
            bias = weights[len(kernels)] if layer.use_bias else np.zeros(out_n, np.float32)
            if fold is not None:
                bias = bias + fold
                config["use_bias"] = True
            merge = plan.merges.get(name)
            if merge is not None:
                carrier, merged, ratios = merge
                kernels[0] = kernels[0].copy()
                kernels[0][..., carrier, :] += np.einsum("j,hwjo->hwo", ratios, kernels[0][..., merged, :])
            if in_keep is not None:
                if separable:
                    dm = kernels[0].shape[-1]
                    kernels = [kernels[0][:, :, in_keep, :], kernels[1][:, :, np.repeat(in_keep, dm), :]]
                else:
                    kernels = [np.take(kernels[0], np.flatnonzero(in_keep), axis=kernels[0].ndim - 2)]
            if out_keep is not None and not out_keep.all():
                kernels[-1], bias = kernels[-1][..., out_keep], bias[out_keep]
                config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = int(out_keep.sum())
            weights = kernels + ([bias] if config.get("use_bias", True) else [])
        elif isinstance(layer, keras.layers.BatchNormalization) and in_keep is not None:
            weights = [w[in_keep] for w in weights]
        return layer.__class__.from_config(config), weights

    return clone_with_weights(stripped, rebuild, "strip")


def remove_dead_channels(stripped, original):
    """Model pass for :func:`tfsafe.compress.strip.register_model_pass`: plan on ``original``, apply to ``stripped``."""
    layers = getattr(original, "layers", None) or []
    if not any(cls in _CHANNEL_SOURCES for layer in layers for cls in type(layer).__mro__):
        return stripped
    plan = plan_channel_removal(original)
    if not plan.input_keep and not any((~k).any() for k in plan.output_keep.values()):
        return stripped
    return apply_channel_removal(stripped, plan)


# The zero-bit channel pass of self-compression is this pass (one registration, run once).
remove_channels = remove_dead_channels


def _shipped_view(model):
    """For :func:`tfsafe.metrics.model_size`: a wrapped model whose dead channels go counts as ``strip(model)``."""
    layers = getattr(model, "layers", None) or []
    if not any(cls in _CHANNEL_SOURCES for layer in layers for cls in type(layer).__mro__):
        return None
    plan = plan_channel_removal(model)
    if not plan.input_keep and not any((~k).any() for k in plan.output_keep.values()):
        return None
    return strip(model)


register_deploy_view(_shipped_view)

"""Physical removal of zero-bit channels: the model pass behind ``strip()`` for learnable bits.

A zero-bit output channel of a learnable-bit layer outputs the constant ``activation(0)``
everywhere. Following that constant through the graph tells where it can go:

- elementwise layers (activations, dropout), BatchNormalization and pooling keep it a
  per-channel constant (its value is recomputed through them), Flatten spreads it over the
  flattened features of that channel;
- a Dense or ``padding="valid"`` Conv2D consumer drops the matching input channels and folds a
  non-zero constant into its bias (exact); a DepthwiseConv2D carries it to its own outputs;
- a ``padding="same"`` convolution can only drop a constant that is exactly zero (at the border
  a non-zero constant is not uniform); any other layer, or a model output, keeps the channel.

Channels that cannot go are kept (zero weights, zero bias) and the analysis is repeated until
it is consistent. :func:`removal_plan` returns what to keep; :func:`remove_channels` applies it
to the layer-wise stripped model and is registered with
:func:`tfsafe.compress.strip.register_model_pass`, so ``strip(model)`` returns the smaller
model with the same outputs.
"""

import dataclasses

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.compress.bit_layers import (
    dead_channels,
    is_learnable_layer,
    learnable_layers,
    quantized_bias,
    quantized_kernel,
)

__all__ = ["RemovalPlan", "removal_plan", "remove_channels"]

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
        output_keep: learnable Conv2D/Dense layer -> bool mask of the output channels kept.
        input_keep: Dense/Conv2D/DepthwiseConv2D/BatchNormalization -> bool mask over its input
            features (channels, or flattened features after Flatten) kept.
        bias_fold: consumer -> value added to its bias (constants of removed inputs).
        kept_dead: learnable layer -> number of zero-bit channels that had to stay.
    """

    output_keep: dict = dataclasses.field(default_factory=dict)
    input_keep: dict = dataclasses.field(default_factory=dict)
    bias_fold: dict = dataclasses.field(default_factory=dict)
    kept_dead: dict = dataclasses.field(default_factory=dict)

    @property
    def channels_removed(self):
        return int(sum((~keep).sum() for keep in self.output_keep.values()))


@dataclasses.dataclass
class _Info:
    src: np.ndarray  # per feature: id of the removable channel it carries, -1 if none
    value: np.ndarray  # the constant value of that feature (where src >= 0)


def _layer_parts(layer):
    """(key, core layer, kernel, bias, dead mask or None) for a layer with weights of interest."""
    if is_learnable_layer(layer):
        core = layer.layer
        return core.name, core, quantized_kernel(layer), quantized_bias(layer), dead_channels(layer)
    kernel = getattr(layer, "depthwise_kernel", None) if isinstance(layer, keras.layers.DepthwiseConv2D) else None
    if kernel is None:
        kernel = getattr(layer, "kernel", None)
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
    bias = None if bias is None else bias.numpy()
    return layer.name, layer, None if kernel is None else kernel.numpy(), bias, None


def _activate(core, values):
    activation = getattr(core, "activation", None) or keras.activations.linear
    return np.asarray(activation(tf.constant(values[None, :], tf.float32)))[0]


def _none(n):
    return _Info(np.full(n, -1, np.int64), np.zeros(n, np.float32))


def _propagate(model, candidates):
    """One forward pass of the constant analysis. Returns (infos, per-layer records, blocked ids)."""
    infos, records, blocked = {}, {}, set()
    ids = {}  # (key, channel) -> id

    def block(info, where=None):
        mask = info.src >= 0 if where is None else (info.src >= 0) & where
        blocked.update(int(i) for i in np.unique(info.src[mask]))

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            outputs = tf.nest.flatten(node.outputs)
            if node.is_input:
                for t in outputs:
                    infos[id(t)] = _none(int(t.shape[-1]))
                continue
            inputs = [infos[id(t)] for t in tf.nest.flatten(node.keras_inputs)]
            out_n = int(outputs[0].shape[-1]) if outputs[0].shape.rank else 1
            out = _none(out_n)
            removed_in = any((i.src >= 0).any() for i in inputs)
            core_type = type(getattr(layer, "layer", layer))
            if core_type in (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D) and (
                len(outputs) == 1 and len(inputs) == 1
            ):
                key, core, kernel, bias, dead = _layer_parts(layer)
                info = inputs[0]
                nonzero = (info.src >= 0) & (info.value != 0)
                if core_type is keras.layers.DepthwiseConv2D:
                    dm = kernel.shape[-1]
                    if core.padding != "valid":
                        block(info, nonzero)
                    # Output channel i * dm + m is constant when input channel i is.
                    b = np.zeros(out_n, np.float32) if bias is None else bias
                    src = np.repeat(info.src, dm)
                    constant_in = np.repeat(np.where(info.src >= 0, info.value, 0.0), dm)
                    pre = b + constant_in * kernel.sum(axis=(0, 1)).reshape(-1)
                    out = _Info(src, np.where(src >= 0, _activate(core, pre.astype(np.float32)), 0.0))
                    records[key] = ("depthwise", layer, info)
                else:
                    foldable = core_type is keras.layers.Dense or (core.padding == "valid" and core.groups == 1)
                    if not foldable:
                        block(info, nonzero)
                    if core_type is keras.layers.Conv2D and core.groups != 1:
                        block(info)
                    records[key] = ("weighted", layer, info)
                    if dead is not None:
                        src = np.full(out_n, -1, np.int64)
                        for c in np.flatnonzero(dead):
                            if (key, int(c)) in candidates:
                                src[c] = ids.setdefault((key, int(c)), len(ids))
                        out = _Info(src, _activate(core, np.zeros(out_n, np.float32)))
            elif not removed_in:
                pass
            elif isinstance(layer, keras.layers.BatchNormalization) and len(inputs) == 1 and _last_axis(layer):
                info = inputs[0]
                gamma = layer.gamma.numpy() if layer.scale else 1.0
                beta = layer.beta.numpy() if layer.center else 0.0
                value = gamma * (info.value - layer.moving_mean.numpy()) / np.sqrt(
                    layer.moving_variance.numpy() + layer.epsilon) + beta
                out = _Info(info.src.copy(), np.where(info.src >= 0, value, 0.0).astype(np.float32))
                records[layer.name] = ("batchnorm", layer, info)
            elif _is_elementwise(layer) and len(inputs) == 1:
                info = inputs[0]
                value = np.asarray(layer(tf.constant(info.value[None, :]), training=False))[0]
                out = _Info(info.src.copy(), np.where(info.src >= 0, value, 0.0).astype(np.float32))
            elif isinstance(layer, _POOLING) and getattr(layer, "data_format", "channels_last") == "channels_last":
                out = _Info(inputs[0].src.copy(), inputs[0].value.copy())
            elif isinstance(layer, _PADDING) and getattr(layer, "data_format", "channels_last") == "channels_last":
                block(inputs[0], inputs[0].value != 0)
                out = _Info(inputs[0].src.copy(), inputs[0].value.copy())
            elif isinstance(layer, keras.layers.Flatten) and layer.data_format == "channels_last":
                shape = tf.nest.flatten(node.keras_inputs)[0].shape
                repeats = int(np.prod(shape[1:-1])) if shape.rank > 2 else 1
                out = _Info(np.tile(inputs[0].src, repeats), np.tile(inputs[0].value, repeats))
            else:
                for info in inputs:
                    block(info)
            for t in outputs:
                infos[id(t)] = out
    for t in model.outputs:
        block(infos[id(t)])
    inverse = {v: k for k, v in ids.items()}
    return infos, records, {inverse[i] for i in blocked if i in inverse}


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
    """Decide which zero-bit channels of ``model`` (a learnable-bit model) can be removed exactly.

    Returns:
        A :class:`RemovalPlan`; empty for models that are not Functional/Sequential graphs.
    """

    plan = RemovalPlan()
    if not getattr(model, "_is_graph_network", False):
        return plan
    learnable = [layer for layer in learnable_layers(model) if layer.quantize_config.channel_axes == 1]
    candidates = {(layer.layer.name, int(c)) for layer in learnable for c in np.flatnonzero(dead_channels(layer))}
    while True:
        _, records, blocked = _propagate(model, candidates)
        if not blocked:
            break
        candidates -= blocked
    for layer in learnable:
        key = layer.layer.name
        dead = dead_channels(layer)
        removable = np.array([(key, int(c)) in candidates for c in range(dead.size)], bool)
        plan.output_keep[key] = ~removable
        plan.kept_dead[key] = int(dead.sum() - removable.sum())
    for key, (kind, layer, info) in records.items():
        removed = info.src >= 0
        if not removed.any():
            continue
        plan.input_keep[key] = ~removed
        if kind == "weighted":
            _, core, kernel, _, _ = _layer_parts(layer)
            if (info.value[removed] != 0).any():
                weights = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])
                plan.bias_fold[key] = np.einsum("c,scu->u", info.value * removed, weights).astype(np.float32)
    return plan


def remove_channels(stripped, original):
    """Model pass: apply :func:`removal_plan` of ``original`` to the layer-wise ``stripped`` model."""

    if not learnable_layers(original):
        return stripped
    plan = removal_plan(original)
    if not plan.input_keep and not any((~k).any() for k in plan.output_keep.values()):
        return stripped

    def rebuild(layer):
        config = layer.get_config()
        weights = [w.numpy() for w in layer.weights]
        name = layer.name
        out_keep = plan.output_keep.get(name)
        in_keep = plan.input_keep.get(name)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            if in_keep is not None:
                weights[0] = weights[0][:, :, in_keep, :]
                if layer.use_bias:
                    weights[1] = weights[1].reshape(in_keep.size, -1)[in_keep].reshape(-1)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = weights[0]
            bias = weights[1] if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
            fold = plan.bias_fold.get(name)
            if fold is not None:
                bias = bias + fold
                if not layer.use_bias:
                    config["use_bias"] = True
            if in_keep is not None:
                kernel = np.take(kernel, np.flatnonzero(in_keep), axis=kernel.ndim - 2)
            if out_keep is not None:
                kernel, bias = kernel[..., out_keep], bias[out_keep]
                config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = int(out_keep.sum())
            weights = [kernel, bias] if config.get("use_bias", True) else [kernel]
        elif isinstance(layer, keras.layers.BatchNormalization) and in_keep is not None:
            weights = [w[in_keep] for w in weights]
        return layer.__class__.from_config(config), weights

    return clone_with_weights(stripped, rebuild, "strip")

"""Learnable bit depth per output channel (self-compressing networks) as a TF-MOT quantizer.

Each quantized layer gets a trainable bit depth ``b >= 0`` and exponent ``e`` per output channel
and uses the weights ``q(w, b, e) = 2^e * round(clamp(2^-e w, -2^(b-1), 2^(b-1) - 1))`` with a
straight-through estimator for the rounding, so the task loss trains ``w``, ``b`` and ``e`` and a
size penalty (:func:`tfsafe.objectives.size_penalty`) pushes ``b`` down. A channel whose ``b``
reaches 0 has only zero weights; its bias is gated off too, so the channel outputs exactly
``activation(0)`` and :func:`tfsafe.compress.strip.strip` removes it physically together with the
matching input channels of the next layer (see :mod:`tfsafe.compress.channel_removal`).

The pieces are TF-MOT's own: :class:`LearnableBitQuant` is a
``tfmot.quantization.keras.quantizers.Quantizer``, :class:`LearnableBitQuantizeConfig` a
``QuantizeConfig`` for Conv2D, Dense and DepthwiseConv2D, and :func:`quantize_learnable` runs
``quantize_annotate_layer`` + ``quantize_apply``. Only weights are quantized: activations stay
float (the config returns no activation or output quantizers and the scheme adds no input
quantize layer), because the method learns weight bits only; full-int8 TFLite conversion
calibrates activations from a representative dataset instead.

Int8 export: in inference mode the quantizer of a convolution ends with a per-channel FakeQuant
of range ``+-127 * 2^e`` (an identity on the grid) so that TFLite can store the learned integers
exactly; see :mod:`tfsafe.compress.exact_int8` (``exact_int8_model``, ``to_int8_tflite``).

Layout: :mod:`~tfsafe.compress.bit_quantizers` (quantizers, config, scheme),
:mod:`~tfsafe.compress.bit_layers` (per-layer queries), this module (wrapping a model, size,
stripping); all public names are importable from here.

Saved models load without ``quantize_scope``: the config, quantizers and constraint are
registered Keras serializables, and importing this module (``tfsafe.load_model`` does) also
registers TF-MOT's ``QuantizeWrapper`` / ``QuantizeWrapperV2`` as global custom objects.
"""

import numpy as np
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tfsafe._keras import keras, tfmot
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.compress.bit_layers import (
    bit_size_terms,
    channel_bits,
    check_bit_depth,
    dead_channels,
    fit_exponents,
    is_learnable_layer,
    learnable_bias,
    learnable_kernel,
    learnable_layers,
    quant_variables,
    quantized_bias,
    quantized_kernel,
    restore_channels,
    storage_bits,
    supported_type,
)
from tfsafe.compress.bit_quantizers import (
    CHANNEL_AXES,
    KERNEL_ATTR,
    SUPPORTED_LAYERS,
    BitRange,
    ChannelGate,
    LearnableBitQuant,
    LearnableBitQuantizeConfig,
    WeightOnlyScheme,
    quantize_to_grid,
)
from tfsafe.compress.channel_removal import register_channel_source, removal_plan, remove_channels
from tfsafe.compress.strip import register_model_pass, register_stripper
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_weight_stats, short_name
from tfsafe.validation import check_model

__all__ = [
    "LearnableBitQuant", "ChannelGate", "BitRange", "LearnableBitQuantizeConfig", "WeightOnlyScheme",
    "quantize_learnable", "quantize_to_grid", "learnable_layers", "is_learnable_layer", "channel_bits",
    "storage_bits", "fit_exponents", "restore_channels", "dead_channels", "learned_size",
    "quantized_kernel", "quantized_bias", "bit_size_terms", "bake_weights", "quant_variables", "learnable_kernel",
    "learnable_bias", "supported_type", "check_bit_depth", "SUPPORTED_LAYERS", "KERNEL_ATTR", "CHANNEL_AXES",
]

def quantize_learnable(model, init_bits=8, max_bits=8, layers=None):
    """Wrap Conv2D, Dense and DepthwiseConv2D layers with learnable per-channel bit depths.

    Uses TF-MOT's ``quantize_annotate_layer`` + ``quantize_apply`` with
    :class:`LearnableBitQuantizeConfig` and :class:`WeightOnlyScheme`, then fits each channel's
    exponent to its weights. The result trains with ``Model.fit``; add
    :func:`tfsafe.objectives.size_penalty` to the loss to shrink the bits. The input model is
    not modified. The result saves and loads (``tfsafe.load_model`` or plain
    ``keras.models.load_model`` after ``import tfsafe``) without ``quantize_scope``.

    Args:
        model: a Sequential or Functional tf_keras model.
        init_bits: initial bit depth per channel (whole number, 1..max_bits).
        max_bits: the largest bit depth a channel may learn (whole number, 1..16; 8 keeps every
            channel exactly representable in int8 TFLite).
        layers: names of the layers to quantize (default: every supported layer).

    Returns:
        A new model whose quantized layers are ``QuantizeWrapperV2`` instances.

    Raises:
        InputError: bad ``init_bits`` / ``max_bits`` or unknown layer names.
        UnsupportedModelError: a named layer cannot be quantized, none can, or the model is
            subclassed.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> qmodel = quantize_learnable(small_cnn(), init_bits=8)
        >>> [l.name for l in learnable_layers(qmodel)]
        ['quant_conv1', 'quant_conv2', 'quant_fc1', 'quant_logits']
    """
    max_bits = check_bit_depth(max_bits, "max_bits")
    init_bits = check_bit_depth(init_bits, "init_bits", 1, max_bits)
    model = check_model(model)
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise UnsupportedModelError(
            f"quantize_learnable needs a Sequential or Functional model; '{model.name}' is subclassed."
        )
    by_name = {layer.name: layer for layer in model.layers}
    if layers is not None:
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputError(f"No layer named {unknown} in '{model.name}'; layers are {sorted(by_name)}.")
        for n in names:
            if supported_type(by_name[n]) is None:
                raise UnsupportedModelError(
                    f"Layer '{n}' ({type(by_name[n]).__name__}) cannot be quantized with learnable bits; "
                    "supported: Conv2D, Dense, DepthwiseConv2D."
                )
    else:
        names = [layer.name for layer in model.layers if supported_type(layer) is not None]
    if not names:
        raise UnsupportedModelError(
            f"'{model.name}' has no Conv2D, Dense or DepthwiseConv2D layer to quantize."
        )
    targets = set(names)

    def annotate(layer):
        kind = supported_type(layer)
        if layer.name not in targets or kind is None:
            return layer
        config = LearnableBitQuantizeConfig(
            init_bits, max_bits, CHANNEL_AXES[kind], KERNEL_ATTR[kind], export_ranges=kind is not keras.layers.Dense
        )
        return tfmot.quantization.keras.quantize_annotate_layer(layer, config)

    with tfmot.quantization.keras.quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
        qmodel = tfmot.quantization.keras.quantize_apply(annotated, scheme=WeightOnlyScheme())
    for layer in learnable_layers(qmodel):
        _match_fresh_build(layer)
        fit_exponents(layer, bits=init_bits)
    return qmodel

def _match_fresh_build(layer):
    """Make a wrapper built around an already-built layer list its variables like a fresh one.

    QuantizeWrapperV2 adds the inner layer's weights once more when that layer was already
    built (as in quantize_apply), so ``.keras`` files would hold more variables than a freshly
    deserialized wrapper expects. Keeping the last occurrence gives the fresh order.
    """
    seen, ordered = set(), []
    for weight in reversed(layer._trainable_weights):
        if id(weight) not in seen:
            seen.add(id(weight))
            ordered.append(weight)
    layer._trainable_weights = list(reversed(ordered))

def learned_size(model):
    """Size of a learnable-bit model as it will be deployed, counting removed channels.

    Kernel weights of zero-bit channels and the next layer's weights on removed input channels
    are not counted; live weights cost their channel's :func:`storage_bits`; biases and one
    float32 scale per live channel cost 32 bits; layers that are not quantized cost 32 bits
    per weight.

    Returns:
        dict with ``average_bits`` (mean storage bits per kept quantized kernel weight),
        ``mean_channel_bits`` (mean learned b over channels), ``channels``, ``channels_removed``,
        ``kernel_weights`` (kept), ``ideal_bytes`` (non-zero kept weights x bits / 8 + biases,
        scales and float layers), ``grid_bytes`` (every kept weight x bits / 8 + the same extras).
    """
    plan = removal_plan(model)
    nonzero_bits = dense_bits = extra_bits = 0.0
    kept_weights = kept_weight_bits = 0.0
    channels = removed = 0
    all_b = []
    for layer in model.layers:
        if is_learnable_layer(layer):
            kernel = quantized_kernel(layer)
            axes = layer.quantize_config.channel_axes
            flat = kernel.reshape(kernel.shape[: kernel.ndim - axes] + (-1,))
            key = layer.layer.name
            in_keep = plan.input_keep.get(key)
            if in_keep is not None and flat.ndim >= 2 and axes == 1:
                flat = np.take(flat, np.flatnonzero(in_keep), axis=flat.ndim - 2)
            out_keep = plan.output_keep.get(key, np.ones(flat.shape[-1], bool))
            if axes == 2 and in_keep is not None:  # depthwise: channel c belongs to input c // dm
                out_keep = out_keep & np.repeat(in_keep, kernel.shape[-1])
            b = channel_bits(layer)
            all_b.extend(b.tolist())
            sbits = storage_bits(b)
            channels += b.size
            removed += int((~out_keep).sum())
            flat = flat[..., out_keep]
            per_channel = flat.reshape(-1, flat.shape[-1])
            nonzero_bits += float((np.count_nonzero(per_channel, axis=0) * sbits[out_keep]).sum())
            dense_bits += float(per_channel.shape[0] * sbits[out_keep].sum())
            kept_weights += per_channel.size
            kept_weight_bits += float(per_channel.shape[0] * sbits[out_keep].sum())
            live = int((out_keep & (b > 0)).sum())
            extra_bits += 32.0 * live + (32.0 * int(out_keep.sum()) if getattr(layer.layer, "use_bias", False) else 0)
        else:
            keep = plan.input_keep.get(layer.name)
            for w in layer.weights:
                size = w.shape.num_elements()
                if keep is not None and (isinstance(layer, keras.layers.BatchNormalization) or w.shape.rank >= 2):
                    size = size // keep.size * int(keep.sum())  # removed input channels / features
                extra_bits += 32.0 * size
    return {
        "average_bits": kept_weight_bits / kept_weights if kept_weights else 0.0,
        "mean_channel_bits": float(np.mean(all_b)) if all_b else 0.0,
        "channels": channels,
        "channels_removed": removed,
        "kernel_weights": int(kept_weights),
        "ideal_bytes": (nonzero_bits + extra_bits) / 8.0,
        "grid_bytes": (dense_bits + extra_bits) / 8.0,
    }

def _strip_wrapper(layer):
    if not is_learnable_layer(layer):  # other TF-MOT configs: copied as they are, like before
        with tfmot.quantization.keras.quantize_scope():
            copy = layer.__class__.from_config(layer.get_config())
        return copy, [w.numpy() for w in layer.weights]
    inner = layer.layer
    weights = [quantized_kernel(layer)]
    if getattr(inner, "use_bias", False):
        weights.append(quantized_bias(layer))
    return inner.__class__.from_config(inner.get_config()), weights

def bake_weights(model):
    """Plain Keras copy of ``model`` with weights on the learned grid and zero-bit channels kept.

    Like :func:`tfsafe.compress.strip.strip` without the channel removal pass: the same
    function and the same shapes, for comparing a stripped model with its unstripped twin.
    """
    return clone_with_weights(model, lambda layer: _strip_wrapper(layer) if is_learnable_layer(layer) else None,
                              "bake_weights")

def _wrapper_stats(layer):
    """Weight statistics of a TF-MOT quantize wrapper as deployed (see tfsafe.metrics)."""
    inner = layer.layer
    if not is_learnable_layer(layer):
        # TF-MOT's own schemes: quantized weights at the quantizer's bit width, ranges as codebooks.
        quantized = {id(w): getattr(q, "num_bits", 32) for w, q, _ in layer._weight_vars}
        stats = []
        for w in layer.weights:
            name = short_name(w)
            if id(w) in quantized:
                stats.append(WeightStat(inner.name, name, w.numpy(), bits=quantized[id(w)]))
            elif name == "optimizer_step" or not w.dtype.is_floating:
                continue
            elif name.endswith(("_min", "_max")):
                stats.append(WeightStat(inner.name, name, w.numpy(), kind="codebook"))
            else:
                stats.append(WeightStat(inner.name, name, w.numpy()))
        return stats
    kernel = quantized_kernel(layer)
    b = storage_bits(channel_bits(layer))
    per_channel = kernel.reshape(-1, b.size)
    nonzeros = np.count_nonzero(per_channel, axis=0)
    bits = float((nonzeros * b).sum() / nonzeros.sum()) if nonzeros.sum() else 0.0
    stats = [WeightStat(inner.name, short_name(learnable_kernel(layer)), kernel, bits=bits, kind="kernel")]
    bias = quantized_bias(layer)
    if bias is not None:
        stats.append(WeightStat(inner.name, "bias", bias, kind="other"))
    live = int((b > 0).sum())
    stats.append(WeightStat(inner.name, "scale", shape=(live,), params=live, nonzeros=live, kind="codebook"))
    return stats



def _channel_source(layer):
    """Dead (zero-bit) channels of a learnable-bit wrapper for the channel-removal pass."""
    if not is_learnable_layer(layer):
        return None
    weights = {short_name(learnable_kernel(layer)): quantized_kernel(layer)}
    bias = quantized_bias(layer)
    if bias is not None:
        weights["bias"] = bias
    return layer.layer, weights, dead_channels(layer)


def _register():
    register_stripper(QuantizeWrapper, _strip_wrapper)
    register_channel_source(QuantizeWrapper, _channel_source, fixed_kernel=True)
    register_model_pass(remove_channels)
    register_weight_stats(QuantizeWrapper, _wrapper_stats)

_register()

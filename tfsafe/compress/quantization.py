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
exactly; see :mod:`tfsafe.compress.exact_int8` (``exact_int8_model``, ``to_int8_tflite``, also
importable from here).

Saved models load without ``quantize_scope``: the config, quantizers and constraint are
registered Keras serializables, and importing this module (``tfsafe.load_model`` does) also
registers TF-MOT's ``QuantizeWrapper`` / ``QuantizeWrapperV2`` as global custom objects.
"""

import math

import numpy as np
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import (
    QuantizeWrapper,
    QuantizeWrapperV2,
)

from tfsafe._keras import keras, tf, tfmot
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_weight_stats, short_name

__all__ = [
    "LearnableBitQuant", "ChannelGate", "BitRange", "LearnableBitQuantizeConfig", "WeightOnlyScheme",
    "quantize_learnable", "quantize_to_grid", "learnable_layers", "is_learnable_layer", "channel_bits",
    "storage_bits", "fit_exponents", "restore_channels", "dead_channels", "learned_size",
    "quantized_kernel", "quantized_bias", "bit_size_terms", "bake_weights",
    "SUPPORTED_LAYERS",
]

SUPPORTED_LAYERS = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)
_KERNEL_ATTR = {keras.layers.Conv2D: "kernel", keras.layers.Dense: "kernel",
                keras.layers.DepthwiseConv2D: "depthwise_kernel"}
# Per-channel axes of the kernel: (out,) for Conv2D/Dense, (in, depth_multiplier) for depthwise.
_CHANNEL_AXES = {keras.layers.Conv2D: 1, keras.layers.Dense: 1, keras.layers.DepthwiseConv2D: 2}
_INT8_MAX = 127.0

# Register TF-MOT's wrappers globally so saved models load without ``quantize_scope``.
keras.utils.get_custom_objects().update({"QuantizeWrapper": QuantizeWrapper, "QuantizeWrapperV2": QuantizeWrapperV2})


def quantize_to_grid(x, bits, exponent):
    """The self-compressing quantizer ``2^e * round(clamp(2^-e x, -2^(b-1), 2^(b-1) - 1))``.

    Rounding uses a straight-through estimator: ``x`` gets gradient 1 inside the clamp range,
    ``b`` gets gradient through the clamp bounds of clipped values and ``e`` through the scale.
    ``bits`` below zero count as zero, and zero bits give exactly zero.

    Args:
        x: tensor to quantize.
        bits: bit depth per channel, broadcastable to ``x`` (trailing axes).
        exponent: exponent per channel, same shape as ``bits``.

    Example:
        >>> float(quantize_to_grid(tf.constant(0.3), tf.constant(3.0), tf.constant(-2.0)))
        0.25
    """
    bits = tf.nn.relu(bits)
    log2 = math.log(2.0)
    half = tf.exp((bits - 1.0) * log2)  # 2^(b-1); exp has a cheaper gradient than pow
    y = tf.minimum(tf.maximum(x * tf.exp(-exponent * log2), -half), half - 1.0)
    y = y + tf.stop_gradient(tf.round(y) - y)
    return y * tf.exp(exponent * log2)


def _export_ranges(q, exponent, channel_axes):
    """Identity on the grid that tells the TFLite converter the per-channel scale ``2^e``."""
    scale = tf.pow(2.0, exponent)
    shape = tf.shape(q)
    channels = int(np.prod(q.shape[-channel_axes:]))
    flat = tf.reshape(q, tf.concat([shape[:-channel_axes], [channels]], axis=0))
    scale = tf.reshape(scale, [channels])
    codes = tf.abs(tf.round(flat / scale))
    kmax = tf.reduce_max(tf.reshape(codes, [-1, channels]), axis=0)
    # Levels beyond +-127 (only -128 at 8 bits) do not fit int8's narrow range: widen the range
    # for those channels and accept TFLite's rounding there.
    limit = tf.where(kmax <= _INT8_MAX, _INT8_MAX * scale, kmax * scale)
    limit = tf.maximum(limit, 1e-30)
    fq = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, -limit, limit, num_bits=8, narrow_range=True)
    return tf.reshape(fq, shape)


@keras.utils.register_keras_serializable(package="tfsafe")
class BitRange(keras.constraints.Constraint):
    """Keeps a bit-depth variable in ``[0, max_bits]`` after every optimizer step."""

    def __init__(self, max_bits=8.0):
        self.max_bits = max_bits

    def __call__(self, w):
        return tf.clip_by_value(w, 0.0, float(self.max_bits))

    def get_config(self):
        return {"max_bits": self.max_bits}


@keras.utils.register_keras_serializable(package="tfsafe")
class LearnableBitQuant(tfmot.quantization.keras.quantizers.Quantizer):
    """TF-MOT quantizer with a trainable bit depth and exponent per output channel.

    Builds two variables on the wrapping layer, ``<weight>_bits`` (constrained to
    ``[0, max_bits]``) and ``<weight>_exponent``, of shape ``kernel.shape[-channel_axes:]``,
    and applies :func:`quantize_to_grid`. In inference mode it adds a per-channel FakeQuant
    with range ``+-127 * 2^e`` (an identity on the grid) so int8 TFLite export keeps the
    learned integers exactly.

    Args:
        init_bits: initial bit depth of every channel (integer in [1, max_bits]).
        max_bits: upper bound of the bit depth (at most 8 keeps channels int8-exportable).
        channel_axes: how many trailing kernel axes index channels (1; 2 for DepthwiseConv2D).
        export_ranges: add the inference-mode FakeQuant (convolutions only: the TFLite converter
            rejects per-channel FakeQuant on Dense kernels, which it transposes).

    Example:
        >>> quantizer = LearnableBitQuant(init_bits=4)
        >>> quantizer.get_config()["init_bits"]
        4
    """

    def __init__(self, init_bits=8, max_bits=8, channel_axes=1, export_ranges=True):
        self.init_bits = init_bits
        self.max_bits = max_bits
        self.channel_axes = channel_axes
        self.export_ranges = export_ranges

    def build(self, tensor_shape, name, layer):
        shape = tuple(int(d) for d in tensor_shape[-self.channel_axes:])
        bits = layer.add_weight(
            name + "_bits", shape=shape, initializer=keras.initializers.Constant(float(self.init_bits)),
            constraint=BitRange(self.max_bits), trainable=True,
        )
        exponent = layer.add_weight(
            name + "_exponent", shape=shape, initializer=keras.initializers.Constant(-4.0), trainable=True,
        )
        return {"bits": bits, "exponent": exponent}

    def __call__(self, inputs, training, weights, **kwargs):
        q = quantize_to_grid(inputs, weights["bits"], weights["exponent"])
        if not training and self.export_ranges:
            q = _export_ranges(q, weights["exponent"], self.channel_axes)
        return q

    def get_config(self):
        return {"init_bits": self.init_bits, "max_bits": self.max_bits, "channel_axes": self.channel_axes,
                "export_ranges": self.export_ranges}

    def __eq__(self, other):
        return isinstance(other, LearnableBitQuant) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="tfsafe")
class ChannelGate(tfmot.quantization.keras.quantizers.Quantizer):
    """Zeroes the bias of channels whose learned bit depth is zero (shares the kernel's bits).

    A zero-bit channel then outputs exactly ``activation(0)``, which is what lets the channel
    be removed without changing the network's function. The bias itself stays float.
    """

    def build(self, tensor_shape, name, layer):
        for _, quantizer, variables in getattr(layer, "_weight_vars", []):
            if isinstance(quantizer, LearnableBitQuant):
                return {"bits": variables["bits"]}
        raise UnsupportedModelError(
            f"Layer '{layer.name}': ChannelGate needs the kernel's LearnableBitQuant to be built first; "
            "list the kernel before the bias in the QuantizeConfig."
        )

    def __call__(self, inputs, training, weights, **kwargs):
        alive = tf.cast(tf.reshape(weights["bits"], [-1]) > 0.0, inputs.dtype)
        return inputs * alive

    def get_config(self):
        return {}

    def __eq__(self, other):
        return isinstance(other, ChannelGate)

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="tfsafe")
class LearnableBitQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Weight-only QuantizeConfig: learnable bits on the kernel, a zero-bit gate on the bias.

    Activations are not quantized (no activation or output quantizers).

    Args:
        init_bits: initial bit depth per channel.
        max_bits: upper bound of the bit depth.
        channel_axes: 1 for Conv2D/Dense, 2 for DepthwiseConv2D.
        kernel_attr: attribute of the kernel on the wrapped layer.
        export_ranges: see :class:`LearnableBitQuant` (False for Dense).

    Example:
        >>> config = LearnableBitQuantizeConfig(init_bits=6)
        >>> config.get_activations_and_quantizers(None)
        []
    """

    def __init__(self, init_bits=8, max_bits=8, channel_axes=1, kernel_attr="kernel", export_ranges=True):
        self.init_bits = init_bits
        self.max_bits = max_bits
        self.channel_axes = channel_axes
        self.kernel_attr = kernel_attr
        self.export_ranges = export_ranges

    def _quantizer(self):
        return LearnableBitQuant(self.init_bits, self.max_bits, self.channel_axes, self.export_ranges)

    def get_weights_and_quantizers(self, layer):
        pairs = [(getattr(layer, self.kernel_attr), self._quantizer())]
        if getattr(layer, "use_bias", False) and layer.bias is not None:
            pairs.append((layer.bias, ChannelGate()))
        return pairs

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.kernel_attr, quantize_weights[0])
        if len(quantize_weights) > 1:
            layer.bias = quantize_weights[1]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"init_bits": self.init_bits, "max_bits": self.max_bits, "channel_axes": self.channel_axes,
                "kernel_attr": self.kernel_attr, "export_ranges": self.export_ranges}


class _NoLayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _NothingRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """Supports no layer: only explicitly annotated layers get quantized."""

    def get_quantize_config(self, layer):
        return None

    def supports(self, layer):
        return False


class WeightOnlyScheme(tfmot.quantization.keras.QuantizeScheme):
    """A ``QuantizeScheme`` that quantizes only the annotated layers' weights.

    TF-MOT's default 8-bit scheme would also add input and output activation quantizers and
    fold Conv+BatchNorm patterns; learnable-bit self-compression learns weight bits only.
    """

    def get_layout_transformer(self):
        return _NoLayoutTransform()

    def get_quantize_registry(self):
        return _NothingRegistry()


def _supported_type(layer):
    # Exact types: Conv2DTranspose subclasses Conv2D but its kernel is (h, w, out, in).
    return type(layer) if type(layer) in _KERNEL_ATTR else None


def _check_bits(value, name, low=1, high=16):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be an integer number of bits, got {value!r}.")
    if not np.isfinite(value) or float(value) != int(value):
        raise InputError(f"{name} must be a whole number of bits, got {value!r} (use e.g. 8).")
    if not low <= int(value) <= high:
        raise InputError(f"{name} must be between {low} and {high} bits, got {value!r}.")
    return int(value)


def is_learnable_layer(layer):
    """True for a TF-MOT quantize wrapper that uses :class:`LearnableBitQuantizeConfig`."""
    return isinstance(layer, QuantizeWrapper) and isinstance(layer.quantize_config, LearnableBitQuantizeConfig)


def learnable_layers(model):
    """The learnable-bit quantize wrappers of ``model``, in layer order."""
    return [layer for layer in model.layers if is_learnable_layer(layer)]


def _quant_vars(layer):
    for _, quantizer, variables in layer._weight_vars:
        if isinstance(quantizer, LearnableBitQuant):
            return variables
    raise UnsupportedModelError(f"Layer '{layer.name}' has no LearnableBitQuant variables.")


def _kernel(layer):
    # The wrapped layer's kernel attribute holds the quantized tensor after a call; the
    # variable itself is kept in the wrapper's weight list.
    for weight, quantizer, _ in layer._weight_vars:
        if isinstance(quantizer, LearnableBitQuant):
            return weight
    raise UnsupportedModelError(f"Layer '{layer.name}' has no learnable-bit kernel.")


def _bias(layer):
    for weight, quantizer, _ in layer._weight_vars:
        if isinstance(quantizer, ChannelGate):
            return weight
    return None


def fit_exponents(layer, bits=None, channels=None):
    """Set ``e`` so the grid spans each channel: ``2^e * (2^(b-1) - 1) = max|w|``.

    Args:
        layer: a learnable-bit wrapper.
        bits: bit depth to fit for (defaults to the current bits, at least 1).
        channels: boolean mask over channels to update (default: all).
    """
    variables = _quant_vars(layer)
    kernel = _kernel(layer).numpy()
    axes = layer.quantize_config.channel_axes
    reduce_axes = tuple(range(kernel.ndim - axes))
    max_abs = np.abs(kernel).max(axis=reduce_axes)
    b = variables["bits"].numpy() if bits is None else np.broadcast_to(np.float32(bits), max_abs.shape)
    top = np.maximum(np.power(2.0, np.maximum(b, 1.0) - 1.0) - 1.0, 1.0)
    exponent = np.log2(np.maximum(max_abs, 1e-12) / top).astype(np.float32)
    if channels is not None:
        exponent = np.where(channels, exponent, variables["exponent"].numpy())
    variables["exponent"].assign(exponent)


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
    from tfsafe.validation import check_model  # noqa: PLC0415

    max_bits = _check_bits(max_bits, "max_bits")
    init_bits = _check_bits(init_bits, "init_bits", 1, max_bits)
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
            if _supported_type(by_name[n]) is None:
                raise UnsupportedModelError(
                    f"Layer '{n}' ({type(by_name[n]).__name__}) cannot be quantized with learnable bits; "
                    "supported: Conv2D, Dense, DepthwiseConv2D."
                )
    else:
        names = [layer.name for layer in model.layers if _supported_type(layer) is not None]
    if not names:
        raise UnsupportedModelError(
            f"'{model.name}' has no Conv2D, Dense or DepthwiseConv2D layer to quantize."
        )
    targets = set(names)

    def annotate(layer):
        kind = _supported_type(layer)
        if layer.name not in targets or kind is None:
            return layer
        config = LearnableBitQuantizeConfig(
            init_bits, max_bits, _CHANNEL_AXES[kind], _KERNEL_ATTR[kind], export_ranges=kind is not keras.layers.Dense
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


def bit_size_terms(model):
    """``([(bits variable, weights per channel), ...], total kernel weights)`` for the size penalty Q."""
    terms, total = [], 0
    for layer in learnable_layers(model):
        bits = _quant_vars(layer)["bits"]
        weights = _kernel(layer).shape.num_elements()
        terms.append((bits, float(weights // bits.shape.num_elements())))
        total += weights
    if not terms:
        raise UnsupportedModelError("The model has no learnable-bit layers; wrap it with quantize_learnable first.")
    return terms, float(total)


def channel_bits(layer):
    """The learned bit depth of each output channel of a learnable-bit wrapper (flat array)."""
    return np.maximum(_quant_vars(layer)["bits"].numpy().reshape(-1), 0.0)


def storage_bits(bits):
    """Bits a two's complement integer needs to hold every level of ``q`` at bit depth ``bits``.

    The levels are ``round(-2^(b-1)) .. round(2^(b-1) - 1)``; a fractional ``b`` may need fewer
    than ``ceil(b)`` bits (b = 2.1 gives levels -2..1: 2 bits). Zero bits stay zero.
    """
    b = np.maximum(np.asarray(bits, np.float64), 0.0)
    low = -np.round(-np.power(2.0, b - 1.0))  # np.round is half-to-even, like tf.round
    high = np.round(np.power(2.0, b - 1.0) - 1.0)
    span = np.maximum(-low, high + 1.0)
    out = np.where(span > 0.5, np.ceil(np.log2(np.maximum(span, 1.0))) + 1.0, 0.0)
    return np.where((low == 0) & (high == 0), 0.0, out)


def dead_channels(layer):
    """Boolean mask of the zero-bit output channels of a learnable-bit wrapper (flat)."""
    return channel_bits(layer) <= 0.0


def restore_channels(layer, channels, bits=2.0):
    """Bring zero-bit channels back: set their bit depth to ``bits`` and refit their exponent.

    The latent float weights of a zero-bit channel stop training (every value is clamped), so
    a restored channel starts from the weights it had when it died.

    Args:
        layer: a learnable-bit wrapper.
        channels: flat indices of the channels to restore.
        bits: the small positive bit depth they restart with.
    """
    if not bits > 0:
        raise InputError(f"restore bits must be positive, got {bits}.")
    variables = _quant_vars(layer)
    shape = variables["bits"].shape
    values = variables["bits"].numpy().reshape(-1)
    mask = np.zeros(values.shape, bool)
    mask[np.asarray(channels, np.int64)] = True
    values[mask] = float(bits)
    variables["bits"].assign(values.reshape(shape))
    fit_exponents(layer, bits=bits, channels=mask.reshape(shape))


def quantized_kernel(layer):
    """The kernel of a learnable-bit wrapper on its learned grid (numpy)."""
    variables = _quant_vars(layer)
    return quantize_to_grid(_kernel(layer), variables["bits"], variables["exponent"]).numpy()


def quantized_bias(layer):
    """The bias after the zero-bit gate (numpy), or None."""
    bias = _bias(layer)
    if bias is None:
        return None
    return bias.numpy() * (~dead_channels(layer)).astype(np.float32)


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
    from tfsafe.compress.channel_removal import removal_plan  # noqa: PLC0415

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
    stats = [WeightStat(inner.name, short_name(_kernel(layer)), kernel, bits=bits, kind="kernel")]
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
    weights = {short_name(_kernel(layer)): quantized_kernel(layer)}
    bias = quantized_bias(layer)
    if bias is not None:
        weights["bias"] = bias
    return layer.layer, weights, dead_channels(layer)


def _register():
    from tfsafe.compress.channel_removal import register_channel_source, remove_channels  # noqa: PLC0415
    from tfsafe.compress.strip import register_model_pass, register_stripper  # noqa: PLC0415

    register_stripper(QuantizeWrapper, _strip_wrapper)
    register_channel_source(QuantizeWrapper, _channel_source, fixed_kernel=True)
    register_model_pass(remove_channels)
    register_weight_stats(QuantizeWrapper, _wrapper_stats)


_register()


def __getattr__(name):
    # Exact int8 export lives in tfsafe.compress.exact_int8 (which imports this module).
    if name in ("exact_int8_model", "to_int8_tflite"):
        from tfsafe.compress import exact_int8  # noqa: PLC0415

        return getattr(exact_int8, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

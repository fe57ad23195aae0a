"""Learnable bit depth per output channel: the TF-MOT quantizers, config and scheme.

:class:`LearnableBitQuant` (a ``tfmot`` Quantizer) quantizes a kernel to
``2^e * round(clamp(2^-e w, -2^(b-1), 2^(b-1) - 1))`` per channel with a straight-through
estimator; :class:`ChannelGate` gates the bias of zero-bit channels;
:class:`LearnableBitQuantizeConfig` and :class:`WeightOnlyScheme` apply them with TF-MOT's
``quantize_apply`` (weights only). See :mod:`tfsafe.compress.quantization` for the method.
"""

import math

import numpy as np
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import (
    QuantizeWrapper,
    QuantizeWrapperV2,
)

from tfsafe._keras import keras, tf, tfmot
from tfsafe.errors import UnsupportedModelError

__all__ = ["LearnableBitQuant", "ChannelGate", "BitRange", "LearnableBitQuantizeConfig", "WeightOnlyScheme",
           "quantize_to_grid", "SUPPORTED_LAYERS", "KERNEL_ATTR", "CHANNEL_AXES"]

SUPPORTED_LAYERS = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)

KERNEL_ATTR = {keras.layers.Conv2D: "kernel", keras.layers.Dense: "kernel",
                keras.layers.DepthwiseConv2D: "depthwise_kernel"}
# Per-channel axes of the kernel: (out,) for Conv2D/Dense, (in, depth_multiplier) for depthwise.

CHANNEL_AXES = {keras.layers.Conv2D: 1, keras.layers.Dense: 1, keras.layers.DepthwiseConv2D: 2}
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
        max_bits: the bit-depth ceiling (the constraint keeps the variable in ``[0, max_bits]``
            and the forward pass clamps to it as well, so a channel never needs more than
            ``max_bits`` storage bits). At most 8 keeps every channel int8-exportable; 4 makes
            every channel fit the INT4 storage of ``to_tflite(..., mode="learned")``.
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
        bits = tf.minimum(weights["bits"], float(self.max_bits))  # ties pass the gradient to the bits
        q = quantize_to_grid(inputs, bits, weights["exponent"])
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

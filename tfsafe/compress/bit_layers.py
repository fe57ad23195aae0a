"""Per-layer queries and edits of learnable-bit wrappers: bits, exponents, dead channels, grids.

:mod:`tfsafe.compress.channel_removal` and :mod:`tfsafe.compress.exact_int8` read layers
through these; :mod:`tfsafe.compress.quantization` wraps models.
"""

import numpy as np
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tfsafe.compress.bit_quantizers import (
    KERNEL_ATTR,
    ChannelGate,
    LearnableBitQuant,
    LearnableBitQuantizeConfig,
    quantize_to_grid,
)
from tfsafe.errors import InputError, UnsupportedModelError

__all__ = ["supported_type", "check_bit_depth", "is_learnable_layer", "learnable_layers", "quant_variables",
           "learnable_kernel", "learnable_bias", "fit_exponents", "bit_size_terms", "channel_bits", "storage_bits",
           "dead_channels", "restore_channels", "quantized_kernel", "quantized_bias"]

def supported_type(layer):
    """The layer's type if learnable bits support it exactly (Conv2D, Dense, DepthwiseConv2D), else None."""
    # Exact types: Conv2DTranspose subclasses Conv2D but its kernel is (h, w, out, in).
    return type(layer) if type(layer) in KERNEL_ATTR else None

def check_bit_depth(value, name, low=1, high=16):
    """``value`` as a whole number of bits in ``[low, high]``, else :class:`InputError`."""
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

def quant_variables(layer):
    """``{"bits": ..., "exponent": ...}``: the LearnableBitQuant variables of a learnable-bit wrapper."""
    for _, quantizer, variables in layer._weight_vars:
        if isinstance(quantizer, LearnableBitQuant):
            return variables
    raise UnsupportedModelError(f"Layer '{layer.name}' has no LearnableBitQuant variables.")

def learnable_kernel(layer):
    """The float kernel variable a learnable-bit wrapper quantizes."""
    # The wrapped layer's kernel attribute holds the quantized tensor after a call; the
    # variable itself is kept in the wrapper's weight list.
    for weight, quantizer, _ in layer._weight_vars:
        if isinstance(quantizer, LearnableBitQuant):
            return weight
    raise UnsupportedModelError(f"Layer '{layer.name}' has no learnable-bit kernel.")

def learnable_bias(layer):
    """The bias variable a learnable-bit wrapper gates (``None`` without a bias)."""
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
    variables = quant_variables(layer)
    kernel = learnable_kernel(layer).numpy()
    axes = layer.quantize_config.channel_axes
    reduce_axes = tuple(range(kernel.ndim - axes))
    max_abs = np.abs(kernel).max(axis=reduce_axes)
    b = variables["bits"].numpy() if bits is None else np.broadcast_to(np.float32(bits), max_abs.shape)
    top = np.maximum(np.power(2.0, np.maximum(b, 1.0) - 1.0) - 1.0, 1.0)
    exponent = np.log2(np.maximum(max_abs, 1e-12) / top).astype(np.float32)
    if channels is not None:
        exponent = np.where(channels, exponent, variables["exponent"].numpy())
    variables["exponent"].assign(exponent)

def bit_size_terms(model):
    """``([(bits variable, weights per channel), ...], total kernel weights)`` for the size penalty Q."""
    terms, total = [], 0
    for layer in learnable_layers(model):
        bits = quant_variables(layer)["bits"]
        weights = learnable_kernel(layer).shape.num_elements()
        terms.append((bits, float(weights // bits.shape.num_elements())))
        total += weights
    if not terms:
        raise UnsupportedModelError("The model has no learnable-bit layers; wrap it with quantize_learnable first.")
    return terms, float(total)

def channel_bits(layer):
    """The learned bit depth of each output channel of a learnable-bit wrapper (flat array, in ``[0, max_bits]``)."""
    return np.clip(quant_variables(layer)["bits"].numpy().reshape(-1), 0.0, float(layer.quantize_config.max_bits))

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
        bits: the small positive bit depth they restart with, capped at the layer's ``max_bits``
            (the ceiling holds through restorations, so every channel keeps fitting the storage
            width the ceiling was chosen for).
    """
    if not bits > 0:
        raise InputError(f"restore bits must be positive, got {bits}.")
    bits = min(float(bits), float(layer.quantize_config.max_bits))
    variables = quant_variables(layer)
    shape = variables["bits"].shape
    values = variables["bits"].numpy().reshape(-1)
    mask = np.zeros(values.shape, bool)
    mask[np.asarray(channels, np.int64)] = True
    values[mask] = float(bits)
    variables["bits"].assign(values.reshape(shape))
    fit_exponents(layer, bits=bits, channels=mask.reshape(shape))

def quantized_kernel(layer):
    """The kernel of a learnable-bit wrapper on its learned grid (numpy)."""
    variables = quant_variables(layer)
    bits = np.minimum(variables["bits"].numpy(), np.float32(layer.quantize_config.max_bits))  # as the quantizer
    return quantize_to_grid(learnable_kernel(layer), bits, variables["exponent"]).numpy()

def quantized_bias(layer):
    """The bias after the zero-bit gate (numpy), or None."""
    bias = learnable_bias(layer)
    if bias is None:
        return None
    return bias.numpy() * (~dead_channels(layer)).astype(np.float32)

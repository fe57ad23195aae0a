"""The factorized layers: ``W = (B + I) A + C`` (ATMC) and ``W = U V`` (ALR), Dense and Conv2D.

See :mod:`tfsafe.compress.factorization` for what they are for, the model surgery that
makes them (:func:`~tfsafe.compress.factorization.factorize`,
:func:`~tfsafe.compress.factorization.low_rank`) and how they are stripped and counted.
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError

__all__ = ["MatrixLayer", "FactorizedDense", "FactorizedConv2D", "LowRankDense", "LowRankConv2D", "check_bits",
           "check_rank", "QUANTIZABLE_BITS"]

QUANTIZABLE_BITS = tuple(range(1, 9)) + (32,)


def check_bits(bits):
    """Return ``bits`` as int after checking it is 1..8 (k-means codebook) or 32 (float)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in QUANTIZABLE_BITS:
        raise InputError(
            f"bits must be an integer in 1..8 (a k-means codebook of 2^bits values plus zero) or 32 "
            f"(unquantized float32), got {bits!r}."
        )
    return int(bits)


@keras.utils.register_keras_serializable(package="tfsafe")
class MatrixLayer(keras.layers.Layer):
    """Base of the factorized layers: builds the factors, turns ``matrix()`` into a kernel, applies Dense/Conv."""

    kernel_size = None  # Conv subclasses set it in __init__.

    def _common_init(self, activation, use_bias, kernel_initializer, bias_initializer):
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _common_config(self):
        config = super().get_config()
        config.update({
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        })
        return config

    @property
    def out_dim(self):
        return self.units if self.kernel_size is None else self.filters

    def kernel_shape(self, in_channels):
        if self.kernel_size is None:
            return (in_channels, self.units)
        return tuple(self.kernel_size) + (in_channels, self.filters)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise InputError(f"Layer '{self.name}' needs a known last input dimension to build.")
        self.in_channels = int(in_channels)
        self.fan_in = int(np.prod(self.kernel_shape(self.in_channels)[:-1]))
        kernel_shape = self.kernel_shape(self.in_channels)
        init = self.kernel_initializer

        def matrix_init(shape, dtype=None):
            # Draw as the equivalent plain kernel so fan-in/fan-out scaling matches Dense/Conv2D.
            return _kernel_to_matrix(init(kernel_shape, dtype=dtype), self.out_dim)

        self._build_factors(matrix_init)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight("bias", (self.out_dim,), initializer=self.bias_initializer)
        super().build(input_shape)

    def matrix(self):
        """The effective weight matrix ``W`` (out x fan_in) as a tensor."""
        raise NotImplementedError

    def kernel(self):
        """The effective kernel in the plain layer's layout ((in, out) or (kh, kw, in, out))."""
        frozen = getattr(self, "_frozen_kernel", None)
        if frozen is not None:
            return frozen
        return tf.reshape(tf.transpose(self.matrix()), self.kernel_shape(self.in_channels))

    def call(self, inputs):
        kernel = self.kernel()
        if self.kernel_size is None:
            if inputs.shape.rank == 2:
                outputs = tf.matmul(inputs, kernel)
            else:
                outputs = tf.tensordot(inputs, kernel, [[inputs.shape.rank - 1], [0]])
                outputs.set_shape(inputs.shape[:-1].concatenate([self.units]))
        else:
            outputs = tf.nn.conv2d(inputs, kernel, strides=(1,) + tuple(self.strides) + (1,),
                                   padding=self.padding.upper(), dilations=(1,) + tuple(self.dilation_rate) + (1,))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return self.plain_layer().compute_output_shape(input_shape)

    def plain_layer(self):
        """A new, unbuilt ``Dense`` / ``Conv2D`` computing the same function."""
        common = {"activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
                  "name": self.name, "dtype": self.dtype}
        if self.kernel_size is None:
            return keras.layers.Dense(self.units, **common)
        return keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
                                   dilation_rate=self.dilation_rate, **common)

    def merged_weights(self):
        """``[kernel, bias]`` (or ``[kernel]``) of the equivalent plain layer, as numpy arrays."""
        weights = [self.kernel().numpy()]
        if self.use_bias:
            weights.append(self.bias.numpy())
        return weights

    def factors(self):
        """The factor variables ``[(name, variable), ...]`` (what pruning and quantization act on)."""
        raise NotImplementedError


class _SparsePlusLowRank(MatrixLayer):
    """``W = (B + I) A + C``: A carries the weights, B mixes output rows, C is a sparse correction."""

    def _build_factors(self, matrix_init):
        out = self.out_dim
        self.A = self.add_weight("A", (out, self.fan_in), initializer=matrix_init)
        self.B = self.add_weight("B", (out, out), initializer="zeros")
        self.C = self.add_weight("C", (out, self.fan_in), initializer="zeros")

    def matrix(self):
        return self.A + tf.matmul(self.B, self.A) + self.C

    def factors(self):
        return [("A", self.A), ("B", self.B), ("C", self.C)]


class _LowRank(MatrixLayer):
    """``W = U V`` with ``U`` (out x rank) and ``V`` (rank x fan_in)."""

    def _build_factors(self, matrix_init):
        del matrix_init
        rank = self.rank
        if rank > min(self.out_dim, self.fan_in):
            raise InputError(f"Layer '{self.name}': rank {rank} exceeds min(out={self.out_dim}, "
                             f"fan_in={self.fan_in}); use a rank of at most {min(self.out_dim, self.fan_in)}.")
        # low_rank() overwrites both with SVD factors; a fresh layer gets U V of unit-ish scale.
        self.U = self.add_weight("U", (self.out_dim, rank), initializer="orthogonal")
        self.V = self.add_weight("V", (rank, self.fan_in), initializer=self.kernel_initializer)

    def matrix(self):
        return tf.matmul(self.U, self.V)

    def factors(self):
        return [("U", self.U), ("V", self.V)]


def check_rank(rank):
    """``rank`` as a positive int, else :class:`InputError`."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}.")
    return int(rank)


@keras.utils.register_keras_serializable(package="tfsafe")
class FactorizedDense(_SparsePlusLowRank):
    """Dense layer with kernel ``W^T``, ``W = (B + I) A + C`` (ATMC).

    Args:
        units: Output size.
        activation, use_bias, kernel_initializer, bias_initializer: as in ``keras.layers.Dense``
            (the initializer draws ``A``; ``B`` and ``C`` start at zero).
        bits: Bits per stored non-zero of each factor (1..8 for a k-means codebook, 32 for
            float); used for size accounting, set by ATMC's final projection.

    Example:
        >>> layer = FactorizedDense(3)
        >>> layer(tf.ones((2, 4))).shape
        TensorShape([2, 3])
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", bits=32, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.bits = check_bits(bits)
        self._common_init(activation, use_bias, kernel_initializer, bias_initializer)

    def get_config(self):
        config = self._common_config()
        config.update({"units": self.units, "bits": self.bits})
        return config


@keras.utils.register_keras_serializable(package="tfsafe")
class FactorizedConv2D(_SparsePlusLowRank):
    """Conv2D over the flattened kernel matrix ``W`` (out x kh*kw*in), ``W = (B + I) A + C`` (ATMC).

    Args:
        filters, kernel_size, strides, padding, dilation_rate: as in ``keras.layers.Conv2D``
            (channels_last, one group).
        activation, use_bias, kernel_initializer, bias_initializer, bits: as in
            :class:`FactorizedDense`.

    Example:
        >>> layer = FactorizedConv2D(4, 3, padding="same")
        >>> layer(tf.ones((1, 8, 8, 2))).shape
        TensorShape([1, 8, 8, 4])
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 bits=32, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _check_padding(padding)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.bits = check_bits(bits)
        self._common_init(activation, use_bias, kernel_initializer, bias_initializer)

    def get_config(self):
        config = self._common_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
                       "padding": self.padding, "dilation_rate": self.dilation_rate, "bits": self.bits})
        return config


@keras.utils.register_keras_serializable(package="tfsafe")
class LowRankDense(_LowRank):
    """Dense layer with kernel ``(U V)^T`` of rank ``rank`` (the ALR baseline).

    Example:
        >>> layer = LowRankDense(6, rank=2)
        >>> layer(tf.ones((2, 5))).shape
        TensorShape([2, 6])
    """

    def __init__(self, units, rank, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.rank = check_rank(rank)
        self._common_init(activation, use_bias, kernel_initializer, bias_initializer)

    def get_config(self):
        config = self._common_config()
        config.update({"units": self.units, "rank": self.rank})
        return config


@keras.utils.register_keras_serializable(package="tfsafe")
class LowRankConv2D(_LowRank):
    """Conv2D whose flattened kernel matrix is ``U V`` of rank ``rank`` (the ALR baseline).

    Example:
        >>> layer = LowRankConv2D(4, 3, rank=2)
        >>> layer(tf.ones((1, 6, 6, 3))).shape
        TensorShape([1, 4, 4, 4])
    """

    def __init__(self, filters, kernel_size, rank, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.rank = check_rank(rank)
        self.strides = _pair(strides, "strides")
        self.padding = _check_padding(padding)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self._common_init(activation, use_bias, kernel_initializer, bias_initializer)

    def get_config(self):
        config = self._common_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "rank": self.rank,
                       "strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate})
        return config


def _pair(value, name):
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
        raise InputError(f"{name} must be a positive int or a pair of positive ints, got {value!r}.")
    return tuple(int(v) for v in values)


def _check_padding(padding):
    padding = str(padding).lower()
    if padding not in ("valid", "same"):
        raise InputError(f"padding must be 'valid' or 'same', got {padding!r}.")
    return padding


def _kernel_to_matrix(kernel, out):
    return tf.transpose(tf.reshape(kernel, (-1, out)))

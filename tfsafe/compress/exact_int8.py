"""Int8 TFLite files that store the learned integers of a learnable-bit model exactly.

TFLite's per-channel weight scale is ``max|w| / 127``: a channel on the learned grid
``2^e * k`` comes back exactly only when ``max|k|`` divides ``127 * k`` for every level (ternary
channels, or ``max|k| = 127``); otherwise each int8 weight lands within half a learned step of
``k``. The learnable-bit quantizer of a convolution ends, in inference mode, with a per-channel
FakeQuant of range ``+-127 * 2^e`` (an identity on the grid); :func:`to_int8_tflite` converts
with the option that makes TFLite keep FakeQuant ranges, so every channel whose levels fit in
[-127, 127] is stored as ``k`` with scale ``2^e``. :func:`exact_int8_model` gives the stripped,
smaller model the same property (Dense layers run as 1x1 convolutions, because the converter
rejects per-channel ranges on fully-connected kernels).
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress import quantization as q
from tfsafe.compress.channel_removal import removal_plan
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError

__all__ = ["exact_int8_model", "to_int8_tflite"]


def exact_int8_model(model):
    """Strip ``model`` (channels removed) and re-wrap it so int8 TFLite keeps the learned grid.

    The stripped plain model stores the learned values as float32; converting it directly
    lets TFLite choose ``max|w| / 127`` per channel, which reproduces ``2^e * k`` only for
    ternary channels or when ``max|k| = 127``. This function re-applies
    :func:`quantize_learnable` to the stripped model with the learned ``b`` and ``e`` of the
    kept channels, so the inference-mode FakeQuant ranges make the converter use the scale
    ``2^e`` and store ``k`` itself (convert with :func:`to_int8_tflite`). Dense layers on
    vectors become ``Reshape -> 1x1 Conv2D -> Reshape`` (same function), because the converter
    rejects per-channel ranges on fully-connected kernels. Outputs equal the stripped model's.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> from tfsafe.compress.quantization import quantize_learnable, learnable_layers
        >>> exportable = exact_int8_model(quantize_learnable(small_cnn(), init_bits=4))
        >>> len(learnable_layers(exportable))
        4
    """

    plan = removal_plan(model)
    sources = {layer.layer.name: layer for layer in q.learnable_layers(model)}
    if not sources:
        raise UnsupportedModelError(f"'{model.name}' has no learnable-bit layers; use quantize_learnable first.")
    stripped = _dense_as_conv(strip(model), set(sources))
    max_bits = max(layer.quantize_config.max_bits for layer in sources.values())
    requant = q.quantize_learnable(stripped, init_bits=1, max_bits=max_bits, layers=list(sources))
    for layer in q.learnable_layers(requant):
        source = sources[layer.layer.name]
        src_vars, dst_vars = q.quant_variables(source), q.quant_variables(layer)
        keep = plan.output_keep.get(source.layer.name)
        in_keep = plan.input_keep.get(source.layer.name)
        for key in ("bits", "exponent"):
            values = src_vars[key].numpy()
            if source.quantize_config.channel_axes == 2 and in_keep is not None:
                values = values[in_keep]
            elif source.quantize_config.channel_axes == 1 and keep is not None:
                values = values[..., keep]
            dst_vars[key].assign(values.reshape(dst_vars[key].shape))
    return requant


def _dense_as_conv(model, names):
    """Functional copy of ``model`` whose named Dense layers on vectors run as 1x1 convolutions."""
    if not getattr(model, "_is_graph_network", False):
        return model
    tensors = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if node.is_input:
                source = tf.nest.flatten(node.outputs)[0]
                tensors[id(source)] = keras.Input(source.shape[1:], dtype=source.dtype, name=layer.name)
                continue
            args, kwargs = tf.nest.map_structure(lambda t: tensors.get(id(t), t), (node.call_args, node.call_kwargs))
            inputs = args[0]
            if isinstance(layer, keras.layers.Dense) and layer.name in names and inputs.shape.rank == 2:
                kernel = layer.kernel.numpy()
                conv = keras.layers.Conv2D(layer.units, 1, activation=layer.activation, use_bias=layer.use_bias,
                                           name=layer.name)
                x = keras.layers.Reshape((1, 1, kernel.shape[0]), name=f"{layer.name}_to_1x1")(inputs)
                x = conv(x)
                outputs = keras.layers.Reshape((layer.units,), name=f"{layer.name}_from_1x1")(x)
                bias = [layer.bias.numpy()] if layer.use_bias else []
                conv.set_weights([kernel.reshape((1, 1) + kernel.shape)] + bias)
            else:
                outputs = layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                tensors[id(old)] = new
    outs = [tensors[id(t)] for t in model.outputs]
    ins = [tensors[id(t)] for t in model.inputs]
    return keras.Model(ins[0] if len(ins) == 1 else ins, outs[0] if len(outs) == 1 else outs, name=model.name)


def to_int8_tflite(model, representative_x, samples=100, int8_io=True, batch_size=1):
    """Full-integer int8 TFLite bytes of ``model``, reading FakeQuant weight ranges as given.

    With a model from :func:`exact_int8_model`, every channel's int8 weights are the learned
    integers ``k`` and its scale is ``2^e``. The converter option that makes TFLite keep the
    FakeQuant ranges instead of re-deriving them from the weights is
    ``_experimental_low_bit_qat``; activations are calibrated on ``representative_x``.

    Args:
        model: a tf_keras model.
        representative_x: inputs for activation calibration.
        samples: how many of them to use.
        int8_io: int8 input and output tensors (otherwise float32 with (de)quantize ops).
        batch_size: the fixed batch size of the converted model (None: dynamic).
    """
    x = np.asarray(representative_x, np.float32)[:samples]
    if x.ndim == 0 or not len(x):
        raise InputError("representative_x must hold at least one example.")
    # A concrete function converts much faster than from_keras_model, which first exports every
    # layer of the wrapped model to a SavedModel.
    spec = tf.TensorSpec((batch_size,) + x.shape[1:], tf.float32)
    concrete = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    step = batch_size or 1
    converter.representative_dataset = lambda: ([x[i : i + step]] for i in range(0, len(x) - step + 1, step))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_low_bit_qat = True
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()

"""Sub-8-bit weights in a ``.tflite`` file, written by Google's ai-edge-quantizer.

:func:`quantize_low_bit` converts a plain Keras model to a float32 ``.tflite`` and hands it to
``ai_edge_quantizer`` (maintained with LiteRT) with a per-op recipe; ``to_tflite(...,
mode="int4" | "learned")`` in :mod:`tflite_export.convert` then checks, verifies and writes it.
Both modes write the same combination, which LiteRT 2.x runs on CPU (XNNPack delegate on):

- **static INT4 / INT8 weights, INT8 activations**: ``CONV_2D`` and ``FULLY_CONNECTED``
  weights at 4 bits (per output channel, symmetric) where the plan says 4, every other
  supported op (and the layers planned at 8 bits) ai-edge-quantizer's ``static_wi8_ai8``
  (int8 per-channel weights); activations int8 from the calibration data; int8 input and
  output tensors (``integer_io=False`` is refused); each activation range is the min / max over
  the whole calibration set, as the TFLite converter's (ai-edge-quantizer's own moving average
  of per-example ranges clips the extremes). ai-edge-quantizer 0.10.0 has INT4 weight
  kernels for ``CONV_2D`` and ``FULLY_CONNECTED`` only (its ``static_wi4_ai8`` policy), so a
  depthwise or transposed convolution cannot be stored at 4 bits.

The two modes differ in the plan:

- ``"int4"``: every ``Conv2D`` / ``Dense`` kernel at 4 bits. The kernel is first put on the
  int4 grid in Keras (per output channel ``s = max|w| / 7``, ``w_q = s * round(w / s)``), and
  the file stores exactly those values (the quantizer gets ``+-7 s`` as the weight range), so
  the Keras model that holds those exact weights is :attr:`LowBitExport.reference`, the model
  parity is checked against. Any other layer with a kernel (DepthwiseConv2D,
  Conv2DTranspose, ...) raises one line naming it: int4 means every kernel at 4 bits.
- ``"learned"``: each kernel at the storage its learned quantization needs. The per-channel
  grid the weights sit on is read off the values (self-compression's ``2^e * k`` with integer
  ``k``): a layer whose every channel needs at most 4 bits (``k`` in ``[-8, 7]``) is stored at 4
  bits, exactly (range ``+-7 * step``; INT4 uses all of ``[-8, 7]``); a layer on a wider grid at 8
  bits, exactly when ``k`` fits ``[-127, 127]`` (ai-edge-quantizer stores int8 weights in the
  narrow range TFLite's int8 kernels assume, so a channel that uses ``-128`` has that level
  clipped by one step: ``exact`` is then false and ``max_weight_error`` says by how much); an
  ATMC layer whose k-means codebook has at most 16 non-zero levels (known from the bits
  ``strip()`` recorded, :data:`tfsafe.metrics.DEPLOY_BITS_ATTR`) at 4 bits, by uniform
  per-channel min/max (not exact: the codebook is not uniform); anything else
  (float weights) at 8 bits by min/max, as the int8 mode does. A layer planned at 4 bits whose
  op has no INT4 kernel falls back to 8 bits and says so (``reason``). Parity is checked
  against the stripped model itself.

  A ``.tflite`` op has one storage width for its whole weight tensor, so a single 8-bit
  channel keeps a layer at 8 bits: self-compression with its default ceiling (8) ends with
  such a channel in nearly every layer and its learned file is no smaller than int8.
  Train it with ``max_bits=4`` (``SelfCompress(max_bits=4)``, recipe ``params.max_bits``):
  every channel then fits INT4 and every Conv2D / Dense kernel is stored at 4 bits, exactly.
  Splitting a layer by storage width (a 4-bit and an 8-bit op plus a concatenation and a
  channel permutation) is not done: it adds ops and an activation copy per layer, and INT4
  kernels are already slower than INT8 ones on LiteRT's CPU path.

The side-car's ``layer_bits`` (:attr:`LowBitExport.layers`) gives, per layer: ``op``,
``storage_bits`` (what the file holds), ``needed_bits`` (the widest channel's grid, ``None``
when the weights are not on a grid of at most 8 bits), ``learned_bits`` (the mean storage
bits ``strip()`` recorded, when known), ``codebook_levels``, ``exact`` and
``max_weight_error`` (largest ``|stored - float32|`` over the kernel: the file's dequantized
weights read back against the float32 conversion of the same Keras model, which has any
BatchNormalization folded in; the weight range given to the quantizer is read off that float
file too, so a learned grid stays exact through the folding).
"""

import contextlib
import dataclasses
import io
import re
import warnings

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from tflite_export import flatbuffer
from tfsafe._keras import keras, tf
from tfsafe.errors import MissingDependencyError, UnsupportedModelError
from tfsafe.metrics import DEPLOY_BITS_ATTR
from tfsafe.models import flat_layers

__all__ = ["MODES", "RECIPE", "LowBitExport", "channel_grid", "plan_bits", "int4_reference",
           "quantize_low_bit", "stored_kernels"]

MODES = ("int4", "learned")
RECIPE = "static: int4 (CONV_2D, FULLY_CONNECTED) / int8 weights per channel, int8 activations, int8 I/O"
# Ops whose weights ai-edge-quantizer 0.10.0 can store at 4 bits with int8 activations.
INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")
_WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL")
_INT4_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)
_STORED_TYPES = (schema.TensorType.INT4, schema.TensorType.INT8, schema.TensorType.FLOAT32)
# How far from an integer a grid code may be (float32 rounding of k * step, k <= 128, is ~1e-5).
_GRID_TOL = 1e-4


@dataclasses.dataclass
class LowBitExport:
    """What :func:`quantize_low_bit` produced.

    Attributes:
        model_bytes: the quantized ``.tflite`` content.
        reference: the Keras model whose weights the file holds (parity compares with it).
        layers: ``{layer name: {"op", "storage_bits", "needed_bits", "learned_bits",
            "codebook_levels", "exact", "max_weight_error", "reason"}}``.
        recipe: the combination written (weights / activations / I/O), in words.
    """

    model_bytes: bytes
    reference: object
    layers: dict
    recipe: str = RECIPE


def _kernel_of(layer):
    for w in layer.weights:
        if w.shape.rank is not None and w.shape.rank >= 2:
            return w
    return None


def _channels_last(layer, kernel):
    """``kernel`` as ``(weights per channel, channels)``: the axes TFLite quantizes per channel."""
    if isinstance(layer, keras.layers.Conv2DTranspose):  # (h, w, out, in)
        kernel = np.moveaxis(kernel, -2, -1)
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (h, w, in, multiplier): in * multiplier channels
        return kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])
    return kernel.reshape(-1, kernel.shape[-1])


def channel_grid(flat):
    """The per-channel integer grid the values of ``flat`` (weights x channels) sit on.

    A channel sits on a grid when every value is ``k * step`` for integers ``k`` in
    ``[-128, 127]`` (within ``1e-4`` of an integer): the step is the smallest non-zero
    magnitude divided by the smallest ``d`` in 1..128 that makes every ``value / step`` whole.
    Float weights are on no such grid (their ratios are not integer multiples).

    Returns:
        ``(bits, step)``, arrays over channels: the two's complement bits ``k`` needs (0 for an
        all-zero channel, 32 when the channel is not on such a grid) and the step (0 when not
        on a grid).
    """
    flat = np.asarray(flat, np.float64)
    bits = np.full(flat.shape[-1], 32, np.int64)
    step = np.zeros(flat.shape[-1])
    divisors = np.arange(1, 129, dtype=np.float64)[:, None]
    for c in range(flat.shape[-1]):
        values = flat[:, c]
        nonzero = values[values != 0]
        if nonzero.size == 0:
            bits[c] = 0
            continue
        smallest = np.abs(nonzero).min()
        codes = divisors * (nonzero / smallest)[None, :]  # (divisor, value)
        fits = (np.abs(codes - np.round(codes)).max(axis=1) <= _GRID_TOL) & (np.abs(codes).max(axis=1) <= 128.5)
        if not fits.any():
            continue
        d = int(np.argmax(fits))
        k = np.round(codes[d])
        if k.max() > 127:
            continue
        span = max(-k.min(), k.max() + 1, 1.0)
        bits[c] = int(np.ceil(np.log2(span))) + 1
        step[c] = smallest / divisors[d, 0]
    return bits, step


def _weight_ops(float_bytes, layer_names):
    """``{layer name: (op, weight tensor name, output tensor name)}`` of the float file."""
    found = {}
    for op in flatbuffer.list_ops(float_bytes):
        if op["op"] not in _WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        weight = op["inputs"][1][0]
        parts = re.split(r"[/;:]", weight)
        for name in layer_names:
            if name in parts and name not in found:
                found[name] = (op["op"], weight, op["outputs"][0][0])
                break
    return found


def int4_reference(plain):
    """Copy of ``plain`` whose Conv2D / Dense kernels sit on the per-channel int4 grid.

    ``s = max|w| / 7`` per output channel and ``w_q = s * round(w / s)``, the grid
    ai-edge-quantizer's symmetric INT4 uses. Other layers keep their weights.

    Returns:
        The new model.
    """
    reference = keras.models.clone_model(plain)
    reference.set_weights(plain.get_weights())
    for layer in flat_layers(reference):
        kernel = _kernel_of(layer)
        if type(layer) not in _INT4_LAYERS or kernel is None:
            continue
        value = kernel.numpy()
        flat = value.reshape(-1, value.shape[-1])
        s = np.abs(flat).max(axis=0) / 7.0
        s = np.where(s > 0, s, 1.0)
        kernel.assign((np.clip(np.round(flat / s), -8, 7) * s).reshape(value.shape).astype(np.float32))
    return reference


def plan_bits(plain, mode):
    """Per-layer storage plan: ``{layer name: dict}`` (see the module docstring).

    Raises:
        UnsupportedModelError: ``mode="int4"`` and a layer with a kernel that has no INT4 op.
    """
    records = getattr(plain, DEPLOY_BITS_ATTR, None) or {}
    plan = {}
    for layer in flat_layers(plain):
        kernel = _kernel_of(layer)
        if kernel is None or isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Embedding)):
            continue
        int4_ok = type(layer) in _INT4_LAYERS
        if mode == "int4" and not int4_ok:
            raise UnsupportedModelError(
                f"mode='int4': layer '{layer.name}' ({type(layer).__name__}) cannot be stored at 4 bits: "
                f"ai-edge-quantizer writes INT4 weights only for {' and '.join(INT4_OPS)} (Conv2D and Dense "
                "layers). Export with mode='learned' (keeps such layers at 8 bits) or mode='int8'.")
        flat = _channels_last(layer, kernel.numpy())
        bits, _ = channel_grid(flat)
        record = records.get(layer.name, {})
        needed = int(bits.max()) if bits.max() <= 8 else None
        nonzero = flat[flat != 0]
        levels = int(np.unique(nonzero).size) if record.get("codebook") and needed is None else None
        entry = {"op": None, "storage_bits": 8, "needed_bits": needed,
                 "learned_bits": record.get("bits"), "codebook_levels": levels, "exact": False,
                 "max_weight_error": None, "reason": ""}
        if mode == "int4":
            entry.update(storage_bits=4, reason="mode='int4'")
        elif needed is not None and needed <= 4:
            entry.update(storage_bits=4, reason=f"every channel on a grid of at most {needed} bits")
        elif levels is not None and levels <= 16:
            entry.update(storage_bits=4, reason=f"k-means codebook of {levels} non-zero levels (uniform int4, inexact)")
        elif needed is not None:
            entry["reason"] = f"channels need up to {needed} bits"
        else:
            entry["reason"] = "float weights: int8 by per-channel min/max"
        if entry["storage_bits"] == 4 and not int4_ok:
            entry.update(storage_bits=8, reason=f"{type(layer).__name__} has no INT4 kernel: stored at 8 bits")
        plan[layer.name] = entry
    return plan


def _float_tflite(model):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return converter.convert()
        except Exception as err:  # any converter failure becomes one line
            detail = " ".join(str(err).split())[:300]
            raise UnsupportedModelError(f"The TFLite converter failed on '{model.name}' (float32): {detail}") from err


def _quant_range(flat_shape_ops, step, bits):
    top = 7.0 if bits == 4 else 127.0
    bound = (top * np.asarray(step, np.float64)).astype(np.float32)
    return bound.reshape(flat_shape_ops)


def stored_kernels(model_bytes, names):
    """Dequantized values of the INT4 / INT8 / FLOAT32 weight tensors ``names`` of a ``.tflite`` file.

    Returns:
        ``{tensor name: (bits, float array in the file's layout)}`` for the names found with
        one of those types (32 bits for float32 tensors).
    """
    model = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    graph = model.Subgraphs(0)
    out = {}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        name = tensor.Name().decode(errors="replace")
        if name not in names or tensor.Type() not in _STORED_TYPES:
            continue
        buffer = model.Buffers(tensor.Buffer())
        if buffer.DataLength():
            raw = buffer.DataAsNumpy()
        else:  # large files keep buffers after the flatbuffer, addressed by offset and size
            raw = np.frombuffer(bytes(model_bytes[buffer.Offset(): buffer.Offset() + buffer.Size()]), np.uint8)
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
        if tensor.Type() == schema.TensorType.FLOAT32:
            out[name] = (32, np.asarray(raw, np.uint8).view(np.float32).reshape(shape))
            continue
        if tensor.Type() == schema.TensorType.INT4:  # two values per byte, low nibble first
            packed = np.asarray(raw, np.uint8)
            nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[: int(np.prod(shape))]
            q, bits = np.where(nibbles > 7, nibbles.astype(np.int16) - 16, nibbles).astype(np.float64), 4
        else:
            q, bits = np.asarray(raw, np.uint8).view(np.int8).astype(np.float64), 8
        quant = tensor.Quantization()
        scale = quant.ScaleAsNumpy().astype(np.float64)
        zero = quant.ZeroPointAsNumpy().astype(np.float64)
        axis = quant.QuantizedDimension()
        q = q.reshape(shape)
        bshape = [1] * len(shape)
        bshape[axis] = -1
        out[name] = (bits, (q - zero.reshape(bshape)) * scale.reshape(bshape))
    return out


def _per_channel(op, values):
    """A weight tensor of the file as ``(weights per channel, channels)``: FC (out, in), conv
    (out, h, w, in) and depthwise (1, h, w, channels) layouts."""
    if op == "DEPTHWISE_CONV_2D":
        return values.reshape(-1, values.shape[-1])
    return values.reshape(values.shape[0], -1).T


def _whole_set_ranges(float_bytes, calibration, qsvs):
    """Activation ranges over the whole calibration set, replacing ai-edge-quantizer's.

    ai-edge-quantizer 0.10.0 keeps a moving average (factor 0.95) of each example's min / max,
    so a range ends near a typical example's, and the extremes -- a classifier's top logit
    above all -- are clipped: on a CIFAR-10 CNN its logits range was [-3.1, 2.3] where the
    calibration set's is [-7.0, 6.8], and top-1 agreement fell to 0.93 (0.98 for the TFLite
    converter's int8 file of the same model). Like the TFLite converter, use the min / max
    over every calibration example instead (per-tensor ranges; per-channel weight ranges are
    left as they are).
    """
    interpreter = Interpreter(model_content=bytes(float_bytes), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    names = [name for name, qsv in qsvs.items()
             if name in index and "min" in qsv and np.size(qsv["min"]) == 1 and np.size(qsv["max"]) == 1]
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    detail = interpreter.get_input_details()[0]
    for row in np.asarray(calibration):
        interpreter.set_tensor(detail["index"], row.reshape(detail["shape"]).astype(detail["dtype"]))
        interpreter.invoke()
        for name in list(low):
            try:
                value = interpreter.get_tensor(index[name])
            except ValueError:  # a tensor the interpreter does not keep: ai-edge-quantizer's range stays
                del low[name], high[name]
                continue
            if value.size:
                low[name] = min(low[name], float(value.min()))
                high[name] = max(high[name], float(value.max()))
    out = dict(qsvs)
    for name in low:
        if np.isfinite(low[name]) and np.isfinite(high[name]):
            qsv = qsvs[name]
            out[name] = dict(qsv, min=np.full_like(qsv["min"], min(low[name], float(np.min(qsv["min"])))),
                             max=np.full_like(qsv["max"], max(high[name], float(np.max(qsv["max"])))))
    return out


def quantize_low_bit(plain, mode, calibration, num_threads=1):
    """Quantize a plain Keras model to a ``.tflite`` with 4/8-bit weights and int8 activations.

    Args:
        plain: a plain single-input, single-output ``tf_keras`` model (``prepare_model``'s
            output; a stripped model keeps the bits ``strip()`` recorded).
        mode: ``"int4"`` or ``"learned"`` (see the module docstring).
        calibration: float32 array of representative inputs (one example per calibration step).
        num_threads: threads of the calibration interpreter.

    Returns:
        A :class:`LowBitExport`.

    Raises:
        UnsupportedModelError: a layer the quantizer cannot store as planned (named), or a
            conversion / quantization failure.
    """
    try:
        from ai_edge_quantizer import qtyping, quantizer  # optional heavy dependency
    except ImportError as err:
        raise MissingDependencyError("mode='int4'/'learned' needs ai-edge-quantizer: "
                                     "pip install ai-edge-quantizer==0.10.0") from err

    plan = plan_bits(plain, mode)
    reference = int4_reference(plain) if mode == "int4" else plain
    float_bytes = _float_tflite(reference)
    ops = _weight_ops(float_bytes, list(plan))
    missing = [name for name in plan if name not in ops]
    if mode == "int4" and missing:
        raise UnsupportedModelError(
            f"mode='int4': layer '{missing[0]}' has no CONV_2D / FULLY_CONNECTED weight tensor in the converted "
            "graph (the converter folded or reshaped it), so it cannot be stored at 4 bits; use mode='learned'.")

    qt = quantizer.Quantizer(bytearray(float_bytes))
    op_enum = qtyping.TFLOperationName
    qt.add_static_config(".*", op_enum.ALL_SUPPORTED, 8, 8)
    for name, entry in plan.items():
        if name not in ops:
            entry["reason"] += "; no weight op found in the graph"
            continue
        entry["op"] = ops[name][0]
        if entry["storage_bits"] == 4:
            # ai-edge-quantizer matches the regex against the op scope "<output tensor names>;"
            qt.add_static_config("^" + re.escape(ops[name][2]) + ";$", op_enum(entry["op"]), 8, 4)

    signature = "serving_default"
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():  # progress bar, debug-mode notice
        warnings.simplefilter("ignore")
        input_name = Interpreter(model_content=bytes(float_bytes)).get_signature_list()[signature]["inputs"][0]
        qsvs = qt.calibrate({signature: [{input_name: calibration[i:i + 1]} for i in range(len(calibration))]},
                            num_threads=num_threads)
    qsvs = _whole_set_ranges(float_bytes, calibration, qsvs)
    # The weight range of each kernel comes from the float file itself, so a grid survives the
    # converter's folding (a BatchNormalization scales each channel's grid, it stays a grid).
    converted = stored_kernels(float_bytes, {ops[name][1] for name in plan if name in ops})
    for name, entry in plan.items():
        if name not in ops or ops[name][1] not in converted:
            continue
        values = converted[ops[name][1]][1]
        bits, step = channel_grid(_per_channel(entry["op"], values))
        if bits.max() > entry["storage_bits"]:
            continue  # not on a grid that fits: ai-edge-quantizer's min/max
        step = np.where(step > 0, step, 1e-12)
        shape = (1, 1, 1, -1) if entry["op"] == "DEPTHWISE_CONV_2D" else (-1,) + (1,) * (values.ndim - 1)
        bound = _quant_range(shape, step, entry["storage_bits"])
        qsvs[ops[name][1]] = {"min": -bound, "max": bound}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model_bytes = bytes(qt.quantize(qsvs, enable_progress_report=False).quantized_model)
    except (ValueError, RuntimeError) as err:
        raise UnsupportedModelError(f"ai-edge-quantizer could not quantize '{plain.name}' in mode='{mode}': "
                                    f"{' '.join(str(err).split())[:300]}") from err
    _check_storage(model_bytes, converted, plan, ops, mode)
    return LowBitExport(model_bytes=model_bytes, reference=reference, layers=plan)


def _check_storage(model_bytes, converted, plan, ops, mode):
    """Read every kernel back from the file: storage bits as planned, error against the float file."""
    stored = stored_kernels(model_bytes, {ops[name][1] for name in plan if name in ops})
    for name, entry in plan.items():
        if name not in ops:
            continue
        bits, values = stored.get(ops[name][1], (None, None))
        if bits is None or bits == 32:
            raise UnsupportedModelError(f"mode='{mode}': layer '{name}' ({entry['op']}) was left unquantized by "
                                        "ai-edge-quantizer; no file was written. Use mode='int8' or 'dynamic'.")
        if bits != entry["storage_bits"]:
            if mode == "int4":
                raise UnsupportedModelError(
                    f"mode='int4': ai-edge-quantizer stored layer '{name}' ({entry['op']}) at {bits} bits, not 4 "
                    "(no INT4 kernel for it); no file was written. Use mode='learned' or mode='int8'.")
            entry.update(storage_bits=bits, reason=entry["reason"] + f"; the quantizer stored it at {bits} bits")
        reference = converted.get(ops[name][1], (None, None))[1]
        if reference is not None and reference.size == values.size:
            error = float(np.abs(values - reference.reshape(values.shape)).max())
            entry.update(max_weight_error=error, exact=error <= 1e-5 * (float(np.abs(reference).max()) or 1.0))

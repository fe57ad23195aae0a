"""Keras -> TFLite (int8 full-integer, dynamic-range, float16, float32) with checks.

:func:`to_tflite` strips compression wrappers, converts, checks the file (an int8 file must be
integer-only; with ``verify`` its outputs must agree with the Keras model), tries TFLite's
sparse weight encoding for pruned models, and writes the file plus a side-car JSON atomically:
when anything fails, nothing is left behind.

Modes:

- ``int8``: full-integer quantization from representative data: int8 weights (per-channel
  for convolutions and dense kernels), int8 activations, int8 input and output tensors
  (``integer_io=False`` keeps float32 input/output with QUANTIZE/DEQUANTIZE inside).
- ``dynamic``: int8 weights, float activations (no data needed).
- ``float16``: float16 weights, float32 compute on CPU.
- ``float32``: no quantization.
- ``int4`` / ``learned``: 4-bit (and 8-bit) weights with int8 activations and int8 I/O, written
  by ai-edge-quantizer (:mod:`tflite_export.low_bit` says which combination and which layers);
  parity is checked against the Keras model that holds the stored weights, and the side-car
  lists every layer's storage bits under ``layer_bits``.
"""

import dataclasses
import gzip
import os
import re

from tflite_export import flatbuffer, low_bit
from tflite_export.converter import convert_keras
from tflite_export.parity import ParityReport, ParityRule, check_parity
from tflite_export.prepare import (
    calibration_array,
    input_shape_of,
    loop_recurrent_layers,
    prepare_model,
    unroll_recurrent,
)
from tflite_export.sidecar import build_sidecar, check_labels_list, check_normalization, sidecar_path, tensor_info
from tflite_export.sparse_encoding import try_sparse_encoding
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.io import atomic_path, atomic_write_json
from tfsafe.models import output_kind
from tfsafe.validation import check_features, check_labels, check_model, model_num_classes

__all__ = ["MODES", "CALIBRATED_MODES", "ExportResult", "to_tflite", "gzip_size"]

MODES = ("int8", "dynamic", "float16", "float32") + low_bit.MODES
# Modes with int8 activations: their ranges are measured on representative data.
CALIBRATED_MODES = ("int8",) + low_bit.MODES
# Weight sparsity from which sparsity="auto" tries TFLite's sparse encoding.


@dataclasses.dataclass
class ExportResult:
    """What an export wrote and measured.

    Attributes:
        path: the model file.
        format: ``"tflite"`` or ``"onnx"``.
        mode: ``int8``, ``dynamic``, ``float16``, ``float32`` (TFLite) or ``float32`` (ONNX).
        bytes: file size; gzip_bytes: size after ``gzip -9`` (what an app download costs).
        input, output: tensor name, shape, dtype and, when quantized, scale and zero point.
        metadata_path: the side-car JSON.
        ops: ``{op_name: count}`` of the TFLite graph (None for ONNX).
        sparsity: what the sparse encoding attempt found (None when not tried).
        parity: the :class:`~tflite_export.parity.ParityReport` when ``verify`` was given.
        layer_bits: ``int4`` / ``learned`` only: per-layer storage bits (see
            :mod:`tflite_export.low_bit`).
    """

    path: str
    format: str
    mode: str
    bytes: int
    gzip_bytes: int
    input: dict
    output: dict
    metadata_path: str
    ops: dict = None
    sparsity: dict = None
    parity: ParityReport = None
    layer_bits: dict = None

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["parity"] = None if self.parity is None else self.parity.to_dict()
        return out


def gzip_size(data):
    """Bytes of ``data`` after gzip at level 9."""
    return len(gzip.compress(bytes(data), compresslevel=9, mtime=0))


def _layer_of(op, layer_names):
    """The Keras layer an op came from, read off its output tensor name (None if unknown)."""
    for tensor, _ in op["outputs"]:
        for part in re.split(r"[/;:]", tensor):
            if part in layer_names:
                return part
    return None


def _check_integer_only(model_bytes, layer_names):
    bad = flatbuffer.float_ops(model_bytes)
    if not bad:
        return
    where = []
    for op in bad[:5]:
        layer = _layer_of(op, layer_names)
        where.append(f"{op['op']} (layer '{layer}')" if layer else f"{op['op']} (tensor '{op['outputs'][0][0]}')")
    names = sorted({op["op"] for op in bad})
    raise UnsupportedModelError(
        f"int8 export is not integer-only: TFLite has no int8 kernel for {', '.join(names)}, so the "
        f"converter left it in float32: {'; '.join(where)}. Such a file fails on int8-only accelerators. "
        "Replace the layer, export with mode='dynamic' (int8 weights, float activations), or pass "
        "allow_float_ops=True to keep the mixed float/int8 file."
    )


def _check_mode(mode):
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}.")
    return mode


def check_output_path(path, suffix):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"'{path}' is a folder; pass a file path ending in {suffix}.")
    if not path.endswith(suffix):
        raise InputError(f"Output path '{path}' must end in {suffix}.")
    return path


def check_verify(verify, model):
    """``verify`` as ``(x, y)`` checked against ``model`` (``y`` may be None)."""
    if verify is None:
        return None
    x, y = verify if isinstance(verify, (tuple, list)) and len(verify) == 2 else (verify, None)
    x = check_features(x, "verify x", input_shape_of(model))
    if y is not None:
        y = check_labels(y, model_num_classes(model), "verify y", n=len(x))
    return x, y


def to_tflite(model, path, mode="int8", representative_data=None, *, num_calibration_samples=500,
              integer_io=True, verify=None, min_agreement=None, max_accuracy_drop=None, confidence_margin=None,
              sparsity="auto", allow_float_ops=False, labels=None, normalization=None):
    """Convert a Keras model to a ``.tflite`` file and write ``<path>.json`` beside it.

    Args:
        model: a ``tf_keras`` (or Keras 3) model; tfsafe / TF-MOT wrappers are stripped first.
        path: output file, ending in ``.tflite``.
        mode: ``"int8"`` (full-integer), ``"dynamic"``, ``"float16"``, ``"float32"``, or
            ``"int4"`` / ``"learned"`` (4/8-bit weights, int8 activations: see
            :mod:`tflite_export.low_bit`; ``verify`` then compares with the Keras model that
            holds the stored weights: the int4-gridded copy for ``int4``, the stripped model
            for ``learned``).
        representative_data: calibration inputs for ``int8``, ``int4`` and ``learned`` (float
            array, ``tf.data.Dataset`` or generator function); ignored by the other modes.
        num_calibration_samples: at most this many examples are used for calibration.
        integer_io: int8 mode only: int8 input/output tensors (default) or float32 ones.
        verify: ``(x, y)`` (``y`` may be None): run the written file against the Keras model
            and raise :class:`~tflite_export.parity.ParityError` (leaving no file) when it fails
            the :class:`~tflite_export.parity.ParityRule`.
        min_agreement, max_accuracy_drop, confidence_margin: the parity rule's settings; None
            keeps the shared default (agreement >= 0.99 on confident examples, accuracy drop
            <= 0.01, margin 0.1).
        sparsity: ``"auto"`` tries TFLite's sparse weight encoding when at least
            ``SPARSITY_THRESHOLD`` (:mod:`tflite_export.sparse_encoding`, 0.1) of the kernel
            weights are zero and keeps it when the file shrinks and LiteRT's default XNNPack
            delegate still runs it; ``True`` always tries and keeps a smaller file; ``False``
            never tries. Either way a sparse file LiteRT would read wrongly is not kept
            (:func:`~tflite_export.sparse_encoding.sparse_encoding_faults`; outputs checked
            against the dense encoding on the calibration or ``verify`` inputs).
        allow_float_ops: int8 only: accept ops the converter had to leave in float32.
        labels: class names stored in the side-car.
        normalization: dict describing preprocessing applied before the model (stored as is).

    Returns:
        An :class:`ExportResult`.

    Raises:
        UnsupportedModelError: not a Keras model, an unstrippable wrapper, an op TFLite cannot
            express (int8: names the op and suggests ``mode='dynamic'``).
        InputError: bad representative/verify data, path or arguments.
        ParityError: ``verify`` found the file disagrees with the Keras model.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> import numpy as np
        >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
        >>> result = to_tflite(small_cnn(), "/tmp/cnn_int8.tflite", "int8", x)
        >>> result.input["dtype"], result.bytes < 30_000
        ('int8', True)
    """
    mode = _check_mode(mode)
    path = check_output_path(path, ".tflite")
    rule = ParityRule.of(min_agreement, max_accuracy_drop, confidence_margin)
    if not isinstance(num_calibration_samples, int) or num_calibration_samples < 1:
        raise InputError(f"num_calibration_samples must be a positive integer, got {num_calibration_samples!r}.")
    if sparsity not in ("auto", True, False):
        raise InputError(f"sparsity must be 'auto', True or False, got {sparsity!r}.")
    keras_model = check_model(model)
    plain = prepare_model(keras_model)
    labels = check_labels_list(labels, model_num_classes(plain))
    normalization = check_normalization(normalization)
    loops = loop_recurrent_layers(plain)
    if mode in CALIBRATED_MODES and loops:
        raise UnsupportedModelError(
            f"Layer '{loops[0]}' is a recurrent loop over a free number of time steps, which {mode} "
            "calibration cannot run. Give the Input a fixed sequence length (it is then unrolled), "
            "or export with mode='dynamic'."
        )
    converted = unroll_recurrent(plain)
    calibration = None
    if mode in CALIBRATED_MODES:
        calibration = calibration_array(representative_data, input_shape_of(plain), num_calibration_samples,
                                        dtype=plain.inputs[0].dtype.as_numpy_dtype, mode=mode)
    checked = check_verify(verify, plain)

    low = None
    if mode in low_bit.MODES:  # ai-edge-quantizer; parity against the model holding the stored weights
        if not integer_io:
            raise InputError(f"mode='{mode}' writes int8 input/output tensors; integer_io=False is not supported.")
        low = low_bit.quantize_low_bit(converted, mode, calibration)
        model_bytes, keras_model, sparsity = low.model_bytes, low.reference, False
    else:
        model_bytes = convert_keras(converted, mode, calibration, integer_io)
    if mode in CALIBRATED_MODES and not allow_float_ops:
        _check_integer_only(model_bytes, {layer.name for layer in plain.layers})
    model_bytes, sparsity_info = try_sparse_encoding(converted, mode, calibration, integer_io, model_bytes, sparsity,
                                               None if checked is None else checked[0])
    # A sparse int8/dynamic file that XNNPack cannot run is only kept with sparsity=True.
    use_xnnpack = not (sparsity_info["used"] and sparsity_info["runs_with_xnnpack"] is False)

    from tflite_export.runtime import TFLiteModel

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model_bytes)
        runner = TFLiteModel(tmp, use_xnnpack=use_xnnpack)
        parity = None
        if checked is not None:
            parity = check_parity(keras_model, tmp, checked[0], checked[1], exported=runner,
                                  confidence_margin=rule.confidence_margin)
            parity.path = path
            rule.judge(parity, f"The {mode} export of '{plain.name}'")
        result = ExportResult(
            path=path, format="tflite", mode=mode, bytes=len(model_bytes), gzip_bytes=gzip_size(model_bytes),
            input=_tensor(runner.input_details, "input"), output=_tensor(runner.output_details, "output"),
            metadata_path=sidecar_path(path), ops=flatbuffer.op_counts(model_bytes),
            sparsity=sparsity_info, parity=parity, layer_bits=None if low is None else low.layers,
        )
        value_range = None if calibration is None else (calibration.min(), calibration.max())
        sidecar = build_sidecar(result, plain.name, output_kind(plain), labels, normalization, value_range)
        atomic_write_json(result.metadata_path, sidecar)
    return result


def _tensor(details, role):
    scale, zero_point = details["quantization"]
    return tensor_info(details["name"], details["shape_signature"], details["dtype"], scale, zero_point, role)


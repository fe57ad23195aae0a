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

import contextlib
import dataclasses
import gzip
import os
import re
import sys
import tempfile
import warnings

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export import flatbuffer, low_bit
from tflite_export.parity import ParityReport, ParityRule, check_parity
from tflite_export.prepare import (
    calibration_array,
    input_shape_of,
    loop_recurrent_layers,
    prepare_model,
    unroll_recurrent,
    weight_sparsity,
)
from tflite_export.sidecar import build_sidecar, check_labels_list, check_normalization, sidecar_path, tensor_info
from tfsafe._keras import keras, tf
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.io import atomic_path, atomic_write_json
from tfsafe.models import flat_layers, output_kind
from tfsafe.validation import check_features, check_labels, check_model, model_num_classes

__all__ = ["MODES", "ExportResult", "to_tflite", "gzip_size", "SPARSITY_THRESHOLD", "sparse_encoding_faults"]

MODES = ("int8", "dynamic", "float16", "float32") + low_bit.MODES
# Weight sparsity from which sparsity="auto" tries TFLite's sparse encoding.
SPARSITY_THRESHOLD = 0.1


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


def _converter_error(err, mode, text=None):
    text = str(err) if text is None else text
    ops = set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if select:
        ops.update(op.strip() for op in select.group(1).split(",") if op.strip())
    if ops:
        message = (
            f"TFLite has no builtin kernel for the TensorFlow op(s) {', '.join(sorted(ops))}; "
            "tflite_export writes builtin-only files (no Flex/Select TF ops, which phones would "
            "need an extra 5+ MB runtime for). Replace the layer(s) using them with standard layers."
        )
    else:
        lines = [line.strip()[:200] for line in text.splitlines() if "error" in line.lower()][:2]
        detail = " | ".join(lines) or " ".join(text.split())[:300]
        message = f"The TFLite converter failed for mode='{mode}': {detail}"
    if mode == "int8":
        message += " If an op has no int8 kernel, export with mode='dynamic' (int8 weights, float activations)."
    return UnsupportedModelError(message)


def _is_recurrent(model):
    """A recurrent layer that is still a loop (LSTM, or a GRU over a free number of steps)."""
    def loops(layer):
        inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
        return isinstance(inner, keras.layers.RNN) and not inner.unroll

    return any(loops(layer) for layer in flat_layers(model))


def _needs_fixed_batch(text):
    """The converter failed on TensorFlow's dynamic tensor lists (a recurrent loop over a free
    batch size); with a batch of 1 it lowers them (LSTM fuses to UNIDIRECTIONAL_SEQUENCE_LSTM)."""
    return "TensorList" in text or "tensor_list" in text


@contextlib.contextmanager
def _captured_stderr():
    """Send what the converter's C++ side prints on file descriptor 2 to a temp file.

    Yields a list that holds the captured text once the block ends (the converter writes tens
    of KB of MLIR diagnostics there, which the error message summarizes instead).
    """
    captured = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebooks): nothing to capture
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read().decode(errors="replace"))


def _converter(model, fixed_batch):
    if not fixed_batch:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    spec = model.inputs[0]
    signature = tf.TensorSpec([1, *spec.shape[1:]], spec.dtype)
    fn = tf.function(lambda t: model(t, training=False)).get_concrete_function(signature)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn], model)


def _convert(model, mode, calibration=None, integer_io=True, sparse=False, fixed_batch=None):
    """Convert ``model``; recurrent models (or a failure on dynamic tensor lists) get a fixed
    batch of 1, which TFLite's builtin kernels support."""
    if fixed_batch is None:
        fixed_batch = _is_recurrent(model)
    float_input = model.inputs[0].dtype.is_floating
    converter = _converter(model, fixed_batch)
    optimizations = [] if mode == "float32" else [tf.lite.Optimize.DEFAULT]
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if integer_io:
            if float_input:  # integer inputs (token ids) stay as they are
                converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with warnings.catch_warnings(), _captured_stderr() as log:
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected..."
        try:
            return converter.convert()
        except Exception as err:  # ConverterError and friends become one clear error
            failure = err
    text = f"{failure}\n{''.join(log)}"
    if not fixed_batch and _needs_fixed_batch(text):
        return _convert(model, mode, calibration, integer_io, sparse, fixed_batch=True)
    raise _converter_error(failure, mode, text) from failure


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


def _runs_with_xnnpack(model_bytes):
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=bytes(model_bytes))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError):
        return False
    return True


def _top1(model_bytes, x):
    """Top-1 classes of a ``.tflite`` (bytes) on ``x``, one example at a time, (de)quantizing int io."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(model_bytes))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    labels = []
    for row in np.asarray(x, np.float32):
        value = row[None]
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]).reshape(inp["shape"]))
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] in (np.int8, np.uint8):
            result = (result - out["quantization"][1]) * out["quantization"][0]
        if not np.isfinite(result).all():
            return None  # NaN / inf outputs agree with nothing
        labels.append(int(np.argmax(result.reshape(-1))))
    return np.array(labels)


def _sparse_tensors(model_bytes):
    """``{tensor name: (dtype, shape, block size or None)}`` of the sparse-encoded tensors of a file."""
    model = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    graph = model.Subgraphs(0)
    found = {}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        sparse = tensor.Sparsity()
        if sparse is None:
            continue
        dims = [sparse.DimMetadata(j).DenseSize() for j in range(sparse.DimMetadataLength())]
        block = dims[-1] if sparse.BlockMapLength() else None
        found[tensor.Name().decode(errors="replace")] = (tensor.Type(), tuple(tensor.ShapeAsNumpy()), block)
    return found


def sparse_encoding_faults(model_bytes):
    """Sparse-encoded weights of a ``.tflite`` that LiteRT (2.3.0) reads wrongly, as reasons.

    TFLite's sparse encoding is only decoded by ``DENSIFY`` and by ``FULLY_CONNECTED``'s sparse
    kernels; the converter (TF 2.21, ``Optimize.EXPERIMENTAL_SPARSITY``) sometimes writes
    encodings those cannot read, and the runtime then computes silently wrong outputs (no
    error, with or without XNNPack, which leaves sparse weights to the builtin kernels):

    - **float16 NaN** (the converter's fault): for a mostly-zero float16 model the converter
      picks a 1x4 *block* encoding for a Dense kernel and feeds it straight to ``DEQUANTIZE``
      (float16 -> float32) without a ``DENSIFY`` op. ``DEQUANTIZE`` has no sparse path: it reads
      the compressed buffer as the dense ``(out, in)`` tensor and runs past its end, so the
      weights become garbage (values up to 6.5e4, NaN). Random (non-block) float16 encodings
      get a ``DENSIFY`` and are right.
    - **int8 / dynamic-range, wrong answers** (a runtime kernel limit the converter ignores):
      ``FULLY_CONNECTED`` with int8 weights decodes only 1x16 blocks
      (``optimized_ops::FullyConnectedSparseWeight1x16``), which assume the input depth is a
      whole number of blocks. The converter writes 1x16 blocks for a Dense layer with 12 inputs
      (a pruned ``Dense(12 -> 128)`` MLP: top-1 accuracy 0.90 -> 0.25, the same under the
      dynamic-range hybrid kernel): the kernel reads 4 values past each row. Inputs that are a
      multiple of 16 are read right.

    Returns:
        ``[reason, ...]``, one line per tensor read wrongly (empty: every sparse tensor is read
        by a consumer that decodes it).
    """
    sparse = _sparse_tensors(model_bytes)
    faults = []
    for op in flatbuffer.list_ops(model_bytes):
        for name, _ in op["inputs"]:
            if name not in sparse or op["op"] == "DENSIFY":
                continue
            dtype, shape, block = sparse[name]
            if op["op"] != "FULLY_CONNECTED":
                faults.append(f"{op['op']} reads the sparse-encoded '{name}' as a dense tensor (no DENSIFY before it)")
            elif dtype in (schema.TensorType.INT8, schema.TensorType.INT4) and (
                    block != 16 or len(shape) < 2 or shape[-1] % 16):
                faults.append(f"FULLY_CONNECTED's int8 sparse kernel reads only 1x16 blocks over a multiple of 16 "
                              f"inputs; '{name}' has {'no blocks' if block is None else f'1x{block} blocks'} over "
                              f"{shape[-1] if len(shape) > 1 else '?'} inputs")
    return faults


def _try_sparsity(model, mode, calibration, integer_io, dense_bytes, sparsity, check_rows=None):
    """Try TFLite's sparse weight encoding; return ``(file bytes, info)``.

    The sparse file is kept only when it is smaller, none of its sparse tensors is read wrongly
    (:func:`sparse_encoding_faults`: float16's missing ``DENSIFY``, int8's 1x16-block limit) and,
    where example rows are available (calibration data, else ``check_rows``: the ``verify``
    inputs), its outputs are finite and agree top-1 (>= 0.99) with the dense encoding.
    """
    density = weight_sparsity(model)
    info = {"weight_sparsity": density, "tried": False, "dense_bytes": len(dense_bytes), "sparse_bytes": None,
            "shrank": None, "used": False, "runs_with_xnnpack": None, "reason": ""}
    if sparsity is False or (sparsity == "auto" and density < SPARSITY_THRESHOLD):
        info["reason"] = "not tried" if sparsity is False else (
            f"weight sparsity {density:.2f} < {SPARSITY_THRESHOLD}: nothing for the sparse encoding to gain")
        return dense_bytes, info
    try:
        sparse_bytes = _convert(model, mode, calibration, integer_io, sparse=True)
    except UnsupportedModelError as err:
        info.update(tried=True, reason=f"sparse conversion failed: {err}")
        return dense_bytes, info
    shrank = len(sparse_bytes) < len(dense_bytes)
    runs = _runs_with_xnnpack(sparse_bytes)
    faults = sparse_encoding_faults(sparse_bytes)
    info.update(tried=True, sparse_bytes=len(sparse_bytes), shrank=shrank, runs_with_xnnpack=runs)
    same = None
    rows = calibration if calibration is not None and len(calibration) else check_rows
    if shrank and runs and not faults and rows is not None and len(rows):
        # Whatever the structural check misses: keep the sparse file only when it agrees.
        rows = np.asarray(rows)[:64]
        try:
            sparse_top1, dense_top1 = _top1(sparse_bytes, rows), _top1(dense_bytes, rows)
            if sparse_top1 is None:
                same = 0.0
            elif dense_top1 is not None:
                same = float(np.mean(sparse_top1 == dense_top1))
            info["sparse_agreement"] = same
        except (RuntimeError, ValueError):
            same = None  # inputs this check cannot feed; the export's parity check still runs
    if not shrank:
        info["reason"] = "the sparse encoding did not make the file smaller"
    elif faults:
        info["reason"] = ("LiteRT would compute wrong outputs from the sparse encoding: " + "; ".join(faults[:2])
                          + "; the dense encoding is kept")
    elif same is not None and same < 0.99:
        info["reason"] = (f"the sparse encoding changes the outputs: top-1 agreement {same:.2f} with the dense "
                          "encoding on the calibration data; the dense encoding is kept")
    elif not runs and sparsity == "auto":
        info["reason"] = ("smaller, but LiteRT's default XNNPack delegate cannot run the sparse file; "
                          "pass sparsity=True to keep it anyway (then run it with XNNPack off)")
    else:
        info.update(used=True, reason="smaller" + ("" if runs else "; run it with XNNPack off"))
        return sparse_bytes, info
    return dense_bytes, info


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
            ``SPARSITY_THRESHOLD`` of the kernel weights are zero and keeps it when the file
            shrinks and LiteRT's default XNNPack delegate still runs it; ``True`` always tries
            and keeps a smaller file; ``False`` never tries. Either way a sparse file LiteRT
            would read wrongly is not kept (:func:`sparse_encoding_faults`; outputs checked
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
    if mode == "int8" and loops:
        raise UnsupportedModelError(
            f"Layer '{loops[0]}' is a recurrent loop over a free number of time steps, which int8 "
            "calibration cannot run. Give the Input a fixed sequence length (it is then unrolled), "
            "or export with mode='dynamic'."
        )
    converted = unroll_recurrent(plain)
    calibration = None
    if mode == "int8" or mode in low_bit.MODES:
        calibration = calibration_array(representative_data, input_shape_of(plain), num_calibration_samples,
                                        dtype=plain.inputs[0].dtype.as_numpy_dtype)
    checked = check_verify(verify, plain)

    low = None
    if mode in low_bit.MODES:  # ai-edge-quantizer; parity against the model holding the stored weights
        if not integer_io:
            raise InputError(f"mode='{mode}' writes int8 input/output tensors; integer_io=False is not supported.")
        low = low_bit.quantize_low_bit(converted, mode, calibration)
        model_bytes, keras_model, sparsity = low.model_bytes, low.reference, False
    else:
        model_bytes = _convert(converted, mode, calibration, integer_io)
    if (mode == "int8" or low is not None) and not allow_float_ops:
        _check_integer_only(model_bytes, {layer.name for layer in plain.layers})
    model_bytes, sparsity_info = _try_sparsity(converted, mode, calibration, integer_io, model_bytes, sparsity,
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


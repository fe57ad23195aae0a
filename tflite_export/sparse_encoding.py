"""TFLite's sparse weight encoding: tried for pruned models, kept only where LiteRT reads it right.

:func:`try_sparse_encoding` converts again with ``Optimize.EXPERIMENTAL_SPARSITY`` and keeps the
sparse file only when it is smaller, :func:`sparse_encoding_faults` finds no tensor that LiteRT
would read wrongly, and its top-1 answers match the dense encoding's.
"""

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export import flatbuffer
from tflite_export.converter import convert_keras
from tflite_export.prepare import weight_sparsity
from tfsafe.errors import UnsupportedModelError

__all__ = ["SPARSITY_THRESHOLD", "sparse_encoding_faults", "try_sparse_encoding"]

SPARSITY_THRESHOLD = 0.1


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


def try_sparse_encoding(model, mode, calibration, integer_io, dense_bytes, sparsity, check_rows=None):
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
        sparse_bytes = convert_keras(model, mode, calibration, integer_io, sparse=True)
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

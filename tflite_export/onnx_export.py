"""Keras -> ONNX through tf2onnx, checked with onnxruntime before the file is written.

``tf2onnx.convert.from_keras`` works on ``tf_keras`` models with TF 2.21 when it is given an
explicit input signature (the batch axis stays free). The converted graph is loaded in
onnxruntime and compared with the Keras model on a probe batch; ``verify`` adds a full
:func:`~tflite_export.parity.check_parity` run with a minimum agreement.
"""

import logging

import numpy as np

from tflite_export.convert import ExportResult, check_output_path, check_verify, gzip_size
from tflite_export.parity import ParityRule, check_parity
from tflite_export.prepare import input_shape_of, prepare_model
from tflite_export.sidecar import build_sidecar, check_labels_list, check_normalization, sidecar_path, tensor_info
from tfsafe._keras import tf
from tfsafe.errors import InputError, MissingDependencyError, UnsupportedModelError
from tfsafe.io import atomic_path, atomic_write_json
from tfsafe.models import output_kind
from tfsafe.validation import check_model, model_num_classes

__all__ = ["to_onnx", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError as err:
        raise MissingDependencyError("ONNX export needs tf2onnx and onnx: pip install tf2onnx onnx") from err
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf2onnx


def _check_opset(opset, tf2onnx):
    supported = sorted(tf2onnx.constants.OPSET_TO_IR_VERSION)
    if not isinstance(opset, int) or isinstance(opset, bool) or not 9 <= opset <= supported[-1]:
        raise InputError(
            f"opset must be an integer in 9..{supported[-1]} (tf2onnx {tf2onnx.__version__}), got {opset!r}."
        )
    return opset


def _probe_difference(plain, model_bytes, shape):
    """Largest |onnxruntime - Keras| output difference on a random probe batch."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise UnsupportedModelError(f"onnxruntime cannot load the converted graph: {err}") from err
    probe = np.random.default_rng(0).random((4,) + tuple(d or 1 for d in shape), dtype=np.float32)
    out = session.run(None, {session.get_inputs()[0].name: probe})[0]
    return float(np.max(np.abs(out - plain(probe, training=False).numpy())))


def to_onnx(model, path, opset=DEFAULT_OPSET, *, verify=None, min_agreement=None, max_accuracy_drop=None,
            confidence_margin=None, labels=None, normalization=None, tolerance=1e-3):
    """Convert a Keras model to ``.onnx`` (float32) and write ``<path>.json`` beside it.

    Args:
        model: a ``tf_keras`` (or Keras 3) model; tfsafe / TF-MOT wrappers are stripped first.
        path: output file, ending in ``.onnx``.
        opset: ONNX opset (default 17).
        verify: ``(x, y)`` for a parity check (see :func:`~tflite_export.convert.to_tflite`).
        min_agreement, max_accuracy_drop, confidence_margin: the parity rule's settings
            (:class:`~tflite_export.parity.ParityRule`; None keeps the shared default).
        labels, normalization: stored in the side-car JSON.
        tolerance: largest output difference from Keras allowed on the onnxruntime probe.

    Returns:
        An :class:`~tflite_export.convert.ExportResult` (``format="onnx"``, ``mode="float32"``).

    Example:
        >>> from tfsafe.models import small_cnn
        >>> result = to_onnx(small_cnn(), "/tmp/cnn.onnx")
        >>> result.format, result.input["shape"]
        ('onnx', [-1, 8, 8, 1])
    """
    path = check_output_path(path, ".onnx")
    tf2onnx = _tf2onnx()
    opset = _check_opset(opset, tf2onnx)
    rule = ParityRule.of(min_agreement, max_accuracy_drop, confidence_margin)
    keras_model = check_model(model)
    plain = prepare_model(keras_model)
    labels = check_labels_list(labels, model_num_classes(plain))
    normalization = check_normalization(normalization)
    checked = check_verify(verify, plain)
    shape = input_shape_of(plain)
    signature = [tf.TensorSpec((None,) + shape, tf.float32, name="input")]
    try:
        proto, _ = tf2onnx.convert.from_keras(plain, input_signature=signature, opset=opset)
    except Exception as err:  # tf2onnx raises many types; one clear error instead
        raise UnsupportedModelError(f"tf2onnx could not convert '{plain.name}' (opset {opset}): {err}") from err
    model_bytes = proto.SerializeToString()
    difference = _probe_difference(plain, model_bytes, shape)
    if not difference <= tolerance:
        raise UnsupportedModelError(
            f"The ONNX graph of '{plain.name}' differs from Keras by {difference:.3g} (> {tolerance}) on "
            "a probe batch; tf2onnx mistranslated an op. Try another opset."
        )
    output_shape = [-1] + [int(d) for d in plain.outputs[0].shape[1:]]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model_bytes)
        parity = None
        if checked is not None:
            parity = check_parity(keras_model, tmp, checked[0], checked[1],
                                  confidence_margin=rule.confidence_margin)
            parity.path = path
            rule.judge(parity, f"The ONNX export of '{plain.name}'")
        result = ExportResult(
            path=path, format="onnx", mode="float32", bytes=len(model_bytes), gzip_bytes=gzip_size(model_bytes),
            input=tensor_info(proto.graph.input[0].name, (-1,) + tuple(d or -1 for d in shape), np.float32),
            output=tensor_info(proto.graph.output[0].name, output_shape, np.float32, role="output"),
            metadata_path=sidecar_path(path), parity=parity,
        )
        sidecar = build_sidecar(result, plain.name, output_kind(plain), labels, normalization)
        sidecar["opset"] = opset
        atomic_write_json(result.metadata_path, sidecar)
    return result

"""The side-car JSON (``<model file>.json``) a phone app reads to feed an exported model.

It says how to turn the app's float input into the tensor the file takes (dtype, scale, zero
point, the value range seen during calibration, any normalization the user applied before
the model), how to read the output (dequantization, logits or probabilities) and the class
labels. ``normalization`` is the :meth:`tfsafe.preprocessing.Preprocessing.to_dict` record
(schema ``tfsafe.preprocessing/1``: ``x_model = x * scale + offset`` and the model input's
``expected_range``) that ``tfsafe compress`` and ``tfsafe export`` decided; ``tfsafe audit`` and
``tfsafe bench`` read it back (:func:`tfsafe.preprocessing_record.recorded_preprocessing`), so
the file is fed as it was calibrated. TFLite metadata would need the ``tflite-support`` package, which does not support
current TensorFlow, so the same facts go next to the file instead.
"""

import json
import os
from importlib import metadata

import numpy as np

from tfsafe.errors import InputError

__all__ = ["SCHEMA", "tensor_info", "check_labels_list", "check_normalization", "build_sidecar", "sidecar_path",
           "read_output_kind"]

SCHEMA = "tfsafe.export/1"


def sidecar_path(path):
    """``model.tflite`` -> ``model.tflite.json``."""
    return os.fspath(path) + ".json"


def tensor_info(name, shape, dtype, scale=0.0, zero_point=0, role="input"):
    """Description of one input/output tensor; quantized tensors get the formula to use."""
    dtype = np.dtype(dtype)
    info = {"name": name, "shape": [int(d) for d in shape], "dtype": dtype.name}
    if np.issubdtype(dtype, np.integer) and scale:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        info.update(scale=float(scale), zero_point=int(zero_point))
        if role == "input":
            info["quantize"] = f"q = clip(round(x / scale) + zero_point, {lo}, {hi})"
        else:
            info["dequantize"] = "x = (q - zero_point) * scale"
    return info


def check_labels_list(labels, num_classes):
    """Labels as a list of ``num_classes`` strings (or None)."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise InputError("labels must be a list of class names, not a single string.")
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise InputError(f"labels has {len(labels)} names but the model has {num_classes} outputs.")
    return labels


def check_normalization(normalization):
    """A JSON-serializable dict describing preprocessing applied before the model (or None)."""
    if normalization is None:
        return None
    if not isinstance(normalization, dict):
        raise InputError(
            "normalization must be a dict describing the preprocessing applied before the "
            "model, e.g. {'scale': 1/255, 'offset': 0.0} or {'mean': [...], 'std': [...]}."
        )
    try:
        json.dumps(normalization)
    except TypeError as err:
        raise InputError(f"normalization must be JSON-serializable: {err}") from err
    return normalization


def tfsafe_version():
    """The installed tfsafe's version, from package metadata (tflite_export never imports the
    ``tfsafe`` package root, which loads every method)."""
    try:
        return metadata.version("tfsafe")
    except metadata.PackageNotFoundError:
        return None


def build_sidecar(result, model_name, output_kind, labels=None, normalization=None, value_range=None):
    """The side-car dict for an :class:`~tflite_export.convert.ExportResult`."""
    inp = dict(result.input)
    if value_range is not None:
        inp["value_range"] = [float(value_range[0]), float(value_range[1])]
    out = dict(result.output, kind=output_kind)
    return {
        "schema": SCHEMA,
        "file": os.path.basename(result.path),
        "format": result.format,
        "mode": result.mode,
        "model_name": model_name,
        "tfsafe_version": tfsafe_version(),
        "input": inp,
        "normalization": normalization,
        "output": out,
        "labels": labels,
        "sparsity": result.sparsity,
        "parity": None if result.parity is None else result.parity.to_dict(),
        # int4 / learned modes: {layer: {"storage_bits", "needed_bits", "learned_bits", ...}}.
        "layer_bits": getattr(result, "layer_bits", None),
    }


def read_output_kind(path):
    """``output.kind`` (``"logits"`` / ``"probabilities"``) from the side-car of ``path``, or None
    when there is no readable side-car or it does not say."""
    try:
        with open(sidecar_path(path)) as f:
            kind = json.load(f).get("output", {}).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in ("logits", "probabilities") else None

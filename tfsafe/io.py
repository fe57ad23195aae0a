"""Atomic file writing and model loading with clear errors.

Everything tfsafe writes goes through these helpers: the data lands in a temporary file in
the destination folder and is renamed over the target, so a crash never leaves a half
written report, checkpoint or ``.tflite`` behind.
"""

import contextlib
import json
import os
import tempfile
import zipfile

from tfsafe.errors import InputError

__all__ = [
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "save_model", "load_model", "to_jsonable",
]


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; rename it over ``path`` if the block succeeds.

    Example:
        >>> with atomic_path("/tmp/out.bin") as tmp:
        ...     open(tmp, "wb").write(b"data")
        4
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = suffix if suffix is not None else os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return os.fspath(path)


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj):
    """Convert numpy scalars/arrays, tuples and dataclasses into plain JSON types."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None  # JSON has no NaN/inf; None reads as "not measured".
    return obj


def atomic_write_json(path, obj):
    """Write ``obj`` as indented JSON atomically (numpy values are converted)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def save_model(model, path):
    """Save a Keras model atomically (``.keras`` or ``.h5``); returns the path."""
    path = os.fspath(path)
    if not path.endswith((".keras", ".h5")):
        raise InputError(f"Model path '{path}' must end in .keras or .h5.")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def _holds_tfmot_quantization(path):
    """True when the ``.keras`` archive's config names TF-MOT quantization layers."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
    return '"QuantizeWrapperV2"' in config or '"QuantizeLayer"' in config


def load_model(path, compile=False):  # noqa: A002 - mirrors keras.models.load_model
    """Load a Keras model saved by tf_keras or Keras 3, returned as a tf_keras model.

    tfsafe layers are registered, and TF-MOT's pruning and quantization wrappers load inside
    ``prune_scope()`` / ``quantize_scope()``, so models saved from ``prune_low_magnitude`` or
    ``quantize_model`` load as they are (``tfsafe.strip`` then removes the wrappers). TF-MOT
    quantization wrappers load from ``.h5`` only (TF-MOT cannot reload them from ``.keras``; that
    case raises an InputError saying so).

    Raises:
        InputError: when the path does not exist or is not a loadable Keras model.
    """
    from tfsafe._keras import keras, tfmot, to_tf_keras

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"Model file '{path}' does not exist.")
    if os.path.isdir(path):
        raise InputError(f"'{path}' is a folder; pass a .keras or .h5 model file.")
    import tfsafe.compress  # noqa: F401 - registers tfsafe layers for deserialization

    try:
        with tfmot.sparsity.keras.prune_scope(), tfmot.quantization.keras.quantize_scope():
            return keras.models.load_model(path, compile=compile)
    except Exception as err_tf_keras:  # tried with both Keras versions below
        try:
            import keras as keras3

            return to_tf_keras(keras3.models.load_model(path, compile=False))
        except Exception:
            first_line = str(err_tf_keras).strip().splitlines()[0] if str(err_tf_keras) else ""
            if path.endswith(".keras") and _holds_tfmot_quantization(path):
                raise InputError(
                    f"'{path}' holds TF-MOT quantize_model layers, which TF-MOT cannot reload from the "
                    ".keras format (its QuantizeWrapper lists its variables differently once "
                    f"deserialized: {first_line[:120]}). Save the QAT model as .h5 "
                    "(model.save('model.h5')); tfsafe.load_model reads that, and strip() exports it."
                ) from err_tf_keras
            raise InputError(
                f"'{path}' is not a Keras model tfsafe can load ({type(err_tf_keras).__name__}: "
                f"{first_line[:200]}). Save models with model.save('model.keras')."
            ) from err_tf_keras

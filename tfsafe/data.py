"""Built-in datasets and the kind of a dataset (the protocol's splits are re-exported from :mod:`tfsafe.splits`).

Every built-in loader returns ``(x_train, y_train), (x_test, y_test)`` like ``keras.datasets``,
with images as float32 in [0, 1] shaped (N, H, W, C) and labels as int64 class ids.

- :func:`load_digits` needs nothing: scikit-learn ships the 1,797 8x8 digit images.
- :func:`load_mnist`, :func:`load_fashion_mnist`, :func:`load_cifar10` read ``data_dir``: a
  file (``.npz`` with the keras.datasets keys) or a folder holding exactly one set of files
  (IDX ``.gz``, one ``.npz``, CIFAR pickles); a folder with several candidates is refused with
  the candidates listed. Without ``data_dir`` they fall back to ``keras.datasets`` (downloads).
- :func:`data_kind` says whether data is images, tabular rows or token sequences.
- :func:`membership_split`, :func:`membership_split_from_train_test` and
  :class:`MembershipSplits` live in :mod:`tfsafe.splits` and are re-exported here.

A user's own files (``.npz``, ``.csv``, image folders) are read by :mod:`tfsafe.user_data`.
"""

import glob
import gzip
import os
import pickle

import numpy as np

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.splits import MembershipSplits, membership_split, membership_split_from_train_test

__all__ = [
    "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "load_dataset", "load_builtin",
    "DATASETS", "MembershipSplits", "membership_split", "membership_split_from_train_test", "read_idx",
    "data_kind", "DATA_KINDS", "leading_layers",
]

DATA_KINDS = ("image", "tabular", "sequence")


def load_digits(test_fraction=0.25, seed=0):
    """scikit-learn's bundled digits as 8x8x1 images in [0, 1] (offline, always available).

    Example:
        >>> (x, y), (xt, yt) = load_digits()
        >>> x.shape[1:], float(x.max()) <= 1.0
        ((8, 8, 1), True)
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def read_idx(path):
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise InputError(f"Cannot read IDX file '{path}': {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputError(f"'{path}' is not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise InputError(f"'{path}' is truncated: expected {expected} values, found {len(data) - offset}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _refuse_several(name, data_dir, candidates):
    listed = ", ".join(os.path.relpath(c, data_dir) for c in candidates)
    raise InputError(
        f"data_dir '{data_dir}' holds several candidate {name} files ({listed}); name the one to read, "
        f"e.g. data_dir='{candidates[0]}' (CLI: --data_dir)."
    )


def _find(name, data_dir, patterns):
    """The one file matching the first pattern that matches anything (several matches are refused)."""
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(data_dir, pattern)))
        if len(hits) > 1:
            _refuse_several(name, data_dir, hits)
        if hits:
            return hits[0]
    return None


def _images_to_float(x):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    return (x.astype(np.float32) / 255.0) if x.dtype == np.uint8 else x.astype(np.float32)


def _from_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise InputError(f"'{path}' lacks the keras.datasets keys {missing} (it has {sorted(f.files)}).")
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    except (OSError, ValueError) as err:
        raise InputError(f"'{path}' is not a readable .npz file: {err}") from err


def _finish(train, test, raw=False):
    """Labels as int64 ids, images with a channel axis; float32 in [0, 1] unless ``raw`` (as stored)."""
    def images(x):
        x = np.asarray(x)
        return (x[..., None] if x.ndim == 3 else x) if raw else _images_to_float(x)

    (x, y), (xt, yt) = train, test
    return (images(x), np.asarray(y, np.int64).reshape(-1)), (images(xt), np.asarray(yt, np.int64).reshape(-1))


def _check_path(name, data_dir):
    if not os.path.exists(data_dir):
        raise InputError(f"data_dir '{data_dir}' for {name} does not exist.")


def _offline_error(name, files, err):
    return InputError(
        f"Could not download {name} ({type(err).__name__}); this machine may be offline. Pass "
        f"data_dir='path/to/folder' (CLI: --data_dir) with {files}."
    )


def _npz_file(name, data_dir, files):
    if not data_dir.endswith(".npz"):
        raise InputError(f"data_dir '{data_dir}' for {name} is a file but not an .npz; pass {files}.")
    return _from_npz(data_dir), [data_dir]


def _load_idx_dataset(name, data_dir, keras_loader):
    files = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, " \
            "t10k-labels-idx1-ubyte.gz (or a keras-format .npz)"
    if data_dir is None:
        try:
            return keras_loader(), [f"keras.datasets ({name})"]
        except Exception as err:  # any download failure means "use data_dir"
            raise _offline_error(name, files, err) from err
    _check_path(name, data_dir)
    if os.path.isfile(data_dir):
        return _npz_file(name, data_dir, files)
    parts = {
        "x_train": _find(name, data_dir, ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images*"]),
        "y_train": _find(name, data_dir, ["train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte", "train-labels*"]),
        "x_test": _find(name, data_dir, ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images*"]),
        "y_test": _find(name, data_dir, ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", "t10k-labels*"]),
    }
    npzs = sorted(glob.glob(os.path.join(data_dir, "*.npz")))
    if all(parts.values()) and npzs:
        _refuse_several(name, data_dir, [parts["x_train"], *npzs])
    if all(parts.values()):
        arrays = {k: read_idx(p) for k, p in parts.items()}
        return ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])), list(parts.values())
    if len(npzs) > 1:
        _refuse_several(name, data_dir, npzs)
    if npzs:
        return _from_npz(npzs[0]), npzs
    raise InputError(f"No {name} files in '{data_dir}': expected {files}.")


def load_mnist(data_dir=None):
    """MNIST (60,000 + 10,000 28x28 digits) from ``data_dir`` (IDX folder or .npz) or keras.datasets."""
    return load_builtin("mnist", data_dir)[:2]


def load_fashion_mnist(data_dir=None):
    """Fashion-MNIST from ``data_dir`` (IDX .gz folder or .npz) or keras.datasets."""
    return load_builtin("fashion_mnist", data_dir)[:2]


def _read_cifar_pickles(folder):
    def read(path):
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            raise InputError(f"Cannot read CIFAR batch '{path}': {err}") from err
        x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(batch[b"labels"])

    train_files = sorted(glob.glob(os.path.join(folder, "data_batch_*")))
    test_file = os.path.join(folder, "test_batch")
    if not train_files or not os.path.exists(test_file):
        return None
    xs, ys = zip(*(read(p) for p in train_files))
    return ((np.concatenate(xs), np.concatenate(ys)), read(test_file)), [*train_files, test_file]


def _load_cifar10(data_dir, keras_loader):
    name = "CIFAR-10"
    files = "a .npz with x_train/y_train/x_test/y_test, or the cifar-10-batches-py pickles"
    if data_dir is None:
        try:
            return keras_loader(), ["keras.datasets (CIFAR-10)"]
        except Exception as err:
            raise _offline_error(name, files, err) from err
    _check_path(name, data_dir)
    if os.path.isfile(data_dir):
        return _npz_file(name, data_dir, files)
    candidates = sorted(glob.glob(os.path.join(data_dir, "*.npz")))
    pickles = [p for p in (_read_cifar_pickles(f) for f in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")))
               if p]
    if len(candidates) + len(pickles) > 1:
        _refuse_several(name, data_dir, candidates + [os.path.dirname(p[1][0]) for p in pickles])
    if candidates:
        return _from_npz(candidates[0]), candidates
    if pickles:
        return pickles[0]
    raise InputError(f"No {name} files in '{data_dir}': expected {files}.")


def load_cifar10(data_dir=None):
    """CIFAR-10 from ``data_dir`` (an .npz with keras.datasets keys, or cifar-10-batches-py)."""
    return load_builtin("cifar10", data_dir)[:2]


def _keras_loader(name):
    return getattr(keras.datasets, name).load_data


DATASETS = {
    "digits": lambda data_dir=None: load_digits(),
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


def load_builtin(name, data_dir=None, raw=False):
    """A built-in dataset and the files it was read from.

    Args:
        name: ``digits``, ``mnist``, ``fashion_mnist`` or ``cifar10``.
        data_dir: the file, or a folder with exactly one set of files; None downloads.
        raw: keep images as stored (``uint8`` pixels; digits stay float in [0, 1]) instead of
            float32 in [0, 1], for :mod:`tfsafe.preprocessing` to decide.

    Returns:
        ``((x_train, y_train), (x_test, y_test), files)``: ``files`` lists the paths read (or
        the ``keras.datasets`` / scikit-learn origin), for the report's provenance.

    Raises:
        InputError: unknown name, missing files, or a folder with several candidate files.
    """
    if name not in DATASETS:
        raise InputError(f"Unknown dataset '{name}'; choose one of {sorted(DATASETS)} or pass a file.")
    if name == "digits":
        return (*load_digits(), ["scikit-learn load_digits (bundled), split 75/25 with seed 0"])
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
    if name == "cifar10":
        parts, files = _load_cifar10(data_dir, _keras_loader("cifar10"))
    else:
        label = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[name]
        parts, files = _load_idx_dataset(label, data_dir, _keras_loader(name))
    return (*_finish(*parts, raw=raw), files)


def load_dataset(name, data_dir=None):
    """Load a dataset by name: one of ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``."""
    if name not in DATASETS:
        raise InputError(f"Unknown dataset '{name}'; choose one of {sorted(DATASETS)}.")
    return DATASETS[name](data_dir=data_dir)


def leading_layers(model):
    """The layers a single-input model applies first: its preprocessing layers, then the first other one.

    Input layers are skipped and nested models entered, so a ``Sequential`` preprocessing block
    counts. Preprocessing layers are ``Rescaling``, ``Normalization``, ``Resizing`` and
    ``CenterCrop``; the walk stops after the first layer of any other kind (e.g. an
    ``Embedding`` or a ``Conv2D``), which ends the list.
    """
    out = []
    for layer in getattr(model, "layers", []):
        if type(layer).__name__ == "InputLayer":
            continue
        inner = leading_layers(layer) if hasattr(layer, "layers") else [layer]
        out.extend(inner)
        if inner and type(inner[-1]).__name__ not in _PREPROCESSING_LAYERS:
            break
    return out


_PREPROCESSING_LAYERS = ("Rescaling", "Normalization", "Resizing", "CenterCrop")


def data_kind(x, model=None):
    """What kind of examples ``x`` holds: ``"image"``, ``"tabular"`` or ``"sequence"``.

    Rule (by shape and dtype; a model whose first layer is an ``Embedding`` makes it a sequence):
    (N, H, W, C) is an image; (N, H, W) is an image unless it holds integer tokens (a signed or
    wider-than-8-bit integer dtype), then it is a sequence (N, T, F); (N, F) is tabular unless
    it holds integers other than 0/1 (token ids, N, T), then it is a sequence. ``uint8`` and
    ``bool`` arrays are never tokens.

    Raises:
        InputError: ``x`` has fewer than two axes.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise InputError(f"data has shape {x.shape}; examples need at least one feature axis (N, F).")
    if model is not None and any(type(layer).__name__ == "Embedding" for layer in leading_layers(model)):
        return "sequence"
    tokens = x.dtype.kind in "iu" and x.dtype != np.uint8
    if x.ndim >= 4:
        return "image"
    if x.ndim == 3:
        return "sequence" if tokens else "image"
    if tokens and x.size and (x.min() < 0 or x.max() > 1):
        return "sequence"
    return "tabular"

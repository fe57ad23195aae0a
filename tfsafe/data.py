"""Datasets and the member / non-member splits of the evaluation protocol.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` like ``keras.datasets``, with
images as float32 in [0, 1] shaped (N, H, W, C) and labels as int64 class ids.

- :func:`load_digits` needs nothing: scikit-learn ships the 1,797 8x8 digit images.
- :func:`load_mnist`, :func:`load_fashion_mnist`, :func:`load_cifar10` read files from
  ``data_dir`` (IDX ``.gz``, ``.npz`` with the keras.datasets keys, CIFAR pickles) and fall back
  to ``keras.datasets`` (which downloads) only when no ``data_dir`` is given.
- :func:`membership_split` makes the disjoint train (members) / validation / audit
  non-members / test splits that honest privacy and robustness numbers need.
"""

import dataclasses
import glob
import gzip
import os
import pickle

import numpy as np

from tfsafe.errors import InputError

__all__ = [
    "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "load_dataset",
    "DATASETS", "MembershipSplits", "membership_split", "read_idx",
]


def load_digits(test_fraction=0.25, seed=0):
    """scikit-learn's bundled digits as 8x8x1 images in [0, 1] (offline, always available).

    Example:
        >>> (x, y), (xt, yt) = load_digits()
        >>> x.shape[1:], float(x.max()) <= 1.0
        ((8, 8, 1), True)
    """
    from sklearn.datasets import load_digits as sk_digits  # noqa: PLC0415

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


def _find(data_dir, patterns):
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(data_dir, pattern)))
        if hits:
            return hits[0]
    return None


def _images_to_float(x):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    return (x.astype(np.float32) / 255.0) if x.dtype == np.uint8 else x.astype(np.float32)


def _from_npz(path):
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise InputError(f"'{path}' lacks the keras.datasets keys {missing}.")
        return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])


def _finish(name, train, test):
    (x, y), (xt, yt) = train, test
    return (_images_to_float(x), np.asarray(y, np.int64).reshape(-1)), (
        _images_to_float(xt), np.asarray(yt, np.int64).reshape(-1))


def _check_dir(name, data_dir):
    if not os.path.isdir(data_dir):
        raise InputError(f"data_dir '{data_dir}' for {name} does not exist or is not a folder.")


def _offline_error(name, files, err):
    return InputError(
        f"Could not download {name} ({type(err).__name__}); this machine may be offline. Pass "
        f"data_dir='path/to/folder' (CLI: --data_dir) with {files}."
    )


def _load_idx_dataset(name, data_dir, keras_loader):
    files = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, " \
            "t10k-labels-idx1-ubyte.gz (or a keras-format .npz)"
    if data_dir is None:
        try:
            return _finish(name, *keras_loader())
        except Exception as err:  # noqa: BLE001 - any download failure means "use data_dir"
            raise _offline_error(name, files, err) from err
    _check_dir(name, data_dir)
    parts = {
        "x_train": _find(data_dir, ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images*"]),
        "y_train": _find(data_dir, ["train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte", "train-labels*"]),
        "x_test": _find(data_dir, ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images*"]),
        "y_test": _find(data_dir, ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", "t10k-labels*"]),
    }
    if all(parts.values()):
        arrays = {k: read_idx(p) for k, p in parts.items()}
        return _finish(name, (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))
    npz = _find(data_dir, ["*.npz"])
    if npz:
        return _finish(name, *_from_npz(npz))
    raise InputError(f"No {name} files in '{data_dir}': expected {files}.")


def load_mnist(data_dir=None):
    """MNIST (60,000 + 10,000 28x28 digits) from ``data_dir`` IDX/.npz files or keras.datasets."""
    from tfsafe._keras import keras  # noqa: PLC0415

    return _load_idx_dataset("MNIST", data_dir, keras.datasets.mnist.load_data)


def load_fashion_mnist(data_dir=None):
    """Fashion-MNIST from ``data_dir`` (IDX .gz or .npz) or keras.datasets."""
    from tfsafe._keras import keras  # noqa: PLC0415

    return _load_idx_dataset("Fashion-MNIST", data_dir, keras.datasets.fashion_mnist.load_data)


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
    return (np.concatenate(xs), np.concatenate(ys)), read(test_file)


def load_cifar10(data_dir=None):
    """CIFAR-10 from ``data_dir`` (.npz with keras.datasets keys, or cifar-10-batches-py)."""
    from tfsafe._keras import keras  # noqa: PLC0415

    files = "a .npz with x_train/y_train/x_test/y_test, or the cifar-10-batches-py pickles"
    if data_dir is None:
        try:
            return _finish("CIFAR-10", *keras.datasets.cifar10.load_data())
        except Exception as err:  # noqa: BLE001
            raise _offline_error("CIFAR-10", files, err) from err
    _check_dir("CIFAR-10", data_dir)
    npz = _find(data_dir, ["*.npz"])
    if npz:
        return _finish("CIFAR-10", *_from_npz(npz))
    for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
        loaded = _read_cifar_pickles(folder)
        if loaded:
            return _finish("CIFAR-10", *loaded)
    raise InputError(f"No CIFAR-10 files in '{data_dir}': expected {files}.")


DATASETS = {
    "digits": lambda data_dir=None: load_digits(),
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


def load_dataset(name, data_dir=None):
    """Load a dataset by name: one of ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``."""
    if name not in DATASETS:
        raise InputError(f"Unknown dataset '{name}'; choose one of {sorted(DATASETS)}.")
    return DATASETS[name](data_dir=data_dir)


@dataclasses.dataclass
class MembershipSplits:
    """Disjoint splits of one pool of data (each an ``(x, y)`` tuple).

    Attributes:
        train: the members: the only data the model is trained on.
        validation: for model selection, early stopping and safety sets.
        nonmembers: audit non-members; never used for training or selection.
        test: for reporting accuracy and robustness.
        reference: optional extra split for simulated attackers and shadow models (never the
            audit non-members); empty when not requested.
        indices: the row indices of each split in the pool, for provenance checks.
    """

    train: tuple
    validation: tuple
    nonmembers: tuple
    test: tuple
    reference: tuple
    indices: dict

    def audit_sets(self, size=None, seed=0):
        """Balanced ``(members, nonmembers)`` for a membership audit.

        Members are a random subset of ``train`` of the same size as the non-members used
        (``size`` caps both).
        """
        n = min(len(self.train[0]), len(self.nonmembers[0]))
        if size is not None:
            n = min(n, int(size))
        rng = np.random.default_rng(seed)
        m = rng.choice(len(self.train[0]), n, replace=False)
        nm = rng.choice(len(self.nonmembers[0]), n, replace=False)
        return (self.train[0][m], self.train[1][m]), (self.nonmembers[0][nm], self.nonmembers[1][nm])

    def sizes(self):
        """Number of examples in each split."""
        return {k: len(v) for k, v in self.indices.items()}


def _count(size, total, name):
    """A split size given as a fraction of the pool (float < 1) or as a count."""
    if isinstance(size, float) and size < 1:
        if size < 0:
            raise InputError(f"{name} as a fraction must be in [0, 1), got {size}.")
        return int(round(size * total))
    if size < 0 or int(size) != size:
        raise InputError(f"{name} must be a fraction in [0, 1) or a whole count >= 0, got {size}.")
    return int(size)


def membership_split(x, y, seed=0, train_size=0.4, validation_size=0.1, nonmember_size=0.25,
                     test_size=0.25, reference_size=0):
    """Split one pool into disjoint train / validation / non-member / test (/ reference) sets.

    Sizes are fractions of the pool (floats below 1) or counts (ints). The split is a seeded
    random permutation: the same seed gives the same indices.

    Example:
        >>> (x, y), _ = load_digits()
        >>> s = membership_split(x, y, seed=0, train_size=300, validation_size=100,
        ...                      nonmember_size=300, test_size=300)
        >>> s.sizes()["train"]
        300
    """
    from tfsafe.validation import check_features, check_labels  # noqa: PLC0415

    x = check_features(x, "x")
    y = check_labels(y, name="y", n=len(x))
    total = len(x)
    names = ["train", "validation", "nonmembers", "test", "reference"]
    requested = [train_size, validation_size, nonmember_size, test_size, reference_size]
    counts = [_count(s, total, f"{n}_size") for s, n in zip(requested, names)]
    if sum(counts) > total:
        raise InputError(
            f"The splits ask for {sum(counts)} examples ({dict(zip(names, counts))}) but there are "
            f"only {total}; lower the sizes."
        )
    if counts[0] == 0 or counts[2] == 0:
        raise InputError("train_size and nonmember_size must both be > 0 for a membership audit.")
    order = np.random.default_rng(seed).permutation(total)
    indices, start = {}, 0
    for name, count in zip(names, counts):
        indices[name] = np.sort(order[start:start + count])
        start += count
    parts = {name: (x[idx], y[idx]) for name, idx in indices.items()}
    return MembershipSplits(indices=indices, **parts)

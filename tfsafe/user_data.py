"""A user's own data behind one loader: ``.npz``, ``.csv``, image folders and the built-in names.

:func:`load_user_data` returns a :class:`UserData`: the arrays as stored (``uint8`` images stay
``uint8``), whether the data brings its own train/test split, its kind (image / tabular /
sequence), the :class:`~tfsafe.preprocessing.Preprocessing` its data implies, and a provenance
record (file, keys or columns, counts, split) for the report. :meth:`UserData.splits` makes
the protocol's splits, respecting a given split (members only from the training part).
:func:`tfsafe.data_match.check_data_matches_model` checks data against a model with one line
naming the fix.

Example:
    >>> data = load_user_data("my.npz")  # doctest: +SKIP
    >>> pre = data.preprocessing_for(model)  # doctest: +SKIP
    >>> splits = data.splits(seed=0, preprocessing=pre)  # doctest: +SKIP
"""

import dataclasses
import os
import zipfile

import numpy as np
import pandas as pd

from tfsafe._keras import keras, tf
from tfsafe.data import DATA_KINDS, DATASETS, data_kind, load_builtin
from tfsafe.errors import InputError
from tfsafe.preprocessing import decide_preprocessing
from tfsafe.splits import membership_split, membership_split_from_train_test
from tfsafe.validation import check_features, check_labels

__all__ = ["UserData", "load_user_data", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass
class UserData:
    """Data as the user stored it, with where it came from.

    Attributes:
        x_train, y_train: the training part, or the whole pool when there is no split.
        x_test, y_test: the held-out part, or ``None`` when the data is one pool.
        kind: ``"image"``, ``"tabular"`` or ``"sequence"``.
        class_names: class names in label order (string labels, image sub-folders), or None.
        feature_names: CSV feature columns, or None.
        normalization: the ``normalization`` argument given to the loader (None: decide).
        preprocessing: what the data and ``normalization`` imply, without a model
            (:meth:`preprocessing_for` takes the model's own Rescaling layer into account).
        provenance: JSON-able ``{"source", "format", "files", "keys", "counts", "has_split",
            "kind", "shape", "dtype", "value_range", "num_classes", "notes"}``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray = None
    y_test: np.ndarray = None
    kind: str = "image"
    class_names: list = None
    feature_names: list = None
    normalization: object = None
    preprocessing: object = None
    provenance: dict = None

    @property
    def has_split(self):
        """True when the data brings its own train/test split (members are then known)."""
        return self.x_test is not None

    @property
    def name(self):
        """How messages and reports name the data (the file, or the built-in dataset)."""
        return self.provenance["source"]

    @property
    def num_classes(self):
        """Number of classes: the class names, else the largest label + 1."""
        if self.class_names:
            return len(self.class_names)
        top = self.y_train.max() if self.y_test is None else max(self.y_train.max(), self.y_test.max())
        return int(top) + 1

    def pool(self):
        """All examples as one ``(x, y)`` pool (train then test)."""
        if not self.has_split:
            return self.x_train, self.y_train
        return np.concatenate([self.x_train, self.x_test]), np.concatenate([self.y_train, self.y_test])

    def preprocessing_for(self, model=None, recorded=None):
        """The :class:`~tfsafe.preprocessing.Preprocessing` for feeding this data to ``model``.

        Args:
            model: a Keras model (its own Rescaling layer counts), or None (e.g. a ``.tflite``).
            recorded: the preprocessing recorded with the model
                (:func:`tfsafe.preprocessing_record.recorded_preprocessing`); it wins over the
                model and the data, an explicit ``normalization`` over it (with a warning).
        """
        return decide_preprocessing(self.x_train, self.normalization, model=model, kind=self.kind,
                                    recorded=recorded)

    def splits(self, seed=0, preprocessing=None, pool_size=None, **sizes):
        """The protocol's splits of the preprocessed data.

        With a train/test split, :func:`~tfsafe.splits.membership_split_from_train_test`
        (members and validation only from ``x_train``; non-members, reference and test only
        from ``x_test``); else :func:`~tfsafe.splits.membership_split` of the pool, whose
        members are random rows: an audit of a model trained elsewhere is then not meaningful
        (``provenance["members_known"]`` is False).

        Args:
            seed: seeds the permutations.
            preprocessing: default :attr:`preprocessing`; pass ``preprocessing_for(model)``.
            pool_size: pool data only: split a seeded random subset of this many rows (as
                ``tfsafe compress`` recipes do); refused for data with a split.
            **sizes: the split function's size arguments: ``validation_size``,
                ``nonmember_size``, ``test_size``, ``reference_size``, ``train_size`` (with a
                split, fractions are of ``x_train`` for train / validation and of ``x_test`` for
                the rest; the defaults use all rows).

        Returns:
            :class:`~tfsafe.splits.MembershipSplits` (arrays as the model takes them) whose
            ``provenance`` also holds ``data`` (this provenance), ``preprocessing`` (its dict)
            and ``members_known``.
        """
        pre = preprocessing if preprocessing is not None else self.preprocessing
        if self.has_split and pool_size is not None:
            raise InputError(f"pool_size applies to data without a train/test split; {self.name} has one, so every "
                             "x_train row is a member candidate: pass validation_size / train_size instead.")
        if self.has_split:
            splits = membership_split_from_train_test(
                pre.apply(self.x_train, name=f"{self.name} training part"), self.y_train,
                pre.apply(self.x_test, name=f"{self.name} test part"), self.y_test, seed=seed, source=self.name,
                **sizes)
        else:
            x, y, source = self.x_train, self.y_train, f"{self.name} (one pool)"
            if pool_size is not None and int(pool_size) < len(x):
                keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:int(pool_size)])
                source = f"{self.name} (one pool, {len(keep)} random rows of {len(x)})"
                x, y = x[keep], y[keep]
            splits = membership_split(pre.apply(x, name=self.name), y, seed=seed, source=source, **sizes)
        splits.provenance.update(data=dict(self.provenance), preprocessing=pre.to_dict(),
                                 members_known=self.has_split)
        return splits

    def describe(self):
        """One line for logs: source, counts, split, kind, classes."""
        p = self.provenance
        counts = ", ".join(f"{k} {v}" for k, v in p["counts"].items())
        split = "its own train/test split" if self.has_split else "one pool (no train/test split)"
        return (f"{p['source']} ({p['format']}): {counts}; {split}; {self.kind} {tuple(p['shape'])} {p['dtype']}, "
                f"values {p['value_range'][0]:g}..{p['value_range'][1]:g}, {p['num_classes']} classes")


def _labels(ys, names, classes=None):
    """Labels of every part as int64 class ids; string labels map to sorted class names."""
    arrays = [np.asarray(y) for y in ys]
    if any(a.dtype.kind in "USO" for a in arrays):
        values = [a.astype(str).reshape(-1) for a in arrays]
        classes = sorted(set().union(*(set(v) for v in values)))
        lookup = {c: i for i, c in enumerate(classes)}
        return [np.array([lookup[v] for v in vals], np.int64) for vals in values], classes
    return [check_labels(a, name=n) for a, n in zip(arrays, names)], classes


def _features(x, name):
    x = check_features(x, name, dtype=None)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    return x


def _finish(source, fmt, parts, names, kind, normalization, files, keys, notes=(), classes=None,
            feature_names=None):
    """Check the parts, decide kind and preprocessing, and record provenance."""
    (x, y), test = parts[0], (parts[1] if len(parts) > 1 else None)
    x = _features(x, names[0])
    xt = None if test is None else _features(test[0], names[2])
    if xt is not None and xt.shape[1:] != x.shape[1:]:
        raise InputError(f"{names[2]} has examples shaped {xt.shape[1:]} but {names[0]} has {x.shape[1:]}; both "
                         "parts must have the same shape.")
    ys, classes = _labels([y] if test is None else [y, test[1]], [names[1], names[3] if test else None], classes)
    for xs, ys_, n in zip((x, xt), ys, names[1::2]):
        if len(ys_) != len(xs):
            raise InputError(f"{n} has {len(ys_)} labels but there are {len(xs)} examples.")
    if classes and max(int(a.max()) for a in ys) >= len(classes):
        raise InputError(f"{names[1]} has label {max(int(a.max()) for a in ys)} but the class names list only "
                         f"{len(classes)} classes; give one name per class id.")
    if kind is not None and kind not in DATA_KINDS:
        raise InputError(f"Unknown data kind {kind!r}; choose one of {', '.join(DATA_KINDS)}.")
    kind = kind or data_kind(x)
    notes = list(notes)
    if kind == "image" and x.ndim == 3:
        x, xt = x[..., None], (None if xt is None else xt[..., None])
        notes.append("added a channel axis: (N, H, W) -> (N, H, W, 1)")
    lo = float(x.min()) if xt is None else min(float(x.min()), float(xt.min()))
    hi = float(x.max()) if xt is None else max(float(x.max()), float(xt.max()))
    counts = {"train": len(x), "test": len(xt)} if xt is not None else {"pool": len(x)}
    provenance = {
        "source": source, "format": fmt, "files": [os.path.abspath(f) if os.path.exists(f) else f for f in files],
        "keys": keys, "counts": counts, "has_split": xt is not None, "kind": kind,
        "shape": list(x.shape[1:]), "dtype": str(x.dtype), "value_range": [lo, hi],
        "num_classes": len(classes) if classes else int(max(int(a.max()) for a in ys) + 1), "notes": notes,
    }
    data = UserData(x, ys[0], xt, ys[1] if xt is not None else None, kind=kind, class_names=classes,
                    feature_names=feature_names, normalization=normalization, provenance=provenance)
    data.preprocessing = data.preprocessing_for()
    return data


def _load_npz(path, kind, normalization):
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.files)
            present = [k for k in _SPLIT_KEYS if k in keys]
            if present and len(present) < 4:
                missing = [k for k in _SPLIT_KEYS if k not in present]
                raise InputError(f"'{path}' has {present} but not {missing}; a split .npz needs all of x_train, "
                                 "y_train, x_test, y_test (or store one pool as x and y).")
            wanted = list(_SPLIT_KEYS) if present else ["x", "y"]
            if not present and not {"x", "y"} <= set(keys):
                raise InputError(f"'{path}' has keys {keys}; expected x and y (one pool) or x_train, y_train, "
                                 f"x_test, y_test. Save it with np.savez('{os.path.basename(path)}', x=inputs, "
                                 "y=labels).")
            arrays = {}
            for key in wanted + (["class_names"] if "class_names" in keys else []):
                try:
                    arrays[key] = f[key]
                except ValueError as err:
                    raise InputError(f"'{path}' key '{key}' cannot be read without pickle ({err}); store it as a "
                                     "numeric array.") from err
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"'{path}' is not a readable .npz file ({err}); write it with np.savez.") from err
    names = [f"'{path}' key '{k}'" for k in (_SPLIT_KEYS if present else ("x", "y", "x", "y"))]
    parts = [(arrays[wanted[0]], arrays[wanted[1]])]
    if present:
        parts.append((arrays["x_test"], arrays["y_test"]))
    classes = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    return _finish(path, "npz", parts, names, kind, normalization, [path], {k: k for k in wanted}, classes=classes)


def _csv_line(mask):
    """1-based file line of the first row where ``mask`` holds (line 1 is the header)."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 2


def _load_csv(path, label_column, split_column, kind, normalization):
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"'{path}' is not a readable CSV file: {err}") from err
    columns = [str(c) for c in frame.columns]
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    if label_column is None:
        raise InputError(f"'{path}' is a CSV: pass label_column=NAME (CLI: --label_column NAME) naming the label "
                         f"column; its columns are: {shown}.")
    for column, what in ((label_column, "label_column"), (split_column, "split_column")):
        if column is not None and column not in frame.columns:
            raise InputError(f"'{path}' has no column '{column}' ({what}); its columns are: {shown}.")
    labels = frame[label_column]
    if labels.isna().any():
        raise InputError(f"'{path}' column '{label_column}' has {int(labels.isna().sum())} missing labels (first on "
                         f"line {_csv_line(labels.isna())}); fill them in or drop those rows.")
    features = frame.drop(columns=[c for c in (label_column, split_column) if c is not None])
    if features.shape[1] == 0:
        raise InputError(f"'{path}' has no feature columns besides '{label_column}'.")
    for column in features.columns:
        values = features[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
            raise InputError(f"'{path}' column '{column}' is not numeric (e.g. {values[bad].iloc[0]!r} on line "
                             f"{_csv_line(bad)}); encode it as numbers (one-hot or class ids) or drop it.")
        if values.isna().any():
            raise InputError(f"'{path}' column '{column}' has {int(values.isna().sum())} missing values (first on "
                             f"line {_csv_line(values.isna())}); impute them or drop those rows.")
    x = features.to_numpy(np.float32)
    y = labels.to_numpy()
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    names = [f"'{path}' feature columns", f"'{path}' column '{label_column}'"] * 2
    keys = {"label": label_column, "features": [str(c) for c in features.columns]}
    if split_column is None:
        parts = [(x, y)]
    else:
        split = frame[split_column].astype(str).str.strip().str.lower()
        unknown = sorted(set(split) - {"train", "test"})
        if unknown or not {"train", "test"} <= set(split):
            raise InputError(f"'{path}' column '{split_column}' must hold 'train' and 'test' (found "
                             f"{sorted(set(split))}); mark each row as train or test.")
        keys["split"] = split_column
        parts = [(x[(split == "train").to_numpy()], y[(split == "train").to_numpy()]),
                 (x[(split == "test").to_numpy()], y[(split == "test").to_numpy()])]
    return _finish(path, "csv", parts, names, kind or "tabular", normalization, [path], keys,
                   feature_names=keys["features"])


def _class_folders(path):
    return sorted(d for d in os.listdir(path) if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


def _first_image(path):
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                return os.path.join(root, name)
    raise InputError(f"image folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")


def _read_folder(path, image_size, color_mode):
    classes = _class_folders(path)
    if len(classes) < 2:
        found = f"one class sub-folder ('{classes[0]}')" if classes else "no class sub-folders"
        raise InputError(f"image folder '{path}' has {found}; a classifier needs one sub-folder per class, at least "
                         "two (e.g. DIR/cat/1.png, DIR/dog/2.png).")
    try:
        dataset = keras.utils.image_dataset_from_directory(
            path, labels="inferred", label_mode="int", color_mode=color_mode, image_size=image_size,
            batch_size=256, shuffle=False)
    except (ValueError, tf.errors.OpError) as err:
        raise InputError(f"image folder '{path}' cannot be read: {err}") from err
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(xs), np.concatenate(ys), list(dataset.class_names)


def _load_folder(path, image_size, color_mode, kind, normalization):
    subfolders = _class_folders(path)
    roots = [os.path.join(path, "train"), os.path.join(path, "test")] if subfolders == ["test", "train"] else [path]
    notes = []
    first = _first_image(path)
    try:
        shape = tf.io.decode_image(tf.io.read_file(first), expand_animations=False).shape
    except tf.errors.OpError as err:
        raise InputError(f"image '{first}' cannot be decoded ({type(err).__name__}); replace or remove it.") from err
    if image_size is None:
        image_size = (int(shape[0]), int(shape[1]))
        notes.append(f"image_size {image_size} from the first image ({os.path.relpath(first, path)})")
    elif np.ndim(image_size) == 0:
        image_size = (int(image_size), int(image_size))
    image_size = tuple(int(v) for v in image_size)
    if color_mode is None:
        color_mode = {1: "grayscale", 4: "rgba"}.get(int(shape[-1]), "rgb")
        notes.append(f"color_mode '{color_mode}' from the first image")
    parts, class_names = [], None
    for root in roots:
        x, y, names = _read_folder(root, image_size, color_mode)
        if class_names is not None and names != class_names:
            raise InputError(f"'{roots[0]}' and '{root}' have different class sub-folders ({class_names} vs {names}); "
                             "give both the same classes.")
        class_names = names
        if np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255:
            x = x.astype(np.uint8)
        parts.append((x, y))
    names = [f"image folder '{root}'" for root in roots for _ in (0, 1)]
    keys = {"classes": class_names, "image_size": list(image_size), "color_mode": color_mode,
            "split_folders": ["train", "test"] if len(roots) == 2 else None}
    return _finish(path, "image_folder", parts, names, kind or "image", normalization, roots, keys, notes,
                   classes=class_names)


def _load_named(name, data_dir, kind, normalization):
    train, test, files = load_builtin(name, data_dir, raw=True)
    names = [f"{name} {part}" for part in _SPLIT_KEYS]
    keys = {"dataset": name, "data_dir": None if data_dir is None else os.fspath(data_dir)}
    return _finish(name, "builtin", [train, test], names, kind, normalization, files, keys,
                   notes=["images as stored (uint8 pixels; digits as float in [0, 1])"])


def load_user_data(path, label_column=None, image_size=None, normalization=None, data_dir=None, kind=None,
                   color_mode=None, split_column=None):
    """Load a user's dataset (or a built-in one) as stored, with its provenance.

    Args:
        path: an ``.npz`` (keys ``x``, ``y``: one pool; or ``x_train``, ``y_train``,
            ``x_test``, ``y_test``: a split that is respected; optional ``class_names``), a
            ``.csv`` (numeric feature columns and ``label_column``), a folder with one
            sub-folder per class (or ``train/`` and ``test/`` folders that each have them),
            or a built-in name (``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``).
        label_column: the CSV's label column (required for ``.csv``).
        image_size: ``(height, width)`` or one int for image folders; default the first
            image's size (Keras resizes every image to it).
        normalization: see :func:`tfsafe.preprocessing.decide_preprocessing`; default decided
            from the data.
        data_dir: for built-in names: the file, or the folder with exactly one set of files.
        kind: ``"image"``, ``"tabular"`` or ``"sequence"`` to override :func:`tfsafe.data.data_kind`.
        color_mode: image folders: ``"grayscale"``, ``"rgb"`` or ``"rgba"``; default from the
            first image.
        split_column: CSV column whose values are ``train`` / ``test`` (a given split).

    Returns:
        A :class:`UserData`.

    Raises:
        InputError: one line naming the file and the key / column and the fix (missing file,
            unknown format, missing keys or labels, non-numeric columns, NaN values, an image
            folder with fewer than two classes, parts of different shapes).
    """
    path = os.fspath(path)
    is_csv = path.lower().endswith(".csv")
    is_folder = os.path.isdir(path)
    for value, flag, applies in ((label_column, "label_column", is_csv), (split_column, "split_column", is_csv),
                                 (image_size, "image_size", is_folder), (color_mode, "color_mode", is_folder)):
        if value is not None and not applies:
            raise InputError(f"{flag} applies to {'.csv files' if 'column' in flag else 'image folders'}, not "
                             f"'{path}'; leave it out.")
    if data_dir is not None and path not in DATASETS:
        raise InputError(f"data_dir applies to the built-in datasets ({', '.join(DATASETS)}); '{path}' is read "
                         "directly, so leave data_dir out.")
    if path in DATASETS and not os.path.exists(path):
        return _load_named(path, data_dir, kind, normalization)
    if is_folder:
        return _load_folder(path, image_size, color_mode, kind, normalization)
    if not os.path.exists(path):
        raise InputError(f"'{path}' is not a file, a folder or a built-in dataset ({', '.join(DATASETS)}).")
    if path.lower().endswith(".npz"):
        return _load_npz(path, kind, normalization)
    if is_csv:
        return _load_csv(path, label_column, split_column, kind, normalization)
    raise InputError(f"'{path}' is not a supported data file; pass an .npz, a .csv, a folder of images with one "
                     f"sub-folder per class, or one of {', '.join(DATASETS)}.")

"""The member / non-member splits of the evaluation protocol.

- :func:`membership_split` draws disjoint train (members) / validation / audit non-members /
  test (/ reference) sets from one pool.
- :func:`membership_split_from_train_test` respects a split the data already has: members only
  from the training part, non-members and test only from the held-out part.
- :meth:`MembershipSplits.from_arrays` takes a user's own splits.

:mod:`tfsafe.data` re-exports every name here.
"""

import dataclasses

import numpy as np

from tfsafe.errors import InputError
from tfsafe.validation import check_features, check_labels

__all__ = ["MembershipSplits", "membership_split", "membership_split_from_train_test", "SPLITS"]

SPLITS = ("train", "validation", "nonmembers", "test", "reference")


def _features(x, name, shape=None):
    """Checked features; floats become float32, integers (pixels, tokens) keep their dtype."""
    x = check_features(x, name, shape, dtype=None)
    return x.astype(np.float32, copy=False) if x.dtype.kind == "f" else x


def _empty_like(x):
    return np.zeros((0,) + tuple(np.shape(x)[1:]), np.asarray(x).dtype), np.zeros((0,), np.int64)


@dataclasses.dataclass
class MembershipSplits:
    """Disjoint splits for training, selection, the membership audit and reporting.

    Build them with :func:`membership_split` (one pool), :func:`membership_split_from_train_test`
    (data with its own train/test split) or :meth:`from_arrays` (your own splits).

    Attributes:
        train: ``(x, y)``, the members: the only data the model is trained on.
        validation: for model selection, early stopping and safety sets.
        nonmembers: audit non-members; never used for training or selection.
        test: for reporting accuracy and robustness.
        reference: extra non-members for simulated attackers and shadow models (never the audit
            non-members).
        indices: row indices of each split in the array it came from (see ``provenance``);
            only the splits the protocol drew have an entry.
        provenance: JSON-able; per split, ``{"from": source array, "count": rows, ...}``, so a
            report can say where each split came from (:meth:`tfsafe.user_data.UserData.splits`
            adds ``data``, ``preprocessing`` and ``members_known``).

    Every optional part defaults to an empty ``(x, y)`` with ``train``'s per-example shape
    (``()`` and ``None`` mean empty too), so code can always call ``len(splits.reference[0])``.
    """

    train: tuple
    validation: tuple = None
    nonmembers: tuple = None
    test: tuple = None
    reference: tuple = None
    indices: dict = None
    provenance: dict = None

    def __post_init__(self):
        xt = self._part("train", self.train, None)
        self.train = xt
        for name in SPLITS[1:]:
            setattr(self, name, self._part(name, getattr(self, name), xt[0]))
        if not len(self.test[0]):
            raise InputError("MembershipSplits needs a non-empty test split (x, y): accuracy is reported on it.")
        self.indices = dict(self.indices or {})
        provenance = dict(self.provenance or {})
        for name in SPLITS:
            entry = dict(provenance.get(name) or {"from": "given as arrays"})
            entry["count"] = len(getattr(self, name)[0])
            provenance[name] = entry
        self.provenance = provenance

    @staticmethod
    def _part(name, part, like):
        if part is None or (isinstance(part, (tuple, list)) and len(part) == 0):
            if like is None:
                raise InputError("MembershipSplits needs a non-empty train split (x, y): the members.")
            return _empty_like(like)
        if not (isinstance(part, (tuple, list)) and len(part) == 2):
            raise InputError(f"MembershipSplits.{name} must be an (x, y) pair, got {type(part).__name__}.")
        x, y = part
        if like is not None and len(x) == 0:
            return _empty_like(like)
        x = _features(x, f"{name} x")
        return x, check_labels(y, name=f"{name} y", n=len(x))

    @classmethod
    def from_arrays(cls, train, test, validation=None, nonmembers=None, reference=None, provenance=None):
        """Your own splits, each an ``(x, y)`` pair; optional parts may be left out.

        Use it when you know which rows your model was trained on: ``train`` are those rows (or
        a subset), ``nonmembers`` rows the model never saw (without them no membership audit
        runs), ``test`` the rows accuracy is reported on.

        Args:
            train: members ``(x, y)`` (required, non-empty).
            test: test ``(x, y)`` (required, non-empty).
            validation, nonmembers, reference: optional ``(x, y)``; ``None`` gives an empty part
                of the right shape.
            provenance: optional ``{split: {"from": "...", ...}}`` to say where each part came
                from; parts without an entry say "given as arrays".

        Example:
            >>> (x, y), (xt, yt) = tfsafe.load_digits()
            >>> s = MembershipSplits.from_arrays(train=(x, y), test=(xt[:200], yt[:200]),
            ...                                  nonmembers=(xt[200:], yt[200:]))
            >>> s.sizes()["reference"], s.reference[0].shape[1:]
            (0, (8, 8, 1))
        """
        parts = {"validation": validation, "nonmembers": nonmembers, "test": test, "reference": reference}
        expected = np.shape(train[0])[1:] if isinstance(train, (tuple, list)) and len(train) == 2 else None
        for name, part in parts.items():
            if expected is not None and isinstance(part, (tuple, list)) and len(part) == 2 and len(part[0]):
                if np.shape(part[0])[1:] != expected:
                    raise InputError(f"{name} x has examples shaped {np.shape(part[0])[1:]} but train x has "
                                     f"{expected}; every split must have the same per-example shape.")
        return cls(train=train, provenance=provenance, **parts)

    def audit_sets(self, size=None, seed=0):
        """Balanced ``(members, nonmembers)`` for a membership audit.

        Members are a random subset of ``train`` of the same size as the non-members used
        (``size`` caps both). Empty when there are no non-members.
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
        return {name: len(getattr(self, name)[0]) for name in SPLITS}

    def describe(self):
        """One line per split saying how many rows it has and where they came from."""
        lines = []
        for name in SPLITS:
            entry = self.provenance[name]
            extra = "".join(f", {k} {v}" for k, v in entry.items() if k not in ("from", "count"))
            lines.append(f"{name}: {entry['count']} rows from {entry['from']}{extra}")
        return lines


def _count(size, total, name):
    """A split size given as a fraction of ``total`` (float < 1) or as a count."""
    if isinstance(size, float) and size < 1:
        if size < 0:
            raise InputError(f"{name} as a fraction must be in [0, 1), got {size}.")
        return int(round(size * total))
    if size < 0 or int(size) != size:
        raise InputError(f"{name} must be a fraction in [0, 1) or a whole count >= 0, got {size}.")
    return int(size)


def _cut(order, names, counts):
    indices, start = {}, 0
    for name, count in zip(names, counts):
        indices[name] = np.sort(order[start:start + count])
        start += count
    return indices


def membership_split(x, y, seed=0, train_size=0.4, validation_size=0.1, nonmember_size=0.25,
                     test_size=0.25, reference_size=0, source="the pool"):
    """Split one pool into disjoint train / validation / non-member / test (/ reference) sets.

    Sizes are fractions of the pool (floats below 1) or counts (ints). The split is a seeded
    random permutation: the same seed gives the same indices. Members are drawn at random, so
    the membership audit is meaningful for a model trained here on ``train``, not for a model
    trained elsewhere on unknown rows of the pool.

    Args:
        source: how the report names the pool (e.g. ``"my.npz (x, y)"``).

    Example:
        >>> (x, y), _ = tfsafe.load_digits()
        >>> s = membership_split(x, y, seed=0, train_size=300, validation_size=100,
        ...                      nonmember_size=300, test_size=300)
        >>> s.sizes()["train"]
        300
    """
    x = _features(x, "x")
    y = check_labels(y, name="y", n=len(x))
    total = len(x)
    requested = [train_size, validation_size, nonmember_size, test_size, reference_size]
    counts = [_count(s, total, f"{n}_size") for s, n in zip(requested, SPLITS)]
    if sum(counts) > total:
        raise InputError(
            f"The splits ask for {sum(counts)} examples ({dict(zip(SPLITS, counts))}) but there are "
            f"only {total}; lower the sizes."
        )
    if counts[0] == 0 or counts[2] == 0 or counts[3] == 0:
        raise InputError("train_size, nonmember_size and test_size must all be > 0 for a membership audit.")
    indices = _cut(np.random.default_rng(seed).permutation(total), SPLITS, counts)
    provenance = {name: {"from": f"{source}, rows drawn at random (seed {seed})"} for name in SPLITS}
    parts = {name: (x[idx], y[idx]) for name, idx in indices.items()}
    return MembershipSplits(indices=indices, provenance=provenance, **parts)


def membership_split_from_train_test(x_train, y_train, x_test, y_test, seed=0, validation_size=0.1,
                                     nonmember_size=None, test_size=None, reference_size=0, train_size=None,
                                     source=None):
    """Splits that respect a given train/test split (e.g. the data a user's model was trained on).

    Members (``train``) and ``validation`` come only from ``x_train``; audit ``nonmembers``,
    ``reference`` and ``test`` come only from ``x_test``, disjoint. A model trained on
    ``x_train`` is therefore audited on true members against true non-members. The validation
    rows are held out from fine-tuning, but a model already trained on all of ``x_train`` has
    seen them: give ``reference_size > 0`` so simulated attackers get real non-members.

    Args:
        x_train, y_train: the training part (members).
        x_test, y_test: the held-out part.
        seed: seeds both permutations.
        validation_size: fraction of ``x_train`` (float < 1) or count held out for selection.
        nonmember_size: fraction of ``x_test`` or count; default balanced with the members:
            ``min(len(train), (len(x_test) - reference) // 2)``.
        test_size: fraction of ``x_test`` or count; default every remaining ``x_test`` row.
        reference_size: fraction of ``x_test`` or count of extra non-members (default 0).
        train_size: cap on the members (fraction of ``x_train`` or count); default all the rest.
        source: how the report names the data (e.g. ``"my.npz"``).

    Returns:
        :class:`MembershipSplits` whose ``indices`` index ``x_train`` (train, validation) or
        ``x_test`` (nonmembers, test, reference) as ``provenance`` says.

    Raises:
        InputError: NaN data, bad labels, shapes that differ between the parts, or sizes that do
            not fit.
    """
    x_train = _features(x_train, "x_train")
    x_test = _features(x_test, "x_test", x_train.shape[1:])
    y_train = check_labels(y_train, name="y_train", n=len(x_train))
    y_test = check_labels(y_test, name="y_test", n=len(x_test))
    n_val = _count(validation_size, len(x_train), "validation_size")
    n_train = len(x_train) - n_val if train_size is None else _count(train_size, len(x_train), "train_size")
    if n_train <= 0 or n_train + n_val > len(x_train):
        raise InputError(f"x_train has {len(x_train)} rows: not enough for {n_val} validation rows and "
                         f"{n_train} members; lower validation_size or train_size.")
    n_ref = _count(reference_size, len(x_test), "reference_size")
    n_non = (min(n_train, (len(x_test) - n_ref) // 2) if nonmember_size is None
             else _count(nonmember_size, len(x_test), "nonmember_size"))
    n_test = (len(x_test) - n_ref - n_non if test_size is None else _count(test_size, len(x_test), "test_size"))
    if n_non <= 0 or n_test <= 0 or n_non + n_test + n_ref > len(x_test):
        raise InputError(f"x_test has {len(x_test)} rows: not enough for {n_non} audit non-members, {n_test} test "
                         f"and {n_ref} reference rows (each of non-members and test needs at least one); lower "
                         "the sizes or give more test data.")
    rng = np.random.default_rng(seed)
    indices = _cut(rng.permutation(len(x_train)), ("train", "validation"), (n_train, n_val))
    indices.update(_cut(rng.permutation(len(x_test)), ("nonmembers", "reference", "test"), (n_non, n_ref, n_test)))
    where = f" of {source}" if source else ""
    provenance = {
        "train": {"from": f"x_train{where} (members)"},
        "validation": {"from": f"x_train{where}, held out from fine-tuning"},
        "nonmembers": {"from": f"x_test{where} (never trained on)"},
        "reference": {"from": f"x_test{where} (never trained on)"},
        "test": {"from": f"x_test{where}"},
    }
    parts = {name: ((x_train, y_train) if name in ("train", "validation") else (x_test, y_test)) for name in SPLITS}
    parts = {name: (xs[indices[name]], ys[indices[name]]) for name, (xs, ys) in parts.items()}
    return MembershipSplits(indices=indices, provenance=provenance, **parts)

"""The value range a model expects: decided once, applied the same way by every command, recorded.

A :class:`Preprocessing` maps stored data to model inputs, ``x_model = x * scale + offset``
(``scale`` / ``offset`` scalars, or one per channel / feature along the last axis), and knows
the range the model expects (``expected_range``), so inputs far outside it are flagged.
:func:`decide_preprocessing` chooses it, in this order:

1. an explicit ``normalization``: ``"0-1"``, ``"-1-1"`` (map the data's range onto it),
   ``"none"`` (feed as stored), ``"mean_std"`` (standardize per channel / feature), a dict
   (``{"scale", "offset"}``, ``{"mean", "std"}`` or :meth:`Preprocessing.to_dict`) or a
   :class:`Preprocessing` (warned about when it contradicts a record);
2. the preprocessing recorded with the model (a ``.tflite`` side-car's ``normalization``, a
   compress run's ``run.json``; read by :mod:`tfsafe.preprocessing_record`), fitted to how this
   data is stored (:func:`fit_record`);
3. the model's own ``Rescaling`` / ``Normalization`` layer: the data is fed raw (images stored
   in [0, 1] are mapped onto the raw range the layer expects, as :func:`fit_record` does);
4. the data (``"auto"``): images of 8-bit pixels (``uint8``, or values in [0, 255] with a
   maximum above 2) are scaled by 1/255 to [0, 1], which tfsafe's image models expect;
   images already in [0, 1] or [-1, 1], tabular features and token sequences are fed as
   stored.

:func:`check_range` warns (:class:`InputRangeWarning`) with the observed and expected numbers;
:func:`default_attack_eps` gives the PGD radius for the data's kind and range.
"""

import dataclasses
import warnings

import numpy as np

from tfsafe.data import DATA_KINDS, data_kind, leading_layers
from tfsafe.errors import InputError

__all__ = ["Preprocessing", "decide_preprocessing", "model_preprocessing", "check_range", "range_message",
           "fit_record", "InputRangeWarning", "default_attack_eps", "NORMALIZATIONS", "SCHEMA"]

SCHEMA = "tfsafe.preprocessing/1"
NORMALIZATIONS = ("auto", "0-1", "-1-1", "none", "mean_std")
_TARGETS = {"0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0)}


class InputRangeWarning(UserWarning):
    """Inputs far outside (or in a tiny part of) the range the model expects."""


def _divisor(scale):
    """``d`` when a scalar ``scale`` is ``1/d`` for a whole or half-whole ``d`` (255, 127.5), else None."""
    if isinstance(scale, tuple) or scale == 0:
        return None
    d = 1.0 / scale
    return round(d * 2) / 2 if abs(d * 2 - round(d * 2)) < 1e-9 * abs(d) else None


def _params(value, name):
    arr = np.asarray(value, np.float64)
    if arr.ndim > 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InputError(f"Preprocessing {name} must be a finite number or a list of them, got {value!r}.")
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How stored data becomes model input: ``x * scale + offset``.

    Attributes:
        mode: ``"0-1"``, ``"-1-1"``, ``"none"``, ``"mean_std"``, ``"custom"`` or ``"model"``
            (the model rescales its inputs itself; data fed raw).
        scale, offset: float, or a tuple with one value per channel / feature (last axis).
        expected_range: ``(low, high)`` the model's input should lie in after :meth:`apply`,
            or ``None`` when there is no such range (standardized or tabular data).
        source: ``"argument"``, ``"model"``, ``"data"`` or ``"record"`` (read back from JSON).
        reason: one line saying what was decided and why (for the report).
        keep_dtype: integer inputs (token ids) stay integers.
    """

    mode: str = "none"
    scale: object = 1.0
    offset: object = 0.0
    expected_range: tuple = None
    source: str = "data"
    reason: str = "data fed as stored"
    keep_dtype: bool = False

    def __post_init__(self):
        scale, offset = _params(self.scale, "scale"), _params(self.offset, "offset")
        if np.any(np.asarray(scale) == 0):
            raise InputError("Preprocessing scale must be non-zero.")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", offset)
        if self.expected_range is not None:
            lo, hi = (float(v) for v in self.expected_range)
            if not lo < hi:
                raise InputError(f"Preprocessing expected_range must be (low, high) with low < high, got "
                                 f"{self.expected_range}.")
            object.__setattr__(self, "expected_range", (lo, hi))

    @property
    def is_identity(self):
        """True when :meth:`apply` only converts the dtype."""
        return np.all(np.asarray(self.scale) == 1.0) and np.all(np.asarray(self.offset) == 0.0)

    def apply(self, x, check=True, name="data"):
        """``x`` as the model takes it: float32 ``x * scale + offset`` (integer tokens kept with ``keep_dtype``).

        The arithmetic is float32 on the cast input, and a scale of ``1/d`` for a whole ``d``
        (1/255, 1/127.5 -> d = 255, 127.5) divides by ``d``: ``uint8`` pixels, the same pixels
        stored as whole-number floats, and pixels stored as ``x / 255`` give identical arrays.

        Args:
            x: array (N, ...); per-channel / per-feature parameters act on the last axis.
            check: warn (:class:`InputRangeWarning`) when the result is far outside
                ``expected_range``.
            name: what the warning calls the data (e.g. the file and key).

        Raises:
            InputError: non-numeric data, or per-channel parameters that do not match the last axis.
        """
        x = np.asarray(x)
        if x.dtype.kind not in "fiub" or x.ndim == 0:
            raise InputError(f"{name} must be a numeric array of examples to preprocess, got dtype {x.dtype}, "
                             f"shape {x.shape}.")
        for value, what in ((self.scale, "scale"), (self.offset, "offset")):
            if isinstance(value, tuple) and (x.ndim < 2 or x.shape[-1] != len(value)):
                raise InputError(f"{name} has last axis {x.shape[-1:]} but the preprocessing has {len(value)} "
                                 f"per-channel {what} values; it was decided on data of another shape.")
        if self.is_identity:
            out = x if self.keep_dtype and x.dtype.kind in "iu" else x.astype(np.float32, copy=False)
        else:
            out = x.astype(np.float32)  # a copy: the user's array is never changed
            divisor = _divisor(self.scale)
            if divisor is not None:
                out /= np.float32(divisor)
            else:
                out *= np.asarray(self.scale, np.float32)
            if np.any(np.asarray(self.offset) != 0):
                out += np.asarray(self.offset, np.float32)
        if check and self.expected_range is not None and out.size:
            check_range(out, self.expected_range, name=name, stacklevel=3)
        return out

    def describe(self):
        """One line for logs and reports."""
        def fmt(v):
            return f"{v:.6g}" if isinstance(v, float) else f"per-channel ({len(v)} values)"

        rng = "" if self.expected_range is None else f", model input in [{self.expected_range[0]:g}, " \
                                                     f"{self.expected_range[1]:g}]"
        return f"{self.mode}: x * {fmt(self.scale)} + {fmt(self.offset)}{rng} ({self.reason}; from the {self.source})"

    def to_dict(self):
        """JSON-able record (for ``run.json`` and the ``.tflite`` side-car's ``normalization``)."""
        def plain(v):
            return list(v) if isinstance(v, tuple) else v

        return {"schema": SCHEMA, "mode": self.mode, "formula": "x_model = x * scale + offset",
                "scale": plain(self.scale), "offset": plain(self.offset),
                "expected_range": None if self.expected_range is None else list(self.expected_range),
                "source": self.source, "reason": self.reason, "keep_dtype": self.keep_dtype}

    @classmethod
    def from_dict(cls, record):
        """Inverse of :meth:`to_dict`; also reads ``{"scale", "offset"}`` and ``{"mean", "std"}``.

        Raises:
            InputError: not a dict, unknown keys, or bad values.
        """
        if not isinstance(record, dict):
            raise InputError(f"A preprocessing record must be a dict, got {type(record).__name__}.")
        record = dict(record)
        if "mean" in record or "std" in record:
            mean, std = record.pop("mean", 0.0), record.pop("std", 1.0)
            std = np.where(np.asarray(std, np.float64) == 0, 1.0, np.asarray(std, np.float64))
            record.setdefault("mode", "mean_std")
            record["scale"], record["offset"] = (1.0 / std).tolist(), (-np.asarray(mean, np.float64) / std).tolist()
        record.pop("schema", None)
        record.pop("formula", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            known = sorted(fields | {"mean", "std"})
            raise InputError(f"Unknown preprocessing keys {unknown}; expected some of {known}.")
        record.setdefault("mode", "custom")
        record.setdefault("source", "record")
        record.setdefault("reason", "read from a record")
        return cls(**record)


def range_message(xmin, xmax, expected_range, name="data"):
    """What :func:`check_range` would warn about inputs spanning ``[xmin, xmax]``, or ``None``."""
    lo, hi = (float(v) for v in expected_range)
    xmin, xmax = float(xmin), float(xmax)
    span = hi - lo
    if xmin < lo - 0.5 * span or xmax > hi + 0.5 * span:
        hint = ("they look like 8-bit pixels: scale them (normalization='0-1')" if hi <= 1 < xmax <= 255 and xmin >= 0
                else "check the preprocessing (normalization=...)")
        return (f"{name}: model inputs span [{xmin:g}, {xmax:g}] but the model expects about [{lo:g}, {hi:g}]; "
                f"{hint}.")
    if max(abs(xmin), abs(xmax)) < 0.05 * max(abs(lo), abs(hi)):
        return (f"{name}: model inputs span only [{xmin:g}, {xmax:g}] of the expected [{lo:g}, {hi:g}]; the data "
                "may be scaled twice (e.g. by 1/255 before a model with its own Rescaling layer).")
    return None


def check_range(x, expected_range, name="data", stacklevel=2):
    """Warn when ``x`` lies far outside ``expected_range`` or in a tiny part of it.

    "Far outside" is more than half the range's width beyond either end (uint8 pixels into a
    [0, 1] model: max 255 > 1.5); "tiny part" is every value within 5% of the range's largest
    magnitude (data scaled twice: max 1/255 into a [0, 255] model).

    Returns:
        The warning's message, or ``None`` when the data fits.
    """
    x = np.asarray(x)
    message = range_message(np.min(x), np.max(x), expected_range, name=name)
    if message:
        warnings.warn(message, InputRangeWarning, stacklevel=stacklevel)
    return message


def model_preprocessing(model):
    """The :class:`Preprocessing` a model's own leading ``Rescaling`` / ``Normalization`` layer implies, or None.

    The data is then fed raw (identity); ``expected_range`` is the raw range the layer maps
    onto [0, 1] (or [-1, 1] when its offset is negative), e.g. [0, 255] for ``Rescaling(1/255)``.
    """
    for layer in leading_layers(model):
        kind = type(layer).__name__
        if kind == "Rescaling":
            config = layer.get_config()
            scale, offset = config.get("scale", 1.0), config.get("offset", 0.0)
            raw = None
            if np.ndim(scale) == 0 and np.ndim(offset) == 0 and float(scale) != 0:
                target = (-1.0, 1.0) if float(offset) < 0 else (0.0, 1.0)
                raw = tuple(sorted((t - float(offset)) / float(scale) for t in target))
            what = f"scale {scale:g}, offset {offset:g}" if raw else "per-channel"
            return Preprocessing("model", expected_range=raw, source="model",
                                 reason=f"the model's Rescaling layer '{layer.name}' ({what}) scales its inputs, so "
                                        "data is fed as stored")
        if kind == "Normalization":
            return Preprocessing("model", source="model",
                                 reason=f"the model's Normalization layer '{layer.name}' standardizes its inputs, so "
                                        "data is fed as stored")
    return None


def _value_range(x):
    return (float(np.min(x)), float(np.max(x))) if np.size(x) else (0.0, 1.0)


def _is_pixels(x, lo, hi):
    return x.dtype == np.uint8 or (lo >= 0 and 2 < hi <= 255)


def _from_data(x, kind):
    lo, hi = _value_range(x)
    if kind == "sequence":
        return Preprocessing("none", keep_dtype=True, reason="token sequences are fed as stored")
    if kind == "image" and _is_pixels(x, lo, hi):
        what = "uint8" if x.dtype == np.uint8 else "8-bit-range"
        return Preprocessing("0-1", scale=1 / 255, expected_range=(0, 1),
                             reason=f"{what} images (values {lo:g}..{hi:g}) scaled by 1/255 to [0, 1]")
    if kind == "image" and lo >= -1 and hi <= 1:
        target = (0, 1) if lo >= 0 else (-1, 1)
        return Preprocessing("none", expected_range=target,
                             reason=f"images already in [{target[0]}, {target[1]}] fed as stored")
    return Preprocessing("none", reason=f"{kind} data (values {lo:g}..{hi:g}) fed as stored; pass "
                                        "normalization='0-1' or 'mean_std' to rescale")


def _source_range(x, kind):
    """The range ``"0-1"`` / ``"-1-1"`` maps from: pixels [0, 255], else the data's own range."""
    lo, hi = _value_range(x)
    if kind == "image":
        for known in ((0.0, 1.0), (-1.0, 1.0)):
            if known[0] <= lo and hi <= known[1]:
                return known
        return (0.0, 255.0) if _is_pixels(x, lo, hi) else (lo, hi if hi > lo else lo + 1)
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    low, high = flat.min(axis=0), flat.max(axis=0)
    return low, np.where(high > low, high, low + 1)


def _explicit(x, normalization, kind):
    if normalization == "none":
        return Preprocessing("none", source="argument", keep_dtype=kind == "sequence",
                             reason="normalization='none': data fed as stored")
    if kind == "sequence":
        raise InputError(f"normalization='{normalization}' cannot rescale integer token sequences; pass "
                         "normalization='none' (or leave it out).")
    if normalization in _TARGETS:
        t0, t1 = _TARGETS[normalization]
        s0, s1 = _source_range(x, kind)
        scale = (t1 - t0) / (np.asarray(s1, np.float64) - np.asarray(s0, np.float64))
        offset = t0 - np.asarray(s0, np.float64) * scale
        per = "" if np.ndim(scale) == 0 else " per feature"
        src = f"[{s0:g}, {s1:g}]" if np.ndim(scale) == 0 else "each feature's min..max"
        return Preprocessing(normalization, scale=scale, offset=offset, expected_range=(t0, t1), source="argument",
                             reason=f"normalization='{normalization}': {src} mapped{per} to [{t0:g}, {t1:g}]")
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    what = "channel" if kind == "image" else "feature"
    return Preprocessing("mean_std", scale=1 / std, offset=-mean / std, source="argument",
                         reason=f"normalization='mean_std': standardized per {what} with the training data's "
                                "mean and standard deviation")


def _stored_range(x):
    """The known range images ``x`` are stored in ([0, 1], [-1, 1] or 8-bit pixels [0, 255]), or None."""
    lo, hi = _value_range(x)
    for known in ((0.0, 1.0), (-1.0, 1.0)):
        if known[0] <= lo and hi <= known[1]:
            return known
    return (0.0, 255.0) if _is_pixels(x, lo, hi) else None


_KNOWN_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))


def _known(value_range):
    """``value_range`` as one of the known image ranges it matches, or None."""
    for known in _KNOWN_RANGES:
        if np.allclose(value_range, known, rtol=0, atol=1e-3 * (known[1] - known[0])):
            return known
    return None


def fit_record(x, record, kind=None):
    """The recorded preprocessing, fitted to how ``x`` is stored.

    A record (a ``.tflite`` side-car's ``normalization``, a run's ``run.json``, a model's own
    Rescaling layer) maps the data *as the run stored it* to model inputs, e.g. ``x / 255`` for
    ``uint8`` pixels; the same images stored as floats in [0, 1] must then be fed as they are,
    not divided by 255 again. Rule, for images and a scalar record with an ``expected_range``:
    the stored range the record implies (``expected_range`` mapped back through ``scale`` and
    ``offset``: [0, 255] for ``x / 255`` into [0, 1]) and the range ``x`` is stored in are both
    known image ranges ([0, 1], [-1, 1], 8-bit pixels [0, 255]) and differ: then ``x``'s range is
    mapped linearly onto the recorded model input range (``[0, 1]`` data into a raw-pixel
    model: ``x * 255``). Otherwise (the same storage, an unknown range, per-channel or
    per-feature statistics, no expected range, tabular data, token ids) the record is applied
    as it is; :meth:`Preprocessing.apply` then warns if it does not fit.

    Args:
        x: the data as stored.
        record: a :class:`Preprocessing` or its dict (:meth:`Preprocessing.to_dict`).
        kind: the data's kind; default :func:`tfsafe.data.data_kind`.

    Returns:
        A :class:`Preprocessing` (the record's ``source``; ``reason`` says when it was mapped).
    """
    x = np.asarray(x)
    if not isinstance(record, Preprocessing):
        record = Preprocessing.from_dict(record)
    kind = kind or data_kind(x)
    scalar = not isinstance(record.scale, tuple) and not isinstance(record.offset, tuple)
    if kind != "image" or record.expected_range is None or not scalar or not x.size:
        return record
    implied = _known(sorted((t - record.offset) / record.scale for t in record.expected_range))
    stored = _stored_range(x)
    if implied is None or stored is None or stored == implied:
        return record
    (s0, s1), (t0, t1) = stored, record.expected_range
    scale = (t1 - t0) / (s1 - s0)
    return dataclasses.replace(
        record, scale=scale, offset=t0 - s0 * scale,
        reason=f"{record.reason}; this data is stored in [{s0:g}, {s1:g}] (not [{implied[0]:g}, {implied[1]:g}]), so "
               f"it is mapped onto the recorded model input range [{t0:g}, {t1:g}]")


def _warn_if_contradicts(x, decided, recorded, kind):
    """Warn when an explicit normalization feeds ``x`` otherwise than the model's record would."""
    sample = x[:256]
    fitted = fit_record(x, recorded, kind)
    try:
        ours, theirs = decided.apply(sample, check=False), fitted.apply(sample, check=False)
    except InputError:
        ours = theirs = None
    if ours is not None and ours.shape == theirs.shape and (not ours.size or np.allclose(
            ours, theirs, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(theirs).max())))):
        return
    span = "" if ours is None or not ours.size else (
        f" gives model inputs in [{ours.min():g}, {ours.max():g}] where the record gives "
        f"[{theirs.min():g}, {theirs.max():g}]")
    warnings.warn(f"normalization='{decided.mode}'{span}: it contradicts the preprocessing recorded with the model "
                  f"({fitted.describe()}); the explicit normalization is used, leave it out to follow the record.",
                  InputRangeWarning, stacklevel=3)


def decide_preprocessing(x, normalization=None, model=None, kind=None, recorded=None):
    """Decide once how ``x`` (training data as stored) becomes model input.

    Args:
        x: the training data as stored (e.g. ``uint8`` images); statistics for ``"0-1"`` on
            tabular data and ``"mean_std"`` come from it.
        normalization: ``None`` / ``"auto"``, ``"0-1"``, ``"-1-1"``, ``"none"``, ``"mean_std"``,
            a dict or a :class:`Preprocessing` (see the module docstring for the order).
        model: optional Keras model; its own ``Rescaling`` / ``Normalization`` layer wins over
            the data rule (an explicit ``normalization`` still wins, with a warning).
        kind: ``"image"``, ``"tabular"`` or ``"sequence"``; default :func:`tfsafe.data.data_kind`.
        recorded: the preprocessing recorded with the model (a :class:`Preprocessing` or its
            dict; :func:`tfsafe.preprocessing_record.recorded_preprocessing`): used, fitted to
            ``x`` (:func:`fit_record`), unless ``normalization`` is given; an explicit
            ``normalization`` that feeds ``x`` otherwise is warned about.

    Returns:
        A :class:`Preprocessing`.

    Raises:
        InputError: an unknown normalization, or a rescaling asked of token sequences.

    Example:
        >>> pre = decide_preprocessing(np.zeros((2, 4, 4, 3), np.uint8))
        >>> pre.mode, pre.expected_range
        ('0-1', (0.0, 1.0))
    """
    x = np.asarray(x)
    if recorded is not None and not isinstance(recorded, Preprocessing):
        recorded = Preprocessing.from_dict(recorded)
    if kind is not None and kind not in DATA_KINDS:
        raise InputError(f"Unknown data kind {kind!r}; choose one of {', '.join(DATA_KINDS)}.")
    if isinstance(normalization, Preprocessing):
        decided = normalization
    elif isinstance(normalization, dict):
        decided = dataclasses.replace(Preprocessing.from_dict(normalization), source="argument")
    elif normalization is not None and normalization not in NORMALIZATIONS:
        raise InputError(f"Unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}, or "
                         "pass {'scale': s, 'offset': o} / {'mean': m, 'std': s}.")
    else:
        kind = kind or data_kind(x, model)
        if normalization in (None, "auto") and recorded is not None:
            return fit_record(x, recorded, kind)
        own = model_preprocessing(model) if model is not None else None
        if normalization in (None, "auto"):
            # The layer's raw range is a record too: [0, 1] images into a Rescaling(1/255) model are mapped onto it.
            return fit_record(x, own, kind) if own is not None else _from_data(x, kind)
        if own is not None and normalization != "none":
            warnings.warn(f"The model already scales its inputs ({own.reason}); normalization='{normalization}' "
                          "rescales the data before that layer too. Leave normalization out to feed the data as the "
                          "layer expects.", InputRangeWarning, stacklevel=2)
        decided = _explicit(x, normalization, kind)
    if recorded is not None:
        _warn_if_contradicts(x, decided, recorded, kind or data_kind(x, model))
    return decided


def default_attack_eps(x, preprocessing=None, kind=None, model=None):
    """The default L-inf PGD radius for data ``x`` (as fed to the model), and the rule that gave it.

    Rule, as a fraction of the model input's range (``preprocessing.expected_range`` when known,
    else the data's min..max): RGB images (3+ channels) 8/255 (the CIFAR-10 convention);
    grayscale images of 28x28 or more 0.3 (MNIST); smaller grayscale images 0.1 (0.3 erases
    8x8 digits); tabular data 0.1 of the median per-feature range (max - min over ``x``,
    constant features left out). Token sequences get none: PGD does not apply to token ids.
    The evaluation radii are the headline times (1/4, 1/2, 1) for RGB images (2, 4, 8 /255)
    and (1/3, 2/3, 1) otherwise (0.1, 0.2, 0.3 on MNIST).

    Returns:
        ``{"eps": headline or None, "radii": (three radii) or (), "kind": kind, "rule": "..."}``.
    """
    x = np.asarray(x)
    kind = kind or data_kind(x, model)
    if kind == "sequence":
        return {"eps": None, "radii": (), "kind": kind,
                "rule": "no PGD radius: gradient attacks do not apply to integer token inputs"}
    lo, hi = (preprocessing.expected_range if preprocessing is not None and preprocessing.expected_range
              else _value_range(x))
    span = (hi - lo) or 1.0
    thirds = (1 / 3, 2 / 3, 1.0)
    if kind == "image":
        channels = x.shape[-1] if x.ndim == 4 else 1
        if channels >= 3:
            frac, rule, steps = 8 / 255, "8/255 of the input range for RGB images", (0.25, 0.5, 1.0)
        elif int(np.prod(x.shape[1:3])) >= 28 * 28:
            frac, rule, steps = 0.3, "0.3 of the input range for grayscale images of 28x28 or more", thirds
        else:
            frac, rule, steps = 0.1, "0.1 of the input range for grayscale images under 28x28", thirds
        eps = frac * span
        rule += f" ([{lo:g}, {hi:g}])"
    else:
        flat = x.reshape(len(x), -1).astype(np.float64)
        ranges = flat.max(axis=0) - flat.min(axis=0)
        ranges = ranges[ranges > 0]
        median = float(np.median(ranges)) if ranges.size else span
        eps, steps = 0.1 * median, thirds
        rule = f"0.1 of the median per-feature range ({median:g})"
    return {"eps": float(eps), "radii": tuple(float(eps * s) for s in steps), "kind": kind, "rule": rule}

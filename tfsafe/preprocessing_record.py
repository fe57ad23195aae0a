"""The preprocessing a model was made with, read back, and whether a model's accuracy says it was wrong.

:func:`recorded_preprocessing` reads what tfsafe recorded next to a model file: a ``.tflite``
file's side-car ``<file>.tflite.json`` (``normalization``, a
:meth:`~tfsafe.preprocessing.Preprocessing.to_dict` record written by ``tfsafe export`` and
``tfsafe compress``; for side-cars without one, the calibration ``input.value_range`` when it is
a known image range), or the ``run.json`` of the ``tfsafe compress`` run folder a ``.keras`` /
``.h5`` model lies in (``settings.preprocessing``). Every command that feeds data to a saved
model (``audit``, ``export``, ``bench``) passes it to
:func:`~tfsafe.preprocessing.decide_preprocessing`, so a model made for raw pixels is not fed
pixels scaled by 1/255 (and the reverse).

:func:`accuracy_check` says whether a model's accuracy on the data is evidence of wrong
preprocessing, with the numbers.

This module only reads JSON; it imports neither TensorFlow nor ``tflite_export``.
"""

import dataclasses
import json
import os

import numpy as np

from tfsafe.errors import InputError
from tfsafe.preprocessing import Preprocessing, range_message

__all__ = ["recorded_preprocessing", "audit_set_preprocessing", "accuracy_check", "RUN_FILE"]

RUN_FILE = "run.json"  # tfsafe.pipeline.run_state.RUN_FILE (not imported: the pipeline imports TensorFlow)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"'{path}' is not readable JSON ({err}); restore it from the export, or remove it to "
                         "audit without the record (then pass --normalization).") from err


def _snap(value_range):
    """A calibration range as the known image input range it samples, or None."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        return None
    if -1.0 <= lo and hi <= 1.0 and hi > 0.5:
        return (-1.0, 1.0) if lo < -0.25 else (0.0, 1.0)
    if 0.0 <= lo and 2.0 < hi <= 255.0 and hi > 127.0:
        return (0.0, 255.0)
    return None


def _from_record(record, where):
    if not isinstance(record, dict):
        raise InputError(f"{where} records a normalization that is not a dict ({record!r}); fix or remove it.")
    try:
        pre = Preprocessing.from_dict(record)
    except InputError as err:
        raise InputError(f"{where} holds an unreadable normalization record: {err}") from err
    return dataclasses.replace(pre, source="record", reason=f"recorded in {where}: {pre.reason}")


def recorded_preprocessing(model_path):
    """The :class:`~tfsafe.preprocessing.Preprocessing` recorded with a saved model, or None.

    Args:
        model_path: a ``.tflite`` file (its side-car ``<file>.json``) or a ``.keras`` / ``.h5``
            model (the ``run.json`` of its folder, when that is a ``tfsafe compress`` run).

    Returns:
        The record (``source`` ``"record"``, ``reason`` naming the file), or ``None`` when there
        is none. A side-car without ``normalization`` but with a calibration range of [0, 1],
        [-1, 1] or 8-bit pixels gives a feed-as-stored record with that ``expected_range``
        (then :func:`~tfsafe.preprocessing.fit_record` maps images stored otherwise onto it).

    Raises:
        InputError: the side-car or ``run.json`` exists but cannot be read, or its record is
            malformed.
    """
    path = os.fspath(model_path)
    if path.endswith(".tflite"):
        side = path + ".json"
        if not os.path.isfile(side):
            return None
        sidecar = _read_json(side)
        where = f"the side-car '{side}'"
        if not isinstance(sidecar, dict):
            raise InputError(f"{where} is not a JSON object; restore it from the export or remove it.")
        if sidecar.get("normalization") is not None:
            return _from_record(sidecar["normalization"], where)
        value_range = (sidecar.get("input") or {}).get("value_range")
        snapped = _snap(value_range) if value_range is not None else None
        if snapped is None:
            return None
        return Preprocessing("none", expected_range=snapped, source="record",
                             reason=f"{where} records no normalization; the file was calibrated on inputs in "
                                    f"[{value_range[0]:g}, {value_range[1]:g}]")
    run = os.path.join(os.path.dirname(os.path.abspath(path)), RUN_FILE)
    if not path.endswith((".keras", ".h5")) or not os.path.isfile(run):
        return None
    return _run_record(run)


def _run_record(run):
    record = (_read_json(run).get("settings") or {}).get("preprocessing")
    return None if record is None else _from_record(record, f"the run record '{run}'")


def audit_set_preprocessing(path):
    """Feed-as-stored preprocessing for an audit set a ``tfsafe compress`` run wrote, or None.

    ``<run>/audit/members.npz`` and ``nonmembers.npz`` hold model inputs (the run's
    preprocessing already applied), so they must not be preprocessed again; the run's record
    still gives the range the model expects (checked as usual).

    Args:
        path: an ``.npz`` given to ``tfsafe audit --members`` / ``--nonmembers``.

    Returns:
        A :class:`~tfsafe.preprocessing.Preprocessing` (identity, the run's ``expected_range``)
        when ``path`` lies in the ``audit`` folder of a run folder with a ``run.json``, else None.
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    run = os.path.join(os.path.dirname(folder), RUN_FILE)
    if os.path.basename(folder) != "audit" or not os.path.isfile(run):
        return None
    record = _run_record(run)
    return Preprocessing("none", expected_range=None if record is None else record.expected_range,
                         source="record", reason=f"'{path}' holds model inputs written by the run in "
                                                 f"'{os.path.dirname(folder)}' (already preprocessed)")


def _accuracy(predict, x, y):
    return float(np.mean(np.asarray(predict(x)).reshape(-1) == np.asarray(y).reshape(-1))) if len(x) else 0.0


def accuracy_check(predict, x, y, num_classes, expected_range=None, kind="image", max_examples=512):
    """Whether a model's accuracy on ``x`` is evidence that its inputs were preprocessed wrongly.

    Rule: warn only when the accuracy is near chance **and** there is a second, independent
    sign of a preprocessing fault. A weak model alone is not one (a model trained on hard or
    random data sits near chance too), and neither is an unusual range alone. Near chance
    means below ``chance + 0.25 * (1 - chance)``, where chance is the better of ``1 /
    num_classes`` and the most frequent label's share (0.325 for 10 balanced classes). The
    second sign is either (a) the inputs lie far outside ``expected_range`` (or in a tiny part
    of it; :func:`~tfsafe.preprocessing.range_message`), or (b) for images, the same inputs
    rescaled the other way (``x / 255`` when their maximum is above 2, else ``x * 255``) are
    classified at least 0.2 more accurately (absolute). Only near chance is (b) measured,
    so a healthy model costs no extra prediction.

    Args:
        predict: ``x -> predicted class ids``.
        x: model inputs (after preprocessing), ``(N, ...)``; the first ``max_examples`` are used.
        y: class ids ``(N,)``.
        num_classes: the model's classes.
        expected_range: ``(low, high)`` the model expects, if known.
        kind: ``"image"``, ``"tabular"`` or ``"sequence"``.
        max_examples: examples to predict at most.

    Returns:
        ``{"accuracy", "n", "chance", "near_chance", "range": message or None,
        "alternative": {"inputs", "accuracy"} or None, "warn": bool, "message": str or None}``.
    """
    x, y = np.asarray(x)[:max_examples], np.asarray(y).reshape(-1)[:max_examples]
    accuracy = _accuracy(predict, x, y)
    counts = np.bincount(y.astype(np.int64), minlength=max(int(num_classes), 1)) if y.size else np.ones(1)
    chance = max(1.0 / max(int(num_classes), 1), float(counts.max() / max(counts.sum(), 1)))
    near = accuracy < chance + 0.25 * (1.0 - chance)
    result = {"accuracy": accuracy, "n": int(len(x)), "chance": chance, "near_chance": bool(near), "range": None,
              "alternative": None, "warn": False, "message": None}
    if not near or not x.size:
        return result
    if expected_range is not None:
        result["range"] = range_message(x.min(), x.max(), expected_range, name="the inputs")
    if kind == "image":
        xf = x.astype(np.float32)
        raw = float(np.abs(xf).max()) > 2.0
        other = xf / np.float32(255) if raw else xf * np.float32(255)
        alt = _accuracy(predict, other, y)
        result["alternative"] = {"inputs": "x / 255" if raw else "x * 255", "accuracy": alt}
    alt = result["alternative"]
    better = alt is not None and alt["accuracy"] >= accuracy + 0.2
    if result["range"] or better:
        signs = [result["range"][len("the inputs: "):].rstrip(".")] if result["range"] else []
        if better:
            signs.append(f"the same inputs as {alt['inputs']} are classified with accuracy {alt['accuracy']:.3f}")
        result["warn"] = True
        result["message"] = (f"accuracy {accuracy:.3f} on {len(x)} examples is near chance ({chance:.3f} for "
                             f"{int(num_classes)} classes) and {'; and '.join(signs)}: the preprocessing is probably "
                             "wrong, check --normalization.")
    return result

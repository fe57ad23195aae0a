"""Does this data fit this model? Shapes, channels, NaN values, labels and the value range.

:func:`check_data_matches_model` is called wherever a dataset meets a model (``compress``,
``audit``, ``export``, ``bench``): a mismatch is one line that names the data, the model and the
fix (resize, convert to grayscale, add a channel axis, map labels to class ids, rescale).

Example:
    >>> data = load_user_data("my.npz")  # doctest: +SKIP
    >>> splits = data.splits(seed=0, preprocessing=data.preprocessing_for(model))  # doctest: +SKIP
    >>> check_data_matches_model(model, *splits.test, name=data.name)  # doctest: +SKIP
"""

import json
import os

import numpy as np

from tfsafe.data import data_kind
from tfsafe.errors import InputError
from tfsafe.preprocessing import check_range, model_preprocessing
from tfsafe.validation import check_features, check_labels, model_input_shape, model_num_classes

__all__ = ["check_data_matches_model"]


_CHANNEL_NAMES = {1: "grayscale", 3: "RGB", 4: "RGBA"}


def _channels(n):
    name = _CHANNEL_NAMES.get(n)
    return f"{n} channel{'' if n == 1 else 's'}" + (f" ({name})" if name else "")


def _channel_fix(got, expected):
    if expected == 1 and got in (3, 4):
        return ("convert the images to grayscale (arrays: tf.image.rgb_to_grayscale; image files: save them as "
                f"grayscale) or rebuild the model's Input with {got} channels and retrain it")
    if got == 1 and expected == 3:
        return ("repeat the gray channel (np.repeat(x, 3, axis=-1)) or rebuild the model's Input with 1 channel and "
                "retrain it")
    return f"give the images {expected} channels or rebuild the model's Input with {got} channels and retrain it"


def _shape_hint(got, expected, kind):
    if len(got) + 1 == len(expected) and expected[-1] == 1 and tuple(expected[:-1]) == tuple(got):
        return "add a channel axis (x[..., None])"
    if kind == "image" and len(got) == len(expected) == 3:
        hints = []
        if any(e is not None and e != g for e, g in zip(expected[:2], got[:2])):
            size = tuple(expected[:2])
            hints.append(f"resize the images to {size} (image folders: --image_size {size[0]},{size[1]}; arrays: "
                         "tf.image.resize)")
        if expected[-1] is not None and expected[-1] != got[-1]:
            hints.append(f"the data has {_channels(got[-1])} but the model takes {_channels(expected[-1])}: "
                         f"{_channel_fix(got[-1], expected[-1])}")
        return "; and ".join(hints)
    if kind == "tabular" and len(got) == len(expected) == 1:
        return (f"the data has {got[0]} feature columns and the model takes {expected[0]}: check label_column and "
                "drop id or extra columns")
    return "reshape the data to the model's input"


def check_data_matches_model(model, x, y=None, name="data", expected_range=None, range_checked=False):
    """Check data (as fed to the model) against a model; one line naming the fix when it does not fit.

    Checks the per-example shape, NaN / infinite values, that labels are class ids the model
    has, and the value range (:class:`~tfsafe.preprocessing.InputRangeWarning`): against
    ``expected_range`` when given, else a ``.tflite`` file's side-car calibration
    ``value_range``, else the raw range a model's own ``Rescaling`` layer expects (data scaled
    twice), else [0, 1] for 8-bit pixel values fed to an image model without such a layer.

    Args:
        model: Keras model (tf_keras or Keras 3), or a loaded ``.tflite`` model
            (:class:`tflite_export.runtime.TFLiteModel`).
        x: inputs after preprocessing.
        y: labels (class ids or one-hot), optional.
        name: the data's name in messages (e.g. the file).
        expected_range: ``(low, high)`` the model's inputs should lie in, if known.
        range_checked: True when the caller's preprocessing already checked the value range
            against what the model expects (one warning per array, not two).

    Returns:
        ``(x, y)`` checked (``y`` as int64 class ids, or None).

    Raises:
        InputError: wrong shape, NaN values, or labels outside the model's classes.
    """
    keras_model = hasattr(model, "inputs") and hasattr(model, "outputs")
    expected = tuple(model_input_shape(model) if keras_model else model.input_shape)
    model_name = getattr(model, "name", None) or getattr(model, "path", "model")
    x = np.asarray(x)
    got = x.shape[1:]
    kind = data_kind(x) if x.ndim >= 2 else "tabular"
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise InputError(f"{name} has examples shaped {got} but the model '{model_name}' takes {expected}; "
                         f"{_shape_hint(got, expected, kind)}.")
    x = check_features(x, f"{name} inputs", dtype=None)
    if y is not None:
        classes = model_num_classes(model) if keras_model else int(model.num_classes)
        y = check_labels(y, name=f"{name} labels", n=len(x))
        if y.size and y.max() >= classes:
            hint = ("they look 1-based: subtract 1" if y.min() == 1 and y.max() == classes else
                    f"map them to class ids 0..{classes - 1}, or pass a model with {int(y.max()) + 1} classes")
            raise InputError(f"{name} has label {int(y.max())} (its largest) but the model '{model_name}' has "
                             f"{classes} classes (outputs 0..{classes - 1}); {hint}.")
    if range_checked:
        return x, y
    label = f"{name} inputs"
    side = os.fspath(getattr(model, "path", "")) + ".json"
    if expected_range is None and not keras_model and os.path.isfile(side):
        with open(side) as f:
            expected_range = json.load(f).get("input", {}).get("value_range")
            label += f" (the .tflite was calibrated on {expected_range})"
    own = model_preprocessing(model) if keras_model and expected_range is None else None
    if own is not None:
        expected_range = own.expected_range
        label += " (the model rescales its inputs itself)"
    elif expected_range is None and kind == "image" and keras_model and x.size:
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and 2 < hi <= 255:
            expected_range = (0.0, 1.0)
            label += " (8-bit pixel values into a model without a Rescaling layer)"
    if expected_range is not None and x.size:
        check_range(x, expected_range, name=label, stacklevel=3)
    return x, y

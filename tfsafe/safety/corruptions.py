"""Natural corruptions at 5 severities, and accuracy / mCE under them.

Eight corruptions in the style of Hendrycks & Dietterich's ImageNet-C / CIFAR-10-C: Gaussian,
shot and impulse noise, Gaussian blur, contrast, brightness, pixelate and JPEG. They work on
grayscale or RGB images in [0, 1] shaped (N, H, W, C) and are deterministic for a given seed
(each corruption and severity draws from its own seeded generator). The blur sigma is in
pixels for images up to 32 pixels (digits, MNIST, CIFAR) and grows with larger images.

mCE follows Hendrycks & Dietterich: for each corruption, the model's errors summed over the
severities divided by the reference (usually the dense) model's; mCE is their mean. Below 1
means more robust than the reference.
"""

import io

import numpy as np

from tfsafe._keras import tf
from tfsafe.errors import InputError
from tfsafe.validation import check_features, check_labels

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "corruption_accuracy"]

SEVERITIES = (1, 2, 3, 4, 5)
_PARAMS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise std
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),  # photons per unit intensity
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # fraction of salt-and-pepper pixels
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.3),  # sigma in pixels up to 32 pixels, then scaled by size
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # contrast kept
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to the value channel
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downscale factor
    "jpeg": (25, 18, 15, 10, 7),  # JPEG quality
}
CORRUPTIONS = tuple(_PARAMS)


def _rng(name, severity, seed):
    return np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity)])


def _gaussian_noise(x, c, rng):
    return x + rng.normal(size=x.shape, scale=c).astype(np.float32)


def _shot_noise(x, c, rng):
    return (rng.poisson(x * c) / c).astype(np.float32)


def _impulse_noise(x, c, rng):
    u = rng.random(size=x.shape)
    out = x.copy()
    out[u < c / 2] = 0.0
    out[(u >= c / 2) & (u < c)] = 1.0
    return out


def _gaussian_blur(x, c, rng):
    from scipy.ndimage import gaussian_filter

    sigma = c * max(1.0, max(x.shape[1], x.shape[2]) / 32.0)
    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def _contrast(x, c, rng):
    means = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - means) * c + means


def _brightness(x, c, rng):
    if x.shape[-1] != 3:
        return x + c
    hsv = tf.image.rgb_to_hsv(x).numpy()
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0.0, 1.0)
    return tf.image.hsv_to_rgb(hsv).numpy()


def _pixelate(x, c, rng):
    h, w = x.shape[1:3]
    small = (max(1, int(round(h * c))), max(1, int(round(w * c))))
    down = tf.image.resize(x, small, method="area")
    return tf.image.resize(down, (h, w), method="nearest").numpy()


def _jpeg(x, c, rng):
    from PIL import Image

    out = np.empty_like(x)
    for i, img in enumerate(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=int(c))
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
        out[i] = decoded.reshape(img.shape)
    return out


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur, "contrast": _contrast, "brightness": _brightness,
    "pixelate": _pixelate, "jpeg": _jpeg,
}


def _check_images(x):
    x = check_features(x, "x")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(f"corruptions need images shaped (N, H, W, 1) or (N, H, W, 3), got {x.shape}. "
                         "Add a channel axis with x[..., None] for grayscale images.")
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise InputError(f"corruptions need pixel values in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; "
                         "divide uint8 images by 255.")
    return np.clip(x, 0.0, 1.0)


def _check_name_severity(name, severity):
    if name not in _FUNCTIONS:
        raise InputError(f"Unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise InputError(f"severity must be one of {SEVERITIES}, got {severity!r}.")


def corrupt(x, name, severity, seed=0):
    """Return ``x`` corrupted by ``name`` at ``severity`` (1..5), as float32 in [0, 1].

    Args:
        x: Images (N, H, W, 1 or 3) in [0, 1].
        name: One of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe).
        seed: Seed of the random parts (noise); same seed, same output.

    Example:
        >>> (x, y), _ = tfsafe.load_digits()  # doctest: +SKIP
        >>> corrupt(x[:4], "gaussian_noise", 3).shape  # doctest: +SKIP
        (4, 8, 8, 1)
    """
    _check_name_severity(name, severity)
    x = _check_images(x)
    c = _PARAMS[name][severity - 1]
    out = _FUNCTIONS[name](x, c, _rng(name, severity, seed))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _errors(result):
    return {name: sum(1.0 - acc for acc in row.values()) for name, row in result["table"].items()}


def corruption_accuracy(model, x, y, reference=None, severities=SEVERITIES, corruptions=None, seed=0,
                        batch_size=256):
    """Accuracy of ``model`` under each corruption and severity, their mean, and mCE.

    Args:
        model: Keras model, callable returning logits, ``.tflite`` path or ``TFLiteModel``.
        x, y: Images in [0, 1] and integer labels.
        reference: Model (any kind ``model`` may be) or an earlier result of this function;
            needed for mCE.
        severities: Severities to run.
        corruptions: Names to run; default all of :data:`CORRUPTIONS`.
        seed: Seed of the corruptions.
        batch_size: Prediction batch size.

    Returns:
        JSON-able dict: ``clean_accuracy``, ``table`` ({corruption: {severity: accuracy}}),
        ``per_corruption`` (mean over severities), ``mean_accuracy``, ``mce`` (``None`` without
        a reference), ``ce`` (per corruption) and, with a model reference,
        ``reference_mean_accuracy``.

    Example:
        >>> res = corruption_accuracy(model, x_test, y_test, reference=dense)  # doctest: +SKIP
        >>> res["mean_accuracy"], res["mce"]  # doctest: +SKIP
    """
    from tfsafe.safety.tflite_model import predict_labels

    x = _check_images(x)
    y = check_labels(y, None, "y", n=len(x))
    corruptions = tuple(corruptions or CORRUPTIONS)
    severities = tuple(int(s) for s in severities)
    for name in corruptions:
        for s in severities:
            _check_name_severity(name, s)
    ref_model = reference if reference is not None and not isinstance(reference, dict) else None
    models = {"model": model} if ref_model is None else {"model": model, "reference": ref_model}
    tables = {key: {} for key in models}
    clean = {key: float(np.mean(predict_labels(m, x, batch_size) == y)) for key, m in models.items()}
    for name in corruptions:
        for key in models:
            tables[key][name] = {}
        for s in severities:
            xc = corrupt(x, name, s, seed)
            for key, m in models.items():
                tables[key][name][str(s)] = float(np.mean(predict_labels(m, xc, batch_size) == y))
    result = _summarize(tables["model"], clean["model"])
    if ref_model is not None:
        ref_result = _summarize(tables["reference"], clean["reference"])
        result["reference_mean_accuracy"] = ref_result["mean_accuracy"]
    else:
        ref_result = reference
    result.update(_mce(result, ref_result))
    return result


def _summarize(table, clean):
    per = {name: float(np.mean(list(row.values()))) for name, row in table.items()}
    return {"clean_accuracy": clean, "table": table, "per_corruption": per,
            "mean_accuracy": float(np.mean(list(per.values())))}


def _mce(result, reference):
    if reference is None:
        return {"mce": None, "ce": None}
    ours, theirs = _errors(result), _errors(reference)
    missing = set(ours) - set(theirs)
    if missing:
        raise InputError(f"The reference result lacks corruptions {sorted(missing)}; run it with the same list.")
    # A corruption the reference never errs on has no defined CE; it is skipped (and listed).
    ce = {name: ours[name] / theirs[name] for name in ours if theirs[name] > 0}
    skipped = sorted(set(ours) - set(ce))
    return {"mce": float(np.mean(list(ce.values()))) if ce else None, "ce": ce, "mce_skipped": skipped}

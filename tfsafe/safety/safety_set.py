"""Safety set: the critical, uncertain and diverse examples a compressed model must keep right.

Following the safety-driven self-compression method, three signals are ensembled, all in
inference mode (``training=False``, so dropout is off):

1. **Grad-CAM intensity**: for the last convolutional layer, the class-activation map of the
   predicted class, ``relu(sum_k mean_ij(dS/dA_k) * A_k)``, averaged over the map. A high value
   means the prediction rests on strong, localized evidence. Models without a convolutional
   layer (MLPs) use **input-gradient saliency** instead: the mean ``|dS/dx|``.
2. **Margin uncertainty**: ``1 - (p_top1 - p_top2)``.
3. **Diversity**: k-means on the penultimate embeddings (input of the last layer), reduced
   with PCA; every cluster contributes an equal share, taking its highest-ranked examples.

The two scores are combined as a weighted mean of their ranks in [0, 1]. Selection is
deterministic for a seed. It returns *indices* into the pool it was given: pass training or
validation data (never test data, whose accuracy it would then inflate) and keep the indices
as proof of where the set came from.
"""

import contextlib

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import flat_layers, logits_model
from tfsafe.safety._hooks import patched_calls
from tfsafe.validation import check_xy

__all__ = ["select_safety_set", "safety_scores", "choose_safety_set", "check_safety_indices"]

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
               keras.layers.SeparableConv2D)


def _is_conv(layer):
    inner = getattr(layer, "layer", None)  # wrappers such as TF-MOT's PruneLowMagnitude
    return isinstance(layer, _CONV_TYPES) or isinstance(inner, _CONV_TYPES)


@contextlib.contextmanager
def _capture(layers):
    """Record the latest input and output of each layer in ``layers`` ({key: layer})."""
    store = {}
    keys = {}
    for key, layer in layers.items():
        if layer is not None:
            keys.setdefault(id(layer), []).append(key)

    def make_call(layer, original):
        def call(inputs, *args, **kwargs):
            outputs = original(inputs, *args, **kwargs)
            for key in keys[id(layer)]:
                store[key] = (inputs, outputs)
            return outputs

        return call

    unique = {id(layer): layer for layer in layers.values() if layer is not None}
    with patched_calls(unique.values(), make_call):
        yield store


def _target_layers(lm, layer_name):
    layers = list(flat_layers(lm))
    if layer_name is not None:
        conv = next((layer for layer in layers if layer.name == layer_name), None)
        if conv is None:
            raise InputError(f"No layer named {layer_name!r} for Grad-CAM; layers: {[x.name for x in layers]}.")
    else:
        conv = next((layer for layer in reversed(layers) if _is_conv(layer)), None)
    return conv, (layers[-1] if layers else None)


def safety_scores(model, x, y, layer=None, batch_size=256):
    """Per-example Grad-CAM (or saliency) intensity, margin uncertainty and embeddings.

    Returns:
        dict with ``intensity``, ``uncertainty``, ``embeddings`` (numpy arrays) and
        ``saliency`` (``"grad_cam"`` or ``"input_gradient"``: which intensity was used).
    """
    model = model if isinstance(model, keras.Model) else None
    if model is None:
        raise InputError("select_safety_set needs a Keras model (it reads gradients and embeddings).")
    x, y = check_xy(model, x, y)
    lm = logits_model(model)
    conv, last = _target_layers(lm, layer)
    intensity, uncertainty, embeddings = [], [], []
    saliency = "grad_cam" if conv is not None else "input_gradient"
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size])
        with tf.GradientTape() as tape, _capture({"conv": conv, "last": last}) as seen:
            tape.watch(xb)
            logits = tf.cast(lm(xb, training=False), tf.float32)
            score = tf.reduce_sum(logits * tf.one_hot(tf.argmax(logits, -1), tf.shape(logits)[-1]))
        target = seen["conv"][1] if conv is not None else xb
        grads = tape.gradient(score, target)
        grads = tf.zeros_like(target) if grads is None else grads
        if conv is not None:
            spatial = list(range(1, len(target.shape) - 1))
            alpha = tf.reduce_mean(grads, axis=spatial, keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(alpha * target, axis=-1))
            intensity.append(tf.reduce_mean(tf.reshape(cam, [tf.shape(cam)[0], -1]), axis=1).numpy())
        else:
            intensity.append(tf.reduce_mean(tf.reshape(tf.abs(grads), [tf.shape(grads)[0], -1]), axis=1).numpy())
        top2 = tf.math.top_k(tf.nn.softmax(logits), k=2).values.numpy()
        uncertainty.append(1.0 - (top2[:, 0] - top2[:, 1]))
        emb = tf.convert_to_tensor(seen["last"][0]) if "last" in seen else logits
        embeddings.append(tf.reshape(emb, [tf.shape(emb)[0], -1]).numpy())
    return {
        "intensity": np.concatenate(intensity), "uncertainty": np.concatenate(uncertainty),
        "embeddings": np.concatenate(embeddings), "saliency": saliency,
    }


def _rank01(v):
    from scipy.stats import rankdata

    return (rankdata(v, method="average") - 1) / max(len(v) - 1, 1)


def _reduce(embeddings, dims, seed):
    from sklearn.decomposition import PCA

    emb = embeddings.astype(np.float64)
    emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    dims = min(dims, emb.shape[1], len(emb) - 1)
    if dims < emb.shape[1] and dims >= 1:
        emb = PCA(n_components=dims, svd_solver="full", random_state=seed).fit_transform(emb)
    return emb


def select_safety_set(model, x, y, size, seed=0, n_clusters=None, weights=(0.5, 0.5), layer=None,
                      embedding_dims=32, batch_size=256, return_details=False):
    """Pick ``size`` critical, uncertain and diverse examples of ``(x, y)``; return their indices.

    Args:
        model: Keras classifier (logits or softmax output) trained on the task.
        x, y: The pool to choose from: training or validation data, never test data.
        size: Number of examples to select (1..len(x)).
        seed: Seed of PCA / k-means; the same inputs and seed give the same indices.
        n_clusters: k-means clusters; default ``min(size, 10)``.
        weights: ``(grad_cam, uncertainty)`` weights of the two rank scores.
        layer: Name of the conv layer for Grad-CAM; default the last conv layer.
        embedding_dims: PCA dimensions of the embeddings before k-means.
        batch_size: Batch size of the gradient passes.
        return_details: Also return a dict with the scores, clusters and saliency kind.

    Returns:
        Sorted ``np.ndarray`` of int64 indices into ``x`` (and the details dict if asked).

    Example:
        >>> idx = select_safety_set(model, x_val, y_val, size=100)  # doctest: +SKIP
        >>> safety_x, safety_y = x_val[idx], y_val[idx]  # doctest: +SKIP
    """
    from sklearn.cluster import KMeans

    n = len(x) if hasattr(x, "__len__") else 0
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise InputError(f"size must be an integer in [1, {n}] (the pool size), got {size!r}.")
    if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
        raise InputError(f"weights must be two non-negative numbers, not both zero; got {weights!r}.")
    scores = safety_scores(model, x, y, layer, batch_size)
    combined = (weights[0] * _rank01(scores["intensity"]) + weights[1] * _rank01(scores["uncertainty"]))
    combined = combined / sum(weights)
    # Stable order: higher score first, then lower index.
    order = np.lexsort((np.arange(n), -combined))
    k = min(int(n_clusters or min(size, 10)), size)
    emb = _reduce(scores["embeddings"], embedding_dims, seed)
    k = min(k, len(np.unique(emb.round(6), axis=0)))
    labels = KMeans(n_clusters=k, random_state=seed, n_init=4).fit_predict(emb) if k > 1 else np.zeros(n, int)
    quota = np.full(k, size // k)
    quota[: size % k] += 1
    chosen = []
    for cluster in range(k):
        members = order[labels[order] == cluster]
        chosen.extend(members[: quota[cluster]].tolist())
    if len(chosen) < size:  # small clusters: fill from the global ranking
        taken = set(chosen)
        chosen.extend([i for i in order if i not in taken][: size - len(chosen)])
    indices = np.sort(np.asarray(chosen, np.int64))
    if not return_details:
        return indices
    details = {"intensity": scores["intensity"], "uncertainty": scores["uncertainty"], "combined": combined,
               "clusters": labels, "saliency": scores["saliency"]}
    return indices, details


def check_safety_indices(indices, pool_size, name="safety_indices"):
    """Return ``indices`` as unique int64 indices into a pool of ``pool_size`` examples, or raise."""
    arr = np.asarray(indices)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D list of example indices, got shape {arr.shape}.")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integer indices, got dtype {arr.dtype}.")
    bad = arr[(arr < 0) | (arr >= pool_size)]
    if bad.size:
        raise InputError(
            f"{name} has {bad.size} indices outside the data they select from (0..{pool_size - 1}), e.g. "
            f"{bad[:5].tolist()}; the safety set must come from the training or validation data passed in."
        )
    if len(np.unique(arr)) != arr.size:
        raise InputError(f"{name} repeats indices; pass each safety example once.")
    return arr.astype(np.int64)


def choose_safety_set(model, train, validation, safety_size=100, safety_indices=None, safety_from=None, seed=0):
    """The safety set: ``(indices, source name, (x, y))`` from validation (default) or training data.

    Args:
        model: the float model that ranks the examples (:func:`select_safety_set`).
        train: ``(x, y)`` training data.
        validation: ``(x, y)`` validation data or ``None``.
        safety_size: examples to select (at most the pool's size).
        safety_indices: explicit indices into the pool instead of a selection.
        safety_from: ``"validation"`` or ``"train"`` (default: validation when it is not empty).
        seed: seeds the selection.
    """
    has_validation = validation is not None and len(validation) == 2 and len(validation[0]) > 0
    source = safety_from or ("validation" if has_validation else "train")
    if source not in ("validation", "train"):
        raise InputError(f"safety_from must be 'validation' or 'train', got {source!r}.")
    if source == "validation" and not has_validation:
        raise InputError("safety_from='validation' needs validation data (validation_data, or a non-empty "
                         "splits.validation); pass safety_from='train' to select from the training data.")
    pool_x, pool_y = validation if source == "validation" else train
    if safety_indices is not None:
        indices = check_safety_indices(safety_indices, len(pool_x))
        name = f"given ({source})"
    else:
        indices = select_safety_set(model, pool_x, pool_y, min(int(safety_size), len(pool_x)), seed=seed)
        name = source
    return indices, name, (pool_x[indices], pool_y[indices])

"""ATMC's projection maths: what is compressed, global top-k with per-layer floors, k-means with a fixed zero.

Used by :class:`~tfsafe.methods.atmc_model.ATMCModel` (projection after every step, ADMM's
``Z`` update) and by :func:`budget_for_ratio` (the budget of a compression ratio).
"""

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.factorization import check_bits, matrix_layers
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError

__all__ = ["compressible_groups", "dense_size", "layer_floors", "topk_masks", "kmeans_quantize", "budget_for_ratio"]


# ---------------------------------------------------------------------------------------------
# Which tensors are compressed


def compressible_groups(model):
    """``[(layer, [(name, variable), ...]), ...]``: what the budget and quantizer act on.

    Factorized / low-rank layers contribute their factors; a model without any contributes the
    kernels of its plain Dense and Conv2D layers (for the NAP / AP baselines).
    """
    groups = [(layer, layer.factors()) for layer in matrix_layers(model)]
    if groups:
        return groups
    plain = [(layer, [("kernel", layer.kernel)]) for layer in model.layers
             if type(layer) in (keras.layers.Dense, keras.layers.Conv2D)]
    if not plain:
        raise UnsupportedModelError(
            f"Model '{model.name}' has no Dense/Conv2D or factorized layer to compress; "
            "call tfsafe.compress.factorization.factorize(model) on a model with such layers.")
    return plain


def dense_size(layer):
    """Entries of the layer's weight matrix W (out x fan_in): the floor is a fraction of it."""
    if hasattr(layer, "fan_in"):
        return layer.out_dim * layer.fan_in
    return int(np.prod(layer.kernel.shape))


def layer_floors(groups, min_layer_fraction):
    """Entries each layer keeps at least: ``ceil(min_layer_fraction x dense size)``, at least 1."""
    return [max(1, int(np.ceil(min_layer_fraction * dense_size(layer)))) for layer, _ in groups]


# ---------------------------------------------------------------------------------------------
# Global top-k projection


def _topk_indices(values, k, hint=None):
    """Indices of the ``k`` largest entries of 1-D ``values`` (exact; ``hint`` only speeds it up).

    When at least ``k`` entries reach ``hint``, the top-k lies among them, so top_k runs on
    that much smaller candidate set.
    """
    if hint is None:
        return tf.math.top_k(values, k, sorted=False).indices

    def fast():
        candidates = tf.where(values >= hint)[:, 0]
        best = tf.math.top_k(tf.gather(values, candidates), k, sorted=False).indices
        return tf.cast(tf.gather(candidates, best), tf.int32)

    def full():
        return tf.math.top_k(values, k, sorted=False).indices

    enough = tf.reduce_sum(tf.cast(values >= hint, tf.int32)) >= k
    return tf.cond(enough, fast, full)


def topk_masks(magnitudes, k, floors, hint=None):
    """0/1 masks keeping exactly ``k`` entries: each layer's ``floors[l]`` largest, then the global largest.

    Args:
        magnitudes: One 1-D tensor of absolute values per layer (all factors concatenated).
        k: Total entries to keep (``sum(floors) <= k <= total size``).
        floors: Entries every layer keeps at least.
        hint: Optional lower bound guess of the k-th largest magnitude (speed only).

    Returns:
        A list of float32 masks shaped like ``magnitudes``.

    Example:
        >>> [m.numpy().tolist() for m in topk_masks([tf.constant([3., 1.]), tf.constant([.1, .2])], 2, [1, 1])]
        [[1.0, 0.0], [0.0, 1.0]]
    """
    sizes = [int(m.shape[0]) for m in magnitudes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = tf.concat(magnitudes, axis=0)
    total = int(offsets[-1])

    def to_mask(indices):
        return tf.scatter_nd(tf.cast(indices[:, None], tf.int32), tf.ones_like(indices, tf.float32), [total])

    def global_only():
        return to_mask(_topk_indices(flat, k, hint))

    def with_floors():
        floor_idx = tf.concat([_topk_indices(magnitudes[i], floors[i]) + int(offsets[i]) for i in range(len(sizes))], 0)
        floor_mask = to_mask(floor_idx)
        rest = tf.where(floor_mask > 0, -tf.ones_like(flat), flat)
        extra = k - int(sum(floors))
        return floor_mask + (to_mask(_topk_indices(rest, extra)) if extra > 0 else 0.0)

    mask = global_only()
    # The global top-k already holds every layer's own top-`floor` when it keeps >= floor of each
    # layer; only otherwise is the (slower) floor-first selection needed. Both give the same set.
    counts = tf.stack([tf.reduce_sum(mask[int(offsets[i]):int(offsets[i + 1])]) for i in range(len(sizes))])
    starved = tf.reduce_any(counts < tf.constant(floors, tf.float32))
    mask = tf.cond(starved, with_floors, lambda: mask)
    return [mask[int(offsets[i]):int(offsets[i + 1])] for i in range(len(sizes))]


# ---------------------------------------------------------------------------------------------
# k-means (Lloyd) quantization with a fixed zero


def kmeans_quantize(values, bits, support=None, init=None, max_iter=30):
    """Snap ``values`` onto ``2^bits`` non-zero k-means centres plus a fixed zero.

    Lloyd's algorithm in 1-D on the entries in ``support`` (default: the non-zero entries);
    entries outside the support become 0, and entries nearest to 0 are pruned too. So the
    result has at most ``2^bits + 1`` distinct values, zero included.

    Args:
        values: Array to quantize.
        bits: 1..8.
        support: Boolean array of entries allowed to be non-zero (e.g. the pruning mask).
        init: Optional starting centres (e.g. the previous codebook); default: quantiles.
        max_iter: Lloyd iterations at most (stops earlier when assignments settle).

    Returns:
        ``(quantized, centres)``: an array shaped like ``values`` and the non-zero centres.

    Example:
        >>> q, c = kmeans_quantize(np.array([0.0, 1.0, 1.1, -2.0, -2.1]), bits=1)
        >>> bool(len(np.unique(q)) <= 3 and q[0] == 0.0)
        True
    """
    bits = check_bits(bits)
    if bits == 32:
        raise InputError("kmeans_quantize needs bits in 1..8; bits=32 means no quantization.")
    values = np.asarray(values, np.float32)
    support = values != 0 if support is None else np.asarray(support, bool)
    if support.shape != values.shape:
        raise InputError(f"support has shape {support.shape} but values have shape {values.shape}.")
    out = np.zeros_like(values)
    data = values[support].astype(np.float64)
    n_centres = 2 ** bits
    distinct = np.unique(data[data != 0])
    if distinct.size <= n_centres:
        out[support] = data
        return out, distinct.astype(np.float32)
    if init is not None and np.size(init) == n_centres:
        centres = np.sort(np.asarray(init, np.float64))
    else:
        centres = np.quantile(data, (np.arange(n_centres) + 0.5) / n_centres)
    assignment = None
    for _ in range(max_iter):
        table = np.sort(np.concatenate([centres, [0.0]]))
        nearest = _nearest(data, table)
        if assignment is not None and np.array_equal(nearest, assignment):
            break
        assignment = nearest
        sums = np.bincount(assignment, weights=data, minlength=table.size)
        counts = np.bincount(assignment, minlength=table.size)
        zero_slot = int(np.searchsorted(table, 0.0))
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), table)
        centres = np.delete(updated, zero_slot)  # zero is fixed, never moved
    table = np.sort(np.concatenate([centres, [0.0]]))
    out[support] = table[_nearest(data, table)]
    return out, np.sort(centres).astype(np.float32)


def _nearest(data, table):
    """Index of the nearest entry of the sorted ``table`` for each value of ``data``."""
    cuts = (table[1:] + table[:-1]) / 2
    return np.searchsorted(cuts, data)


# ---------------------------------------------------------------------------------------------
# Budget helper


def budget_for_ratio(model, ratio, bits, reference=None):
    """The largest non-zero budget ``k`` whose size is at most ``ratio`` of the dense float32 model.

    Size is counted as in :mod:`tfsafe.metrics`: ``k * bits`` for the compressed factors, 32
    bits for every value outside them (biases, other layers) and, below 32 bits, a float32
    codebook entry per distinct non-zero of each tensor, bounded by ``min(2^bits, tensor size)``
    per tensor and by ``k`` in total (every codebook entry is used by a non-zero).

    Args:
        model: The (factorized) model to compress.
        ratio: Target ``compressed bits / (dense params x 32)``.
        bits: 1..8 or 32.
        reference: The dense model (default: ``model`` stripped back to plain layers).

    Example:
        >>> budget_for_ratio(factorize(lenet()), 0.05, 8, reference=lenet())  # doctest: +SKIP
        77834
    """
    bits = check_bits(bits)
    reference = strip(model) if reference is None else reference
    dense_bits = reference.count_params() * 32
    groups = compressible_groups(model)
    compressed = {id(var) for _, factors in groups for _, var in factors}
    fixed_bits = 32 * sum(int(np.prod(w.shape)) for w in model.weights if id(w) not in compressed)
    room = float(ratio) * dense_bits - fixed_bits
    if bits == 32:
        k = int(room // 32)
    else:
        entries = sum(min(2 ** bits, int(np.prod(var.shape))) for _, factors in groups for _, var in factors)
        # k <= entries: every non-zero may need its own codebook entry; otherwise all entries are paid.
        k = int(room // (bits + 32))
        if k > entries:
            k = max(entries, int((room - 32 * entries) // bits))
    if k < 1:
        raise InputError(f"A compression ratio of {ratio} at {bits} bits leaves no room for weights "
                         f"(biases and other layers take {fixed_bits} of {dense_bits} bits).")
    return k

"""How big a model is: parameters, non-zeros, bits, bytes, sparsity and ReLU count.

The numbers come from per-weight statistics. Plain Keras layers report their own weights at
32 bits; compression wrappers register a function with :func:`register_weight_stats` that
reports what the *deployed* weights will be (non-zeros after the mask, bits after
quantization, factors of a factorization, codebooks) and leaves out bookkeeping variables
such as masks or step counters. ReLU layers are counted by :func:`relu_count`; layers that
linearize ReLUs register their own count with :func:`register_relu_counter`.

Size definitions (say which one a headline uses):

- ``params``: stored values of the dense model (every weight of every layer).
- ``nonzeros``: values that are not exactly zero after masks are applied.
- ``average_bits``: ``sum(nonzeros * bits) / sum(nonzeros)``.
- ``ideal_bytes``: ``sum(nonzeros * bits) / 8`` plus any codebooks: the size of a perfect
  sparse + quantized encoding, ignoring index overhead.
- ``dense_bytes``: ``params * 4`` (float32).
- ``compression_ratio``: ``ideal_bytes / dense_bytes`` of the reference (smaller is better).

Stored form and deployed form: :func:`weight_stats` (and :func:`count_params`,
:func:`ideal_bytes`, ...) describe the tensors a model *stores* (a factorized layer's factors
``A``, ``B``, ``C``). :func:`deployed_stats` and :func:`model_size` describe what
:func:`~tfsafe.compress.strip.strip` ships:

- a layer with a ``merged_weights()`` method (factorized / low-rank layers) counts its merged
  kernel, at the layer's ``bits`` when the merged values fit a codebook of ``2^bits`` entries
  (the codebook added), else at 32 bits;
- a stripped model carries what ``strip()`` knew about the bits in the attribute
  ``DEPLOY_BITS_ATTR`` (``{layer name: {"bits", "codebook"}}``, written by
  :func:`record_deploy_bits`): its plain kernels count at those bits plus the codebook
  (scales or k-means table), and its non-zeros are counted from the shipped values (removed
  channels are gone). The attribute lives on the Python object only: a stripped model saved
  and loaded again counts 32 bits, so measure a saved model in its wrapped form;
- a wrapped model whose dead channels ``strip()`` removes (channel-pruned ``PrunableSafe``
  masks, zero-bit channels of self-compression) counts as the stripped model: the masked
  output channels *and* what they leave behind downstream (the consumers' matching input
  channels, BatchNormalization entries of those channels) are gone. The wrapper modules
  register that view with :func:`register_deploy_view`.
"""

import numpy as np

from tfsafe._keras import keras

__all__ = [
    "WeightStat", "register_weight_stats", "register_relu_counter", "weight_stats", "count_params",
    "count_nonzero", "sparsity", "average_bits", "ideal_bytes", "dense_bytes", "compression_ratio",
    "relu_count", "model_size", "short_name", "masked_weights", "deployed_stats", "record_deploy_bits", "codebook_bits",
    "DEPLOY_BITS_ATTR", "register_deploy_view",
]

# Attribute of a stripped model holding {layer name: {"bits": ..., "codebook": ...}} (see deployed_stats).
DEPLOY_BITS_ATTR = "tfsafe_deploy_bits"

_WEIGHT_STATS = {}
_RELU_COUNTERS = {}
_DEPLOY_VIEWS = []


def WeightStat(layer, name, values=None, shape=None, params=None, nonzeros=None, bits=32, kind=None):
    """Build one weight-statistics record (a plain dict).

    Either pass ``values`` (an array; params and non-zeros are counted from it) or ``shape``
    with explicit ``params`` / ``nonzeros``. ``kind`` is ``"kernel"`` for matrices and
    convolution kernels (what pruning targets), ``"other"`` for biases and normalization
    statistics, ``"codebook"`` for quantization tables.
    """
    if values is not None:
        values = np.asarray(values)
        shape = values.shape
        params = int(values.size) if params is None else params
        nonzeros = int(np.count_nonzero(values)) if nonzeros is None else nonzeros
    shape = tuple(int(s) for s in shape)
    if kind is None:
        kind = "kernel" if len(shape) >= 2 else "other"
    return {"layer": layer, "name": name, "shape": shape, "params": int(params),
            "nonzeros": int(nonzeros), "bits": float(bits), "kind": kind}


def register_weight_stats(layer_class, fn):
    """Register ``fn(layer) -> list of WeightStat dicts`` for instances of ``layer_class``."""
    _WEIGHT_STATS[layer_class] = fn


def register_deploy_view(fn):
    """Register ``fn(model) -> model | None``: the model as it ships, when it differs in shape.

    :func:`deployed_stats` (and so :func:`model_size`) counts the first view a function returns
    instead of ``model`` (e.g. the stripped model once dead channels are removed); ``None``
    means the layer-wise statistics already are what ships.
    """
    if fn not in _DEPLOY_VIEWS:
        _DEPLOY_VIEWS.append(fn)


def register_relu_counter(layer_class, fn):
    """Register ``fn(layer) -> int``: how many ReLU units a layer of ``layer_class`` computes."""
    _RELU_COUNTERS[layer_class] = fn


def _lookup(registry, layer):
    for cls in type(layer).__mro__:
        if cls in registry:
            return registry[cls]
    return None


def short_name(variable):
    """The last part of a variable's name: ``"model/conv1/kernel:0"`` -> ``"kernel"``.

    Args:
        variable: a variable, or its name.
    """
    name = variable if isinstance(variable, str) else variable.name
    return name.split("/")[-1].split(":")[0]


def _plain_stats(layer):
    return [WeightStat(layer.name, short_name(w), w.numpy()) for w in layer.weights]


def masked_weights(layer, masks):
    """Every weight of ``layer`` with its pruning mask multiplied in.

    Shared by the strippers (:mod:`tfsafe.compress.strip`) and the size statistics of pruning wrappers (TF-MOT's
    ``PruneLowMagnitude`` and :class:`~tfsafe.compress.pruning.PrunableSafe`).

    Args:
        layer: the wrapped (inner) layer.
        masks: ``[(weight variable, mask variable), ...]`` for the pruned weights.

    Returns:
        ``[(variable, masked numpy value, is_pruned), ...]`` in ``layer.weights`` order.
    """
    by_id = {id(weight): mask for weight, mask in masks}
    out = []
    for weight in layer.weights:
        value = weight.numpy()
        mask = by_id.get(id(weight))
        if mask is not None:
            value = value * np.asarray(mask.numpy(), value.dtype)
        out.append((weight, value, mask is not None))
    return out


def _prune_low_magnitude_stats(layer):
    masks = [(weight, mask) for weight, mask, _ in layer.pruning_vars]
    return [WeightStat(layer.layer.name, short_name(w), value) for w, value, _ in masked_weights(layer.layer, masks)]


def _register_builtin():
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude,
    )

    register_weight_stats(PruneLowMagnitude, _prune_low_magnitude_stats)


_register_builtin()


def _iter_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and _lookup(_WEIGHT_STATS, layer) is None:
            yield from _iter_layers(layer)
        else:
            yield layer


def weight_stats(model):
    """Per-weight statistics of ``model`` as a list of dicts (see :func:`WeightStat`)."""
    return [stat for layer in _iter_layers(model) for stat in _layer_stats(layer)]


def _layer_stats(layer):
    """One layer's statistics: its registered function, else its (wrapped) layer's weights."""
    fn = _lookup(_WEIGHT_STATS, layer)
    if fn is not None:
        return fn(layer)
    if isinstance(layer, keras.layers.Wrapper) and not isinstance(layer, keras.layers.Bidirectional):
        return _plain_stats(layer.layer)
    return _plain_stats(layer)


def _stats(model_or_stats):
    return model_or_stats if isinstance(model_or_stats, list) else weight_stats(model_or_stats)


def count_params(model):
    """Stored values of the model (codebooks excluded)."""
    return int(sum(s["params"] for s in _stats(model) if s["kind"] != "codebook"))


def count_nonzero(model):
    """Values that are not zero after masks (codebooks excluded)."""
    return int(sum(s["nonzeros"] for s in _stats(model) if s["kind"] != "codebook"))


def sparsity(model, per_layer=False, kernels_only=True):
    """Fraction of zero weights.

    Args:
        model: a model or a list from :func:`weight_stats`.
        per_layer: also return ``{layer_name: sparsity}``.
        kernels_only: count only kernels (what pruning targets), not biases or BN statistics.

    Returns:
        The global sparsity, or ``(global, per_layer_dict)`` when ``per_layer`` is true.
    """
    stats = [s for s in _stats(model) if s["kind"] == "kernel" or (not kernels_only and s["kind"] != "codebook")]
    params = sum(s["params"] for s in stats)
    overall = 1.0 - sum(s["nonzeros"] for s in stats) / params if params else 0.0
    if not per_layer:
        return overall
    layers = {}
    for s in stats:
        p, n = layers.get(s["layer"], (0, 0))
        layers[s["layer"]] = (p + s["params"], n + s["nonzeros"])
    return overall, {name: 1.0 - n / p if p else 0.0 for name, (p, n) in layers.items()}


def _bits_sum(stats):
    return sum(s["nonzeros"] * s["bits"] for s in stats)


def average_bits(model):
    """Mean bits per stored non-zero value (codebooks excluded)."""
    stats = [s for s in _stats(model) if s["kind"] != "codebook"]
    nonzeros = sum(s["nonzeros"] for s in stats)
    return _bits_sum(stats) / nonzeros if nonzeros else 0.0


def ideal_bytes(model):
    """``sum(nonzeros x bits) / 8`` including codebooks: a perfect sparse, quantized encoding."""
    return _bits_sum(_stats(model)) / 8.0


def dense_bytes(model):
    """Bytes of the dense float32 model: ``params x 4``."""
    return count_params(model) * 4.0


def compression_ratio(model, reference=None):
    """``ideal_bytes(model) / dense_bytes(reference)``; reference defaults to the model itself."""
    denominator = dense_bytes(reference if reference is not None else model)
    return ideal_bytes(model) / denominator if denominator else 0.0


def _is_relu(fn):
    return fn is keras.activations.relu or getattr(fn, "__name__", None) in ("relu", "relu6")


def _output_units(layer, model):
    # A layer shared with other models (e.g. after strip or clone) has nodes from those models
    # too; count only the calls that belong to this model's graph.
    own = getattr(model, "_network_nodes", None)
    total = 0
    for index, node in enumerate(layer._inbound_nodes):
        if own is not None and f"{layer.name}_ib-{index}" not in own:
            continue
        for shape in (node.output_shapes if isinstance(node.output_shapes, list) else [node.output_shapes]):
            dims = shape[1:] if shape and len(shape) > 1 else ()
            if any(d is None for d in dims):
                raise ValueError(f"Layer '{layer.name}' has an unknown output size {shape}; build the "
                                 "model with a fixed input shape to count ReLUs.")
            total += int(np.prod(dims)) if dims else 1
    return total


def _layer_relu_count(layer, model):
    counter = _lookup(_RELU_COUNTERS, layer)
    if counter is not None:
        return int(counter(layer))
    if isinstance(layer, keras.Model):
        return sum(_layer_relu_count(inner, layer) for inner in layer.layers)
    if isinstance(layer, keras.layers.Wrapper):
        inner = layer.layer
        if _is_relu(getattr(inner, "activation", None)) or isinstance(inner, keras.layers.ReLU):
            return _output_units(layer, model)
        return 0
    if isinstance(layer, keras.layers.ReLU):
        slope = float(np.asarray(layer.negative_slope)) if layer.negative_slope is not None else 0.0
        return _output_units(layer, model) if slope == 0.0 else 0
    if _is_relu(getattr(layer, "activation", None)):
        return _output_units(layer, model)
    return 0


def relu_count(model):
    """Number of ReLU units evaluated in one forward pass of one example.

    Counts the outputs of ``ReLU`` layers (ReLU6 included; not leaky ones),
    ``Activation('relu')`` / ``Activation('relu6')`` layers and layers built with
    ``activation='relu'`` / ``'relu6'`` (Conv, Dense...), recursing into nested models; layers that mask
    ReLUs report their own count (:func:`register_relu_counter`).
    """
    return int(sum(_layer_relu_count(layer, model) for layer in model.layers))


def codebook_bits(values, bits):
    """``(bits per non-zero, codebook entries)`` of a tensor quantized to a ``2^bits`` codebook.

    The tensor counts at ``bits`` only when its distinct non-zero values fit ``2^bits`` entries
    (then the float32 codebook of that many entries is added); otherwise at 32 bits. The same
    rule as :func:`tfsafe.compress.factorization.factor_bits`.
    """
    if bits is None or bits >= 32:
        return 32, 0
    values = np.asarray(values)
    distinct = np.unique(values[values != 0]).size
    return (int(bits), int(distinct)) if distinct <= 2 ** int(bits) else (32, 0)


def _merged_stats(layer):
    """A factorized / low-rank layer as strip() ships it: one merged kernel (+ codebook) and a bias."""
    weights = layer.merged_weights()
    bits, entries = codebook_bits(weights[0], getattr(layer, "bits", 32))
    stats = [WeightStat(layer.name, "kernel", weights[0], bits=bits, kind="kernel")]
    if entries:
        stats.append(WeightStat(layer.name, "kernel_codebook", shape=(entries,), params=entries, nonzeros=entries,
                                kind="codebook"))
    stats.extend(WeightStat(layer.name, "bias", w) for w in weights[1:])
    return stats


def _recorded_stats(layer, record):
    """A plain layer of a stripped model whose kernel ships at the bits strip() recorded."""
    stats = []
    for w in layer.weights:
        value = w.numpy()
        if value.ndim >= 2:
            stats.append(WeightStat(layer.name, short_name(w), value, bits=record["bits"], kind="kernel"))
        else:
            stats.append(WeightStat(layer.name, short_name(w), value))
    entries = int(record.get("codebook", 0))
    if entries:
        stats.append(WeightStat(layer.name, "codebook", shape=(entries,), params=entries, nonzeros=entries,
                                kind="codebook"))
    return stats


def deployed_stats(model):
    """Per-weight statistics of ``model`` as :func:`~tfsafe.compress.strip.strip` ships it.

    Like :func:`weight_stats`, except that factorized / low-rank layers (anything with a
    ``merged_weights()`` method) count their merged kernel, the plain layers of a stripped
    model count at the bits recorded by :func:`record_deploy_bits`, and a wrapped model whose
    dead channels ``strip()`` removes counts as stripped (see the module docstring).
    """
    for view in _DEPLOY_VIEWS:
        shipped = view(model)
        if shipped is not None:
            return _layerwise_deployed_stats(shipped)
    return _layerwise_deployed_stats(model)


def _layerwise_deployed_stats(model):
    """:func:`deployed_stats` layer by layer, without the registered views."""
    records = getattr(model, DEPLOY_BITS_ATTR, None) or {}
    stats = []
    for layer in _iter_layers(model):
        if callable(getattr(layer, "merged_weights", None)):
            stats.extend(_merged_stats(layer))
        elif layer.name in records and _lookup(_WEIGHT_STATS, layer) is None:
            stats.extend(_recorded_stats(layer, records[layer.name]))
        else:
            stats.extend(_layer_stats(layer))
    return stats


def record_deploy_bits(stripped, original):
    """Store on ``stripped`` the bits each of its kernels ships with, read off ``original``.

    Called by :func:`~tfsafe.compress.strip.strip`. A layer is recorded when ``original``'s
    deployed statistics give it exactly one kernel at fewer than 32 bits (a learnable-bit
    layer: the non-zero-weighted mean of its channels' storage bits and one scale per live
    channel; an ATMC layer: its codebook bits and entries); the record is
    ``{"bits": float, "codebook": entries}`` under :data:`DEPLOY_BITS_ATTR`.

    Returns:
        ``stripped`` (the same object).
    """
    by_layer = {}
    for stat in _layerwise_deployed_stats(original):  # the views would strip again
        by_layer.setdefault(stat["layer"], []).append(stat)
    records = {}
    for name, stats in by_layer.items():
        kernels = [s for s in stats if s["kind"] == "kernel"]
        if len(kernels) == 1 and kernels[0]["bits"] < 32:
            codebook = sum(s["params"] for s in stats if s["kind"] == "codebook")
            records[name] = {"bits": kernels[0]["bits"], "codebook": int(codebook)}
    # Straight into __dict__: Keras would track a dict attribute as a DictWrapper of the model.
    stripped.__dict__[DEPLOY_BITS_ATTR] = records
    return stripped


def model_size(model, reference=None):
    """One summary dict of every size metric, of the model as it ships (:func:`deployed_stats`).

    ``params`` is what the deployed model stores (a factorized layer counts its merged kernel,
    not its factors; ``stored_params`` keeps the factor count), ``average_bits`` and
    ``ideal_bytes`` the bits it ships with (for a stripped model, the bits ``strip()``
    recorded). ``stored_ideal_bytes`` / ``stored_compression_ratio`` count the model in its
    own form instead (ATMC's factors: what its budget constrains, not what ``strip()`` ships;
    equal to the deployed figures for every other model). See the module docstring for the
    definitions.
    """
    stats = deployed_stats(model)
    stored = weight_stats(model)
    ref_stats = deployed_stats(reference) if reference is not None else stats
    dense = count_params(ref_stats) * 4.0
    return {
        "params": count_params(stats),
        "stored_params": count_params(stored),
        "nonzeros": count_nonzero(stats),
        "sparsity": sparsity(stats),
        "average_bits": average_bits(stats),
        "ideal_bytes": ideal_bytes(stats),
        "dense_bytes": dense,
        "compression_ratio": ideal_bytes(stats) / dense if dense else 0.0,
        "stored_ideal_bytes": ideal_bytes(stored),
        "stored_compression_ratio": ideal_bytes(stored) / dense if dense else 0.0,
        "relu_count": relu_count(model),
    }

"""Factorized Dense and Conv2D layers: sparse + low-rank weights (ATMC) and plain low rank (ALR).

Every layer here computes its kernel from a weight *matrix* ``W`` of shape
``(out, fan_in)``: a Dense kernel is ``W`` transposed, a Conv2D kernel is ``W`` over the flattened
receptive field (``fan_in = kh * kw * in_channels``) reshaped back to ``(kh, kw, in, out)``.

- :class:`FactorizedDense` / :class:`FactorizedConv2D`: ``W = (B + I) A + C`` with
  ``A`` (out x fan_in), ``B`` (out x out), ``C`` (out x fan_in), the ATMC parameterization.
  :func:`factorize` starts from ``A = W``, ``B = C = 0``, so the model is unchanged.
- :class:`LowRankDense` / :class:`LowRankConv2D`: ``W = U V`` with rank ``r`` (the ALR
  baseline), built from a trained layer by truncated SVD with :func:`low_rank`.

:func:`tfsafe.compress.strip.strip` merges all of them back into plain ``Dense`` / ``Conv2D``
layers; :mod:`tfsafe.metrics` counts their non-zeros and bits (see :func:`factor_bits`).

Export decision: always merge. TFLite stores each weight tensor densely (or with its sparse
encoding of one tensor) and its converter constant-folds ``(B + I) A + C`` into one kernel,
so what ships is the merged ``W``. A non-zero ``B`` makes ``B A`` dense and moves ``W`` off
the codebook, so the merged kernel can be far larger than the factors ATMC's budget
constrains; ATMC's ``deploy`` stage (:mod:`tfsafe.methods.atmc_deploy`) therefore puts the
budget on ``W`` itself and leaves ``A = W``, ``B = C = 0``. The stored-form statistics
(:func:`tfsafe.metrics.weight_stats`) count, per layer, the cheaper of the factorized encoding
and the merged one; :func:`tfsafe.metrics.deployed_stats` counts the merged kernel.
The layers live in :mod:`tfsafe.compress.factorized_layers` (importable from here); this
module does the model surgery, ``strip()`` and the size accounting.
"""

import contextlib

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.compress.factorized_layers import (
    QUANTIZABLE_BITS,
    FactorizedConv2D,
    FactorizedDense,
    LowRankConv2D,
    LowRankDense,
    MatrixLayer,
    check_bits,
    check_rank,
)
from tfsafe.compress.strip import register_stripper
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_weight_stats
from tfsafe.validation import check_model

__all__ = [
    "FactorizedDense", "FactorizedConv2D", "LowRankDense", "LowRankConv2D",
    "factorize", "low_rank", "low_rank_ranks_for_budget", "factor_bits", "matrix_layers",
    "check_bits", "frozen_kernels", "QUANTIZABLE_BITS",
]


# ---------------------------------------------------------------------------------------------
# Model surgery


@contextlib.contextmanager
def frozen_kernels(model):
    """Within the block, factorized layers reuse one kernel computed on entry, without gradients.

    An attack runs the model many times with fixed weights; freezing skips recomputing
    ``(B + I) A + C`` at every PGD step. Under ``tf.function`` the freeze applies to the code
    traced inside the block.

    Example:
        >>> net = factorize(small_cnn())  # doctest: +SKIP
        >>> with frozen_kernels(net):  # doctest: +SKIP
        ...     x_adv = pgd_perturb(net, x, y, eps=0.1, steps=10)
    """
    layers = matrix_layers(model)
    for layer in layers:
        layer._frozen_kernel = None
        layer._frozen_kernel = tf.stop_gradient(layer.kernel())
    try:
        yield
    finally:
        for layer in layers:
            layer._frozen_kernel = None


def matrix_layers(model):
    """The factorized / low-rank layers of ``model`` (top level), in order."""
    return [layer for layer in model.layers if isinstance(layer, MatrixLayer)]


_SUPPORTED = (keras.layers.Dense, keras.layers.Conv2D)


def _unsupported_reason(layer):
    if isinstance(layer, (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D,
                          keras.layers.SeparableConv2D)) or type(layer) not in _SUPPORTED:
        return f"it is a {type(layer).__name__}; only Dense and Conv2D layers can be factorized"
    config = layer.get_config()
    problems = [key for key in ("kernel_regularizer", "bias_regularizer", "kernel_constraint", "bias_constraint")
                if config.get(key) is not None]
    if problems:
        return f"it sets {', '.join(problems)}, which a factorized kernel cannot honour"
    if isinstance(layer, keras.layers.Conv2D):
        if config.get("groups", 1) != 1:
            return "it is a grouped convolution (groups != 1)"
        if config.get("data_format", "channels_last") != "channels_last":
            return "it uses data_format='channels_first'"
    return None


def _select(model, layers, what):
    model = check_model(model)
    if not model.built:
        raise UnsupportedModelError(f"{what}() needs a built model; call model.build(input_shape) first.")
    by_name = {layer.name: layer for layer in model.layers}
    if layers is None:
        chosen = [layer.name for layer in model.layers if type(layer) in _SUPPORTED and not _unsupported_reason(layer)]
        if not chosen:
            raise UnsupportedModelError(
                f"{what}(): model '{model.name}' has no top-level Dense or Conv2D layer to factorize "
                "(nested models must be flattened into one Functional/Sequential model first).")
        return model, chosen
    chosen = [layers] if isinstance(layers, str) else list(layers)
    for name in chosen:
        if name not in by_name:
            raise InputError(f"{what}(): no top-level layer named '{name}' in '{model.name}'; "
                             f"layers are {[layer.name for layer in model.layers]}.")
        reason = _unsupported_reason(by_name[name])
        if reason:
            raise UnsupportedModelError(f"{what}(): cannot factorize layer '{name}': {reason}.")
    return model, chosen


def _layer_matrix(layer):
    kernel = layer.kernel.numpy()
    return kernel.reshape(-1, kernel.shape[-1]).T


def _geometry(layer):
    config = layer.get_config()
    common = {"activation": config["activation"], "use_bias": config["use_bias"], "name": layer.name,
              "kernel_initializer": config["kernel_initializer"], "bias_initializer": config["bias_initializer"]}
    if isinstance(layer, keras.layers.Conv2D):
        common.update(filters=config["filters"], kernel_size=config["kernel_size"], strides=config["strides"],
                      padding=config["padding"], dilation_rate=config["dilation_rate"])
    else:
        common.update(units=config["units"])
    return common


def factorize(model, layers=None, bits=32):
    """Replace Dense / Conv2D layers with :class:`FactorizedDense` / :class:`FactorizedConv2D`.

    The new layers start at ``A = W``, ``B = C = 0``, so the returned model computes exactly
    what ``model`` computes. ``model`` itself is not changed.

    Args:
        model: A built Sequential or Functional ``tf_keras`` model.
        layers: Names of the layers to factorize; ``None`` factorizes every top-level Dense and
            Conv2D layer that can be (plain channels_last, no kernel regularizer/constraint).
        bits: Initial ``bits`` of the new layers (size accounting only).

    Returns:
        A new model.

    Raises:
        UnsupportedModelError: a named layer is not a plain Dense/Conv2D, or the model cannot be
            cloned (subclassed).

    Example:
        >>> from tfsafe.models import small_cnn
        >>> fact = factorize(small_cnn())
        >>> type(fact.get_layer("conv1")).__name__
        'FactorizedConv2D'
    """
    bits = check_bits(bits)
    model, chosen = _select(model, layers, "factorize")
    chosen = set(chosen)

    def replace(layer):
        if layer.name not in chosen:
            return None
        geometry = _geometry(layer)
        cls = FactorizedConv2D if "filters" in geometry else FactorizedDense
        matrix = _layer_matrix(layer)
        out = matrix.shape[0]
        weights = [matrix, np.zeros((out, out), np.float32), np.zeros_like(matrix)] + layer.get_weights()[1:]
        return cls(bits=bits, **geometry), weights

    return clone_with_weights(model, replace, "factorize")


def low_rank(model, ranks, layers=None):
    """Replace Dense / Conv2D layers by rank-``r`` factors ``U V`` from a truncated SVD of ``W``.

    Args:
        model: A built Sequential or Functional ``tf_keras`` model.
        ranks: One int for every chosen layer, or ``{layer_name: rank}`` (layers not in the dict
            are left as they are). A rank is capped at ``min(out, fan_in)``.
        layers: Names of layers to consider (default: every Dense / Conv2D that can be).

    Returns:
        A new model with :class:`LowRankDense` / :class:`LowRankConv2D` layers.

    Example:
        >>> from tfsafe.models import mlp
        >>> small = low_rank(mlp(), ranks=4)
        >>> small.get_layer("fc1").rank
        4
    """
    model, chosen = _select(model, layers, "low_rank")
    if isinstance(ranks, dict):
        unknown = set(ranks) - set(chosen)
        if unknown:
            raise InputError(f"low_rank(): ranks names layers that cannot be factorized or do not exist: "
                             f"{sorted(unknown)}; candidates are {chosen}.")
        plan = {name: check_rank(r) for name, r in ranks.items()}
    else:
        plan = dict.fromkeys(chosen, check_rank(ranks))

    def replace(layer):
        if layer.name not in plan:
            return None
        matrix = _layer_matrix(layer)
        rank = min(plan[layer.name], *matrix.shape)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        root = np.sqrt(s[:rank])
        geometry = _geometry(layer)
        cls = LowRankConv2D if "filters" in geometry else LowRankDense
        weights = [(u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32)]
        return cls(rank=rank, **geometry), weights + layer.get_weights()[1:]

    return clone_with_weights(model, replace, "low_rank")


def low_rank_ranks_for_budget(model, budget, layers=None):
    """Ranks for :func:`low_rank` so that the stored weight matrices fit in ``budget`` values.

    Every layer first gets the largest common rank that fits (so no layer becomes a narrow
    bottleneck), then ranks are added greedily by the relative spectral energy
    (sigma^2 / ||W||_F^2) they keep per added parameter until the budget is spent. A layer
    whose factors would not be smaller than its dense matrix is left dense (absent from the
    result) and costs ``out * fan_in``.

    Returns:
        ``{layer_name: rank}`` for the layers to factorize.

    Raises:
        InputError: when even rank 1 everywhere does not fit.
    """
    model, chosen = _select(model, layers, "low_rank_ranks_for_budget")
    spectra = {}
    for name in chosen:
        matrix = _layer_matrix(model.get_layer(name))
        energy = np.linalg.svd(matrix, compute_uv=False) ** 2
        spectra[name] = (matrix.shape, energy / max(float(energy.sum()), 1e-12))
    ranks = dict.fromkeys(chosen, 1)

    def cost(name, rank):
        (out, fan_in), _ = spectra[name]
        return min(rank * (out + fan_in), out * fan_in)

    spent = sum(cost(name, 1) for name in chosen)
    if spent > budget:
        raise InputError(f"low-rank budget {budget} is below the smallest rank-1 plan ({spent} values); "
                         "raise the budget.")
    common = 1
    while common < max(len(energy) for _, energy in spectra.values()):
        trial = {name: min(common + 1, len(spectra[name][1])) for name in chosen}
        if sum(cost(name, rank) for name, rank in trial.items()) > budget:
            break
        common += 1
        ranks = trial
    spent = sum(cost(name, rank) for name, rank in ranks.items())
    while True:
        best, best_gain = None, 0.0
        for name in chosen:
            (out, fan_in), energy = spectra[name]
            rank = ranks[name]
            extra = cost(name, rank + 1) - cost(name, rank)
            if rank >= len(energy) or extra <= 0 or spent + extra > budget:
                continue
            gain = energy[rank] / extra
            if gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            break
        spent += cost(best, ranks[best] + 1) - cost(best, ranks[best])
        ranks[best] += 1
    return {name: rank for name, rank in ranks.items()
            if rank * sum(spectra[name][0]) < np.prod(spectra[name][0])}


# ---------------------------------------------------------------------------------------------
# strip() and size accounting


def _strip_matrix_layer(layer):
    return layer.plain_layer(), layer.merged_weights()


register_stripper(MatrixLayer, _strip_matrix_layer)


def factor_bits(values, bits):
    """Bits per non-zero actually needed by ``values`` under a ``bits`` budget, and the codebook size.

    A tensor counts at ``bits`` only when its distinct non-zero values fit a codebook of
    ``2^bits`` entries (then the codebook of float32 entries is added); otherwise at 32 bits.

    Returns:
        ``(bits_per_value, codebook_entries)``.
    """
    if bits >= 32:
        return 32, 0
    distinct = np.unique(values[values != 0]).size
    return (bits, distinct) if distinct <= 2 ** bits else (32, 0)


def _weight_stats(layer):
    def encode(named_values):
        stats, total = [], 0.0
        for name, values in named_values:
            bits, codebook = factor_bits(values, getattr(layer, "bits", 32))
            stat = WeightStat(layer.name, name, values, bits=bits, kind="kernel")
            stats.append(stat)
            total += stat["nonzeros"] * bits
            if codebook:
                stats.append(WeightStat(layer.name, f"{name}_codebook", shape=(codebook,), params=codebook,
                                        nonzeros=codebook, bits=32, kind="codebook"))
                total += codebook * 32
        return stats, total

    factored, factored_bits = encode([(name, var.numpy()) for name, var in layer.factors()])
    merged, merged_bits = encode([("merged_W", layer.matrix().numpy())])
    # Report the cheaper encoding: merging a non-zero B densifies W and leaves the codebook.
    stats = merged if merged_bits < factored_bits else factored
    if layer.use_bias:
        stats.append(WeightStat(layer.name, "bias", layer.bias.numpy()))
    return stats


register_weight_stats(MatrixLayer, _weight_stats)

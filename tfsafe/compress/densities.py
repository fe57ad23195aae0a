"""How a global density is spread over layers: uniform or Erdos-Renyi-Kernel (ERK).

ERK follows RigL (Evci et al., "Rigging the Lottery", ICML 2020): a layer's density is
proportional to ``sum(shape) / prod(shape)``, so small layers stay denser than large ones.

Example:
    >>> layer_densities([(3, 3, 1, 16), (1000, 64), (64, 10)], 0.1, "erk")
    [128, 5937, 413]
"""

import numpy as np

from tfsafe.errors import InputError

__all__ = ["DENSITY_INITS", "layer_densities"]

DENSITY_INITS = ("erk", "uniform", "dense")


def _erk_raw(shape, power_scale):
    return (np.sum(shape) / np.prod(shape)) ** power_scale


def layer_densities(shapes, density, init="erk", power_scale=1.0, sizes=None):
    """Per-weight keep counts for a global ``density`` (= 1 - sparsity).

    ``"uniform"`` gives every weight the same density; ``"erk"`` (Erdos-Renyi-Kernel, as in
    RigL) makes density proportional to ``sum(shape) / prod(shape)``, capping full layers at 1
    and re-spreading the rest. Counts are integers whose sum is exactly
    ``round(density * total)`` (largest-remainder rounding), every weight keeping at least one.

    ``sizes`` counts in other units than weights (channels, for ``granularity="channel"``): the
    ERK ratio still comes from ``shapes``, the budget and the counts are in ``sizes``.

    Returns:
        A list of integer keep counts, one per shape.
    """
    if sizes is None:
        sizes = [int(np.prod(s)) for s in shapes]
    sizes = np.array(sizes, dtype=np.float64)
    total_keep = int(round(density * sizes.sum()))
    if init == "uniform":
        wanted = density * sizes
    elif init == "erk":
        dense = set()
        while True:
            raw = np.array([0.0 if i in dense else _erk_raw(s, power_scale) for i, s in enumerate(shapes)])
            budget = total_keep - sum(sizes[i] for i in dense)
            eps = budget / float(np.sum(raw * sizes)) if np.any(raw > 0) else 0.0
            over = [i for i in range(len(shapes)) if i not in dense and raw[i] * eps > 1.0]
            if not over:
                break
            dense.update(over)
        wanted = np.where([i in dense for i in range(len(shapes))], sizes, raw * eps * sizes)
    else:
        raise InputError(f"init must be one of {DENSITY_INITS}, got {init!r}.")
    counts = np.clip(np.floor(wanted), 1, sizes).astype(np.int64)
    remainder = total_keep - int(counts.sum())
    order = np.argsort(-(wanted - np.floor(wanted)), kind="stable")
    for i in order if remainder > 0 else order[::-1]:
        if remainder == 0:
            break
        step = 1 if remainder > 0 else -1
        if 1 <= counts[i] + step <= sizes[i]:
            counts[i] += step
            remainder -= step
    return [int(c) for c in counts]

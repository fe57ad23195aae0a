"""The ATMC paper's baselines, trained through the same :func:`~tfsafe.methods.atmc.atmc_train`.

- NAP: non-adversarial pruning (magnitude pruning of a cleanly trained model + clean fine-tune).
- DA: dense adversarial training (no compression).
- AP: adversarial pruning (DA, one-shot magnitude pruning to the budget, adversarial fine-tune).
- ALR: adversarial low-rank (DA, truncated SVD to the budget, adversarial fine-tune).
- ATMC itself: DA, factorize ``W = (B + I) A + C``, prune + quantize under one budget via ADMM.

In the paper's practice the compressed variants start from the DA model. Every function
trains a copy: the model passed in is left unchanged.

Example:
    >>> da = dense_training(lenet(), x, y, eps=0.3, epochs=4, ramp_epochs=1)  # doctest: +SKIP
    >>> ap = adversarial_pruning(da.model, x, y, budget=20000, eps=0.3, epochs=2)  # doctest: +SKIP
"""

from tfsafe.compress.factorization import low_rank, low_rank_ranks_for_budget
from tfsafe.methods.atmc import atmc_train
from tfsafe.models import copy_model

__all__ = ["dense_training", "nap", "adversarial_pruning", "adversarial_low_rank", "atmc", "copy_model"]


def dense_training(model, x, y, eps=0.3, adversarial=True, **kwargs):
    """Train a copy of ``model`` without compression: DA (``adversarial=True``) or clean.

    ``kwargs`` go to :func:`atmc_train` (epochs, steps, ramp_epochs, validation_data...).
    """
    if not adversarial:
        kwargs.pop("validation_data", None)  # a clean model is not selected by PGD accuracy
        kwargs["adv_weight"] = 0.0
    kwargs.setdefault("adv_weight", 0.5)
    return atmc_train(copy_model(model), x, y, budget=None, bits=32, eps=eps if adversarial else 0.0,
                      factorized=False, **kwargs)


def nap(clean_model, x, y, budget, **kwargs):
    """NAP: keep the ``budget`` largest kernel weights of a clean model, fine-tune on clean data."""
    kwargs.pop("validation_data", None)
    kwargs.pop("ramp_epochs", None)
    return atmc_train(copy_model(clean_model), x, y, budget=budget, bits=32, eps=0.0, adv_weight=0.0,
                         fixed_mask=True, factorized=False, **kwargs)


def adversarial_pruning(dense_model, x, y, budget, eps=0.3, **kwargs):
    """AP: one-shot magnitude pruning of the DA model to ``budget`` kernel weights + PGD fine-tune."""
    return atmc_train(copy_model(dense_model), x, y, budget=budget, bits=32, eps=eps, fixed_mask=True,
                         factorized=False, **kwargs)


def adversarial_low_rank(dense_model, x, y, budget, eps=0.3, **kwargs):
    """ALR: truncated SVD of the DA model's layers to ``budget`` stored values + PGD fine-tune."""
    ranks = low_rank_ranks_for_budget(dense_model, budget)
    return atmc_train(low_rank(dense_model, ranks), x, y, budget=None, bits=32, eps=eps, factorized=False,
                         **kwargs)


def atmc(dense_model, x, y, budget, bits=8, eps=0.3, **kwargs):
    """ATMC from the DA model: factorize, then prune + quantize under ``budget`` with ADMM."""
    return atmc_train(dense_model, x, y, budget=budget, bits=bits, eps=eps, factorized=True, **kwargs)

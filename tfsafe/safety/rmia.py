"""RMIA: the relative membership-inference attack (Zarifzadeh, Liu and Shokri, "Low-Cost
High-Power Membership Inference Attacks", ICML 2024).

For an audit example ``x`` and population samples ``z`` (data the target never trained on),
the attack compares two likelihood ratios::

    LR(x, z) = (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z))

where ``Pr(u | theta)`` is the target's softmax probability of ``u``'s true label and
``Pr(u)`` the same probability averaged over models that did and did not train on ``u``,
estimated from reference models. The score of ``x`` is the fraction of population samples it
dominates: ``score(x) = |{z : LR(x, z) >= gamma}| / |Z|``.

``Pr(u)`` from the reference models (:mod:`tfsafe.safety.lira` trains and stores them):

- **online** (IN and OUT models of ``u``): ``(mean_IN + mean_OUT) / 2``.
- **offline** (OUT models only): the paper's linear approximation of the missing IN models,
  ``Pr_IN ~= a Pr_OUT + (1 - a)``, so ``Pr(u) = ((1 + a) mean_OUT + (1 - a)) / 2``.
  ``a = None`` fits ``a`` by least squares from examples that have both IN and OUT models
  (``Pr_IN - 1 = a (Pr_OUT - 1)``), and uses :data:`DEFAULT_A` when none has.

Online, population samples without IN models (a separate population nobody trained on) use
the offline estimate, so every ``Pr(u)`` estimates the same quantity. One reference model is
enough: offline with one model trained on a population half (``train_on="population"``).
Without a separate population the other pool examples serve as ``z`` (never ``x`` itself);
the attacker does not know which of them are members, so this is no leak of ground truth.
"""

import numpy as np

from tfsafe.errors import InputError
from tfsafe.safety.lira import check_audit_pool, load_reference_models, target_logits
from tfsafe.safety.membership import MembershipAudit
from tfsafe.safety.roc import roc_row, worst_case

__all__ = ["DEFAULT_A", "DEFAULT_GAMMA", "fit_offline_a", "marginal_probability", "rmia_audit", "rmia_scores",
           "true_class_probability"]

DEFAULT_A = 0.3  # the paper's offline setting for CIFAR-10 when it cannot be fitted
DEFAULT_GAMMA = 2.0


def true_class_probability(logits, labels):
    """Softmax probability of the true label, ``(..., n)``, from ``(..., n, classes)`` logits."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    index = np.broadcast_to(np.asarray(labels, np.int64)[:, None], z.shape[:-1] + (1,))
    return np.exp(np.take_along_axis(z, index, axis=-1)[..., 0]) / np.exp(z).sum(axis=-1)


def _side_mean(prob, mask):
    count = mask.sum(0)
    return np.where(mask, prob, 0.0).sum(0) / np.maximum(count, 1), count


def fit_offline_a(prob, in_mask):
    """Least-squares ``a`` in ``Pr_IN - 1 = a (Pr_OUT - 1)`` over examples with IN and OUT
    models, clipped to ``[0, 1]``; ``None`` when no example has both."""
    p_in, n_in = _side_mean(prob, in_mask)
    p_out, n_out = _side_mean(prob, ~in_mask)
    both = (n_in > 0) & (n_out > 0)
    if not both.any():
        return None
    u, v = p_out[both] - 1.0, p_in[both] - 1.0
    denom = float(np.dot(u, u))
    return float(np.clip(np.dot(u, v) / denom, 0.0, 1.0)) if denom > 0 else 1.0


def marginal_probability(prob, in_mask, mode, a):
    """``Pr(u)`` per example from reference probabilities ``(models, n)`` (see the module doc).

    Raises:
        InputError: an example without the OUT model the estimate needs.
    """
    p_in, n_in = _side_mean(prob, in_mask)
    p_out, n_out = _side_mean(prob, ~in_mask)
    offline = 0.5 * ((1.0 + a) * p_out + (1.0 - a))
    if mode == "offline":
        if n_out.min() < 1:
            raise InputError(f"{int((n_out < 1).sum())} examples have no OUT reference model for offline RMIA; "
                             "train more reference models, or train them on a population.")
        return offline
    if (n_out < 1).any():
        raise InputError(f"{int((n_out < 1).sum())} examples have no OUT reference model for online RMIA; "
                         "train more reference models.")
    return np.where(n_in > 0, 0.5 * (p_in + p_out), offline)


def rmia_scores(target_prob_x, ref_prob_x, in_mask_x, target_prob_z, ref_prob_z, in_mask_z, mode="offline",
                a=None, gamma=DEFAULT_GAMMA, z_is_x=False):
    """RMIA scores: the fraction of population samples each ``x`` dominates.

    Args:
        target_prob_x, target_prob_z: ``(n,)`` / ``(m,)`` target probabilities of the true label.
        ref_prob_x, ref_prob_z: ``(models, n)`` / ``(models, m)`` reference probabilities.
        in_mask_x, in_mask_z: bool, same shapes: which reference models trained on each.
        mode: ``"online"`` or ``"offline"``.
        a: offline approximation parameter, or ``None`` to fit it (see module doc).
        gamma: the likelihood-ratio threshold (> 0).
        z_is_x: the population is the audit pool itself (``x`` is not compared with itself).

    Returns:
        ``(scores in [0, 1], a used, number of population samples used)``: samples with only
        IN reference models are left out.
    """
    if mode not in ("online", "offline"):
        raise InputError(f"RMIA mode must be 'online' or 'offline', got {mode!r}.")
    if not gamma > 0:
        raise InputError(f"gamma must be > 0, got {gamma}.")
    in_mask_x, in_mask_z = np.asarray(in_mask_x, bool), np.asarray(in_mask_z, bool)
    target_prob_z, ref_prob_z = np.asarray(target_prob_z), np.asarray(ref_prob_z)
    if mode == "online" and not in_mask_x.any():
        raise InputError("No reference model trained on any audited example, so online RMIA would equal offline; "
                         "train reference models on pool halves (train_on='pool') for online.")
    if a is None:
        a = fit_offline_a(ref_prob_x, in_mask_x)
        a = DEFAULT_A if a is None else a
    elif not 0.0 <= a <= 1.0:
        raise InputError(f"a must be in [0, 1], got {a}.")
    tiny = 1e-300
    log_ratio_x = np.log(np.maximum(target_prob_x, tiny)) - np.log(
        np.maximum(marginal_probability(ref_prob_x, in_mask_x, mode, a), tiny))
    # Population samples need an OUT model for Pr(z) too; those that only have IN models (a
    # population the reference models trained on halves of) are left out.
    usable = (~in_mask_z).any(axis=0)
    if not usable.any():
        raise InputError("No population sample has an OUT reference model; train more reference models.")
    log_ratio_z = np.sort(np.log(np.maximum(target_prob_z[usable], tiny)) - np.log(
        np.maximum(marginal_probability(ref_prob_z[:, usable], in_mask_z[:, usable], mode, a), tiny)))
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x / gamma
    count = np.searchsorted(log_ratio_z, log_ratio_x - np.log(gamma), side="right").astype(np.float64)
    total = len(log_ratio_z)
    if z_is_x:
        count -= gamma <= 1.0  # x itself (LR = 1) was counted
        total -= 1
    return count / max(total, 1), a, total


def rmia_audit(model, pool, is_member, reference_dir, modes=("online", "offline"), population=None, a=None,
               gamma=DEFAULT_GAMMA, output=None, batch_size=512):
    """Score every pool example with RMIA and measure how well the scores separate members.

    Args:
        model: the target (Keras model, ``.tflite`` path or callable).
        pool: ``(x, y)`` the reference models were trained / evaluated on.
        is_member: bool ``(n,)``: which pool examples the target trained on.
        reference_dir: folder written by :func:`tfsafe.safety.lira.train_reference_models`.
        modes: any of ``"online"``, ``"offline"``.
        population: ``(x, y)`` population samples ``z`` the reference models were evaluated
            on (pass what they were trained with); ``None`` uses the other pool examples.
        a, gamma: see :func:`rmia_scores`.
        output: ``"logits"`` / ``"probabilities"`` for callables and files that do not say.
        batch_size: examples per target call.

    Returns:
        A :class:`~tfsafe.safety.membership.MembershipAudit` with rows ``rmia_online`` /
        ``rmia_offline`` (with ``reference_models``, ``a``, ``gamma``, ``population``);
        modes the reference models cannot support are in ``skipped``.

    Raises:
        InputError: bad pool, no usable reference models, bad ``a`` / ``gamma``.
    """
    (x, y), is_member, population = check_audit_pool(pool, is_member, population)
    unknown = set(modes) - {"online", "offline"}
    if unknown or not modes:
        raise InputError(f"RMIA modes must be among 'online', 'offline', got {list(modes)}.")
    refs = load_reference_models(reference_dir, (x, y), population)
    target_x = true_class_probability(target_logits(model, x, batch_size, output), y)
    ref_x = true_class_probability(refs.logits, y)
    if population is None:
        target_z, ref_z, in_z = target_x, ref_x, refs.in_mask
    else:
        target_z = true_class_probability(target_logits(model, population[0], batch_size, output), population[1])
        ref_z, in_z = true_class_probability(refs.pop_logits, population[1]), refs.pop_in_mask
    counts = refs.counts()
    rows, skipped = [], []
    for mode in modes:
        try:
            scores, used_a, n_z = rmia_scores(target_x, ref_x, refs.in_mask, target_z, ref_z, in_z, mode, a, gamma,
                                         z_is_x=population is None)
        except InputError as err:
            skipped.append({"attack": f"rmia_{mode}", "reason": str(err)})
            continue
        rows.append(roc_row(f"rmia_{mode}", is_member, scores, reference_models=counts, a=used_a, gamma=gamma,
                            population="pool" if population is None else "separate", population_used=n_z))
    if not rows:
        raise InputError("RMIA could not run: " + "; ".join(s["reason"] for s in skipped))
    worst = worst_case(rows)
    return MembershipAudit(attacks=rows, worst=worst, n_members=int(is_member.sum()),
                           n_nonmembers=int((~is_member).sum()), skipped=skipped, headline=dict(worst))

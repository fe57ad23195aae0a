"""Membership ROC metrics: AUC, advantage, TPR at a fixed FPR, and what an audit set can resolve.

Every membership attack in tfsafe (tensorflow-privacy's, LiRA, RMIA) ends in a score per
example, higher meaning "more likely a member". :func:`roc_row` turns those scores into the
full ROC curve (``sklearn.metrics.roc_curve`` with ``drop_intermediate=False``, so no point
that could carry the TPR at a low FPR is thinned away) and reads the metrics off it.

TPR at a target FPR follows Carlini et al. (2022): the largest TPR among ROC points whose
FPR is at most the target. With ``n`` non-members the smallest non-zero FPR is ``1 / n``; a
target below it cannot be resolved (the value read is the TPR at FPR 0, a different,
stricter number). Such targets are flagged in every row (``unresolved``) and in the
audit result, never silently reported as if resolved.
"""

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from tfsafe.errors import InputError

__all__ = ["FPR_TARGETS", "METRICS", "min_resolvable_fpr", "resolution_flags", "roc_row", "tpr_at_fpr",
           "unresolved_metrics", "worst_case"]

# metric key -> target false-positive rate
FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_01pct_fpr": 0.001}
METRICS = ("auc", "advantage", *FPR_TARGETS)


def tpr_at_fpr(fpr, tpr, target):
    """Highest TPR on the ROC curve at a false-positive rate no larger than ``target``."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def min_resolvable_fpr(n_nonmembers):
    """The smallest non-zero FPR ``n_nonmembers`` negatives can measure: ``1 / n``."""
    return 1.0 / n_nonmembers if n_nonmembers else 1.0


def unresolved_metrics(n_nonmembers):
    """Keys of :data:`FPR_TARGETS` whose FPR is below what ``n_nonmembers`` can resolve."""
    floor = min_resolvable_fpr(n_nonmembers)
    return [key for key, target in FPR_TARGETS.items() if target < floor - 1e-12]


def resolution_flags(n_nonmembers):
    """One readable line per unresolved FPR target (empty when all resolve)."""
    floor = min_resolvable_fpr(n_nonmembers)
    return [
        f"TPR at {FPR_TARGETS[key]:.1%} FPR is unresolved: {n_nonmembers} non-members resolve FPR only down to "
        f"1/{n_nonmembers} = {floor:.2%}; it needs >= {int(np.ceil(1 / FPR_TARGETS[key])):,} non-members "
        f"(the value shown is the TPR at FPR 0)."
        for key in unresolved_metrics(n_nonmembers)
    ]


def roc_row(name, is_member, scores, **extra):
    """The metrics of one attack from its per-example scores.

    Args:
        name: the attack's name.
        is_member: ``(n,)`` booleans, True for the target's training examples.
        scores: ``(n,)`` floats, higher = more likely a member (NaN not allowed).
        **extra: more JSON-able entries for the row (e.g. reference model counts).

    Returns:
        dict with ``attack``, ``auc``, ``advantage`` (max TPR - FPR), the :data:`FPR_TARGETS`
        keys, ``unresolved`` (those keys the non-members cannot resolve), ``fpr`` and ``tpr``.

    Raises:
        InputError: scores with NaN, or labels without both members and non-members.
    """
    is_member = np.asarray(is_member, bool)
    scores = np.asarray(scores, np.float64)
    if scores.shape != is_member.shape:
        raise InputError(f"{name}: {scores.shape[0]} scores for {is_member.shape[0]} examples.")
    if is_member.all() or not is_member.any():
        raise InputError(f"{name}: the audit needs both members and non-members.")
    if not np.all(np.isfinite(scores)):
        raise InputError(f"{name}: membership scores contain NaN or infinite values.")
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    row = {"attack": name, "auc": float(roc_auc_score(is_member, scores)), "advantage": float(np.max(tpr - fpr))}
    row.update({key: tpr_at_fpr(fpr, tpr, target) for key, target in FPR_TARGETS.items()})
    row["unresolved"] = unresolved_metrics(int((~is_member).sum()))
    row.update(extra)
    row["fpr"], row["tpr"] = fpr.tolist(), tpr.tolist()
    return row


def worst_case(rows):
    """The maximum of each metric over ``rows``, ``attack`` (the highest AUC) and ``unresolved``."""
    if not rows:
        raise InputError("No membership attack produced a result.")
    worst = {metric: max(r[metric] for r in rows) for metric in METRICS}
    worst["attack"] = max(rows, key=lambda r: r["auc"])["attack"]
    worst["unresolved"] = [key for key in FPR_TARGETS if any(key in r.get("unresolved", ()) for r in rows)]
    return worst

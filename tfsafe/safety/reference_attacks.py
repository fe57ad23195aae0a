"""The headline membership audit when reference models are requested: LiRA and RMIA together.

:func:`audit_pool` lays members and non-members out as one pool (what the reference models
train on halves of); :func:`reference_audit` runs LiRA (:mod:`tfsafe.safety.lira`) and RMIA
(:mod:`tfsafe.safety.rmia`) on the merged reference models and returns one
:class:`~tfsafe.safety.membership.MembershipAudit` whose ``headline`` is their worst case.
``audit_membership(...).merge(reference_audit(...))`` adds tensorflow-privacy's attacks
beside them (``worst`` over everything, ``headline`` over LiRA / RMIA).

Example:
    >>> # pool, is_member = audit_pool(members, nonmembers)
    >>> # train_reference_models(model, pool, "refs", num_models=8, shard="0/2")   # each shard
    >>> # audit = audit_membership(model, members, nonmembers).merge(reference_audit(model, pool, is_member, "refs"))
"""

import numpy as np

from tfsafe.errors import InputError
from tfsafe.safety.lira import lira_audit
from tfsafe.safety.membership import MembershipAudit
from tfsafe.safety.rmia import DEFAULT_GAMMA, rmia_audit
from tfsafe.safety.roc import worst_case

__all__ = ["REFERENCE_ATTACKS", "audit_pool", "reference_audit"]

REFERENCE_ATTACKS = ("lira", "rmia")


def audit_pool(members, nonmembers, balance=True):
    """One pool of ``members`` then ``non-members`` (``balance``: the first ``min`` of each).

    Returns:
        ``((x, y), is_member)``.
    """
    (xm, ym), (xn, yn) = members, nonmembers
    n_m, n_n = len(xm), len(xn)
    if balance:
        n_m = n_n = min(n_m, n_n)
    x = np.concatenate([np.asarray(xm)[:n_m], np.asarray(xn)[:n_n]])
    y = np.concatenate([np.asarray(ym)[:n_m], np.asarray(yn)[:n_n]])
    return (x, y), np.arange(n_m + n_n) < n_m


def reference_audit(model, pool, is_member, reference_dir, attacks=REFERENCE_ATTACKS, modes=("online", "offline"),
                    population=None, global_variance=None, a=None, gamma=DEFAULT_GAMMA, output=None,
                    batch_size=512):
    """LiRA and RMIA on the reference models in ``reference_dir``: the headline audit.

    Args:
        model: the target (Keras model, ``.tflite`` path or callable).
        pool, is_member: the audit pool and its membership (see :func:`audit_pool`).
        reference_dir: folder of :func:`tfsafe.safety.lira.train_reference_models` (all shards).
        attacks: any of ``"lira"``, ``"rmia"``.
        modes: ``"online"`` and / or ``"offline"`` (for both attacks).
        population: the population the reference models were evaluated on, if any.
        global_variance: LiRA's variance choice (see :func:`tfsafe.safety.lira.lira_scores`).
        a, gamma: RMIA's offline parameter and threshold (see :func:`tfsafe.safety.rmia.rmia_scores`).
        output: ``"logits"`` / ``"probabilities"`` for callables and files that do not say.
        batch_size: examples per target call.

    Returns:
        A :class:`~tfsafe.safety.membership.MembershipAudit`: rows of both attacks (each with
        its reference model counts), ``skipped`` modes with reasons, ``headline`` = ``worst``.

    Raises:
        InputError: unknown attacks, bad pool, no usable reference models.
    """
    unknown = set(attacks) - set(REFERENCE_ATTACKS)
    if unknown or not attacks:
        raise InputError(f"Reference-model attacks must be among {list(REFERENCE_ATTACKS)}, got {list(attacks)}.")
    audits = []
    if "lira" in attacks:
        audits.append(lira_audit(model, pool, is_member, reference_dir, modes=modes, global_variance=global_variance,
                                 population=population, output=output, batch_size=batch_size))
    if "rmia" in attacks:
        audits.append(rmia_audit(model, pool, is_member, reference_dir, modes=modes, population=population, a=a,
                                 gamma=gamma, output=output, batch_size=batch_size))
    rows = [row for audit in audits for row in audit.attacks]
    worst = worst_case(rows)
    return MembershipAudit(attacks=rows, worst=worst, n_members=audits[0].n_members,
                           n_nonmembers=audits[0].n_nonmembers,
                           skipped=[s for audit in audits for s in audit.skipped], headline=dict(worst))

"""Membership-inference audits through tensorflow-privacy.

:func:`audit_membership` runs tensorflow-privacy's ``run_attacks`` (threshold on loss,
threshold on entropy, and trained attackers: logistic regression, random forest, k-NN, MLP)
on the outputs of a model for balanced members (training data) and non-members (data the
model never saw and that was never used for model selection). Each attack reports AUC,
attacker advantage (max TPR - FPR) and TPR at 1% and 0.1% FPR; the headline is the worst
case (the maximum) over attacks.

Example:
    >>> from tfsafe.models import small_cnn
    >>> from tfsafe.data import load_digits
    >>> (x, y), (xt, yt) = load_digits()
    >>> audit = audit_membership(small_cnn(), (x[:100], y[:100]), (xt[:100], yt[:100]),
    ...                          attacks=("threshold",))
    >>> 0.0 <= audit.worst["auc"] <= 1.0
    True
"""

import dataclasses
import os
import sys
import warnings

import numpy as np

from tfsafe.errors import InputError, MissingDependencyError
from tfsafe.models import class_scores
from tfsafe.safety.roc import METRICS, min_resolvable_fpr, resolution_flags, roc_row, tpr_at_fpr, worst_case
from tfsafe.safety.tflite_model import as_target, target_outputs

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "FAST_ATTACKS", "METRICS", "MIN_TRAINED_ATTACK_EXAMPLES", "MembershipAudit",
           "audit_membership", "audit_outputs", "tpr_at_fpr"]

INSTALL_COMMAND = "pip install --no-deps tensorflow-privacy==0.9.0 tensorflow-empirical-privacy==0.1.0"

# tfsafe names -> tensorflow-privacy AttackType names.
ATTACKS = {
    "threshold": "THRESHOLD_ATTACK",
    "entropy": "THRESHOLD_ENTROPY_ATTACK",
    "logistic_regression": "LOGISTIC_REGRESSION",
    "random_forest": "RANDOM_FOREST",
    "knn": "K_NEAREST_NEIGHBORS",
    "mlp": "MULTI_LAYERED_PERCEPTRON",
}
DEFAULT_ATTACKS = tuple(ATTACKS)
# Everything but the random forest, whose grid search takes ~30 s per audit on two cores; for
# quick runs (the demo, tests, attackers inside training loops). Reports say which ran.
FAST_ATTACKS = ("threshold", "entropy", "logistic_regression", "knn", "mlp")
TRAINED_ATTACKS = ("logistic_regression", "random_forest", "knn", "mlp")
# tensorflow-privacy trains its attackers with 2-fold cross-validation and, inside each fold, a
# 3-fold grid search: each fold needs 3 members and 3 non-members, so 6 of each in all. Below
# that it either drops the attack silently or raises; tfsafe lists it as skipped instead.
MIN_TRAINED_ATTACK_EXAMPLES = 6


def _tf_privacy():
    # The package's own switch: skip its estimator imports, which fail on TF >= 2.16.
    sys.skip_tf_privacy_import = True
    try:
        from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
            data_structures,
            membership_inference_attack,
        )
    except ImportError as err:
        raise MissingDependencyError(
            f"Membership audits need tensorflow-privacy ({err}). Install it with: {INSTALL_COMMAND}"
        ) from err
    return data_structures, membership_inference_attack


@dataclasses.dataclass
class MembershipAudit:
    """Result of a membership audit.

    Attributes:
        attacks: one dict per attack: ``attack``, ``auc``, ``advantage``,
            ``tpr_at_1pct_fpr``, ``tpr_at_01pct_fpr``, ``unresolved`` (those TPR keys whose
            FPR the non-members cannot resolve) and the ROC curve (``fpr``, ``tpr``);
            reference-model attacks add ``reference_models`` (IN / OUT counts).
        worst: the maximum of each metric over attacks, ``attack`` (the one with the
            highest AUC) and ``unresolved``.
        n_members, n_nonmembers: audit set sizes (balanced).
        skipped: attacks that could not run, each ``{"attack", "reason"}`` (e.g. a trained
            attacker with too few examples).
        headline: when reference-model attacks (LiRA, RMIA) ran, the worst case over them
            alone: the number to report; ``None`` otherwise (then ``worst`` is the headline).

    ``min_resolvable_fpr`` is ``1 / n_nonmembers``; ``flags`` says in words which TPR-at-FPR
    values it leaves unresolved (TPR at 0.1% FPR needs at least 1,000 non-members).
    """

    attacks: list
    worst: dict
    n_members: int
    n_nonmembers: int
    skipped: list = dataclasses.field(default_factory=list)
    headline: dict = None

    @property
    def min_resolvable_fpr(self):
        return min_resolvable_fpr(self.n_nonmembers)

    @property
    def flags(self):
        return resolution_flags(self.n_nonmembers) + [f"{s['attack']} skipped: {s['reason']}" for s in self.skipped]

    def merge(self, other, headline=True):
        """This audit plus ``other``'s attacks (same members and non-members), as a new audit.

        Args:
            other: a :class:`MembershipAudit` over the same examples, e.g. from
                :func:`tfsafe.safety.reference_attacks.reference_audit`.
            headline: make ``other``'s worst case the headline (LiRA / RMIA).
        """
        attacks = list(self.attacks) + list(other.attacks)
        return MembershipAudit(attacks=attacks, worst=worst_case(attacks), n_members=self.n_members,
                               n_nonmembers=min(self.n_nonmembers, other.n_nonmembers),
                               skipped=list(self.skipped) + list(other.skipped),
                               headline=dict(other.headline or other.worst) if headline else self.headline)

    def to_dict(self, include_curves=True):
        attacks = [
            {k: v for k, v in a.items() if include_curves or k not in ("fpr", "tpr")} for a in self.attacks
        ]
        return {"worst": dict(self.worst), "headline": None if self.headline is None else dict(self.headline),
                "attacks": attacks, "skipped": [dict(s) for s in self.skipped], "n_members": self.n_members,
                "n_nonmembers": self.n_nonmembers, "min_resolvable_fpr": self.min_resolvable_fpr,
                "flags": self.flags}


def _resolve_attacks(attacks):
    attacks = DEFAULT_ATTACKS if attacks is None else tuple(attacks)
    if not attacks:
        raise InputError("attacks is empty; pass names from " + ", ".join(ATTACKS))
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"Unknown membership attacks {unknown}; choose from {list(ATTACKS)}.")
    return attacks


def _run_one(mia, data_structures, attack_input, name, n_per_side):
    """One tensorflow-privacy attack: ``(result, None)`` or ``(None, reason it was skipped)``."""
    if name in TRAINED_ATTACKS and n_per_side < MIN_TRAINED_ATTACK_EXAMPLES:
        return None, (f"too few examples to train the attacker: {n_per_side} members and non-members each, "
                      f"tensorflow-privacy's cross-validated training needs >= {MIN_TRAINED_ATTACK_EXAMPLES}")
    attack_type = getattr(data_structures.AttackType, ATTACKS[name])
    try:
        results = mia.run_attacks(attack_input, data_structures.SlicingSpec(entire_dataset=True),
                                  attack_types=[attack_type])
    except ValueError as err:  # sklearn's cross-validation refusing tiny or one-class folds
        return None, f"tensorflow-privacy could not train it: {err}"
    if not results.single_attack_results:
        return None, "tensorflow-privacy dropped it (its cross-validation folds lack examples of one side)"
    return results.single_attack_results[0], None


def _attack_logits(outputs, kind):
    """Logits for tensorflow-privacy, each row's maximum at 0.

    Probabilities become their logs (``softmax(log p) = p`` renormalized; a dequantized 0 is
    floored at 1e-30), because tensorflow-privacy's entropy attack reads only logits. Shifting
    each row to a maximum of 0 leaves softmax and losses unchanged and keeps tensorflow-privacy
    from taking logits that happen to sum to one for probabilities.
    """
    if kind == "probabilities":
        outputs = np.log(np.maximum(outputs, 1e-30))
    return outputs - outputs.max(axis=1, keepdims=True)


def _balance(member_outputs, member_labels, nonmember_outputs, nonmember_labels, seed):
    n = min(len(member_outputs), len(nonmember_outputs))
    rng = np.random.default_rng(seed)
    if len(member_outputs) > n:
        keep = np.sort(rng.choice(len(member_outputs), n, replace=False))
        member_outputs, member_labels = member_outputs[keep], member_labels[keep]
    if len(nonmember_outputs) > n:
        keep = np.sort(rng.choice(len(nonmember_outputs), n, replace=False))
        nonmember_outputs, nonmember_labels = nonmember_outputs[keep], nonmember_labels[keep]
    return member_outputs, member_labels, nonmember_outputs, nonmember_labels


def audit_outputs(member_outputs, nonmember_outputs, member_labels, nonmember_labels,
                  outputs="logits", attacks=None, balance=True, seed=0):
    """Audit precomputed model outputs (logits or probabilities) for membership leakage.

    Args:
        member_outputs: (n, classes) outputs on training examples.
        nonmember_outputs: (m, classes) outputs on examples the model never saw.
        member_labels, nonmember_labels: integer labels.
        outputs: ``"logits"`` or ``"probabilities"``.
        attacks: names from :data:`ATTACKS` (default: all).
        balance: subsample the larger side so members and non-members are equally many.
        seed: seeds the balancing and the trained attackers.

    Returns:
        A :class:`MembershipAudit`.
    """
    from tfsafe.validation import check_labels

    if outputs not in ("logits", "probabilities"):
        raise InputError(f"outputs must be 'logits' or 'probabilities', got {outputs!r}.")
    arrays = []
    for name, arr in (("member outputs", member_outputs), ("non-member outputs", nonmember_outputs)):
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1):  # a one-unit binary head
            arr = class_scores(arr, outputs).astype(np.float64)
        if arr.ndim != 2 or arr.shape[0] < 2:
            raise InputError(f"{name} must have shape (examples >= 2, classes), got {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} contain NaN or infinite values; the model diverged or the data is bad.")
        arrays.append(arr)
    member_outputs, nonmember_outputs = arrays
    if member_outputs.shape[1] != nonmember_outputs.shape[1]:
        raise InputError("Member and non-member outputs have different numbers of classes.")
    classes = member_outputs.shape[1]
    member_labels = check_labels(member_labels, classes, "member labels", n=len(member_outputs))
    nonmember_labels = check_labels(nonmember_labels, classes, "non-member labels", n=len(nonmember_outputs))
    if outputs == "probabilities" and (member_outputs.min() < 0 or member_outputs.max() > 1 + 1e-6):
        raise InputError("outputs='probabilities' but values are outside [0, 1]; pass outputs='logits'.")
    if balance:
        member_outputs, member_labels, nonmember_outputs, nonmember_labels = _balance(
            member_outputs, member_labels, nonmember_outputs, nonmember_labels, seed)

    data_structures, mia = _tf_privacy()
    names = _resolve_attacks(attacks)
    attack_input = data_structures.AttackInputData(
        logits_train=_attack_logits(member_outputs, outputs), logits_test=_attack_logits(nonmember_outputs, outputs),
        labels_train=member_labels, labels_test=nonmember_labels,
    )
    rows, skipped = [], []
    n_per_side = min(len(member_outputs), len(nonmember_outputs))
    np_state = np.random.get_state()
    np.random.seed(seed)  # the trained attackers split and fit with numpy's global RNG
    try:
        with warnings.catch_warnings():
            # sklearn convergence notes and tf-privacy's epsilon-bound divisions by zero are
            # not actionable for the user; the results carry what matters.
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                for name in names:
                    result, reason = _run_one(mia, data_structures, attack_input, name, n_per_side)
                    if result is None:
                        skipped.append({"attack": name, "reason": reason})
                        continue
                    # The ROC again from the attack's own scores, every point kept (tf-privacy's
                    # curve thins collinear points, which can hide the TPR at a low FPR).
                    scores = np.concatenate([result.membership_scores_train, result.membership_scores_test])
                    is_member = np.arange(len(scores)) < len(result.membership_scores_train)
                    rows.append(roc_row(name, is_member, scores))
    finally:
        np.random.set_state(np_state)
    if not rows:
        raise InputError("No membership attack could run on this data: "
                         + "; ".join(f"{s['attack']}: {s['reason']}" for s in skipped))
    return MembershipAudit(attacks=rows, worst=worst_case(rows), n_members=len(member_outputs),
                           n_nonmembers=len(nonmember_outputs), skipped=skipped)


def _model_outputs(model, x, batch_size, output=None):
    """``(n, classes >= 2)`` outputs of any target and their kind (logits or probabilities)."""
    scores, kind = target_outputs(model, x, batch_size, output)
    if kind is None:
        raise InputError(
            f"Cannot tell whether {_describe(model)} returns logits or probabilities, and the "
            "membership attacks read them differently. State it: audit_membership(..., "
            "output='logits'|'probabilities') (tfsafe audit --output_kind=...)."
        )
    return scores, kind


def _describe(model):
    path = getattr(model, "path", model)
    return f"'{os.fspath(path)}'" if isinstance(path, (str, os.PathLike)) else f"the {type(model).__name__}"


def audit_membership(model, members, nonmembers, attacks=None, balance=True, seed=0, batch_size=512,
                     output=None):
    """Audit a model for membership inference with tensorflow-privacy's attacks.

    Args:
        model: a Keras model (its logits are used; a one-unit sigmoid or logit head is the
            two-class ``[0, z]``), a ``.tflite`` path or ``TFLiteModel`` (black-box outputs;
            whether they are probabilities is read from the side-car JSON or the file's last
            op), or any callable / object with ``predict(x)``.
        members: ``(x, y)`` drawn from the model's training data.
        nonmembers: ``(x, y)`` never used for training or model selection.
        attacks: names from :data:`ATTACKS` (default: all six).
        balance: use equally many members and non-members (the protocol requires it).
        seed: seeds balancing and the trained attackers.
        batch_size: examples per model call.
        output: ``"logits"`` or ``"probabilities"``: what a callable or ``.tflite`` file
            returns. Needed for callables, and for files without a side-car whose last op
            does not say; never guessed from the values (dequantized int8 probabilities do
            not sum to one).

    Returns:
        A :class:`MembershipAudit`; ``audit.worst`` is the headline.

    Raises:
        InputError: bad data, or outputs whose kind cannot be known and ``output`` is None.
    """
    from tfsafe.validation import check_features

    (xm, ym), (xn, yn) = members, nonmembers
    xm = check_features(xm, "members x", dtype=None)
    xn = check_features(xn, "non-members x", xm.shape[1:], dtype=None)
    model = as_target(model)
    out_m, kind = _model_outputs(model, xm, batch_size, output)
    out_n, _ = _model_outputs(model, xn, batch_size, output)
    return audit_outputs(out_m, out_n, ym, yn, outputs=kind, attacks=attacks, balance=balance, seed=seed)

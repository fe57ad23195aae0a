import numpy as np
import pytest

from tfsafe.errors import InputError
from tfsafe.safety.membership import MIN_TRAINED_ATTACK_EXAMPLES, audit_outputs
from tfsafe.safety.roc import resolution_flags, roc_row, tpr_at_fpr, unresolved_metrics


def test_tpr_at_fpr_keeps_every_roc_point():
    # Each score shared by one member and one non-member: the ROC is the diagonal through
    # 1,000 collinear points. A thinned curve (sklearn's default drop_intermediate) keeps only
    # its ends and would read TPR 0 at 1% FPR.
    n = 1000
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    row = roc_row("ties", is_member, np.r_[np.arange(n), np.arange(n)])
    assert row["tpr_at_1pct_fpr"] == pytest.approx(0.01) and row["tpr_at_01pct_fpr"] == pytest.approx(0.001)
    assert row["auc"] == pytest.approx(0.5) and row["unresolved"] == []
    assert tpr_at_fpr([0.0, 0.005, 0.02, 1.0], [0.1, 0.3, 0.6, 1.0], 0.01) == 0.3


def test_fprs_the_non_members_cannot_resolve_are_flagged():
    assert unresolved_metrics(1000) == [] and unresolved_metrics(999) == ["tpr_at_01pct_fpr"]
    assert unresolved_metrics(99) == ["tpr_at_1pct_fpr", "tpr_at_01pct_fpr"]
    (flag,) = resolution_flags(400)
    assert flag.startswith("TPR at 0.1% FPR is unresolved: 400 non-members") and ">= 1,000 non-members" in flag
    rng = np.random.default_rng(0)
    audit = audit_outputs(rng.normal(size=(80, 3)), rng.normal(size=(80, 3)), rng.integers(0, 3, 80),
                          rng.integers(0, 3, 80), attacks=("threshold",))
    assert audit.min_resolvable_fpr == 1 / 80
    assert audit.worst["unresolved"] == ["tpr_at_1pct_fpr", "tpr_at_01pct_fpr"] == audit.attacks[0]["unresolved"]
    assert len(audit.to_dict()["flags"]) == 2


def test_trained_attackers_without_enough_data_are_listed_as_skipped():
    rng = np.random.default_rng(0)
    n = MIN_TRAINED_ATTACK_EXAMPLES - 2
    outputs, labels = rng.normal(size=(2 * n, 3)), rng.integers(0, 3, 2 * n)
    audit = audit_outputs(outputs[:n], outputs[n:], labels[:n], labels[n:],
                          attacks=("threshold", "logistic_regression", "knn"))
    assert [r["attack"] for r in audit.attacks] == ["threshold"]
    assert [s["attack"] for s in audit.skipped] == ["logistic_regression", "knn"]
    assert "too few examples to train the attacker: 4 members" in audit.skipped[0]["reason"]
    assert any(f.startswith("knn skipped: too few examples") for f in audit.to_dict()["flags"])
    with pytest.raises(InputError, match="logistic_regression: too few examples"):
        audit_outputs(outputs[:n], outputs[n:], labels[:n], labels[n:], attacks=("logistic_regression",))
    # Enough examples: the trained attacker runs.
    big = rng.normal(size=(2 * MIN_TRAINED_ATTACK_EXAMPLES, 3))
    lab = rng.integers(0, 3, 2 * MIN_TRAINED_ATTACK_EXAMPLES)
    k = MIN_TRAINED_ATTACK_EXAMPLES
    ok = audit_outputs(big[:k], big[k:], lab[:k], lab[k:], attacks=("logistic_regression",))
    assert ok.skipped == [] and ok.attacks[0]["attack"] == "logistic_regression"

import numpy as np
import pytest
from reference_setup import reference_setup

from tfsafe.errors import InputError
from tfsafe.safety.membership import audit_membership
from tfsafe.safety.reference_attacks import reference_audit
from tfsafe.safety.rmia import fit_offline_a, marginal_probability, rmia_audit, rmia_scores, true_class_probability


def constant(batch):
    return np.tile(np.linspace(-1, 1, 10), (len(batch), 1))


def test_rmia_scores_count_the_population_samples_each_example_dominates():
    # One OUT reference model, a = 0: Pr(u) = (Pr_OUT(u) + 1) / 2.
    out = np.zeros((1, 2), bool)
    scores, a, n_z = rmia_scores(np.array([0.9, 0.5]), np.array([[0.3, 0.5]]), out,
                                 np.array([0.2, 0.4, 0.6]), np.array([[0.2, 0.2, 0.6]]), np.zeros((1, 3), bool),
                                 mode="offline", a=0.0, gamma=1.5)
    # ratios: x = 0.9/0.65, 0.5/0.75; z = 1/3, 2/3, 3/4.  LR >= 1.5 <=> ratio_z <= ratio_x / 1.5
    np.testing.assert_allclose(scores, [1.0, 1 / 3])
    assert a == 0.0 and n_z == 3
    # The pool as its own population: x is never compared with itself.
    x_prob, ref = np.array([0.9, 0.5]), np.array([[0.3, 0.5]])
    scores, _, n_z = rmia_scores(x_prob, ref, out, x_prob, ref, out, a=0.0, gamma=1.0, z_is_x=True)
    np.testing.assert_allclose(scores, [1.0, 0.0])
    assert n_z == 1


def test_marginal_probability_and_the_fitted_a():
    prob = np.array([[0.2, 0.9], [0.6, 0.4]])
    in_mask = np.array([[False, True], [True, False]])
    np.testing.assert_allclose(marginal_probability(prob, in_mask, "online", 0.3), [0.4, 0.65])
    np.testing.assert_allclose(marginal_probability(prob, in_mask, "offline", 0.3), [0.5 * (1.3 * 0.2 + 0.7),
                                                                                     0.5 * (1.3 * 0.4 + 0.7)])
    rng = np.random.default_rng(0)
    p_out = rng.uniform(0, 1, 50)
    prob = np.stack([p_out, 0.25 * p_out + 0.75])  # Pr_IN = a Pr_OUT + (1 - a), a = 0.25
    in_mask = np.stack([np.zeros(50, bool), np.ones(50, bool)])
    assert fit_offline_a(prob, in_mask) == pytest.approx(0.25)
    assert fit_offline_a(prob[:1], in_mask[:1]) is None
    np.testing.assert_allclose(true_class_probability(np.log([[0.2, 0.8]]), np.array([1])), [0.8])


def test_rmia_finds_a_memorizing_model():
    s = reference_setup()
    audit = rmia_audit(s["target"], s["pool"], s["is_member"], s["pool_dir"])
    rows = {r["attack"]: r for r in audit.attacks}
    assert set(rows) == {"rmia_online", "rmia_offline"}
    assert rows["rmia_online"]["tpr_at_1pct_fpr"] > 0.3  # 0.58 measured
    assert rows["rmia_offline"]["tpr_at_1pct_fpr"] > 0.2  # 0.46 measured
    assert 0.0 < rows["rmia_offline"]["a"] < 1.0  # fitted from the IN / OUT models
    assert rows["rmia_online"]["population"] == "pool" and rows["rmia_online"]["population_used"] == 399


def test_rmia_with_one_reference_model():
    s = reference_setup()
    args = (s["pool"], s["is_member"], s["population_dir"])
    audit = rmia_audit(s["target"], *args, population=s["population"])
    (row,) = audit.attacks
    assert row["attack"] == "rmia_offline" and row["reference_models"]["total"] == 1
    assert row["tpr_at_1pct_fpr"] > 0.1 and row["auc"] > 0.9  # 0.31 and 0.98 measured
    assert row["a"] == 0.3 and row["population_used"] == 100  # the population half the model did not train on
    assert audit.skipped[0]["attack"] == "rmia_online" and "online RMIA would equal offline" in \
        audit.skipped[0]["reason"]
    blind = rmia_audit(constant, *args, population=s["population"], output="logits")
    assert abs(blind.worst["auc"] - 0.5) < 0.1 and blind.worst["tpr_at_1pct_fpr"] < 0.08


def test_reference_audit_is_the_headline_beside_tf_privacy():
    s = reference_setup()
    pool, is_member = s["pool"], s["is_member"]
    members = (pool[0][is_member], pool[1][is_member])
    nonmembers = (pool[0][~is_member], pool[1][~is_member])
    ref = reference_audit(s["target"], pool, is_member, s["pool_dir"])
    assert {r["attack"] for r in ref.attacks} == {"lira_online", "lira_offline", "offset", "rmia_online",
                                                  "rmia_offline"}
    audit = audit_membership(s["target"], members, nonmembers, attacks=("threshold",)).merge(ref)
    assert audit.headline == ref.worst and len(audit.attacks) == 6
    assert audit.worst["auc"] >= audit.headline["auc"]
    d = audit.to_dict(include_curves=False)
    assert d["headline"]["tpr_at_1pct_fpr"] > 0.3 and d["n_nonmembers"] == 200
    with pytest.raises(InputError, match="gamma must be > 0"):
        rmia_audit(s["target"], pool, is_member, s["pool_dir"], gamma=0)
    with pytest.raises(InputError, match="Reference-model attacks"):
        reference_audit(s["target"], pool, is_member, s["pool_dir"], attacks=("shadow",))

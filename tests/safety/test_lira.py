import os

import numpy as np
import pytest
from reference_setup import FIT, POOL, build, reference_setup
from scipy.special import softmax

from tfsafe.errors import InputError
from tfsafe.models import predict_logits
from tfsafe.safety.lira import (
    augment_queries,
    lira_audit,
    lira_scores,
    load_reference_models,
    logit_confidence,
    train_reference_models,
)
from tfsafe.safety.reference_attacks import audit_pool, reference_audit
from tfsafe.safety.roc import roc_row


def constant(batch):
    """An input-blind model: the same logits for every input."""
    return np.tile(np.linspace(-1, 1, 10), (len(batch), 1))


def test_logit_confidence_is_log_odds_of_the_true_class_and_stable():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 5)) * 3
    labels = rng.integers(0, 5, 50)
    p = softmax(logits, axis=1)[np.arange(50), labels]
    np.testing.assert_allclose(logit_confidence(logits, labels), np.log(p / (1 - p)), rtol=1e-10)
    # A confident model: p_y rounds to 1.0 in float64, phi stays finite and exact.
    confident = logit_confidence(np.array([[800.0, 0.0, -3.0]]), np.array([0]))[0]
    assert confident == pytest.approx(800 - np.log1p(np.exp(-3)))
    assert logit_confidence(np.array([[-800.0, 0.0, 0.0]]), np.array([0]))[0] == pytest.approx(-800 - np.log(2))


def test_shards_train_disjoint_complementary_models_and_resume():
    s = reference_setup()
    assert sorted(m for m in s["logs"] if m.startswith("reference model") and "pool" in m)[0].endswith(
        "trained on 200 pool examples")
    logs = []
    paths = train_reference_models(build, s["pool"], s["pool_dir"], num_models=4, shard=(0, 2), log=logs.append)
    assert [os.path.basename(p) for p in paths] == ["ref_0000.npz", "ref_0002.npz"]
    assert logs == ["reference model 0: already trained, skipping", "reference model 2: already trained, skipping"]
    refs = load_reference_models(s["pool_dir"], s["pool"])
    assert refs.logits.shape == (4, POOL, 10) and (refs.in_mask.sum(1) == POOL // 2).all()
    assert (refs.in_mask[0] == ~refs.in_mask[1]).all()  # every example: 2 IN and 2 OUT models
    assert refs.counts() == {"total": 4, "in_min": 2, "in_median": 2.0, "out_min": 2, "out_median": 2.0}
    with pytest.raises(InputError, match="different audit pool"):
        load_reference_models(s["pool_dir"], (s["pool"][0], (s["pool"][1] + 1) % 10))


def test_lira_finds_a_memorizing_model():
    s = reference_setup()
    audit = lira_audit(s["target"], s["pool"], s["is_member"], s["pool_dir"])
    rows = {r["attack"]: r for r in audit.attacks}
    assert set(rows) == {"lira_online", "lira_offline", "offset"} and not audit.skipped
    # Random labels are only fit by memorizing: at 1% FPR (resolved by 200 non-members)
    # online LiRA finds most members (0.65 measured), offline fewer (0.31).
    assert rows["lira_online"]["tpr_at_1pct_fpr"] > 0.3
    assert rows["lira_offline"]["tpr_at_1pct_fpr"] > 0.1
    assert rows["lira_online"]["auc"] > 0.9
    assert rows["lira_online"]["reference_models"]["in_min"] == 2
    assert rows["lira_online"]["global_variance"] is True  # 2 models per side: per-example variance is noise
    assert audit.headline["tpr_at_1pct_fpr"] == rows["lira_online"]["tpr_at_1pct_fpr"]
    # 200 non-members resolve 1% FPR but not 0.1%: flagged, not reported as resolved.
    assert audit.min_resolvable_fpr == 1 / 200
    assert rows["lira_online"]["unresolved"] == ["tpr_at_01pct_fpr"] == audit.worst["unresolved"]
    assert any("0.1% FPR is unresolved: 200 non-members" in f for f in audit.to_dict()["flags"])


def test_lira_on_an_input_blind_model_is_chance():
    s = reference_setup()
    audit = reference_audit(constant, s["pool"], s["is_member"], s["pool_dir"], attacks=("lira",), output="logits")
    for row in audit.attacks:
        assert abs(row["auc"] - 0.5) < 0.1, row["attack"]  # 3.5 sd of the AUC of 200 + 200 random scores
        assert row["tpr_at_1pct_fpr"] < 0.08, row["attack"]  # ~1%: a few of 200 members (0.01-0.035 measured)


def test_lira_scores_tpr_at_low_fpr_is_near_the_fpr_without_signal():
    """Large synthetic check of the scoring: 20,000 examples, 8 reference models."""
    rng = np.random.default_rng(0)
    n, models = 20000, 8
    mu = rng.normal(0, 0.5, n)
    in_mask = np.zeros((models, n), bool)
    for j in range(0, models, 2):
        in_mask[j] = rng.random(n) < 0.5
        in_mask[j + 1] = ~in_mask[j]
    ref_phi = mu + 2.0 * in_mask + rng.normal(size=(models, n))
    is_member = rng.random(n) < 0.5
    leaky = mu + 2.0 * is_member + rng.normal(size=n)
    blind = mu + rng.normal(size=n)
    for mode in ("online", "offline"):
        strong = roc_row(mode, is_member, lira_scores(leaky, ref_phi, in_mask, mode)[0])
        chance = roc_row(mode, is_member, lira_scores(blind, ref_phi, in_mask, mode)[0])
        # The ideal test N(2, 1) vs N(0, 1) gives 0.37 at 1% FPR; 4 models per side get close.
        assert strong["tpr_at_1pct_fpr"] > 0.2
        assert 0.005 < chance["tpr_at_1pct_fpr"] < 0.02 and abs(chance["auc"] - 0.5) < 0.02
        assert chance["unresolved"] == []  # 10,000 non-members resolve 0.1% FPR
    assert lira_scores(leaky, ref_phi, in_mask, global_variance=None)[1] is True  # 4 < 32 per side
    assert lira_scores(leaky, ref_phi, in_mask, global_variance=False)[1] is False


def test_online_lira_is_skipped_without_in_models_and_bad_input(tmp_path):
    s = reference_setup()
    audit = lira_audit(s["target"], s["pool"], s["is_member"], s["population_dir"], population=s["population"])
    assert [r["attack"] for r in audit.attacks] == ["lira_offline", "offset"]
    assert audit.skipped[0]["attack"] == "lira_online" and "no IN or OUT reference model" in audit.skipped[0]["reason"]
    with pytest.raises(InputError, match="i/n"):
        train_reference_models(build, s["pool"], tmp_path, shard="first")
    with pytest.raises(InputError, match="invalid"):
        train_reference_models(build, s["pool"], tmp_path, shard=(3, 2))
    with pytest.raises(InputError, match="needs population"):
        train_reference_models(build, s["pool"], tmp_path, train_on="population")
    with pytest.raises(InputError, match="Found 0 reference models"):
        lira_audit(s["target"], s["pool"], s["is_member"], tmp_path)
    with pytest.raises(InputError, match="boolean vector of length 400"):
        lira_audit(s["target"], s["pool"], s["is_member"][:10], s["pool_dir"])
    np.savez(tmp_path / "ref_0000.npz", in_mask=np.ones(3, bool), stat=np.zeros(3), fingerprint="x")
    with pytest.raises(InputError, match="older tfsafe"):
        load_reference_models(tmp_path, s["pool"])


def test_audit_pool_balances_members_first():
    x = np.arange(10.0).reshape(10, 1)
    (px, py), is_member = audit_pool((x[:3], np.zeros(3)), (x[3:], np.ones(7)))
    assert px[:, 0].tolist() == [0, 1, 2, 3, 4, 5] and is_member.tolist() == [True] * 3 + [False] * 3


def test_probability_outputs_give_the_same_lira_scores_as_logits():
    s = reference_setup()

    def probabilities(batch):
        return softmax(predict_logits(s["target"], np.asarray(batch)).astype(np.float64), axis=1)

    by_logits = lira_audit(s["target"], s["pool"], s["is_member"], s["pool_dir"], modes=("online",))
    by_probs = lira_audit(probabilities, s["pool"], s["is_member"], s["pool_dir"], modes=("online",),
                          output="probabilities")
    assert by_probs.attacks[0]["auc"] == pytest.approx(by_logits.attacks[0]["auc"], abs=2e-3)


def test_lira_with_flipped_queries_sums_the_per_query_likelihood_ratios(tmp_path):
    s = reference_setup()
    (x, y), target = s["pool"], s["target"]
    logs = []
    train_reference_models(build, s["pool"], tmp_path, num_models=2, fit_kwargs=FIT, augmentations=("flip",),
                           log=logs.append)
    audit = lira_audit(target, s["pool"], s["is_member"], tmp_path, augmentations=("flip",))
    rows = {r["attack"]: r for r in audit.attacks}
    assert rows["lira_online"]["queries"] == ["identity", "flip"] == rows["offset"]["queries"]
    # The online score is the sum over the two queries of each query's own likelihood ratio.
    refs = load_reference_models(tmp_path, s["pool"], augmentations=("flip",))
    assert refs.aug_logits["flip"].shape == refs.logits.shape == (2, POOL, 10)
    per_query = [lira_scores(logit_confidence(predict_logits(target, q), y), logit_confidence(ref, y),
                             refs.in_mask, "online")[0]
                 for q, ref in ((x, refs.logits), (x[:, :, ::-1], refs.aug_logits["flip"]))]
    expected = roc_row("sum", s["is_member"], per_query[0] + per_query[1])
    assert rows["lira_online"]["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert rows["lira_online"]["tpr_at_1pct_fpr"] == pytest.approx(expected["tpr_at_1pct_fpr"], abs=1e-9)
    assert rows["lira_online"]["auc"] > 0.85  # a memorizing target is still found with 1 IN + 1 OUT model
    # Files trained without the flip, and non-image inputs: one clear line each.
    with pytest.raises(InputError, match=r"no logits for the query augmentation\(s\) \['flip'\]"):
        lira_audit(target, s["pool"], s["is_member"], s["pool_dir"], augmentations=("flip",))
    with pytest.raises(InputError, match="needs images"):
        augment_queries(np.zeros((3, 64)), ("flip",))
    with pytest.raises(InputError, match="unknown query augmentation"):
        augment_queries(x, ("rotate",))

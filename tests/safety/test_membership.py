import numpy as np
import pytest

from tfsafe.errors import InputError
from tfsafe.models import small_cnn
from tfsafe.safety.membership import ATTACKS, audit_membership, audit_outputs, tpr_at_fpr

FAST = ("threshold", "entropy", "logistic_regression")


@pytest.fixture(scope="module")
def memorizer(digits):
    """A CNN trained on *random* labels: it can only memorize, so membership is obvious."""
    from conftest import compile_classifier

    from tfsafe._keras import keras

    (x, _), _ = digits
    rng = np.random.default_rng(0)
    members = (x[:200], rng.integers(0, 10, 200))
    nonmembers = (x[200:400], rng.integers(0, 10, 200))
    keras.utils.set_random_seed(0)
    model = compile_classifier(small_cnn(filters=(32, 32), dense=128), lr=3e-3)
    model.fit(*members, epochs=100, batch_size=32, verbose=0)
    return model, members, nonmembers


def test_audit_finds_a_memorizing_model(memorizer):
    model, members, nonmembers = memorizer
    audit = audit_membership(model, members, nonmembers, attacks=FAST)
    assert audit.worst["auc"] > 0.8
    assert audit.worst["advantage"] > 0.4
    assert {a["attack"] for a in audit.attacks} == set(FAST)
    assert audit.n_members == audit.n_nonmembers == 200
    d = audit.to_dict(include_curves=False)
    assert "fpr" not in d["attacks"][0] and d["worst"]["attack"] in FAST


def test_audit_of_outputs_that_ignore_the_input_is_near_chance(digits):
    (x, y), (xt, yt) = digits
    constant = lambda batch: np.tile(np.linspace(-1, 1, 10), (len(batch), 1))  # noqa: E731
    audit = audit_membership(constant, (x[:300], y[:300]), (xt[:300], yt[:300]), attacks=FAST, output="logits")
    assert abs(audit.worst["auc"] - 0.5) < 0.07


def test_audit_balances_and_accepts_probabilities():
    rng = np.random.default_rng(0)
    probs_m = rng.dirichlet(np.ones(3), 50)
    probs_n = rng.dirichlet(np.ones(3), 80)
    audit = audit_outputs(probs_m, probs_n, rng.integers(0, 3, 50), rng.integers(0, 3, 80),
                          outputs="probabilities", attacks=("threshold",))
    assert audit.n_members == audit.n_nonmembers == 50


def test_tpr_at_fpr_reads_the_roc_curve():
    fpr = np.array([0.0, 0.005, 0.02, 1.0])
    tpr = np.array([0.1, 0.3, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.1


def test_bad_audit_input():
    good = np.zeros((10, 3))
    labels = np.zeros(10, int)
    with pytest.raises(InputError, match="Unknown membership attacks"):
        audit_outputs(good, good, labels, labels, attacks=("lira2",))
    with pytest.raises(InputError, match="NaN"):
        audit_outputs(np.full((10, 3), np.nan), good, labels, labels)
    with pytest.raises(InputError, match="class id 5"):
        audit_outputs(good, good, labels + 5, labels)
    assert set(ATTACKS) >= set(FAST)

"""evaluate_safety and the pluggable safety tests: JSON results, .tflite targets, worst case over attacks."""

import json

import numpy as np
import pytest
from conftest import clone
from safety_helpers import int8_tflite, rounded_model

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import accuracy
from tfsafe.safety.evaluate import default_eps, evaluate_safety
from tfsafe.safety.tests import (
    CleanTest,
    CorruptionTest,
    FGSMTest,
    PGDTest,
    SafetySetTest,
    SafetyTest,
    as_safety_data,
    selection_score,
)

N = 150


@pytest.fixture(scope="module")
def tflite_path(trained_cnn, digits, tmp_path_factory):
    return int8_tflite(trained_cnn, digits[0][0], tmp_path_factory.mktemp("safety") / "cnn_int8.tflite")


def test_full_evaluation_is_json_and_consistent(trained_cnn, digits_splits):
    res = evaluate_safety(trained_cnn, digits_splits, eps=[0.05, 0.1, 0.2], max_examples=N,
                          membership_attacks=("threshold", "entropy"), reference=trained_cnn)
    json.dumps(res)
    tests = res["tests"]
    assert set(tests) == {"clean", "pgd_linf_0.05", "pgd_linf_0.1", "pgd_linf_0.2", "fgsm_0.2", "corruptions",
                          "membership", "safety_set"}
    assert all(t["score"] is None or 0.0 <= t["score"] <= 1.0 for t in tests.values())
    pgd = [tests[f"pgd_linf_{e}"]["accuracy"] for e in ("0.05", "0.1", "0.2")]
    assert pgd[0] >= pgd[1] >= pgd[2] and pgd[2] < 0.2
    assert tests["pgd_linf_0.2"]["accuracy"] <= tests["fgsm_0.2"]["accuracy"] + 0.02
    # Each robust number is the worst case over PGD (CE, margin), APGD-CE and APGD-DLR, and says so.
    assert tests["pgd_linf_0.1"]["attack_set"] == res["robustness"]["attacks"] == ["pgd", "apgd-ce", "apgd-dlr"]
    assert list(tests["pgd_linf_0.1"]["attacks"]) == ["whitebox_ce", "whitebox_margin", "whitebox_apgd-ce",
                                                      "whitebox_apgd-dlr"]
    assert res["flags"] == [] and res["gradient_masking"]["passed"] and res["robustness"]["masked"] is False
    assert res["accuracy"] == pytest.approx(accuracy(trained_cnn, *digits_splits.test))
    assert res["robustness"]["pgd_accuracy"] == pgd[2] and res["robustness"]["corruption_mce"] == pytest.approx(1.0)
    assert 0.5 <= res["membership"]["worst"]["auc"] <= 1.0
    # The safety set comes from validation data, and the indices prove it.
    ss = tests["safety_set"]
    assert ss["source"] == "validation" and len(ss["indices"]) == ss["n"] == 100
    assert max(ss["indices"]) < len(digits_splits.validation[0])
    assert res["score"] == pytest.approx(selection_score(tests))


def test_tflite_target_gets_blackbox_and_transfer_tests(trained_cnn, digits, tflite_path):
    _, (xt, yt) = digits
    data = (xt[:N], yt[:N])
    alone = evaluate_safety(tflite_path, data, tests=["clean", "pgd", "corruptions"], eps=[0.2])
    assert alone["kind"] == "tflite" and alone["accuracy"] > 0.9
    assert alone["tests"]["pgd_linf_0.2"]["score"] is None and "skipped" in alone["tests"]["pgd_linf_0.2"]
    assert alone["tests"]["corruptions"]["mean_accuracy"] > 0.5
    res = evaluate_safety(tflite_path, data, tests=["pgd", "fgsm"], eps=[0.2], source=trained_cnn)
    pgd = res["tests"]["pgd_linf_0.2"]
    assert list(pgd["attacks"]) == ["transfer_from_source"]
    assert pgd["accuracy"] < res["tests"]["pgd_linf_0.2"]["clean_accuracy"] - 0.4
    json.dumps(res)


def test_non_differentiable_model_reports_worst_of_bpda_whitebox_and_transfer(trained_cnn, digits):
    _, (xt, yt) = digits
    model = rounded_model(trained_cnn)
    res = PGDTest(0.15, losses=("ce",), source=trained_cnn).run(model, (xt[:N], yt[:N]))
    assert list(res["attacks"]) == ["whitebox_ce", "bpda_ce", "transfer_from_source"]
    assert res["zero_gradient_fraction"] == 1.0
    assert res["attacks"]["whitebox_ce"] > res["clean_accuracy"] - 0.25  # white-box alone is fooled
    assert res["accuracy"] == res["attacks"]["transfer_from_source"] < res["attacks"]["whitebox_ce"] - 0.3
    # Without a surrogate or a source, the result carries a gradient-masking warning.
    inputs = keras.Input((8, 8, 1))
    masked = keras.Model(inputs, clone(trained_cnn)(keras.layers.Lambda(lambda t: tf.round(t * 3.0) / 3.0)(inputs)))
    res = PGDTest(0.15, losses=("ce",)).run(masked, (xt[:N], yt[:N]))
    assert "gradient masking" in res["warning"]


def test_pluggable_tests_and_selection_score(trained_cnn, digits, digits_splits):
    _, (xt, yt) = digits

    class AlwaysHalf(SafetyTest):
        name = "half"

        def _run(self, model, data):
            return {"score": 0.5}

    safety_set = tuple(a[:40] for a in digits_splits.validation)
    data = {"test": (xt[:N], yt[:N]), "safety_set": safety_set}
    tests = [CleanTest(), FGSMTest(0.1), CorruptionTest(corruptions=("contrast",)), SafetySetTest(), AlwaysHalf()]
    res = evaluate_safety(trained_cnn, data, tests=tests)
    assert res["tests"]["half"]["score"] == 0.5 and res["tests"]["safety_set"]["source"] == "given"
    scores = {name: t["score"] for name, t in res["tests"].items()}
    assert res["score"] == pytest.approx(np.mean(list(scores.values())))
    weighted = selection_score(res["tests"], weights={"half": 0.0, "clean": 0.0, "fgsm_0.1": 0.0,
                                                      "corruptions": 0.0, "safety_set": 1.0})
    assert weighted == pytest.approx(scores["safety_set"])
    assert selection_score([{"name": "x", "score": None}]) is None
    assert default_eps(trained_cnn) == (0.1, 0.2, 0.3) and default_eps((32, 32, 3))[-1] == pytest.approx(8 / 255)


def test_bad_inputs(trained_cnn, digits, tmp_path):
    _, (xt, yt) = digits
    data = (xt[:20], yt[:20])
    with pytest.raises(InputError, match="Unknown safety test"):
        evaluate_safety(trained_cnn, data, tests=["nope"])
    with pytest.raises(InputError, match="share a name"):
        evaluate_safety(trained_cnn, data, tests=[PGDTest(0.1), PGDTest(0.1)])
    with pytest.raises(InputError, match="does not exist"):
        evaluate_safety(str(tmp_path / "missing.tflite"), data)
    with pytest.raises(InputError):
        PGDTest(-0.1)
    with pytest.raises(InputError):
        as_safety_data({"tset": data})
    bad = xt[:20].copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate_safety(trained_cnn, (bad, yt[:20]), tests=["clean"])
    with pytest.raises(InputError, match="shape"):
        evaluate_safety(trained_cnn, (xt[:20, :4], yt[:20]), tests=["pgd"], eps=[0.1])

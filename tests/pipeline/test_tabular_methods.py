"""ATMC and DP-SGD on tabular data through the whole pipeline, to a report (a few steps each)."""

import json

import numpy as np
import pytest

from tfsafe.methods.dp_sgd import dp_sgd_epsilon
from tfsafe.pipeline import compress_model

TINY = {
    "dense": {"epochs": 5},
    "evaluation": {"steps": 2, "max_examples": 40, "membership_attacks": ["threshold"], "masking_checks": False,
                   "attacks": ["pgd"]},
    "export": {"calibration_samples": 50},
}
PARAMS = {
    "atmc": {"epochs": 1, "steps": 2, "select_steps": 2, "ratio": 0.3, "batch_size": 64},
    "dp_sgd": {"epochs": 2, "batch_size": 32},
}


def _table(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[np.arange(n), y] += 3.0
    return x, y


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("tabular") / "tab.npz"
    (x, y), (xt, yt) = _table(200, 0), _table(150, 1)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return str(path)


@pytest.mark.parametrize("method", ["atmc", "dp_sgd"])
def test_method_runs_on_tabular_data_to_a_report(method, table, tmp_path):
    out = tmp_path / "run"
    report = compress_model(method, data=table, config=dict(TINY, params=PARAMS[method]), out_dir=str(out),
                            verbose=0, log=lambda *_: None)
    dense, compressed, deployed = report["models"]
    meta = report["meta"]
    assert set(meta["skipped tests"]) == {"corruptions", "safety_set"}
    assert "median per-feature range" in meta["attack_eps"]
    assert deployed["parity"]["passed"] and (out / deployed["file"]["path"]).is_file()
    for entry in report["models"]:
        assert entry["robustness"]["pgd_accuracy"] is not None  # tabular data gets a radius, so PGD runs
        assert entry["membership"]["worst"]["auc"] is not None  # x_train members, x_test non-members
    assert dense["accuracy"] > 0.8 and compressed["accuracy"] > 0.4
    info = compressed["method_info"]
    run = json.loads((out / "run.json").read_text())
    members = run["settings"]["split_provenance"]["train"]["count"]
    if method == "atmc":
        # Adversarial training at the radius the report attacks with (the tabular rule's headline).
        assert info["eps"] == pytest.approx(compressed["robustness"]["pgd_eps"])
        assert info["budget"] > 0 and info["ratio"] == 0.3
    else:
        steps = 2 * (members // 32)
        assert info["steps"] == steps
        assert info["epsilon"] == pytest.approx(dp_sgd_epsilon(members, 32, 1.1, steps, min(1e-5, 1 / members)))
    assert (out / "report.html").is_file() and "tfsafe compress" in (out / "report.md").read_text()

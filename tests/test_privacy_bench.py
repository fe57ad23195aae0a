"""The privacy benchmark's table, targets and plot from a run's JSON (no training here)."""

import importlib.util
import json
import os

import pytest
from matplotlib import image

from tfsafe.methods.safecompress import SafeCompress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("privacy_bench", os.path.join(ROOT, "benchmarks", "privacy_bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, acc, tpr, **extra):
    return {"row": name, "test_accuracy": acc, "lira_auc": 0.5 + tpr, "lira_tpr_at_01pct_fpr": tpr / 3,
            "lira_tpr_at_1pct_fpr": tpr, "tfp_auc": 0.5 + tpr, "sparsity": 0.9, "tflite_bytes": 1000, **extra}


def _report(rows):
    return {"setting": "tabular", "splits": {"train": 1500}, "reference_models": 8, "min_fpr": 1 / 1500,
            "rows": rows}


def test_targets_are_checked_from_the_rows(bench):
    rows = [_row("dense", 0.90, 0.60), _row("tfmot", 0.80, 0.40),
            _row("mia_safecompress", 0.795, 0.18, selection="kept the final state (70 training steps)",
                 selection_tests=["val_accuracy", "simulated_attacker"]),
            _row("safecompress_mia_pgd", 0.70, 0.10), _row("dp_sgd_s0.7", 0.705, 0.12, epsilon=9.1),
            _row("dp_sgd_s2", 0.30, 0.02, epsilon=1.2)]
    got = {t["target"]: t for t in bench.targets(_report(rows))}
    first = got["safecompress_vs_tfmot"]
    assert first["met"] is True and first["ratio"] == pytest.approx(0.45) and first["accuracy_drop"] == pytest.approx(
        0.005)
    assert got["mia_safecompress_vs_dp_sgd"]["met"] is None  # no DP row within 1 point of 0.795
    assert "best DP-SGD dp_sgd_s0.7: 0.705" in got["mia_safecompress_vs_dp_sgd"]["text"]
    assert got["safecompress_mia_pgd_vs_dp_sgd"]["met"] is True  # 0.10 <= 0.12 at 0.700 vs 0.705
    rows[2]["test_accuracy"] = 0.78  # 2 points below TF-MOT: missed, however low its TPR
    assert {t["target"]: t for t in bench.targets(_report(rows))}["safecompress_vs_tfmot"]["met"] is False
    md = bench.to_markdown(_report(rows))
    assert "| dp_sgd_s0.7 | 0.705 |" in md and "| 9.10 |" in md
    assert "- target: mia_safecompress TPR@1%FPR 0.180 vs TF-MOT 0.400 (0.45x, target <= 0.5x) at -2.0 points" in md
    rows.append(_row("mia_safecompress_bounded", 0.792, 0.30))  # within 1 point, but 0.75x
    bounded = {t["target"]: t for t in bench.targets(_report(rows))}["mia_safecompress_bounded_vs_tfmot"]
    assert bounded["met"] is False and bounded["ratio"] == pytest.approx(0.75)


def test_plot_is_rendered_from_the_json(bench, tmp_path):
    rows = [_row("dense", 0.9, 0.6), _row("tfmot", 0.8, 0.4), _row("dp_sgd_s2", 0.3, 0.02, epsilon=1.2)]
    path = tmp_path / "privacy_tabular.json"
    path.write_text(json.dumps(_report(rows)))
    png = tmp_path / "docs" / "plot.png"
    bench.main(["--from_json", str(path), "--plot", str(png)])
    assert image.imread(png).shape[0] > 300
    assert (tmp_path / "privacy_tabular.md").read_text().startswith("Setting `tabular`")
    assert json.loads(path.read_text())["targets"] == []  # no SafeCompress rows: nothing to check
    assert "data:image/png;base64," in (tmp_path / "privacy_tabular.html").read_text()


def test_an_interrupted_run_is_reported_from_its_log_as_partial(bench, tmp_path):
    log = tmp_path / "run.log"
    rows = [_row("dense", 0.9, 0.6), _row("tfmot", 0.8, 0.4)]
    log.write_text("W0000 noise\ntabular: splits {'train': 1500, 'nonmembers': 1500, 'test': 1000}\n"
                   + "".join(json.dumps(r) + "\n" for r in rows) + "dense trained in 3 s\n")
    bench.main(["--setting", "tabular", "--reference_models", "8", "--from_log", str(log), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "privacy_tabular_partial.json").read_text())
    assert [r["row"] for r in report["rows"]] == ["dense", "tfmot"] and report["min_fpr"] == pytest.approx(1 / 1500)
    md = (tmp_path / "privacy_tabular_partial.md").read_text()
    assert "8 LiRA reference models" in md
    assert "- partial run: only the 2 rows it finished (rows printed to run.log)" in md


@pytest.mark.parametrize("epochs", [8, 15, 20])
def test_safecompress_gets_as_many_accepted_steps_as_tfmot(bench, epochs):
    steps_per_epoch = 24
    method = SafeCompress(epochs=bench.matched_epochs(epochs))
    batches = method.epochs * steps_per_epoch
    end = method._end_step(batches)  # accepted steps while rounds run, each costing K batches
    accepted = end + batches - method.num_candidates * end
    assert abs(accepted - epochs * steps_per_epoch) <= steps_per_epoch

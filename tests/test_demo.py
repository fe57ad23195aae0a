import json
import os

from tfsafe.demo import run_demo


def test_demo_runs_end_to_end_with_a_small_budget(tmp_path):
    lines = []
    report = run_demo(str(tmp_path), epochs=15, prune_epochs=3, attacks=("threshold", "entropy"), log=lines.append)
    names = [m["name"] for m in report["models"]]
    assert names == ["dense", "pruned (TF-MOT)", "pruned int8 .tflite"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["models"] == report["models"]
    dense, pruned, deployed = saved["models"]
    assert abs(pruned["size"]["sparsity"] - 0.8) < 0.01
    assert pruned["size"]["relu_count"] == dense["size"]["relu_count"] == 1600
    assert deployed["file"]["bytes"] == os.path.getsize(tmp_path / "pruned_int8.tflite")
    for entry in (dense, pruned, deployed):
        assert 0.0 <= entry["membership"]["worst"]["auc"] <= 1.0
    assert any(line.startswith("[6/6]") for line in lines)
    md = (tmp_path / "report.md").read_text()
    assert "| dense | dense |" in md and md.index("## Verdict") < md.index("## Results")
    verdicts = [(v["model"], v["against"]) for v in saved["verdicts"]]
    assert verdicts == [("pruned (TF-MOT)", "dense"), ("pruned int8 .tflite", "dense"),
                        ("pruned int8 .tflite", "pruned (TF-MOT)")]
    assert all("membership" in v["threats"] for v in saved["verdicts"])
    assert deployed["parity"]["passed"] and deployed["parity"]["rule"]["min_agreement"] == 0.99
    assert any("models audited  3/3" in line for line in lines)  # the audit stage's progress bar

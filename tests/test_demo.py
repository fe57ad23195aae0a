import json
import os
import re
import subprocess
import sys

import pytest

from tfsafe.demo import demo_table, run_demo, what_to_look_at

NAMES = ["dense", "TF-MOT pruning", "safecompress", "safecompress int8 .tflite"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines = []
    report = run_demo(str(out), epochs=15, prune_epochs=3, attacks=("threshold", "entropy"), log=lines.append,
                      pgd_steps=3, pgd_examples=60, audit_size=200)
    return out, report, lines


def test_demo_compares_dense_baseline_and_a_tfsafe_method(demo):
    out, report, _ = demo
    saved = json.loads((out / "report.json").read_text())
    assert saved["models"] == report["models"]
    assert [m["name"] for m in saved["models"]] == NAMES
    assert [m["role"] for m in saved["models"]] == ["dense", "unsafe baseline", "compressed", "deployed"]
    dense, pruned, ours, deployed = saved["models"]
    # TF-MOT and MIA-SafeCompress compress to the same sparsity, so they compare at one size.
    assert abs(pruned["size"]["sparsity"] - 0.8) < 0.01 and abs(ours["size"]["sparsity"] - 0.8) < 0.01
    assert pruned["size"]["relu_count"] == dense["size"]["relu_count"] == 1600
    config = saved["meta"]["methods"]["safecompress"]
    assert config["target_sparsity"] == 0.8 and config["epochs"] == 3
    # Candidates are also scored on PGD at the digits eps (on validation data).
    assert [(t["class"], t["config"]["eps"], t["weight"]) for t in config["tests"]] == [("PGDTest", 0.1, 1.0)]
    for entry in (dense, pruned, ours, deployed):
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert 0.0 <= entry["membership"]["worst"]["auc"] <= 1.0
        assert entry["membership"]["n_members"] == entry["membership"]["n_nonmembers"] == 200
    for entry in (dense, pruned, ours):  # white-box worst case over PGD and APGD at the digits eps
        rob = entry["robustness"]
        assert rob["pgd_eps"] == 0.1 and rob["pgd_examples"] == 60
        assert set(rob["attacks"]) >= {"pgd", "apgd-ce", "apgd-dlr"}
        assert 0.0 <= rob["pgd_accuracy"] <= rob["pgd_clean_accuracy"]
    # The file's number is a transfer attack: kept out of the white-box comparison.
    assert "pgd_accuracy" not in deployed["robustness"]
    assert 0.0 <= deployed["robustness"]["transfer_pgd_accuracy"] <= 1.0


def test_demo_exports_a_parity_checked_int8_tflite(demo):
    out, report, _ = demo
    deployed = report["models"][3]
    path = out / "safecompress_int8.tflite"
    assert deployed["file"]["bytes"] == os.path.getsize(path) and (out / "safecompress_int8.tflite.json").exists()
    assert deployed["parity"]["passed"] and deployed["parity"]["rule"]["min_agreement"] == 0.99
    assert "CONV_2D" in deployed["file"]["ops"]
    assert deployed["file"]["gzip_bytes"] < deployed["file"]["bytes"]


def test_demo_writes_the_report_with_verdicts(demo):
    out, report, _ = demo
    for stem in ("report.json", "report.md", "report.html"):
        assert (out / stem).stat().st_size > 0
    saved = json.loads((out / "report.json").read_text())
    pairs = [(v["model"], v["against"]) for v in saved["verdicts"]]
    assert pairs == [("TF-MOT pruning", "dense"), ("safecompress", "dense"), ("safecompress", "TF-MOT pruning"),
                     ("safecompress int8 .tflite", "dense"), ("safecompress int8 .tflite", "TF-MOT pruning")]
    by_pair = {(v["model"], v["against"]): v for v in saved["verdicts"]}
    assert set(by_pair[("safecompress", "TF-MOT pruning")]["threats"]) == {"adversarial", "membership"}
    assert set(by_pair[("safecompress int8 .tflite", "dense")]["threats"]) == {"membership"}
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert md.index("## Verdict") < md.index("## Results") and 'id="verdict"' in html
    # Every threat a model is worse on is flagged, in the summary and the table.
    flagged = [(v["model"], t) for v in saved["verdicts"] for t in v["worse"]]
    assert md.count("WORSE ⚠") == len(flagged)
    for v in saved["verdicts"]:
        if v["worse"]:
            assert f"{v['model']} is easier to attack than {v['against']}" in md


def test_demo_prints_stages_a_table_and_honest_notes(demo):
    _, report, lines = demo
    assert any(line.startswith("[8/8]") for line in lines)
    assert any(re.search(r"elapsed .*, about .* left", line) for line in lines)  # time-left estimate
    assert any("models audited  4/4" in line for line in lines) and any("models attacked  4/4" in line
                                                                        for line in lines)
    table = report["table"]
    assert table in lines and table == demo_table(report["models"])
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == NAMES
    assert "(transfer)" in rows[3] and "file (" in rows[3]
    assert report["notes"] == what_to_look_at(report["models"], "safecompress") and len(report["notes"]) == 3


def test_what_to_look_at_says_when_the_method_is_not_better():
    def entry(name, role, acc, pgd, auc):
        return {"name": name, "role": role, "accuracy": acc, "robustness": {"pgd_accuracy": pgd},
                "membership": {"worst": {"auc": auc}}, "size": {"ideal_bytes": 1000}}

    models = [entry("dense", "dense", 0.97, 0.50, 0.57), entry("TF-MOT pruning", "unsafe baseline", 0.92, 0.35, 0.55),
              entry("m", "compressed", 0.96, 0.30, 0.553)]
    accuracy_line, membership_line = what_to_look_at(models, "m")
    assert "+4.0 points" in accuracy_line and "WORSE than TF-MOT" in accuracy_line
    assert "no better than (within 0.01 of) TF-MOT" in membership_line
    assert "better than dense" in membership_line


def test_cli_demo_prints_the_table_and_keeps_tensorflow_chatter_off_stderr(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "tfsafe_cli", "demo", "--epochs=5", "--prune_epochs=2",
                           "--attacks=threshold", "--verbose=0", f"--out={tmp_path}"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=root), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # stage lines, table and notes go to stdout; TF says nothing
    out = proc.stdout
    assert "| model | test acc | adv. acc (eps 0.1) |" in out and "What to look at:" in out
    assert out.index("[8/8]") < out.index("| safecompress int8 .tflite |") < out.index("What to look at:")
    assert "Epoch 1/" not in out  # --verbose=0: no Keras progress bars
    for name in ("report.json", "report.md", "report.html", "safecompress_int8.tflite"):
        assert (tmp_path / name).is_file()

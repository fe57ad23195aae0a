import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli
from pipeline_helpers import tiny_config

from tfsafe.report import SCHEMA_VERSION

STAGES = {"dense", "baseline_prune", "baseline_strip", "export", "evaluate_dense", "evaluate_compressed",
          "evaluate_tflite"}


def test_compress_command_end_to_end_then_resume_redoes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    config = tiny_config("baseline", tmp_path / "tiny.json")
    args = ["compress", "--method=baseline", f"--config={config}", f"--out={out}", "--verbose=0"]
    assert run_cli(*args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert [m["role"] for m in report["models"]] == ["dense", "unsafe baseline", "deployed"]
    dense, pruned, deployed = report["models"]
    assert pruned["size"]["sparsity"] > 0.85 and dense["size"]["sparsity"] < 0.01
    for entry in report["models"]:
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert 0.0 <= entry["membership"]["worst"]["auc"] <= 1.0
        robustness = entry["robustness"]
        assert robustness["pgd_examples"] == 100  # TINY's max_examples
        assert robustness["pgd_accuracy"] <= robustness["pgd_clean_accuracy"]
    assert deployed["file"]["bytes"] == os.path.getsize(out / deployed["file"]["path"])
    assert deployed["parity"]["top1_agreement"] >= 0.9
    assert "<table" in (out / "report.html").read_text()
    assert set(json.loads((out / "run.json").read_text())["stages"]) == STAGES
    capsys.readouterr()

    # The next step of the user's flow: re-audit the deployed file on the run's audit sets.
    assert run_cli("audit", f"--model={out / deployed['file']['path']}", f"--members={out / 'audit/members.npz'}",
                   f"--nonmembers={out / 'audit/nonmembers.npz'}", "--attacks=threshold", f"--out={tmp_path}") == 0
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["worst"]["auc"] == pytest.approx(deployed["membership"]["worst"]["auc"])
    capsys.readouterr()

    dense_mtime = os.path.getmtime(out / "dense.keras")
    assert run_cli(*args, "--resume") == 0
    log = capsys.readouterr().out
    assert all(f"[{stage}] done in an earlier run; skipped" in log for stage in STAGES)
    assert os.path.getmtime(out / "dense.keras") == dense_mtime
    again = json.loads((out / "report.json").read_text())
    assert [m["accuracy"] for m in again["models"]] == [m["accuracy"] for m in report["models"]]

    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "--resume" in err and "\n" not in err

    # Only the export settings changed: export and what follows are redone, nothing before it.
    changed = json.loads(open(config).read())
    changed["export"] = dict(changed["export"], calibration_samples=100)
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    args[2] = f"--config={tmp_path / 'changed.json'}"
    assert run_cli(*args, "--resume") == 0
    log = capsys.readouterr().out
    for stage in ("dense", "baseline_prune", "baseline_strip"):
        assert f"[{stage}] done in an earlier run; skipped" in log
    for stage in ("export", "evaluate_dense", "evaluate_compressed", "evaluate_tflite"):
        assert f"[{stage}] its settings or an earlier stage changed; redoing" in log
    assert os.path.getmtime(out / "dense.keras") == dense_mtime
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["export"]["depends"]["export"]["calibration_samples"] == 100


def test_a_killed_run_resumes_from_its_finished_stages(tmp_path, capsys):
    out = tmp_path / "run"
    config = tiny_config("rlnet", tmp_path / "tiny.json")
    args = ["compress", "--method=rlnet", f"--config={config}", f"--out={out}", "--verbose=0"]
    exe = os.path.join(os.path.dirname(sys.executable), "tfsafe")
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_file, deadline = out / "run.json", time.time() + 240
    stages = {}
    while time.time() < deadline and proc.poll() is None:
        if run_file.exists():
            stages = json.loads(run_file.read_text())["stages"]
            if "rlnet_teacher" in stages:
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert "rlnet_teacher" in stages, "the run never finished its teacher stage"
    assert "rlnet_finetune" not in json.loads(run_file.read_text())["stages"]
    teacher_file = out / "checkpoints" / "rlnet" / "teacher" / "teacher.keras"
    teacher_mtime = os.path.getmtime(teacher_file)

    capsys.readouterr()
    assert run_cli(*args, "--resume") == 0
    log = capsys.readouterr().out
    assert "[dense] done in an earlier run; skipped" in log
    assert "[rlnet_teacher] done in an earlier run; skipped" in log
    assert "[rlnet_teacher] running" not in log
    assert "[rlnet_finetune] running" in log
    assert os.path.getmtime(teacher_file) == teacher_mtime
    report = json.loads((out / "report.json").read_text())
    info = report["models"][1]["method_info"]
    assert info["relu_count"] == info["relu_budget"] < info["all_relu_count"]
    assert report["models"][1]["size"]["relu_count"] == info["relu_count"]


def test_bad_model_and_flags_get_one_line_errors(tmp_path, capsys):
    from tfsafe.io import save_model
    from tfsafe.models import small_cnn

    assert run_cli("compress") == 2
    assert "--method is required" in capsys.readouterr().err
    assert run_cli("compress", "--method=atmc", f"--model={tmp_path / 'none.keras'}", f"--out={tmp_path}") == 2
    assert "does not exist" in capsys.readouterr().err
    wrong = save_model(small_cnn((28, 28, 1), 10), tmp_path / "mnist_model.keras")
    config = tiny_config("baseline", tmp_path / "tiny.json")
    code = run_cli("compress", "--method=baseline", f"--model={wrong}", f"--config={config}",
                   f"--out={tmp_path / 'run'}", "--verbose=0")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "(8, 8, 1)" in err and "28" in err

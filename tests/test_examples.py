"""Every example in examples/ runs end to end in-process on digits with the tiniest settings.

The examples are scripts, not a package: they are loaded by file path and their
``main(argv)`` is called, so TensorFlow is imported once. Each test checks the files the
example promises and that the numbers it reports are measurements of those files (the saved
model reproduces the reported accuracy on the same split, sizes match the files).
The examples split digits exactly like the ``digits_splits`` fixture (same sizes, seed 0).
"""

import argparse
import importlib.util
import json
import os

import numpy as np
import pytest

import tfsafe
from tfsafe.errors import MissingDependencyError
from tfsafe.models import accuracy

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
# Small but honest evaluation: PGD keeps the protocol's 20 steps and random start.
TINY_EVAL = ["--eval_size", "40", "--attacks", "threshold"]
NO_HTML = ["--no_html"]  # the HTML page (matplotlib plots) is checked once, in the audit test


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name, out, *args):
    report = load_example(name).main(["--out", str(out), *args])
    for ext in ("json", "md") + (() if "--no_html" in args else ("html",)):
        assert os.path.getsize(out / f"report.{ext}") > 0
    with open(out / "report.json") as f:
        assert json.load(f)["models"] == report["models"]
    return report


def check_entry(entry, membership=True):
    assert 0.0 <= entry["accuracy"] <= 1.0
    robustness = entry["robustness"]
    assert 0.0 <= robustness["pgd_accuracy"] <= 1.0 and 0.0 <= robustness["corruption_mean_accuracy"] <= 1.0
    if membership:
        worst = entry["membership"]["worst"]
        assert 0.0 <= worst["auc"] <= 1.0 and worst["attack"] == "threshold"
    else:
        assert entry.get("membership") is None


def check_saved_model(path, entry, splits, tolerance=0.0):
    """The saved model is the evaluated one: it reproduces the reported test accuracy."""
    loaded = tfsafe.load_model(path)
    assert abs(accuracy(loaded, *splits.test) - entry["accuracy"]) <= tolerance + 1e-9
    return loaded


def test_every_example_documents_its_command():
    names = sorted(f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))
    assert names == ["atmc", "audit_tflite_model", "export_to_phone", "mia_safecompress", "multi_threat_selection",
                     "rlnet", "self_compress", "wrap_keras_model"], "a new example needs its own test in this file"
    for name in names:
        with open(os.path.join(EXAMPLES, f"{name}.py")) as f:
            text = f.read()
        assert f".venv/bin/python examples/{name}.py" in text and "def main(argv=None)" in text


def test_weak_evaluation_attacks_are_refused():
    with pytest.raises(SystemExit):
        load_example("atmc").main(["--pgd_steps", "5"])


def test_atmc(tmp_path, digits_splits):
    report = run_example("atmc", tmp_path, "--dense_epochs", "3", "--epochs", "1", "--train_steps", "2",
                         "--ratio", "0.2", "--bits", "4", "--no_export", *TINY_EVAL, *NO_HTML)
    dense, atmc = report["models"]
    assert [dense["name"], atmc["name"]] == ["dense", "ATMC-4bit"]
    check_entry(dense)
    check_entry(atmc)
    # The budget keeps the model within the target size (non-zeros x bits + codebooks), in its
    # factorized form and, after ATMC's deploy stage, in the merged form strip() ships.
    assert atmc["size"]["stored_compression_ratio"] <= 0.2 < dense["size"]["compression_ratio"]
    assert atmc["size"]["compression_ratio"] <= 0.2
    check_saved_model(tmp_path / "atmc.keras", atmc, digits_splits)


def test_self_compress(tmp_path, digits_splits):
    report = run_example("self_compress", tmp_path, "--dense_epochs", "3", "--epochs", "2", "--safety_size", "20",
                         "--no_export", *TINY_EVAL, *NO_HTML)
    dense, compressed = report["models"]
    check_entry(dense)
    check_entry(compressed)
    learned = report["meta"]["learned_size"]
    # Two epochs barely move the learned bits from their 8-bit start; the size is still ~4x smaller.
    assert learned["average_bits"] <= 8 and compressed["size"]["compression_ratio"] < 0.3
    assert compressed["size"]["relu_count"] <= dense["size"]["relu_count"]
    # Saved: the learned-bit model; evaluated: its stripped twin (same function, channels removed).
    check_saved_model(tmp_path / "self_compress.keras", compressed, digits_splits, tolerance=2 / 400)
    assert not os.path.exists(tmp_path / "self_compress_int8.tflite")


def test_rlnet(tmp_path, digits_splits):
    report = run_example("rlnet", tmp_path, "--dense_epochs", "2", "--teacher_epochs", "1", "--search_epochs", "1",
                         "--finetune_epochs", "1", "--train_steps", "1", "--relu_fraction", "0.1", "--no_export",
                         *TINY_EVAL, *NO_HTML)
    standard, teacher, student = report["models"]
    assert [m["role"] for m in report["models"]] == ["dense", "teacher", "compressed"]
    for entry in report["models"]:
        check_entry(entry)
    assert standard["size"]["relu_count"] == teacher["size"]["relu_count"] == 1600
    assert student["size"]["relu_count"] == report["meta"]["rlnet"]["relu_count"] == 160
    check_saved_model(tmp_path / "rlnet_student.keras", student, digits_splits)


def test_mia_safecompress(tmp_path, digits_splits):
    report = run_example("mia_safecompress", tmp_path, "--dense_epochs", "3", "--epochs", "2", "--update_every", "5",
                         "--attack_size", "50", "--no_export", *TINY_EVAL, *NO_HTML)
    dense, compressed = report["models"]
    check_entry(dense)
    check_entry(compressed)
    assert compressed["size"]["sparsity"] == pytest.approx(0.9, abs=0.02)
    assert os.path.exists(tmp_path / "checkpoint" / "progress.json")
    assert os.path.exists(tmp_path / "checkpoint" / "train" / "state.json")
    check_saved_model(tmp_path / "safecompress.keras", compressed, digits_splits)


def test_multi_threat_selection(tmp_path, digits_splits):
    report = run_example("multi_threat_selection", tmp_path, "--dense_epochs", "3", "--epochs", "1",
                         "--update_every", "5", "--attack_size", "50", "--select_size", "30", *TINY_EVAL, *NO_HTML)
    dense, compressed = report["models"]
    check_entry(dense)
    check_entry(compressed)
    assert compressed["size"]["sparsity"] == pytest.approx(0.9, abs=0.02)
    selection = compressed["selection"]
    assert [t["name"] for t in selection["tests"]] == ["val_accuracy", "simulated_attacker", "pgd_linf_0.1"]
    leak = report["meta"]["leakage"]
    assert report["meta"]["no_more_leakage"] == (leak["compressed"] <= leak["dense"])
    assert leak["compressed"] == compressed["membership"]["worst"]["advantage"]
    check_saved_model(tmp_path / "multi_threat.keras", compressed, digits_splits)


def test_wrap_keras_model_from_keras3(tmp_path, digits_splits):
    report = run_example("wrap_keras_model", tmp_path, "--dense_epochs", "3", "--epochs", "1", "--train_steps", "1",
                         "--sparsity", "0.8", *TINY_EVAL, *NO_HTML)
    original, compressed = report["models"]
    check_entry(original)
    check_entry(compressed)
    assert compressed["size"]["sparsity"] == pytest.approx(0.8, abs=0.02)
    # The user's Keras 3 file loads as tf_keras and is the model in the "your model" row.
    check_saved_model(tmp_path / "keras3_model.keras", original, digits_splits)
    check_saved_model(tmp_path / "compressed.keras", compressed, digits_splits)
    assert compressed["file"]["bytes"] == os.path.getsize(tmp_path / "compressed_int8.tflite")


def test_audit_tflite_model_default_and_user_files(tmp_path, digits_splits):
    first = tmp_path / "default"
    report = run_example("audit_tflite_model", first, "--dense_epochs", "3", *TINY_EVAL)
    with open(first / "report.html") as f:
        html = f.read()
    assert "app_int8.tflite" in html and "data:image/png;base64," in html
    (entry,) = report["models"]
    check_entry(entry)
    app = first / "app_int8.tflite"
    assert entry["role"] == "deployed" and entry["file"]["bytes"] == os.path.getsize(app)
    assert "float model" in report["meta"]["transfer_source"]

    # The user path: their .tflite and data files; without --source the attack comes from a surrogate.
    members, nonmembers = digits_splits.audit_sets(seed=0)
    files = {}
    for name, (x, y) in (("members", members), ("nonmembers", nonmembers), ("test", digits_splits.test)):
        files[name] = str(tmp_path / f"{name}.npz")
        np.savez(files[name], x=x, y=y)
    second = tmp_path / "user"
    user = run_example("audit_tflite_model", second, "--model", str(app), "--members", files["members"],
                       "--nonmembers", files["nonmembers"], "--test", files["test"], "--surrogate_epochs", "2",
                       *TINY_EVAL, *NO_HTML)
    (user_entry,) = user["models"]
    assert "surrogate" in user["meta"]["transfer_source"]
    # Same file, same data: the black-box measurements agree exactly.
    assert user_entry["accuracy"] == entry["accuracy"]
    assert user_entry["membership"]["worst"] == entry["membership"]["worst"]
    assert user_entry["robustness"]["corruption_mean_accuracy"] == entry["robustness"]["corruption_mean_accuracy"]


def test_audit_tflite_model_needs_member_files_with_model():
    with pytest.raises(SystemExit):
        load_example("audit_tflite_model").main(["--model", "app.tflite"])


def test_export_to_phone_without_a_device(tmp_path, capsys):
    example = load_example("export_to_phone")
    result = example.main(["--out", str(tmp_path), "--dense_epochs", "2", "--no_onnx", "--threads", "1",
                           "--num_runs", "5", "--adb", "/nonexistent/adb"])
    out = capsys.readouterr().out
    assert "Android benchmark skipped: adb not found at '/nonexistent/adb'" in out
    (export,) = result["exports"]
    assert export["mode"] == "int8" and export["parity"]["top1_agreement"] >= 0.99
    with open(export["metadata_path"]) as f:
        assert json.load(f)["labels"] == [str(d) for d in range(10)]
    (bench,) = result["benchmarks"]
    assert bench["platform"] == "host" and bench["latency_ms"]["p50"] > 0 and bench["accuracy"] > 0.5
    with open(tmp_path / "bench.json") as f:
        assert len(json.load(f)["results"]) == 1
    # --android on: no adb is an error, not a silent skip.
    args = argparse.Namespace(android="on", adb="/nonexistent/adb", serial=None, benchmark_binary=None,
                              use_gpu=False, threads=[1], num_runs=5)
    with pytest.raises(MissingDependencyError, match="adb not found"):
        example.benchmark_on_android([export["path"]], args)

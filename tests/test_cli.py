import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TensorFlow's / absl's / the converter's own start-up and log lines (issue 18).
NOISE = ("cudart_stub", "cuda_", "absl::InitializeLog", "fully_quantize", "inference_type", "oneDNN",
         "I0000", "W0000", "E0000", "tensorflow/", "WARNING:absl")


def _python(code, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


FRONT_END = """
import json, sys
import tfsafe_cli
calls = [["compress", "--help"], ["compress", "--helpshort"], ["--help"], ["compress", "--method=nope"],
         ["export", "--nosuchflag"], ["audit"], ["bench", "--model=a.tflite", "--threads=0"], ["frobnicate"]]
codes = [tfsafe_cli.main(["tfsafe", *c]) for c in calls]
print(json.dumps({"codes": codes, "tensorflow": "tensorflow" in sys.modules, "tfsafe": "tfsafe" in sys.modules}),
      file=sys.stderr)
"""


@pytest.fixture(scope="module")
def front_end():
    proc = _python(FRONT_END)
    *errors, summary = proc.stderr.strip().splitlines()
    return proc.stdout, errors, json.loads(summary)


def test_help_lists_the_commands_own_flags_without_tensorflow(front_end):
    out, _, summary = front_end
    assert summary["codes"][:3] == [0, 0, 0]
    assert not summary["tensorflow"] and not summary["tfsafe"]  # help never imports TensorFlow
    command_help = out.split("usage: tfsafe compress")[1]
    assert "--method (one of safecompress|atmc|self_compress|rlnet|baseline|dp_sgd; default: none)" in command_help
    assert "--quick" in command_help and "--resume" in command_help and "--verbose" in command_help
    # Only compress's own flags: nothing from TensorFlow, absl logging or the other commands.
    for foreign in ("--xla", "--logtostderr", "--tt_", "--modes", "--members", "--num_runs", "--epochs"):
        assert foreign not in command_help
    assert "commands:" in out and "  bench " in out


def test_flag_errors_are_one_line_with_exit_2_without_tensorflow(front_end):
    _, errors, summary = front_end
    assert summary["codes"][3:] == [2, 2, 2, 2, 2]
    bad_enum, unknown, required, validator = errors[:4]
    assert bad_enum.startswith("tfsafe: error: flag --method=nope: value should be one of <safecompress|")
    assert unknown.startswith("tfsafe: error: Unknown command line flag 'nosuchflag'")
    assert required.startswith("tfsafe: error: --model is required: a .keras/.h5 model or a .tflite file.")
    assert validator.startswith("tfsafe: error: --threads takes positive integers")
    assert all(line.endswith("--help lists the flags)") for line in errors[:4])
    assert errors[4] == "tfsafe: error: unknown command 'frobnicate'."
    assert not summary["tensorflow"]


def test_parity_defaults_quoted_in_help_are_the_library_defaults():
    from tflite_export.parity import ParityRule
    from tfsafe_cli.flagsets import PARITY_HELP, flag_values

    rule = ParityRule()
    for name in ("min_agreement", "max_accuracy_drop", "confidence_margin"):
        assert f"(default: the library's, {getattr(rule, name)})" in PARITY_HELP[name]
        assert flag_values("export")[name].default is None  # None = ParityRule's default, one source


def test_audit_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"junk")
    assert run_cli("audit", "--model=x.keras", f"--members={bad}", f"--nonmembers={bad}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfsafe: error: --members file") and "\n" not in err


def test_audit_command_writes_the_report_family(tmp_path, trained_cnn, digits, capsys):
    from tfsafe.io import save_model

    (x, y), (xt, yt) = digits
    model_path = save_model(trained_cnn, tmp_path / "m.keras")
    np.savez(tmp_path / "mem.npz", x=x[:200], y=y[:200])
    np.savez(tmp_path / "non.npz", x=xt[:200], y=yt[:200])
    code = run_cli("audit", f"--model={model_path}", f"--members={tmp_path / 'mem.npz'}",
                   f"--nonmembers={tmp_path / 'non.npz'}", "--attacks=threshold,entropy", f"--out={tmp_path}")
    assert code == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "audit.json").read_text())
    # The worst-case line names, for each metric, the attack that reached it.
    for metric, title in (("auc", "AUC"), ("advantage", "advantage"), ("tpr_at_1pct_fpr", "TPR@1%FPR")):
        best = max(data["attacks"], key=lambda a: a[metric])
        label = {"threshold": "loss threshold", "entropy": "entropy threshold"}[best["attack"]]
        assert f"{title} {best[metric]:.3f} ({label})" in out
        assert data["worst_by_metric"][metric] == {"value": best[metric], "attack": best["attack"]}
    assert data["n_nonmembers"] == 200 and data["accuracy"]["members"] == pytest.approx(
        np.mean(trained_cnn.predict(x[:200], verbose=0).argmax(1) == y[:200]))
    assert data["accuracy"]["gap"] == pytest.approx(data["accuracy"]["members"] - data["accuracy"]["nonmembers"])
    assert data["risk"] in ("low", "moderate", "high") and data["verdict"] in out
    page = (tmp_path / "audit.html").read_text()
    assert "id=\"verdict\"" in page and data["verdict"].split(".")[0] in page and page.count("<img") == 1
    assert "0.50%" in page  # the smallest FPR 200 non-members resolve
    md = (tmp_path / "audit.md").read_text()
    assert "| members (train) | non-members (unseen) | generalization gap |" in md


def test_cli_run_keeps_tensorflow_chatter_off_stderr(tmp_path, trained_cnn):
    from tfsafe.io import save_model

    model_path = save_model(trained_cnn, tmp_path / "cnn.keras")
    proc = subprocess.run([sys.executable, "-m", "tfsafe_cli", "export", f"--model={model_path}", "--modes=int8",
                           "--calibration_samples=50", f"--out={tmp_path}"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and os.path.isfile(tmp_path / "cnn_int8.tflite")
    assert not [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)], proc.stderr
    assert not [line for line in proc.stdout.splitlines() if any(n in line for n in NOISE)], proc.stdout


def test_quick_preset_shrinks_data_and_evaluation_and_config_wins():
    from tfsafe.cli import QUICK_PRESET, _deep_merge
    from tfsafe.recipes import load_recipe

    recipe = load_recipe("baseline", _deep_merge(QUICK_PRESET, {"evaluation": {"steps": 7}}))
    assert recipe["evaluation"]["steps"] == 7 and recipe["evaluation"]["max_examples"] == 200  # --config wins
    assert recipe["data"]["pool_size"] == 3000 and recipe["params"] == load_recipe("baseline")["params"]


def test_audit_with_reference_models_in_two_shards(tmp_path, trained_cnn, digits, capsys):
    from tfsafe.io import save_model

    (x, y), (xt, yt) = digits
    model_path = save_model(trained_cnn, tmp_path / "m.keras")
    np.savez(tmp_path / "mem.npz", x=x[:60], y=y[:60])
    np.savez(tmp_path / "non.npz", x=xt[:60], y=yt[:60])
    common = [f"--model={model_path}", f"--members={tmp_path / 'mem.npz'}", f"--nonmembers={tmp_path / 'non.npz'}",
              "--attacks=threshold", f"--out={tmp_path}", "--reference_models=2", "--reference_epochs=2"]
    assert run_cli("audit", *common, "--shard=0/2") == 0
    assert "1 of 2 reference models" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "audit.json")
    assert run_cli("audit", *common, "--shard=1/2") == 0
    out = capsys.readouterr().out
    assert "LiRA (online)" in out and "RMIA (offline)" in out and os.path.exists(tmp_path / "audit.html")


QUIET = """
import os, sys, warnings
from tfsafe_cli.quiet import quiet
with quiet(int(sys.argv[1])):
    os.write(2, b"C-LEVEL LINE\\n")  # what TensorFlow's C++ logging does
    print("tfsafe: PYTHON LINE", file=sys.stderr)
print("after", file=sys.stderr)
"""


@pytest.mark.parametrize("verbose, c_level_shown", [(0, False), (1, False), (2, True)])
def test_quiet_diverts_fd2_but_keeps_python_stderr(verbose, c_level_shown):
    proc = _python(QUIET, str(verbose))
    assert proc.returncode == 0
    assert ("C-LEVEL LINE" in proc.stderr) == c_level_shown
    assert "tfsafe: PYTHON LINE" in proc.stderr and proc.stderr.rstrip().endswith("after")


USER_DATA_FLAGS = """
import json, sys
import tfsafe_cli
calls = [["compress", "--help"], ["audit", "--model=m.keras"], ["audit", "--model=m.keras", "--data=d.npz",
         "--members=a.npz", "--nonmembers=b.npz"], ["compress", "--method=baseline", "--image_size=0,8"]]
codes = [tfsafe_cli.main(["tfsafe", *c]) for c in calls]
print(json.dumps({"codes": codes, "tensorflow": "tensorflow" in sys.modules}), file=sys.stderr)
"""


def test_user_data_flags_help_and_errors_without_tensorflow():
    proc = _python(USER_DATA_FLAGS)
    *errors, summary = proc.stderr.strip().splitlines()
    summary = json.loads(summary)
    assert summary["codes"] == [0, 2, 2, 2] and not summary["tensorflow"]
    help_text = proc.stdout
    for flag in ("--label_column", "--image_size", "--normalization (one of auto|0-1|-1-1|none|mean_std"):
        assert flag in help_text
    assert "x_train, y_train, x_test, y_test" in help_text
    neither, both, size = errors
    for line in (neither, both):
        assert line.startswith("tfsafe: error: give either --data (with x_train / x_test) or both --members")
    assert size.startswith("tfsafe: error: --image_size takes HEIGHT,WIDTH")


def test_method_choices_are_the_registry_names():
    # The front end lists methods without importing TensorFlow, so it keeps its own list.
    import tfsafe.methods
    from tfsafe_cli.flagsets import METHODS

    assert sorted(METHODS) == sorted(tfsafe.methods.names())


def test_export_mode_choices_are_the_exporters_modes():
    # Same reason: `tfsafe export --modes int4,learned` must reach the ai-edge-quantizer path.
    from tflite_export.convert import MODES
    from tfsafe_cli.flagsets import TFLITE_MODES

    assert sorted(TFLITE_MODES) == sorted(MODES)


def test_help_into_a_closed_pipe_is_quiet():
    # `tfsafe compress --help | head -1`: the reader closes the pipe early; no traceback, exit 0.
    code = "import sys, tfsafe_cli; sys.argv = ['tfsafe', 'compress', '--help']; tfsafe_cli.run()"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err


def test_keras_progress_is_one_line_per_epoch_in_a_log(capsys):
    # Under pytest stdout is captured (not a terminal), as when a run is piped into a log file.
    from tfsafe.cli import keras_verbose

    assert keras_verbose(0) == 0
    assert keras_verbose(1) == 2 and keras_verbose(2) == 2

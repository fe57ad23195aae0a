import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli


def test_unknown_command_prints_usage(capsys):
    assert run_cli("frobnicate") == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "demo" in err and "audit" in err


def test_audit_errors_are_one_line(tmp_path, capsys):
    assert run_cli("audit") == 2
    assert capsys.readouterr().err.strip() == (
        "tfsafe: error: --model is required: a .keras/.h5 model or a .tflite file.")
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"junk")
    assert run_cli("audit", "--model=x.keras", f"--members={bad}", f"--nonmembers={bad}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfsafe: error: --members file") and "\n" not in err


def test_audit_command_writes_json(tmp_path, trained_cnn, digits, capsys):
    from tfsafe.io import save_model

    (x, y), (xt, yt) = digits
    model_path = save_model(trained_cnn, tmp_path / "m.keras")
    np.savez(tmp_path / "mem.npz", x=x[:100], y=y[:100])
    np.savez(tmp_path / "non.npz", x=xt[:100], y=yt[:100])
    code = run_cli("audit", f"--model={model_path}", f"--members={tmp_path / 'mem.npz'}",
                   f"--nonmembers={tmp_path / 'non.npz'}", "--attacks=threshold,entropy", f"--out={tmp_path}")
    assert code == 0
    out = capsys.readouterr().out
    assert "worst case" in out and os.path.exists(tmp_path / "audit.json")


@pytest.mark.parametrize("args, message", [(["nope"], "unknown command"), (["demo", "--epochs=abc"], "epochs")])
def test_console_script_fails_cleanly(args, message):
    exe = os.path.join(os.path.dirname(sys.executable), "tfsafe")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


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
    assert "lira" in out and "offset" in out and os.path.exists(tmp_path / "audit.json")

import json
import os

import pytest
from conftest import run_cli

from tflite_export.commands import bench_command, export_command
from tfsafe.errors import InputError
from tfsafe.io import save_model


def test_export_command_writes_files_and_prints_a_table(trained_cnn, tmp_path):
    model_path = save_model(trained_cnn, tmp_path / "cnn.keras")
    printed = []
    results = export_command(model_path, tmp_path / "out", modes=["int8", "float16"], calibration_samples=200,
                             print_fn=printed.append)
    assert [r.mode for r in results] == ["int8", "float16"]
    assert all(os.path.isfile(r.path) and os.path.isfile(r.metadata_path) for r in results)
    assert all(r.parity.n == 449 and r.parity.top1_agreement >= 0.99 for r in results)  # digits test split
    table = printed[0]
    assert "| cnn_int8.tflite | int8 |" in table and "| cnn_float16.tflite | float16 |" in table
    with pytest.raises(InputError, match="modes must be"):
        export_command(model_path, tmp_path / "out", modes=["int3"])


def test_bench_command_host(int8_tflite, tmp_path):
    printed = []
    out = tmp_path / "bench.json"
    results = bench_command([int8_tflite.path], out=str(out), dataset="digits", threads=[1], xnnpack=[True, False],
                            warmup_runs=2, num_runs=10, print_fn=printed.append)
    assert [r.delegate for r in results] == ["xnnpack", "none"] and results[0].accuracy > 0.9
    assert "| trained_cnn_int8.tflite | host | 1 | xnnpack |" in printed[0]
    assert len(json.load(open(out))["results"]) == 2
    with pytest.raises(InputError, match="threads"):
        bench_command([int8_tflite.path], threads=[0])


def test_cli_export_and_bench(trained_cnn, int8_tflite, tmp_path, capsys):
    assert run_cli("export") == 2
    assert capsys.readouterr().err.strip() == "tfsafe: error: --model is required: a .keras/.h5 model to export."
    model_path = save_model(trained_cnn, tmp_path / "m.keras")
    assert run_cli("export", f"--model={model_path}", "--modes=float32", f"--out={tmp_path}") == 0
    assert os.path.isfile(tmp_path / "m_float32.tflite")
    code = run_cli("bench", f"--model={int8_tflite.path}", "--num_runs=5", "--warmup_runs=1",
                   "--xnnpack=on,off", "--threads=1", f"--out={tmp_path}")
    assert code == 0 and len(json.load(open(tmp_path / "bench.json"))["results"]) == 2
    assert run_cli("bench", f"--model={int8_tflite.path}", "--xnnpack=maybe") == 2
    assert "--xnnpack takes on and/or off" in capsys.readouterr().err
    corrupt = tmp_path / "bad.tflite"
    corrupt.write_bytes(b"\x00" * 64)
    assert run_cli("bench", f"--model={corrupt}", f"--out={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfsafe: error: ") and "not a valid .tflite model" in err and "\n" not in err

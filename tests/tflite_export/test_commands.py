import json
import os

import numpy as np
import pytest
from conftest import run_cli

from tflite_export.commands import bench_command, export_command
from tflite_export.host_info import describe, host_info
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


def test_export_command_calibrates_the_low_bit_modes_too(trained_cnn, tmp_path):
    # int4 / learned write int8 activations: they need the calibration data as int8 does.
    model_path = save_model(trained_cnn, tmp_path / "cnn.keras")
    (result,) = export_command(model_path, tmp_path / "out", modes=["int4"], calibration_samples=100,
                               print_fn=lambda _: None)
    assert result.mode == "int4" and os.path.isfile(result.path) and result.parity.passed


def test_bench_command_host(int8_tflite, tmp_path):
    import shutil

    printed = []
    out = tmp_path / "bench.json"
    twin = shutil.copy(int8_tflite.path, tmp_path / "twin.tflite")
    results = bench_command([int8_tflite.path, twin], out=str(out), dataset="digits", threads=[1],
                            xnnpack=[True, False], warmup_runs=2, num_runs=10, print_fn=printed.append)
    assert [r.delegate for r in results] == ["xnnpack", "none"] * 2 and results[0].accuracy > 0.9
    assert "| trained_cnn_int8.tflite | host | 1 | xnnpack |" in printed[0]
    saved = json.load(open(out))["results"]
    assert len(saved) == 4 and saved[0]["host"] == host_info()  # measured in a worker on this machine
    assert printed[0].startswith(f"Measured on {describe(host_info())}.")
    # Each file in its own process: the same file measured second shows the same memory, it
    # does not ride on what the first one left behind.
    first, second = results[0].memory_mb, results[2].memory_mb
    assert first["method"] == second["method"] == "vmhwm"
    assert abs(first["overall"] - second["overall"]) <= max(1.0, 0.25 * first["overall"]), (first, second)
    with pytest.raises(InputError, match="threads"):
        bench_command([int8_tflite.path], threads=[0])


def test_cli_export_and_bench(trained_cnn, int8_tflite, tmp_path, capsys):
    assert run_cli("export") == 2
    assert capsys.readouterr().err.strip() == ("tfsafe: error: --model is required: a .keras/.h5 model to export. "
                                               "(tfsafe export --help lists the flags)")
    model_path = save_model(trained_cnn, tmp_path / "m.keras")
    assert run_cli("export", f"--model={model_path}", "--modes=float32", f"--out={tmp_path}") == 0
    assert os.path.isfile(tmp_path / "m_float32.tflite")
    code = run_cli("bench", f"--model={int8_tflite.path}", "--num_runs=5", "--warmup_runs=1",
                   "--xnnpack=on,off", "--threads=1", "--noisolate", f"--out={tmp_path}")
    assert code == 0 and len(json.load(open(tmp_path / "bench.json"))["results"]) == 2
    assert run_cli("bench", f"--model={int8_tflite.path}", "--xnnpack=maybe") == 2
    assert "tfsafe: error: --xnnpack takes on and/or off" in capsys.readouterr().err
    corrupt = tmp_path / "bad.tflite"
    corrupt.write_bytes(b"\x00" * 64)
    assert run_cli("bench", f"--model={corrupt}", f"--out={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfsafe: error: ") and "not a valid .tflite model" in err and "\n" not in err


def _outlier_model():
    """Flatten -> Dense(74): the 64 pixels plus 10 constant features of 1000 -> Dense(10) reading
    only the pixels. int8 quantizes the 74-wide tensor with one scale (~4), which rounds every
    pixel to 0, so the int8 file predicts one class; float32 keeps the pixels."""
    from tfsafe._keras import keras

    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Dense(74)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(features))
    kernel = np.zeros((64, 74), np.float32)
    kernel[:, :64] = np.eye(64)
    bias = np.zeros(74, np.float32)
    bias[64:] = 1000.0
    head = np.zeros((74, 10), np.float32)
    head[:64] = np.random.default_rng(0).normal(0, 5, (64, 10))
    model.layers[2].set_weights([kernel, bias])
    model.layers[3].set_weights([head, np.zeros(10, np.float32)])
    return model


def test_each_mode_is_written_or_refused_on_its_own(tmp_path):
    from tflite_export.commands import ExportRefused

    model_path = save_model(_outlier_model(), tmp_path / "cnn.keras")
    printed = []
    results = export_command(model_path, tmp_path / "out", modes=["int8", "float32"], calibration_samples=100,
                             print_fn=printed.append)
    assert [r.mode for r in results] == ["float32"] and os.path.isfile(results[0].path)
    assert results[0].parity.passed and results[0].parity.confident_agreement == 1.0
    assert not os.path.exists(tmp_path / "out" / "cnn_int8.tflite")
    refusal = next(line for line in printed if line.startswith("refused int8: "))
    assert "--min_agreement" in refusal and "confident examples" in refusal and "No file was written" in refusal
    with pytest.raises(ExportRefused, match="no file was written") as err:
        export_command(model_path, tmp_path / "out2", modes=["int8"], calibration_samples=100,
                       print_fn=printed.append)
    assert list(err.value.failures) == ["int8"]

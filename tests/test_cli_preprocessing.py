"""One preprocessing for audit / export / bench: the record written with a model wins over guessing
from the data, the accuracy warning fires only on evidence, bad shapes and labels get one line.

The model here classifies images by their brightness level (class k: pixels around (k + 0.5) / 10),
so, unlike a digits CNN (which keeps its accuracy at x * 255), feeding it 8-bit pixels or pixels
scaled twice really breaks it, as the trial's BatchNormalization CNN was broken.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import compile_classifier, run_cli

from tfsafe._keras import keras
from tfsafe.data_match import check_data_matches_model
from tfsafe.errors import InputError
from tfsafe.io import save_model
from tfsafe.preprocessing import Preprocessing, decide_preprocessing
from tfsafe.preprocessing_record import accuracy_check, audit_set_preprocessing, recorded_preprocessing
from tfsafe.safety.tflite_model import predict_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _levels(n, seed):
    """uint8 8x8x1 images whose class (0..9) is their brightness level."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    level = (y + rng.uniform(0.2, 0.8, n)) / 10
    pixels = level[:, None, None, None] + rng.normal(0, 0.03, (n, 8, 8, 1))
    return np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def level_data():
    """``(x_u8, y), (xt_u8, yt)``: training and held-out parts."""
    return _levels(300, 0), _levels(200, 1)


@pytest.fixture(scope="module")
def level_model(level_data):
    """A small MLP trained on the level images scaled to [0, 1] (no Rescaling layer)."""
    (x, y), _ = level_data
    keras.utils.set_random_seed(0)
    model = compile_classifier(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                                 keras.layers.Dense(32, "relu"), keras.layers.Dense(10)]), lr=1e-2)
    model.fit(x.astype(np.float32) / 255, y, epochs=40, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def files(level_data, level_model, tmp_path_factory):
    """The model saved, its raw-pixel twin (Rescaling(1/255) in front), and the data as uint8 and as float."""
    root = tmp_path_factory.mktemp("prep")
    (x, y), (xt, yt) = level_data
    np.savez(root / "u8.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(root / "f32.npz", x_train=x.astype(np.float32) / 255, y_train=y,
             x_test=xt.astype(np.float32) / 255, y_test=yt)
    inputs = keras.Input((8, 8, 1))
    raw = keras.Model(inputs, level_model(keras.layers.Rescaling(1 / 255)(inputs)))
    return {"root": root, "model": str(save_model(level_model, root / "unit.keras")),
            "raw": str(save_model(raw, root / "raw.keras")), "u8": str(root / "u8.npz"), "f32": str(root / "f32.npz")}


def _audit(capsys, model, data, out, *extra):
    assert run_cli("audit", f"--model={model}", f"--data={data}", "--attacks=threshold,entropy", f"--out={out}",
                   *extra) == 0
    captured = capsys.readouterr()
    return json.loads((out / "audit.json").read_text()), captured.out, captured.err


def test_accuracy_warning_fires_on_8_bit_pixels_only_with_evidence(level_data, level_model):
    _, (xt, yt) = level_data
    unit = xt.astype(np.float32) / 255

    def predict(v):
        return predict_labels(level_model, v)

    right = accuracy_check(predict, unit, yt, 10, expected_range=(0, 1))
    assert right["accuracy"] > 0.8 and not right["near_chance"] and not right["warn"]
    wrong = accuracy_check(predict, xt.astype(np.float32), yt, 10, expected_range=(0, 1))
    assert wrong["warn"] and wrong["accuracy"] < 0.2 and wrong["alternative"]["inputs"] == "x / 255"
    assert wrong["alternative"]["accuracy"] == pytest.approx(right["accuracy"])
    assert f"accuracy {wrong['accuracy']:.3f} on 200 examples is near chance (" in wrong["message"]
    assert "span [" in wrong["message"] and "expects about [0, 1]" in wrong["message"]
    # A model near chance on correctly scaled inputs (labels it never learned) is weak, not misfed: silent.
    shuffled = np.random.default_rng(5).permutation(yt)
    weak = accuracy_check(predict, unit, shuffled, 10, expected_range=(0, 1))
    assert weak["near_chance"] and weak["range"] is None and not weak["warn"]
    assert weak["alternative"]["accuracy"] < weak["accuracy"] + 0.2


def test_audit_of_a_tflite_follows_its_sidecar_for_uint8_and_float_data(files, tmp_path, capsys):
    root = files["root"]
    assert run_cli("export", f"--model={files['model']}", f"--data={files['u8']}", "--calibration_samples=100",
                   f"--out={root}") == 0
    capsys.readouterr()
    tflite = root / "unit_int8.tflite"
    record = json.loads((root / "unit_int8.tflite.json").read_text())["normalization"]
    assert record["mode"] == "0-1" and record["scale"] == pytest.approx(1 / 255) and record["expected_range"] == [0, 1]
    audits = {}
    for name in ("u8", "f32"):
        audits[name], out, err = _audit(capsys, tflite, files[name], tmp_path / name)
        assert "recorded in the side-car" in out and "warning" not in out and "tfsafe: warning" not in err
        assert audits[name]["accuracy"]["nonmembers"] > 0.6 and audits[name]["accuracy"]["members"] > 0.6
    assert audits["u8"]["worst"]["auc"] == audits["f32"]["worst"]["auc"]
    assert audits["u8"]["accuracy"] == audits["f32"]["accuracy"]
    # An explicit --normalization wins, is warned about, and the numbers show it was wrong.
    wrong, out, err = _audit(capsys, tflite, files["u8"], tmp_path / "none", "--normalization=none")
    assert "tfsafe: warning: normalization='none' gives model inputs in [" in err and "contradicts" in err
    assert "calibrated on [" in err  # the side-car's calibration range, with the numbers
    assert wrong["accuracy"]["nonmembers"] < 0.3
    assert "warning: accuracy " in out and "is near chance" in out and wrong["meta"]["preprocessing warning"]


def test_raw_pixel_tflite_is_not_scaled_twice(files, tmp_path, capsys):
    """The trial's finding: a .tflite made for raw pixels was audited on pixels / 255 (chance accuracy)."""
    root = files["root"]
    assert run_cli("export", f"--model={files['raw']}", f"--data={files['u8']}", "--calibration_samples=100",
                   f"--out={root}") == 0
    assert "model: x * 1 + 0, model input in [0, 255]" in capsys.readouterr().out
    tflite = root / "raw_int8.tflite"
    audits = {}
    for name in ("u8", "f32"):
        audits[name], out, _ = _audit(capsys, tflite, files[name], tmp_path / name)
        assert audits[name]["accuracy"]["nonmembers"] > 0.6
    assert "mapped onto the recorded model input range [0, 255]" in out  # float data: x * 255
    assert audits["u8"]["worst"]["auc"] == audits["f32"]["worst"]["auc"]
    # The old rule (scale the pixels by 1/255 before the model's own 1/255): warned, with the numbers.
    twice, out, err = _audit(capsys, tflite, files["u8"], tmp_path / "twice", "--normalization=0-1")
    assert twice["accuracy"]["nonmembers"] < 0.3 and "contradicts" in err
    assert "is near chance" in out and "the same inputs as x * 255 are classified with accuracy" in out
    # A side-car without a normalization record (older exports): its calibration range is the record.
    side = root / "raw_int8.tflite.json"
    sidecar = json.loads(side.read_text())
    sidecar["normalization"] = None
    side.write_text(json.dumps(sidecar))
    old, _, _ = _audit(capsys, tflite, files["f32"], tmp_path / "old")
    assert old["worst"]["auc"] == audits["u8"]["worst"]["auc"]


def _unit_tflite(files, capsys):
    tflite = files["root"] / "unit_int8.tflite"
    if not tflite.exists():
        assert run_cli("export", f"--model={files['model']}", f"--data={files['u8']}", "--calibration_samples=100",
                       f"--out={files['root']}") == 0
        capsys.readouterr()
    return tflite


def test_bench_takes_the_users_data_through_the_sidecar(files, tmp_path, capsys):
    tflite = _unit_tflite(files, capsys)
    assert run_cli("bench", f"--model={tflite}", f"--data={files['f32']}", "--num_runs=2", "--warmup_runs=0",
                   "--noisolate", f"--out={tmp_path}") == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    with np.load(files["u8"]) as data:
        xt, yt = data["x_test"], data["y_test"]
    expected = np.mean(predict_labels(str(tflite), xt.astype(np.float32) / 255) == yt)
    assert rows[0]["accuracy"] == pytest.approx(expected) and expected > 0.6
    assert "accuracy on its test part" in out and "recorded in the side-car" in out


def test_bench_worker_reads_the_preprocessed_data(files, tmp_path, capsys):
    from tflite_export import bench_worker

    tflite = _unit_tflite(files, capsys)
    with np.load(files["f32"]) as data:
        x, y = data["x_test"][:50], data["y_test"][:50]
    np.savez(tmp_path / "data.npz", x=x, y=y)
    args = {"path": str(tflite), "out": str(tmp_path / "out.json"), "dataset": None, "data_dir": None,
            "data_npz": str(tmp_path / "data.npz"), "kwargs": {"threads": [1], "xnnpack": [True], "warmup_runs": 0,
                                                               "num_runs": 1}}
    (tmp_path / "args.json").write_text(json.dumps(args))
    assert bench_worker.main(str(tmp_path / "args.json")) == 0
    row = json.loads((tmp_path / "out.json").read_text())["results"][0]
    assert row["n_eval"] == 50 and row["accuracy"] == pytest.approx(np.mean(predict_labels(str(tflite), x) == y))


def test_record_of_a_compress_run_folder(tmp_path):
    model_path = tmp_path / "dense.keras"
    model_path.write_bytes(b"")
    x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    pre = decide_preprocessing(x, "-1-1")
    (tmp_path / "run.json").write_text(json.dumps({"schema": 2, "settings": {"preprocessing": pre.to_dict()},
                                                   "stages": {}}))
    recorded = recorded_preprocessing(model_path)
    assert recorded.mode == "-1-1" and recorded.source == "record" and "run.json" in recorded.reason
    # Today's data rule would give [0, 1]; the run's record gives [-1, 1], for uint8 and float storage alike.
    from_u8 = decide_preprocessing(x, recorded=recorded)
    from_float = decide_preprocessing(x.astype(np.float32) / 255, recorded=recorded)
    np.testing.assert_allclose(from_u8.apply(x), from_float.apply(x.astype(np.float32) / 255), atol=1e-6)
    assert from_u8.apply(x).min() == -1.0 and from_u8.apply(x).max() == 1.0
    assert recorded_preprocessing(tmp_path / "elsewhere" / "m.keras") is None
    # The run's audit/*.npz hold model inputs already: fed as stored, checked against the run's range.
    (tmp_path / "audit").mkdir()
    stored = from_u8.apply(x)
    again = decide_preprocessing(stored, recorded=audit_set_preprocessing(tmp_path / "audit" / "members.npz"))
    assert again.is_identity and again.expected_range == (-1.0, 1.0) and "already preprocessed" in again.reason
    np.testing.assert_array_equal(again.apply(stored), stored)
    assert audit_set_preprocessing(tmp_path / "members.npz") is None
    (tmp_path / "bad.tflite").write_bytes(b"")
    (tmp_path / "bad.tflite.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.tflite.json' is not readable JSON"):
        recorded_preprocessing(tmp_path / "bad.tflite")
    assert isinstance(Preprocessing.from_dict(pre.to_dict()), Preprocessing)


def test_channel_and_label_mismatches_are_one_line_with_the_fix(files, level_model, tmp_path, capsys):
    rgb = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(InputError, match=r"photos.npz has examples shaped \(8, 8, 3\) but the model '.*' takes "
                                         r"\(8, 8, 1\); the data has 3 channels \(RGB\) but the model takes 1 "
                                         r"channel \(grayscale\): convert the images to grayscale"):
        check_data_matches_model(level_model, rgb, name="photos.npz")
    with pytest.raises(InputError, match=r"resize the images to \(8, 8\) \(image folders: --image_size 8,8; .*\); "
                                         r"and the data has 3 channels \(RGB\)"):
        check_data_matches_model(level_model, np.zeros((2, 16, 16, 3), np.float32), name="photos.npz")
    rgb_model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(InputError, match=r"1 channel \(grayscale\) but the model takes 3 channels \(RGB\): repeat"):
        check_data_matches_model(rgb_model, np.zeros((2, 8, 8, 1), np.float32), name="gray.npz")
    # Through the CLI: RGB data into the grayscale model, labels beyond its classes; one line each, exit 2.
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=x, y_train=np.arange(20) % 10, x_test=x, y_test=np.arange(20) % 10)
    (xu, yu) = np.load(files["u8"])["x_train"][:20], np.arange(20) % 13
    np.savez(tmp_path / "labels.npz", x_train=xu, y_train=yu, x_test=xu, y_test=yu)
    for name, message in (("rgb", "3 channels (RGB) but the model takes 1 channel (grayscale): convert"),
                          ("labels", "(its largest) but the model 'sequential")):
        assert run_cli("audit", f"--model={files['model']}", f"--data={tmp_path / name}.npz",
                       f"--out={tmp_path}") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tfsafe: error: ") and message in err and "\n" not in err
    assert "has 10 classes (outputs 0..9); map them to class ids 0..9" in err


FLAGS = """
import json, sys
import tfsafe_cli
from tfsafe_cli.flagsets import flag_values
codes = [tfsafe_cli.main(["tfsafe", *c]) for c in (["export", "--help"], ["bench", "--help"])]
fv = flag_values("bench")
fv(["tfsafe bench", "--model=a.tflite", "--dataset=mnist", "--normalization=0-1"])
print(json.dumps({"codes": codes, "data": fv.data, "tf": "tensorflow" in sys.modules}), file=sys.stderr)
"""


def test_export_and_bench_flags_take_the_users_data_without_tensorflow():
    proc = subprocess.run([sys.executable, "-c", FLAGS], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    assert summary == {"codes": [0, 0], "data": "mnist", "tf": False}  # --dataset stays an alias of --data
    export_help, bench_help = proc.stdout.split("usage: tfsafe bench")
    for text in (export_help, bench_help):
        for flag in ("--data (string", "--label_column", "--image_size", "--normalization (one of auto|"):
            assert flag in text


def test_cli_shows_range_warnings_once_although_it_silences_python_warnings(capsys):
    import warnings

    from tfsafe.cli import shows_input_warnings
    from tfsafe.preprocessing import InputRangeWarning
    from tfsafe_cli.quiet import quiet

    @shows_input_warnings
    def command(fv):
        for _ in range(2):
            warnings.warn("x.npz: model inputs span [0, 255] but the model expects about [0, 1]", InputRangeWarning,
                          stacklevel=1)
        warnings.warn("TensorFlow chatter", UserWarning, stacklevel=1)
        return fv

    with quiet(0):
        assert command(7) == 7
    err = capsys.readouterr().err
    assert err.count("tfsafe: warning: x.npz: model inputs span [0, 255]") == 1 and "chatter" not in err

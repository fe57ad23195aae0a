import json
import os

import numpy as np
import pytest

from tflite_export.commands import export_command
from tfsafe._keras import keras, tfmot
from tfsafe.compress.strip import is_wrapped, strip
from tfsafe.errors import InputError
from tfsafe.io import atomic_path, atomic_write_json, load_model, save_model


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_atomic_json_converts_numpy(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": np.float32(0.5), "b": np.arange(3), "c": float("nan")})
    assert json.loads(open(path).read()) == {"a": 0.5, "b": [0, 1, 2], "c": None}


def test_model_round_trip_and_bad_paths(tmp_path, trained_cnn, digits):
    _, (xt, _) = digits
    path = save_model(trained_cnn, tmp_path / "m.keras")
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(xt[:4], verbose=0), trained_cnn.predict(xt[:4], verbose=0), atol=1e-6)
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a Keras model"):
        load_model(junk)
    with pytest.raises(InputError, match="must end in"):
        save_model(trained_cnn, tmp_path / "m.bin")


def _small():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                             keras.layers.Flatten(), keras.layers.Dense(3)])


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_tf_mot_pruned_checkpoint_loads_and_strips(tmp_path, ext):
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(_small())
    path = str(tmp_path / f"pruned{ext}")
    wrapped.save(path)
    loaded = load_model(path)
    assert type(loaded.layers[0]).__name__ == "PruneLowMagnitude"
    stripped = strip(loaded)
    assert not is_wrapped(stripped)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), wrapped.predict(x, verbose=0), atol=1e-5)


def test_tf_mot_quantized_checkpoint_loads_from_h5_and_explains_keras(tmp_path):
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    qat = tfmot.quantization.keras.quantize_model(_small())
    qat.save(str(tmp_path / "qat.h5"))
    loaded = load_model(tmp_path / "qat.h5")
    np.testing.assert_allclose(strip(loaded).predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)
    qat.save(str(tmp_path / "qat.keras"))
    with pytest.raises(InputError, match="TF-MOT quantize_model.*model.h5"):
        load_model(tmp_path / "qat.keras")


def test_tf_mot_checkpoint_exports_with_the_cli_command(tmp_path, trained_cnn):
    path = str(tmp_path / "tfmot_pruned.keras")
    tfmot.sparsity.keras.prune_low_magnitude(trained_cnn).save(path)
    results = export_command(path, str(tmp_path / "out"), modes=["int8"], dataset="digits", calibration_samples=100,
                             print_fn=lambda *a: None)
    assert results[0].parity.top1_agreement >= 0.99 and os.path.exists(results[0].path)

import json
import os

import numpy as np
import pytest

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

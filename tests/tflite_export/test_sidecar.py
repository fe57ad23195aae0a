import numpy as np
import pytest

from tflite_export.sidecar import check_labels_list, check_normalization, sidecar_path, tensor_info
from tfsafe.errors import InputError


def test_tensor_info_formulas_only_for_quantized_tensors():
    q_in = tensor_info("in", (-1, 8, 8, 1), np.int8, 0.5, -3)
    assert q_in == {"name": "in", "shape": [-1, 8, 8, 1], "dtype": "int8", "scale": 0.5, "zero_point": -3,
                    "quantize": "q = clip(round(x / scale) + zero_point, -128, 127)"}
    q_out = tensor_info("out", (-1, 10), np.uint8, 0.1, 7, role="output")
    assert q_out["dequantize"] == "x = (q - zero_point) * scale" and "quantize" not in q_out
    assert tensor_info("f", (-1, 3), np.float32) == {"name": "f", "shape": [-1, 3], "dtype": "float32"}


def test_labels_and_normalization_checks():
    assert check_labels_list(range(3), 3) == ["0", "1", "2"]
    assert check_labels_list(None, 3) is None
    with pytest.raises(InputError, match="not a single string"):
        check_labels_list("abc", 3)
    with pytest.raises(InputError, match="2 names but the model has 3"):
        check_labels_list(["a", "b"], 3)
    assert check_normalization({"mean": [0.5], "std": [0.25]}) == {"mean": [0.5], "std": [0.25]}
    with pytest.raises(InputError, match="must be a dict"):
        check_normalization(0.5)
    with pytest.raises(InputError, match="JSON-serializable"):
        check_normalization({"mean": object()})
    assert sidecar_path("out/m.tflite") == "out/m.tflite.json"


def test_version_comes_from_package_metadata_not_the_tfsafe_root():
    import pathlib
    from importlib import metadata

    from tflite_export.sidecar import tfsafe_version

    assert tfsafe_version() == metadata.version("tfsafe")
    package = pathlib.Path(__file__).resolve().parents[2] / "tflite_export"
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "from tfsafe import" not in text and "\nimport tfsafe\n" not in text, source.name

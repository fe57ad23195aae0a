import json
import os

import numpy as np
import pytest

from tflite_export import ONNXModel, load_exported, to_onnx
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import predict_logits


def test_onnx_export_checked_with_onnxruntime(trained_cnn, digits, tmp_path):
    import onnx

    _, (xt, yt) = digits
    r = to_onnx(trained_cnn, tmp_path / "cnn.onnx", opset=15, verify=(xt, yt), labels=list("abcdefghij"))
    assert r.format == "onnx" and r.bytes == os.path.getsize(r.path) and r.ops is None
    assert r.input["shape"] == [-1, 8, 8, 1] and r.output["shape"] == [-1, 10]
    assert r.parity.format == "onnx" and r.parity.top1_agreement == 1.0 and r.parity.max_abs_diff < 1e-4
    proto = onnx.load(r.path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [15]
    runner = load_exported(r.path)
    assert isinstance(runner, ONNXModel)
    assert np.abs(runner.predict(xt[:50], batch_size=16) - predict_logits(trained_cnn, xt[:50])).max() < 1e-4
    meta = json.load(open(r.metadata_path))
    assert meta["format"] == "onnx" and meta["opset"] == 15 and meta["labels"][0] == "a"
    assert meta["output"]["kind"] == "logits"


def test_onnx_bad_inputs_leave_no_file(trained_cnn, digits, tmp_path):
    _, (xt, yt) = digits
    with pytest.raises(InputError, match="opset must be an integer"):
        to_onnx(trained_cnn, tmp_path / "m.onnx", opset=99)
    with pytest.raises(InputError, match=r"must end in \.onnx"):
        to_onnx(trained_cnn, tmp_path / "m.tflite")
    with pytest.raises(UnsupportedModelError, match="Expected a Keras model"):
        to_onnx([1, 2], tmp_path / "m.onnx")
    with pytest.raises(InputError, match="verify x"):
        to_onnx(trained_cnn, tmp_path / "m.onnx", verify=(xt[:, :4], yt))
    assert os.listdir(tmp_path) == []

import numpy as np
import pytest

from tflite_export import ParityError, TFLiteModel, check_parity, to_tflite
from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.models import accuracy, predict_logits


def test_int8_parity_against_keras(trained_cnn, int8_tflite, digits):
    _, (xt, yt) = digits
    report = check_parity(trained_cnn, int8_tflite.path, xt, yt)
    assert report.format == "tflite" and report.compared == "logits" and report.n == len(xt)
    assert report.top1_agreement >= 0.99
    assert report.keras_accuracy == pytest.approx(accuracy(trained_cnn, xt, yt))
    exported = TFLiteModel(int8_tflite.path).predict(xt)
    assert report.exported_accuracy == pytest.approx(np.mean(exported.argmax(1) == yt))
    diff = np.abs(exported - predict_logits(trained_cnn, xt))
    assert report.max_abs_diff == pytest.approx(diff.max(), rel=1e-5)
    assert report.mean_abs_diff == pytest.approx(diff.mean(), rel=1e-5)
    assert 0 < report.mean_abs_diff < report.max_abs_diff  # int8 rounding shows in the logits
    assert check_parity(trained_cnn, int8_tflite.path, xt).keras_accuracy is None
    assert "top-1 agreement" in report.summary()


def test_softmax_models_are_compared_on_probabilities(trained_cnn, digits, tmp_path):
    _, (xt, yt) = digits
    probs = keras.Model(trained_cnn.inputs, keras.layers.Softmax()(trained_cnn.outputs[0]))
    result = to_tflite(probs, tmp_path / "probs.tflite", "float32", verify=(xt, yt))
    report = result.parity
    assert report.compared == "probabilities" and report.max_abs_diff < 1e-5
    assert np.allclose(TFLiteModel(result.path).predict(xt[:5]).sum(axis=1), 1.0, atol=1e-5)
    assert report.top1_agreement == 1.0


def test_parity_bad_inputs(trained_cnn, int8_tflite, digits, tmp_path):
    _, (xt, yt) = digits
    with pytest.raises(InputError, match="per-example shape"):
        check_parity(trained_cnn, int8_tflite.path, xt[..., 0], yt)
    with pytest.raises(InputError, match="labels but there are"):
        check_parity(trained_cnn, int8_tflite.path, xt, yt[:10])
    with pytest.raises(InputError, match="does not exist"):
        check_parity(trained_cnn, tmp_path / "missing.tflite", xt)
    inputs = keras.Input((8, 8, 1))
    other = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ParityError, match="different model"):
        check_parity(other, int8_tflite.path, xt[:10])

"""Recurrent and token models through to_tflite and the .tflite runner.

LSTM converts at a fixed batch of 1 to TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM, whose
states are variable tensors that persist between invocations: the runner must reset them, or
every example after the first starts from the previous one's state. GRU / SimpleRNN with a
fixed number of steps are unrolled (their WHILE loop cannot be int8-calibrated). Integer token
inputs stay integer in every mode.
"""

import numpy as np
import pytest

from tflite_export import to_tflite
from tflite_export.runtime import TFLiteModel
from tfsafe._keras import keras, tf
from tfsafe.errors import UnsupportedModelError

STEPS, FEATURES, CLASSES = 8, 6, 3


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, STEPS, FEATURES)).astype(np.float32)
    y = x[:, :, :CLASSES].mean(axis=1).argmax(axis=1)
    return x, y


def _trained(layer, sequences, epochs=12):
    x, y = sequences
    tf.random.set_seed(0)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), layer, keras.layers.Dense(CLASSES)])
    model.compile(keras.optimizers.Adam(2e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:256], y[:256], epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def lstm(sequences):
    return _trained(keras.layers.LSTM(12), sequences)


@pytest.mark.parametrize("mode", ["int8", "dynamic", "float16", "float32"])
def test_lstm_converts_in_every_mode_with_parity(lstm, sequences, tmp_path, capfd, mode):
    x, y = sequences
    capfd.readouterr()
    # int8 LSTM arithmetic is lossy: one of 64 borderline examples may flip.
    result = to_tflite(lstm, tmp_path / f"lstm_{mode}.tflite", mode, x[:128], verify=(x[256:], y[256:]),
                       min_agreement=0.95 if mode == "int8" else 0.99)
    assert len(capfd.readouterr().err) < 2000  # no converter logs on success
    assert result.ops.get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    assert result.input["shape"][0] == 1  # the fused kernel needs a fixed batch
    assert result.parity.exported_accuracy == pytest.approx(result.parity.keras_accuracy, abs=0.04)
    if mode == "float32":
        assert result.parity.max_abs_diff < 1e-4
    if mode == "int8":
        assert result.input["dtype"] == "int8"


def test_runner_resets_state_between_invocations(lstm, sequences, tmp_path):
    x = sequences[0][:12]
    path = tmp_path / "lstm_float32.tflite"
    to_tflite(lstm, path, "float32")
    runner = TFLiteModel(path)
    assert runner.stateful
    reference = lstm(x).numpy()
    for _ in range(2):  # repeated calls give the Keras numbers every time
        np.testing.assert_allclose(runner.predict(x), reference, atol=1e-5)
    # Without the reset each example continues from the previous example's LSTM state.
    interpreter = runner.interpreter
    interpreter.reset_all_variables()
    stale = []
    for example in x:
        interpreter.set_tensor(runner.input_details["index"], example[None])
        interpreter.invoke()
        stale.append(interpreter.get_tensor(runner.output_details["index"])[0])
    assert np.abs(np.array(stale) - reference).max() > 1e-3


@pytest.mark.parametrize("kind", ["GRU", "SimpleRNN"])
def test_loop_recurrent_layers_are_unrolled_and_convert_to_int8(kind, sequences, tmp_path):
    x, y = sequences
    model = _trained(getattr(keras.layers, kind)(12), sequences)
    result = to_tflite(model, tmp_path / f"{kind}.tflite", "int8", x[:128], verify=(x[256:], y[256:]),
                       min_agreement=0.95)
    assert "WHILE" not in result.ops  # unrolled: integer-only, free batch size
    assert result.input["shape"][0] == -1
    assert result.parity.exported_accuracy == pytest.approx(result.parity.keras_accuracy, abs=0.03)
    if kind == "GRU":  # unrolling changes nothing but the graph
        float_result = to_tflite(model, tmp_path / f"{kind}_f32.tflite", "float32", verify=(x[256:], y[256:]))
        assert float_result.parity.max_abs_diff < 1e-4


def test_bidirectional_lstm_fuses_both_directions(sequences, tmp_path):
    x = sequences[0]
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.Bidirectional(keras.layers.LSTM(4)),
                              keras.layers.Dense(CLASSES)])
    result = to_tflite(model, tmp_path / "bi.tflite", "dynamic", verify=(x[:16], None))
    assert result.ops.get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2
    assert result.parity.max_abs_diff < 1e-4


def test_variable_length_gru_refuses_int8_and_exports_float(sequences, tmp_path):
    x = sequences[0]
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.GRU(4, name="gru"),
                              keras.layers.Dense(CLASSES)])
    with pytest.raises(UnsupportedModelError, match="'gru'.*fixed sequence length") as err:
        to_tflite(model, tmp_path / "gru_int8.tflite", "int8", x[:32])
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())
    result = to_tflite(model, tmp_path / "gru_dynamic.tflite", "dynamic")
    np.testing.assert_allclose(TFLiteModel(result.path).predict(x[:5]), model(x[:5]).numpy(), atol=1e-4)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_token_model_keeps_int32_input(head, tmp_path):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 50, (300, 12)).astype(np.int32)
    labels = (tokens < 25).mean(axis=1) > 0.5
    units, activation = (1, "sigmoid") if head == "sigmoid" else (2, "softmax")
    tf.random.set_seed(0)
    model = keras.Sequential([keras.Input((12,), dtype="int32"), keras.layers.Embedding(50, 8),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(units, activation=activation)])
    model.compile(keras.optimizers.Adam(3e-2),
                  "binary_crossentropy" if head == "sigmoid" else "sparse_categorical_crossentropy")
    model.fit(tokens[:200], labels[:200].astype(np.int64), epochs=20, batch_size=32, verbose=0)
    result = to_tflite(model, tmp_path / "text_int8.tflite", "int8", tokens[:200],
                       verify=(tokens[200:], labels[200:].astype(np.int64)), min_agreement=0.95)
    assert result.input["dtype"] == "int32" and "scale" not in result.input
    assert result.output["dtype"] == "int8"
    runner = TFLiteModel(result.path)
    assert runner.output_kind == "probabilities" and runner.num_classes == 2
    expected = model(tokens[200:]).numpy().argmax(1) if units == 2 else (model(tokens[200:]).numpy()[:, 0] > 0.5)
    assert np.mean(runner.predict_labels(tokens[200:]) == expected) >= 0.95
    exact = to_tflite(model, tmp_path / "text_f32.tflite", "float32")
    np.testing.assert_allclose(TFLiteModel(exact.path).predict(tokens[:20]), model(tokens[:20]).numpy(), atol=1e-5)

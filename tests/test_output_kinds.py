"""One-unit heads and probability outputs: every place outputs become logits, probabilities or
labels reads what the model says (its final activation, a .tflite side-car or last op, or the
user's ``output=``), and a one-unit head is the two-class classifier ``[0, z]`` / ``[1 - p, p]``."""

import os

import numpy as np
import pytest
from conftest import run_cli

from tflite_export import to_tflite
from tflite_export.runtime import TFLiteModel
from tfsafe._keras import keras, tf, tfmot
from tfsafe.compress.pruning import prune_safe
from tfsafe.errors import InputError
from tfsafe.models import class_scores, logits_model, output_kind, predict_logits, predict_proba
from tfsafe.safety.adversarial import fgsm_attack, pgd_attack
from tfsafe.safety.membership import audit_membership, audit_outputs
from tfsafe.safety.robust_accuracy import adversarial_accuracy, transfer_attack
from tfsafe.safety.tflite_model import predict_labels

FAST = ("threshold", "entropy")


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5, 0.0, 2.0, -0.5]) > 0).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def sigmoid_head(tabular):
    """A trained tabular MLP ending in Dense(1, sigmoid), fit on 0/1 labels."""
    x, y = tabular
    keras.utils.set_random_seed(0)  # python, numpy and TF: the same model whatever ran before
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid", name="head")])
    model.compile(keras.optimizers.Adam(3e-2), "binary_crossentropy")
    model.fit(x[:300], y[:300], epochs=15, batch_size=64, verbose=0)
    return model


def _pre_sigmoid(model, x):
    hidden = keras.Model(model.inputs, model.layers[-2].output)(x).numpy()
    kernel, bias = model.get_layer("head").get_weights()
    return (hidden @ kernel + bias)[:, 0]


def test_logits_of_a_sigmoid_head_are_zero_and_the_pre_sigmoid_logit(sigmoid_head, tabular):
    x = tabular[0][:50]
    logits = predict_logits(sigmoid_head, x)
    assert logits.shape == (50, 2)
    np.testing.assert_array_equal(logits[:, 0], 0.0)
    np.testing.assert_allclose(logits[:, 1], _pre_sigmoid(sigmoid_head, x), rtol=1e-5, atol=1e-5)
    p = sigmoid_head(x).numpy()[:, 0]
    np.testing.assert_allclose(predict_proba(sigmoid_head, x), np.stack([1 - p, p], 1), atol=1e-6)
    assert output_kind(sigmoid_head) == "probabilities"
    assert logits_model(sigmoid_head).output_shape == (None, 2)


def test_output_kind_looks_inside_nested_models():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Activation("softmax")])
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, inner(keras.layers.Dense(4)(inputs)))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    assert output_kind(outer) == "probabilities"
    np.testing.assert_allclose(tf.nn.softmax(predict_logits(outer, x)).numpy(), outer(x).numpy(), atol=1e-6)
    linear = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    assert output_kind(linear) == "logits"
    np.testing.assert_allclose(predict_logits(linear, x)[:, 1], linear(x).numpy()[:, 0], atol=1e-6)


@pytest.mark.parametrize("wrap", ["tfmot", "prune_safe"])
def test_output_kind_and_logits_look_through_pruning_wrappers(wrap):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3, activation="softmax")])
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model) if wrap == "tfmot" else prune_safe(model, 0.0)
    x = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    assert output_kind(wrapped) == "probabilities"
    logits = logits_model(wrapped)(x).numpy()
    assert not np.allclose(logits.sum(axis=1), 1.0)  # the softmax is really left out
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), wrapped(x).numpy(), atol=1e-6)


def test_class_scores_widen_one_unit_outputs():
    np.testing.assert_array_equal(class_scores(np.array([[2.0], [-1.0]]), "logits"), [[0, 2], [0, -1]])
    np.testing.assert_allclose(class_scores(np.array([0.25, 0.9]), "probabilities"), [[0.75, 0.25], [0.1, 0.9]],
                               atol=1e-6)
    wide = np.ones((3, 4), np.float32)
    assert class_scores(wide, "logits") is not None and class_scores(wide, "logits").shape == (3, 4)


def test_membership_audit_of_a_sigmoid_head_equals_the_audit_of_its_two_class_logits(sigmoid_head, tabular):
    x, y = tabular
    members, nonmembers = (x[:100], y[:100]), (x[300:], y[300:])
    audit = audit_membership(sigmoid_head, members, nonmembers, attacks=FAST)
    z_m, z_n = _pre_sigmoid(sigmoid_head, members[0]), _pre_sigmoid(sigmoid_head, nonmembers[0])
    expected = audit_outputs(np.stack([0 * z_m, z_m], 1), np.stack([0 * z_n, z_n], 1), members[1], nonmembers[1],
                             attacks=FAST)
    assert audit.worst["auc"] == pytest.approx(expected.worst["auc"], abs=1e-6)


def _saturated_model():
    """p = sigmoid(100 (x - 0.5)): at x = 0.9 the float32 sigmoid is exactly 1.0."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, activation="sigmoid")])
    model.set_weights([np.array([[100.0]], np.float32), np.array([-50.0], np.float32)])
    return model


def test_attacks_on_a_saturated_sigmoid_use_the_pre_sigmoid_logit():
    model = _saturated_model()
    x, y = np.array([[0.9]], np.float32), np.array([1])
    assert model(x).numpy()[0, 0] == 1.0  # log of this sigmoid is 0 and has no gradient
    # The margin on the logits [0, z] still has one: PGD takes the full eps step to class 0.
    x_adv = pgd_attack(model, x, y, eps=0.5, steps=10, random_start=False, loss="margin")
    np.testing.assert_allclose(x_adv, [[0.4]], atol=1e-5)
    np.testing.assert_allclose(fgsm_attack(model, x, y, eps=0.5, loss="margin"), [[0.4]], atol=1e-6)
    assert predict_labels(model, x_adv)[0] == 0
    # Cross-entropy on the two-class logits: from z = 10 a 0.3 step crosses the boundary.
    x_mid = np.array([[0.6]], np.float32)
    np.testing.assert_allclose(fgsm_attack(model, x_mid, y, eps=0.3), [[0.3]], atol=1e-6)
    assert adversarial_accuracy(model, x_mid, y, eps=0.3, steps=5) == 0.0
    assert adversarial_accuracy(model, x_mid, y, eps=0.05, steps=5) == 1.0  # 0.55 still gives z = 5


def test_sigmoid_head_exports_with_parity_and_runs_as_two_classes(sigmoid_head, tabular, tmp_path):
    x, y = tabular
    result = to_tflite(sigmoid_head, tmp_path / "bin_int8.tflite", "int8", x[:200], verify=(x[300:], y[300:]),
                       min_agreement=0.97)
    assert result.parity.compared == "probabilities" and result.parity.max_abs_diff < 0.05
    runner = TFLiteModel(tmp_path / "bin_int8.tflite")
    assert runner.output_kind == "probabilities" and runner.num_classes == 2
    keras_labels = (sigmoid_head(x[300:]).numpy()[:, 0] > 0.5).astype(int)
    assert np.mean(runner.predict_labels(x[300:]) == keras_labels) >= 0.97
    assert runner.accuracy(x[300:], y[300:]) == pytest.approx(np.mean(keras_labels == y[300:]), abs=0.02)
    # The file is a black-box target: transfer attacks and audits read it as two classes.
    report = transfer_attack(sigmoid_head, str(tmp_path / "bin_int8.tflite"), x[300:], y[300:], eps=1.0,
                             steps=10, clip=None)
    assert report["target_adv_accuracy"] < report["target_clean_accuracy"]
    audit = audit_membership(str(tmp_path / "bin_int8.tflite"), (x[:100], y[:100]), (x[300:], y[300:]),
                             attacks=FAST)
    assert 0.0 <= audit.worst["auc"] <= 1.0


def _softmax_mlp(x, y):
    tf.random.set_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.Adam(3e-2), "sparse_categorical_crossentropy")
    model.fit(x[:300], y[:300], epochs=10, batch_size=64, verbose=0)
    return model


def test_probability_files_are_audited_as_probabilities(tabular, tmp_path):
    x, y = tabular
    model = _softmax_mlp(x, y)
    members, nonmembers = (x[:100], y[:100]), (x[300:], y[300:])
    keras_audit = audit_membership(model, members, nonmembers, attacks=FAST)
    for mode in ("float32", "int8"):
        path = str(tmp_path / f"m_{mode}.tflite")
        to_tflite(model, path, mode, x[:200])
        assert TFLiteModel(path).output_kind == "probabilities"
        audit = audit_membership(path, members, nonmembers, attacks=FAST)
        assert audit.worst["auc"] == pytest.approx(keras_audit.worst["auc"], abs=0.05 if mode == "int8" else 1e-3)
    # Without the side-car the last op (SOFTMAX) says it.
    os.remove(str(tmp_path / "m_int8.tflite.json"))
    assert TFLiteModel(str(tmp_path / "m_int8.tflite")).output_kind == "probabilities"
    probs = TFLiteModel(str(tmp_path / "m_int8.tflite")).predict(x[:50])
    assert not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)  # why a sum-to-one test would misread it


def test_callables_must_say_what_they_return(tabular):
    x, y = tabular
    probs = lambda batch: np.tile([0.3, 0.7], (len(batch), 1))  # noqa: E731
    with pytest.raises(InputError, match="output='logits'"):
        audit_membership(probs, (x[:50], y[:50]), (x[300:350], y[300:350]), attacks=FAST)
    audit = audit_membership(probs, (x[:50], y[:50]), (x[300:350], y[300:350]), attacks=FAST,
                             output="probabilities")
    assert audit.worst["auc"] == pytest.approx(0.5, abs=0.1)
    with pytest.raises(InputError, match="one output unit"):
        predict_labels(lambda b: np.zeros((len(b), 1)), x[:4])
    np.testing.assert_array_equal(
        predict_labels(lambda b: np.asarray(b)[:, :1], x[:20], output="logits"), (x[:20, 0] > 0).astype(int))


def test_cli_audits_a_float32_probability_file(tabular, tmp_path, capsys):
    x, y = tabular
    model = _softmax_mlp(x, y)
    path = tmp_path / "m_float32.tflite"
    to_tflite(model, path, "float32")
    np.savez(tmp_path / "mem.npz", x=x[:100], y=y[:100])
    np.savez(tmp_path / "non.npz", x=x[300:], y=y[300:])
    common = [f"--model={path}", f"--members={tmp_path / 'mem.npz'}", f"--nonmembers={tmp_path / 'non.npz'}",
              "--attacks=threshold,entropy", f"--out={tmp_path / 'out'}"]
    assert run_cli("audit", *common) == 0
    assert (tmp_path / "out" / "audit.json").is_file()
    assert run_cli("audit", *common, "--output_kind=probabilities") == 0
    assert "worst case" in capsys.readouterr().out

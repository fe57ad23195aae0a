"""Safety-driven self-compression: the restore rule, safety-set checks, the end-to-end pipeline."""

import json
import math

import numpy as np
import pytest
from conftest import clone

from tfsafe._keras import keras
from tfsafe.compress import quantization as q
from tfsafe.errors import InputError
from tfsafe.io import to_jsonable
from tfsafe.methods.self_compress import SafetyMonitor, SelfCompressingModel, self_compress
from tfsafe.models import accuracy
from tfsafe.safety.safety_set import check_safety_indices


def _kill(layer, channels):
    variable = q.quant_variables(layer)["bits"]
    bits = variable.numpy().reshape(-1)
    bits[list(channels)] = 0.0
    variable.assign(bits.reshape(variable.shape))


@pytest.fixture()
def monitored(trained_cnn, digits_splits):
    qmodel = q.quantize_learnable(trained_cnn, init_bits=4)
    for name, channels in (("quant_conv2", range(8)), ("quant_fc1", range(12))):
        _kill(qmodel.get_layer(name), channels)
    x, y = digits_splits.validation
    return qmodel, (x[:50], y[:50])


def test_restore_rule_compares_with_the_best_not_the_previous_check(monitored):
    qmodel, safety = monitored
    monitor = SafetyMonitor(qmodel, safety, threshold=0.05, restore_fraction=0.5, restore_bits=3.0, cooldown=0)
    # A slow drift: never more than 2 points between two checks, 6 points below the best.
    for acc in (0.90, 0.92, 0.90, 0.88):
        assert monitor.check(acc)["restored"] == 0
    record = monitor.check(0.86)
    assert record["best"] == pytest.approx(0.92) and record["drop"] == pytest.approx(0.06)
    assert record["restored"] == math.ceil(0.5 * 20) == 10
    event = monitor.restorations[0]
    assert event["count"] == 10 and len(event["channels"]) == 10
    for item in event["channels"]:
        layer = qmodel.get_layer(item["layer"])
        assert q.channel_bits(layer)[item["channel"]] == 3.0
    assert len(monitor.zero_bit_channels()) == 10
    json.dumps(to_jsonable(monitor.to_dict()))  # the log is JSON-able


def test_monitor_without_restore_or_during_cooldown_only_logs(monitored):
    qmodel, safety = monitored
    logging_only = SafetyMonitor(qmodel, safety, threshold=0.01, restore=False)
    logging_only.check(1.0)
    assert logging_only.check(0.5)["restored"] == 0 and not logging_only.restorations
    monitor = SafetyMonitor(qmodel, safety, threshold=0.01, restore_fraction=0.25, cooldown=1)
    monitor.check(1.0)
    assert monitor.check(0.5)["restored"] == 5  # ceil(0.25 * 20)
    assert monitor.check(0.5)["restored"] == 0  # cooldown
    assert monitor.check(0.5)["restored"] == 4  # ceil(0.25 * 15)
    measured = monitor.check()
    assert measured["safety_accuracy"] == pytest.approx(accuracy(qmodel, *safety))
    with pytest.raises(InputError):
        SafetyMonitor(qmodel, safety, threshold=1.5)


def test_safety_indices_must_come_from_the_given_data():
    np.testing.assert_array_equal(check_safety_indices([3, 1, 2.0], 5), [3, 1, 2])
    for bad, message in (([0, 5], "outside"), ([-1, 2], "outside"), ([1.5], "integer"), ([1, 1], "repeats"),
                         ([], "non-empty"), ([[1, 2]], "1-D")):
        with pytest.raises(InputError, match=message):
            check_safety_indices(bad, 5)


def test_pipeline_rejects_bad_safety_input(trained_cnn, digits_splits):
    x, y = digits_splits.train
    xv, yv = digits_splits.validation
    with pytest.raises(InputError, match="outside"):
        self_compress(trained_cnn, x, y, (xv, yv), safety_indices=[0, len(xv)], epochs=1)
    with pytest.raises(InputError, match="validation_data"):
        self_compress(trained_cnn, x, y, safety_from="validation", epochs=1)
    with pytest.raises(InputError, match="init_bits"):
        self_compress(trained_cnn, x, y, (xv, yv), init_bits=-2, safety_size=10, epochs=1)
    with pytest.raises(InputError, match="gamma"):
        self_compress(trained_cnn, x, y, (xv, yv), gamma=-1.0, epochs=1)


def test_self_compress_end_to_end(trained_cnn, digits_splits):
    x, y = digits_splits.train
    xv, yv = digits_splits.validation
    xt, yt = digits_splits.test
    result = self_compress(
        clone(trained_cnn), x, y, (xv, yv), safety_size=40, init_bits=4, gamma=0.5, safety_weight=1.0,
        epochs=2, batch_size=32, bits_learning_rate=0.15, monitor_every=10, threshold=0.05, seed=0,
    )
    # The safety set is a subset of the validation data it was drawn from.
    assert result.safety_source == "validation" and len(result.safety_indices) == 40
    assert result.safety_indices.max() < len(xv)
    bits = result.history["bits"]
    assert bits[-1] < bits[0] < 4.0  # the size penalty drives the bits down...
    assert result.size["channels_removed"] > 0  # ...until some channels reach zero bits
    stripped = result.stripped
    assert stripped.count_params() < trained_cnn.count_params()
    np.testing.assert_allclose(stripped(xt).numpy(), result.model(xt, training=False).numpy(), atol=1e-4)
    assert accuracy(result.model, xt, yt) > 0.8
    assert result.monitor["history"][0]["step"] == 0 and result.monitor["history"][-1]["step"] == 2 * 19
    json.dumps(to_jsonable(result.to_dict()))


def test_trainer_adds_safety_batches_and_updates_bits(trained_cnn, digits_splits):
    x, y = digits_splits.train
    xv, yv = digits_splits.validation
    qmodel = q.quantize_learnable(trained_cnn, init_bits=4)
    trainer = SelfCompressingModel(qmodel, gamma=0.1, safety_data=(xv[:20], yv[:20]), safety_weight=2.0,
                                   safety_batch_size=8, bits_optimizer=keras.optimizers.Adam(0.05))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = q.channel_bits(qmodel.get_layer("quant_fc1")).copy()
    logs = trainer.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0).history
    assert logs["safety_loss"][0] > 0 and logs["bits"][0] < 4.0
    after = q.channel_bits(qmodel.get_layer("quant_fc1"))
    assert after.mean() < before.mean() - 0.1 and np.mean(after < before) > 0.9  # the bits optimizer ran
    np.testing.assert_allclose(logs["loss"][0], logs["ce"][0] + 0.1 * logs["bits"][0] + 2.0 * logs["safety_loss"][0],
                               rtol=0.05)


def test_max_bits_is_the_ceiling_init_bits_starts_at_it():
    from tfsafe.methods.self_compress import SelfCompress, _initial_bits

    method = SelfCompress(max_bits=4)
    # The config keeps the argument as given (the recipe's null), training starts at the ceiling.
    assert method.get_config()["init_bits"] is None and method.get_config()["max_bits"] == 4
    assert _initial_bits(method.init_bits, method.max_bits) == 4
    assert SelfCompress(max_bits=4, init_bits=2).init_bits == 2
    with pytest.raises(InputError, match=r"init_bits \(8\) must be <= max_bits \(4\)"):
        SelfCompress(max_bits=4, init_bits=8)

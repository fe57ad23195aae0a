"""Shared fixtures: TensorFlow is imported once per process and the small trained models are
built once per session, so the whole suite stays within a few minutes on two cores.

Fixtures that return models hand out the shared instance: tests that train or modify a model
must work on ``clone(model)``.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfsafe  # noqa: E402
from tfsafe._keras import keras, tf  # noqa: E402
from tfsafe.models import small_cnn  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: keep each TensorFlow process on one thread.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def clone(model):
    """A copy of ``model`` with the same weights (for tests that train or modify it)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def run_cli(*args):
    """Run ``tfsafe *args`` in this process (flag parsing included); returns the exit status."""
    import tfsafe_cli

    return tfsafe_cli.main(["tfsafe", *args])


def compile_classifier(model, lr=3e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="session")
def digits():
    """``(x_train, y_train), (x_test, y_test)`` of scikit-learn digits, 8x8x1 in [0, 1]."""
    return tfsafe.load_digits()


@pytest.fixture(scope="session")
def digits_splits(digits):
    """Protocol splits of the whole digits pool (train/validation/nonmembers/test/reference)."""
    (x, y), (xt, yt) = digits
    return tfsafe.membership_split(
        np.concatenate([x, xt]), np.concatenate([y, yt]), seed=0,
        train_size=600, validation_size=200, nonmember_size=400, test_size=400, reference_size=197,
    )


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """A small CNN (logits output) trained on digits to ~95%+ test accuracy. Do not modify."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(small_cnn((8, 8, 1), 10))
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def memorizer():
    """``(model, splits)``: an MLP that has memorized 256 random labels (the members), the
    membership defences' test case (only memorization lowers the members' loss)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 20)).astype("float32")
    y = rng.integers(0, 4, 320)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:256], y[:256], epochs=40, batch_size=64, verbose=0)
    return model, tfsafe.MembershipSplits.from_arrays(train=(x[:256], y[:256]), test=(x[256:], y[256:]),
                                                      validation=(x[256:], y[256:]))


def member_loss(model, splits):
    """Mean cross-entropy of ``model`` (logits) on the members of ``splits``."""
    x, y = splits.train
    return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x)))


@pytest.fixture(scope="session")
def int8_tflite(trained_cnn, digits, tmp_path_factory):
    """``trained_cnn`` exported to a full-integer int8 ``.tflite`` (verified on the digits test
    split): the :class:`tflite_export.ExportResult`; the file is at ``.path``. Do not modify."""
    from tflite_export import to_tflite

    (x, _), (xt, yt) = digits
    path = tmp_path_factory.mktemp("tflite") / "trained_cnn_int8.tflite"
    return to_tflite(trained_cnn, path, "int8", x, verify=(xt, yt))

"""Helpers the benchmark scripts share (imported as ``bench_common``: each script runs with
``benchmarks/`` first on ``sys.path`` and puts the repository root after it)."""

import time

import numpy as np

import tfsafe
from tfsafe._keras import keras, tf

__all__ = ["load_data", "load_lenet_data", "StepTimer", "EpochTimer"]


def load_data(quick, data_dir=None):
    """``(x, y), (x_test, y_test)``: bundled digits with ``quick``, else MNIST from ``data_dir``."""
    return tfsafe.load_digits() if quick else tfsafe.load_mnist(data_dir)


def load_lenet_data(quick, data_dir=None, train_size=None, test_size=None):
    """``(train, test, name)`` for a 28x28 LeNet: MNIST (first ``train_size`` / ``test_size``
    examples), or with ``quick`` the bundled digits resized to 28x28."""
    if quick:
        (x, y), (xt, yt) = tfsafe.load_digits()
        resize = lambda a: tf.image.resize(a, (28, 28)).numpy().clip(0, 1).astype(np.float32)  # noqa: E731
        return (resize(x), y), (resize(xt), yt), "scikit-learn digits resized to 28x28"
    (x, y), (xt, yt) = tfsafe.load_mnist(data_dir)
    return (x[:train_size], y[:train_size]), (xt[:test_size], yt[:test_size]), "MNIST"


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step (batch begin to batch end, so callbacks are excluded).

    Args:
        skip: steps left out of :meth:`median_ms` (the first ones trace the graph), when
            more than twice as many were timed.
    """

    def __init__(self, skip=10):
        super().__init__()
        self.skip, self.times, self._start = skip, [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def median_ms(self):
        times = self.times[self.skip:] if len(self.times) > 2 * self.skip else self.times
        return 1000.0 * float(np.median(times))


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each training epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

"""ATMC's callbacks: the ADMM ``Z`` / ``U`` / ``rho`` update and the best projected checkpoint."""

import numpy as np

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.methods.atmc_model import ATMCModel
from tfsafe.safety.tests import PGDTest, SafetyData, run_selection

__all__ = ["ADMMUpdate", "BestProjectedCheckpoint"]


class ADMMUpdate(keras.callbacks.Callback):
    """Every ``every`` batches: ``Z = quant(theta + U)``, ``U += theta - Z``, ``rho *= rho_growth``.

    Also projects ``theta`` onto the budget and initializes ``Z``, ``U`` when training starts.

    Example:
        >>> atmc.fit(x, y, callbacks=[ADMMUpdate(every=20, rho_growth=1.1)])  # doctest: +SKIP
    """

    def __init__(self, every=50, rho_growth=1.0, rho_max=None):
        super().__init__()
        if int(every) < 1:
            raise InputError(f"every must be >= 1 batch, got {every}.")
        if float(rho_growth) < 1.0:
            raise InputError(f"rho_growth must be >= 1, got {rho_growth}.")
        self.every = int(every)
        self.rho_growth = float(rho_growth)
        self.rho_max = rho_max
        self._seen = 0

    def _atmc(self):
        if not isinstance(self.model, ATMCModel):
            raise InputError("ADMMUpdate works only with an ATMCModel.")
        return self.model

    def on_train_begin(self, logs=None):
        atmc = self._atmc()
        atmc.project()
        atmc.admm_init()

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen % self.every == 0:
            self._atmc().admm_update(self.rho_growth, self.rho_max)


class BestProjectedCheckpoint(keras.callbacks.Callback):
    """At each epoch end, hard-project a copy, score it with the selection tests, keep the best.

    At the end of training the wrapped model holds the best projected weights (so the result
    meets the budget and bit width exactly). ``history`` lists every check.

    The score is :func:`~tfsafe.safety.tests.selection_score` of ``tests`` run on the
    validation data (ties go to the higher clean accuracy, then the earlier epoch). By
    default the one test is PGD accuracy at ``eps`` (CE loss, random start), ATMC's rule.

    Args:
        validation_data: ``(x_val, y_val)`` -- never the test or audit data.
        eps: PGD radius of the default test (the target eps, not the ramped one).
        steps, restarts: PGD settings of the default test.
        every: Check every ``every`` epochs (the last epoch is always checked).
        tests: ``[SafetyTest | (SafetyTest, weight), ...]`` replacing the default test.
        check_start: Also check the model before training (``epoch`` 0), so training that makes
            it worse is undone (ATMC's deploy fine-tune starts from a projected model).
    """

    def __init__(self, validation_data, eps, steps=20, restarts=1, every=1, tests=None, check_start=False):
        super().__init__()
        self.x_val, self.y_val = validation_data
        self.eps = float(eps)
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.every = max(1, int(every))
        if tests is None:
            tests = [PGDTest(self.eps, steps=self.steps, restarts=self.restarts, losses=("ce",))] if eps > 0 else []
        self.tests = [item if isinstance(item, (tuple, list)) else (item, 1.0) for item in tests]
        self.check_start = bool(check_start)
        self.history = []
        self.best = None

    def _key(self, check):
        score = check["score"] if check["score"] is not None else check["val_clean_accuracy"]
        return (score, check["val_clean_accuracy"])

    def on_train_begin(self, logs=None):
        if self.check_start:
            self._check(0, None)

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        self._check(epoch + 1, logs)

    def _check(self, epoch, logs):
        atmc = self.model
        net = atmc.model
        raw = net.get_weights()
        atmc.hard_project()
        data = SafetyData(test=(self.x_val, self.y_val), validation=(self.x_val, self.y_val))
        results, score = run_selection(net, self.tests, data)
        clean = float(np.mean(net.predict(self.x_val, batch_size=512, verbose=0).argmax(axis=1) == self.y_val))
        check = {"epoch": epoch, "score": score, "val_clean_accuracy": clean,
                 "tests": {name: r.get("score") for name, r in results.items()}}
        pgd = [r["accuracy"] for r in results.values() if r["name"].startswith("pgd")]
        if pgd:
            check["val_pgd_accuracy"] = pgd[0]
        self.history.append(check)
        if self.best is None or self._key(check) > self._key(self.best):
            self.best = dict(check, weights=net.get_weights())
        net.set_weights(raw)
        if logs is not None:
            logs["val_projected_score"] = score if score is not None else clean

    def on_train_end(self, logs=None):
        if self.best is not None:
            self.model.model.set_weights(self.best["weights"])
            self.model.hard_project()  # idempotent on projected weights; sets the layers' bits

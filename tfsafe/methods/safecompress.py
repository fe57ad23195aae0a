"""MIA-SafeCompress: test-driven dynamic sparse training against membership inference.

The model is wrapped with :func:`~tfsafe.compress.pruning.prune_safe` (ERK masks at the target
sparsity) and trained with ``Model.fit`` on the members only, with the entropy-regularized
loss ``CE - 0.1 * H(p)``. Every ``update_every`` accepted steps, :class:`CandidateSelection`
runs one *round*:

1. draw ``num_candidates`` candidate masks from the current ones (each a different
   drop-and-regrow draw of :func:`~tfsafe.compress.dynamic_sparsity.drop_and_grow`, dropping a
   cosine-decayed share of the smallest-magnitude weights and regrowing as many at random);
2. train each candidate for ``update_every`` steps from the same starting state (weights,
   masks and optimizer state are restored between candidates);
3. test each: the performance test is validation accuracy; the safety test is a simulated
   membership attacker (:class:`~tfsafe.safety.simulated_attacker.SimulatedAttacker`, a
   Nasr-style network and a loss threshold) trained on members vs. *reference* data, never the
   audit non-members; optional extra safety tests (PGD, corruptions) join the score;
4. keep the candidate with the highest TM-score and continue from its state.

TM-score (higher is better), exactly as implemented in :func:`tm_score`::

    TM = acc_val - w_mia * 2 * max(0, attack_acc - 0.5) + sum_t w_t * score_t

where ``acc_val`` is the validation accuracy, ``attack_acc`` the balanced accuracy of the
stronger simulated attacker on held-out members/reference examples (so
``2 * max(0, attack_acc - 0.5)`` is the attacker's advantage), ``w_mia`` the membership
weight (default 1.0) and ``score_t`` in [0, 1] the score of extra safety test ``t`` (higher =
safer, e.g. PGD accuracy) with weight ``w_t``.

After ``end_fraction`` of the training, rounds stop and the chosen masks are fine-tuned. With
``restore_best`` (default) the final state is tested too, and the state with the highest
TM-score among the round winners and the final state is returned (model selection on
validation and reference data only).
The result is audited with tensorflow-privacy on the untouched audit split
(:meth:`~tfsafe.methods.base.CompressionResult.audit`), stripped to plain Keras layers and exported with
``tflite_export``.

Optionally (``adversarial_weight > 0``) training also uses Nasr et al.'s min-max adversarial
regularization (:class:`AdversarialRegularization`), with the sign that makes the attacker
output "non-member" on members.

Example:
    >>> import tfsafe
    >>> from tfsafe.models import small_cnn
    >>> (x, y), (xt, yt) = tfsafe.load_digits()
    >>> splits = tfsafe.membership_split(x, y, train_size=400, validation_size=150,
    ...                                  nonmember_size=300, test_size=300, reference_size=150)
    >>> method = SafeCompress(target_sparsity=0.9, update_every=20, epochs=10)
    >>> result = method.compress(small_cnn(), splits)  # doctest: +SKIP
    >>> audit = result.audit(splits)  # doctest: +SKIP
    >>> from tflite_export.convert import to_tflite  # doctest: +SKIP
    >>> to_tflite(result.stripped, "model.tflite", "int8", splits.train[0], verify=splits.test)  # doctest: +SKIP
"""

import dataclasses
import json
import os
import time
import warnings

import numpy as np

from tfsafe._keras import keras
from tfsafe.compress.dynamic_sparsity import GROW_MODES, SCOPES
from tfsafe.compress.pruning import prunable_wrappers, prune_safe
from tfsafe.errors import InputError
from tfsafe.io import atomic_path, atomic_write_json, load_model, save_model
from tfsafe.methods.adversarial_regularization import AdversarialRegularization
from tfsafe.methods.base import CompressionMethod, DeployedModel, check_choice, check_int, check_number
from tfsafe.methods.safecompress_selection import (
    AdversarialAccuracyTest,
    CandidateSelection,
    CandidateTests,
    CorruptionTest,
    batches_per_step,
    tm_score,
)
from tfsafe.metrics import model_size
from tfsafe.models import output_kind
from tfsafe.objectives import EntropyRegularizedLoss, RelaxLoss
from tfsafe.safety.simulated_attacker import SimulatedAttacker, SimulatedAttackerTest
from tfsafe.safety.tests import SafetyData, SafetyTest, tests_from_config
from tfsafe.validation import check_fraction, model_num_classes

__all__ = ["SafeCompress", "SafeCompressResult", "safecompress", "tm_score", "CandidateTests", "CandidateSelection",
           "AdversarialRegularization", "AdversarialAccuracyTest", "CorruptionTest"]

GRANULARITIES = ("weight", "channel")


@dataclasses.dataclass
class SafeCompressResult(DeployedModel):
    """What the deprecated :meth:`SafeCompress.fit` returns (``compress`` returns a CompressionResult).

    Attributes:
        model: the trained wrapped model (PrunableSafe layers; masks inside).
        history: the rounds of :class:`CandidateSelection` (JSON-able).
        train_seconds: wall time of the fit.
        config: the SafeCompress settings.
        final: the final state's test results and which state was kept (``restore_best``).
    """

    model: object
    history: list
    train_seconds: float
    config: dict
    final: dict = None

    def to_dict(self):
        return {"config": self.config, "train_seconds": self.train_seconds, "rounds": self.history,
                "final": self.final, "size": model_size(self.model)}


class SafeCompress(CompressionMethod):
    """MIA-SafeCompress (see the module docstring for the loop and the TM-score).

    Stages: ``prune`` (wrap with :func:`~tfsafe.compress.pruning.prune_safe` at the target
    sparsity) and ``train`` (``fit`` with :class:`CandidateSelection`; with a checkpoint
    folder every round is saved too, so a kill mid-stage resumes from the last round).

    Args:
        target_sparsity: fraction of prunable weights that are zero, in [0, 1).
        epochs: epochs of the ``fit`` (a round consumes ``num_candidates`` batches per accepted step).
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        init: per-layer densities, ``"erk"`` (as the paper) or ``"uniform"``.
        mask_init: ``"magnitude"`` (keeps a trained model's largest weights) or ``"random"``.
        num_candidates: K candidate masks per round.
        update_every: accepted steps between rounds (and training steps per candidate).
        drop_fraction: initial share of active weights dropped per round (paper: 0.5),
            cosine-decayed to 0.
        end_fraction: share of the accepted steps during which rounds run; the rest fine-tunes.
        grow: regrowth rule of the drop-and-regrow update, ``"random"`` or ``"gradient"``.
        scope: ranking scope of drop and regrowth, ``"layer"`` or ``"global"``.
        entropy_weight: ``w`` in the loss ``CE - w * H(p)`` (paper: 0.1; 0 for plain CE).
        mia_weight: weight of the simulated attacker's advantage in the TM-score (0 = no attacker).
        tests: extra safety tests for the TM-score, ``[SafetyTest | (SafetyTest, weight), ...]``
            (e.g. ``(PGDTest(0.1, steps=5), 1.0)``); they run on validation data and add
            ``sum_t w_t score_t``.
        adversarial_weight: lambda of Nasr's adversarial regularization (0 = off).
        attack_size: simulated attacker examples per side (members vs. reference).
        attack_epochs: simulated attacker epochs per test (the first test trains 3x as long).
        restore_best: return the state (round winner or final) with the best TM-score.
        granularity: ``"weight"`` (unstructured masks) or ``"channel"`` (whole output channels,
            passed to ``prune_safe``).
        relax_alpha: ``None`` (the loss ``CE - w * H(p)``) or the loss level of
            :class:`~tfsafe.objectives.RelaxLoss` (nats): below it training alternates gradient
            ascent and posterior flattening, so the members' loss stays near non-members'.
        max_accuracy_drop: ``None`` (keep the best TM-score) or keep the safest state (highest
            TM-score) whose validation accuracy is within this fraction of the best state's
            (0.01 = one point): the privacy you get at the accuracy you keep.
        **legacy: ``seed``, ``verbose`` and ``safety_tests`` of the 0.x constructor (deprecated:
            pass ``seed`` / ``verbose`` to :meth:`compress` and the tests as ``tests``).

    Raises:
        InputError: a value outside its range or an unknown choice (one line naming it).
    """

    name = "safecompress"
    stages = ("prune", "train")

    def __init__(self, target_sparsity=0.9, epochs=30, batch_size=32, learning_rate=1e-3, init="erk",
                 mask_init="magnitude", num_candidates=3, update_every=10, drop_fraction=0.5, end_fraction=0.75,
                 grow="random", scope="layer", entropy_weight=0.1, mia_weight=1.0, tests=(), adversarial_weight=0.0,
                 attack_size=200, attack_epochs=5, restore_best=True, granularity="weight", relax_alpha=None,
                 max_accuracy_drop=None, **legacy):
        unknown = sorted(set(legacy) - {"seed", "verbose", "safety_tests"})
        if unknown:
            raise InputError(f"Unknown SafeCompress argument(s): {', '.join(unknown)}.")
        if legacy:
            warnings.warn("SafeCompress(seed=, verbose=, safety_tests=) is deprecated: pass seed and verbose "
                          "to compress() and the tests as tests=.", DeprecationWarning, stacklevel=2)
        self.target_sparsity = check_fraction(target_sparsity, "target_sparsity", 0.0, 1.0)
        self.epochs = check_int(epochs, "epochs")
        self.batch_size = check_int(batch_size, "batch_size")
        self.learning_rate = check_number(learning_rate, "learning_rate", strict=True)
        self.init = check_choice(init, "init", ("erk", "uniform"))
        self.mask_init = check_choice(mask_init, "mask_init", ("magnitude", "random"))
        self.num_candidates = check_int(num_candidates, "num_candidates")
        self.update_every = check_int(update_every, "update_every")
        self.drop_fraction = check_fraction(drop_fraction, "drop_fraction", 0.0, 1.0, include_high=True)
        self.end_fraction = check_fraction(end_fraction, "end_fraction", 0.0, 1.0, include_high=True)
        self.grow = check_choice(grow, "grow", GROW_MODES)
        self.scope = check_choice(scope, "scope", SCOPES)
        self.entropy_weight = check_number(entropy_weight, "entropy_weight")
        self.mia_weight = check_number(mia_weight, "mia_weight")
        self.adversarial_weight = check_number(adversarial_weight, "adversarial_weight")
        self.attack_size = check_int(attack_size, "attack_size", 4)
        self.attack_epochs = check_int(attack_epochs, "attack_epochs")
        self.restore_best = bool(restore_best)
        self.granularity = check_choice(granularity, "granularity", GRANULARITIES)
        self.relax_alpha = None if relax_alpha is None else check_number(relax_alpha, "relax_alpha", strict=True)
        self.max_accuracy_drop = (None if max_accuracy_drop is None
                                  else check_fraction(max_accuracy_drop, "max_accuracy_drop", 0.0, 1.0, True))
        self._tests = self._pairs(list(tests_from_config(tests)) + list(legacy.get("safety_tests", ())))
        self.tests = [pair for pair in self._tests if isinstance(pair[0], SafetyTest)]
        self._seed, self._verbose = legacy.get("seed"), legacy.get("verbose")

    def _pairs(self, tests):
        pairs = []
        for item in tests:
            test, weight = item if isinstance(item, (tuple, list)) else (item, 1.0)
            if isinstance(test, SafetyTest):
                pairs.extend(self._selection_tests([(test, weight)]))
            elif hasattr(test, "score") and hasattr(test, "name"):  # 0.x tests with score(model)
                pairs.append((test, check_number(weight, f"the weight of test {test.name}")))
            else:
                raise InputError("tests (safety_tests in 0.x) must be SafetyTest objects or (test, weight) pairs "
                                 f"with test.name and test.score(model); got {type(test).__name__}.")
        return pairs

    @property
    def config(self):
        """The settings as a dict (the 0.x name of :meth:`get_config`)."""
        return self.get_config()

    # -- stages -------------------------------------------------------------------------------

    def _stage_prune(self, run):
        model = run.models["input"]
        if not prunable_wrappers(model):
            options = {} if self.granularity == "weight" else {"granularity": self.granularity}
            model = prune_safe(model, self.target_sparsity, init=self.init, mask_init=self.mask_init,
                               seed=run.seed, **options)
        run.models["model"] = model
        run.state["info"]["target_sparsity"] = self.target_sparsity

    def _end_step(self, total_batches):
        return int(total_batches * self.end_fraction / batches_per_step(self.num_candidates, self.end_fraction))

    def _stage_train(self, run):
        x, y = run.train
        validation, reference = run.selection_data, run.reference
        model = run.models["model"]
        rounds_dir = run.stage_dir("train")
        history, initial_epoch, attacker_state, initial_step = [], 0, None, None
        steps_per_epoch = int(np.ceil(len(x) / self.batch_size))
        resuming = bool(run.resume and rounds_dir and os.path.exists(os.path.join(rounds_dir, "rounds.json")))
        if resuming:
            model, saved, attacker_state = _load_rounds(rounds_dir)
            history, initial_step = saved["history"], saved["step"]
            initial_epoch = saved["batches"] // steps_per_epoch
        attacker = None
        if self.mia_weight > 0:
            simulated = SimulatedAttacker(model_num_classes(model), (x, y), reference, size=self.attack_size,
                                          epochs=self.attack_epochs, seed=run.seed)
            simulated.set_state(attacker_state)
            attacker = SimulatedAttackerTest(self.attack_size, self.attack_epochs, run.seed, attacker=simulated)
        data = SafetyData(test=validation, validation=validation, members=(x, y), nonmembers=reference)
        tests = CandidateTests(validation, attacker, self.mia_weight, self._tests, data=data)
        trained = model
        if self.adversarial_weight > 0:
            trained = AdversarialRegularization(model, reference, self.adversarial_weight)
        if trained.optimizer is None or trained is not model or not resuming:
            from_logits = output_kind(model) == "logits"
            loss = (EntropyRegularizedLoss(self.entropy_weight, from_logits=from_logits) if self.relax_alpha is None
                    else RelaxLoss(self.relax_alpha, entropy_weight=self.entropy_weight, from_logits=from_logits))
            trained.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss=loss, metrics=["accuracy"])
        checkpoint = _round_saver(rounds_dir, attacker) if rounds_dir else None
        selection = CandidateSelection(
            tests, num_candidates=self.num_candidates, update_every=self.update_every,
            drop_fraction=self.drop_fraction, end_fraction=self.end_fraction, grow=self.grow, scope=self.scope,
            grad_data=(x[:256], y[:256]), checkpoint=checkpoint, seed=run.seed,
            end_step=self._end_step(steps_per_epoch * self.epochs), target_model=model, initial_step=initial_step,
            restore_best=self.restore_best, max_accuracy_drop=self.max_accuracy_drop, verbose=int(run.verbose > 0))
        selection.history = list(history)
        selection.batches = initial_epoch * steps_per_epoch
        start = time.perf_counter()
        trained.fit(x, y, epochs=self.epochs, initial_epoch=initial_epoch, batch_size=self.batch_size,
                    callbacks=[selection, *run.callbacks], verbose=0)
        run.models["model"] = model
        kept = (selection.final or {}).get("kept", "final")
        run.state["history"]["train"] = selection.history
        run.state["info"].update(rounds=len(selection.history), train_seconds=time.perf_counter() - start,
                                 final=selection.final)
        run.state["selection"] = {
            "score": "tm_score = val_accuracy - mia_weight * attacker advantage + sum_t w_t score_t",
            "tests": [{"name": "val_accuracy", "weight": 1.0}]
            + ([{"name": "simulated_attacker", "weight": self.mia_weight}] if attacker else [])
            + [{"name": t.name, "weight": w} for t, w in self._tests],
            "checks": [{"round": r["round"], "selected": r["selected"],
                        "tm_score": r["candidates"][r["selected"]]["tm_score"]} for r in selection.history],
            "kept": kept, "early": kept != "final",
            **_kept_steps(kept, selection),
        }

    # -- the 0.x API ----------------------------------------------------------------------------

    def fit(self, model, splits, epochs=None, batch_size=None, callbacks=(), checkpoint_dir=None, resume=False):
        """Deprecated: ``compress`` with the 0.x arguments; returns a :class:`SafeCompressResult`."""
        warnings.warn("SafeCompress.fit is deprecated; use SafeCompress(epochs=, batch_size=).compress(model, "
                      "splits).", DeprecationWarning, stacklevel=2)
        method = type(self).from_config({**self.get_config(), "tests": (),
                                         "epochs": self.epochs if epochs is None else epochs,
                                         "batch_size": self.batch_size if batch_size is None else batch_size})
        method._tests, method.tests = self._tests, self.tests
        seed = 0 if self._seed is None else int(self._seed)
        result = method.compress(model, splits, callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=resume,
                                 seed=seed, verbose=int(self._verbose or 0))
        config = {k: v for k, v in result.config.items() if k != "tests"}
        config.update(seed=seed, safety_tests=[[t.name, float(w)] for t, w in self._tests])
        return SafeCompressResult(model=result.model, history=result.history.get("train", []),
                                  train_seconds=result.info["train_seconds"], config=config,
                                  final=result.info.get("final"))


def _round_saver(directory, attacker):
    def save(callback):
        target = callback.target_model if callback.target_model is not None else callback.model
        save_model(target, os.path.join(directory, "rounds_model.keras"))
        state = attacker.attacker.get_state() if attacker is not None else None
        if state is not None:
            with atomic_path(os.path.join(directory, "attacker.npz")) as tmp:
                np.savez(tmp, *state)
        atomic_write_json(os.path.join(directory, "rounds.json"),
                          {"batches": callback.batches, "step": callback.step, "history": callback.history})
    return save


def _load_rounds(directory):
    with open(os.path.join(directory, "rounds.json"), encoding="utf-8") as f:
        saved = json.load(f)
    model = load_model(os.path.join(directory, "rounds_model.keras"), compile=True)
    attacker_state = None
    path = os.path.join(directory, "attacker.npz")
    if os.path.exists(path):
        with np.load(path) as data:
            attacker_state = [data[f"arr_{i}"] for i in range(len(data.files))]
    return model, saved, attacker_state


def safecompress(model, splits, target_sparsity=0.9, epochs=20, batch_size=64, **kwargs):
    """Deprecated: ``SafeCompress(target_sparsity, **kwargs).fit(model, splits, epochs, batch_size)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        method = SafeCompress(target_sparsity=target_sparsity, **kwargs)
    return method.fit(model, splits, epochs=epochs, batch_size=batch_size)


def _kept_steps(kept, selection):
    """How far training had gone in the kept state: ``kept_round``, ``kept_step``, ``total_steps``,
    ``early_state`` and a one-line ``note``, so an early state is said, not hidden.

    ``kept_step`` counts the accepted training steps that led to the kept state (a round's
    winner after its trial steps); an early-stopped TF-MOT run with ``max_steps=kept_step`` is
    the comparison that tells the gain from selection apart from the gain from stopping early.
    """
    total = int(selection.step)
    floor = (selection.final or {}).get("accuracy_floor")
    bound = {} if floor is None else {"accuracy_floor": floor}
    among = "" if floor is None else f", the safest state with validation accuracy >= {floor:.3f} (max_accuracy_drop)"
    if kept == "final":
        return {**bound, "kept_round": None, "kept_step": total, "total_steps": total, "early_state": False,
                "note": f"kept the final state ({total} training steps){among}"}
    r = selection.history[int(kept)]
    step = int(r["step"] + r["candidates"][r["selected"]]["trial_steps"])
    return {**bound, "kept_round": int(kept), "kept_step": step, "total_steps": total, "early_state": True,
            "note": f"kept round {kept}'s winner, an early state after {step} of {total} training steps{among}"}


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
(:meth:`SafeCompressResult.audit`), stripped to plain Keras layers and exported with
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
    >>> result = SafeCompress(target_sparsity=0.9, update_every=20).fit(  # doctest: +SKIP
    ...     small_cnn(), splits, epochs=10)
    >>> audit = result.audit(splits)  # doctest: +SKIP
    >>> from tflite_export.convert import to_tflite  # doctest: +SKIP
    >>> to_tflite(result.stripped, "model.tflite", "int8", splits.train[0], verify=splits.test)  # doctest: +SKIP
"""

import dataclasses
import json
import os
import time

import numpy as np

from tfsafe._keras import keras, tf
from tfsafe.compress.dynamic_sparsity import (
    GROW_MODES,
    SCOPES,
    cosine_fraction,
    dense_gradients,
    drop_and_grow,
    read_masks,
    read_weights,
    write_masks,
)
from tfsafe.compress.pruning import DENSITY_INITS, prunable_wrappers, prune_safe
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError
from tfsafe.io import atomic_path, atomic_write_json, save_model
from tfsafe.models import accuracy, logits_model
from tfsafe.objectives import EntropyRegularizedLoss, adversarial_regularization, membership_attack_loss
from tfsafe.safety.simulated_attacker import SimulatedAttacker, attack_features, nasr_attacker
from tfsafe.validation import check_fraction, check_model, check_xy, model_num_classes

__all__ = ["tm_score", "CandidateTests", "CandidateSelection", "AdversarialRegularization",
           "AdversarialAccuracyTest", "CorruptionTest", "SafeCompress", "SafeCompressResult", "safecompress"]


def tm_score(val_accuracy, attack_accuracy, mia_weight=1.0, safety_scores=None, safety_weights=None):
    """``val_accuracy - mia_weight * 2 * max(0, attack_accuracy - 0.5) + sum_t w_t * score_t``.

    Args:
        val_accuracy: validation accuracy of the candidate (performance test).
        attack_accuracy: balanced accuracy of the simulated membership attacker (0.5 = chance).
        mia_weight: weight of the attacker's advantage.
        safety_scores: ``{name: score}`` of extra safety tests, each in [0, 1], higher = safer.
        safety_weights: ``{name: weight}`` for those tests.

    Example:
        >>> round(tm_score(0.9, 0.6), 3)
        0.7
    """
    score = float(val_accuracy) - float(mia_weight) * 2.0 * max(0.0, float(attack_accuracy) - 0.5)
    for name, value in (safety_scores or {}).items():
        score += float((safety_weights or {}).get(name, 1.0)) * float(value)
    return score


class AdversarialAccuracyTest:
    """Safety test: PGD accuracy (``score`` in [0, 1]) on a small validation batch.

    Uses :func:`tfsafe.safety.robust_accuracy.adversarial_accuracy` (random start).
    """

    def __init__(self, x, y, eps, steps=10, restarts=1, name="pgd_accuracy"):
        self.x, self.y, self.eps, self.steps, self.restarts, self.name = x, y, eps, steps, restarts, name

    def score(self, model):
        from tfsafe.safety.robust_accuracy import adversarial_accuracy  # noqa: PLC0415

        return adversarial_accuracy(model, self.x, self.y, self.eps, steps=self.steps, restarts=self.restarts)


class CorruptionTest:
    """Safety test: mean accuracy under natural corruptions (``score`` in [0, 1])."""

    def __init__(self, x, y, severities=(3,), corruptions=None, name="corruption_accuracy"):
        self.x, self.y, self.severities, self.corruptions, self.name = x, y, severities, corruptions, name

    def score(self, model):
        from tfsafe.safety.corruptions import corruption_accuracy  # noqa: PLC0415

        return corruption_accuracy(model, self.x, self.y, severities=self.severities,
                                   corruptions=self.corruptions)["mean_accuracy"]


class CandidateTests:
    """The performance test and the safety tests of one candidate, and its TM-score.

    Args:
        validation: ``(x, y)`` for the performance test (validation accuracy).
        attacker: a :class:`SimulatedAttacker` (the membership safety test), or ``None``.
        mia_weight: ``w_mia`` of :func:`tm_score`.
        safety_tests: ``[(test, weight), ...]``; each test has ``name`` and ``score(model)``.
    """

    def __init__(self, validation, attacker=None, mia_weight=1.0, safety_tests=()):
        self.validation = validation
        self.attacker = attacker
        self.mia_weight = float(mia_weight)
        self.safety_tests = list(safety_tests)

    def __call__(self, model):
        result = {"val_accuracy": accuracy(model, *self.validation)}
        attack_accuracy = 0.5
        if self.attacker is not None:
            result.update(self.attacker.attack(model))
            attack_accuracy = result["attack_accuracy"]
        scores = {test.name: float(test.score(model)) for test, _ in self.safety_tests}
        weights = {test.name: float(weight) for test, weight in self.safety_tests}
        if scores:
            result["safety"] = scores
        result["tm_score"] = tm_score(result["val_accuracy"], attack_accuracy, self.mia_weight, scores, weights)
        return result

    def accept(self, index):
        if self.attacker is not None:
            self.attacker.accept(index)


def _snapshot(model):
    optimizer = model.optimizer
    return ([v.numpy() for v in model.variables],
            [v.numpy() for v in optimizer.variables] if optimizer is not None else [])


def _restore(model, state):
    for variable, value in zip(model.variables, state[0]):
        variable.assign(value)
    if model.optimizer is not None:
        for variable, value in zip(model.optimizer.variables, state[1]):
            variable.assign(value)


class CandidateSelection(keras.callbacks.Callback):
    """Keras callback: test-driven dynamic sparsity (the SafeCompress loop).

    Every ``update_every`` accepted steps (until ``end_step``) it opens a round: it draws
    ``num_candidates`` drop-and-regrow masks, trains each for ``update_every`` steps of the
    running ``fit`` from the same saved state (weights, masks, optimizer), scores each with
    ``tests(model)`` (a dict with ``tm_score``), and restores the best one's state. A round
    therefore consumes ``num_candidates * update_every`` batches of the fit.

    Args:
        tests: callable ``model -> dict`` with ``"tm_score"``; if it has ``accept(index)``,
            that is called with the chosen candidate (e.g. to keep its attacker).
        num_candidates: K.
        update_every: accepted steps between rounds, and training steps per candidate.
        drop_fraction: initial share of active weights dropped (cosine-decayed to 0 at end_step).
        end_step: last accepted step that may open a round; default ``end_fraction`` of the
            fit's accepted steps.
        grow, scope: see :func:`~tfsafe.compress.dynamic_sparsity.drop_and_grow`.
        grad_data: ``(x, y)`` for ``grow="gradient"``.
        checkpoint: optional callable ``(callback) -> None`` run after each round.
        target_model: the model to test (default: the model being fit), e.g. the classifier
            inside a training wrapper.
        restore_best: at the end of ``fit``, also test the final state and keep whichever of it
            and the round winners has the highest TM-score (model selection on validation and
            reference data only).
        initial_step: accepted steps already done (resume); default the optimizer's iterations.
        seed: seeds the candidate draws.

    Attributes:
        history: one JSON-able dict per round: ``step``, ``drop_fraction``, ``candidates`` (the
            test results of each), ``selected`` (index), ``changed`` (weights regrown).
        final: with ``restore_best``: the final state's test results and which round's winner
            (or ``"final"``) was kept.
    """

    def __init__(self, tests, num_candidates=3, update_every=50, drop_fraction=0.5, end_step=None,
                 end_fraction=0.75, grow="random", scope="layer", grad_data=None, checkpoint=None,
                 target_model=None, initial_step=None, restore_best=True, seed=0, verbose=0):
        super().__init__()
        if int(num_candidates) < 1:
            raise InputError(f"num_candidates must be >= 1, got {num_candidates}.")
        if int(update_every) < 1:
            raise InputError(f"update_every must be >= 1, got {update_every}.")
        if grow not in GROW_MODES or scope not in SCOPES:
            raise InputError(f"grow must be one of {GROW_MODES} and scope one of {SCOPES}.")
        if grow == "gradient" and grad_data is None:
            raise InputError("grow='gradient' needs grad_data=(x, y).")
        self.tests = tests
        self.num_candidates, self.update_every = int(num_candidates), int(update_every)
        self.drop_fraction = check_fraction(drop_fraction, "drop_fraction", 0.0, 1.0, include_high=True)
        self.end_step, self.end_fraction = end_step, check_fraction(end_fraction, "end_fraction", 0, 1, True)
        self.grow, self.scope, self.grad_data = grow, scope, grad_data
        self.checkpoint, self.seed, self.verbose = checkpoint, seed, verbose
        self.target_model, self.initial_step, self.restore_best = target_model, initial_step, restore_best
        self.final = None
        self._best = None
        self.history = []
        self.batches = 0
        self._round = None

    def on_train_begin(self, logs=None):
        self.wrappers = prunable_wrappers(self.model)
        if not self.wrappers:
            raise InputError("CandidateSelection needs a model wrapped with prune_safe().")
        self.step = (int(self.initial_step) if self.initial_step is not None
                     else int(self.model.optimizer.iterations.numpy()))
        self._end = self.end_step
        if self._end is None:
            steps, epochs = self.params.get("steps"), self.params.get("epochs")
            if not steps:
                raise InputError("CandidateSelection cannot tell how many steps this fit has; pass end_step.")
            total = steps * epochs
            # Rounds cost K * update_every batches for update_every accepted steps.
            k, f = self.num_candidates, self.end_fraction
            self._end = self.step + int(total * f / (k * f + (1.0 - f)))

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self._round is None:
            self.step += 1
            self._maybe_open_round()
        else:
            self._round["trial_steps"] += 1
            if self._round["trial_steps"] >= self.update_every:
                self._finish_candidate()

    def on_train_end(self, logs=None):
        if self._round is not None:  # the fit ended mid-round: test what was trained and choose
            self._finish_candidate(final=True)
        if self.restore_best and self._best is not None:
            result = dict(self.tests(self._target()))
            if hasattr(self.tests, "accept"):
                self.tests.accept(-1)
            kept = "final"
            if self._best[0] > result["tm_score"]:
                _restore(self.model, self._best[1])
                kept = self._best[2]
            self.final = {"step": self.step, "final": result, "kept": kept, "best_round_tm": self._best[0]}
        for layer in self.wrappers:
            layer.apply_masks()

    def _target(self):
        return self.target_model if self.target_model is not None else self.model

    def _maybe_open_round(self):
        if self.step % self.update_every == 0 and self.step < self._end:
            self._open_round()

    def _candidate_masks(self, fraction):
        weights, masks = read_weights(self.wrappers), read_masks(self.wrappers)
        grads = dense_gradients(self.model, *self.grad_data, self.wrappers) if self.grow == "gradient" else None
        return [drop_and_grow(weights, masks, fraction, np.random.default_rng([self.seed, self.step, k]),
                              grads=grads, grow=self.grow, scope=self.scope)
                for k in range(self.num_candidates)]

    def _open_round(self):
        fraction = cosine_fraction(self.step, self.drop_fraction, self._end)
        before = read_masks(self.wrappers)
        candidates = self._candidate_masks(fraction)
        changed = [int(sum(np.sum((b > 0) & (c == 0)) for b, c in zip(before, cand))) for cand in candidates]
        self._round = {"start": _snapshot(self.model), "masks": candidates, "fraction": fraction,
                       "changed": changed, "k": 0, "trial_steps": 0, "results": [], "ends": []}
        write_masks(self.wrappers, candidates[0])

    def _finish_candidate(self, final=False):
        r = self._round
        result = dict(self.tests(self._target()))
        result.update(index=r["k"], trial_steps=r["trial_steps"], changed=r["changed"][r["k"]])
        r["results"].append(result)
        r["ends"].append(_snapshot(self.model))
        if not final and r["k"] + 1 < self.num_candidates:
            r["k"] += 1
            r["trial_steps"] = 0
            _restore(self.model, r["start"])
            write_masks(self.wrappers, r["masks"][r["k"]])
            return
        scores = [res["tm_score"] for res in r["results"]]
        best = int(np.argmax(scores))  # ties go to the earliest candidate
        _restore(self.model, r["ends"][best])
        if self.restore_best and (self._best is None or scores[best] > self._best[0]):
            self._best = (scores[best], r["ends"][best], len(self.history))
        if hasattr(self.tests, "accept"):
            self.tests.accept(best)
        self.step += r["results"][best]["trial_steps"]
        self.history.append({"round": len(self.history), "step": self.step - r["results"][best]["trial_steps"],
                             "drop_fraction": r["fraction"], "selected": best, "candidates": r["results"]})
        self._round = None
        if self.verbose:
            chosen = r["results"][best]
            print(f"SafeCompress round {len(self.history)}: candidate {best} "
                  f"(val acc {chosen['val_accuracy']:.3f}, TM {chosen['tm_score']:.3f})")
        if self.checkpoint is not None:
            self.checkpoint(self)
        if not final:
            self._maybe_open_round()


class AdversarialRegularization(keras.Model):
    """Nasr et al.'s min-max training as a Keras model (train with ``compile`` + ``fit``).

    Each ``train_step`` first trains the attacker to tell the batch's members from a random
    batch of reference data (:func:`~tfsafe.objectives.membership_attack_loss`), then trains
    the classifier on ``task loss + adversarial_regularization(attacker(members))``: the
    classifier is pushed to make the attacker say "non-member" on its own training examples.

    Args:
        classifier: the model being trained (logits or softmax output).
        reference: ``(x, y)`` non-members the attacker trains against (not the audit set).
        adversarial_weight: lambda.
        attacker: the attacker network (default :func:`nasr_attacker`).
        attacker_learning_rate: Adam learning rate of the attacker.
    """

    def __init__(self, classifier, reference, adversarial_weight=1.0, attacker=None, attacker_learning_rate=1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.num_classes = model_num_classes(classifier)
        self.attacker = attacker if attacker is not None else nasr_attacker(self.num_classes)
        self.adversarial_weight = float(adversarial_weight)
        self.reference_x = tf.constant(np.asarray(reference[0], np.float32))
        self.reference_y = tf.constant(np.asarray(reference[1]).reshape(-1).astype(np.int32))
        self.attacker_optimizer = keras.optimizers.Adam(attacker_learning_rate)
        self._logits = logits_model(classifier)

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def _scores(self, logits, labels):
        return self.attacker([attack_features(logits), tf.one_hot(labels, self.num_classes)])

    def train_step(self, data):
        x, y = data[0], tf.cast(tf.reshape(data[1], [-1]), tf.int32)
        idx = tf.random.uniform([tf.shape(x)[0]], 0, tf.shape(self.reference_x)[0], tf.int32)
        xr, yr = tf.gather(self.reference_x, idx), tf.gather(self.reference_y, idx)
        member_logits = self._logits(x, training=False)
        reference_logits = self._logits(xr, training=False)
        with tf.GradientTape() as tape:
            attack_loss = membership_attack_loss(self._scores(member_logits, y), self._scores(reference_logits, yr))
        grads = tape.gradient(attack_loss, self.attacker.trainable_variables)
        self.attacker_optimizer.apply_gradients(zip(grads, self.attacker.trainable_variables))
        with tf.GradientTape() as tape:
            logits = self._logits(x, training=True)
            task = self.compiled_loss(y, logits, regularization_losses=self.classifier.losses)
            privacy = adversarial_regularization(self._scores(logits, y), self.adversarial_weight)
            loss = task + privacy
        variables = self.classifier.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.compiled_metrics.update_state(y, logits)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update(attack_loss=attack_loss, privacy_loss=privacy)
        return logs


@dataclasses.dataclass
class SafeCompressResult:
    """What :meth:`SafeCompress.fit` returns.

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

    @property
    def stripped(self):
        """Plain Keras model with the zeros baked in (what gets exported)."""
        if not hasattr(self, "_stripped"):
            self._stripped = strip(self.model)
        return self._stripped

    def audit(self, splits, size=None, attacks=None, seed=0):
        """tensorflow-privacy audit on ``splits.audit_sets()``: members vs. the untouched audit non-members."""
        from tfsafe.safety.membership import audit_membership  # noqa: PLC0415

        members, nonmembers = splits.audit_sets(size=size, seed=seed)
        return audit_membership(self.stripped, members, nonmembers, attacks=attacks, seed=seed)

    def to_dict(self):
        from tfsafe.metrics import model_size  # noqa: PLC0415

        return {"config": self.config, "train_seconds": self.train_seconds, "rounds": self.history,
                "final": self.final, "size": model_size(self.model)}


class SafeCompress:
    """MIA-SafeCompress (see the module docstring for the loop and the TM-score).

    Args:
        target_sparsity: fraction of prunable weights that are zero, in [0, 1).
        init: per-layer densities, ``"erk"`` (default, as the paper) or ``"uniform"``.
        mask_init: ``"magnitude"`` (keeps a trained model's largest weights) or ``"random"``.
        num_candidates: K candidate masks per round.
        update_every: accepted steps between rounds (and training steps per candidate).
        drop_fraction: initial drop share (paper: 0.5), cosine-decayed.
        end_fraction: share of the accepted steps during which rounds run.
        grow, scope: regrowth rule and ranking scope of the drop-and-regrow update.
        entropy_weight: ``w`` in ``CE - w * H(p)`` (paper: 0.1; 0 for plain CE).
        mia_weight: weight of the simulated attacker's advantage in the TM-score.
        safety_tests: extra ``[(test, weight), ...]`` with ``test.name`` and ``test.score(model)``.
        adversarial_weight: lambda of Nasr's adversarial regularization (0 = off).
        attack_size, attack_epochs: simulated attacker examples per side and epochs per test.
        learning_rate: Adam learning rate.
        restore_best: return the state (round winner or final) with the best TM-score.
        seed: seeds masks, candidate draws and the attacker.
        verbose: print one line per round.
    """

    def __init__(self, target_sparsity=0.9, init="erk", mask_init="magnitude", num_candidates=3, update_every=50,
                 drop_fraction=0.5, end_fraction=0.75, grow="random", scope="layer", entropy_weight=0.1,
                 mia_weight=1.0, safety_tests=(), adversarial_weight=0.0, attack_size=500, attack_epochs=5,
                 learning_rate=1e-3, restore_best=True, seed=0, verbose=0):
        self.target_sparsity = check_fraction(target_sparsity, "target_sparsity", 0.0, 1.0)
        if init not in ("erk", "uniform"):
            raise InputError(f"init must be 'erk' or 'uniform' for SafeCompress, got {init!r} "
                             f"(prune_safe also accepts {DENSITY_INITS}).")
        if float(entropy_weight) < 0 or float(mia_weight) < 0 or float(adversarial_weight) < 0:
            raise InputError("entropy_weight, mia_weight and adversarial_weight must be >= 0.")
        for item in safety_tests:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and hasattr(item[0], "score")):
                raise InputError("safety_tests must be (test, weight) pairs where test has name and score(model).")
        self.config = {
            "target_sparsity": self.target_sparsity, "init": init, "mask_init": mask_init,
            "num_candidates": int(num_candidates), "update_every": int(update_every),
            "drop_fraction": float(drop_fraction), "end_fraction": float(end_fraction), "grow": grow,
            "scope": scope, "entropy_weight": float(entropy_weight), "mia_weight": float(mia_weight),
            "adversarial_weight": float(adversarial_weight), "attack_size": int(attack_size),
            "attack_epochs": int(attack_epochs), "learning_rate": float(learning_rate),
            "restore_best": bool(restore_best), "seed": int(seed),
            "safety_tests": [[t.name, float(w)] for t, w in safety_tests],
        }
        self.safety_tests = list(safety_tests)
        self.verbose = verbose

    def _end_step(self, total_batches):
        # A round spends K * update_every batches on update_every accepted steps.
        k, f = self.config["num_candidates"], self.config["end_fraction"]
        return int(total_batches * f / (k * f + (1.0 - f)))

    def _reference(self, splits):
        reference = getattr(splits, "reference", None)
        if reference is None or len(reference[0]) == 0:
            # Validation data is also never audited, so the attacker may use it.
            reference = splits.validation
        return reference

    def _checkpointer(self, directory, attacker):
        def save(callback):
            target = callback.target_model if callback.target_model is not None else callback.model
            save_model(target, os.path.join(directory, "model.keras"))
            state = attacker.get_state() if attacker is not None else None
            if state is not None:
                with atomic_path(os.path.join(directory, "attacker.npz")) as tmp:
                    np.savez(tmp, *state)
            atomic_write_json(os.path.join(directory, "state.json"), {
                "batches": callback.batches, "step": callback.step, "config": self.config,
                "history": callback.history,
            })
        return save

    def _resume(self, directory):
        from tfsafe.io import load_model  # noqa: PLC0415

        with open(os.path.join(directory, "state.json")) as f:
            state = json.load(f)
        model = load_model(os.path.join(directory, "model.keras"), compile=True)
        attacker_path = os.path.join(directory, "attacker.npz")
        attacker_state = None
        if os.path.exists(attacker_path):
            with np.load(attacker_path) as data:
                attacker_state = [data[f"arr_{i}"] for i in range(len(data.files))]
        return model, state, attacker_state

    def fit(self, model, splits, epochs=20, batch_size=64, callbacks=(), checkpoint_dir=None, resume=False):
        """Compress ``model`` on ``splits`` (a :class:`~tfsafe.data.MembershipSplits`).

        Trains on ``splits.train`` only; the performance test uses ``splits.validation``; the
        simulated attacker uses members from ``splits.train`` and ``splits.reference`` (or
        ``splits.validation`` when there is no reference split). ``splits.nonmembers`` and
        ``splits.test`` are never touched.

        Args:
            model: dense Keras model (logits or softmax output) or, to continue, a model
                already wrapped by ``prune_safe``.
            splits: the protocol splits.
            epochs: epochs of the ``fit`` (rounds consume K batches per accepted step).
            batch_size: training batch size.
            callbacks: more Keras callbacks.
            checkpoint_dir: after every round, save ``model.keras`` (with optimizer state),
                ``attacker.npz`` and ``state.json`` (history, step) there, atomically.
            resume: continue from ``checkpoint_dir`` if it holds a checkpoint.

        Returns:
            A :class:`SafeCompressResult`.
        """
        cfg = self.config
        model = check_model(model)
        x, y = check_xy(model, *splits.train, name="train")
        validation = check_xy(model, *splits.validation, name="validation")
        reference = check_xy(model, *self._reference(splits), name="reference")
        history, initial_epoch, attacker_state, initial_step = [], 0, None, None
        steps_per_epoch = int(np.ceil(len(x) / batch_size))
        resuming = bool(resume and checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "state.json")))
        if resuming:
            model, state, attacker_state = self._resume(checkpoint_dir)
            history, initial_epoch, initial_step = state["history"], state["batches"] // steps_per_epoch, state["step"]
        elif not prunable_wrappers(model):
            keras.utils.set_random_seed(cfg["seed"])
            model = prune_safe(model, cfg["target_sparsity"], init=cfg["init"], mask_init=cfg["mask_init"],
                               seed=cfg["seed"])
        attacker = None
        if cfg["mia_weight"] > 0:
            attacker = SimulatedAttacker(model_num_classes(model), (x, y), reference, size=cfg["attack_size"],
                                         epochs=cfg["attack_epochs"], seed=cfg["seed"])
            attacker.set_state(attacker_state)
        tests = CandidateTests(validation, attacker, cfg["mia_weight"], self.safety_tests)
        trained = model
        if cfg["adversarial_weight"] > 0:
            trained = AdversarialRegularization(model, reference, cfg["adversarial_weight"])
        if trained.optimizer is None or trained is not model or not resuming:
            trained.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                            loss=EntropyRegularizedLoss(cfg["entropy_weight"]), metrics=["accuracy"])
        checkpoint = self._checkpointer(checkpoint_dir, attacker) if checkpoint_dir else None
        selection = CandidateSelection(
            tests, num_candidates=cfg["num_candidates"], update_every=cfg["update_every"],
            drop_fraction=cfg["drop_fraction"], end_fraction=cfg["end_fraction"], grow=cfg["grow"],
            scope=cfg["scope"], grad_data=(x[:256], y[:256]), checkpoint=checkpoint, seed=cfg["seed"],
            end_step=self._end_step(steps_per_epoch * epochs), target_model=model, initial_step=initial_step,
            restore_best=cfg["restore_best"], verbose=self.verbose,
        )
        selection.history = list(history)
        selection.batches = initial_epoch * steps_per_epoch
        start = time.perf_counter()
        trained.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
                    callbacks=[selection, *callbacks], verbose=0)
        seconds = time.perf_counter() - start
        if checkpoint is not None:
            checkpoint(selection)
        return SafeCompressResult(model=model, history=selection.history, train_seconds=seconds, config=dict(cfg),
                                  final=selection.final)


def safecompress(model, splits, target_sparsity=0.9, epochs=20, batch_size=64, **kwargs):
    """Functional form: ``SafeCompress(target_sparsity, **kwargs).fit(model, splits, epochs, batch_size)``."""
    return SafeCompress(target_sparsity=target_sparsity, **kwargs).fit(model, splits, epochs=epochs,
                                                                         batch_size=batch_size)

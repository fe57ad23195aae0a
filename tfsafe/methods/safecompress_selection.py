"""MIA-SafeCompress's candidate selection: the TM-score, the candidate tests and the round loop.

See :mod:`tfsafe.methods.safecompress` for the method. :class:`CandidateSelection` is the
Keras callback that runs the rounds inside ``Model.fit``; :class:`CandidateTests` scores one
candidate with the performance test and the safety tests.
"""

import numpy as np

from tfsafe._keras import keras
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
from tfsafe.compress.pruning import prunable_wrappers
from tfsafe.errors import InputError
from tfsafe.models import accuracy
from tfsafe.safety.corruptions import corruption_accuracy
from tfsafe.safety.robust_accuracy import adversarial_accuracy
from tfsafe.safety.tests import SafetyData, SafetyTest, run_selection
from tfsafe.validation import check_fraction

__all__ = ["tm_score", "CandidateTests", "CandidateSelection", "AdversarialAccuracyTest", "CorruptionTest",
           "snapshot", "restore", "batches_per_step"]


def batches_per_step(num_candidates, end_fraction):
    """Batches a SafeCompress fit spends per accepted training step, on average.

    During the rounds (``end_fraction`` of the accepted steps) each accepted step costs
    ``num_candidates`` batches (every candidate trains it), afterwards one:
    ``K * f + (1 - f)``.

    Example:
        >>> batches_per_step(3, 0.75)
        2.5
    """
    return num_candidates * end_fraction + (1.0 - end_fraction)


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

    Uses :func:`tfsafe.safety.adversarial.adversarial_accuracy` (random start).
    """

    def __init__(self, x, y, eps, steps=10, restarts=1, name="pgd_accuracy"):
        self.x, self.y, self.eps, self.steps, self.restarts, self.name = x, y, eps, steps, restarts, name

    def score(self, model):
        return adversarial_accuracy(model, self.x, self.y, self.eps, steps=self.steps, restarts=self.restarts)


class CorruptionTest:
    """Safety test: mean accuracy under natural corruptions (``score`` in [0, 1])."""

    def __init__(self, x, y, severities=(3,), corruptions=None, name="corruption_accuracy"):
        self.x, self.y, self.severities, self.corruptions, self.name = x, y, severities, corruptions, name

    def score(self, model):
        return corruption_accuracy(model, self.x, self.y, severities=self.severities,
                                   corruptions=self.corruptions)["mean_accuracy"]

class CandidateTests:
    """The performance test and the safety tests of one candidate, and its TM-score.

    Every safety check is a :class:`~tfsafe.safety.tests.SafetyTest` run on selection data
    only (validation accuracy as the performance test; members vs. reference data for the
    simulated attacker), and the extra tests combine through
    :func:`~tfsafe.safety.tests.selection_score`: ``sum_t w_t score_t = (sum_t w_t) x
    selection_score``.

    Args:
        validation: ``(x, y)`` for the performance test (validation accuracy).
        attacker: a :class:`~tfsafe.safety.simulated_attacker.SimulatedAttackerTest` (the
            membership safety test), or ``None``.
        mia_weight: ``w_mia`` of :func:`tm_score`.
        tests: ``[(test, weight), ...]`` of :class:`~tfsafe.safety.tests.SafetyTest`\\ s; objects
            with ``name`` and ``score(model)`` (the 0.x API) are accepted too.
        data: what the tests run on (a :class:`~tfsafe.safety.tests.SafetyData` built from
            validation, members and reference data); default ``validation``.
    """

    def __init__(self, validation, attacker=None, mia_weight=1.0, tests=(), data=None):
        self.validation = validation
        self.attacker = attacker
        self.mia_weight = float(mia_weight)
        self.tests = list(tests)
        self.data = data if data is not None else SafetyData(test=validation, validation=validation)

    def __call__(self, model):
        result = {"val_accuracy": accuracy(model, *self.validation)}
        attack_accuracy = 0.5
        if self.attacker is not None:
            attack = self.attacker.run(model, self.data)
            result.update({k: v for k, v in attack.items() if k not in ("name", "seconds")})
            result["attacker_score"] = result.pop("score")
            attack_accuracy = result.get("attack_accuracy", 0.5)
        suite = [(t, w) for t, w in self.tests if isinstance(t, SafetyTest)]
        legacy = [(t, w) for t, w in self.tests if not isinstance(t, SafetyTest)]
        scores, weights = {}, {}
        if suite:
            results, score = run_selection(model, suite, self.data)
            ran = {name: r for name, r in results.items() if r.get("score") is not None}
            weights.update({t.name: float(w) for t, w in suite if t.name in ran})
            scores.update({name: float(r["score"]) for name, r in ran.items()})
            result["selection_score"] = score
        for test, weight in legacy:
            scores[test.name], weights[test.name] = float(test.score(model)), float(weight)
        if scores:
            result["safety"] = scores
        result["tm_score"] = tm_score(result["val_accuracy"], attack_accuracy, self.mia_weight, scores, weights)
        return result

    def accept(self, index):
        if self.attacker is not None:
            self.attacker.accept(index)

def snapshot(model):
    """Values of ``model``'s variables and its optimizer's (to try a candidate and come back)."""
    optimizer = model.optimizer
    return ([v.numpy() for v in model.variables],
            [v.numpy() for v in optimizer.variables] if optimizer is not None else [])


def restore(model, state):
    """Assign a :func:`snapshot` back."""
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
        max_accuracy_drop: ``None``, or with ``restore_best`` keep the state with the highest
            TM-score among those whose validation accuracy is within this much (a fraction, 0.01
            = one point) of the best validation accuracy of any round winner or the final
            state: the safest state at (almost) the best accuracy, instead of the best trade-off.
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
                 target_model=None, initial_step=None, restore_best=True, max_accuracy_drop=None, seed=0,
                 verbose=0):
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
        self.max_accuracy_drop = (None if max_accuracy_drop is None
                                  else check_fraction(max_accuracy_drop, "max_accuracy_drop", 0.0, 1.0, True))
        self.final = None
        self._states = []
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
            self._end = self.step + int(steps * epochs * self.end_fraction
                                        / batches_per_step(self.num_candidates, self.end_fraction))

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
        if self.restore_best and self._states:
            result = dict(self.tests(self._target()))
            if hasattr(self.tests, "accept"):
                self.tests.accept(-1)
            final = {"tm": result["tm_score"], "val": result["val_accuracy"], "state": None, "round": "final"}
            candidates = self._states + [final]
            floor = -np.inf
            if self.max_accuracy_drop is not None:
                floor = max(c["val"] for c in candidates) - self.max_accuracy_drop - 1e-9
            # The final state wins ties: a round winner must be strictly better to be restored.
            chosen = max(reversed([c for c in candidates if c["val"] >= floor]), key=lambda c: c["tm"])
            if chosen["state"] is not None:
                restore(self.model, chosen["state"])
            self.final = {"step": self.step, "final": result, "kept": chosen["round"],
                          "best_round_tm": max(c["tm"] for c in self._states)}
            if self.max_accuracy_drop is not None:
                self.final["accuracy_floor"] = float(floor)
        for layer in self.wrappers:
            layer.apply_masks()

    def _keep(self, result, state):
        """Remember a round winner unless another kept state is at least as good on every count
        the final choice reads (TM-score; with ``max_accuracy_drop`` also validation accuracy)."""
        entry = {"tm": result["tm_score"], "val": result["val_accuracy"], "state": state, "round": len(self.history)}

        def covers(a, b):
            return a["tm"] >= b["tm"] and (self.max_accuracy_drop is None or a["val"] >= b["val"])

        if any(covers(kept, entry) for kept in self._states):
            return
        self._states = [kept for kept in self._states if not covers(entry, kept)] + [entry]

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
        self._round = {"start": snapshot(self.model), "masks": candidates, "fraction": fraction,
                       "changed": changed, "k": 0, "trial_steps": 0, "results": [], "ends": []}
        write_masks(self.wrappers, candidates[0])

    def _finish_candidate(self, final=False):
        r = self._round
        result = dict(self.tests(self._target()))
        result.update(index=r["k"], trial_steps=r["trial_steps"], changed=r["changed"][r["k"]])
        r["results"].append(result)
        r["ends"].append(snapshot(self.model))
        if not final and r["k"] + 1 < self.num_candidates:
            r["k"] += 1
            r["trial_steps"] = 0
            restore(self.model, r["start"])
            write_masks(self.wrappers, r["masks"][r["k"]])
            return
        scores = [res["tm_score"] for res in r["results"]]
        best = int(np.argmax(scores))  # ties go to the earliest candidate
        restore(self.model, r["ends"][best])
        if self.restore_best:
            self._keep(r["results"][best], r["ends"][best])
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

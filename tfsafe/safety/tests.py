"""Pluggable safety tests: each has a ``name`` and ``run(model, data) -> dict`` with a ``score``.

A score is in [0, 1], higher = safer (``None`` when the test could not run, e.g. a white-box
attack on a ``.tflite`` file without a source model), so compression methods can combine any
list of tests into one selection score (:func:`selection_score`).

``data`` is anything :func:`as_safety_data` accepts: ``(x_test, y_test)``, a dict, a
:class:`tfsafe.data.MembershipSplits`, or a :class:`SafetyData`. Besides data it may carry the
float ``source`` model (transfer attacks) and the ``reference`` model (mCE, safety-set
selection), so tests built once can be reused on many candidate models.

Example:
    >>> tests = [PGDTest(eps=0.1), CorruptionTest()]  # doctest: +SKIP
    >>> results = [t.run(model, (x_test, y_test)) for t in tests]  # doctest: +SKIP
    >>> selection_score(results)  # doctest: +SKIP
"""

import dataclasses
import time

import numpy as np

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.safety import adversarial
from tfsafe.safety.corruptions import corruption_accuracy
from tfsafe.safety.safety_set import select_safety_set
from tfsafe.safety.tflite_model import as_target, predict_labels
from tfsafe.validation import check_features, check_labels, model_input_shape

__all__ = [
    "SafetyData", "as_safety_data", "SafetyTest", "CleanTest", "PGDTest", "FGSMTest", "CorruptionTest",
    "MembershipTest", "SafetySetTest", "selection_score", "run_selection", "register_test", "tests_to_config",
    "tests_from_config",
]

_TESTS = {}


def register_test(cls):
    """Class decorator: make a :class:`SafetyTest` rebuildable by :func:`tests_from_config`."""
    _TESTS[cls.__name__] = cls
    return cls


@dataclasses.dataclass
class SafetyData:
    """What the safety tests run on. Every split is an ``(x, y)`` tuple or ``None``.

    Attributes:
        test: Reported accuracy, attacks and corruptions run on it.
        members, nonmembers: Balanced membership-audit sets (training data / never seen).
        validation: The pool a safety set is selected from (never test data).
        safety_set: A ready safety set ``(x, y)``; overrides selection from ``validation``.
        source: Float (differentiable) model to transfer attacks from.
        reference: Dense reference model (or an earlier corruption result) for mCE; also
            selects the safety set.
        max_examples: Cap on test examples for attacks and corruptions (first ones).
    """

    test: tuple
    members: tuple = None
    nonmembers: tuple = None
    validation: tuple = None
    safety_set: tuple = None
    source: object = None
    reference: object = None
    max_examples: int = None

    def attack_set(self):
        x, y = self.test
        n = len(x) if self.max_examples is None else min(len(x), int(self.max_examples))
        return np.asarray(x[:n], np.float32), np.asarray(y[:n])


def _pair(value, name):
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise InputError(f"{name} must be an (x, y) pair, got {type(value).__name__}.")
    return tuple(value)


def as_safety_data(data, source=None, reference=None, max_examples=None, audit_size=None, seed=0):
    """Normalize ``data`` into a :class:`SafetyData` (the keyword arguments override it)."""
    if isinstance(data, SafetyData):
        out = dataclasses.replace(data)
    elif hasattr(data, "audit_sets") and hasattr(data, "nonmembers"):  # MembershipSplits
        members, nonmembers = data.audit_sets(audit_size, seed) if len(data.nonmembers[0]) else (None, None)
        validation = data.validation if len(data.validation[0]) else None
        out = SafetyData(test=data.test, members=members, nonmembers=nonmembers, validation=validation)
    elif isinstance(data, dict):
        unknown = set(data) - {f.name for f in dataclasses.fields(SafetyData)}
        if unknown or "test" not in data:
            raise InputError(f"data dict needs a 'test' (x, y) pair and only SafetyData keys; "
                             f"unknown: {sorted(unknown)}.")
        out = SafetyData(**data)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        out = SafetyData(test=tuple(data))
    else:
        raise InputError("data must be (x_test, y_test), a dict with a 'test' pair, MembershipSplits or SafetyData.")
    for name in ("test", "members", "nonmembers", "validation", "safety_set"):
        setattr(out, name, _pair(getattr(out, name), name))
    if out.test is None:
        raise InputError("data has no test split; the safety tests report on test data.")
    out.source = source if source is not None else out.source
    out.reference = reference if reference is not None else out.reference
    out.max_examples = max_examples if max_examples is not None else out.max_examples
    return out


def _check_test_split(model, data):
    if _is_keras(model):
        shape = model_input_shape(model)
    else:
        shape = getattr(model, "input_shape", None)
    x, y = data.test
    x = check_features(x, "test x", shape)
    check_labels(y, None, "test y", n=len(x))


def _is_keras(model):
    return isinstance(model, keras.Model)


class SafetyTest:
    """Base class: subclasses set ``name`` and implement ``_run(model, data) -> dict`` with ``score``."""

    name = "safety_test"

    def run(self, model, data):
        """Run the test on ``model`` (Keras model, ``.tflite`` path or ``TFLiteModel``)."""
        data = as_safety_data(data)
        model = as_target(model)
        _check_test_split(model, data)
        start = time.perf_counter()
        result = {"name": self.name}
        result.update(self._run(model, data))
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def _run(self, model, data):
        raise NotImplementedError

    def get_config(self):
        """The constructor's JSON-able arguments (models such as ``source`` / ``reference`` are left out)."""
        return {}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


@register_test
class CleanTest(SafetyTest):
    """Top-1 accuracy on the test split (score = accuracy)."""

    name = "clean"

    def _run(self, model, data):
        x, y = data.test
        acc = float(np.mean(predict_labels(model, np.asarray(x, np.float32)) == np.asarray(y).reshape(-1)))
        return {"accuracy": acc, "n": len(x), "score": acc}


class _AttackTest(SafetyTest):
    """Worst case per example over white-box, BPDA and transfer attacks (score = accuracy).

    The result's ``attacks`` maps each attack, in the order run, to the accuracy left after it
    and all earlier ones (cumulative); ``accuracy`` is the last value.
    """

    attack = "pgd"

    def __init__(self, eps, steps=20, restarts=1, norm="linf", losses=("ce", "margin"), step_size=None,
                 source=None, bpda="auto", batch_size=256, seed=0, max_examples=None):
        adversarial._check_attack_args(eps, steps, norm, "ce", step_size)
        self.max_examples = None if max_examples is None else int(max_examples)
        self.eps, self.steps, self.restarts, self.norm = float(eps), int(steps), int(restarts), norm
        self.losses, self.step_size, self.source = tuple(losses), step_size, source
        self.bpda, self.batch_size, self.seed = bpda, int(batch_size), int(seed)

    def get_config(self):
        return {"eps": self.eps, "steps": self.steps, "restarts": self.restarts, "norm": self.norm,
                "losses": list(self.losses), "step_size": self.step_size, "bpda": self.bpda,
                "batch_size": self.batch_size, "seed": self.seed, "max_examples": self.max_examples}

    def _attack(self, model, x, y, loss, bpda):
        kwargs = {"loss": loss, "bpda": bpda, "batch_size": self.batch_size}
        if self.attack == "pgd":
            kwargs.update(norm=self.norm, step_size=self.step_size, seed=self.seed)
        return adversarial.adversarial_accuracy(model, x, y, self.eps, attack=self.attack, steps=self.steps,
                                                restarts=self.restarts, return_mask=True, **kwargs)

    def _run(self, model, data):
        x, y = data.attack_set()
        if self.max_examples is not None:  # e.g. a cheap check inside model selection
            x, y = x[:self.max_examples], y[:self.max_examples]
        source = self.source if self.source is not None else data.source
        ok = predict_labels(model, x, self.batch_size) == y
        attacks, result = {}, {"eps": self.eps, "norm": self.norm, "n": len(x), "clean_accuracy": float(ok.mean())}
        if self.attack == "pgd":
            result.update(steps=self.steps, restarts=self.restarts)

        def add(name, run):
            # Each attack runs only on the examples every earlier one left correct (same worst case,
            # less work), so ``attacks`` holds the cumulative accuracy after each attack in order.
            idx = np.flatnonzero(ok)
            if len(idx):
                ok[idx] &= run(x[idx], y[idx])
            attacks[name] = float(ok.mean())

        if _is_keras(model):
            use_bpda = adversarial.has_bpda_layers(model) if self.bpda == "auto" else bool(self.bpda)
            for bpda in ((False, True) if use_bpda else (False,)):
                for loss in self.losses:
                    add(f"{'bpda' if bpda else 'whitebox'}_{loss}",
                        lambda xs, ys, loss=loss, bpda=bpda: self._attack(model, xs, ys, loss, bpda)[1])
            masked = adversarial.zero_gradient_fraction(model, x[:256], y[:256])
            result["zero_gradient_fraction"] = masked
            if masked > 0.5 and not use_bpda and source is None:
                result["warning"] = (f"the input gradient is zero on {masked:.0%} of examples (gradient masking): "
                                     "this accuracy is an upper bound. Pass a float source model (transfer attack) "
                                     "or register a BPDA surrogate for the non-differentiable layers.")
        if source is not None:
            steps = self.steps if self.attack == "pgd" else 1
            restarts = self.restarts if self.attack == "pgd" else 1
            add("transfer_from_source", lambda xs, ys: adversarial.transfer_attack(
                source, model, xs, ys, self.eps, attack=self.attack, steps=steps, restarts=restarts,
                batch_size=self.batch_size)["mask"])
        if not attacks:
            return {**result, "skipped": "no gradients (.tflite) and no source model for a transfer attack; "
                                         "pass source=<float Keras model>.", "accuracy": None, "score": None}
        acc = float(ok.mean())
        return {**result, "accuracy": acc, "attacks": attacks, "score": acc}


@register_test
class PGDTest(_AttackTest):
    """PGD accuracy at ``eps`` (random start, restarts, CE and margin losses, BPDA, transfer).

    ``max_examples`` caps the examples attacked (the first ones), e.g. for a cheap selection
    check on validation data.

    Example:
        >>> PGDTest(eps=0.3, steps=40, restarts=2).run(model, (x_test, y_test))["accuracy"]  # doctest: +SKIP
    """

    attack = "pgd"

    @property
    def name(self):
        return f"pgd_{self.norm}_{self.eps:g}"


@register_test
class FGSMTest(_AttackTest):
    """FGSM accuracy at ``eps`` (plus BPDA / transfer FGSM where they apply)."""

    attack = "fgsm"

    def __init__(self, eps, losses=("ce",), source=None, bpda="auto", batch_size=256):
        super().__init__(eps, steps=1, losses=losses, source=source, bpda=bpda, batch_size=batch_size)

    def get_config(self):
        return {"eps": self.eps, "losses": list(self.losses), "bpda": self.bpda, "batch_size": self.batch_size}

    @property
    def name(self):
        return f"fgsm_{self.eps:g}"


@register_test
class CorruptionTest(SafetyTest):
    """Mean accuracy over corruptions x severities (score) and mCE against the reference."""

    name = "corruptions"

    def __init__(self, reference=None, corruptions=None, severities=(1, 2, 3, 4, 5), seed=0):
        self.reference, self.corruptions, self.severities, self.seed = reference, corruptions, severities, seed
        self._reference_results = {}

    def get_config(self):
        return {"corruptions": None if self.corruptions is None else list(self.corruptions),
                "severities": list(self.severities), "seed": self.seed}

    def _run(self, model, data):
        x, y = data.attack_set()
        reference = self.reference if self.reference is not None else data.reference
        if reference is not None and not isinstance(reference, dict):
            key = (id(reference), id(data.test[0]), len(x))
            if key not in self._reference_results:  # the dense model's table is computed once
                self._reference_results[key] = corruption_accuracy(
                    reference, x, y, corruptions=self.corruptions, severities=self.severities, seed=self.seed)
            reference = self._reference_results[key]
        result = corruption_accuracy(model, x, y, reference=reference, corruptions=self.corruptions,
                                     severities=self.severities, seed=self.seed)
        if isinstance(reference, dict):
            result["reference_mean_accuracy"] = reference["mean_accuracy"]
        result["n"] = len(x)
        result["score"] = result["mean_accuracy"]
        return result


@register_test
class MembershipTest(SafetyTest):
    """Worst-case membership inference over tensorflow-privacy attacks; score = 1 - advantage."""

    name = "membership"

    def __init__(self, attacks=None, seed=0):
        self.attacks, self.seed = attacks, seed

    def get_config(self):
        return {"attacks": None if self.attacks is None else list(self.attacks), "seed": self.seed}

    def _run(self, model, data):
        if data.members is None or data.nonmembers is None:
            return {"skipped": "data has no members / nonmembers", "score": None}
        # Imported on use: tensorflow-privacy is slow to import and only this test needs it.
        from tfsafe.safety.membership import audit_membership

        audit = audit_membership(model, data.members, data.nonmembers, attacks=self.attacks, seed=self.seed)
        result = audit.to_dict(include_curves=True)  # the report plots the ROC curves
        result["score"] = float(np.clip(1.0 - audit.worst["advantage"], 0.0, 1.0))
        return result


@register_test
class SafetySetTest(SafetyTest):
    """Accuracy on a safety set selected from validation data (never test data).

    The set comes from ``data.safety_set`` when given; otherwise it is selected from
    ``data.validation`` by ``selector`` (default: the data's reference model, else the model
    under test) and cached, so every candidate is scored on the same examples.
    """

    name = "safety_set"

    def __init__(self, size=100, selector=None, seed=0):
        self.size, self.selector, self.seed = int(size), selector, seed
        self._cache = {}

    def get_config(self):
        return {"size": self.size, "seed": self.seed}

    def _run(self, model, data):
        if data.safety_set is not None:
            (x, y), provenance = data.safety_set, {"source": "given"}
        elif data.validation is not None:
            selector = self.selector
            for candidate in (data.reference, model):
                if selector is None and _is_keras(candidate):
                    selector = candidate
            if selector is None:
                return {"skipped": "no Keras model to select the safety set with; pass selector=", "score": None}
            xv, yv = data.validation
            key = (id(selector), id(xv))
            if key not in self._cache:
                self._cache[key] = select_safety_set(selector, xv, yv, min(self.size, len(xv)), seed=self.seed)
            idx = self._cache[key]
            x, y = np.asarray(xv)[idx], np.asarray(yv)[idx]
            provenance = {"source": "validation", "indices": idx.tolist()}
        else:
            return {"skipped": "data has neither safety_set nor validation", "score": None}
        acc = float(np.mean(predict_labels(model, np.asarray(x, np.float32)) == np.asarray(y).reshape(-1)))
        return {"accuracy": acc, "n": len(x), **provenance, "score": acc}


def selection_score(results, weights=None):
    """Weighted mean of the tests' scores (skipped tests are left out); ``None`` if none ran.

    Args:
        results: Test results (dicts with ``name`` and ``score``), a list or a ``{name: result}`` dict.
        weights: ``{test name: weight}``; default 1 for each.
    """
    results = list(results.values()) if isinstance(results, dict) else list(results)
    pairs = [((weights or {}).get(r["name"], 1.0), r["score"]) for r in results if r.get("score") is not None]
    total = sum(w for w, _ in pairs)
    return float(sum(w * s for w, s in pairs) / total) if total > 0 else None


def run_selection(model, tests, data):
    """Run ``[(test, weight), ...]`` on ``model``: ``(results by name, selection_score)``.

    This is the one selection protocol of tfsafe's methods: each method scores the states it
    may return (candidates, checkpoints, checks) with the tests it was given, on validation
    data only (``data`` is then e.g. ``SafetyData(test=validation, validation=validation)``).

    Example:
        >>> results, score = run_selection(model, [(PGDTest(0.1, steps=5), 2.0), (CleanTest(), 1.0)],
        ...                                (x_val, y_val))  # doctest: +SKIP
    """
    results = {}
    weights = {}
    for test, weight in tests:
        result = test.run(model, data)
        results[result["name"]] = result
        weights[result["name"]] = float(weight)
    return results, selection_score(results, weights)


def tests_to_config(tests):
    """JSON-able form of ``[test | (test, weight), ...]`` (see :func:`tests_from_config`)."""
    out = []
    for item in tests or ():
        test, weight = item if isinstance(item, (tuple, list)) else (item, 1.0)
        if type(test).__name__ not in _TESTS:
            raise InputError(f"Safety test {type(test).__name__} is not registered; decorate it with "
                             "tfsafe.safety.tests.register_test to save it in a config.")
        out.append({"class": type(test).__name__, "config": test.get_config(), "weight": float(weight)})
    return out


def tests_from_config(config):
    """Rebuild ``[(test, weight), ...]`` from :func:`tests_to_config`'s output (objects pass through)."""
    out = []
    for item in config or ():
        if not isinstance(item, dict):
            out.append(item)
            continue
        if item.get("class") not in _TESTS:
            raise InputError(f"Unknown safety test {item.get('class')!r}; known: {', '.join(sorted(_TESTS))}.")
        out.append((_TESTS[item["class"]](**item.get("config", {})), float(item.get("weight", 1.0))))
    return out

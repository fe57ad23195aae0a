"""One call that runs the safety tests on a model and returns plain, JSON-able results.

:func:`evaluate_safety` runs a list of :mod:`tfsafe.safety.tests` (by default: clean
accuracy, PGD at several eps, FGSM, corruptions, membership when the data has members and
non-members, the safety set when it has validation data) on a Keras model or a ``.tflite``
file. A ``.tflite`` file gets the black-box tests plus transfer attacks from ``source``. Each
PGD-test number is the worst case per example over PGD (CE and margin losses), APGD-CE and
APGD-DLR (:data:`DEFAULT_ATTACKS`; the result's ``attack_set`` / ``robustness.attacks`` say which),
and for models with non-differentiable parts also over BPDA and transfer-from-``source``
attacks. :mod:`tfsafe.safety.gradient_masking` checks then test whether those numbers can be
trusted; every failed check is a line in the result's ``flags``.
"""

import os

from tfsafe.errors import InputError
from tfsafe.safety.gradient_masking import gradient_masking_checks
from tfsafe.safety.tests import (
    CleanTest,
    CorruptionTest,
    FGSMTest,
    MembershipTest,
    PGDTest,
    SafetySetTest,
    SafetyTest,
    as_safety_data,
    selection_score,
)
from tfsafe.safety.tflite_model import as_target, is_tflite_path
from tfsafe.validation import check_model

__all__ = ["evaluate_safety", "default_eps", "default_tests", "TEST_NAMES", "DATASET_EPS", "DEFAULT_ATTACKS"]

TEST_NAMES = ("clean", "pgd", "fgsm", "corruptions", "membership", "safety_set")
# The attacks behind every robust-accuracy number of the report (worst case per example).
DEFAULT_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr")

# The usual Linf training / headline radius per dataset (8x8 digits are coarse: 0.3 erases them).
DATASET_EPS = {"digits": 0.1, "mnist": 0.3, "fashion_mnist": 0.1, "cifar10": 8 / 255}


def default_eps(model_or_shape):
    """Attack radii of the protocol: 0.1 / 0.2 / 0.3 for grayscale, 2 / 4 / 8 (/255) for RGB."""
    shape = model_or_shape if isinstance(model_or_shape, tuple) else tuple(model_or_shape.input_shape)
    return (2 / 255, 4 / 255, 8 / 255) if shape and shape[-1] == 3 else (0.1, 0.2, 0.3)


def default_tests(names=TEST_NAMES, eps=(0.1, 0.2, 0.3), steps=20, restarts=1, membership_attacks=None,
                  safety_set_size=100, attacks=DEFAULT_ATTACKS):
    """The protocol's tests for the given names (``"pgd"`` gives one test per eps, each the worst
    case over ``attacks``: PGD plus APGD names)."""
    if "pgd" not in attacks:
        raise InputError(f"attacks must include 'pgd' (plus APGD names), got {tuple(attacks)}.")
    extra = tuple(a for a in attacks if a != "pgd")
    tests = []
    for name in names:
        if name == "clean":
            tests.append(CleanTest())
        elif name == "pgd":
            tests.extend(PGDTest(e, steps=steps, restarts=restarts, extra_attacks=extra) for e in eps)
        elif name == "fgsm":
            tests.append(FGSMTest(max(eps)))
        elif name == "corruptions":
            tests.append(CorruptionTest())
        elif name == "membership":
            tests.append(MembershipTest(attacks=membership_attacks))
        elif name == "safety_set":
            tests.append(SafetySetTest(size=safety_set_size))
        else:
            raise InputError(f"Unknown safety test {name!r}; choose from {TEST_NAMES} or pass SafetyTest objects.")
    return tests


def _summary(results):
    by_name = {r["name"]: r for r in results}
    pgd_results = {r["eps"]: r for r in results if r["name"].startswith("pgd_") and r.get("accuracy") is not None}
    pgd = {e: r["accuracy"] for e, r in pgd_results.items()}
    fgsm = [r["accuracy"] for r in results if r["name"].startswith("fgsm_") and r.get("accuracy") is not None]
    corruption = by_name.get("corruptions", {})
    robustness = {
        "pgd": {f"{e:g}": a for e, a in sorted(pgd.items())},
        "pgd_eps": max(pgd) if pgd else None,
        "pgd_accuracy": pgd[max(pgd)] if pgd else None,
        # PGD runs on a subset (max_examples); its clean accuracy is the bound the PGD numbers sit under.
        "pgd_clean_accuracy": pgd_results[max(pgd)]["clean_accuracy"] if pgd else None,
        "pgd_examples": pgd_results[max(pgd)]["n"] if pgd else None,
        # Which attacks produced the pgd numbers (worst case per example over them).
        "attacks": pgd_results[max(pgd)].get("attack_set", ["pgd"]) if pgd else None,
        "fgsm_accuracy": min(fgsm) if fgsm else None,
        "corruption_mean_accuracy": corruption.get("mean_accuracy"),
        "corruption_mce": corruption.get("mce"),
        "safety_set_accuracy": by_name.get("safety_set", {}).get("accuracy"),
    }
    membership = by_name.get("membership")
    return {
        "accuracy": by_name.get("clean", {}).get("accuracy"),
        "robustness": robustness,
        "membership": None if membership is None or "worst" not in membership else {"worst": membership["worst"]},
    }


def _masking(target, kind, data, results, source):
    pgd = [r for r in results if r["name"].startswith("pgd_") and r.get("accuracy") is not None]
    if not pgd:
        return None
    head = max(pgd, key=lambda r: r["eps"])
    # The attack-strength checks are most telling where the attack breaks about half the examples.
    probe = min((r for r in pgd if r["norm"] == head["norm"]),
                key=lambda r: abs(r["accuracy"] - r["clean_accuracy"] / 2))
    x, y = data.attack_set()
    whitebox = [a for name, a in probe.get("attacks", {}).items() if name != "transfer_from_source"]
    return gradient_masking_checks(
        target, x, y, probe["eps"], accuracy_by_eps={r["eps"]: r["accuracy"] for r in pgd if r["norm"] == head["norm"]},
        clean_accuracy=head["clean_accuracy"], whitebox_accuracy=whitebox[-1] if whitebox else None,
        source=source if kind == "keras" else None, steps=head.get("steps", 20), restarts=head.get("restarts", 1),
        norm=head["norm"], whitebox=kind == "keras")


def evaluate_safety(model, data, tests=None, source=None, reference=None, eps=None, steps=20, restarts=1,
                    max_examples=None, membership_attacks=None, weights=None, attacks=DEFAULT_ATTACKS,
                    masking_checks=True):
    """Run safety tests on ``model`` and return a JSON-able dict.

    Args:
        model: Keras model, or a ``.tflite`` path / ``TFLiteModel`` (black-box tests and
            transfer attacks only).
        data: ``(x_test, y_test)``, a dict, :class:`tfsafe.data.MembershipSplits` or
            :class:`tfsafe.safety.tests.SafetyData`.
        tests: ``SafetyTest`` objects and/or names from :data:`TEST_NAMES`; default all that
            the data allows.
        source: Float Keras model for transfer attacks (needed for ``.tflite`` files and
            models with non-differentiable parts).
        reference: Dense reference model for mCE and safety-set selection.
        eps: PGD radii; default :func:`default_eps` of the input shape.
        steps, restarts: PGD / APGD settings of the default tests (>= 20 steps for the protocol).
        max_examples: Cap on test examples used by attacks and corruptions.
        membership_attacks: Attack names for the default membership test (default: all).
        weights: ``{test name: weight}`` for the combined ``score``.
        attacks: Attacks of the default PGD tests, worst case per example (``"pgd"`` plus any
            of ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``); DLR on a 2-class model falls back
            to CE and the test's ``notes`` say so.
        masking_checks: Run :func:`tfsafe.safety.gradient_masking.gradient_masking_checks` on
            the PGD results (on up to 200 attack examples).

    Returns:
        dict with ``model``, ``kind``, ``accuracy``, ``robustness`` (``pgd_accuracy`` at the
        largest eps, ``attacks`` (the attack set behind the pgd numbers), ``masked`` (zero
        input gradients), ``fgsm_accuracy``, ``corruption_mean_accuracy``, ``corruption_mce``,
        ``safety_set_accuracy``), ``membership`` (worst case), ``tests`` ({name: result}),
        ``gradient_masking`` (the checks), ``flags`` (one line per failed check) and ``score``
        (:func:`tfsafe.safety.tests.selection_score`). ``accuracy``, ``robustness`` and
        ``membership`` can be passed straight to ``SafetyReport.add_model``.

    Raises:
        InputError: unknown test names, duplicate test names, bad data, a missing ``.tflite``.

    Example:
        >>> res = evaluate_safety(model, (x_test, y_test), tests=["clean", "pgd"], eps=[0.1])  # doctest: +SKIP
        >>> res["robustness"]["pgd_accuracy"]  # doctest: +SKIP
    """
    if is_tflite_path(model):
        if not os.path.isfile(os.fspath(model)):
            raise InputError(f"TFLite file '{model}' does not exist.")
        name, kind = os.fspath(model), "tflite"
    elif getattr(model, "is_tflite", False):
        name, kind = model.path, "tflite"
    else:
        model = check_model(model)
        name, kind = model.name, "keras"
    target = as_target(model)
    if source is not None:
        source = check_model(source, "source")
    data = as_safety_data(data, source=source, reference=reference, max_examples=max_examples)
    if eps is None:
        eps = default_eps(tuple(target.input_shape) if kind == "tflite" else model)
    eps = tuple(float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps]))
    if tests is None:
        names = ["clean", "pgd", "fgsm", "corruptions"]
        names += ["membership"] if data.members is not None and data.nonmembers is not None else []
        names += ["safety_set"] if data.validation is not None or data.safety_set is not None else []
        tests = names
    objects = []
    for test in tests:
        if isinstance(test, str):
            objects.extend(default_tests([test], eps, steps, restarts, membership_attacks, attacks=attacks))
        elif isinstance(test, SafetyTest) or (hasattr(test, "run") and hasattr(test, "name")):
            objects.append(test)
        else:
            raise InputError(f"tests must hold SafetyTest objects or names from {TEST_NAMES}, got {test!r}.")
    names = [t.name for t in objects]
    if len(set(names)) != len(names):
        raise InputError(f"Two safety tests share a name: {names}; give each a distinct eps / name.")
    results = [test.run(target, data) for test in objects]
    out = {"model": name, "kind": kind, "source": None if source is None else source.name,
           "eps": list(eps), "tests": {r["name"]: r for r in results}, "score": selection_score(results, weights)}
    out.update(_summary(results))
    checks = _masking(target, kind, data, results, source) if masking_checks else None
    out["gradient_masking"] = checks
    out["flags"] = [] if checks is None else list(checks["flags"])
    if checks is not None and out["robustness"]["pgd_accuracy"] is not None:
        zero = checks["checks"].get("zero_gradients")
        out["robustness"]["masked"] = bool(zero is not None and not zero["passed"])
        out["robustness"]["gradient_masking_passed"] = checks["passed"]
    return out


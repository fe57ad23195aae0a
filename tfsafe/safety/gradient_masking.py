"""Gradient-masking checks: is a robust-accuracy number real, or is the attack being fooled?

Compressed models are where gradients get masked (rounding, binary masks, clipped low-bit
grids), and a masked model looks robust to a white-box attack. The checks follow the usual
signs of a broken evaluation (Athalye, Carlini and Wagner, 2018; Carlini et al., "On
evaluating adversarial robustness", 2019):

- ``more_iterations``: accuracy must not rise with more steps or restarts (``converged`` also
  says whether it fell by more than ``converge_tolerance``: then the base attack was too weak);
- ``monotone_eps``: accuracy must not rise as eps grows (eps 0 = clean accuracy);
- ``large_eps``: at a radius of half the data range accuracy must be about zero;
- ``transfer``: a transfer attack from the float model must not beat the white-box attack;
- ``zero_gradients``: the input gradient the attack uses must not be zero on most examples.

Each check returns ``{"passed": bool or None, ...numbers}`` (``None``: could not run);
:func:`gradient_masking_checks` runs them all and lists a one-line flag per failure.
"""

import numpy as np

from tfsafe.safety.bpda import has_bpda_layers
from tfsafe.safety.robust_accuracy import adversarial_accuracy, transfer_attack, zero_gradient_fraction

__all__ = ["check_more_iterations", "check_monotone_eps", "check_large_eps", "check_transfer",
           "check_zero_gradients", "gradient_masking_checks"]


def check_more_iterations(model, x, y, eps, steps=20, restarts=1, tolerance=0.01, converge_tolerance=0.05,
                          **kwargs):
    """PGD accuracy with ``steps`` / ``restarts``, with 4x the steps and with 2 more restarts.

    ``passed``: neither rises above the base by more than ``tolerance``. ``converged``: neither
    falls below it by more than ``converge_tolerance``.
    """
    base = adversarial_accuracy(model, x, y, eps, steps=steps, restarts=restarts, **kwargs)
    more_steps = adversarial_accuracy(model, x, y, eps, steps=4 * steps, restarts=restarts, **kwargs)
    more_restarts = adversarial_accuracy(model, x, y, eps, steps=steps, restarts=restarts + 2, **kwargs)
    rise, drop = max(more_steps, more_restarts) - base, base - min(more_steps, more_restarts)
    return {"passed": bool(rise <= tolerance), "converged": bool(drop <= converge_tolerance), "eps": float(eps),
            "accuracy": base, "accuracy_4x_steps": more_steps, "accuracy_more_restarts": more_restarts,
            "steps": int(steps), "restarts": int(restarts)}


def check_monotone_eps(accuracy_by_eps, clean_accuracy=None, tolerance=0.01):
    """Accuracy must not rise with eps (``clean_accuracy`` counts as eps 0).

    Args:
        accuracy_by_eps: ``{eps: accuracy}``.
    """
    points = sorted((float(e), float(a)) for e, a in accuracy_by_eps.items() if a is not None)
    if clean_accuracy is not None and not any(e == 0.0 for e, _ in points):
        points.insert(0, (0.0, float(clean_accuracy)))
    rises = [(e1, a0, a1) for (_, a0), (e1, a1) in zip(points, points[1:]) if a1 > a0 + tolerance]
    return {"passed": None if len(points) < 2 else not rises, "accuracy_by_eps": {f"{e:g}": a for e, a in points},
            "rises": [{"eps": e, "from": a0, "to": a1} for e, a0, a1 in rises]}


def check_large_eps(model, x, y, clip=(0.0, 1.0), norm="linf", max_accuracy=0.05, steps=20, **kwargs):
    """PGD at half the data range (Linf; L2: half the range times sqrt(input size)) must reach ~0."""
    span = float(clip[1]) - float(clip[0])
    eps = 0.5 * span if norm == "linf" else 0.5 * span * float(np.sqrt(np.prod(np.shape(x)[1:])))
    acc = adversarial_accuracy(model, x, y, eps, steps=steps, norm=norm, clip=clip, **kwargs)
    return {"passed": bool(acc <= max_accuracy), "eps": eps, "accuracy": acc, "max_accuracy": max_accuracy}


def check_transfer(model, source, x, y, eps, whitebox_accuracy, tolerance=0.02, steps=20, restarts=1, **kwargs):
    """Transfer PGD from ``source`` must not leave ``model`` less accurate than the white-box attack."""
    result = transfer_attack(source, model, x, y, eps, steps=steps, restarts=restarts, **kwargs)
    transfer = result["target_adv_accuracy"]
    return {"passed": bool(transfer >= whitebox_accuracy - tolerance), "eps": float(eps),
            "whitebox_accuracy": float(whitebox_accuracy), "transfer_accuracy": transfer}


def check_zero_gradients(model, x, y, bpda="auto", max_fraction=0.5):
    """The input gradient an attack uses (through BPDA surrogates when the model has them) must
    not be exactly zero on more than ``max_fraction`` of the examples."""
    use_bpda = has_bpda_layers(model) if bpda == "auto" else bool(bpda)
    fraction = zero_gradient_fraction(model, x, y, bpda=use_bpda)
    return {"passed": bool(fraction <= max_fraction), "zero_gradient_fraction": fraction, "bpda": use_bpda}


def gradient_masking_checks(model, x, y, eps, accuracy_by_eps=None, clean_accuracy=None, whitebox_accuracy=None,
                            source=None, steps=20, restarts=1, norm="linf", clip=(0.0, 1.0), max_examples=200,
                            whitebox=True):
    """Run every check that applies and list a one-line flag for each failure.

    Args:
        model: Keras model (or callable) under test; with ``whitebox=False`` (a ``.tflite``
            file) only the checks on given numbers and the transfer check run.
        x, y: Attack examples (the first ``max_examples`` are used by the checks that attack).
        eps: Radius of the attack-strength checks (``more_iterations``, ``transfer``); most
            telling where the attack breaks about half of the examples.
        accuracy_by_eps: ``{eps: robust accuracy}`` already measured (for ``monotone_eps``).
        clean_accuracy: Clean accuracy on the same examples.
        whitebox_accuracy: The white-box (and BPDA) accuracy at ``eps`` on all of ``x`` (the
            transfer check attacks all of ``x``, the other attacking checks the first
            ``max_examples``).
        source: Float model for the transfer check (skipped without one).
        steps, restarts, norm, clip: The evaluation attack's settings.

    Returns:
        dict ``{"passed": bool, "checks": {name: result}, "flags": [str]}``; ``passed`` is
        False when any check that ran failed.
    """
    x_all, y_all = np.asarray(x, np.float32), np.asarray(y)
    x, y = x_all[:max_examples], y_all[:max_examples]
    checks = {}
    if accuracy_by_eps:
        checks["monotone_eps"] = check_monotone_eps(accuracy_by_eps, clean_accuracy)
    if whitebox and len(x):
        checks["zero_gradients"] = check_zero_gradients(model, x, y)
        bpda = checks["zero_gradients"]["bpda"]
        kwargs = {"norm": norm, "clip": clip, "bpda": bpda}
        checks["more_iterations"] = check_more_iterations(model, x, y, eps, steps, restarts, **kwargs)
        checks["large_eps"] = check_large_eps(model, x, y, steps=steps, **kwargs)
    if source is not None and whitebox_accuracy is not None and len(x):
        checks["transfer"] = check_transfer(model, source, x_all, y_all, eps, whitebox_accuracy, steps=steps,
                                            restarts=restarts, norm=norm, clip=clip)
    flags = [_flag(name, c) for name, c in checks.items() if c["passed"] is False]
    more = checks.get("more_iterations")
    if more is not None and not more["converged"]:
        flags.append(f"attack not converged at eps={more['eps']:g}: accuracy {more['accuracy']:.3f} falls to "
                     f"{min(more['accuracy_4x_steps'], more['accuracy_more_restarts']):.3f} with 4x steps or "
                     "more restarts; evaluate with more steps")
    return {"passed": all(c["passed"] is not False for c in checks.values()), "checks": checks, "flags": flags}


def _flag(name, c):
    if name == "monotone_eps":
        r = c["rises"][0]
        return f"gradient masking: accuracy rises with eps ({r['from']:.3f} -> {r['to']:.3f} at eps={r['eps']:g})"
    if name == "zero_gradients":
        return (f"gradient masking: the input gradient is zero on {c['zero_gradient_fraction']:.0%} of examples; "
                "robust accuracy is an upper bound (register a BPDA surrogate or pass a float source model)")
    if name == "more_iterations":
        return (f"unreliable attack: accuracy rises with more steps / restarts ({c['accuracy']:.3f} -> "
                f"{max(c['accuracy_4x_steps'], c['accuracy_more_restarts']):.3f} at eps={c['eps']:g})")
    if name == "large_eps":
        return (f"gradient masking: accuracy {c['accuracy']:.3f} at eps={c['eps']:g} (half the data range) "
                f"should be ~0 (max {c['max_accuracy']})")
    return (f"gradient masking: transfer from the float model ({c['transfer_accuracy']:.3f}) beats the white-box "
            f"attack ({c['whitebox_accuracy']:.3f}) at eps={c['eps']:g}")

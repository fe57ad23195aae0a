"""Plain-words verdicts for the reports: is a compressed model easier to attack than the dense
one (and than the unsafe baseline)? How much does a membership audit reveal?

Everything here reads the plain dicts a :class:`~tfsafe.report.SafetyReport` holds, so the
same functions serve the compress report, the audit report and a report re-read from JSON.
"""

__all__ = ["TOLERANCE", "THREATS", "ATTACK_NAMES", "attack_label", "worst_by_metric", "compare", "comparisons",
           "membership_verdict", "model_size_bytes", "size_text", "auc_standard_error", "threat_tolerance"]

# Differences within this (absolute, on accuracies) count as "same"; membership AUCs use one
# standard error of the reference's AUC at its audit set sizes (threat_tolerance), this when
# the sizes are unknown.
TOLERANCE = 0.01


def auc_standard_error(auc, n_members, n_nonmembers):
    """Standard error of an AUC from ``n_members`` positives and ``n_nonmembers`` negatives.

    Hanley and McNeil, "The meaning and use of the area under a ROC curve", Radiology 1982,
    Eq. 2; at AUC 0.5 it is ``sqrt((n1 + n2 + 1) / (12 n1 n2))``.

    Raises:
        ValueError: an empty set.
    """
    n1, n2 = int(n_members), int(n_nonmembers)
    if n1 < 1 or n2 < 1:
        raise ValueError(f"an AUC needs members and non-members, got {n1} and {n2}")
    auc = min(max(float(auc), 0.0), 1.0)
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    return ((auc * (1 - auc) + (n1 - 1) * (q1 - auc ** 2) + (n2 - 1) * (q2 - auc ** 2)) / (n1 * n2)) ** 0.5


def threat_tolerance(threat, reference):
    """The difference under which ``threat`` counts as "same" against ``reference``: for
    membership one standard error of the reference's worst AUC at its audit set sizes (a
    small audit cannot tell 0.01 apart; a large one can tell less), else :data:`TOLERANCE`."""
    if threat == "membership":
        membership = reference.get("membership") or {}
        auc, n1, n2 = _get(membership, ("worst", "auc")), membership.get("n_members"), membership.get("n_nonmembers")
        if auc is not None and n1 and n2:
            return auc_standard_error(auc, n1, n2)
    return TOLERANCE

# (threat, path into an entry, higher is safer)
THREATS = [
    ("adversarial", ("robustness", "pgd_accuracy"), True),
    ("corruption", ("robustness", "corruption_mean_accuracy"), True),
    ("membership", ("membership", "worst", "auc"), False),
]

ATTACK_NAMES = {"threshold": "loss threshold", "entropy": "entropy threshold", "logistic_regression":
                "logistic regression", "random_forest": "random forest", "knn": "k-NN", "mlp": "MLP",
                "lira": "LiRA", "offset": "offset", "lira_online": "LiRA (online)", "lira_offline": "LiRA (offline)",
                "rmia_online": "RMIA (online)", "rmia_offline": "RMIA (offline)"}


def attack_label(name):
    """``"mlp"`` -> ``"MLP"``: a membership attack's name as a person reads it."""
    return ATTACK_NAMES.get(str(name).lower(), str(name))


def _get(entry, path):
    value = entry
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def worst_by_metric(membership):
    """``{metric: (value, attack)}``: each worst-case metric with the attack that produced it."""
    attacks = (membership or {}).get("attacks") or []
    worst = (membership or {}).get("worst") or {}
    out = {}
    for metric in ("auc", "advantage", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
        rows = [a for a in attacks if a.get(metric) is not None]
        if rows:
            best = max(rows, key=lambda a: a[metric])
            out[metric] = (float(best[metric]), best["attack"])
        elif worst.get(metric) is not None:
            out[metric] = (float(worst[metric]), None)
    return out


def model_size_bytes(entry):
    """``(bytes, what)``: the deployed file's bytes when there is one, else the ideal bytes."""
    file_bytes = _get(entry, ("file", "bytes"))
    if file_bytes:
        return float(file_bytes), ".tflite file"
    ideal = _get(entry, ("size", "ideal_bytes"))
    return (float(ideal), "ideal bytes") if ideal else (None, None)


def compare(entry, reference):
    """How ``entry`` fares against ``reference`` (two report entries).

    Returns:
        ``{"smaller": ratio or None, "size_basis", "accuracy_change", "threats": {threat:
        {"verdict": "better" | "same" | "worse", "value", "reference", "tolerance"}}, "worse":
        [threats]}`` (``tolerance``: see :func:`threat_tolerance`);
        a threat neither entry measured is left out.
    """
    size, size_what = model_size_bytes(entry)
    ref_size, ref_what = model_size_bytes(reference)
    if size_what != ref_what and reference.get("role") != "dense":
        # A file against another model's ideal bytes says nothing; a dense model's ideal bytes
        # are its float32 weights, the honest "before" of any deployed file.
        size = ref_size = None
    acc, ref_acc = entry.get("accuracy"), reference.get("accuracy")
    threats = {}
    for threat, path, higher_is_safer in THREATS:
        value, ref = _get(entry, path), _get(reference, path)
        if value is None or ref is None:
            continue
        delta = (value - ref) if higher_is_safer else (ref - value)
        tolerance = threat_tolerance(threat, reference)
        verdict = "same" if abs(delta) <= tolerance else ("better" if delta > 0 else "worse")
        threats[threat] = {"verdict": verdict, "value": float(value), "reference": float(ref),
                           "tolerance": float(tolerance)}
    return {
        "model": entry["name"], "against": reference["name"], "against_role": reference.get("role"),
        "smaller": ref_size / size if size and ref_size else None,
        "size_basis": None if size is None or ref_size is None else f"{ref_what} -> {size_what}",
        "accuracy_change": None if acc is None or ref_acc is None else float(acc - ref_acc),
        "threats": threats,
        "worse": [t for t, v in threats.items() if v["verdict"] == "worse"],
    }


def size_text(comparison):
    """How a :func:`compare` row's size reads in words, the right way round.

    ``"10.0x (ideal bytes -> ideal bytes)"`` when the model is smaller than the reference; when
    it is larger (a small model's ``.tflite`` file carries more than its float32 weights),
    ``"larger: .tflite file is 3.3x dense's ideal bytes"`` rather than a ratio below 1 that
    reads as "smaller"; ``"-"`` without a like-for-like basis.
    """
    ratio = comparison.get("smaller")
    if ratio is None:
        return "-"
    if ratio >= 1:
        return f"{ratio:.1f}x ({comparison['size_basis']})"
    ref_what, what = comparison["size_basis"].split(" -> ")
    return f"larger: {what} is {1 / ratio:.1f}x {comparison['against']}'s {ref_what}"


def comparisons(models):
    """Every non-dense model against the dense model and against the unsafe baseline (if any)."""
    dense = next((m for m in models if m.get("role") == "dense"), None)
    baseline = next((m for m in models if m.get("role") == "unsafe baseline"), None)
    rows = []
    for entry in models:
        if entry is dense:
            continue
        for reference in (dense, baseline):
            if reference is not None and reference is not entry:
                rows.append(compare(entry, reference))
    return rows


def membership_verdict(membership, accuracy=None):
    """One paragraph in plain words: how much a membership audit reveals, and why.

    Args:
        membership: an audit dict (``worst``, ``attacks``, ``n_members``, ``n_nonmembers``).
        accuracy: optional ``{"members": acc, "nonmembers": acc}`` (train / unseen accuracy).

    Returns:
        ``(level, paragraph)`` with level ``"high"``, ``"moderate"`` or ``"low"``.
    """
    worst = worst_by_metric(membership)
    auc, auc_attack = worst.get("auc", (0.5, None))
    tpr, tpr_attack = worst.get("tpr_at_1pct_fpr", (None, None))
    n_non = membership.get("n_nonmembers") or 0
    min_fpr = 1.0 / n_non if n_non else 1.0
    resolves_1pct = min_fpr <= 0.01
    ratio = tpr / 0.01 if tpr is not None and resolves_1pct else None
    if (ratio is not None and ratio >= 3) or auc >= 0.7:
        level = "high"
    elif (ratio is not None and ratio >= 1.5) or auc >= 0.6:
        level = "moderate"
    else:
        level = "low"
    words = {"high": "High membership risk", "moderate": "Moderate membership risk", "low": "Low membership risk"}
    parts = [f"{words[level]}."]
    if ratio is not None:
        parts.append(f"The strongest attack at a 1% false-positive rate ({attack_label(tpr_attack)}) picks out "
                     f"{tpr:.1%} of the training examples, {ratio:.1f} times what guessing achieves "
                     f"(1%); an attacker who must rarely be wrong {'can' if ratio >= 3 else 'can hardly'} "
                     "tell who was in the training data.")
    else:
        parts.append(f"With {n_non} non-members the audit cannot resolve a 1% false-positive rate "
                     f"(its smallest is {min_fpr:.1%}); use at least 100 non-members, better 1,000, for that.")
    parts.append(f"The best AUC is {auc:.3f} ({attack_label(auc_attack)}; 0.5 is chance, 1.0 is always right).")
    if accuracy and accuracy.get("members") is not None and accuracy.get("nonmembers") is not None:
        gap = accuracy["members"] - accuracy["nonmembers"]
        cause = ("a gap this wide is the usual cause: the model behaves differently on data it memorized"
                 if gap > 0.05 else "the gap is small, so the model does not behave very differently on "
                 "training data")
        parts.append(f"The model is {accuracy['members']:.1%} accurate on its training examples and "
                     f"{accuracy['nonmembers']:.1%} on unseen ones (gap {gap * 100:+.1f} points); {cause}.")
    if level != "low":
        parts.append("To lower it: train with fewer epochs or more data, regularize, or compress with a "
                     "privacy-aware method (tfsafe compress --method=safecompress).")
    return level, " ".join(parts)

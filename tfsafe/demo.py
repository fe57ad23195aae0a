"""The main job end to end on bundled data: what `make demo` / `tfsafe demo` runs.

Dense vs. TF-MOT pruning (the unsafe baseline) vs. a tfsafe method, side by side:

1. Split scikit-learn digits into members / validation / audit non-members / test.
2. Train a small CNN on the members (the dense model).
3. Compress it with ``tfsafe.methods.get("baseline", ...)`` (TF-MOT ``prune_low_magnitude``).
4. Compress it with a tfsafe method through the same verb, ``tfsafe.methods.get(name,
   **params).compress(dense, splits)`` (default: MIA-SafeCompress at the baseline's sparsity).
5. Export the tfsafe model to a full-integer int8 ``.tflite`` (parity-checked against Keras).
6. Evaluate every model on the test split: clean accuracy and adversarial accuracy (Linf, the
   digits eps 0.1, worst case per example over PGD and APGD-CE / APGD-DLR, small settings);
   the ``.tflite`` file gets transfer attacks from the tfsafe Keras model.
7. Audit every model, the ``.tflite`` file included, for membership inference.
8. Write ``report.json`` / ``report.md`` / ``report.html`` (verdicts flag anything worse than
   dense or the baseline), print a compact table and what to look at in it.
"""

import os
import time

import numpy as np

from tfsafe import methods
from tfsafe._keras import keras
from tfsafe.data import load_digits
from tfsafe.errors import InputError
from tfsafe.metrics import model_size
from tfsafe.models import compile_classifier, small_cnn
from tfsafe.progress import Progress, ProgressBar, format_seconds
from tfsafe.report import SafetyReport
from tfsafe.report_verdict import TOLERANCE
from tfsafe.safety.evaluate import DATASET_EPS, evaluate_safety
from tfsafe.safety.membership import FAST_ATTACKS, audit_membership
from tfsafe.safety.tests import PGDTest
from tfsafe.splits import membership_split

__all__ = ["run_demo", "demo_table", "what_to_look_at", "DEMO_METHODS", "Progress"]

# The tfsafe methods the demo can show, with settings that fit its ~2 minute budget on digits
# (``target_sparsity`` / ``epochs`` are filled from run_demo's arguments where a method has them;
# MIA-SafeCompress also scores its candidates with PGD at the digits eps on validation data).
DEMO_METHODS = {
    "safecompress": {"update_every": 10, "num_candidates": 2, "attack_size": 200, "attack_epochs": 3},
    "self_compress": {"safety_size": 100, "monitor_every": 20},
    "atmc": {"steps": 5},
}

STAGES = 8


def _evaluate(model, test, eps, pgd_steps, max_examples, source=None):
    """Clean and adversarial accuracy (worst case over PGD / APGD at ``eps``) on the test split."""
    return evaluate_safety(model, test, tests=["clean", "pgd"], eps=[eps], steps=pgd_steps, restarts=1,
                           max_examples=max_examples, source=source, masking_checks=False)


def _method_params(method, target_sparsity, epochs, params):
    cls = methods.method_class(method)
    merged = dict(DEMO_METHODS.get(method, {}))
    accepted = cls.parameter_names()
    if "target_sparsity" in accepted:
        merged["target_sparsity"] = target_sparsity
    if "epochs" in accepted:
        merged["epochs"] = epochs
    if method == "safecompress" and "tests" not in (params or {}):
        merged["tests"] = [(PGDTest(DATASET_EPS["digits"], steps=5, max_examples=100), 1.0)]
    merged.update(params or {})
    return merged


# Seconds of each stage at the defaults on 2 shared cores (scaled by the settings): the time-left
# estimate multiplies what is left by how fast the finished stages went against these.
_STAGE_SECONDS = (0.1, 8.0, 6.0, 10.0, 2.5, 9.0, 57.0, 1.5)


def _stage_weights(epochs, prune_epochs, pgd_steps, pgd_examples, attacks, audit_size):
    w = list(_STAGE_SECONDS)
    w[1] *= epochs / 60
    w[2] *= prune_epochs / 15
    w[3] *= prune_epochs / 15
    w[5] *= pgd_steps * pgd_examples / 2000
    w[6] *= len(attacks) / 5 * audit_size / 500
    return w


def _time_left(weights, stage, started):
    """``"about 1m05s left"`` at the start of ``stage`` (1-based), from the pace of the stages before it."""
    done, left = sum(weights[:stage - 1]), sum(weights[stage - 1:])
    pace = (time.perf_counter() - started) / done if done >= 1.0 else 1.0
    return f"      elapsed {format_seconds(time.perf_counter() - started)}, about {format_seconds(pace * left)} left"


def run_demo(out_dir="out", epochs=60, prune_epochs=15, target_sparsity=0.8, attacks=FAST_ATTACKS,
             seed=0, min_agreement=None, log=print, verbose=0, method="safecompress", method_params=None,
             pgd_steps=10, pgd_examples=200, audit_size=500):
    """Dense vs. TF-MOT pruning vs. a tfsafe method on digits; int8 export; report in ``out_dir``.

    Args:
        out_dir: folder for ``report.{json,md,html}`` and the ``.tflite`` (+ side-car).
        epochs: training epochs of the dense model (more epochs = more memorization).
        prune_epochs: fine-tuning epochs of the baseline and of the tfsafe method.
        target_sparsity: the sparsity of the baseline and (where it has one) of the tfsafe method.
        attacks: membership attacks (names from ``tfsafe.safety.membership.ATTACKS``).
        seed: seeds the split, the initialization, the methods and the attacks.
        min_agreement: the parity rule's required agreement on confident examples (None:
            the shared default of :class:`tflite_export.parity.ParityRule`).
        log: where progress lines, the table and the notes go.
        verbose: Keras ``fit`` verbosity (1 shows progress bars with their ETA).
        method: the tfsafe method shown (a ``tfsafe.methods`` name other than ``baseline``;
            ``rlnet`` needs a batch-norm CNN and is not offered).
        method_params: extra constructor arguments of ``method`` (override :data:`DEMO_METHODS`).
        pgd_steps: steps of each attack behind the adversarial accuracy.
        pgd_examples: test examples attacked.
        audit_size: members (and as many non-members) in each membership audit.

    Returns:
        The report as a dict (what ``report.json`` holds), plus ``"table"`` and ``"notes"``
        (the lines printed at the end).

    Raises:
        InputError: an unknown or unsupported ``method``, or unknown ``method_params``.

    Example:
        >>> report = run_demo("/tmp/tfsafe-demo", epochs=2, prune_epochs=1, log=lambda m: None)  # doctest: +SKIP
        >>> [m["name"] for m in report["models"]]  # doctest: +SKIP
        ['dense', 'TF-MOT pruning', 'safecompress', 'safecompress int8 .tflite']
    """
    from tflite_export.convert import to_tflite
    from tflite_export.runtime import TFLiteModel

    if method in ("baseline", "rlnet"):
        raise InputError(f"tfsafe demo --method {method}: choose a tfsafe method that compresses the demo's CNN "
                         f"({', '.join(m for m in methods.names() if m not in ('baseline', 'rlnet'))}).")
    params = _method_params(method, target_sparsity, prune_epochs, method_params)
    compressor = methods.get(method, **params)
    baseline = methods.get("baseline", target_sparsity=target_sparsity, epochs=prune_epochs)
    eps = DATASET_EPS["digits"]

    started = time.perf_counter()
    weights = _stage_weights(epochs, prune_epochs, pgd_steps, pgd_examples, attacks, audit_size)
    stage_log = Progress(STAGES, log)

    def progress(message):
        stage_log(message)
        if stage_log.step >= 2:
            log(_time_left(weights, stage_log.step, started))

    progress("loading digits and making member / validation / non-member / test splits")
    (x, y), (xt, yt) = load_digits()
    pool_x, pool_y = np.concatenate([x, xt]), np.concatenate([y, yt])
    splits = membership_split(pool_x, pool_y, seed=seed, train_size=600, validation_size=200,
                              nonmember_size=500, test_size=497)
    (x_train, y_train), (x_test, y_test) = splits.train, splits.test
    members, nonmembers = splits.audit_sets(size=audit_size, seed=seed)

    progress(f"training the dense CNN ({epochs} epochs on {len(x_train)} members)")
    keras.utils.set_random_seed(seed)
    dense = compile_classifier(small_cnn((8, 8, 1), 10), 3e-3)
    dense.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=verbose, validation_data=splits.validation)

    progress(f"TF-MOT pruning to {target_sparsity:.0%}, the unsafe baseline "
             f"(methods.get('baseline').compress, {prune_epochs} epochs)")
    base_result = baseline.compress(dense, splits, seed=seed, verbose=verbose)
    pruned = base_result.stripped

    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k in ("target_sparsity", "epochs", "granularity"))
    selection = ("; candidates scored on validation by accuracy - simulated attacker's advantage + PGD accuracy"
                 if method == "safecompress" else "")
    progress(f"tfsafe method '{method}' (methods.get('{method}', ...).compress: {shown}{selection})")
    result = compressor.compress(dense, splits, seed=seed, verbose=verbose)
    compressed = result.stripped

    progress(f"exporting '{method}' to int8 .tflite and checking parity against Keras")
    os.makedirs(out_dir, exist_ok=True)
    tflite_path = os.path.join(out_dir, f"{method}_int8.tflite")
    export = to_tflite(compressed, tflite_path, mode="int8", representative_data=x_train[:200],
                       verify=(x_test, y_test), min_agreement=min_agreement)
    deployed = TFLiteModel(tflite_path)

    names = ("dense", "TF-MOT pruning", method, f"{method} int8 .tflite")
    models = (dense, pruned, compressed, deployed)
    progress(f"adversarial accuracy at eps {eps:g} (PGD + APGD-CE + APGD-DLR, {pgd_steps} steps, "
             f"{min(pgd_examples, len(x_test))} test examples; the .tflite: transfer from the Keras model)")
    bar = ProgressBar(len(models), "      models attacked", log=None if log is print else log)
    evaluations = []
    for model in models:
        source = compressed if model is deployed else None
        evaluations.append(_evaluate(model, (x_test, y_test), eps, pgd_steps, pgd_examples, source))
        bar.update()

    progress(f"auditing membership ({', '.join(attacks)}) on {len(members[0])} members + "
             f"{len(nonmembers[0])} non-members")
    bar = ProgressBar(len(models), "      models audited", log=None if log is print else log)
    audits = []
    for model in models:
        audits.append(audit_membership(model, members, nonmembers, attacks=attacks, seed=seed))
        bar.update()

    progress("writing the report")
    report = SafetyReport(
        f"tfsafe demo: dense vs TF-MOT pruning (unsafe baseline) vs {method} on digits",
        dataset="scikit-learn digits (8x8, pixels in [0, 1])", splits=splits.sizes(), audit_attacks=list(attacks),
        audit_size=f"{len(members[0])} members + {len(nonmembers[0])} non-members (balanced)",
        adversarial=f"Linf eps {eps:g} (the digits radius), worst case per example over "
                    f"{', '.join(evaluations[0]['robustness']['attacks'])}, {pgd_steps} steps, 1 restart, "
                    f"first {evaluations[0]['robustness']['pgd_examples']} test examples; the .tflite file: "
                    "the same attacks run on the tfsafe Keras model and transferred",
        methods={"baseline": baseline.get_config(), method: compressor.get_config()},
        parity=export.parity.summary(),
        size_headline="ideal bytes = non-zeros x bits / 8; .tflite bytes = the deployed file",
    )
    roles = ("dense", "unsafe baseline", getattr(compressor, "role", "compressed"), "deployed")
    sizes = (model_size(dense), model_size(pruned, reference=dense), model_size(result.model, reference=dense), None)
    for name, role, size, evaluation, audit in zip(names, roles, sizes, evaluations, audits):
        robustness = dict(evaluation["robustness"])
        if role == "deployed":
            # Transfer attacks only bound a file's robustness from above: kept out of the verdict's
            # white-box comparison (pgd_accuracy) and shown as their own number.
            robustness["transfer_pgd_accuracy"] = robustness.pop("pgd_accuracy")
            robustness["transfer_pgd"] = robustness.pop("pgd")
            extra = {"file": {"path": tflite_path, "bytes": export.bytes, "gzip_bytes": export.gzip_bytes,
                              "sparse_encoding": export.sparsity, "ops": export.ops},
                     "parity": export.parity.to_dict()}
        else:
            extra = {"size": size}
        report.add_model(name, role, accuracy=evaluation["accuracy"], robustness=robustness,
                         membership=audit.to_dict(), **extra)
    report.meta["seconds"] = round(time.perf_counter() - started, 1)
    paths = report.save(out_dir)
    stage_log.done()
    data = report.to_dict()
    table = demo_table(data["models"])
    notes = what_to_look_at(data["models"], method)
    log("")
    log(table)
    log("")
    log("What to look at:")
    for line in notes:
        log(f"- {line}")
    log("")
    log(f"wrote {', '.join(paths)} and {tflite_path} in {format_seconds(report.meta['seconds'])}")
    data["table"], data["notes"] = table, notes
    return data


def _get(entry, *path):
    for key in path:
        if not isinstance(entry, dict) or entry.get(key) is None:
            return None
        entry = entry[key]
    return entry


def _size_cell(entry):
    file_bytes = _get(entry, "file", "bytes")
    if file_bytes:
        return f"{file_bytes:,} file ({_get(entry, 'file', 'gzip_bytes'):,} gzip)"
    ideal = _get(entry, "size", "ideal_bytes")
    return "-" if ideal is None else f"{ideal:,.0f} ideal"


def _adversarial_cell(entry):
    white_box = _get(entry, "robustness", "pgd_accuracy")
    if white_box is not None:
        return f"{white_box:.3f}"
    transfer = _get(entry, "robustness", "transfer_pgd_accuracy")
    return "-" if transfer is None else f"{transfer:.3f} (transfer)"


def demo_table(models):
    """The compact Markdown table printed at the end (one row per report entry).

    Keras models show their ideal bytes (non-zeros x bits / 8); the ``.tflite`` row its file and
    gzip bytes and, for adversarial accuracy, the transfer attack from its Keras model.
    """
    head = ["model", "test acc", "adv. acc (eps 0.1)", "MIA AUC (worst)", "TPR@1%FPR", "sparsity", "bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        cells = [m["name"], _fmt(m.get("accuracy"), ".3f"), _adversarial_cell(m),
                 _fmt(_get(m, "membership", "worst", "auc"), ".3f"),
                 _fmt(_get(m, "membership", "worst", "tpr_at_1pct_fpr"), ".3f"),
                 _fmt(_get(m, "size", "sparsity"), ".0%"), _size_cell(m)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _compare(value, reference, higher_is_better):
    delta = (value - reference) if higher_is_better else (reference - value)
    if abs(delta) <= TOLERANCE:
        return "no better than (within 0.01 of)"
    return "better than" if delta > 0 else "WORSE than"


def what_to_look_at(models, method):
    """Three plain lines: where the tfsafe method gains or loses against the baseline and dense.

    The words come from the numbers (differences within the report's tolerance, 0.01, count as
    no difference), so a method that is not better on a threat is said to be so.
    """
    by_role = {m["role"]: m for m in models}
    dense, base = by_role["dense"], by_role["unsafe baseline"]
    ours = next(m for m in models if m["role"] not in ("dense", "unsafe baseline", "deployed"))
    auc = [_get(m, "membership", "worst", "auc") for m in (dense, base, ours)]
    pgd = [_get(m, "robustness", "pgd_accuracy") for m in (dense, base, ours)]
    acc = [m.get("accuracy") for m in (dense, base, ours)]
    gain = (acc[2] - acc[1]) * 100
    lines = [
        f"Accuracy and adversarial accuracy (higher is better): {method} ({_size_cell(ours)} bytes) keeps "
        f"{acc[2]:.3f} vs TF-MOT's {acc[1]:.3f} ({_size_cell(base)} bytes; {gain:+.1f} points; "
        f"dense {acc[0]:.3f}), and under attack {pgd[2]:.3f} vs {pgd[1]:.3f}: {_compare(pgd[2], pgd[1], True)} "
        f"TF-MOT, {_compare(pgd[2], pgd[0], True)} dense ({pgd[0]:.3f}).",
        f"Membership leakage (MIA AUC, lower is safer, 0.5 = guessing): {method} {auc[2]:.3f} vs TF-MOT "
        f"{auc[1]:.3f} and dense {auc[0]:.3f}: {_compare(auc[2], auc[1], False)} TF-MOT, "
        f"{_compare(auc[2], auc[0], False)} dense.",
    ]
    deployed = by_role.get("deployed")
    if deployed is not None:
        file_auc = _get(deployed, "membership", "worst", "auc")
        lines.append(
            f"The int8 .tflite ({_get(deployed, 'file', 'bytes'):,} bytes, "
            f"{_get(deployed, 'file', 'gzip_bytes'):,} gzipped: TFLite stores int8 weights densely, so the zeros "
            "show in the download size) agrees with its Keras model on "
            f"{_get(deployed, 'parity', 'top1_agreement'):.1%} of test inputs; its own audit gives MIA AUC "
            f"{file_auc:.3f} (Keras {auc[2]:.3f}); its adversarial number is a transfer attack (an upper "
            "bound, not comparable with the white-box rows). report.html's verdict flags every threat on "
            "which a model is worse than dense or the baseline.")
    return lines

"""The main job end to end on bundled data: what `make demo` / `tfsafe demo` runs.

1. Split scikit-learn digits into members / validation / audit non-members / test.
2. Train a small CNN (the dense model).
3. Prune it with TF-MOT ``prune_low_magnitude`` to 80% and strip it (the unsafe baseline).
4. Convert the pruned model to a full-integer int8 ``.tflite`` and check it against Keras.
5. Audit dense, pruned and the deployed ``.tflite`` for membership inference.
6. Write ``report.json``, ``report.md`` and ``report.html`` (with plots) side by side.
"""

import os
import time

import numpy as np

from tfsafe._keras import keras, tfmot
from tfsafe.data import load_digits, membership_split
from tfsafe.metrics import model_size
from tfsafe.models import accuracy, compile_classifier, copy_model, small_cnn
from tfsafe.progress import Progress, ProgressBar
from tfsafe.report import SafetyReport
from tfsafe.safety.membership import FAST_ATTACKS, audit_membership

__all__ = ["run_demo", "Progress"]


def _prune_tfmot(dense, x, y, target_sparsity, epochs, batch_size, verbose=0):
    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target_sparsity, begin_step=0,
        end_step=max(1, int(steps * 0.7)), frequency=max(1, steps // 20))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(dense, pruning_schedule=schedule)
    compile_classifier(pruned, 1e-3).fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose,
                               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def run_demo(out_dir="out", epochs=60, prune_epochs=15, target_sparsity=0.8, attacks=FAST_ATTACKS,
             seed=0, min_agreement=None, log=print, verbose=0):
    """Train, prune (TF-MOT), export int8 and audit on digits; write the report into ``out_dir``.

    Args:
        out_dir: folder for ``report.json``, ``report.md``, the models and the ``.tflite``.
        epochs: training epochs of the dense model (more epochs = more memorization).
        prune_epochs: fine-tuning epochs while pruning.
        target_sparsity: the TF-MOT pruning target.
        attacks: membership attacks (names from ``tfsafe.safety.membership.ATTACKS``).
        seed: seeds the split, the initialization and the attacks.
        min_agreement: the parity rule's required agreement on confident examples (None:
            the shared default of :class:`tflite_export.parity.ParityRule`).
        log: where progress lines go.
        verbose: Keras ``fit`` verbosity (1 shows progress bars with their ETA).

    Returns:
        The report as a dict (what ``report.json`` holds).

    Example:
        >>> report = run_demo("/tmp/tfsafe-demo", epochs=2, prune_epochs=1, log=lambda m: None)
        >>> [m["name"] for m in report["models"]]
        ['dense', 'pruned (TF-MOT)', 'pruned int8 .tflite']
    """
    from tflite_export.convert import to_tflite  # noqa: PLC0415
    from tflite_export.runtime import TFLiteModel  # noqa: PLC0415

    started = time.perf_counter()
    progress = Progress(6, log)
    progress("loading digits and making member / validation / non-member / test splits")
    (x, y), (xt, yt) = load_digits()
    pool_x, pool_y = np.concatenate([x, xt]), np.concatenate([y, yt])
    splits = membership_split(pool_x, pool_y, seed=seed, train_size=600, validation_size=200,
                              nonmember_size=500, test_size=497)
    (x_train, y_train), (x_test, y_test) = splits.train, splits.test
    members, nonmembers = splits.audit_sets(seed=seed)

    progress(f"training the dense CNN ({epochs} epochs on {len(x_train)} members)")
    keras.utils.set_random_seed(seed)
    dense = compile_classifier(small_cnn((8, 8, 1), 10), 3e-3)
    dense.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=verbose,
              validation_data=splits.validation)

    progress(f"pruning with TF-MOT prune_low_magnitude to {target_sparsity:.0%} ({prune_epochs} epochs)")
    pruned = _prune_tfmot(copy_model(dense), x_train, y_train, target_sparsity, prune_epochs, 32, verbose)

    progress("converting the pruned model to int8 TFLite and checking parity")
    os.makedirs(out_dir, exist_ok=True)
    tflite_path = os.path.join(out_dir, "pruned_int8.tflite")
    export = to_tflite(pruned, tflite_path, mode="int8", representative_data=x_train[:200],
                       verify=(x_test, y_test), min_agreement=min_agreement)
    deployed = TFLiteModel(tflite_path)

    progress(f"auditing membership ({', '.join(attacks)}) on {len(members[0])} members + "
             f"{len(nonmembers[0])} non-members")
    bar = ProgressBar(3, "      models audited", log=None if log is print else log)
    audits = {}
    for name, m in (("dense", dense), ("pruned", pruned), ("deployed", deployed)):
        audits[name] = audit_membership(m, members, nonmembers, attacks=attacks, seed=seed)
        bar.update()

    progress("writing the report")
    deployed_acc = float(np.mean(deployed.predict(x_test).argmax(axis=1) == y_test))
    report = SafetyReport(
        "tfsafe demo: dense vs TF-MOT pruning (unsafe baseline) on digits",
        dataset="scikit-learn digits (8x8)", splits=splits.sizes(), audit_attacks=list(attacks),
        parity=export.parity.summary(),
        audit_size=f"{len(members[0])} members + {len(nonmembers[0])} non-members (balanced)",
        size_headline="ideal bytes = non-zeros x bits / 8; .tflite bytes = the deployed file",
    )
    report.add_model("dense", "dense", accuracy=accuracy(dense, x_test, y_test), size=model_size(dense),
                     membership=audits["dense"].to_dict())
    report.add_model("pruned (TF-MOT)", "unsafe baseline", accuracy=accuracy(pruned, x_test, y_test),
                     size=model_size(pruned, reference=dense),
                     membership=audits["pruned"].to_dict())
    report.add_model("pruned int8 .tflite", "deployed", accuracy=deployed_acc,
                     file={"path": tflite_path, "bytes": export.bytes, "gzip_bytes": export.gzip_bytes,
                           "sparse_encoding": export.sparsity},
                     parity=export.parity.to_dict(),
                     membership=audits["deployed"].to_dict())
    report.meta["seconds"] = round(time.perf_counter() - started, 1)
    paths = report.save(out_dir)
    progress.done()
    log(report.to_markdown())
    log("wrote " + ", ".join(paths))
    return report.to_dict()

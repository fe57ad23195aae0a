"""Privacy where leakage is real: compression methods against LiRA, DP-SGD beside them.

Settings (both built so the dense model overfits and leaks; dense worst AUC should be >= 0.75):

- ``tabular``: a Purchase-100-like synthetic task generated here with a seeded generator:
  ``--classes`` binary prototypes (``--features`` bits, 25% ones), every row its class's
  prototype with each bit flipped with probability ``--flip``; an MLP (256-128) trained on
  ``--members`` rows.
- ``cifar10``: ``cifar10-10k.npz`` from ``--data_dir`` (train + test pooled), ``--members``
  (2,500 by default) members, a small CNN (32-64 filters, 128 dense) trained to a large
  train/test gap.

All splits come from one pool through :func:`tfsafe.membership_split`: members (train),
validation (SafeCompress's selection), audit non-members (only the audits), test (accuracy)
and reference (SafeCompress's simulated attacker). LiRA's reference models are trained on
random halves of the audit pool (members + audit non-members, ``--reference_models`` of them,
in complementary pairs) with the dense recipe, with :func:`tfsafe.safety.lira.train_reference_models`.

Rows: ``dense``; ``tfmot`` (TF-MOT pruning to ``--sparsity``, ``baseline`` method);
``mia_safecompress`` (``safecompress``, simulated attacker in the TM-score);
``tfmot_early`` (``baseline`` with ``max_steps`` = the step count of the state MIA-SafeCompress
kept, so the gain from selection and the gain from stopping early are told apart);
``mia_safecompress_bounded`` (``max_accuracy_drop=--max_accuracy_drop``: the safest state
within one point of its best validation accuracy);
``safecompress_mia_pgd`` (the TM-score also weighs PGD accuracy: one selection score over two
threats); ``dp_sgd_s{sigma}`` (``dp_sgd`` from scratch at two noise multipliers);
``dp_prune`` (``dp_sgd`` at the lower noise + TF-MOT pruning with the DP optimizer). With
``--relax_alpha``: ``tfmot_relax`` and ``safecompress_relax`` (both trained with
:class:`~tfsafe.objectives.RelaxLoss` at that level) and ``tfmot_relax_early`` (when the latter
kept an early state), ``safecompress_relax_bounded`` (RelaxLoss and ``max_accuracy_drop``).
``--rows`` runs a subset of the pruning rows.

SafeCompress's rounds spend ``K = 3`` batches per accepted step, so it gets
``--safecompress_epochs`` (default :func:`matched_epochs`: as many accepted training steps as
TF-MOT's ``--compress_epochs``); the ``steps`` column counts accepted steps.

Columns: test accuracy; LiRA worst AUC and TPR at 0.1% / 1% FPR (worst over LiRA's scores,
from the full ROC); RMIA's (when ``tfsafe.safety.rmia`` is present); tensorflow-privacy's worst
AUC over its fast attacks (threshold, entropy, LR, k-NN, MLP) on balanced members / audit
non-members; epsilon (DP rows; delta in the JSON); kernel sparsity; int8 ``.tflite`` bytes.
``min_fpr`` is the smallest FPR the audit pool resolves (1 / non-members): TPR at a lower FPR
is flagged ``unresolved``. Output: ``<out>/privacy_<setting>.json``, ``.md`` and ``.html`` (the
table and a plot of TPR at 1% FPR against test accuracy).

Usage:
    PYTHONPATH=. .venv/bin/python benchmarks/privacy_bench.py --setting tabular
    PYTHONPATH=. .venv/bin/python benchmarks/privacy_bench.py --setting cifar10 \\
        --data_dir /work/shared/data/cifar10 --reference_models 16
    PYTHONPATH=. .venv/bin/python benchmarks/privacy_bench.py --setting tabular --small  # minutes

Flags beyond the sizes: ``--plot PNG`` writes the TPR@1%FPR-vs-accuracy plot as a file;
``--from_json`` re-renders table, HTML and plot from a run's JSON (``--from_log`` from the rows
an interrupted run printed, marked partial); ``--skip_dp`` / ``--only_dp`` leave out the DP rows
/ the pruning rows; ``--dp_optimizer sgd`` trains DP-SGD with plain SGD (Abadi et al. 2016);
``--ref_dir`` reuses a run's reference models; ``--lira_augment flip`` queries LiRA with
flipped images too. :func:`targets` checks the issue's two targets on the rows.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import numpy as np  # noqa: E402
from privacy_report import report_from_log, save_plot, targets, to_html, to_markdown  # noqa: E402

import tfsafe  # noqa: E402
import tfsafe.methods  # noqa: E402
from tflite_export.convert import to_tflite  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.io import atomic_write_json, atomic_write_text  # noqa: E402
from tfsafe.methods.safecompress import SafeCompress  # noqa: E402
from tfsafe.methods.safecompress_selection import batches_per_step  # noqa: E402
from tfsafe.metrics import model_size  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, mlp, small_cnn  # noqa: E402
from tfsafe.safety.lira import lira_audit, train_reference_models  # noqa: E402
from tfsafe.safety.membership import FAST_ATTACKS, audit_membership  # noqa: E402
from tfsafe.safety.tests import PGDTest  # noqa: E402

try:  # RMIA lands with the LiRA/RMIA work (engineer h9's branch); the table says when it is absent.
    from tfsafe.safety.rmia import rmia_audit  # noqa: E402
except ImportError:
    rmia_audit = None


def purchase_like(n, features, classes, flip, seed):
    """A seeded Purchase-100-like task: binary rows near one of ``classes`` binary prototypes.

    Returns:
        ``(x, y)``: float32 (n, features) in {0, 1} and int64 (n,) labels.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.random((classes, features)) < 0.25
    y = rng.integers(0, classes, n)
    x = prototypes[y] ^ (rng.random((n, features)) < flip)
    return x.astype(np.float32), y.astype(np.int64)


def load_setting(args):
    """``(x, y, build)``: the pool and a function returning a fresh (uncompiled) model."""
    if args.setting == "tabular":
        x, y = purchase_like(args.pool, args.features, args.classes, args.flip, args.seed)
        return x, y, lambda: mlp((args.features,), args.classes, units=(256, 128))
    path = os.path.join(args.data_dir or "", "cifar10-10k.npz")
    if not os.path.isfile(path):
        sys.exit(f"--setting cifar10 needs --data_dir with cifar10-10k.npz; '{path}' does not exist.")
    with np.load(path, allow_pickle=False) as data:
        x = np.concatenate([data["x_train"], data["x_test"]]).astype(np.float32) / 255.0
        y = np.concatenate([data["y_train"], data["y_test"]]).reshape(-1).astype(np.int64)
    keep = np.random.default_rng(args.seed).permutation(len(x))[:args.pool]
    return x[keep], y[keep], lambda: small_cnn((32, 32, 3), 10, filters=(32, 64), dense=128)


def evaluate(name, model, splits, pool, is_member, ref_dir, args, extra=None):
    """One table row: accuracy, LiRA / RMIA / tensorflow-privacy leakage, size, .tflite bytes."""
    row = {"row": name, "test_accuracy": accuracy(model, *splits.test)}
    population = {"population": splits.reference} if rmia_audit is not None else {}
    lira = lira_audit(model, pool, is_member, ref_dir, augmentations=args.lira_augment, **population)
    row.update(lira_auc=lira.worst["auc"], lira_tpr_at_01pct_fpr=lira.worst["tpr_at_01pct_fpr"],
               lira_tpr_at_1pct_fpr=lira.worst["tpr_at_1pct_fpr"], lira_attack=lira.worst.get("attack"),
               unresolved=lira.worst.get("unresolved"))
    if rmia_audit is not None:
        rmia = rmia_audit(model, pool, is_member, ref_dir, **population)
        row.update(rmia_auc=rmia.worst["auc"], rmia_tpr_at_01pct_fpr=rmia.worst["tpr_at_01pct_fpr"],
                   rmia_tpr_at_1pct_fpr=rmia.worst["tpr_at_1pct_fpr"])
    members, nonmembers = splits.audit_sets(seed=args.seed)
    tfp = audit_membership(model, members, nonmembers, attacks=FAST_ATTACKS, seed=args.seed)
    row["tfp_auc"] = tfp.worst["auc"]
    row["sparsity"] = model_size(model)["sparsity"]
    try:
        export = to_tflite(model, os.path.join(args.out, "tflite", f"{args.setting}_{name}.tflite"), "int8",
                           representative_data=splits.train[0][:200], verify=splits.test, min_agreement=0.9)
        row["tflite_bytes"], row["tflite_gzip_bytes"] = int(export.bytes), int(export.gzip_bytes)
    except Exception as err:  # a failed export is a table cell, not a crash
        row["tflite_bytes"], row["tflite_error"] = None, f"{type(err).__name__}: {err}"[:200]
    row.update(extra or {})
    print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def _selection_columns(selection, seconds):
    """What SafeCompress's selection kept, said in the row (an early state is not hidden)."""
    return {"steps": selection.get("kept_step"), "seconds": seconds, "selection": selection.get("note"),
            "early_state": selection.get("early_state"),
            "selection_tests": [t["name"] for t in selection.get("tests", [])],
            "selection_tm_scores": [c.get("tm_score") for c in selection.get("checks", [])]}


def compress(name, model, splits, **params):
    started = time.perf_counter()
    result = tfsafe.methods.get(name, **params).compress(model, splits, seed=0, verbose=0)
    return result, time.perf_counter() - started


PRUNING_ROWS = ("tfmot", "mia_safecompress", "tfmot_early", "mia_safecompress_bounded", "safecompress_mia_pgd")
RELAX_ROWS = ("tfmot_relax", "safecompress_relax", "tfmot_relax_early", "safecompress_relax_bounded")


def matched_epochs(epochs):
    """SafeCompress epochs (at its default candidates and ``end_fraction``) that give as many
    accepted training steps as ``epochs`` of TF-MOT.

    Example:
        >>> matched_epochs(15)
        38
    """
    method = SafeCompress()
    return int(np.ceil(epochs * batches_per_step(method.num_candidates, method.end_fraction)))


def _pruning_rows(dense, splits, pool, is_member, ref_dir, args):
    """TF-MOT pruning (full and stopped at MIA-SafeCompress's kept step), the SafeCompress rows
    and, with ``--relax_alpha``, both methods trained with RelaxLoss (``--rows`` picks a subset)."""
    rows, wanted = [], set(args.rows or PRUNING_ROWS + (RELAX_ROWS if args.relax_alpha else ()))

    def add(row, method, **params):
        if row not in wanted:
            return None
        result, seconds = compress(method, dense, splits, **params)
        extra = ({"steps": result.info.get("steps"), "seconds": seconds} if method == "baseline"
                 else _selection_columns(result.selection, seconds))
        if params.get("relax_alpha"):
            extra["relax_alpha"] = params["relax_alpha"]
        rows.append(evaluate(row, result.stripped, splits, pool, is_member, ref_dir, args, extra))
        return result

    prune = {"target_sparsity": args.sparsity, "epochs": args.compress_epochs, "batch_size": args.batch_size}
    sc = {**prune, "epochs": args.safecompress_epochs, "update_every": args.update_every,
          "attack_size": args.attack_size, "attack_epochs": 5}
    add("tfmot", "baseline", **prune)
    kept = add("mia_safecompress", "safecompress", **sc)
    if kept is not None:
        add("tfmot_early", "baseline", **prune, max_steps=kept.selection.get("kept_step"))
    add("mia_safecompress_bounded", "safecompress", **sc, max_accuracy_drop=args.max_accuracy_drop)
    add("safecompress_mia_pgd", "safecompress", **sc, tests=[(PGDTest(args.pgd_eps, steps=5), args.pgd_weight)])
    if args.relax_alpha:
        relax = {"relax_alpha": args.relax_alpha}
        add("tfmot_relax", "baseline", **prune, **relax)
        kept = add("safecompress_relax", "safecompress", **sc, **relax)
        if kept is not None and kept.selection.get("early"):
            add("tfmot_relax_early", "baseline", **prune, **relax, max_steps=kept.selection.get("kept_step"))
        add("safecompress_relax_bounded", "safecompress", **sc, **relax, max_accuracy_drop=args.max_accuracy_drop)
    return rows


def run(args):
    os.makedirs(os.path.join(args.out, "tflite"), exist_ok=True)
    x, y, build = load_setting(args)
    splits = tfsafe.membership_split(x, y, seed=args.seed, train_size=args.members, validation_size=args.validation,
                                     nonmember_size=args.members, test_size=args.test, reference_size=args.reference)
    print(f"{args.setting}: splits {splits.sizes()}", flush=True)
    # The LiRA audit pool: every member and every audit non-member.
    pool = (np.concatenate([splits.train[0], splits.nonmembers[0]]),
            np.concatenate([splits.train[1], splits.nonmembers[1]]))
    is_member = np.arange(len(pool[0])) < len(splits.train[0])

    def fresh():
        return compile_classifier(build(), args.learning_rate)

    keras.utils.set_random_seed(args.seed)
    dense = fresh()
    started = time.perf_counter()
    dense.fit(*splits.train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    print(f"dense trained in {time.perf_counter() - started:.0f} s", flush=True)
    augmented = "".join("_" + a for a in args.lira_augment)
    ref_dir = args.ref_dir or os.path.join(args.out, f"refs_{args.setting}_seed{args.seed}{augmented}")
    # With RMIA (h9's reference models), the reference split is RMIA's population z.
    population = {"population": splits.reference} if rmia_audit is not None else {}
    train_reference_models(fresh, pool, ref_dir, num_models=args.reference_models, seed=args.seed,
                           fit_kwargs={"epochs": args.epochs, "batch_size": args.batch_size}, log=print,
                           augmentations=args.lira_augment, **population)

    rows = [evaluate("dense", dense, splits, pool, is_member, ref_dir, args)]
    if not args.only_dp:
        rows += _pruning_rows(dense, splits, pool, is_member, ref_dir, args)
    if args.skip_dp:
        return _report(args, splits, rows)
    dp = {"epochs": args.dp_epochs, "batch_size": args.dp_batch_size, "learning_rate": args.dp_learning_rate,
          "l2_norm_clip": args.clip, "optimizer": args.dp_optimizer}
    for sigma in args.noise:
        result, seconds = compress("dp_sgd", dense, splits, noise_multiplier=sigma, **dp)
        rows.append(evaluate(f"dp_sgd_s{sigma:g}", result.stripped, splits, pool, is_member, ref_dir, args,
                             {"epsilon": result.info["epsilon"], "delta": result.info["delta"],
                              "steps": result.info["steps"], "seconds": seconds}))
    result, seconds = compress("dp_sgd", dense, splits, noise_multiplier=min(args.noise), target_sparsity=args.sparsity,
                               prune_epochs=max(1, args.compress_epochs // 2), **dp)
    rows.append(evaluate("dp_prune", result.stripped, splits, pool, is_member, ref_dir, args,
                         {"epsilon": result.info["epsilon"], "delta": result.info["delta"],
                          "steps": result.info["steps"], "seconds": seconds}))
    return _report(args, splits, rows)


def _report(args, splits, rows):
    return {"setting": args.setting, "args": vars(args), "splits": splits.sizes(),
            "min_fpr": 1.0 / len(splits.nonmembers[0]), "reference_models": args.reference_models,
            "rmia": rmia_audit is not None, "dp_skipped": bool(args.skip_dp), "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=("tabular", "cifar10"), default="tabular")
    p.add_argument("--data_dir", default=None, help="folder with cifar10-10k.npz (cifar10 setting)")
    p.add_argument("--out", default="out/privacy_bench")
    p.add_argument("--small", action="store_true", help="a few minutes on two cores: fewer rows of data, "
                   "epochs and reference models (shows the script works; not the headline numbers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=None)
    p.add_argument("--members", type=int, default=None)
    p.add_argument("--features", type=int, default=600)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--flip", type=float, default=0.35)
    p.add_argument("--epochs", type=int, default=None, help="dense and reference-model epochs")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--reference_models", type=int, default=None)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--compress_epochs", type=int, default=None)
    p.add_argument("--update_every", type=int, default=10)
    p.add_argument("--safecompress_epochs", type=int, default=None,
                   help="SafeCompress's epochs (default: as many accepted training steps as TF-MOT's "
                        "--compress_epochs; its rounds spend 3 batches per accepted step)")
    p.add_argument("--attack_size", type=int, default=200)
    p.add_argument("--pgd_eps", type=float, default=None, help="default: 0.1 (tabular), 8/255 (cifar10)")
    p.add_argument("--pgd_weight", type=float, default=0.5)
    p.add_argument("--noise", type=float, nargs=2, default=(0.7, 2.0), help="DP-SGD noise multipliers")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--dp_epochs", type=int, default=None)
    p.add_argument("--dp_batch_size", type=int, default=64)
    p.add_argument("--dp_learning_rate", type=float, default=2e-3)
    p.add_argument("--lira_augment", nargs="*", default=(), choices=("flip",),
                   help="LiRA query augmentations (flip: images also queried flipped, Carlini et al. 2022)")
    p.add_argument("--dp_optimizer", choices=("adam", "sgd"), default="adam",
                   help="DP-SGD's optimizer (sgd: DPKerasSGDOptimizer, as in Abadi et al. 2016)")
    p.add_argument("--max_accuracy_drop", type=float, default=0.01,
                   help="the mia_safecompress_bounded row keeps the safest state within this much of its best "
                        "validation accuracy")
    p.add_argument("--relax_alpha", type=float, default=None, help="also the RelaxLoss rows (TF-MOT and "
                   "SafeCompress trained with RelaxLoss at this loss level, nats)")
    p.add_argument("--rows", default=None, type=lambda v: v.split(","),
                   help="comma-separated pruning rows to run (default all): " + ",".join(PRUNING_ROWS + RELAX_ROWS))
    p.add_argument("--only_dp", action="store_true", help="dense and the DP rows only (no pruning rows)")
    p.add_argument("--ref_dir", default=None, help="LiRA reference models' folder (default: under --out); "
                   "reuse a run's folder to skip training them again")
    p.add_argument("--skip_dp", action="store_true", help="leave out the DP-SGD rows (per-example gradients of a "
                   "CNN cost seconds per step on a CPU; the tabular setting's MLP is cheap)")
    p.add_argument("--plot", default=None, help="also write the TPR@1%%FPR-vs-accuracy plot as a PNG here")
    p.add_argument("--from_json", default=None, help="train nothing: re-render the table (.md), the HTML and "
                   "--plot from a privacy_<setting>.json this script wrote")
    p.add_argument("--from_log", default=None, help="train nothing: the report of the rows an interrupted run "
                   "printed to this log (pass the run's --setting and --reference_models)")
    args = p.parse_args(argv)
    args.lira_augment = tuple(args.lira_augment)
    if args.from_json or args.from_log:
        if args.from_json:
            with open(args.from_json) as f:
                report = json.load(f)
            stem = os.path.splitext(args.from_json)[0]
        else:
            report = report_from_log(args.from_log, args)
            stem = os.path.join(args.out, f"privacy_{args.setting}_partial")
            os.makedirs(args.out, exist_ok=True)
        report["targets"] = targets(report)
        markdown = to_markdown(report)
        print(markdown)
        atomic_write_json(stem + ".json", report)
        atomic_write_text(stem + ".md", markdown)
        atomic_write_text(stem + ".html", to_html(report, markdown))
        if args.plot:
            print(f"wrote {save_plot(report, args.plot)}")
        return
    tabular = args.setting == "tabular"
    defaults = {"pool": 2400 if args.small else (6000 if tabular else 20000),
                "members": 600 if args.small else (1500 if tabular else 2500),
                "epochs": 30 if args.small else (60 if tabular else 40),
                "reference_models": 4 if args.small else 16,
                "compress_epochs": 6 if args.small else 20,
                "dp_epochs": 10 if args.small else 30,
                "pgd_eps": 0.1 if tabular else 8 / 255}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.safecompress_epochs is None:
        args.safecompress_epochs = matched_epochs(args.compress_epochs)
    args.validation = args.test = args.reference = max(100, (args.pool - 2 * args.members) // 3)
    if args.small:
        args.update_every, args.attack_size = 5, 100
    started = time.perf_counter()
    report = run(args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["targets"] = targets(report)
    markdown = to_markdown(report)
    print(markdown)
    stem = os.path.join(args.out, f"privacy_{args.setting}{'_small' if args.small else ''}")
    atomic_write_json(stem + ".json", report)
    atomic_write_text(stem + ".md", markdown)
    atomic_write_text(stem + ".html", to_html(report, markdown))
    print(f"wrote {stem}.json/.md/.html in {report['seconds']:.0f} s")
    if args.plot:
        print(f"wrote {save_plot(report, args.plot)}")


if __name__ == "__main__":
    main()

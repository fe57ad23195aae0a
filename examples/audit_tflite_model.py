"""Audit a .tflite from my phone app: membership leakage, transfer attacks and corruptions.

A ``.tflite`` has no gradients, so it is audited the way an attacker who unpacked the app could
attack it: black-box membership inference on its outputs (tensorflow-privacy: threshold,
entropy and trained attackers; worst case over attacks), Linf PGD examples crafted on a Keras
*source* model and transferred to the file, and natural corruptions (noise, blur, contrast,
brightness, pixelate, JPEG x 5 severities). The source is ``--source`` (your float Keras model:
the strongest transfer), else -- the attacker's view -- a surrogate CNN trained on the file's
own answers to ``--public`` inputs (model extraction by querying).

Without ``--model`` it first builds an app model so it runs out of the box: a small CNN
trained on the members of the bundled digits, exported to a checked int8 ``app_int8.tflite``
(its float model is then the source). With ``--model`` pass the data it was trained on:

Run:
    .venv/bin/python examples/audit_tflite_model.py            # digits, ~30 s on 2 cores
    .venv/bin/python examples/audit_tflite_model.py --model app.tflite --members members.npz \\
        --nonmembers nonmembers.npz --test test.npz [--source float_model.keras] [--public public.npz]

``.npz`` files hold arrays ``x`` (float32 in the model's input range, shaped like its input)
and ``y`` (integer labels; ``--public`` needs only ``x``). Members: examples the model was
trained on; non-members: examples from the same distribution it never saw. Writes
``report.json/.md/.html`` into ``--out``.
"""

import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402
import numpy as np  # noqa: E402

import tfsafe  # noqa: E402
from tflite_export import TFLiteModel, to_tflite  # noqa: E402
from tfsafe.errors import InputError  # noqa: E402
from tfsafe.models import small_cnn  # noqa: E402


def build_app_model(splits, args):
    """The default "app": a small CNN trained on the members, exported to a checked int8 file."""
    dense = common.train_dense(splits, args.dense_epochs, seed=args.seed)
    path = os.path.join(args.out, "app_int8.tflite")
    export = to_tflite(dense, path, "int8", splits.train[0], verify=splits.test, min_agreement=0.95)
    print(f"built {path}: {export.bytes:,} bytes, top-1 agreement with its float model "
          f"{export.parity.top1_agreement:.4f}")
    return path, dense


def train_surrogate(app, x_public, epochs, seed):
    """Model extraction: label public inputs by querying the .tflite, fit a small CNN on the answers."""
    labels = app.predict(x_public).argmax(axis=1)
    tfsafe.keras.utils.set_random_seed(seed)
    surrogate = small_cnn(x_public.shape[1:], app.num_classes, name="surrogate")
    surrogate.compile(tfsafe.keras.optimizers.Adam(3e-3),
                      tfsafe.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    surrogate.fit(x_public, labels, epochs=int(epochs), batch_size=32, verbose=0)
    agreement = float(np.mean(surrogate.predict(x_public, verbose=0).argmax(axis=1) == labels))
    print(f"surrogate trained on {len(x_public)} queries; agrees with the app on {agreement:.1%} of them")
    return surrogate


def main(argv=None):
    p = common.parser("audit_tflite_model", __doc__)
    p.add_argument("--model", default=None, help="the app's .tflite (default: build one on --data)")
    p.add_argument("--members", default=None, help=".npz (x, y) of examples the model was trained on")
    p.add_argument("--nonmembers", default=None, help=".npz (x, y) of examples it never saw")
    p.add_argument("--test", default=None, help=".npz (x, y) test data (default: the --data test split)")
    p.add_argument("--source", default=None, help="float .keras model for transfer attacks (default: a surrogate)")
    p.add_argument("--public", default=None, help=".npz (x) attacker data for the surrogate "
                   "(default: the --data validation + reference splits)")
    p.add_argument("--surrogate_epochs", type=int, default=30)
    args = common.parse(p, argv)
    if args.model and not (args.members and args.nonmembers):
        p.error("with --model, pass --members and --nonmembers (.npz with x, y): the membership audit needs the "
                "data your model was trained on and data it never saw")
    clock = common.Clock()
    os.makedirs(args.out, exist_ok=True)
    splits = common.load_splits(args)

    float_model = None
    if args.model:
        if not args.model.endswith(".tflite") or not os.path.isfile(args.model):
            raise InputError(f"--model '{args.model}' is not an existing .tflite file.")
        path = args.model
    else:
        clock(f"building an app model on {args.data} (dense CNN, {args.dense_epochs} epochs, int8 export)")
        path, float_model = build_app_model(splits, args)
    app = TFLiteModel(path)
    members, nonmembers = splits.audit_sets(seed=args.seed)
    if args.members:
        members, nonmembers = common.load_npz(args.members, "members"), common.load_npz(args.nonmembers, "nonmembers")
    test = common.load_npz(args.test, "test") if args.test else splits.test

    if args.source:
        source, source_kind = tfsafe.load_model(args.source), f"--source {args.source}"
    elif float_model is not None:
        source, source_kind = float_model, "the float model the file was converted from"
    else:
        x_public = (common.load_npz(args.public, "public", need_y=False)[0] if args.public
                    else np.concatenate([splits.validation[0], splits.reference[0]]))
        clock(f"no --source: training a surrogate by querying the app on {len(x_public)} public inputs")
        source, source_kind = train_surrogate(app, x_public, args.surrogate_epochs, args.seed), \
            "a surrogate trained on the app's answers (black-box extraction)"
    # mCE is relative to a float model of the same task; a surrogate is not one.
    reference = None if "surrogate" in source_kind else source

    clock(f"auditing {path}: membership ({len(members[0])} members / {len(nonmembers[0])} non-members), "
          f"transfer PGD from {source_kind}, corruptions")
    data = {"test": test, "members": members, "nonmembers": nonmembers}
    evaluation = common.evaluate_safety(path, data, tests=list(common.TESTS), source=source, reference=reference,
                                        eps=[args.eps], steps=args.pgd_steps, restarts=args.pgd_restarts,
                                        max_examples=args.eval_size, membership_attacks=args.attacks)
    tests = evaluation["tests"]
    for row in tests["membership"]["attacks"]:
        print(f"  membership {row['attack']:>20}: AUC {row['auc']:.3f}, advantage {row['advantage']:.3f}, "
              f"TPR@1%FPR {row['tpr_at_1pct_fpr']:.3f}")
    pgd = tests[f"pgd_linf_{args.eps:g}"]
    print(f"  transfer PGD eps {args.eps:g}: accuracy {pgd['clean_accuracy']:.4f} -> {pgd['accuracy']:.4f} "
          f"on {pgd['n']} test images")
    per_corruption = tests["corruptions"].get("per_corruption") or {}
    hardest = sorted(per_corruption.items(), key=lambda kv: kv[1])[:3]
    print(f"  corruptions: mean accuracy {tests['corruptions']['mean_accuracy']:.4f}; hardest: "
          + ", ".join(f"{name} {acc:.3f}" for name, acc in hardest))
    clock("done")
    file_info = {"path": path, "bytes": os.path.getsize(path)}
    with open(path, "rb") as f:
        file_info["gzip_bytes"] = len(gzip.compress(f.read()))
    sizes = {"members": len(members[0]), "nonmembers": len(nonmembers[0]), "test": len(test[0])}
    rows = [(os.path.basename(path), "deployed", evaluation, None, {"file": file_info})]
    return common.report(f"Audit of {os.path.basename(path)}", args, sizes, rows, args.out, model=path,
                         transfer_source=source_kind)


if __name__ == "__main__":
    common.run(main)

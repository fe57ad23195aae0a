"""What the examples share: flags, protocol splits, the dense model, evaluation and the table.

Not part of the tfsafe API; each example imports it from its own folder. Everything here is
plain use of public tfsafe functions, so an example reads top to bottom with this file open.
"""

import argparse
import glob
import logging
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from tflite_export.convert import to_tflite  # noqa: E402
from tfsafe._keras import keras, tf  # noqa: E402
from tfsafe.data import load_dataset, membership_split  # noqa: E402
from tfsafe.errors import InputError, TfsafeError  # noqa: E402
from tfsafe.metrics import model_size  # noqa: E402
from tfsafe.models import small_cnn  # noqa: E402
from tfsafe.report import SafetyReport  # noqa: E402
from tfsafe.safety.evaluate import DATASET_EPS, evaluate_safety  # noqa: E402
from tfsafe.safety.membership import DEFAULT_ATTACKS, FAST_ATTACKS  # noqa: E402

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
# Split sizes of the evaluation protocol (members / model selection / audit non-members / test /
# attacker's reference data). Digits has 1,797 images in all; the others are subsampled.
DIGITS_SPLITS = {"train_size": 600, "validation_size": 200, "nonmember_size": 400, "test_size": 400,
                 "reference_size": 197}


def data_parser(name, doc, dense_epochs=30):
    """An argparse parser with the data and output flags every example takes."""
    p = argparse.ArgumentParser(prog=f"examples/{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=DATASETS, default=None,
                   help="dataset (default: digits, bundled; with --data_dir: guessed from the files)")
    p.add_argument("--data_dir", default=None, help="folder with the dataset files (offline), e.g. "
                   "/work/shared/data/mnist")
    p.add_argument("--out", default=os.path.join("out", "examples", name), help="output folder")
    p.add_argument("--train_size", type=int, default=5000,
                   help="training examples used from mnist/fashion_mnist/cifar10 (digits: 600 members)")
    p.add_argument("--dense_epochs", type=int, default=dense_epochs, help="training epochs of the dense model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_html", action="store_true", help="write report.json and .md only (no plots)")
    return p


def parser(name, doc, dense_epochs=30):
    """:func:`data_parser` plus the evaluation flags (attack radius and strength, membership attacks)."""
    p = data_parser(name, doc, dense_epochs)
    p.add_argument("--eps", type=float, default=None,
                   help="Linf radius of the PGD attack (default: 0.1 digits, 0.3 MNIST, 8/255 CIFAR-10)")
    p.add_argument("--pgd_steps", type=int, default=20, help="PGD steps of the evaluation attack (>= 20)")
    p.add_argument("--pgd_restarts", type=int, default=1, help="PGD random restarts of the evaluation attack")
    p.add_argument("--eval_size", type=int, default=300,
                   help="test images attacked and corrupted (clean accuracy uses the whole test split)")
    p.add_argument("--attacks", default="fast",
                   help="membership attacks: 'fast' (all but the random forest), 'all', or a comma list")
    return p


def parse(p, argv):
    """Parse ``argv`` and settle the defaults that depend on other flags."""
    args = p.parse_args(argv)
    if args.dense_epochs < 1 or args.train_size < 1:
        p.error("--dense_epochs and --train_size must be >= 1")
    if args.data is None:
        args.data = "digits" if args.data_dir is None else guess_dataset(args.data_dir)
    if hasattr(args, "pgd_steps"):
        if args.pgd_steps < 20 or args.pgd_restarts < 1:
            p.error("the evaluation protocol needs --pgd_steps >= 20 and --pgd_restarts >= 1 "
                    "(a weaker attack overstates robustness)")
        if args.eval_size < 1:
            p.error("--eval_size must be >= 1")
        if args.eps is None:
            args.eps = DATASET_EPS[args.data]
        if args.attacks == "fast":
            args.attacks = FAST_ATTACKS
        elif args.attacks == "all":
            args.attacks = DEFAULT_ATTACKS
        else:
            args.attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    quiet_logs()
    return args


def guess_dataset(data_dir):
    """``cifar10`` when the folder looks like CIFAR-10, else ``mnist``."""
    names = " ".join(os.path.basename(p).lower() for p in glob.glob(os.path.join(data_dir, "*")))
    guess = "cifar10" if ("cifar" in names or "data_batch" in names or "cifar" in data_dir.lower()) else "mnist"
    print(f"--data not given: using {guess} for --data_dir {data_dir} (pass --data to choose)")
    return guess


def quiet_logs():
    """Keep TensorFlow's INFO chatter out of the example's output."""
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


def load_splits(args):
    """Protocol splits of ``--data``: members / validation / audit non-members / test / reference."""
    (x, y), (xt, yt) = load_dataset(args.data, args.data_dir)
    pool_x, pool_y = np.concatenate([x, xt]), np.concatenate([y, yt])
    if args.data == "digits":
        sizes = DIGITS_SPLITS
    else:
        n = int(args.train_size)
        sizes = {"train_size": n, "validation_size": max(200, n // 5), "nonmember_size": n,
                 "test_size": max(500, n // 2), "reference_size": max(200, n // 5)}
    splits = membership_split(pool_x, pool_y, seed=args.seed, **sizes)
    print(f"data: {args.data} {tuple(x.shape[1:])}, splits {splits.sizes()}")
    return splits


def num_classes(splits):
    return int(np.max(splits.train[1])) + 1


def train_dense(splits, epochs, seed=0, build=None, learning_rate=3e-3, batch_size=32):
    """The dense model a user starts from: ``small_cnn`` trained on the members only."""
    keras.utils.set_random_seed(seed)
    x, y = splits.train
    model = (build or small_cnn)(x.shape[1:], num_classes(splits))
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=int(epochs), batch_size=batch_size, verbose=0)
    return model


TESTS = ("clean", "pgd", "corruptions", "membership")


def evaluate(model, splits, args, source=None, reference=None, tests=TESTS):
    """Clean accuracy, Linf PGD (random start, worst case over CE and margin losses and a
    transfer attack from ``source``), corruptions (mCE against ``reference``) and the worst-case
    membership audit on balanced members vs. untouched audit non-members."""
    return evaluate_safety(model, splits, tests=list(tests), source=source,
                           reference=reference, eps=[args.eps], steps=args.pgd_steps, restarts=args.pgd_restarts,
                           max_examples=args.eval_size, membership_attacks=args.attacks)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _get(entry, *path):
    for key in path:
        entry = entry.get(key) if isinstance(entry, dict) else None
    return entry


def table(entries, eps):
    """A short Markdown before/after table of report entries; columns nobody measured are left out."""
    columns = [
        ("model", ("name",), "s"), ("test acc", ("accuracy",), ".4f"),
        (f"PGD acc (eps {eps:g})", ("robustness", "pgd_accuracy"), ".4f"),
        ("corruption acc", ("robustness", "corruption_mean_accuracy"), ".4f"),
        ("MIA AUC (worst)", ("membership", "worst", "auc"), ".3f"),
        ("MIA advantage", ("membership", "worst", "advantage"), ".3f"),
        ("non-zeros", ("size", "nonzeros"), ","), ("avg bits", ("size", "average_bits"), ".1f"),
        ("ideal KB", ("size", "ideal_kb"), ".1f"), ("size vs dense", ("size", "compression_ratio"), ".3f"),
        ("ReLUs", ("size", "relu_count"), ","), (".tflite KB", ("file", "kb"), ".1f"),
    ]
    rows = []
    for entry in entries:
        entry = dict(entry)
        if entry.get("size"):
            entry["size"] = dict(entry["size"], ideal_kb=entry["size"]["ideal_bytes"] / 1024)
        if _get(entry, "file", "bytes") is not None:
            entry["file"] = dict(entry["file"], kb=entry["file"]["bytes"] / 1024)
        rows.append([_fmt(_get(entry, *path), spec) for _, path, spec in columns])
    keep = [i for i in range(len(columns)) if any(row[i] != "-" for row in rows)]
    lines = ["| " + " | ".join(columns[i][0] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(row[i] for i in keep) + " |" for row in rows]
    return "\n".join(lines)


def export_int8(model, path, splits, min_agreement=0.95):
    """Checked full-integer int8 ``.tflite`` of ``model``; returns the report's ``file`` entry."""
    export = to_tflite(model, path, "int8", splits.train[0], verify=splits.test, min_agreement=min_agreement)
    print(f"int8 .tflite: {export.bytes:,} bytes ({export.gzip_bytes:,} gzipped), top-1 agreement with Keras "
          f"{export.parity.top1_agreement:.4f}")
    return {"path": export.path, "bytes": export.bytes, "gzip_bytes": export.gzip_bytes,
            "top1_agreement": export.parity.top1_agreement}


def report(title, args, sizes, rows, out_dir, **meta):
    """Print the table and write ``report.json/.md/.html`` into ``out_dir``.

    ``sizes`` describes the data (e.g. ``splits.sizes()``); ``rows`` are
    ``(name, role, evaluation, size)`` or ``(name, role, evaluation, size, extra_fields)``.
    """
    rep = SafetyReport(title, dataset=args.data, splits=sizes, eps=args.eps,
                       pgd=f"Linf, {args.pgd_steps} steps, {args.pgd_restarts} random start(s), CE + margin "
                           "(+ transfer where a source model is given), worst case per example",
                       attack_examples=args.eval_size, membership_attacks=list(args.attacks), seed=args.seed,
                       **meta)
    for name, role, evaluation, size, *extra in rows:
        rep.add_evaluation(name, role, evaluation, size=size, **(extra[0] if extra else {}))
    print(table(rep.models, args.eps))
    paths = rep.save(out_dir, html_page=not args.no_html)
    print("wrote " + ", ".join(paths))
    return rep.to_dict()


def size_of(model, reference):
    return model_size(model, reference=reference)


class Clock:
    """Prints each stage with its duration."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, message):
        print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", flush=True)


def load_npz(path, flag, need_y=True):
    """``(x, y)`` from an ``.npz`` holding arrays ``x`` and ``y`` (``y`` is None when absent and not needed)."""
    if not os.path.isfile(path):
        raise InputError(f"--{flag} file '{path}' does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in ("x", "y") if k in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"--{flag} file '{path}' is not a readable .npz: {err}") from err
    if "x" not in arrays or (need_y and "y" not in arrays):
        raise InputError(f"--{flag} file '{path}' must hold arrays named x{' and y' if need_y else ''}.")
    return arrays["x"].astype(np.float32), arrays.get("y")


def run(main):
    """Run ``main()`` as a script: tfsafe's input errors become one line and exit status 2."""
    try:
        main()
    except TfsafeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

"""RLNet: 10x fewer ReLUs (cheaper private inference) without giving up robustness.

Trains a standard Conv-BN-ReLU CNN on the members of the bundled digits (no download), then runs
the three RLNet stages: (1) a robust teacher from augmentation + PGD training with dual batch
norm (clean and adversarial batches keep separate BN statistics); (2) a ReLU mask searched on
the teacher under a budget, then binarized to exactly ``--relu_fraction`` of the ReLUs (masked
units become linear); (3) the masked student distilled from the teacher (CE + KD + attention
transfer on both BN paths). The deployed student uses the clean BN path. The table reports
test data and audit non-members that training never touched.

Run:
    .venv/bin/python examples/rlnet.py                         # digits, ~1.5 minutes on 2 cores
    .venv/bin/python examples/rlnet.py --data mnist --data_dir /work/shared/data/mnist

Writes ``rlnet_student.keras`` (masks + dual BN; loads with ``tfsafe.load_model``),
``rlnet_int8.tflite`` and ``report.json/.md/.html`` into ``--out``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import tfsafe.methods  # noqa: E402
from tfsafe.io import save_model  # noqa: E402
from tfsafe.methods.rlnet import rlnet_cnn  # noqa: E402
from tfsafe.metrics import relu_count  # noqa: E402


def standard_cnn(input_shape, num_classes):
    """All-ReLU Conv-BN-ReLU CNN with plain batch norm (RLNet makes it dual)."""
    return rlnet_cnn(input_shape, num_classes, dual_bn=False, name="standard")


def main(argv=None):
    p = common.parser("rlnet", __doc__, dense_epochs=15)
    p.add_argument("--relu_fraction", type=float, default=0.1, help="ReLUs the student keeps (fraction)")
    p.add_argument("--teacher_epochs", type=int, default=8, help="stage 1: robust teacher epochs")
    p.add_argument("--search_epochs", type=int, default=15, help="stage 2: ReLU mask search epochs")
    p.add_argument("--finetune_epochs", type=int, default=8, help="stage 3: student distillation epochs")
    p.add_argument("--train_steps", type=int, default=5, help="PGD steps per training batch")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--no_export", action="store_true", help="skip the int8 .tflite")
    args = common.parse(p, argv)
    if not 0.0 < args.relu_fraction <= 1.0:
        p.error("--relu_fraction must be in (0, 1]")
    clock = common.Clock()
    splits = common.load_splits(args)

    clock(f"training the standard CNN ({args.dense_epochs} epochs on {len(splits.train[0])} members)")
    dense = common.train_dense(splits, args.dense_epochs, seed=args.seed, build=standard_cnn)
    budget = max(1, int(args.relu_fraction * relu_count(dense)))

    clock(f"RLNet: budget {budget:,} of {relu_count(dense):,} ReLUs, PGD eps {args.eps} x {args.train_steps} steps, "
          f"epochs {args.teacher_epochs} teacher / {args.search_epochs} search / {args.finetune_epochs} student")
    method = tfsafe.methods.get("rlnet", relu_budget=budget, eps=args.eps, teacher_epochs=args.teacher_epochs,
                                search_epochs=args.search_epochs, finetune_epochs=args.finetune_epochs,
                                batch_size=args.batch_size, pgd_steps=args.train_steps)
    result = method.compress(dense, splits, seed=args.seed, verbose=0)
    student, teacher, info = result.model, result.extras["teacher"], result.info
    print(f"student: {info['relu_count']:,} ReLUs ({info['relu_reduction']:.1f}x fewer); budget reached by the "
          f"search: {info['search_reached']}")

    saved = save_model(student, os.path.join(args.out, "rlnet_student.keras"))
    exported = {} if args.no_export else {
        "file": common.export_int8(student, os.path.join(args.out, "rlnet_int8.tflite"), splits)}

    clock("evaluating standard, robust teacher and student (clean, PGD, corruptions, membership)")
    rows = [
        ("standard", "dense", common.evaluate(dense, splits, args, reference=dense), common.size_of(dense, dense)),
        ("robust teacher", "teacher", common.evaluate(teacher, splits, args, reference=dense),
         common.size_of(teacher, dense)),
        ("RLNet student", "compressed", common.evaluate(student, splits, args, reference=dense),
         common.size_of(student, dense), exported),
    ]
    clock("done")
    return common.report(f"RLNet on {args.data}", args, splits.sizes(), rows, args.out, model_path=saved,
                         rlnet=info)


if __name__ == "__main__":
    common.run(main)

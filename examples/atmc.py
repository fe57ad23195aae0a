"""ATMC: make a model several times smaller *and* robust to adversarial examples.

Trains a small CNN on the members of the bundled digits (no download), then compresses it with
ATMC (Gui et al., NeurIPS 2019): every Dense/Conv layer becomes ``W = (B + I) A + C``, training
mixes clean and PGD cross-entropy, every batch projects the factors onto a global non-zero
budget, and ADMM pulls them onto a k-means codebook of ``2^bits`` values. The budget comes from
``--ratio``: compressed bits <= ratio x dense float32 bits. The checkpoint is chosen by PGD
accuracy on the validation split; the table reports test data and audit non-members that
neither training nor selection touched.

Run:
    .venv/bin/python examples/atmc.py                          # digits, ~1 minute on 2 cores
    .venv/bin/python examples/atmc.py --data mnist --data_dir /work/shared/data/mnist --eps 0.3

Writes ``atmc.keras`` (the factorized, pruned, quantized model; loads with ``tfsafe.load_model``),
``atmc_int8.tflite`` and ``report.json/.md/.html`` into ``--out``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import tfsafe.methods  # noqa: E402
from tfsafe.io import save_model  # noqa: E402


def main(argv=None):
    p = common.parser("atmc", __doc__)
    p.add_argument("--ratio", type=float, default=0.1, help="target size: compressed bits / dense float32 bits")
    p.add_argument("--bits", type=int, default=4, help="k-means codebook bits per tensor (1..8, or 32 = none)")
    p.add_argument("--epochs", type=int, default=8, help="ATMC training epochs")
    p.add_argument("--train_steps", type=int, default=5, help="PGD steps per training batch")
    p.add_argument("--ramp_epochs", type=float, default=1.0, help="epochs over which training eps grows from 0")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--no_export", action="store_true", help="skip the int8 .tflite")
    args = common.parse(p, argv)
    clock = common.Clock()
    splits = common.load_splits(args)

    clock(f"training the dense CNN ({args.dense_epochs} epochs on {len(splits.train[0])} members)")
    dense = common.train_dense(splits, args.dense_epochs, seed=args.seed)

    clock(f"ATMC: {args.bits}-bit codebooks at ratio {args.ratio}, PGD eps {args.eps} x {args.train_steps} steps, "
          f"{args.epochs} epochs")
    method = tfsafe.methods.get("atmc", ratio=args.ratio, bits=args.bits, eps=args.eps, epochs=args.epochs,
                                batch_size=args.batch_size, steps=args.train_steps, ramp_epochs=args.ramp_epochs,
                                admm_every=15, rho_growth=1.1, rho_max=5.0)
    result = method.compress(dense, splits, seed=args.seed, verbose=0)
    budget, best = result.info["budget"], result.info["best"]
    print(f"budget {budget:,} non-zeros; selected epoch {best.get('epoch')}: validation PGD acc "
          f"{best.get('val_pgd_accuracy', float('nan')):.4f}")
    compressed = result.model

    saved = save_model(compressed, os.path.join(args.out, "atmc.keras"))
    exported = {} if args.no_export else {
        "file": common.export_int8(compressed, os.path.join(args.out, "atmc_int8.tflite"), splits)}

    clock("evaluating dense and ATMC models (clean, PGD, corruptions, membership)")
    rows = [
        ("dense", "dense", common.evaluate(dense, splits, args, reference=dense), common.size_of(dense, dense)),
        (f"ATMC-{args.bits}bit", "compressed", common.evaluate(compressed, splits, args, source=dense, reference=dense),
         common.size_of(compressed, dense), exported),
    ]
    clock("done")
    return common.report(f"ATMC on {args.data}", args, splits.sizes(), rows, args.out, budget=budget, bits=args.bits,
                         ratio_target=args.ratio, model_path=saved, selected=best)


if __name__ == "__main__":
    common.run(main)

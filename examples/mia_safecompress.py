"""MIA-SafeCompress: make a model 90% sparse without making its training data easier to infer.

Trains a small CNN on the members of the bundled digits (no download), then compresses it with
MIA-SafeCompress: test-driven dynamic sparse training where, every round, candidate masks
(drop + regrow) are trained briefly and the one with the best TM-score = validation accuracy -
w_mia x advantage of a simulated membership attacker is kept; the loss is CE - 0.1 x entropy.
The simulated attacker uses members and the reference split; the table's membership audit
(tensorflow-privacy) uses audit non-members that neither training nor selection touched.

Run:
    .venv/bin/python examples/mia_safecompress.py              # digits, ~1 minute on 2 cores
    .venv/bin/python examples/mia_safecompress.py --data mnist --data_dir /work/shared/data/mnist

Writes ``safecompress.keras`` (plain Keras, zeros baked in), ``safecompress_int8.tflite``,
``checkpoint/`` (one folder per stage, resumable) and ``report.json/.md/.html`` into ``--out``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import tfsafe.methods  # noqa: E402
from tfsafe.io import save_model  # noqa: E402


def main(argv=None):
    p = common.parser("mia_safecompress", __doc__)
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of prunable weights that are zero")
    p.add_argument("--epochs", type=int, default=30, help="SafeCompress epochs")
    p.add_argument("--update_every", type=int, default=10, help="accepted steps between candidate rounds")
    p.add_argument("--attack_size", type=int, default=200, help="simulated attacker examples per side")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--no_export", action="store_true", help="skip the int8 .tflite")
    args = common.parse(p, argv)
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    clock = common.Clock()
    splits = common.load_splits(args)

    clock(f"training the dense CNN ({args.dense_epochs} epochs on {len(splits.train[0])} members)")
    dense = common.train_dense(splits, args.dense_epochs, seed=args.seed)

    clock(f"MIA-SafeCompress to {args.sparsity:.0%} sparsity ({args.epochs} epochs, a round every "
          f"{args.update_every} steps)")
    method = tfsafe.methods.get("safecompress", target_sparsity=args.sparsity, epochs=args.epochs,
                                batch_size=args.batch_size, update_every=args.update_every, learning_rate=3e-3,
                                attack_size=args.attack_size)
    result = method.compress(dense, splits, checkpoint_dir=os.path.join(args.out, "checkpoint"), seed=args.seed,
                             verbose=0)
    kept = result.selection["kept"]
    print(f"{result.info['rounds']} candidate rounds in {result.seconds:.1f}s; kept the "
          f"{'final state' if kept == 'final' else f'winner of round {kept}'} (best TM-score on validation)")
    compressed = result.stripped

    saved = save_model(compressed, os.path.join(args.out, "safecompress.keras"))
    exported = {} if args.no_export else {
        "file": common.export_int8(compressed, os.path.join(args.out, "safecompress_int8.tflite"), splits)}

    clock("evaluating dense and SafeCompress models (clean, PGD, corruptions, membership)")
    rows = [
        ("dense", "dense", common.evaluate(dense, splits, args, reference=dense), common.size_of(dense, dense)),
        (f"SafeCompress {args.sparsity:.0%}", "compressed", common.evaluate(compressed, splits, args, reference=dense),
         common.size_of(compressed, dense), exported),
    ]
    clock("done")
    return common.report(f"MIA-SafeCompress on {args.data}", args, splits.sizes(), rows, args.out, model_path=saved,
                         safecompress=result.to_dict())


if __name__ == "__main__":
    common.run(main)

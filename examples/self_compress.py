"""Safety-driven self-compression: learn how many bits each channel needs, but keep the safety set right.

Trains a small CNN on the members of the bundled digits (no download), then gives every output
channel of every Conv/Dense layer a trainable bit depth and exponent (a TF-MOT quantizer) and
trains ``CE + gamma * size`` so that bits shrink; channels that reach 0 bits are removed
physically. A safety set chosen from the validation split (Grad-CAM + margin uncertainty +
k-means; never test data) is added to every batch, and a monitor restores zero-bit channels
when the safety accuracy falls below the best so far. The table reports test data and audit
non-members that neither training nor the safety set touched.

Run:
    .venv/bin/python examples/self_compress.py                 # digits, ~1 minute on 2 cores
    .venv/bin/python examples/self_compress.py --data mnist --data_dir /work/shared/data/mnist

Writes ``self_compress.keras`` (the learned-bit model; loads with ``tfsafe.load_model``),
``self_compress_int8.tflite`` (zero-bit channels removed) and ``report.json/.md/.html`` into
``--out``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import tfsafe.methods  # noqa: E402
from tfsafe.io import save_model  # noqa: E402
from tfsafe.metrics import relu_count  # noqa: E402
from tfsafe.models import accuracy  # noqa: E402


def main(argv=None):
    p = common.parser("self_compress", __doc__)
    p.add_argument("--epochs", type=int, default=30, help="self-compression epochs")
    p.add_argument("--gamma", type=float, default=0.1, help="weight of the size penalty")
    p.add_argument("--safety_weight", type=float, default=1.0, help="weight of the safety-set loss")
    p.add_argument("--safety_size", type=int, default=100, help="examples in the safety set (from validation)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--no_export", action="store_true", help="skip the int8 .tflite")
    args = common.parse(p, argv)
    clock = common.Clock()
    splits = common.load_splits(args)

    clock(f"training the dense CNN ({args.dense_epochs} epochs on {len(splits.train[0])} members)")
    dense = common.train_dense(splits, args.dense_epochs, seed=args.seed)

    clock(f"self-compression: gamma {args.gamma}, safety set of {args.safety_size} validation examples, "
          f"{args.epochs} epochs")
    method = tfsafe.methods.get("self_compress", safety_size=args.safety_size, gamma=args.gamma,
                                safety_weight=args.safety_weight, epochs=args.epochs, batch_size=args.batch_size,
                                bits_learning_rate=0.02, monitor_every=20)
    result = method.compress(dense, splits, seed=args.seed, verbose=0)
    size, monitor = result.info["size"], result.info["monitor"]
    indices = result.info["safety_indices"]
    safety_x, safety_y = splits.validation[0][indices], splits.validation[1][indices]
    print(f"learned {size['average_bits']:.2f} bits per kept weight on average, {size['channels_removed']} of "
          f"{size['channels']} channels removed; safety accuracy {accuracy(dense, safety_x, safety_y):.4f} (dense) -> "
          f"{accuracy(result.stripped, safety_x, safety_y):.4f}; {len(monitor['restorations'])} restoration(s)")

    saved = save_model(result.model, os.path.join(args.out, "self_compress.keras"))
    exported = {} if args.no_export else {
        "file": common.export_int8(result.stripped, os.path.join(args.out, "self_compress_int8.tflite"), splits)}

    clock("evaluating dense and self-compressed models (clean, PGD, corruptions, membership)")
    # The stripped model (zero-bit channels removed, weights on the learned grid) is what ships.
    # Bits are counted on the learned-bit model, which knows each channel's bits; ReLUs on the
    # stripped one, which no longer computes the removed channels.
    compressed_size = dict(common.size_of(result.model, dense), relu_count=relu_count(result.stripped))
    rows = [
        ("dense", "dense", common.evaluate(dense, splits, args, reference=dense), common.size_of(dense, dense)),
        ("self-compressed", "compressed", common.evaluate(result.stripped, splits, args, source=dense,
                                                          reference=dense), compressed_size, exported),
    ]
    clock("done")
    return common.report(f"Safety-driven self-compression on {args.data}", args, splits.sizes(), rows, args.out,
                         model_path=saved, learned_size=size, restorations=monitor["restorations"],
                         stripped_params=result.stripped.count_params())


if __name__ == "__main__":
    common.run(main)

"""User story: "Make my model 90% sparse for the phone without making its training data easier to infer."

Trains a small CNN on part of the bundled digits (no download), compresses it with
MIA-SafeCompress (test-driven dynamic sparse training: candidate masks chosen by TM-score =
validation accuracy - w_mia * simulated attacker advantage), audits the result with
tensorflow-privacy on audit non-members that nothing else touched, and exports a checked int8
``.tflite``.

Usage:
    .venv/bin/python examples/mia_safecompress.py --out out/safecompress_example
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfsafe  # noqa: E402
from tflite_export.convert import to_tflite  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.io import atomic_write_json  # noqa: E402
from tfsafe.methods.safecompress import SafeCompress  # noqa: E402
from tfsafe.metrics import sparsity  # noqa: E402
from tfsafe.models import accuracy, small_cnn  # noqa: E402
from tfsafe.safety.membership import audit_membership  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/safecompress_example")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args()

    (x, y), (xt, yt) = tfsafe.load_digits()
    splits = tfsafe.membership_split(np.concatenate([x, xt]), np.concatenate([y, yt]), seed=0, train_size=500,
                                     validation_size=200, nonmember_size=400, test_size=400, reference_size=297)
    keras.utils.set_random_seed(0)
    dense = small_cnn((8, 8, 1), 10)
    dense.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense.fit(*splits.train, epochs=30, batch_size=32, verbose=0)

    result = SafeCompress(target_sparsity=args.sparsity, update_every=10, learning_rate=3e-3, verbose=1).fit(
        dense, splits, epochs=args.epochs, batch_size=32, checkpoint_dir=os.path.join(args.out, "checkpoint"))
    audit = result.audit(splits)
    dense_audit = audit_membership(dense, *splits.audit_sets())
    print(f"dense:        test acc {accuracy(dense, *splits.test):.4f}, worst MIA AUC {dense_audit.worst['auc']:.4f}")
    print(f"SafeCompress: test acc {accuracy(result.stripped, *splits.test):.4f}, worst MIA AUC "
          f"{audit.worst['auc']:.4f}, sparsity {sparsity(result.stripped):.3f}")

    exported = to_tflite(result.stripped, os.path.join(args.out, "safecompress_int8.tflite"), "int8",
                         splits.train[0], verify=splits.test)
    print(f"int8 .tflite: {exported.bytes} bytes ({exported.gzip_bytes} gzipped), "
          f"top-1 agreement with Keras {exported.parity.top1_agreement:.4f}")
    atomic_write_json(os.path.join(args.out, "result.json"),
                      {"safecompress": result.to_dict(), "audit": audit.to_dict(include_curves=False),
                       "export": exported.to_dict()})


if __name__ == "__main__":
    main()

"""One score over several threats: 90% sparse, robust to PGD, no more MIA leakage than the dense model.

Published compression methods select their returned state against one threat each
(MIA-SafeCompress: a membership attacker; ATMC: PGD; self-compression: a safety set). In
tfsafe every method's selection takes ``tests=[(SafetyTest, weight), ...]`` combined by
``selection_score``, so one run can weigh several threats. Here MIA-SafeCompress keeps, at
every round, the candidate mask with the best

    TM = validation accuracy - w_mia x simulated attacker's advantage + w_pgd x validation PGD accuracy

(the PGD test is a :class:`tfsafe.safety.tests.PGDTest`; all of it on validation / reference
data only). The report then audits both models on data selection never saw: PGD on the test
split and tensorflow-privacy's membership attacks on members vs. audit non-members, and says
whether the compressed model leaks no more than the dense one.

Run:
    .venv/bin/python examples/multi_threat_selection.py     # digits, about a minute on 2 cores
    .venv/bin/python examples/multi_threat_selection.py --pgd_weight 0   # membership-only selection

Writes ``multi_threat.keras`` (plain Keras, zeros baked in) and ``report.json/.md/.html``
into ``--out``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import tfsafe.methods  # noqa: E402
from tfsafe.io import save_model  # noqa: E402
from tfsafe.safety.tests import PGDTest  # noqa: E402


def main(argv=None):
    p = common.parser("multi_threat_selection", __doc__, dense_epochs=20)
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of prunable weights that are zero")
    p.add_argument("--epochs", type=int, default=8, help="SafeCompress epochs")
    p.add_argument("--update_every", type=int, default=10, help="accepted steps between candidate rounds")
    p.add_argument("--pgd_weight", type=float, default=1.0, help="weight of validation PGD accuracy in the score")
    p.add_argument("--mia_weight", type=float, default=1.0, help="weight of the simulated attacker's advantage")
    p.add_argument("--select_steps", type=int, default=5, help="PGD steps of the selection test")
    p.add_argument("--select_size", type=int, default=100, help="validation examples the PGD selection test attacks")
    p.add_argument("--attack_size", type=int, default=150, help="simulated attacker examples per side")
    args = common.parse(p, argv)
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    clock = common.Clock()
    splits = common.load_splits(args)

    clock(f"training the dense CNN ({args.dense_epochs} epochs on {len(splits.train[0])} members)")
    dense = common.train_dense(splits, args.dense_epochs, seed=args.seed)

    tests = [(PGDTest(args.eps, steps=args.select_steps, losses=("ce",), max_examples=args.select_size),
              args.pgd_weight)] if args.pgd_weight > 0 else []
    method = tfsafe.methods.get("safecompress", target_sparsity=args.sparsity, epochs=args.epochs,
                                update_every=args.update_every, learning_rate=3e-3, mia_weight=args.mia_weight,
                                attack_size=args.attack_size, tests=tests)
    clock(f"MIA-SafeCompress to {args.sparsity:.0%}, selecting by one score over "
          f"{', '.join(t['name'] for t in [{'name': 'membership'}] + [{'name': t.name} for t, _ in tests])}")
    result = method.compress(dense, splits, seed=args.seed, verbose=0)
    print(f"{result!r}\nselection: {result.selection['score']}; kept {result.selection['kept']}")
    compressed = result.stripped
    saved = save_model(compressed, os.path.join(args.out, "multi_threat.keras"))

    clock("auditing dense and compressed models on untouched data (clean, PGD, corruptions, membership)")
    dense_eval = common.evaluate(dense, splits, args, reference=dense)
    compressed_eval = common.evaluate(compressed, splits, args, source=dense, reference=dense)
    leak = {name: e["membership"]["worst"]["advantage"] for name, e in
            (("dense", dense_eval), ("compressed", compressed_eval))}
    verdict = "no more" if leak["compressed"] <= leak["dense"] else "MORE"
    print(f"membership advantage (worst attack): dense {leak['dense']:.3f}, compressed {leak['compressed']:.3f} -> "
          f"{verdict} leakage than the dense model")
    rows = [
        ("dense", "dense", dense_eval, common.size_of(dense, dense)),
        (f"SafeCompress {args.sparsity:.0%} (MIA + PGD score)", "compressed", compressed_eval,
         common.size_of(result.model, dense), {"selection": result.selection}),
    ]
    clock("done")
    return common.report(f"One score over several threats on {args.data}", args, splits.sizes(), rows, args.out,
                         model_path=saved, method=result.to_dict(), leakage=leak, no_more_leakage=verdict == "no more")


if __name__ == "__main__":
    common.run(main)

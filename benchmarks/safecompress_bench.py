"""MIA-SafeCompress vs. dense, TF-MOT pruning and plain dynamic sparse training (membership risk).

Data: a small training subset (members) so the dense model overfits and leaks. All splits come
from one pool through :func:`tfsafe.membership_split`: train (members) / validation (model
selection and SafeCompress's performance test) / audit non-members (used ONLY by the final
audit) / test (accuracy) / reference (SafeCompress's simulated attacker).

Rows:

- ``dense``: the dense model trained on the members (the start of every compressed row).
- ``tfmot``: TF-MOT ``prune_low_magnitude`` with ``PolynomialDecay`` to the target sparsity,
  fine-tuned (CE) from the dense model.
- ``dst``: ``prune_safe`` (ERK, magnitude masks) + ``DynamicSparsity`` (random regrowth, cosine
  drop fraction 0.5), CE, from the dense model: PrunableSafe without selection.
- ``safecompress``: MIA-SafeCompress from the dense model: entropy regularizer (0.1), K
  candidates per round chosen by TM-score on validation accuracy and a simulated attacker.
  It gets as many *accepted* training steps as the other rows (its rounds train K candidates,
  so it runs more batches; the time ratio shows the cost). It returns the state with the best
  TM-score (round winners and the final state; validation + reference data only).
- ``safecompress_wmia{w}``: the same with the attacker's advantage weighted ``--extra_mia_weight``
  in the TM-score (skipped when 0): the safety/accuracy knob.

Columns: kernel sparsity of the stripped model, test accuracy, worst case over
tensorflow-privacy's attacks (threshold, entropy, LR, RF, k-NN, MLP) of AUC, advantage and
TPR at 1% FPR on balanced members / audit non-members, training time, and training time over
TF-MOT's. ``step_ms`` is the median time of one training step inside each row's run.

Step time (a separate table): the same dense model wrapped by TF-MOT's ``PruneLowMagnitude``
(ConstantSparsity, with its required ``UpdatePruningStep`` callback) and by ``PrunableSafe``
(no callback; DynamicSparsity's updates are not per step) and left dense, trained with ``fit``
for ``--timing_steps`` steps, interleaved ``--timing_repeats`` times; the minimum per-step time
of each is reported (the least disturbed by other processes on a shared machine).

Usage:
    .venv/bin/python benchmarks/safecompress_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/safecompress_bench.py --quick   # bundled digits
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import StepTimer, load_data  # noqa: E402

import tfsafe  # noqa: E402
from tfsafe._keras import keras, tfmot  # noqa: E402
from tfsafe.compress.dynamic_sparsity import DynamicSparsity  # noqa: E402
from tfsafe.compress.pruning import prune_safe  # noqa: E402
from tfsafe.compress.strip import strip  # noqa: E402
from tfsafe.io import atomic_write_json  # noqa: E402
from tfsafe.methods.safecompress import SafeCompress  # noqa: E402
from tfsafe.metrics import sparsity  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, copy_model, small_cnn  # noqa: E402
from tfsafe.safety.membership import audit_membership  # noqa: E402

QUICK = {"train_size": 400, "validation_size": 150, "nonmember_size": 400, "test_size": 400,
         "reference_size": 300, "dense_epochs": 60, "epochs": 20, "batch_size": 32, "update_every": 10}
FULL = {"train_size": 1000, "validation_size": 1000, "nonmember_size": 1000, "test_size": 5000,
        "reference_size": 1000, "dense_epochs": 40, "epochs": 20, "batch_size": 32, "update_every": 16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder, e.g. /work/shared/data/mnist")
    p.add_argument("--quick", action="store_true", help="bundled digits, small settings")
    for key in FULL:
        p.add_argument(f"--{key}", type=int, default=None)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--num_candidates", type=int, default=3)
    p.add_argument("--entropy_weight", type=float, default=0.1)
    p.add_argument("--mia_weight", type=float, default=1.0)
    p.add_argument("--extra_mia_weight", type=float, default=3.0, help="extra SafeCompress row (0 = skip)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing_steps", type=int, default=150)
    p.add_argument("--timing_repeats", type=int, default=5)
    p.add_argument("--out", default="out/bench/safecompress.json")
    args = p.parse_args(argv)
    if not args.quick and args.data_dir is None:
        p.error("pass --data_dir /work/shared/data/mnist or --quick")
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def evaluate(name, model, splits, seconds, step_ms=None):
    plain = strip(model)
    members, nonmembers = splits.audit_sets(seed=0)
    audit = audit_membership(plain, members, nonmembers, seed=0)
    row = {"method": name, "sparsity": sparsity(plain), "test_accuracy": accuracy(plain, *splits.test),
           "train_accuracy": accuracy(plain, *splits.train), "auc": audit.worst["auc"],
           "advantage": audit.worst["advantage"], "tpr_at_1pct_fpr": audit.worst["tpr_at_1pct_fpr"],
           "worst_attack": audit.worst["attack"], "train_seconds": seconds, "step_ms": step_ms,
           "audit": audit.to_dict(include_curves=False)}
    print(f"  {name}: acc {row['test_accuracy']:.4f} auc {row['auc']:.4f} tpr@1% {row['tpr_at_1pct_fpr']:.4f} "
          f"sparsity {row['sparsity']:.4f} time {seconds:.1f}s", flush=True)
    return row


def step_times(dense, x, y, args):
    """Minimum per-step ``fit`` time (ms) of the dense model and its two pruning wrappers."""
    count = args.batch_size * args.timing_steps
    x, y = np.resize(x, (count,) + x.shape[1:]), np.resize(y, count)
    tfmot_model = tfmot.sparsity.keras.prune_low_magnitude(
        copy_model(dense), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(args.sparsity, 0, frequency=100))
    runs = {
        "dense": (compile_classifier(copy_model(dense), args.lr), []),
        "tfmot_wrapper": (compile_classifier(tfmot_model, args.lr), [tfmot.sparsity.keras.UpdatePruningStep()]),
        "prunable_safe": (compile_classifier(prune_safe(dense, args.sparsity), args.lr), []),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.timing_repeats):
        for name, (model, callbacks) in runs.items():
            start = time.perf_counter()
            model.fit(x, y, epochs=1, batch_size=args.batch_size, verbose=0, callbacks=list(callbacks))
            best[name] = min(best[name], 1000.0 * (time.perf_counter() - start) / args.timing_steps)
    return best


def load_pool(args):
    (x, y), (xt, yt) = load_data(args.quick, args.data_dir)
    return np.concatenate([x, xt]), np.concatenate([y, yt])


def main(argv=None):
    args = parse_args(argv)
    x, y = load_pool(args)
    splits = tfsafe.membership_split(
        x, y, seed=args.seed, train_size=args.train_size, validation_size=args.validation_size,
        nonmember_size=args.nonmember_size, test_size=args.test_size, reference_size=args.reference_size)
    shape = x.shape[1:]
    xtr, ytr = splits.train
    steps_per_epoch = int(np.ceil(len(xtr) / args.batch_size))
    total_steps = steps_per_epoch * args.epochs
    rows = []

    print(f"dense: {args.dense_epochs} epochs on {len(xtr)} members", flush=True)
    keras.utils.set_random_seed(args.seed)
    dense = compile_classifier(small_cnn(shape, 10, filters=(16, 32), dense=128), args.lr)
    start = time.perf_counter()
    dense.fit(xtr, ytr, epochs=args.dense_epochs, batch_size=args.batch_size, verbose=0)
    rows.append(evaluate("dense", dense, splits, time.perf_counter() - start))

    print("tfmot: prune_low_magnitude, PolynomialDecay", flush=True)
    keras.utils.set_random_seed(args.seed + 1)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, args.sparsity, begin_step=0, end_step=int(0.5 * total_steps),
                                                    frequency=max(1, steps_per_epoch // 2))
    tfmot_model = compile_classifier(
        tfmot.sparsity.keras.prune_low_magnitude(copy_model(dense), pruning_schedule=schedule), args.lr)
    timer = StepTimer(skip=20)
    start = time.perf_counter()
    tfmot_model.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                    callbacks=[timer, tfmot.sparsity.keras.UpdatePruningStep()])
    rows.append(evaluate("tfmot", tfmot_model, splits, time.perf_counter() - start, timer.median_ms()))

    print("dst: PrunableSafe + DynamicSparsity (no selection)", flush=True)
    keras.utils.set_random_seed(args.seed + 2)
    dst = compile_classifier(prune_safe(dense, args.sparsity, init="erk"), args.lr)
    timer = StepTimer(skip=20)
    start = time.perf_counter()
    dst.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, verbose=0, callbacks=[
        timer, DynamicSparsity(update_every=args.update_every, drop_fraction=0.5, end_fraction=0.75, seed=args.seed)])
    rows.append(evaluate("dst", dst, splits, time.perf_counter() - start, timer.median_ms()))

    k, f = args.num_candidates, 0.75
    sc_epochs = int(round(args.epochs * (k * f + 1 - f)))  # same accepted steps as the other rows
    variants = [("safecompress", args.mia_weight)]
    if args.extra_mia_weight > 0:
        variants.append((f"safecompress_wmia{args.extra_mia_weight:g}", args.extra_mia_weight))
    for name, mia_weight in variants:
        print(f"{name}: test-driven DST + entropy regularizer, w_mia = {mia_weight}", flush=True)
        keras.utils.set_random_seed(args.seed + 3)
        compressor = SafeCompress(target_sparsity=args.sparsity, num_candidates=k, update_every=args.update_every,
                                  drop_fraction=0.5, end_fraction=f, entropy_weight=args.entropy_weight,
                                  mia_weight=mia_weight, learning_rate=args.lr, epochs=sc_epochs,
                                  batch_size=args.batch_size)
        timer = StepTimer(skip=20)
        result = compressor.compress(dense, splits, callbacks=[timer], seed=args.seed, verbose=1)
        rounds = result.history["train"]
        row = evaluate(name, result.model, splits, result.info["train_seconds"], timer.median_ms())
        row.update(rounds=len(rounds), selected=[r["selected"] for r in rounds], kept=result.selection["kept"],
                   history=rounds)
        print(f"  kept: {row['kept']} (round index, or 'final')", flush=True)
        rows.append(row)

    print("step timing", flush=True)
    timing = step_times(dense, xtr, ytr, args)
    base = next(r for r in rows if r["method"] == "tfmot")
    for r in rows:
        r["time_vs_tfmot"] = r["train_seconds"] / base["train_seconds"]
        r["step_vs_tfmot"] = r["step_ms"] / base["step_ms"] if r["step_ms"] else None
    print()
    print(f"MIA-SafeCompress benchmark ({'digits' if args.quick else 'MNIST'}; {len(xtr)} members, "
          f"{len(splits.audit_sets()[1][0])} audit non-members, {len(splits.test[0])} test; target sparsity "
          f"{args.sparsity})")
    print()
    print("| method | sparsity | test acc | worst AUC | advantage | TPR@1%FPR | train s | time / TF-MOT "
          "| step ms | step / TF-MOT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        step = f"{r['step_ms']:.2f}" if r["step_ms"] else "-"
        step_ratio = f"{r['step_vs_tfmot']:.2f}" if r["step_vs_tfmot"] else "-"
        print(f"| {r['method']} | {r['sparsity']:.4f} | {r['test_accuracy']:.4f} | {r['auc']:.4f} | "
              f"{r['advantage']:.4f} | {r['tpr_at_1pct_fpr']:.4f} | {r['train_seconds']:.1f} | "
              f"{r['time_vs_tfmot']:.2f} | {step} | {step_ratio} |")
    goals = {}
    for sc in rows[3:]:
        goals[sc["method"]] = (sc["sparsity"] >= args.sparsity - 1e-3
                               and sc["test_accuracy"] >= base["test_accuracy"] - 0.02
                               and sc["auc"] < base["auc"] and sc["tpr_at_1pct_fpr"] < base["tpr_at_1pct_fpr"])
    print()
    for name, met in goals.items():
        print(f"Goal for {name} (sparsity >= {args.sparsity}, accuracy within 2 points of TF-MOT, lower worst "
              f"AUC and TPR@1%FPR than TF-MOT): {'met' if met else 'NOT met'}")
    goal = goals
    print()
    print(f"Training step time (min over {args.timing_repeats} interleaved fits of {args.timing_steps} steps, "
          f"batch {args.batch_size}):")
    print()
    print("| model | ms / step | vs TF-MOT wrapper |")
    print("|---|---|---|")
    for name, ms in timing.items():
        print(f"| {name} | {ms:.2f} | {ms / timing['tfmot_wrapper']:.2f} |")
    ratio = timing["prunable_safe"] / timing["tfmot_wrapper"]
    print()
    print(f"PrunableSafe step time / TF-MOT wrapper step time: {ratio:.2f} (target <= 1.2); "
          f"inside the method runs (median): {rows[2]['step_vs_tfmot']:.2f}")
    atomic_write_json(args.out, {"args": vars(args), "rows": rows, "step_ms": timing,
                                 "prunable_safe_vs_tfmot_step": ratio, "goal_met": goal})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

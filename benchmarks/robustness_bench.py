"""Standard vs PGD adversarial training of LeNet on MNIST: clean, PGD, FGSM and corruption accuracy.

Trains the ATMC LeNet (``tfsafe.models.lenet``) twice on the same data -- plain cross-entropy and
Madry PGD training (:class:`tfsafe.safety.adversarial_training.AdversarialModel`, eps ramped up over the
first epoch(s) by :class:`EpsilonRamp`) -- then evaluates both on the same held-out test subset:
clean accuracy, PGD (Linf, random start, ``--eval_steps`` steps, ``--eval_restarts`` starts,
worst case over cross-entropy and margin losses) at each eps, FGSM at the largest eps,
corruption mean accuracy and mCE (reference: the standard model), and seconds per training
epoch after the first, which also traces the graph (ratio PGD / standard).

Usage:
    .venv/bin/python benchmarks/robustness_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/robustness_bench.py --quick        # digits, about a minute
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import EpochTimer, load_data  # noqa: E402

from tfsafe._keras import keras  # noqa: E402
from tfsafe.io import atomic_write_json, save_model  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, lenet, small_cnn  # noqa: E402
from tfsafe.safety.adversarial_training import AdversarialModel, EpsilonRamp  # noqa: E402
from tfsafe.safety.corruptions import corruption_accuracy  # noqa: E402
from tfsafe.safety.tests import FGSMTest, PGDTest  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder (default: keras.datasets download)")
    p.add_argument("--quick", action="store_true", help="bundled digits, small CNN, few epochs")
    p.add_argument("--train_size", type=int, default=60000, help="training examples (first N)")
    p.add_argument("--eval_size", type=int, default=1000, help="test examples for attacks and corruptions")
    p.add_argument("--epochs", type=int, default=3, help="epochs of standard training")
    p.add_argument("--adv_epochs", type=int, default=4, help="epochs of PGD training")
    p.add_argument("--ramp_epochs", type=float, default=1.0, help="epochs over which training eps grows to --eps")
    p.add_argument("--eps", type=float, default=0.3, help="training eps")
    p.add_argument("--eval_eps", default="0.1,0.2,0.3", help="comma-separated PGD eps")
    p.add_argument("--train_steps", type=int, default=7, help="PGD steps in training")
    p.add_argument("--train_step_size", type=float, default=0.1, help="PGD step in training")
    p.add_argument("--adv_weight", type=float, default=1.0, help="weight of the adversarial loss (1 = Madry)")
    p.add_argument("--eval_steps", type=int, default=40)
    p.add_argument("--eval_restarts", type=int, default=2, help="random starts per example (2 = one restart)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/robustness.json")
    p.add_argument("--save_dir", default=None, help="also save both trained models here (.keras)")
    return p.parse_args(argv)


def build(args, shape):
    return small_cnn(shape, 10) if args.quick else lenet(shape, 10)


def train_standard(args, x, y):
    keras.utils.set_random_seed(args.seed)
    model = compile_classifier(build(args, x.shape[1:]), args.lr)
    timer = EpochTimer()
    model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2, callbacks=[timer])
    return model, timer.seconds


def train_pgd(args, x, y):
    keras.utils.set_random_seed(args.seed)
    adv = AdversarialModel(build(args, x.shape[1:]), eps=args.eps, steps=args.train_steps,
                           step_size=args.train_step_size, adv_weight=args.adv_weight)
    adv.compile(optimizer=keras.optimizers.Adam(args.lr), metrics=["accuracy"])
    timer = EpochTimer()
    adv.fit(x, y, epochs=args.adv_epochs, batch_size=args.batch_size, verbose=2,
            callbacks=[EpsilonRamp(args.ramp_epochs), timer])
    return adv.model, timer.seconds


def evaluate(model, args, xe, ye, eval_eps, reference):
    row = {"clean": accuracy(model, xe, ye)}
    for eps in eval_eps:
        res = PGDTest(eps, steps=args.eval_steps, restarts=args.eval_restarts).run(model, (xe, ye))
        row[f"pgd_{eps:g}"] = res["accuracy"]
        row[f"pgd_{eps:g}_attacks"] = res["attacks"]
    row[f"fgsm_{max(eval_eps):g}"] = FGSMTest(max(eval_eps)).run(model, (xe, ye))["accuracy"]
    corr = corruption_accuracy(model, xe, ye, reference=reference)
    row["corruption_mean"] = corr["mean_accuracy"]
    row["corruption_mce"] = corr["mce"]
    row["corruption_table"] = corr["table"]
    return row


def markdown(rows, eval_eps, ratio):
    cols = ["clean"] + [f"pgd_{e:g}" for e in eval_eps] + [f"fgsm_{max(eval_eps):g}", "corruption_mean",
                                                           "corruption_mce", "s_per_epoch"]
    heads = ["clean acc"] + [f"PGD acc eps={e:g}" for e in eval_eps] + [
        f"FGSM acc eps={max(eval_eps):g}", "corruption mean acc", "mCE (ref: standard)", "s / epoch"]
    lines = ["| training | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for name, row in rows.items():
        cells = ["-" if row.get(c) is None else f"{row[c]:.4f}" if c != "s_per_epoch" else f"{row[c]:.1f}"
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nPGD-training time / standard-training time per epoch: {ratio:.1f}x")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    (x, y), (xt, yt) = load_data(args.quick, args.data_dir)
    if args.quick:
        args.epochs, args.adv_epochs, args.eps = max(args.epochs, 12), max(args.adv_epochs, 12), 0.1
        args.train_steps, args.train_step_size, args.eval_eps = 5, 0.04, "0.05,0.1"
        args.eval_steps, args.lr, args.batch_size = 20, 3e-3, 32
    rng = np.random.default_rng(args.seed)
    train_idx = rng.permutation(len(x))[: args.train_size]
    eval_idx = rng.permutation(len(xt))[: args.eval_size]
    x, y, xe, ye = x[train_idx], y[train_idx], xt[eval_idx], yt[eval_idx]
    eval_eps = [float(e) for e in args.eval_eps.split(",")]
    print(f"train {len(x)} examples, eval {len(xe)}; args {vars(args)}", flush=True)

    start = time.perf_counter()
    standard, std_secs = train_standard(args, x, y)
    robust, adv_secs = train_pgd(args, x, y)
    train_seconds = time.perf_counter() - start
    if args.save_dir:
        save_model(standard, os.path.join(args.save_dir, "standard.keras"))
        save_model(robust, os.path.join(args.save_dir, "pgd.keras"))
    rows = {}
    for name, model, secs in (("standard", standard, std_secs), (f"PGD (eps {args.eps:g})", robust, adv_secs)):
        t0 = time.perf_counter()
        rows[name] = evaluate(model, args, xe, ye, eval_eps, reference=standard)
        # Steady state: the first epoch also traces the training function.
        rows[name]["s_per_epoch"] = float(np.mean(secs[1:] if len(secs) > 1 else secs))
        rows[name]["epoch_seconds"] = secs
        rows[name]["eval_seconds"] = time.perf_counter() - t0
        print(f"{name}: {({k: v for k, v in rows[name].items() if not isinstance(v, dict)})}", flush=True)
    ratio = rows[list(rows)[1]]["s_per_epoch"] / rows["standard"]["s_per_epoch"]
    table = markdown(rows, eval_eps, ratio)
    print("\n" + table, flush=True)
    goal = rows[list(rows)[1]][f"pgd_{max(eval_eps):g}"]
    print(f"\nGoal (PGD-trained > 0.7 PGD accuracy at eps {max(eval_eps):g}, standard near 0): "
          f"{'met' if goal > 0.7 else 'NOT met'} ({goal:.4f} vs {rows['standard'][f'pgd_{max(eval_eps):g}']:.4f})")
    atomic_write_json(args.out, {"args": vars(args), "rows": rows, "time_ratio": ratio, "table": table,
                                 "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""ATMC vs its baselines on MNIST LeNet: compression ratio, clean, PGD-40 and FGSM accuracy.

Rows (all through :func:`tfsafe.methods.atmc.atmc_train`):

- Dense (clean): cross-entropy training, the start of NAP.
- NAP: clean model, one-shot magnitude pruning to the 32-bit budget, clean fine-tune.
- DA: dense PGD training (eps ramped up over ``--ramp_epochs``); the start of AP / ALR / ATMC,
  as in the paper's practice.
- AP: DA, one-shot magnitude pruning to the budget, PGD fine-tune.
- ALR: DA, truncated SVD to the budget (greedy spectral ranks), PGD fine-tune.
- ATMC-{bits}bit: DA, factorized ``W = (B + I) A + C``, PGD fine-tune with global top-k
  projection every batch and k-means quantization through ADMM, best projected checkpoint.

Every compressed row targets ``compressed bits <= --ratio x dense float32 bits`` (the budget
``k`` comes from :func:`tfsafe.methods.atmc.budget_for_ratio`); the table shows the measured
ratio from :mod:`tfsafe.metrics` (non-zeros x bits + codebooks + float32 biases; sparse index
overhead is not counted, as in the paper) of the *deployed* model: what ``strip()`` ships
(ATMC's merged kernels, after its deploy stage put the budget on them; ``--deploy_epochs``
fine-tune epochs with mask and codebook fixed). The ATMC table also lists the factor form's
ideal bytes and the merged kernels' before the deploy stage.

``--attack fgsm_rs`` (or ``free``) trains DA and every fine-tune with fast adversarial training
(FGSM from a random start, step 1.25 eps; the catastrophic-overfitting guard on 256 validation
images falls back to PGD). The ATMC target table (issue 20) compares each ATMC row with the
best DA row: PGD-40 accuracy ratio (target >= 0.9) and dense bytes / deployed ideal bytes
(target >= 20). ``--save_da`` / ``--load_da`` keep the DA model between runs.

Checkpoints are chosen on a validation split carved
from the training set; the evaluation subset comes from the test set and is used for nothing
else. PGD-40 accuracy is the per-example worst case over cross-entropy PGD with
``--eval_restarts`` random starts and a margin-loss PGD run.

Usage:
    .venv/bin/python benchmarks/atmc_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/atmc_bench.py --quick      # digits + small CNN, ~2 minutes
    .venv/bin/python benchmarks/atmc_bench.py --data_dir ... --attack fgsm_rs --adv_weight 1 --rows atmc
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import load_data  # noqa: E402

from tfsafe import metrics  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.compress.factorization import factorize  # noqa: E402
from tfsafe.io import atomic_write_json, load_model, save_model  # noqa: E402
from tfsafe.methods import atmc_baselines as baselines  # noqa: E402
from tfsafe.methods.atmc import budget_for_ratio  # noqa: E402
from tfsafe.models import lenet, small_cnn  # noqa: E402
from tfsafe.safety.adversarial import fgsm_attack, pgd_attack  # noqa: E402

QUICK = {"train_size": 1000, "val_size": 200, "eval_size": 300, "clean_epochs": 5, "da_epochs": 6,
         "ft_epochs": 2, "train_steps": 5, "eps": 0.1, "ramp_epochs": 1.0, "eval_steps": 20, "batch_size": 64,
         "ratio": 0.25}
FULL = {"train_size": 10000, "val_size": 500, "eval_size": 500, "clean_epochs": 2, "da_epochs": 6,
        "ft_epochs": 2, "train_steps": 7, "eps": 0.3, "ramp_epochs": 2.0, "eval_steps": 40, "batch_size": 128,
        "ratio": 0.05}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder, e.g. /work/shared/data/mnist")
    p.add_argument("--quick", action="store_true", help="bundled digits + small CNN, small settings")
    p.add_argument("--train_size", type=int, help=f"training subset (default {FULL['train_size']})")
    p.add_argument("--val_size", type=int, help="validation subset for checkpoint selection (from train)")
    p.add_argument("--eval_size", type=int, help="test subset for the reported accuracies")
    p.add_argument("--clean_epochs", type=int, help="epochs of clean training (NAP start)")
    p.add_argument("--da_epochs", type=int, help="epochs of dense PGD training (DA)")
    p.add_argument("--ft_epochs", type=int, help="fine-tune epochs of NAP / AP / ALR / ATMC")
    p.add_argument("--train_steps", type=int, help="PGD steps during training")
    p.add_argument("--eps", type=float, help="Linf radius for training and evaluation (0.3 MNIST)")
    p.add_argument("--ramp_epochs", type=float, help="DA epochs over which eps grows from 0")
    p.add_argument("--eval_steps", type=int, help="PGD steps of the evaluation attack (40)")
    p.add_argument("--eval_restarts", type=int, default=2, help="random starts of the CE PGD (2 = one restart)")
    p.add_argument("--select_steps", type=int, default=10, help="PGD steps of validation checkpoint selection")
    p.add_argument("--batch_size", type=int)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of DA and clean training")
    p.add_argument("--ft_lr", type=float, default=5e-4, help="Adam learning rate of the fine-tunes")
    p.add_argument("--ratio", type=float, help="target compression ratio of compressed rows (0.05)")
    p.add_argument("--bits", default="32,8,4", help="ATMC bit widths (1..8 or 32)")
    p.add_argument("--admm_every", type=int, default=15, help="batches between ADMM (Z, U) updates")
    p.add_argument("--rho", type=float, default=0.1)
    p.add_argument("--rho_growth", type=float, default=1.1, help="rho multiplier per ADMM update")
    p.add_argument("--rho_max", type=float, default=5.0)
    p.add_argument("--rows", default="nap,daft,ap,alr,atmc",
                   help="which rows to run (DA always runs or is loaded; daft = DA + the fine-tune epochs)")
    p.add_argument("--no_export", action="store_true", help="skip the int8 .tflite export of the ATMC rows")
    p.add_argument("--attack", default="pgd", choices=("pgd", "fgsm_rs", "free"),
                   help="how DA and the fine-tunes craft training examples")
    p.add_argument("--adv_weight", type=float, default=0.5, help="weight of CE(adv) in training (1 = Madry)")
    p.add_argument("--deploy_epochs", type=int, default=1, help="ATMC deploy-stage fine-tune epochs")
    p.add_argument("--ft_size", type=int, default=None, help="training examples of the fine-tunes (default all)")
    p.add_argument("--verbose", type=int, default=0, help="Keras verbosity of the training runs (2: one line an epoch)")
    p.add_argument("--save_da", default=None, help="save the DA model here (.keras)")
    p.add_argument("--load_da", default=None, help="load the DA model from here instead of training it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/atmc.json")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


START = time.time()


def log(message):
    print(f"[{time.time() - START:7.1f}s] {message}", flush=True)


def load(args):
    (x, y), (xt, yt) = load_data(args.quick, args.data_dir)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    if args.train_size + args.val_size > len(x):
        raise SystemExit(f"--train_size + --val_size exceed the {len(x)} training examples.")
    train, val = order[:args.train_size], order[args.train_size:args.train_size + args.val_size]
    test = rng.permutation(len(xt))[:args.eval_size]
    return (x[train], y[train]), (x[val], y[val]), (xt[test], yt[test])


def evaluate(model, dense, test, args):
    x, y = test
    correct = model.predict(x, batch_size=512, verbose=0).argmax(1) == y
    robust = correct.copy()
    for loss, restarts in (("ce", args.eval_restarts), ("margin", 1)):
        x_adv = pgd_attack(model, x, y, args.eps, steps=args.eval_steps, restarts=restarts, loss=loss,
                           seed=args.seed + 1)
        robust &= model.predict(x_adv, batch_size=512, verbose=0).argmax(1) == y
    fgsm = model.predict(fgsm_attack(model, x, y, args.eps), batch_size=512, verbose=0).argmax(1) == y
    size = metrics.model_size(model, reference=dense)
    return {"compression_ratio": size["compression_ratio"], "nonzeros": size["nonzeros"],
            "average_bits": size["average_bits"], "ideal_bytes": size["ideal_bytes"],
            "stored_ideal_bytes": size["stored_ideal_bytes"], "dense_bytes": size["dense_bytes"],
            "clean_accuracy": float(correct.mean()), "pgd_accuracy": float(robust.mean()),
            "fgsm_accuracy": float(fgsm.mean())}


def factor_summary(model):
    out = {}
    for layer in model.layers:
        if hasattr(layer, "factors"):
            out[layer.name] = {name: int(np.count_nonzero(v.numpy())) for name, v in layer.factors()}
    return out


def export(model, name, train, test, args, mode="int8"):
    try:
        from tflite_export.convert import to_tflite
    except ImportError as err:
        return {"error": f"tflite_export unavailable: {err}"}
    path = os.path.join(os.path.dirname(args.out) or ".", f"atmc_{name}_{mode}.tflite")
    try:
        result = to_tflite(model, path, mode, train[0][:500], verify=(test[0][:500], test[1][:500]))
    except Exception as err:  # report, keep the benchmark going
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    return {"path": path, "bytes": result.bytes, "gzip_bytes": result.gzip_bytes,
            "sparse_encoding": (result.sparsity or {}).get("used")}


def table(rows, reference, steps):
    lines = [f"| method | compression ratio | clean acc | PGD-{steps} acc | FGSM acc | PGD / best DA PGD | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rel = r["pgd_accuracy"] / reference if reference else float("nan")
        lines.append(f"| {name} | {r['compression_ratio']:.4f} | {r['clean_accuracy']:.3f} | {r['pgd_accuracy']:.3f} "
                     f"| {r['fgsm_accuracy']:.3f} | {rel:.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def target_table(rows, reference, steps):
    """Issue 20's ATMC target: PGD >= 0.9x the best DA row's at >= 20x fewer deployed ideal bytes."""
    lines = [f"| row | deployed ideal bytes | x fewer than dense | factor-form bytes | merged bytes before deploy "
             f"| clean | PGD-{steps} | x DA PGD | target met |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if not name.startswith("ATMC"):
            continue
        fewer = r["dense_bytes"] / r["ideal_bytes"]
        rel = r["pgd_accuracy"] / reference if reference else float("nan")
        before = (r.get("deploy") or {}).get("before", {})
        lines.append(f"| {name} | {r['ideal_bytes']:,.0f} | {fewer:.1f} | {before.get('factors_ideal_bytes', 0):,.0f} "
                     f"| {before.get('deployed_ideal_bytes', 0):,.0f} | {r['clean_accuracy']:.3f} "
                     f"| {r['pgd_accuracy']:.3f} | {rel:.2f} | {'yes' if rel >= 0.9 and fewer >= 20 else 'no'} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not args.quick and not args.data_dir:
        raise SystemExit("pass --data_dir /work/shared/data/mnist (or --quick for digits)")
    wanted = {r.strip().lower() for r in args.rows.split(",") if r.strip()}
    bits_list = [int(b) for b in args.bits.split(",") if b.strip()]
    keras.utils.set_random_seed(args.seed)
    train, val, test = load(args)
    log(f"data: train {len(train[0])}, val {len(val[0])}, eval {len(test[0])}; eps {args.eps}")
    architecture = small_cnn if args.quick else lenet
    dense = architecture(train[0].shape[1:], 10)
    common = {"batch_size": args.batch_size, "steps": args.train_steps, "select_steps": args.select_steps,
              "verbose": args.verbose}
    adversarial = {"attack": args.attack, "adv_weight": args.adv_weight}
    ft_train = train if args.ft_size is None else (train[0][:args.ft_size], train[1][:args.ft_size])
    ft = dict(common, epochs=args.ft_epochs, learning_rate=args.ft_lr, validation_data=val, **adversarial)
    rows, extra = {}, {}

    def run(name, fn):
        keras.utils.set_random_seed(args.seed)
        start = time.time()
        result = fn()
        seconds = time.time() - start
        rows[name] = dict(evaluate(result.model, dense, test, args), train_seconds=seconds,
                          best_check=result.best, checks=result.checks, factors=factor_summary(result.model),
                          deploy=getattr(result, "deploy", None), guard=getattr(result, "guard", None))
        log(f"{name}: {rows[name]['compression_ratio']:.4f} ratio, clean {rows[name]['clean_accuracy']:.3f}, "
            f"PGD {rows[name]['pgd_accuracy']:.3f}, FGSM {rows[name]['fgsm_accuracy']:.3f} ({seconds:.0f}s train)")
        atomic_write_json(args.out, {"args": vars(args), "rows": rows, "partial": True})
        return result.model

    k32 = budget_for_ratio(dense, args.ratio, 32)
    log(f"32-bit budget: {k32} non-zero kernel weights of {metrics.count_params(dense)} parameters")
    clean = None
    if "nap" in wanted:
        clean = run("Dense (clean)", lambda: baselines.dense_training(
            dense, *train, adversarial=False, epochs=args.clean_epochs, learning_rate=args.lr, **common))
        run("NAP", lambda: baselines.nap(clean, *train, k32, epochs=args.ft_epochs, learning_rate=args.ft_lr,
                                         **common))
    if args.load_da:
        da = load_model(args.load_da)
        rows["DA"] = dict(evaluate(da, dense, test, args), train_seconds=0.0, loaded=args.load_da)
        log(f"DA loaded from {args.load_da}: clean {rows['DA']['clean_accuracy']:.3f}, "
            f"PGD {rows['DA']['pgd_accuracy']:.3f}")
    else:
        da = run("DA", lambda: baselines.dense_training(
            dense, *train, eps=args.eps, epochs=args.da_epochs, ramp_epochs=args.ramp_epochs, learning_rate=args.lr,
            validation_data=val, **common, **adversarial))
        if args.save_da:
            save_model(da, args.save_da)
    # The compressed rows get more adversarial training than DA; this row gets the same extra
    # training without compression, so "PGD / best DA" is not flattered by it.
    if "daft" in wanted:  # as many epochs as ATMC trains: its fine-tune plus its deploy stage
        more = args.ft_epochs + (args.deploy_epochs if "atmc" in wanted else 0)
        run(f"DA +{more} ep", lambda: baselines.dense_training(da, *ft_train, eps=args.eps, **dict(ft, epochs=more)))
    if "ap" in wanted:
        run("AP", lambda: baselines.adversarial_pruning(da, *ft_train, k32, eps=args.eps, **ft))
    if "alr" in wanted:
        run("ALR", lambda: baselines.adversarial_low_rank(da, *ft_train, k32, eps=args.eps, **ft))
    if "atmc" in wanted:
        factorized = factorize(da)
        for bits in bits_list:
            k = budget_for_ratio(factorized, args.ratio, bits, reference=dense)
            name = f"ATMC-{bits}bit"
            log(f"{name}: budget {k} non-zeros over A, B, C")
            model = run(name, lambda bits=bits, k=k: baselines.atmc(
                da, *ft_train, k, bits=bits, eps=args.eps, admm_every=args.admm_every, rho=args.rho,
                rho_growth=args.rho_growth, rho_max=args.rho_max, deploy_epochs=args.deploy_epochs, **ft))
            rows[name]["budget"] = k
            if not args.no_export:
                for mode in ("int8", "learned"):
                    rows[name][f"tflite_{mode}"] = export(model, f"{bits}bit", train, test, args, mode)
                    log(f"{name} {mode} tflite: {rows[name][f'tflite_{mode}']}")
    reference = max(r["pgd_accuracy"] for name, r in rows.items() if name.startswith("DA"))
    md = table(rows, reference, args.eval_steps)
    target = target_table(rows, reference, args.eval_steps)
    print(md, flush=True)
    print(target, flush=True)
    atomic_write_json(args.out, {"args": vars(args), "rows": rows, "table": md, "target_table": target,
                                 "budget_32bit": k32, **extra})
    log(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()

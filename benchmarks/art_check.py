"""Independent check of tfsafe's robust accuracy with the adversarial-robustness-toolbox (ART).

On the same models and the same test examples, prints tfsafe's per-example worst case over PGD,
APGD-CE and APGD-DLR (``adversarial_accuracy(..., attack="worst")``) beside ART's AutoAttack
(``art.attacks.evasion.AutoAttack`` through ``art.estimators.classification.TensorFlowV2Classifier``;
by default its APGD-CE + APGD-DLR pair, ``--art_full`` adds ART's DeepFool and Square attacks),
with the difference and the ratio tfsafe / ART. Target (issue 20): tfsafe <= ART + 0.01 on
every model.

Models: a dense LeNet and a PGD-trained LeNet trained here on the first ``--train_size`` MNIST
images (``--data_dir``: the IDX .gz folder); with ``--methods``, the dense LeNet compressed by
each named method through the registry on the same training images, with the short training of
``tfsafe compress --quick`` (``tfsafe.cli.QUICK_TRAINING``; ATMC and RLNet train adversarially at
``--train_eps`` with ``--method_attack``); plus any ``.keras`` files given with ``--models``
(e.g. one per compression method from ``benchmarks/compare.py --save_dir``). A method that fails
is a row with its error. ART is a benchmark dependency: ``pip install -e .[bench]``.

Usage:
    .venv/bin/python benchmarks/art_check.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/art_check.py --data_dir ... --train_size 2000 --epochs 2 --eval_size 200 \\
        --steps 50 --art_iter 50
    .venv/bin/python benchmarks/art_check.py --data_dir ... --methods baseline,safecompress,atmc,self_compress,rlnet
    .venv/bin/python benchmarks/art_check.py --data_dir ... --models out/compare/atmc.keras,out/rlnet.keras
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import tfsafe  # noqa: E402
import tfsafe.methods  # noqa: E402
from tfsafe._keras import keras, tf  # noqa: E402
from tfsafe.cli import QUICK_TRAINING  # noqa: E402
from tfsafe.errors import MissingDependencyError  # noqa: E402
from tfsafe.io import atomic_write_json, load_model  # noqa: E402
from tfsafe.methods import rlnet_cnn  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, copy_model, lenet, logits_model  # noqa: E402
from tfsafe.safety.adversarial_training import TRAIN_ATTACKS, AdversarialModel, EpsilonRamp  # noqa: E402
from tfsafe.safety.robust_accuracy import adversarial_accuracy  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder (default: keras.datasets download)")
    p.add_argument("--train_size", type=int, default=10000, help="training images of the two LeNets (first N)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each LeNet's training")
    p.add_argument("--train_eps", type=float, default=0.3, help="eps of the PGD-trained LeNet")
    p.add_argument("--train_steps", type=int, default=7)
    p.add_argument("--eval_size", type=int, default=500, help="test examples attacked (a seeded random subset)")
    p.add_argument("--eps", default="0.1,0.3", help="comma-separated Linf radii")
    p.add_argument("--steps", type=int, default=100, help="tfsafe PGD / APGD iterations")
    p.add_argument("--restarts", type=int, default=1, help="tfsafe random starts per attack")
    p.add_argument("--art_iter", type=int, default=100, help="ART APGD iterations")
    p.add_argument("--art_restarts", type=int, default=1, help="ART APGD random initializations")
    p.add_argument("--art_full", action="store_true", help="ART's default AutoAttack (+ DeepFool, Square: slow)")
    p.add_argument("--models", default="", help="comma-separated .keras files to check as well")
    p.add_argument("--methods", default="", type=method_list,
                   help=f"comma-separated registry names ({','.join(tfsafe.methods.names())}) that compress "
                        "the dense LeNet, each then checked (default: none)")
    p.add_argument("--method_attack", default="fgsm_rs", choices=TRAIN_ATTACKS,
                   help="adversarial training attack of the methods that have one (atmc, rlnet)")
    p.add_argument("--method_data", type=int, default=500,
                   help="validation and reference images (each, from the test images not attacked) for the methods")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/art_check.json")
    return p.parse_args(argv)


def method_list(text):
    """``"a,b"`` -> ``["a", "b"]``, each a registered method name (argparse type: a bad name is one line)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in tfsafe.methods.names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(tfsafe.methods.names())}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is named twice in {text!r}")
    return names


def method_params(name, args):
    """Constructor parameters of method ``name``: ``--quick``'s short training, and for the methods
    that train adversarially the LeNet's eps and ``--method_attack``."""
    params = dict(QUICK_TRAINING.get(name, {}))
    accepted = tfsafe.methods.method_class(name).parameter_names()
    if "eps" in accepted:
        params["eps"] = args.train_eps
    if "attack" in accepted:
        params["attack"] = args.method_attack
    return {k: v for k, v in params.items() if k in accepted}


def method_splits(x, y, xt, yt, eval_idx, size, seed):
    """MembershipSplits for the methods: train = the LeNets' training images; validation and
    reference = ``size`` test images each, none of them among the attacked ones (``eval_idx``)."""
    rest = np.setdiff1d(np.arange(len(xt)), eval_idx)
    rest = np.random.default_rng(seed + 1).permutation(rest)
    val, ref = rest[:size], rest[size: 2 * size]
    return tfsafe.MembershipSplits.from_arrays(train=(x, y), test=(xt[eval_idx], yt[eval_idx]),
                                               validation=(xt[val], yt[val]), reference=(xt[ref], yt[ref]))


def start_model(name, dense, splits, args):
    """The model method ``name`` starts from: a copy of the dense LeNet (the dense row and every
    other method keep its weights), except for RLNet, which needs batch norm before each ReLU: a
    dense ``rlnet_cnn`` trained here like the LeNet (as ``benchmarks/compare.py`` does)."""
    if name != "rlnet":
        return copy_model(dense)
    keras.utils.set_random_seed(args.seed)
    model = compile_classifier(rlnet_cnn(dense.input_shape[1:], int(dense.output_shape[-1])), 1e-3)
    model.fit(*splits.train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    return model


def compress_methods(dense, splits, args):
    """``({name: stripped model}, {name: error line})`` for each of ``args.methods``."""
    models, errors = {}, {}
    for name in args.methods:
        params = method_params(name, args)
        print(f"compressing with {name} {params}", flush=True)
        t0 = time.perf_counter()
        try:
            start = start_model(name, dense, splits, args)
            keras.utils.set_random_seed(args.seed)
            result = tfsafe.methods.get(name, **params).compress(start, splits, seed=0, verbose=0)
            models[name] = result.stripped
        except Exception as err:  # a failed method is a row with its error, not a crash
            errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            print(f"{name} failed: {errors[name]}", flush=True)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return models, errors


def import_art():
    try:
        from art.attacks import evasion
        from art.estimators.classification import TensorFlowV2Classifier
    except ImportError as err:
        raise MissingDependencyError(f"ART is missing ({err}); install it with: pip install -e .[bench]") from err
    return evasion, TensorFlowV2Classifier


def has_multiprocess():
    try:
        import multiprocess  # noqa: F401 - ART's AutoAttack.generate imports it
    except ImportError:
        return False
    return True


def train_models(args, x, y):
    keras.utils.set_random_seed(args.seed)
    dense = compile_classifier(lenet(x.shape[1:], 10), 1e-3)
    t0 = time.perf_counter()
    dense.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    dense_s = time.perf_counter() - t0
    keras.utils.set_random_seed(args.seed)
    adv = AdversarialModel(lenet(x.shape[1:], 10), eps=args.train_eps, steps=args.train_steps,
                           step_size=2.5 * args.train_eps / args.train_steps, adv_weight=1.0)
    adv.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    t0 = time.perf_counter()
    adv.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2, callbacks=[EpsilonRamp(1.0)])
    print(f"trained dense in {dense_s:.0f} s, PGD in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"dense": dense, f"pgd_trained_eps{args.train_eps:g}": adv.model}


def art_accuracy(model, x, y, eps, args, classes):
    """ART's robust accuracy: AutoAttack.generate when ART can run it, else the same untargeted
    ensemble loop run here (AutoAttack needs the ``multiprocess`` package)."""
    evasion, TensorFlowV2Classifier = import_art()
    estimator = TensorFlowV2Classifier(
        model=logits_model(model), nb_classes=classes, input_shape=tuple(x.shape[1:]), clip_values=(0.0, 1.0),
        loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
    attacks = [evasion.AutoProjectedGradientDescent(
        estimator, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=args.art_iter, targeted=False,
        nb_random_init=args.art_restarts, batch_size=args.batch_size, loss_type=loss, verbose=False)
        for loss in ("cross_entropy", "difference_logits_ratio")]
    if args.art_full:  # the rest of ART's default AutoAttack list
        attacks.append(evasion.DeepFool(estimator, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=args.batch_size,
                                        verbose=False))
        attacks.append(evasion.SquareAttack(estimator, norm=np.inf, max_iter=5000, eps=eps, p_init=0.8, nb_restarts=5,
                                            verbose=False))
    onehot = np.eye(classes, dtype=np.float32)[y]
    if has_multiprocess():
        attack = evasion.AutoAttack(estimator, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=attacks,
                                    batch_size=args.batch_size)
        x_adv = attack.generate(x=x, y=onehot)
        # AutoAttack keeps the clean input where no attack succeeded: this is its robust accuracy.
        pred = np.argmax(estimator.predict(x_adv, batch_size=args.batch_size), axis=1)
        return float(np.mean(pred == y)), "AutoAttack"
    robust = np.argmax(estimator.predict(x, batch_size=args.batch_size), axis=1) == y
    for attack in attacks:
        idx = np.flatnonzero(robust)
        if not len(idx):
            break
        x_adv = attack.generate(x=x[idx], y=onehot[idx])
        delta = np.abs(x_adv - x[idx]).reshape(len(idx), -1).max(axis=1)
        # Like AutoAttack: a perturbation outside the ball (DeepFool is unbounded) does not count.
        fooled = (np.argmax(estimator.predict(x_adv, batch_size=args.batch_size), axis=1) != y[idx]) & (
            delta <= eps + 1e-6)
        robust[idx[fooled]] = False
    return float(robust.mean()), "ART attacks, AutoAttack's untargeted loop run here (no multiprocess)"


def markdown(rows):
    lines = ["| model | eps | clean | tfsafe worst (PGD, APGD-CE, APGD-DLR) | ART AutoAttack | tfsafe - ART | "
             "tfsafe / ART | target tfsafe <= ART + 0.01 | tfsafe s | ART s |", "|---|" + "---|" * 9]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | - | - | - | - | - | - | MISSED ({r['error']}) | - | - |")
            continue
        ratio = "-" if r["art"] == 0 else f"{r['tfsafe'] / r['art']:.3f}"
        lines.append(f"| {r['model']} | {r['eps']:g} | {r['clean']:.4f} | {r['tfsafe']:.4f} | {r['art']:.4f} | "
                     f"{r['tfsafe'] - r['art']:+.4f} | {ratio} | {'met' if r['met'] else 'MISSED'} | "
                     f"{r['tfsafe_seconds']:.1f} | {r['art_seconds']:.1f} |")
    return "\n".join(lines)


def check_model(name, model, xe, ye, args):
    """One row per eps: tfsafe's worst case beside ART's accuracy on the same examples."""
    rows, clean, classes = [], accuracy(model, xe, ye), int(model.output_shape[-1])
    for eps in (float(e) for e in args.eps.split(",")):
        t0 = time.perf_counter()
        ours = adversarial_accuracy(model, xe, ye, eps, attack="worst", steps=args.steps, restarts=args.restarts,
                                    batch_size=args.batch_size, seed=args.seed)
        t1 = time.perf_counter()
        theirs, how = art_accuracy(model, xe, ye, eps, args, classes)
        row = {"model": name, "eps": eps, "clean": clean, "tfsafe": ours, "art": theirs, "art_runner": how,
               "met": bool(ours <= theirs + 0.01), "tfsafe_seconds": t1 - t0, "art_seconds": time.perf_counter() - t1}
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    import_art()  # fail early, in one line, when ART is missing
    (x, y), (xt, yt) = tfsafe.load_mnist(args.data_dir)
    rng = np.random.default_rng(args.seed)
    x, y = x[: args.train_size], y[: args.train_size]
    idx = rng.permutation(len(xt))[: args.eval_size]
    xe, ye = xt[idx].astype(np.float32), np.asarray(yt[idx])
    print(f"train {len(x)}, eval {len(xe)}; args {vars(args)}", flush=True)
    models = train_models(args, x, y)
    compressed, errors = compress_methods(
        models["dense"], method_splits(x, y, xt, yt, idx, args.method_data, args.seed), args)
    models.update(compressed)
    for path in filter(None, args.models.split(",")):
        models[os.path.splitext(os.path.basename(path))[0]] = load_model(path)
    rows = []
    for name, model in models.items():
        try:
            rows.extend(check_model(name, model, xe, ye, args))
        except Exception as err:  # a model the check fails on is a row with its error, not a crash
            errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            print(f"{name} check failed: {errors[name]}", flush=True)
    rows.extend({"model": name, "error": error, "met": False} for name, error in errors.items())
    table = markdown(rows)
    print("\n" + table)
    art = "default AutoAttack (APGD-CE, APGD-DLR, DeepFool, Square)" if args.art_full else "APGD-CE + APGD-DLR"
    runner = next((r["art_runner"] for r in rows if "art_runner" in r), "-")
    print(f"\nART attacks: {art} ({args.art_iter} iterations, {args.art_restarts} random init(s)) via {runner}; "
          f"tfsafe: {args.steps} steps, {args.restarts} start(s) per attack.")
    print(f"Target met on {sum(r['met'] for r in rows)} / {len(rows)} rows.")
    atomic_write_json(args.out, {"args": vars(args), "rows": rows, "table": table})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""One comparison of dense, the unsafe TF-MOT baseline and every method, on the same data.

Every row comes from ``tfsafe.pipeline.compress_model`` with the method's built-in recipe
(``tfsafe/recipes/<method>.json``, overridable per method with ``--config_dir``), so the
numbers are what ``tfsafe compress`` gives a user. All runs share one seeded split (members /
validation / audit non-members / test) and the same evaluation: accuracy, PGD (>= 20 steps,
random start) at every eps, FGSM, corruptions (mean accuracy, mCE against the dense model),
safety-set accuracy, and the worst case over tensorflow-privacy's membership attacks on
balanced members vs. never-used audit non-members. The dense model is trained once (by the
first run) and compressed by every method except RLNet, which needs batch norm before its
ReLUs and trains its own ``rlnet_cnn`` (its dense row is shown too), and ATMC, which by default
starts from the dense adversarially trained model below (``--atmc_from``).

Usage:
    .venv/bin/python benchmarks/compare.py                          # bundled digits
    .venv/bin/python benchmarks/compare.py --data mnist --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/compare.py --quick                  # tiny settings, a smoke run
    .venv/bin/python benchmarks/compare.py --data cifar10 --data_dir /work/shared/data/cifar10 \
        --train_size 4000 --test_size 2000 --resume --out out/bench/compare_cifar10.json

One data file for every run: a built-in dataset is written once to ``<out>/data.npz`` as
``x_train`` / ``x_test`` (the first ``--train_size`` / ``--test_size`` rows of each part after a
seeded shuffle; digits, which has no test part, split 75/25), so the dense model's members are
exactly the members every method is audited on, whether the method trains the dense model or
is handed it (a built-in name would be pooled for the first run and kept split for the runs
given a model: other members, and a dense model whose training rows leak into their test set).

``--adv_dense fgsm_rs`` (the default) adds a dense adversarially trained row: the dense model
fine-tuned with fast adversarial training (``AdversarialModel(attack="fgsm_rs")``, the eps
ramped in over the first epoch, Wong et al.'s early stopping on held-out PGD accuracy), with
the same evaluation. Its settings come from ``<config_dir>/adv_dense.json`` (keys of
:data:`ADV_DENSE`). ``--config_dir`` defaults to ``benchmarks/configs/<data>`` when it exists
(``benchmarks/configs/cifar10``: the small residual CNN, 8/255, CPU-sized schedules).

``--atmc_from adv_dense`` (the default when that row is trained) hands ATMC the dense
adversarially trained model with ``params.pretrained_robust=True``: ATMC fine-tunes a robust
model under its budget at the full eps, as the paper does, instead of re-learning robustness
from the standard model (``--atmc_from dense``). ATMC then runs after the first method that
trains the dense model; alone (``--methods atmc``), the dense model is trained and evaluated
first in ``<out>/dense/``. Its run's "dense" is the model it was given, so its mCE, safety set
and agreement are against the adversarially trained model (the table says which it started from).

Runs land in ``<out>/<method>/`` (each a resumable ``tfsafe compress`` run: pass ``--resume``
after an interruption); the table is printed and written, with the raw rows, to ``--out``.
"""

import argparse
import copy
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from tfsafe.errors import InputError, TfsafeError  # noqa: E402
from tfsafe.io import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from tfsafe.recipes import METHODS, load_recipe  # noqa: E402

ORDER = ("baseline", "safecompress", "atmc", "self_compress", "rlnet")
QUICK_SIZES = (900, 500)  # --quick: x_train / x_test rows
QUICK = {
    "dense": {"epochs": 5},
    "evaluation": {"steps": 20, "max_examples": 200,
                   "membership_attacks": ["threshold", "entropy", "logistic_regression"]},
    "export": {"min_agreement": 0.9},
}
QUICK_PARAMS = {
    "baseline": {"epochs": 2},
    "safecompress": {"epochs": 2, "update_every": 5, "attack_size": 100, "attack_epochs": 2},
    "atmc": {"epochs": 1, "steps": 3, "ratio": 0.2},
    "self_compress": {"epochs": 1, "safety_size": 50, "monitor_every": 5},
    "rlnet": {"teacher_epochs": 1, "search_epochs": 2, "finetune_epochs": 1, "pgd_steps": 3},
}


# The dense adversarially trained row (``<config_dir>/adv_dense.json`` overrides these).
ADV_DENSE = {"attack": "fgsm_rs", "epochs": 10, "batch_size": 64, "learning_rate": 1e-3, "eps": None,
             "ramp_epochs": 1.0, "guard_examples": 256, "guard_steps": 10}
QUICK_ADV_DENSE = {"epochs": 2}


def _merge(base, overrides):
    """``base`` updated by ``overrides``, recursively (dicts merged key by key)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_override(args, name):
    path = os.path.join(args.config_dir, f"{name}.json") if args.config_dir else None
    if path is None or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _config(method, args, data):
    """The recipe overrides of one run: ``--config_dir``'s file, then ``--quick``'s sizes on top.

    The data file is an ``.npz`` (not a built-in name), so the protocol's radii are set here:
    ``evaluation.eps`` the built-in dataset's radii and ``params.eps`` (where the method has
    one) its training radius, unless the override gives them.
    """
    from tfsafe.safety.evaluate import DATASET_EPS, default_eps

    config = _read_override(args, method)
    if args.quick:
        config = _merge(config, dict(QUICK, params=QUICK_PARAMS[method]))
    recipe = load_recipe(method)
    if (config.get("evaluation") or {}).get("eps") is None and recipe["evaluation"]["eps"] is None:
        shape = (3,) if data == "cifar10" else (1,)
        config = _merge(config, {"evaluation": {"eps": [float(e) for e in default_eps(shape)]}})
    if "eps" in recipe["params"] and (config.get("params") or {}).get("eps") is None:
        config = _merge(config, {"params": {"eps": float(DATASET_EPS[data])}})
    if method == "atmc" and getattr(args, "atmc_from", None):
        config = _merge(config, {"params": {"pretrained_robust": args.atmc_from == "adv_dense"}})
    return config


def atmc_start(atmc_from, adv_dense):
    """The model ATMC compresses: ``"adv_dense"`` or ``"dense"``.

    ``atmc_from=None`` picks ``"adv_dense"`` when the dense adversarially trained row is trained
    (``adv_dense`` not ``"none"``), else ``"dense"``.

    Raises:
        InputError: ``atmc_from="adv_dense"`` with ``adv_dense="none"`` (no such model).
    """
    if atmc_from is None:
        return "dense" if adv_dense == "none" else "adv_dense"
    if atmc_from == "adv_dense" and adv_dense == "none":
        raise InputError("--atmc_from adv_dense needs the dense adversarially trained model; drop --adv_dense none "
                         "or pass --atmc_from dense.")
    return atmc_from


def run_order(methods, atmc_from):
    """``methods`` in run order: ATMC from the adversarially trained model after the first run that trains the
    dense model (the adversarial fine-tuning needs it); unchanged when no other method trains it."""
    trainers = [m for m in methods if m not in ("atmc", "rlnet")]
    if atmc_from != "adv_dense" or "atmc" not in methods or not trainers:
        return list(methods)
    rest = [m for m in methods if m != "atmc"]
    cut = rest.index(trainers[0]) + 1
    return rest[:cut] + ["atmc"] + rest[cut:]


def write_data_file(data, data_dir, path, train_size=None, test_size=None, seed=0):
    """Write a built-in dataset as one ``.npz`` (raw pixels) with ``x_train`` / ``x_test`` parts.

    Each part is shuffled with ``seed`` and cut to its first ``train_size`` / ``test_size`` rows
    (None keeps all); digits (no test part) is split 75/25 first. An existing file is kept.

    Returns:
        ``{"train": rows, "test": rows, "files": [what was read]}``.
    """
    from tfsafe.data import load_builtin

    (x, y), (xt, yt), files = load_builtin(data, data_dir, raw=True)
    if xt is None or len(xt) == 0:
        order = np.random.default_rng(seed).permutation(len(x))
        cut = (3 * len(x)) // 4
        (x, y), (xt, yt) = (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])
    rng = np.random.default_rng(seed)
    train, test = rng.permutation(len(x))[:train_size], rng.permutation(len(xt))[:test_size]
    if not os.path.exists(path):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, x_train=x[train], y_train=np.asarray(y)[train], x_test=xt[test],
                                    y_test=np.asarray(yt)[test])
    return {"train": int(len(train)), "test": int(len(test)), "files": [str(f) for f in files]}


def _method_seconds(run_dir):
    """Seconds of the method's own stages (not dense training, export or evaluation), from run.json."""
    from tfsafe.pipeline.run_state import RUN_FILE

    with open(os.path.join(run_dir, RUN_FILE), encoding="utf-8") as f:
        stages = json.load(f)["stages"]
    shared = ("dense", "export")
    return sum(v["seconds"] for k, v in stages.items() if k not in shared and not k.startswith("evaluate_"))


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _row(name, entry, dense, seconds):
    rob, mia, size = entry.get("robustness") or {}, (entry.get("membership") or {}).get("worst") or {}, entry["size"]
    return {
        "model": name, "accuracy": entry["accuracy"], "pgd": rob.get("pgd", {}), "fgsm": rob.get("fgsm_accuracy"),
        "corruption": rob.get("corruption_mean_accuracy"), "mce": rob.get("corruption_mce"),
        "safety_set": rob.get("safety_set_accuracy"), "mia_auc": mia.get("auc"), "mia_advantage": mia.get("advantage"),
        "tpr_1pct": mia.get("tpr_at_1pct_fpr"), "tpr_01pct": mia.get("tpr_at_01pct_fpr"),
        "mia_attack": mia.get("attack"), "ideal_bytes": size["ideal_bytes"],
        "size_ratio": size["ideal_bytes"] / dense["size"]["ideal_bytes"], "average_bits": size["average_bits"],
        "sparsity": size["sparsity"], "relus": size["relu_count"], "seconds": seconds,
    }


def _smallest_eps(pgd):
    """``(eps, accuracy)`` at the smallest eps (the largest usually leaves nothing to compare)."""
    if not pgd:
        return None
    eps = min(pgd, key=float)
    return eps, pgd[eps]


def _deployed_row(name, entry, compressed):
    rob = entry.get("robustness") or {}
    mia = (entry.get("membership") or {}).get("worst") or {}
    ideal = compressed["size"]["ideal_bytes"]  # the compressed model as it ships (metrics.model_size)
    return {"model": name, "bytes": entry["file"]["bytes"], "gzip_bytes": entry["file"]["gzip_bytes"],
            "ideal_bytes": ideal, "over_ideal": entry["file"]["bytes"] / ideal if ideal else None,
            "accuracy": entry["accuracy"], "agreement": entry["parity"]["top1_agreement"],
            "pgd_transfer": _smallest_eps(rob.get("pgd") or {}), "corruption": rob.get("corruption_mean_accuracy"),
            "mia_auc": mia.get("auc"), "tpr_1pct": mia.get("tpr_at_1pct_fpr")}


def adversarial_dense(dense_path, data_path, args, log=print):
    """Fine-tune the dense model with fast adversarial training and evaluate it like the others.

    The splits, seed and evaluation settings are the baseline recipe's (with ``--config_dir`` /
    ``--quick`` overrides), so the row sits on the same members, test set and attacks as the
    rest. The model and its evaluation are saved in ``<out>/adv_dense/``; ``--resume`` reuses a
    finished one with the same settings.

    Returns:
        ``(model_path, entry, seconds)``: the saved model, its evaluation (``accuracy``,
        ``robustness``, ``membership``, ``size``) and the adversarial training's wall time.
    """
    from tfsafe._keras import keras
    from tfsafe.io import load_model, save_model
    from tfsafe.models import copy_model
    from tfsafe.pipeline.compress import load_splits
    from tfsafe.safety.adversarial_training import AdversarialModel, CatastrophicOverfittingGuard, EpsilonRamp
    from tfsafe.safety.evaluate import DATASET_EPS

    settings = _merge(_merge(ADV_DENSE, _read_override(args, "adv_dense")), {"attack": args.adv_dense})
    if args.quick:
        settings = _merge(settings, QUICK_ADV_DENSE)
    config = _config("baseline", args, args.data_name)
    recipe = load_recipe("baseline", config)
    eps = float(settings["eps"] if settings["eps"] is not None else DATASET_EPS[args.data_name])
    out = os.path.join(os.path.splitext(args.out)[0], "adv_dense")
    result_path, model_path = os.path.join(out, "evaluation.json"), os.path.join(out, "adv_dense.keras")
    identity = {"settings": settings, "eps": eps, "evaluation": recipe["evaluation"], "seed": recipe["seed"],
                "dense": os.path.abspath(dense_path), "data": os.path.abspath(data_path)}
    if args.resume and os.path.exists(result_path) and os.path.exists(model_path):
        with open(result_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("identity") == identity:
            log(f"[adv_dense] done in an earlier run; loaded {result_path}")
            return model_path, saved["entry"], saved["seconds"]
    dense = load_model(dense_path)
    seed = int(recipe["seed"])
    _, _, splits = load_splits(data_path, None, recipe["data"], seed, model=dense)
    x, y = splits.train
    xv, yv = splits.validation
    n_guard = min(int(settings["guard_examples"]), len(xv))
    keras.utils.set_random_seed(seed)
    adv = AdversarialModel(copy_model(dense), eps=eps, adv_weight=1.0, attack=settings["attack"])
    adv.compile(optimizer=keras.optimizers.Adam(float(settings["learning_rate"])), metrics=["accuracy"])
    guard = CatastrophicOverfittingGuard(xv[:n_guard], yv[:n_guard], steps=int(settings["guard_steps"]),
                                         action="stop", restore_best=True)
    log(f"[adv_dense] {settings['attack']} adversarial training of the dense model at eps {eps:.4g}, "
        f"{settings['epochs']} epochs on {len(x)} members")
    started = time.perf_counter()
    adv.fit(x, y, epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
            verbose=2 if args.verbose else 0, callbacks=[EpsilonRamp(float(settings["ramp_epochs"])), guard])
    seconds = time.perf_counter() - started
    model = adv.model
    save_model(model, model_path)
    log("[adv_dense] safety tests")
    entry = dict(_evaluate(model, splits, dense, recipe["evaluation"]), guard=guard.records)
    atomic_write_json(result_path, {"identity": identity, "entry": entry, "seconds": seconds})
    return model_path, entry, seconds


def _evaluate(model, splits, reference, ev):
    """The evaluation of a compare row (``accuracy``, ``robustness``, ``membership``, ``size``, ``flags``)."""
    from tfsafe.metrics import model_size
    from tfsafe.safety.evaluate import evaluate_safety

    result = evaluate_safety(model, splits, source=None, reference=reference, eps=ev["eps"], steps=int(ev["steps"]),
                             restarts=int(ev["restarts"]), max_examples=ev["max_examples"],
                             membership_attacks=ev["membership_attacks"], attacks=tuple(ev["attacks"]),
                             masking_checks=bool(ev["masking_checks"]))
    return {"accuracy": result["accuracy"], "robustness": result["robustness"], "membership": result["membership"],
            "size": model_size(model), "flags": result["flags"]}


def train_dense(method, data_path, args, log=print):
    """Train and evaluate the dense model as ``method``'s run would, for a run that is handed a model first.

    ``--methods atmc`` with ``--atmc_from adv_dense`` has no run that trains the dense model, so it
    is trained here (the recipe's ``dense`` settings, seed and splits, as the pipeline's ``dense``
    stage does) and evaluated like the other rows, in ``<out>/dense/``; ``--resume`` reuses it.

    Returns:
        ``(model_path, entry)``.
    """
    from tfsafe._keras import keras
    from tfsafe.io import load_model, save_model
    from tfsafe.models import compile_classifier
    from tfsafe.pipeline.compress import dense_model, load_splits

    recipe = load_recipe(method, _config(method, args, args.data_name))
    out = os.path.join(os.path.splitext(args.out)[0], "dense")
    result_path, model_path = os.path.join(out, "evaluation.json"), os.path.join(out, "dense.keras")
    identity = {"dense": recipe["dense"], "evaluation": recipe["evaluation"], "seed": recipe["seed"],
                "data": os.path.abspath(data_path)}
    seed = int(recipe["seed"])
    user, _, splits = load_splits(data_path, None, recipe["data"], seed)
    if args.resume and os.path.exists(result_path) and os.path.exists(model_path):
        with open(result_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("identity") == identity:
            log(f"[dense] done in an earlier run; loaded {result_path}")
            return model_path, saved["entry"]
    settings = recipe["dense"]
    (x, y), validation = splits.train, splits.validation
    keras.utils.set_random_seed(seed)
    num_classes = max(user.num_classes, int(max(y.max(), splits.test[1].max())) + 1)
    model = dense_model(settings["architecture"], x.shape[1:], num_classes)
    compile_classifier(model, float(settings["learning_rate"]))
    log(f"[dense] training {settings['architecture']}, {settings['epochs']} epochs on {len(x)} members")
    model.fit(x, y, epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
              validation_data=validation if len(validation[0]) else None, verbose=args.verbose)
    save_model(model, model_path)
    model = load_model(model_path)  # what the method runs load
    log("[dense] safety tests")
    entry = _evaluate(model, splits, model, recipe["evaluation"])
    atomic_write_json(result_path, {"identity": identity, "entry": entry})
    return model_path, entry


def rlnet_teacher_check(run_dir, data_path, args, dense_relus, relus):
    """RLNet's target: >= 10x fewer ReLUs within 2 points of its robust teacher's clean accuracy.

    The teacher is the one the run checkpointed (``checkpoints/rlnet/<last stage>/teacher.keras``);
    both models are measured on the whole test split, each on the BN path it deploys.
    """
    from tfsafe.io import load_model
    from tfsafe.models import accuracy
    from tfsafe.pipeline.compress import load_splits

    stages = os.path.join(run_dir, "checkpoints", "rlnet")
    teachers = [os.path.join(stages, s, "teacher.keras") for s in ("finetune", "search", "teacher")]
    teacher_path = next((t for t in teachers if os.path.exists(t)), None)
    if teacher_path is None:
        return None
    recipe = load_recipe("rlnet", _config("rlnet", args, args.data_name))
    _, _, splits = load_splits(data_path, None, recipe["data"], int(recipe["seed"]))
    teacher, student = load_model(teacher_path), load_model(os.path.join(run_dir, "compressed.keras"))
    t_acc, s_acc = accuracy(teacher, splits.test), accuracy(student, splits.test)
    reduction = dense_relus / relus if relus else None
    return {"teacher_accuracy": t_acc, "student_accuracy": s_acc, "gap_points": 100 * (t_acc - s_acc),
            "relu_reduction": reduction, "test_examples": int(len(splits.test[0])),
            "inference_path": recipe["params"].get("inference_path"),
            "met": bool(reduction is not None and reduction >= 10 and 100 * (t_acc - s_acc) <= 2)}


def tables(rows, deployed):
    """The Markdown tables of the Keras models and of the deployed ``.tflite`` files."""
    eps = sorted({e for r in rows for e in r["pgd"]}, key=float)
    head = (["model", "acc"] + [f"PGD {e}" for e in eps] + ["FGSM", "corr. acc", "mCE", "safety set", "MIA AUC",
            "MIA adv.", "TPR@1%", "TPR@0.1%", "ideal bytes", "x dense", "avg bits", "sparsity", "ReLUs", "method s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["model"], _fmt(r["accuracy"], ".4f")] + [_fmt(r["pgd"].get(e), ".4f") for e in eps] +
                 [_fmt(r["fgsm"], ".4f"), _fmt(r["corruption"], ".4f"), _fmt(r["mce"], ".3f"),
                  _fmt(r["safety_set"], ".3f"), _fmt(r["mia_auc"], ".3f"), _fmt(r["mia_advantage"], ".3f"),
                  _fmt(r["tpr_1pct"], ".3f"), _fmt(r["tpr_01pct"], ".3f"), _fmt(r["ideal_bytes"], ",.0f"),
                  _fmt(r["size_ratio"], ".3f"), _fmt(r["average_bits"], ".1f"), _fmt(r["sparsity"], ".1%"),
                  _fmt(r["relus"], ","), _fmt(r["seconds"], ".0f")])
        lines.append("| " + " | ".join(cells) + " |")
    base = next((d["bytes"] for d in deployed if d["model"].startswith("baseline")), None)
    transfer_eps = next((d["pgd_transfer"][0] for d in deployed if d["pgd_transfer"]), "")
    lines += ["", f"| int8 .tflite | ideal bytes | .tflite bytes | .tflite / ideal | x baseline | gzip bytes | acc "
              f"| agreement | PGD {transfer_eps} (transfer) | corr. acc | MIA AUC | TPR@1% |", "|" + "---|" * 12]
    for d in deployed:
        transfer = d["pgd_transfer"][1] if d["pgd_transfer"] else None
        lines.append(f"| {d['model']} | {_fmt(d.get('ideal_bytes'), ',.0f')} | {d['bytes']:,} | "
                     f"{_fmt(d.get('over_ideal'), '.2f')} | {_fmt(d['bytes'] / base if base else None, '.2f')} | "
                     f"{d['gzip_bytes']:,} | {d['accuracy']:.4f} | {d['agreement']:.4f} | "
                     f"{_fmt(transfer, '.4f')} | {_fmt(d['corruption'], '.4f')} | "
                     f"{_fmt(d['mia_auc'], '.3f')} | {_fmt(d['tpr_1pct'], '.3f')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, choices=["digits", "mnist", "fashion_mnist", "cifar10"],
                        help="dataset (default: mnist with --data_dir, else digits)")
    parser.add_argument("--data_dir", default=None, help="folder holding the dataset files")
    parser.add_argument("--methods", default=",".join(ORDER), help="comma-separated subset of " + ",".join(ORDER))
    parser.add_argument("--config_dir", default=None, help="folder of <method>.json recipe overrides")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the harness, not the methods")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs in the run folders")
    parser.add_argument("--train_size", type=int, default=None, help="x_train rows of the data file (default all)")
    parser.add_argument("--test_size", type=int, default=None, help="x_test rows of the data file (default all)")
    parser.add_argument("--adv_dense", default="fgsm_rs", choices=["fgsm_rs", "free", "pgd", "none"],
                        help="attack of the dense adversarially trained row ('none' leaves the row out)")
    parser.add_argument("--atmc_from", default=None, choices=["dense", "adv_dense"],
                        help="model ATMC compresses: the dense adversarially trained one with pretrained_robust=True "
                             "(default when --adv_dense is not 'none') or the standard dense one")
    parser.add_argument("--out", default="out/bench/compare.json")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    from tfsafe.pipeline import compress_model  # TensorFlow loads after --help

    data = args.data or ("mnist" if args.data_dir else "digits")
    args.data_name = data
    if args.config_dir is None and os.path.isdir(os.path.join(ROOT, "benchmarks", "configs", data)):
        args.config_dir = os.path.join(ROOT, "benchmarks", "configs", data)
    methods = [m for m in args.methods.split(",") if m]
    try:
        args.atmc_from = atmc_start(args.atmc_from, args.adv_dense)
    except InputError as err:
        parser.error(str(err))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(ORDER)}")
    run_dir = os.path.splitext(args.out)[0]
    sizes = QUICK_SIZES if args.quick else (args.train_size, args.test_size)
    data_path = os.path.join(run_dir, "data.npz")
    data_info = write_data_file(data, args.data_dir, data_path, *sizes)
    print(f"data: {data} -> {data_path} ({data_info['train']} x_train rows, {data_info['test']} x_test rows; "
          f"config overrides: {args.config_dir or 'none'})", flush=True)
    dense_path, adv_path, dense_entry, rows, deployed, reports, rlnet_check, failures = (
        None, None, None, [], [], {}, None, {})

    def add_dense_rows(path, entry):
        """The dense row, then the dense adversarially trained one (fine-tuned from ``path``)."""
        nonlocal dense_path, adv_path, dense_entry
        dense_path, dense_entry = path, entry
        rows.append(_row("dense", entry, entry, None))
        if args.adv_dense != "none":
            adv_path, adv_entry, adv_seconds = adversarial_dense(path, data_path, args,
                                                                 log=lambda m: print(m, flush=True))
            rows.append(_row(f"dense adv. trained ({args.adv_dense})", adv_entry, entry, adv_seconds))

    for method in run_order(methods, args.atmc_from):
        started = time.perf_counter()
        out = os.path.join(run_dir, method)
        from_adv = method == "atmc" and args.atmc_from == "adv_dense"
        if from_adv and dense_path is None:  # no run has trained the dense model yet (e.g. --methods atmc)
            add_dense_rows(*train_dense(method, data_path, args, log=lambda m: print(m, flush=True)))
        shared = None if method == "rlnet" else adv_path if from_adv else dense_path
        print(f"== {method} ({data}) -> {out}" + (f" from {shared}" if shared else ""), flush=True)
        try:
            report = compress_model(method, data_path, model=shared, config=_config(method, args, data),
                                    out_dir=out, resume=args.resume, verbose=args.verbose,
                                    log=lambda m: print(m, flush=True) if m.startswith("[") else None)
        except TfsafeError as err:  # one method's failure (e.g. a refused export) leaves the others' rows
            print(f"== {method}: FAILED: {err}", flush=True)
            failures[method] = str(err)
            continue
        print(f"== {method}: {time.perf_counter() - started:.0f} s with evaluations", flush=True)
        seconds = _method_seconds(out)
        dense, compressed, tflite = report["models"]
        if method != "rlnet" and dense_path is None:
            add_dense_rows(os.path.join(out, "dense.keras"), dense)
        if method == "rlnet":
            rows.append(_row("dense rlnet_cnn (BN)", dense, dense, None))
            rlnet_check = rlnet_teacher_check(out, data_path, args, dense["size"]["relu_count"],
                                              compressed["size"]["relu_count"])
        name = {"baseline": "TF-MOT pruning (unsafe baseline)",
                "atmc": f"atmc (from {args.atmc_from})"}.get(method, method)
        rows.append(_row(name, compressed, dense if method == "rlnet" else dense_entry, seconds))
        deployed.append(_deployed_row(name if method == "atmc" else method, tflite, compressed))
        reports[method] = report
    text = tables(rows, deployed)
    for method, message in failures.items():
        text += f"\n\n{method}: no row, the run failed: {message}"
    if "atmc" in reports and args.atmc_from == "adv_dense":
        text += (f"\n\nATMC compressed the dense adversarially trained model ({args.adv_dense}; "
                 "params.pretrained_robust true: full eps from the first step); its mCE, safety set and agreement "
                 "are against that model, its 'method s' is ATMC's own stages (the adversarial training is the row "
                 "above).")
    if rlnet_check:
        c = rlnet_check
        text += (f"\n\nRLNet vs its robust teacher ({c['inference_path']} BN path, {c['test_examples']} test images): "
                 f"teacher {c['teacher_accuracy']:.4f}, student {c['student_accuracy']:.4f} "
                 f"({c['gap_points']:.1f} points below), {_fmt(c['relu_reduction'], '.1f')}x fewer ReLUs than the "
                 f"dense rlnet_cnn; target (>= 10x, within 2 points): {'met' if c['met'] else 'MISSED'}")
    print(f"\n## {data}: dense vs unsafe baseline vs methods (same splits, same tests)\n\n{text}\n", flush=True)
    atomic_write_json(args.out, {"data": data, "data_file": data_info, "quick": args.quick,
                                 "config_dir": args.config_dir, "rows": rows, "deployed": deployed,
                                 "rlnet_teacher_check": rlnet_check, "failures": failures,
                                 "splits": next(iter(reports.values()))["meta"]["splits"] if reports else None})
    atomic_write_text(os.path.splitext(args.out)[0] + ".md", text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TfsafeError as err:
        print(f"compare: error: {err}", file=sys.stderr)
        sys.exit(2)

"""One comparison of dense, the unsafe TF-MOT baseline and every method, on the same data.

Every row comes from ``tfsafe.pipeline.compress_model`` with the method's built-in recipe
(``tfsafe/recipes/<method>.json``, overridable per method with ``--config_dir``), so the
numbers are what ``tfsafe compress`` gives a user. All runs share one seeded split (members /
validation / audit non-members / test) and the same evaluation: accuracy, PGD (>= 20 steps,
random start) at every eps, FGSM, corruptions (mean accuracy, mCE against the dense model),
safety-set accuracy, and the worst case over tensorflow-privacy's membership attacks on
balanced members vs. never-used audit non-members. The dense model is trained once (by the
first run) and compressed by every method except RLNet, which needs batch norm before its
ReLUs and trains its own ``rlnet_cnn`` (its dense row is shown too).

Usage:
    .venv/bin/python benchmarks/compare.py                          # bundled digits
    .venv/bin/python benchmarks/compare.py --data mnist --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/compare.py --quick                  # tiny settings, a smoke run

Runs land in ``<out>/<method>/`` (each a resumable ``tfsafe compress`` run: pass ``--resume``
after an interruption); the table is printed and written, with the raw rows, to ``--out``.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfsafe.io import atomic_write_json, atomic_write_text  # noqa: E402
from tfsafe.recipes import METHODS  # noqa: E402

ORDER = ("baseline", "safecompress", "atmc", "self_compress", "rlnet")
QUICK = {
    "data": {"pool_size": 900}, "dense": {"epochs": 5},
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


def _config(method, args):
    config = {}
    if args.quick:
        config = dict(QUICK, params=QUICK_PARAMS[method])
    if args.config_dir:
        path = os.path.join(args.config_dir, f"{method}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                config.update(json.load(f))
    return config or None


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
    parser.add_argument("--out", default="out/bench/compare.json")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    from tfsafe.pipeline import compress_model  # TensorFlow loads after --help

    data = args.data or ("mnist" if args.data_dir else "digits")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(ORDER)}")
    run_dir = os.path.splitext(args.out)[0]
    dense_path, rows, deployed, reports = None, [], [], {}
    for method in methods:
        started = time.perf_counter()
        out = os.path.join(run_dir, method)
        shared = dense_path if method != "rlnet" else None
        print(f"== {method} ({data}) -> {out}", flush=True)
        report = compress_model(method, data, model=shared, data_dir=args.data_dir, config=_config(method, args),
                                out_dir=out, resume=args.resume, verbose=args.verbose,
                                log=lambda m: print(m, flush=True) if m.startswith("[") else None)
        print(f"== {method}: {time.perf_counter() - started:.0f} s with evaluations", flush=True)
        seconds = _method_seconds(out)
        dense, compressed, tflite = report["models"]
        if method != "rlnet" and dense_path is None:
            dense_path = os.path.join(out, "dense.keras")
            rows.append(_row("dense", dense, dense, None))
        if method == "rlnet":
            rows.append(_row("dense rlnet_cnn (BN)", dense, dense, None))
        rows.append(_row("TF-MOT pruning (unsafe baseline)" if method == "baseline" else method, compressed,
                         dense, seconds))
        deployed.append(_deployed_row(f"{method}", tflite, compressed))
        reports[method] = report
    text = tables(rows, deployed)
    print(f"\n## {data}: dense vs unsafe baseline vs methods (same splits, same tests)\n\n{text}\n", flush=True)
    atomic_write_json(args.out, {"data": data, "quick": args.quick, "rows": rows, "deployed": deployed,
                                 "splits": next(iter(reports.values()))["meta"]["splits"] if reports else None})
    atomic_write_text(os.path.splitext(args.out)[0] + ".md", text + "\n")
    return 0


if __name__ == "__main__":
    from tfsafe.errors import TfsafeError

    try:
        sys.exit(main())
    except TfsafeError as err:
        print(f"compare: error: {err}", file=sys.stderr)
        sys.exit(2)

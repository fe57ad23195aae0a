"""RLNet benchmark: ReLU count vs clean, corrupted and PGD accuracy (one run).

Rows (all built in this run, same data and architecture, a Conv-BN-ReLU CNN):

- standard: all-ReLU model trained with cross-entropy (the reference for ReLU ratios and mCE);
- robust teacher: RLNet stage 1 (augmentation + PGD training + dual BN), started from the
  standard model; evaluated through its deployed (clean) BN path and its adversarial path;
- SNL baseline: non-robust linearization (mask search + KD fine-tuning from the standard model,
  no adversarial examples, no augmentation) at each budget;
- RLNet: stages 2-3 from the robust teacher at each budget, both BN paths.

PGD: Linf, random start, ``--eval_steps`` steps, ``--eval_restarts`` restarts, worst case per
example, on the first ``--adv_size`` test images. Corruptions: all of
``tfsafe.safety.corruptions.CORRUPTIONS`` x 5 severities on the first ``--test_size`` test images.
The RLNet students are also exported to int8 TFLite (masks as elementwise ops) and checked.

    .venv/bin/python benchmarks/rlnet_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/rlnet_bench.py --quick
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_common import load_data  # noqa: E402

from tfsafe._keras import keras  # noqa: E402
from tfsafe.compress.dual_bn import with_inference_path  # noqa: E402
from tfsafe.compress.linearization import mask_layers  # noqa: E402
from tfsafe.compress.strip import strip  # noqa: E402
from tfsafe.io import atomic_write_json  # noqa: E402
from tfsafe.methods.rlnet import (  # noqa: E402
    finetune_student,
    rlnet_cnn,
    search_robust_mask,
    train_robust_teacher,
)
from tfsafe.metrics import relu_count  # noqa: E402
from tfsafe.models import accuracy, compile_classifier  # noqa: E402
from tfsafe.safety.corruptions import corruption_accuracy  # noqa: E402
from tfsafe.safety.robust_accuracy import adversarial_accuracy, transfer_attack  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder (e.g. /work/shared/data/mnist)")
    p.add_argument("--quick", action="store_true", help="bundled digits, small settings")
    p.add_argument("--train_size", type=int, default=None, help="training subset (default 4000 MNIST, all digits)")
    p.add_argument("--test_size", type=int, default=1000, help="test images for clean and corruption accuracy")
    p.add_argument("--adv_size", type=int, default=500, help="test images attacked with PGD")
    p.add_argument("--eps", type=float, default=None, help="Linf radius (default 0.3 MNIST, 0.1 digits)")
    p.add_argument("--budgets", default="0.1,0.05", help="ReLU budgets as fractions of the all-ReLU count")
    p.add_argument("--std_epochs", type=int, default=None)
    p.add_argument("--teacher_epochs", type=int, default=None)
    p.add_argument("--search_epochs", type=int, default=None)
    p.add_argument("--finetune_epochs", type=int, default=None)
    p.add_argument("--pgd_steps", type=int, default=None, help="PGD steps while training")
    p.add_argument("--eval_steps", type=int, default=20)
    p.add_argument("--eval_restarts", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--linear", default="identity", choices=("identity", "poly"))
    p.add_argument("--allocation", default="global", choices=("global", "sensitivity"))
    p.add_argument("--no_export", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/rlnet.json")
    args = p.parse_args(argv)
    quick = args.quick or args.data_dir is None
    defaults = ({"train_size": None, "eps": 0.1, "std_epochs": 15, "teacher_epochs": 8, "search_epochs": 20,
                 "finetune_epochs": 8, "pgd_steps": 5, "batch_size": 32} if quick else
                {"train_size": 4000, "eps": 0.3, "std_epochs": 4, "teacher_epochs": 10, "search_epochs": 4,
                 "finetune_epochs": 8, "pgd_steps": 7, "batch_size": 64})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.quick = quick
    return args


def load(args):
    (x, y), (xt, yt) = load_data(args.quick, args.data_dir)
    name = "digits" if args.quick else "mnist"
    rng = np.random.default_rng(args.seed)
    if args.train_size and args.train_size < len(x):
        idx = rng.choice(len(x), args.train_size, replace=False)
        x, y = x[idx], y[idx]
    xt, yt = xt[:args.test_size], yt[:args.test_size]
    return name, (x, y), (xt, yt)


def evaluate(label, model, path, data, args, reference, std_relus, timing):
    xt, yt = data
    t0 = time.time()
    corr = corruption_accuracy(model, xt, yt, reference=reference)
    adv = adversarial_accuracy(model, xt[:args.adv_size], yt[:args.adv_size], args.eps,
                               steps=args.eval_steps, restarts=args.eval_restarts)
    relus = relu_count(model)
    row = {"model": label, "bn_path": path, "relus": relus, "relu_reduction": std_relus / max(relus, 1),
           "clean": accuracy(model, xt, yt), "corruption_mean": corr["mean_accuracy"], "mce": corr["mce"],
           "pgd": adv, "train_seconds": timing, "eval_seconds": time.time() - t0}
    print(f"  {label:<28} {path:<11} relus={relus:<6} clean={row['clean']:.4f} "
          f"corr={row['corruption_mean']:.4f} pgd={adv:.4f}", flush=True)
    return row


def export(student, label, path_name, data, args, out_dir):
    xt, yt = data
    from tflite_export.convert import to_tflite

    if path_name != "clean":
        student = with_inference_path(student, path_name)
    path = os.path.join(out_dir, f"{label.replace(' ', '_').replace('@', '')}_{path_name}_int8.tflite")
    result = to_tflite(student, path, "int8", xt[:500], verify=(xt, yt), min_agreement=0.95)
    transfer = transfer_attack(student, path, xt[:args.adv_size], yt[:args.adv_size], args.eps,
                               steps=args.eval_steps, restarts=args.eval_restarts)
    return {"model": label, "bn_path": path_name, "tflite_bytes": result.bytes,
            "exported_relus": relu_count(strip(student)),
            "tflite_accuracy": result.parity.exported_accuracy, "keras_accuracy": result.parity.keras_accuracy,
            "top1_agreement": result.parity.top1_agreement, "ops": result.ops,
            "tflite_transfer_pgd": transfer["target_adv_accuracy"]}


def table(rows, teacher, baseline):
    lines = ["| model | BN path | ReLUs | fewer ReLUs | clean acc | Δ clean vs teacher | corruption acc | mCE | "
             "PGD acc | PGD vs SNL | corr vs SNL |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        snl = baseline.get(r["relus"])
        d_pgd = f"{r['pgd'] - snl['pgd']:+.3f}" if snl and r is not snl else ""
        d_corr = f"{r['corruption_mean'] - snl['corruption_mean']:+.3f}" if snl and r is not snl else ""
        mce = "" if r["mce"] is None else f"{r['mce']:.3f}"
        teacher_clean = teacher.get(r["bn_path"], teacher["clean"])
        lines.append(f"| {r['model']} | {r['bn_path']} | {r['relus']} | {r['relu_reduction']:.1f}x | "
                     f"{r['clean']:.4f} | {r['clean'] - teacher_clean:+.4f} | {r['corruption_mean']:.4f} | {mce} | "
                     f"{r['pgd']:.4f} | {d_pgd} | {d_corr} |")
    return "\n".join(lines)


def export_table(rows):
    lines = ["| model | BN path | exported ReLUs | .tflite bytes | int8 acc | Keras acc | top-1 agreement | "
             "transfer PGD acc (int8) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bn_path']} | {r['exported_relus']} | {r['tflite_bytes']} | "
                     f"{r['tflite_accuracy']:.4f} | "
                     f"{r['keras_accuracy']:.4f} | {r['top1_agreement']:.4f} | {r['tflite_transfer_pgd']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.time()
    load_before = os.getloadavg()
    name, (x, y), test = load(args)
    print(f"data={name} train={len(x)} test={len(test[0])} adv={min(args.adv_size, len(test[0]))} eps={args.eps} "
          f"settings={vars(args)}", flush=True)
    common = {"batch_size": args.batch_size, "pgd_steps": args.pgd_steps}

    t = time.time()
    std = rlnet_cnn(x.shape[1:], 10, dual_bn=False, name="standard")
    compile_classifier(std, 2e-3)
    std.fit(x, y, epochs=args.std_epochs, batch_size=args.batch_size, verbose=0, shuffle=True)
    std_time = time.time() - t
    std_relus = relu_count(std)
    budgets = [max(1, int(round(float(f) * std_relus))) for f in args.budgets.split(",")]
    print(f"standard trained in {std_time:.0f}s; ReLUs={std_relus}; budgets={budgets}", flush=True)
    rows = [evaluate("standard (all-ReLU)", std, "-", test, args, std, std_relus, std_time)]

    t = time.time()
    teacher = train_robust_teacher(std, x, y, eps=args.eps, epochs=args.teacher_epochs, **common)
    teacher_time = time.time() - t
    rows.append(evaluate("robust teacher (all-ReLU)", teacher, "clean", test, args, std, std_relus, teacher_time))
    rows.append(evaluate("robust teacher (all-ReLU)", with_inference_path(teacher, "adversarial"), "adversarial",
                         test, args, std, std_relus, teacher_time))

    baseline, students = {}, []
    for budget in budgets:
        t = time.time()
        snl, schedule = search_robust_mask(std, x, y, budget, eps=args.eps, epochs=args.search_epochs,
                                           adversarial=False, augment=False, linear=args.linear,
                                           allocation=args.allocation, **common)
        finetune_student(snl, std, x, y, eps=args.eps, epochs=args.finetune_epochs, adversarial=False, augment=False,
                         **common)
        row = evaluate(f"SNL baseline @{budget}", snl, "-", test, args, std, std_relus, time.time() - t)
        row["search_reached"] = schedule.reached
        rows.append(row)
        baseline[budget] = row

        t = time.time()
        student, schedule = search_robust_mask(teacher, x, y, budget, eps=args.eps, epochs=args.search_epochs,
                                               linear=args.linear, allocation=args.allocation, **common)
        finetune_student(student, teacher, x, y, eps=args.eps, epochs=args.finetune_epochs, **common)
        elapsed = time.time() - t
        per_layer = {m.name: m.relu_count() for m in mask_layers(student)}
        for path, model in (("clean", student), ("adversarial", with_inference_path(student, "adversarial"))):
            row = evaluate(f"RLNet @{budget}", model, path, test, args, std, std_relus, elapsed)
            row["search_reached"] = schedule.reached
            row["relus_per_layer"] = per_layer
            rows.append(row)
        students.append((f"RLNet @{budget}", student))

    teacher = {"clean": rows[1]["clean"], "adversarial": rows[2]["clean"]}
    print(f"\n## RLNet benchmark ({name}, eps={args.eps}, PGD {args.eval_steps} steps x {args.eval_restarts} "
          f"restarts on {min(args.adv_size, len(test[0]))} images, corruptions on {len(test[0])})\n")
    print(table(rows, teacher, baseline))
    print("\nΔ clean vs teacher: against the robust teacher's accuracy on the same BN path (clean path for rows "
          "without dual BN). PGD/corr vs SNL: against the non-robust linearized baseline at the same ReLU count. "
          "mCE: relative to the standard model.")

    exports = []
    if not args.no_export:
        out_dir = tempfile.mkdtemp(prefix="rlnet_bench_")
        for label, student in students:
            for path_name in ("clean", "adversarial"):
                exports.append(export(student, label, path_name, test, args, out_dir))
        print("\n### int8 TFLite export (strip() keeps one BN path; masks as elementwise ops; transfer PGD: "
              "crafted on the float Keras model of the same path)\n")
        print(export_table(exports))
    total = time.time() - start
    print(f"\ntotal time {total:.0f}s (load average at start {load_before[0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
    atomic_write_json(args.out, {"dataset": name, "settings": vars(args), "train_size": len(x), "rows": rows,
                                 "exports": exports, "seconds": total, "loadavg_start": load_before[0],
                                 "loadavg_end": os.getloadavg()[0]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

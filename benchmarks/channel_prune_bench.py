"""Channel pruning vs unstructured pruning of LeNet on MNIST: what the phone gets.

Trains the ATMC LeNet (``tfsafe.models.lenet``) on a subset of MNIST, then in the same run:

- ``channel 50%`` / ``channel 75%``: ``prune_safe(dense, s, granularity="channel",
  init="uniform")`` (that share of the filters / units of conv1, conv2 and fc1; the logits
  layer keeps its 10 units), fine-tuned with per-channel ``DynamicSparsity`` (L2 drop, random
  regrowth), then ``strip()``: the pruned channels and the matching inputs of the next layers
  are removed physically;
- ``unstructured @ channel s``: ``prune_safe(dense, ...)`` (ERK, weight granularity) at the
  sparsity whose non-zero count equals the stripped channel model's parameter count, fine-tuned
  the same way (weight-level ``DynamicSparsity``).

Every model is exported to int8 ``.tflite`` (full-integer, ``to_tflite`` defaults: TFLite's
sparse encoding is tried when most kernel weights are zero and kept only when the file shrinks
and XNNPack runs it) and measured: parameters and non-zeros, ideal bytes at 8 bits (non-zeros
x 1 byte), ``.tflite`` bytes and their ratio to the ideal, p50 latency of one example with
LiteRT at 1 thread (XNNPack on, the phone default; median over interleaved rounds) and its ratio
to the dense int8 model of the same run, Keras and ``.tflite`` accuracy on the test subset.

Usage:
    .venv/bin/python benchmarks/channel_prune_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/channel_prune_bench.py --quick     # digits resized to 28x28
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import load_lenet_data  # noqa: E402

from tflite_export import benchmark_tflite, to_tflite  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.compress.dynamic_sparsity import DynamicSparsity  # noqa: E402
from tfsafe.compress.pruning import prunable_wrappers, prune_safe  # noqa: E402
from tfsafe.compress.strip import strip  # noqa: E402
from tfsafe.io import atomic_write_json  # noqa: E402
from tfsafe.metrics import count_nonzero, count_params  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, lenet  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder (default: keras.datasets download)")
    p.add_argument("--quick", action="store_true", help="bundled digits resized to 28x28 instead of MNIST")
    p.add_argument("--train_size", type=int, default=12000, help="training examples (first N)")
    p.add_argument("--test_size", type=int, default=2000, help="test examples (first N)")
    p.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    p.add_argument("--finetune_epochs", type=int, default=3, help="fine-tuning epochs of each pruned model")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--channel_sparsities", type=float, nargs="+", default=[0.5, 0.75])
    p.add_argument("--calibration_samples", type=int, default=300)
    p.add_argument("--num_runs", type=int, default=300, help="timed invokes per model and round")
    p.add_argument("--warmup_runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/channel_prune.json")
    return p.parse_args(argv)


def finetune(args, model, x, y):
    keras.utils.set_random_seed(args.seed)
    model = compile_classifier(model)
    steps = int(np.ceil(len(x) / args.batch_size)) * args.finetune_epochs
    callback = DynamicSparsity(update_every=max(1, steps // 10), drop_fraction=0.3, end_step=int(0.75 * steps),
                               seed=args.seed)
    start = time.perf_counter()
    model.fit(x, y, epochs=args.finetune_epochs, batch_size=args.batch_size, verbose=0, callbacks=[callback])
    return model, time.perf_counter() - start


def kernel_sizes(model):
    return sum(int(np.prod(w.shape)) for layer in model.layers for w in layer.weights if "kernel" in w.name)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    (x, y), (xt, yt), data_name = load_lenet_data(args.quick, args.data_dir, args.train_size, args.test_size)
    keras.utils.set_random_seed(args.seed)
    dense = compile_classifier(lenet(x.shape[1:], 10))
    t0 = time.perf_counter()
    dense.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    print(f"dense LeNet: {len(x)} {data_name} examples x {args.epochs} epochs in {time.perf_counter() - t0:.0f} s, "
          f"accuracy {accuracy(dense, xt, yt):.4f}", flush=True)

    models = {"dense": (dense, dense, 0.0, "-")}
    dense_params = count_params(dense)
    dense_biases = dense_params - kernel_sizes(dense)
    for s in args.channel_sparsities:
        pruned = prune_safe(dense, s, granularity="channel", init="uniform", seed=args.seed)
        pruned, secs = finetune(args, pruned, x, y)
        stripped = strip(pruned)
        kept = {w.layer.name: w.mask_counts() for w in prunable_wrappers(pruned)}
        name = f"channel {s:.0%}"
        models[name] = (pruned, stripped, secs, ", ".join(f"{k} {a}/{t}" for k, (a, _) in kept.items()
                                                         for t in [kept[k][1]]))
        print(f"{name}: fine-tuned in {secs:.0f} s, kept {kept}, {count_params(stripped):,} params", flush=True)
        # Unstructured at the same parameter count: its biases all stay, its kernels keep the rest.
        keep = count_params(stripped) - dense_biases
        target = 1.0 - keep / kernel_sizes(dense)
        unstructured = prune_safe(dense, target, init="erk", seed=args.seed)
        unstructured, secs = finetune(args, unstructured, x, y)
        ustripped = strip(unstructured)
        models[f"unstructured @ {name}"] = (unstructured, ustripped, secs, f"{target:.1%} sparse (ERK)")
        print(f"unstructured {target:.3f}: fine-tuned in {secs:.0f} s, {count_nonzero(ustripped):,} non-zeros",
              flush=True)

    out_dir = os.path.join(os.path.dirname(args.out) or ".", "channel_prune_models")
    rep = x[np.random.default_rng(args.seed).permutation(len(x))[:args.calibration_samples]]
    exports, paths = {}, {}
    for name, (_, stripped, _, _) in models.items():
        path = os.path.join(out_dir, name.replace(" ", "_").replace("%", "").replace("@", "at") + "_int8.tflite")
        exports[name] = to_tflite(stripped, path, "int8", rep, verify=(xt, yt), min_agreement=0.0)
        paths[name] = path
    rounds = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, path in paths.items():
            r = benchmark_tflite(path, xt[:1], num_threads=1, use_xnnpack=True, warmup_runs=args.warmup_runs,
                                 num_runs=args.num_runs)
            rounds[name].append(r.latency_ms["p50"])
    p50 = {name: float(np.median(v)) for name, v in rounds.items()}

    rows, lines = [], [
        "| model | params | non-zeros | ideal bytes (8 bit) | int8 .tflite bytes | .tflite / ideal | sparse encoding "
        "| p50 us (1 thread) | vs dense int8 | Keras acc | .tflite acc | kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (wrapped, stripped, secs, kept) in models.items():
        e = exports[name]
        params, nonzeros = count_params(stripped), count_nonzero(stripped)
        ideal = nonzeros  # one byte per non-zero at 8 bits
        info = e.sparsity or {}
        if info.get("used"):
            sparse = "yes"
        elif info.get("sparse_bytes"):
            sparse = f"no: the sparse file ({info['sparse_bytes']:,} B) needs XNNPack off"
        else:
            sparse = "no"
        row = {"model": name, "params": params, "nonzeros": nonzeros, "ideal_bytes_8bit": ideal,
               "tflite_bytes": e.bytes, "tflite_over_ideal": e.bytes / ideal, "sparse_encoding": e.sparsity,
               "p50_ms": p50[name], "p50_rounds_ms": rounds[name], "p50_vs_dense": p50[name] / p50["dense"],
               "keras_accuracy": accuracy(wrapped, xt, yt), "tflite_accuracy": e.parity.exported_accuracy,
               "agreement": e.parity.top1_agreement, "finetune_seconds": secs, "kept": kept}
        rows.append(row)
        lines.append(f"| {name} | {params:,} | {nonzeros:,} | {ideal:,} | {e.bytes:,} | {e.bytes / ideal:.2f}x | "
                     f"{sparse} | {p50[name] * 1e3:.1f} | {p50[name] / p50['dense']:.2f}x | "
                     f"{row['keras_accuracy']:.4f} | {row['tflite_accuracy']:.4f} | {kept} |")
    table = "\n".join(lines)
    by = {r["model"]: r for r in rows}
    targets = {}
    for s in args.channel_sparsities:
        c, u = by[f"channel {s:.0%}"], by[f"unstructured @ channel {s:.0%}"]
        targets[f"channel {s:.0%}: .tflite <= 1.3x ideal bytes at 8 bits"] = (c["tflite_over_ideal"],
                                                                               c["tflite_over_ideal"] <= 1.3)
        gap = u["tflite_accuracy"] - c["tflite_accuracy"]
        targets[f"channel {s:.0%}: accuracy within 1 point of unstructured (gap, points)"] = (100 * gap, gap <= 0.01)
    if 0.5 in args.channel_sparsities:
        c = by["channel 50%"]
        targets["channel 50%: int8 p50 <= 0.6x dense int8"] = (c["p50_vs_dense"], c["p50_vs_dense"] <= 0.6)
    print()
    print(f"LeNet on {data_name} ({len(x)} training, {len(xt)} test examples); p50 = median over {args.rounds} "
          f"interleaved rounds of {args.num_runs} single-example invokes, LiteRT, 1 thread, XNNPack on")
    print()
    print(table)
    print()
    for name, (value, ok) in targets.items():
        print(f"- {name}: {value:.3f} -> {'met' if ok else 'MISSED'}")
    results = {"data": data_name, "train_size": len(x), "test_size": len(xt), "epochs": args.epochs,
               "finetune_epochs": args.finetune_epochs, "rounds": args.rounds, "num_runs": args.num_runs,
               "rows": rows, "exports": {m: e.to_dict() for m, e in exports.items()},
               "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets.items()},
               "table_markdown": table, "seconds": time.perf_counter() - started}
    atomic_write_json(args.out, results)
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

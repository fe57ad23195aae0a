"""float32 / float16 / dynamic / int8 TFLite (and ONNX) of LeNet on MNIST: size, latency, accuracy.

Trains the ATMC LeNet (``tfsafe.models.lenet``) for a couple of epochs on a subset of MNIST,
exports it in every TFLite mode (and ONNX) with :func:`tflite_export.to_tflite` /
:func:`tflite_export.to_onnx`, and measures in the same run: file bytes, gzip bytes, p50
latency of one example at 1 thread (LiteRT, XNNPack on -- the default on phones -- and off),
top-1 accuracy on the full test set, and top-1 agreement / max |diff| of logits with Keras.
Ratios are against the float32 file of the same run.

Latency is noisy on a shared machine, so the modes are timed in interleaved rounds (every mode
once per round) and the median of the per-round p50s is reported.

Usage:
    .venv/bin/python benchmarks/export_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/export_bench.py --quick     # digits resized to 28x28, ~1 minute
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import load_lenet_data  # noqa: E402

from tflite_export import benchmark_tflite, to_onnx, to_tflite  # noqa: E402
from tflite_export.host_info import describe, host_info  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.io import atomic_write_json  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, lenet  # noqa: E402

MODES = ("float32", "float16", "dynamic", "int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder (default: keras.datasets download)")
    p.add_argument("--quick", action="store_true", help="bundled digits resized to 28x28 instead of MNIST")
    p.add_argument("--train_size", type=int, default=20000, help="training examples (first N)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--calibration_samples", type=int, default=500, help="int8 representative examples")
    p.add_argument("--num_runs", type=int, default=1000, help="timed invokes per mode and round")
    p.add_argument("--warmup_runs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/export.json")
    return p.parse_args(argv)


def train(args, x, y):
    keras.utils.set_random_seed(args.seed)
    model = compile_classifier(lenet(x.shape[1:], 10))
    start = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    return model, time.perf_counter() - start


def time_modes(args, paths, x_timing):
    """Median over interleaved rounds of each mode's p50 latency (ms), XNNPack on and off."""
    rounds = {(mode, xnn): [] for mode in paths for xnn in (True, False)}
    for _ in range(args.rounds):
        for mode, path in paths.items():
            for xnn in (True, False):
                r = benchmark_tflite(path, x_timing, num_threads=args.threads, use_xnnpack=xnn,
                                     warmup_runs=args.warmup_runs, num_runs=args.num_runs)
                rounds[(mode, xnn)].append(r)
    return {key: {"p50_ms": float(np.median([r.latency_ms["p50"] for r in rs])),
                  "p90_ms": float(np.median([r.latency_ms["p90"] for r in rs])),
                  "p99_ms": float(np.median([r.latency_ms["p99"] for r in rs])),
                  "round_p50_ms": [r.latency_ms["p50"] for r in rs],
                  "peak_memory_mb": max(r.memory_mb["overall"] or 0.0 for r in rs)}
            for key, rs in rounds.items()}


def ratio(value, base):
    return f"{value / base:.2f}x" if value is not None and base else "-"


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    (x, y), (xt, yt), data_name = load_lenet_data(args.quick, args.data_dir, args.train_size)
    model, train_seconds = train(args, x, y)
    keras_acc = accuracy(model, xt, yt)
    print(f"LeNet trained on {len(x)} {data_name} examples for {args.epochs} epochs in {train_seconds:.0f} s; "
          f"Keras test accuracy {keras_acc:.4f} on {len(xt)}")

    out_dir = os.path.join(os.path.dirname(args.out) or ".", "export_models")
    exports, paths = {}, {}
    for mode in MODES:
        path = os.path.join(out_dir, f"lenet_{mode}.tflite")
        rep = x[np.random.default_rng(args.seed).permutation(len(x))[:args.calibration_samples]]
        exports[mode] = to_tflite(model, path, mode, rep if mode == "int8" else None,
                                  verify=(xt, yt), min_agreement=0.0)
        paths[mode] = path
    onnx = to_onnx(model, os.path.join(out_dir, "lenet.onnx"), verify=(xt, yt), min_agreement=0.0)
    timing = time_modes(args, paths, xt[:1])

    base = exports["float32"]
    base_p50, base_p50_off = timing[("float32", True)]["p50_ms"], timing[("float32", False)]["p50_ms"]
    header = ("| format | file bytes | vs f32 | gzip bytes | vs f32 | p50 us XNNPack | vs f32 | p50 us no XNNPack "
              "| vs f32 | accuracy | agreement | max abs logit diff |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| Keras (float32) | - | - | - | - | - | - | - | - | {keras_acc:.4f} | 1.0000 | 0 |"]
    rows = []
    for mode in MODES:
        e, on, off = exports[mode], timing[(mode, True)], timing[(mode, False)]
        row = {"format": f"tflite {mode}", "bytes": e.bytes, "gzip_bytes": e.gzip_bytes,
               "p50_ms_xnnpack": on["p50_ms"], "p50_ms_no_xnnpack": off["p50_ms"],
               "latency_xnnpack": on, "latency_no_xnnpack": off, "accuracy": e.parity.exported_accuracy,
               "agreement": e.parity.top1_agreement, "max_abs_diff": e.parity.max_abs_diff,
               "bytes_ratio": e.bytes / base.bytes, "gzip_ratio": e.gzip_bytes / base.gzip_bytes,
               "p50_ratio_xnnpack": on["p50_ms"] / base_p50, "p50_ratio_no_xnnpack": off["p50_ms"] / base_p50_off}
        rows.append(row)
        lines.append(
            f"| tflite {mode} | {e.bytes:,} | {ratio(e.bytes, base.bytes)} | {e.gzip_bytes:,} | "
            f"{ratio(e.gzip_bytes, base.gzip_bytes)} | {on['p50_ms'] * 1e3:.1f} | {ratio(on['p50_ms'], base_p50)} | "
            f"{off['p50_ms'] * 1e3:.1f} | {ratio(off['p50_ms'], base_p50_off)} | {e.parity.exported_accuracy:.4f} | "
            f"{e.parity.top1_agreement:.4f} | {e.parity.max_abs_diff:.3g} |")
    lines.append(
        f"| onnx (float32) | {onnx.bytes:,} | {ratio(onnx.bytes, base.bytes)} | {onnx.gzip_bytes:,} | "
        f"{ratio(onnx.gzip_bytes, base.gzip_bytes)} | - | - | - | - | {onnx.parity.exported_accuracy:.4f} | "
        f"{onnx.parity.top1_agreement:.4f} | {onnx.parity.max_abs_diff:.3g} |")
    table = "\n".join(lines)

    int8 = rows[MODES.index("int8")]
    targets = {
        "int8 file <= 0.30x float32": (int8["bytes_ratio"], int8["bytes_ratio"] <= 0.30),
        "int8 p50 <= 0.6x float32 at 1 thread (XNNPack, default)": (int8["p50_ratio_xnnpack"],
                                                                     int8["p50_ratio_xnnpack"] <= 0.6),
        "int8 p50 <= 0.6x float32 at 1 thread (XNNPack off)": (int8["p50_ratio_no_xnnpack"],
                                                               int8["p50_ratio_no_xnnpack"] <= 0.6),
        "int8 top-1 agreement >= 0.99": (int8["agreement"], int8["agreement"] >= 0.99),
    }
    print()
    print(f"LeNet on {data_name}: {len(xt)} test examples, latency = median over {args.rounds} interleaved rounds "
          f"of p50 over {args.num_runs} single-example invokes")
    print(f"Host: {describe(num_threads=args.threads)}. Host int8 speed depends on the CPU's integer dot-product "
          "instructions; a phone must be measured with the Android harness (tfsafe bench --android).")
    print()
    print(table)
    print()
    for name, (value, ok) in targets.items():
        print(f"- {name}: {value:.3f} -> {'met' if ok else 'MISSED'}")
    results = {"data": data_name, "train_size": len(x), "test_size": len(xt), "epochs": args.epochs,
               "train_seconds": train_seconds, "keras_accuracy": keras_acc, "threads": args.threads,
               "host": host_info(), "delegates": {"p50_ms_xnnpack": "xnnpack", "p50_ms_no_xnnpack": "none"},
               "rounds": args.rounds, "num_runs": args.num_runs, "rows": rows,
               "onnx": onnx.to_dict(), "exports": {m: e.to_dict() for m, e in exports.items()},
               "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets.items()},
               "table_markdown": table, "seconds": time.perf_counter() - started}
    atomic_write_json(args.out, results)
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

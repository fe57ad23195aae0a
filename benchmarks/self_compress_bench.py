"""Safety-driven self-compression vs float, TF-MOT 8-bit QAT and unsafe self-compression.

Rows:

- float dense: the trained float32 model.
- TF-MOT QAT 8-bit: ``tfmot.quantization.keras.quantize_model`` fine-tuned from the float model.
- self-compress (unsafe): learnable bits per channel, ``CE + gamma * Q``, no safety loss, no
  restores (lambda = 0).
- self-compress (restores only): lambda = 0, but the SafetyMonitor restores zero-bit channels
  when safety accuracy falls more than ``--threshold`` below the best so far.
- self-compress (safe): ``lambda * safety CE`` and the SafetyMonitor restores.
- self-compress (safe, gamma=G): the safe run with ``--safe_gamma`` G (when given), a larger
  size weight chosen to land near the unsafe run's size, for a size-matched comparison.
- ... unstripped: the safe model with its zero-bit channels still in place (weights on the same
  grid), to show what physical channel removal buys in the ``.tflite``.

Data: MNIST train is split into train / validation (the last ``--val_size`` images); the
safety set (``--safety_size``) is chosen by ``select_safety_set`` on the float model from the
validation split only; the test set is used for the reported accuracies and nothing else.
Both self-compression runs get the same safety indices (the unsafe run only measures it).

Columns: ``avg bits`` = storage bits per kept kernel weight (float: 32, QAT: 8); ``ideal B`` =
non-zero kernel weights x bits / 8 + float32 biases, scales and other layers (tfsafe.metrics
definition; for self-compression counting the removed channels); ``removed`` = output
channels physically removed; ``.tflite B`` / ``p50 ms`` = full-int8 file (tflite_export
to_tflite; QAT converted from its fake-quant graph) and its median latency at 1 thread
(ai_edge_litert, XNNPack, batch 1); ``test``, ``safety`` = top-1 accuracy; ``PGD`` = Linf PGD
accuracy (20 steps, random start, 1 restart) at eps 0.1 / 0.3 on ``--eval_size`` test images;
``step ms`` = median training step (batch ``--batch_size``; the safe run adds ``--safety_batch``
safety examples per step), measured after training in interleaved rounds (QAT, unsafe, safe,
repeated ``--timing_rounds`` times, median of the round medians) because the host is shared.

Usage:
    .venv/bin/python benchmarks/self_compress_bench.py --data_dir /work/shared/data/mnist
    .venv/bin/python benchmarks/self_compress_bench.py --quick      # digits + small CNN
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import StepTimer, load_data  # noqa: E402

from tfsafe import metrics  # noqa: E402
from tfsafe._keras import keras, tfmot  # noqa: E402
from tfsafe.compress import quantization as q  # noqa: E402
from tfsafe.compress.exact_int8 import exact_int8_model, to_int8_tflite  # noqa: E402
from tfsafe.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from tfsafe.methods.self_compress import SelfCompressingModel, self_compress  # noqa: E402
from tfsafe.models import accuracy, compile_classifier, lenet, small_cnn  # noqa: E402
from tfsafe.safety.robust_accuracy import adversarial_accuracy  # noqa: E402
from tfsafe.safety.safety_set import select_safety_set  # noqa: E402

QUICK = {"val_size": 300, "safety_size": 100, "eval_size": 300, "epochs": 15, "qat_epochs": 3, "sc_epochs": 30,
         "batch_size": 32, "gamma": 0.1, "bits_lr": 0.02, "monitor_every": 20}
FULL = {"val_size": 5000, "safety_size": 500, "eval_size": 1000, "epochs": 3, "qat_epochs": 1, "sc_epochs": 4,
        "batch_size": 128, "gamma": 0.1, "bits_lr": 0.01, "monitor_every": 50}


PARTIAL = []


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="MNIST IDX folder, e.g. /work/shared/data/mnist")
    p.add_argument("--quick", action="store_true", help="bundled digits + small CNN")
    for name in FULL:
        p.add_argument(f"--{name}", type=type(FULL[name]), default=None)
    p.add_argument("--safety_weight", type=float, default=1.0, help="lambda of the safe run")
    p.add_argument("--safe_gamma", type=float, default=None, help="extra safe run with this gamma (size-matched)")
    p.add_argument("--safety_batch", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.01, help="safety accuracy drop that triggers a restore")
    p.add_argument("--init_bits", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing_rounds", type=int, default=3)
    p.add_argument("--timing_steps", type=int, default=40)
    p.add_argument("--out", default="out/bench/self_compress.json")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.quick and not args.data_dir:
        p.error("--data_dir is required without --quick")
    return args


def load(args):
    (x, y), (xt, yt) = load_data(args.quick, args.data_dir)
    if args.quick:
        model_fn = lambda: small_cnn((8, 8, 1), 10)  # noqa: E731
    else:
        model_fn = lambda: lenet((28, 28, 1), 10)  # noqa: E731
    x = x.astype(np.float32)
    xt = xt.astype(np.float32)
    n = len(x) - args.val_size
    return (x[:n], y[:n]), (x[n:], y[n:]), (xt, yt), model_fn


def to_tflite(model, path, calibration):
    """Full-int8 file of ``model`` (a QAT model converts from its fake-quant graph); its bytes."""
    from tflite_export.convert import to_tflite as export

    return export(model, path, "int8", calibration, num_calibration_samples=200).bytes


def latency_p50(path, x):
    from tflite_export.benchmark import benchmark_tflite

    result = benchmark_tflite(path, x[:64], num_threads=1, warmup_runs=50, num_runs=500)
    return result.latency_ms["p50"]


def evaluate(name, model, eval_model, data, args, tmp, tflite_fn, size, step_ms=None, extra=None):
    (xt, yt), (xs, ys), calibration = data
    path = os.path.join(tmp, f"{name.replace(' ', '_')}.tflite")
    t = time.time()
    tflite_bytes = tflite_fn(model, path, calibration)
    row = {
        "model": name, "avg_bits": size["avg_bits"], "ideal_bytes": size["ideal_bytes"],
        "channels_removed": size.get("channels_removed", 0), "tflite_bytes": tflite_bytes,
        "p50_ms": latency_p50(path, xt), "test_acc": accuracy(eval_model, xt, yt),
        "safety_acc": accuracy(eval_model, xs, ys), "step_ms": step_ms,
    }
    n = args.eval_size
    for eps in (0.1, 0.3):
        try:
            row[f"pgd_{eps}"] = adversarial_accuracy(eval_model, xt[:n], yt[:n], eps=eps, steps=20, restarts=1,
                                                     seed=0)
        except Exception as err:  # keep the other numbers; the table shows "-" and the JSON why
            row[f"pgd_{eps}"] = None
            row["pgd_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    row.update(extra or {})
    PARTIAL.append(row)
    atomic_write_json(args.out + ".partial.json", PARTIAL)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {row} ({time.time() - t:.0f}s eval)", flush=True)
    return row


def kernel_stats(model):
    stats = metrics.weight_stats(model)
    kernels = [s for s in stats if s["kind"] == "kernel"]
    bits = sum(s["params"] * s["bits"] for s in kernels) / sum(s["params"] for s in kernels)
    return {"avg_bits": bits, "ideal_bytes": metrics.ideal_bytes(stats)}


def step_times(dense, x, y, safety, args):
    """Median step time of float, QAT, unsafe and safe self-compression training, interleaved."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainers = {"float": keras.models.clone_model(dense), "qat": tfmot.quantization.keras.quantize_model(dense)}
    for model in trainers.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    for label, data in (("unsafe", None), ("safe", safety)):
        trainer = SelfCompressingModel(q.quantize_learnable(dense, init_bits=args.init_bits), gamma=args.gamma,
                                       safety_data=data, safety_weight=args.safety_weight if data else 0.0,
                                       safety_batch_size=args.safety_batch if data else 0)
        trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
        trainers[label] = trainer
    n = args.batch_size * (args.timing_steps + 10)
    rounds = {name: [] for name in trainers}
    for _ in range(args.timing_rounds):
        for name, model in trainers.items():
            timer = StepTimer(skip=10)
            model.fit(x[:n], y[:n], batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])
            rounds[name].append(timer.median_ms())
    return {name: float(np.median(values)) for name, values in rounds.items()}


def fmt(v, digits=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    keras.utils.set_random_seed(args.seed)
    (x, y), (xv, yv), (xt, yt), model_fn = load(args)
    print(f"train {len(x)}, validation {len(xv)}, test {len(xt)}", flush=True)
    # Trace the attack once now: autograph reads a function's source at its first trace, so a
    # long run on a shared checkout would otherwise break if tfsafe/safety is edited meanwhile.
    adversarial_accuracy(model_fn(), xt[:4], yt[:4], eps=0.1, steps=2, restarts=1, seed=0)

    dense = compile_classifier(model_fn())
    dense.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    print(f"[{time.strftime('%H:%M:%S')}] float trained: test {accuracy(dense, xt, yt):.4f}", flush=True)

    indices = select_safety_set(dense, xv, yv, args.safety_size, seed=args.seed)
    xs, ys = xv[indices], yv[indices]
    data = ((xt, yt), (xs, ys), x[:1000])

    qat = compile_classifier(tfmot.quantization.keras.quantize_model(dense), 1e-4 if not args.quick else 1e-3)
    qat.fit(x, y, epochs=args.qat_epochs, batch_size=args.batch_size, verbose=0)
    print(f"[{time.strftime('%H:%M:%S')}] QAT trained: test {accuracy(qat, xt, yt):.4f}", flush=True)

    runs = {}
    variants = [("unsafe", 0.0, False, args.gamma), ("restores only", 0.0, True, args.gamma),
                ("safe", args.safety_weight, True, args.gamma)]
    if args.safe_gamma is not None:
        variants.append((f"safe, gamma={args.safe_gamma:g}", args.safety_weight, True, args.safe_gamma))
    for label, lam, restore, gamma in variants:
        timer = StepTimer()
        t = time.time()
        runs[label] = self_compress(
            dense, x, y, (xv, yv), safety_indices=indices, init_bits=args.init_bits, gamma=gamma,
            safety_weight=lam, safety_batch_size=args.safety_batch if lam > 0 else 0, epochs=args.sc_epochs,
            batch_size=args.batch_size, bits_learning_rate=args.bits_lr, monitor_every=args.monitor_every,
            threshold=args.threshold, restore=restore, seed=args.seed, callbacks=[timer],
        )
        runs[label].fit_step_ms = timer.median_ms()
        print(f"[{time.strftime('%H:%M:%S')}] self-compress {label}: {runs[label].size} "
              f"restorations {len(runs[label].monitor['restorations'])} ({time.time() - t:.0f}s)", flush=True)

    steps = step_times(dense, x, y, (xs, ys), args)
    print(f"[{time.strftime('%H:%M:%S')}] step times (ms): {steps}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(evaluate("float dense", dense, dense, data, args, tmp, to_tflite,
                             {"avg_bits": 32.0, "ideal_bytes": metrics.ideal_bytes(dense)}, steps["float"]))
        rows.append(evaluate("TF-MOT QAT 8-bit", qat, qat, data, args, tmp, to_tflite, kernel_stats(qat),
                             steps["qat"]))
        for label, _, _, _ in variants:
            run = runs[label]
            size = {"avg_bits": run.size["average_bits"], "ideal_bytes": run.size["ideal_bytes"],
                    "channels_removed": run.size["channels_removed"]}
            extra = {"mean_channel_bits": run.size["mean_channel_bits"], "grid_bytes": run.size["grid_bytes"],
                     "restorations": len(run.monitor["restorations"]),
                     "restored_channels": sum(r["count"] for r in run.monitor["restorations"]),
                     "fit_step_ms": run.fit_step_ms}
            exact_path = os.path.join(tmp, f"exact_{label}.tflite")
            exact = to_int8_tflite(exact_int8_model(run.model), x[:200], batch_size=None)
            atomic_write_bytes(exact_path, exact)
            extra["exact_grid_tflite_bytes"] = len(exact)
            rows.append(evaluate(f"self-compress ({label})", run.stripped, run.stripped, data, args, tmp, to_tflite,
                                 size, steps.get(label), extra))
        # The unstripped twin of the safe run: same weights, zero-bit channels still in place.
        safe = runs["safe"]
        rows.append(evaluate("self-compress (safe), unstripped", q.bake_weights(safe.model), safe.model, data, args,
                             tmp, to_tflite, {"avg_bits": safe.size["average_bits"],
                                              "ideal_bytes": safe.size["ideal_bytes"], "channels_removed": 0},
                             None))

    base = rows[0]
    print()
    print(f"Self-compression benchmark ({'digits, small CNN' if args.quick else 'MNIST, LeNet'}; "
          f"gamma {args.gamma}, lambda {args.safety_weight}, threshold {args.threshold}; "
          f"safety set {len(indices)} validation images; PGD on {args.eval_size} test images)")
    print()
    print("| model | avg bits | ideal B | x fewer | removed | .tflite B | p50 ms | test acc | safety acc | "
          "PGD 0.1 | PGD 0.3 | step ms | step / QAT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    qat_step = rows[1]["step_ms"]
    for r in rows:
        ratio = base["ideal_bytes"] / r["ideal_bytes"]
        step_ratio = r["step_ms"] / qat_step if r["step_ms"] else None
        print(f"| {r['model']} | {fmt(r['avg_bits'], 2)} | {r['ideal_bytes']:.0f} | {ratio:.1f} | "
              f"{r['channels_removed']} | {r['tflite_bytes']} | {fmt(r['p50_ms'], 3)} | {fmt(r['test_acc'])} | "
              f"{fmt(r['safety_acc'])} | {fmt(r['pgd_0.1'])} | {fmt(r['pgd_0.3'])} | {fmt(r['step_ms'], 1)} | "
              f"{fmt(step_ratio, 2)} |")
    for label, _, _, _ in variants:
        run = runs[label]
        print(f"\n{label}: restorations {len(run.monitor['restorations'])}, best safety acc {run.monitor['best']:.4f}, "
              f"Q (mean learned bits/weight) {run.history['bits'][-1]:.3f}, exact-grid int8 .tflite "
              f"{[r for r in rows if r['model'] == f'self-compress ({label})'][0]['exact_grid_tflite_bytes']} B")
    result = {"args": vars(args), "rows": rows, "step_ms": steps, "safety_indices": indices,
              "runs": {k: v.to_dict() for k, v in runs.items()}, "seconds": time.time() - start}
    atomic_write_json(args.out, result)
    print(f"\nwrote {args.out} ({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()

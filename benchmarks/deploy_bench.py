"""What the phone gets: deployed bytes, latency and agreement of every compression method.

Rows (one trained dense model per run, every method starts from it):

- dense: int8 (the baseline of the latency ratio), int4 and float32 files.
- TF-MOT 90%: ``prune_low_magnitude`` at ``--sparsity`` (ConstantSparsity), fine-tuned, int8
  file (the sparse encoding tried with ``sparsity="auto"``), the same with the sparse encoding
  forced (``sparsity=True``; run with XNNPack off when the default delegate cannot run it), and
  int4.
- PrunableSafe 90%: tfsafe's ``prune_safe`` (ERK, magnitude masks) at the same sparsity,
  fine-tuned with the entropy-regularized loss (MIA-SafeCompress without candidate rounds).
- channel 50% / 75%: ``prune_safe(..., granularity="channel")`` and physical channel removal
  by ``strip()``, when the installed tfsafe has it (rows left out otherwise, with a note).
- self-compression: ``self_compress`` (learnable bits per channel, ceiling 8 bits), int8 and
  learned-bit files; and the same with the ceiling ``--sc_max_bits`` (default 4:
  ``max_bits=4``, every channel fits INT4 storage), int8 and learned-bit files.
- ATMC: ``atmc_compress`` at 4 bits with a size budget of ``--atmc_ratio`` of the dense float32
  model (``budget_for_ratio``), int8 and
  learned-bit files.

Columns: ``ideal B`` = :func:`tfsafe.metrics.model_size` ideal bytes of the stripped
(deployed) model: non-zeros x the bits it learned / 8 + codebooks and float32 biases;
``file-bits B`` = the same non-zeros counted at the storage bits the file uses (kernels at 4 or
8 bits as the side-car says, 32 for float files, biases at 32); ``.tflite B``; ``/ideal`` and
``/file-bits`` = ``.tflite`` bytes over each; ``gzip B``; ``p50 ms`` = median latency of one
example at 1 thread on LiteRT (XNNPack on unless the row says off), ``x dense`` = over the
dense int8 file's p50 measured in the same run (rows timed in interleaved rounds because the
host is shared); ``peak MB`` = the process's peak memory growth while loading and running the
file (VmHWM); ``acc`` = test accuracy of the file; ``agree`` = top-1 agreement of the file
with the Keras model that holds its weights (for int4, the int4-gridded copy); ``agree
confident`` = the same on the examples the Keras model is confident about (the parity rule's
margin, 0.1).

Usage:
    .venv/bin/python benchmarks/deploy_bench.py --data_dir /work/shared/data/mnist --train_size 4000
    .venv/bin/python benchmarks/deploy_bench.py --dataset cifar10 --data_dir /work/shared/data/cifar10
    .venv/bin/python benchmarks/deploy_bench.py --quick      # bundled digits + small CNN
"""

import argparse
import inspect
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_common import load_data  # noqa: E402

import tfsafe  # noqa: E402
from tflite_export import benchmark_tflite, to_tflite  # noqa: E402
from tfsafe import metrics  # noqa: E402
from tfsafe._keras import keras, tfmot  # noqa: E402
from tfsafe.compress.pruning import prune_safe  # noqa: E402
from tfsafe.io import atomic_write_json  # noqa: E402
from tfsafe.methods.atmc import atmc_compress, budget_for_ratio  # noqa: E402
from tfsafe.methods.self_compress import self_compress  # noqa: E402
from tfsafe.models import compile_classifier, lenet, small_cnn  # noqa: E402
from tfsafe.objectives import EntropyRegularizedLoss  # noqa: E402


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--quick", action="store_true", help="bundled digits and a small CNN")
    p.add_argument("--train_size", type=int, default=4000, help="training images (the first N)")
    p.add_argument("--test_size", type=int, default=2000, help="test images for accuracy and agreement")
    p.add_argument("--epochs", type=int, default=2, help="dense training epochs")
    p.add_argument("--finetune_epochs", type=int, default=1, help="epochs of every compression method")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--atmc_ratio", type=float, default=0.05, help="ATMC size budget / dense float32 size")
    p.add_argument("--atmc_eps", type=float, default=None, help="ATMC PGD radius (default: the dataset's)")
    p.add_argument("--sc_gamma", type=float, default=0.05, help="self-compression size weight")
    p.add_argument("--sc_bits_lr", type=float, default=0.1,
                   help="self-compression learning rate of the bits (large: the run is short)")
    p.add_argument("--sc_max_bits", type=int, default=4,
                   help="bit-depth ceiling of the second self-compression row (0: leave the row out)")
    p.add_argument("--calibration", type=int, default=300)
    p.add_argument("--num_runs", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/deploy.json")
    return p.parse_args()


def _data(args):
    if args.quick:
        (x, y), (xt, yt) = load_data(True)
    elif args.dataset == "cifar10":
        (x, y), (xt, yt) = tfsafe.load_cifar10(args.data_dir)
    else:
        (x, y), (xt, yt) = load_data(False, args.data_dir)
    return (x[: args.train_size], y[: args.train_size]), (xt[: args.test_size], yt[: args.test_size])


def _dense(args, shape):
    if args.quick:
        return small_cnn(shape, 10)
    if args.dataset == "cifar10":
        return small_cnn(shape, 10, filters=(32, 64), dense=128, name="cifar_cnn")
    return lenet(shape, 10)


def _fit(model, x, y, epochs, callbacks=(), loss=None):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=list(callbacks))
    return model


def _models(args, dense, x, y):
    """``[(row name, model, note)]``: the compressed models, each in its own (wrapped) form."""
    rows = []
    t = time.time()
    schedule = tfmot.sparsity.keras.ConstantSparsity(args.sparsity, 0, frequency=1)
    tfmot_model = tfmot.sparsity.keras.prune_low_magnitude(_clone(dense), pruning_schedule=schedule)
    _fit(tfmot_model, x, y, args.finetune_epochs, [tfmot.sparsity.keras.UpdatePruningStep()])
    rows.append((f"TF-MOT {args.sparsity:.0%}", tfmot.sparsity.keras.strip_pruning(tfmot_model), ""))
    print(f"  TF-MOT pruning {time.time() - t:.0f}s", flush=True)

    t = time.time()
    safe = prune_safe(dense, args.sparsity)
    _fit(safe, x, y, args.finetune_epochs, loss=EntropyRegularizedLoss(0.1))
    rows.append((f"PrunableSafe {args.sparsity:.0%}", safe, ""))
    print(f"  PrunableSafe {time.time() - t:.0f}s", flush=True)

    if "granularity" in inspect.signature(prune_safe).parameters:  # channel pruning (issue 17, part 2)
        for fraction in (0.5, 0.75):
            t = time.time()
            channel = prune_safe(dense, fraction, granularity="channel")
            _fit(channel, x, y, args.finetune_epochs, loss=EntropyRegularizedLoss(0.1))
            rows.append((f"channel {fraction:.0%}", channel, ""))
            print(f"  channel {fraction:.0%} {time.time() - t:.0f}s", flush=True)

    n_val = min(500, len(x) // 5)
    for max_bits in (8, args.sc_max_bits) if args.sc_max_bits else (8,):
        t = time.time()
        result = self_compress(dense, x[:-n_val], y[:-n_val], (x[-n_val:], y[-n_val:]), safety_size=100,
                               epochs=args.finetune_epochs, batch_size=64, gamma=args.sc_gamma, max_bits=max_bits,
                               bits_learning_rate=args.sc_bits_lr, seed=args.seed)
        name = "self-compression" + ("" if max_bits == 8 else f" max_bits={max_bits}")
        rows.append((name, result.model, f"{result.size['average_bits']:.2f} avg storage bits"))
        print(f"  {name} {time.time() - t:.0f}s", flush=True)

    t = time.time()
    budget = budget_for_ratio(dense, args.atmc_ratio, 4)
    eps = args.atmc_eps if args.atmc_eps is not None else (0.1 if args.quick else 8 / 255 if
                                                           args.dataset == "cifar10" else 0.3)
    atmc = atmc_compress(dense, x, y, budget, bits=4, eps=eps, epochs=args.finetune_epochs, steps=3,
                         batch_size=64, ramp_epochs=float(args.finetune_epochs) / 2, admm_every=20).model
    rows.append(("ATMC 4-bit", atmc, f"budget {budget:,} non-zeros"))
    print(f"  ATMC {time.time() - t:.0f}s", flush=True)
    return rows


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _file_bits_bytes(stripped, layer_bits, mode):
    """Non-zeros at the storage bits of the file: kernels 4/8 (or 32 for float32), the rest 32."""
    total = 0.0
    kernel_bits = 32 if mode == "float32" else 8
    for stat in metrics.weight_stats(stripped):
        bits = 32
        if stat["kind"] == "kernel":
            entry = (layer_bits or {}).get(stat["layer"])
            bits = entry["storage_bits"] if entry else kernel_bits
        total += stat["nonzeros"] * bits / 8.0
    return total


def _export(name, model, mode, folder, x_cal, xt, yt, sparsity="auto"):
    stripped = tfsafe.strip(model) if tfsafe.compress.strip.is_wrapped(model) else model
    path = os.path.join(folder, f"{len(os.listdir(folder)):02d}_{mode}.tflite")
    # Measure, do not judge: every file is written and its agreement and accuracy reported.
    result = to_tflite(model, path, mode, x_cal, verify=(xt, yt), min_agreement=0.0, max_accuracy_drop=1.0,
                       sparsity=sparsity)
    info = result.sparsity or {}
    xnnpack = not (info.get("used") and info.get("runs_with_xnnpack") is False)
    size = metrics.model_size(stripped)
    return {
        "row": name, "mode": mode + (" sparse" if result.sparsity and result.sparsity.get("used") else ""),
        "path": path, "xnnpack": xnnpack, "ideal_bytes": size["ideal_bytes"], "average_bits": size["average_bits"],
        "nonzeros": size["nonzeros"], "file_bits_bytes": _file_bits_bytes(stripped, result.layer_bits, mode),
        "tflite_bytes": result.bytes, "gzip_bytes": result.gzip_bytes, "agreement": result.parity.top1_agreement,
        "confident_agreement": result.parity.confident_agreement,
        "accuracy": result.parity.exported_accuracy, "keras_accuracy": result.parity.keras_accuracy,
        "sparsity_info": result.sparsity, "layer_bits": result.layer_bits,
    }


def _time(rows, xt, yt, args):
    """Interleaved rounds: each round benchmarks every file once; the p50 is the median over rounds."""
    p50 = {i: [] for i in range(len(rows))}
    for r in range(args.rounds):
        for i, row in enumerate(rows):
            bench = benchmark_tflite(row["path"], xt, yt if r == 0 else None, num_threads=1,
                                     use_xnnpack=row["xnnpack"], num_runs=args.num_runs, warmup_runs=20)
            p50[i].append(bench.latency_ms["p50"])
            if r == 0:
                row["peak_mb"] = (bench.memory_mb or {}).get("overall")
    for i, row in enumerate(rows):
        row["p50_ms"] = float(np.median(p50[i]))


def _fraction(value):
    return "-" if value is None else f"{value:.4f}"


def _table(rows, baseline):
    head = ("| model | file | ideal B | file-bits B | .tflite B | /ideal | /file-bits | gzip B | p50 ms | x dense "
            "| peak MB | acc | agree | agree confident |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['mode']}{'' if r['xnnpack'] else ' (XNNPack off)'} | {r['ideal_bytes']:,.0f} "
            f"| {r['file_bits_bytes']:,.0f} | {r['tflite_bytes']:,} | {r['tflite_bytes'] / r['ideal_bytes']:.2f} "
            f"| {r['tflite_bytes'] / r['file_bits_bytes']:.2f} | {r['gzip_bytes']:,} | {r['p50_ms']:.4f} "
            f"| {r['p50_ms'] / baseline:.2f} | {r.get('peak_mb') or 0:.1f} | {r['accuracy']:.4f} "
            f"| {r['agreement']:.4f} | {_fraction(r.get('confident_agreement'))} |")
    return "\n".join(lines)


def _targets(rows, baseline):
    """Each target of issue 17 that this run measures: ``[{"target", "row", "value", "met"}]``."""
    out = []
    int8 = {r["row"]: r for r in rows if r["mode"] == "int8"}
    for r in rows:
        ratio = r["tflite_bytes"] / r["file_bits_bytes"]
        if r["row"].startswith("channel") or r["mode"] in ("int4", "learned"):
            out.append({"target": ".tflite <= 1.3x ideal at the file's bits", "row": f"{r['row']} {r['mode']}",
                        "value": f"{ratio:.2f}x", "met": ratio <= 1.3})
        if r["mode"] in ("int4", "learned") and r["row"] in int8:
            shrink = r["tflite_bytes"] / int8[r["row"]]["tflite_bytes"]
            out.append({"target": "agreement >= 0.99 and file <= 0.6x int8", "row": f"{r['row']} {r['mode']}",
                        "value": f"agreement {r['agreement']:.4f} ({_fraction(r.get('confident_agreement'))} on "
                                 f"confident examples), {shrink:.2f}x int8",
                        "met": r["agreement"] >= 0.99 and shrink <= 0.6})
        if r["mode"].endswith("sparse"):
            shrink = r["tflite_bytes"] / rows[0]["tflite_bytes"]
            out.append({"target": "unstructured 90%: file <= 0.5x dense int8", "row": f"{r['row']} {r['mode']}",
                        "value": f"{shrink:.2f}x (XNNPack {'on' if r['xnnpack'] else 'off'})", "met": shrink <= 0.5})
    safe = next((r for r in rows if r["row"].startswith("PrunableSafe") and r["mode"] == "int8"), None)
    for r in rows:
        if r["row"] == "channel 50%" and r["mode"] == "int8":
            latency = r["p50_ms"] / baseline
            out.append({"target": "channel 50%: p50 <= 0.6x dense int8", "row": r["row"],
                        "value": f"{latency:.2f}x", "met": latency <= 0.6})
            if safe is not None:  # the same parameter count is benchmarks/channel_prune_bench.py's comparison
                gap = safe["accuracy"] - r["accuracy"]
                out.append({"target": "channel 50%: accuracy within 1 point of PrunableSafe (its sparsity, "
                                      "not the same parameter count)", "row": r["row"],
                            "value": f"{-gap * 100:+.2f} points against it", "met": gap <= 0.01})
    return out


def main():
    args = _args()
    keras.utils.set_random_seed(args.seed)
    (x, y), (xt, yt) = _data(args)
    dense = compile_classifier(_dense(args, x.shape[1:]))
    t = time.time()
    _fit(dense, x, y, args.epochs)
    print(f"dense: {time.time() - t:.0f}s, {len(x)} training images", flush=True)
    models = [("dense", dense, "")] + _models(args, dense, x, y)
    x_cal = x[: args.calibration]
    modes = {"dense": ("int8", "int4", "float32"), "ATMC 4-bit": ("int8", "learned")}
    modes.update({name: ("int8", "learned") for name, _, _ in models if name.startswith("self-compression")})
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, model, note in models:
            for mode in modes.get(name, ("int8", "int4") if name.startswith("TF-MOT") else ("int8",)):
                try:
                    rows.append(dict(_export(name, model, mode, folder, x_cal, xt, yt), note=note))
                    print(f"  exported {name} {rows[-1]['mode']}: {rows[-1]['tflite_bytes']:,} B", flush=True)
                except Exception as err:  # one failed export is a finding, not the end of the run
                    print(f"  {name} {mode}: export failed: {err}", flush=True)
                    failed.append({"row": name, "mode": mode, "error": str(err)})
            if name.startswith("TF-MOT") and not (rows[-2]["sparsity_info"] or {}).get("used"):
                rows.append(dict(_export(name, model, "int8", folder, x_cal, xt, yt, sparsity=True), note=note))
        _time(rows, xt, yt, args)
    baseline = rows[0]["p50_ms"]
    print(_table(rows, baseline))
    sparse = [r for r in rows if r["mode"].endswith("sparse")]
    for r in sparse:
        info = r["sparsity_info"]
        print(f"\nsparse encoding ({r['row']}): {info['sparse_bytes']:,} B vs dense-encoded {info['dense_bytes']:,} B "
              f"({info['sparse_bytes'] / rows[0]['tflite_bytes']:.2f}x the dense int8 file); LiteRT XNNPack runs it: "
              f"{info['runs_with_xnnpack']}; {info['reason']}")
    targets = _targets(rows, baseline)
    print("\ntargets of issue 17:")
    for line in targets:
        print(f"  {line['target']}: {line['row']}: {line['value']} -> {'met' if line['met'] else 'MISSED'}")
    for r in rows:
        r.pop("path")
    atomic_write_json(args.out, {"args": vars(args), "rows": rows, "baseline_p50_ms": baseline, "targets": targets,
                                 "failed": failed})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

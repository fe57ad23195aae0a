"""Export for Android and benchmark on a device: "give me a checked int8 .tflite for my phone app".

Trains a small CNN on the bundled digits (no download; or loads ``--model my_model.keras``),
exports a full-integer int8 ``.tflite`` (CPU / XNNPack / NNAPI) -- plus a float16 one for the GPU
delegate with ``--modes int8,float16`` -- with a side-car ``.json`` holding what the app needs
(input scale / zero point, labels, preprocessing), checks every file against the Keras model,
and an ``.onnx`` twin. It then benchmarks the files on this machine with LiteRT and on an
attached Android phone with TFLite's ``benchmark_model`` over adb.

Android: enable USB debugging on the phone, install platform-tools (``adb``), and download
``android_aarch64_benchmark_model`` (LiteRT prebuilt; see
https://ai.google.dev/edge/litert/models/measurement#native_benchmark_binary). Pass it with
``--benchmark_binary`` (it is pushed to /data/local/tmp), or push it there yourself once.
``--android auto`` (default) benchmarks on the device when one is ready and otherwise says why
it skipped; ``--android on`` fails instead; ``--android off`` skips.

Run:
    .venv/bin/python examples/export_to_phone.py                # digits, ~20 s on 2 cores
    .venv/bin/python examples/export_to_phone.py --benchmark_binary ./android_aarch64_benchmark_model --threads 1,4
    .venv/bin/python examples/export_to_phone.py --data mnist --data_dir /work/shared/data/mnist

Copy ``<name>_int8.tflite`` and its ``.json`` into the app's ``assets/``. Writes the files and
``bench.json`` (host and device results) into ``--out``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402
import numpy as np  # noqa: E402

import tfsafe  # noqa: E402
from tflite_export import (  # noqa: E402
    AndroidDeviceError,
    TFLiteModel,
    benchmark_android,
    benchmark_tflite,
    to_onnx,
    to_tflite,
    write_results,
)
from tflite_export.commands import format_bench_table, format_export_table  # noqa: E402
from tfsafe.errors import MissingDependencyError  # noqa: E402
from tfsafe.models import small_cnn  # noqa: E402
from tfsafe.validation import model_num_classes  # noqa: E402

LABELS = {
    "digits": [str(d) for d in range(10)],
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
# What the app does to raw pixels before feeding the model (stored in the side-car as is).
NORMALIZATION = {"digits": {"pixel_scale": 1 / 16, "range": [0.0, 1.0]}}
DEFAULT_NORMALIZATION = {"pixel_scale": 1 / 255, "range": [0.0, 1.0]}


def load_data(args):
    (x, y), (xt, yt) = tfsafe.load_dataset(args.data, args.data_dir)
    if len(x) > args.train_size and args.data != "digits":
        keep = np.random.default_rng(args.seed).choice(len(x), args.train_size, replace=False)
        x, y = x[keep], y[keep]
    print(f"data: {args.data} {tuple(x.shape[1:])}, {len(x)} train / {len(xt)} test")
    return (x, y), (xt, yt)


def benchmark_on_android(paths, args):
    """``benchmark_model`` on the attached device; with ``--android auto`` no adb / no device is reported, not fatal."""
    results = []
    for path in paths:
        gpu = args.use_gpu and "float16" in os.path.basename(path)
        for threads in args.threads:
            try:
                results.append(benchmark_android(path, adb=args.adb, serial=args.serial,
                                                 benchmark_binary=args.benchmark_binary, num_threads=threads,
                                                 use_gpu=gpu, num_runs=args.num_runs))
            except (MissingDependencyError, AndroidDeviceError) as err:  # no adb, no device, or it failed
                if args.android == "on":
                    raise
                print(f"Android benchmark skipped: {err}")
                return results
            args.benchmark_binary = None  # pushed once is enough
    return results


def main(argv=None):
    p = common.data_parser("export_to_phone", __doc__, dense_epochs=15)
    p.add_argument("--model", default=None, help="your .keras/.h5 model (default: train a small CNN on --data)")
    p.add_argument("--modes", default="int8", help="TFLite modes: int8 (CPU/NNAPI), float16 (GPU delegate), ...")
    p.add_argument("--no_onnx", action="store_true", help="skip the .onnx export")
    p.add_argument("--threads", default="1,2", help="CPU threads to benchmark with (comma list)")
    p.add_argument("--num_runs", type=int, default=200, help="timed runs per benchmark")
    p.add_argument("--android", choices=("auto", "on", "off"), default="auto",
                   help="benchmark on an attached Android device: auto = when one is ready")
    p.add_argument("--adb", default=None, help="adb binary (default: PATH or $ANDROID_HOME/platform-tools)")
    p.add_argument("--serial", default=None, help="device serial when several are attached")
    p.add_argument("--benchmark_binary", default=None, help="local benchmark_model for the device's ABI")
    p.add_argument("--use_gpu", action="store_true", help="run float16 files with the GPU delegate on the device")
    args = common.parse(p, argv)
    args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    clock = common.Clock()
    (x, y), (xt, yt) = load_data(args)
    os.makedirs(args.out, exist_ok=True)

    if args.model:
        clock(f"loading {args.model}")
        model, name = tfsafe.load_model(args.model), os.path.splitext(os.path.basename(args.model))[0]
    else:
        clock(f"training a small CNN ({args.dense_epochs} epochs on {len(x)} images)")
        keras = tfsafe.keras
        keras.utils.set_random_seed(args.seed)
        model = small_cnn(x.shape[1:], int(y.max()) + 1)
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=args.dense_epochs, batch_size=32, verbose=0)
        name = args.data

    clock(f"exporting {', '.join(modes)}{'' if args.no_onnx else ' + onnx'} and checking each file against Keras")
    labels = LABELS.get(args.data) if model_num_classes(model) == 10 else None
    normalization = NORMALIZATION.get(args.data, DEFAULT_NORMALIZATION)
    # Calibrate on training inputs, check on held-out ones; a disagreement raises ParityError.
    exports = [to_tflite(model, os.path.join(args.out, f"{name}_{mode}.tflite"), mode, x, verify=(xt, yt),
                         labels=labels, normalization=normalization) for mode in modes]
    if not args.no_onnx:
        exports.append(to_onnx(model, os.path.join(args.out, f"{name}.onnx"), verify=(xt, yt), labels=labels,
                               normalization=normalization))
    print(format_export_table(exports))
    tflite = [e for e in exports if e.format == "tflite"]
    for e in tflite:
        zero = e.input.get("zero_point", 0)
        quant = f" q = round(x / {e.input['scale']:.6f}) {'-' if zero < 0 else '+'} {abs(zero)}" \
            if "scale" in e.input else ""
        print(f"{os.path.basename(e.path)}: app feeds {e.input['dtype']} input{quant}; "
              f"side-car {os.path.basename(e.metadata_path)}")
        acc = float((TFLiteModel(e.path).predict(xt).argmax(axis=1) == yt).mean())
        print(f"{os.path.basename(e.path)} accuracy on {len(xt)} held-out images: {acc:.4f}")

    clock(f"benchmarking on this host (LiteRT, threads {args.threads})")
    results = [benchmark_tflite(e.path, xt, yt, num_threads=n, num_runs=args.num_runs)
               for e in tflite for n in args.threads]
    if args.android != "off":
        clock("benchmarking on an Android device (adb + benchmark_model)")
        results += benchmark_on_android([e.path for e in tflite], args)
    print(format_bench_table(results))
    path = write_results(results, os.path.join(args.out, "bench.json"))
    print(f"wrote {path}")
    return {"exports": [e.to_dict() for e in exports], "benchmarks": [r.to_dict() for r in results]}


if __name__ == "__main__":
    common.run(main)

"""User story: "I have a trained Keras model; give me a checked int8 .tflite for my phone app."

Trains a small CNN on the bundled digits (no download), exports it to a full-integer int8
``.tflite`` (and ONNX) whose outputs are checked against Keras, evaluates the file with the
LiteRT runner, and benchmarks it on this machine. With an Android phone attached (USB
debugging on) and TFLite's ``benchmark_model`` binary, ``--android`` also benchmarks it there.

Usage:
    .venv/bin/python examples/export_to_phone.py --out out/export_example
    .venv/bin/python examples/export_to_phone.py --android --benchmark_binary ./android_aarch64_benchmark_model
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfsafe  # noqa: E402
from tflite_export import TFLiteModel, benchmark_android, benchmark_tflite, to_onnx, to_tflite, write_results  # noqa: E402
from tflite_export.commands import format_bench_table, format_export_table  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.models import small_cnn  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/export_example")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--android", action="store_true", help="also benchmark on an attached Android device")
    p.add_argument("--benchmark_binary", default=None, help="local benchmark_model for the device")
    args = p.parse_args()

    (x, y), (xt, yt) = tfsafe.load_digits()
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1), 10)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0)

    # Calibrate on training inputs, check on held-out ones; a disagreement raises ParityError.
    int8 = to_tflite(model, os.path.join(args.out, "digits_int8.tflite"), "int8", x, verify=(xt, yt),
                     labels=[str(d) for d in range(10)], normalization={"pixel_scale": 1 / 16})
    onnx = to_onnx(model, os.path.join(args.out, "digits.onnx"), verify=(xt, yt))
    print(format_export_table([int8, onnx]))
    print(f"app feeds int8 input: scale {int8.input['scale']:.6f}, zero point {int8.input['zero_point']} "
          f"(see {int8.metadata_path})")

    deployed = TFLiteModel(int8.path)  # float in, float out, quantization handled
    acc = float((deployed.predict(xt).argmax(axis=1) == yt).mean())
    print(f"int8 file accuracy on {len(xt)} held-out digits: {acc:.4f}")

    results = [benchmark_tflite(int8.path, xt, yt, num_threads=n) for n in (1, 2)]
    if args.android:
        results.append(benchmark_android(int8.path, benchmark_binary=args.benchmark_binary, num_threads=1))
    print(format_bench_table(results))
    print(f"wrote {write_results(results, os.path.join(args.out, 'bench.json'))}")


if __name__ == "__main__":
    main()

"""Why int4 files run slower than int8 on LiteRT's CPU path: one LeNet, every quantization path.

Writes the same (untrained: latency does not depend on the values) LeNet as:

- ``int8``: the TFLite converter's full-integer file (the baseline);
- ``aeq static w8``: ai-edge-quantizer's int8 weights / int8 activations (is it the tool?);
- ``int4``: ``to_tflite(mode="int4")`` (ai-edge-quantizer, INT4 weights, int8 activations);
- ``aeq dynamic w4`` / ``w8``: dynamic range (int weights, float activations quantized on the fly);
- ``aeq weight-only w4``: INT4 weights dequantized to float32, float compute;
- ``float32``.

and times each at 1 thread with LiteRT's XNNPack delegate on and off, in interleaved rounds;
every ratio is against the int8 file with XNNPack on, measured in the same run.

Usage:
    .venv/bin/python benchmarks/int4_latency.py [--num_runs 150 --rounds 3]
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_quantizer import qtyping, quantizer  # noqa: E402

from tflite_export import benchmark_tflite, to_tflite  # noqa: E402
from tfsafe._keras import keras, tf  # noqa: E402
from tfsafe.models import lenet  # noqa: E402

_OPS = (qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.FULLY_CONNECTED)


def _aeq(float_bytes, kind, bits, x):
    """The float file quantized by ai-edge-quantizer: ``kind`` in static / dynamic / weight_only."""
    qt = quantizer.Quantizer(bytearray(float_bytes))
    if kind == "static":
        qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
        for op in _OPS:
            qt.add_static_config(".*", op, 8, bits)
        name = Interpreter(model_content=float_bytes).get_signature_list()["serving_default"]["inputs"][0]
        with contextlib.redirect_stderr(io.StringIO()):
            ranges = qt.calibrate({"serving_default": [{name: x[i:i + 1]} for i in range(len(x))]})
        return bytes(qt.quantize(ranges, enable_progress_report=False).quantized_model)
    for op in _OPS:
        (qt.add_dynamic_config if kind == "dynamic" else qt.add_weight_only_config)(".*", op, bits)
    return bytes(qt.quantize(enable_progress_report=False).quantized_model)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_runs", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    keras.utils.set_random_seed(0)
    model = lenet((28, 28, 1), 10)
    x = np.random.default_rng(0).random((64, 28, 28, 1)).astype(np.float32)
    float_bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with tempfile.TemporaryDirectory() as folder:
        files = {"int8": os.path.join(folder, "int8.tflite"), "int4": os.path.join(folder, "int4.tflite")}
        to_tflite(model, files["int8"], "int8", x)
        to_tflite(model, files["int4"], "int4", x)
        for label, kind, bits in (("aeq static w8", "static", 8), ("aeq dynamic w8", "dynamic", 8),
                                  ("aeq dynamic w4", "dynamic", 4), ("aeq weight-only w4", "weight_only", 4)):
            files[label] = os.path.join(folder, label.replace(" ", "_") + ".tflite")
            with open(files[label], "wb") as f:
                f.write(_aeq(float_bytes, kind, bits, x[:32]))
        files["float32"] = os.path.join(folder, "float32.tflite")
        with open(files["float32"], "wb") as f:
            f.write(float_bytes)
        p50 = {(label, xnn): [] for label in files for xnn in (True, False)}
        for _ in range(args.rounds):
            for label, path in files.items():
                for xnn in (True, False):
                    bench = benchmark_tflite(path, x, num_threads=1, use_xnnpack=xnn, num_runs=args.num_runs,
                                             warmup_runs=20)
                    p50[label, xnn].append(bench.latency_ms["p50"])
        base = float(np.median(p50["int8", True]))
        print("| file | bytes | p50 ms XNNPack on | x int8 | p50 ms XNNPack off | x int8 |")
        print("|---|---|---|---|---|---|")
        for label, path in files.items():
            on, off = float(np.median(p50[label, True])), float(np.median(p50[label, False]))
            size = os.path.getsize(path)
            print(f"| {label} | {size:,} | {on:.4f} | {on / base:.2f} | {off:.4f} | {off / base:.2f} |")


if __name__ == "__main__":
    main()

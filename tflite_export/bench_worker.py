"""Benchmark one ``.tflite`` file in a fresh process: ``python -m tflite_export.bench_worker ARGS.json``.

:func:`tflite_export.commands.bench_command` starts one worker per file so that each file's
peak-memory growth is measured from the same state (runtime loaded, nothing freed by an
earlier file to reuse). ``ARGS.json`` holds ``path``, ``out`` (where the results go, written
with :func:`~tflite_export.benchmark.write_results`), ``dataset``, ``data_dir`` (or ``data_npz``, an
``.npz`` with the preprocessed ``x``, ``y``) and the
keyword arguments of :func:`~tflite_export.benchmark.benchmark_grid`. A tfsafe error is written
to ``out`` as ``{"error": message}`` instead.
"""

import json
import sys

import numpy as np

from tflite_export.benchmark import benchmark_grid, write_results
from tfsafe.data import load_dataset
from tfsafe.errors import TfsafeError
from tfsafe.io import atomic_write_json


def main(args_path):
    with open(args_path, encoding="utf-8") as f:
        args = json.load(f)
    try:
        x = y = None
        if args.get("data_npz"):
            with np.load(args["data_npz"], allow_pickle=False) as data:
                x, y = data["x"], data["y"]
        elif args.get("dataset"):
            _, (x, y) = load_dataset(args["dataset"], args.get("data_dir"))
        results = benchmark_grid(args["path"], x, y, **args["kwargs"])
    except TfsafeError as err:
        atomic_write_json(args["out"], {"error": str(err)})
        return 0
    write_results(results, args["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Library side of ``tfsafe export`` and ``tfsafe bench``: plain arguments in, results out,
Markdown tables printed. The absl flags live in :mod:`tfsafe_cli.flagsets`.

``export_command`` writes or refuses each requested mode on its own: an int8 file that fails
the parity rule is reported with its numbers and the others are still written. ``bench_command``
measures each file in its own process (memory columns compare) and heads its table with the
machine (CPU model, ISA features, runtime).
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tflite_export.benchmark import benchmark_grid, read_results, write_results
from tflite_export.host_info import describe
from tflite_export.parity import ParityError
from tfsafe.errors import InputError, TfsafeError

__all__ = ["export_command", "bench_command", "format_export_table", "format_bench_table", "load_split",
           "ExportRefused"]


class ExportRefused(TfsafeError):
    """Every requested export was refused; ``failures`` maps each mode to its reason."""

    def __init__(self, message, failures=None):
        super().__init__(message)
        self.failures = failures or {}


def load_split(dataset, data_dir=None, split="test", limit=None):
    """``(x, y)`` of a named dataset's ``train`` or ``test`` split (first ``limit`` rows)."""
    from tfsafe.data import load_dataset

    train, test = load_dataset(dataset, data_dir)
    x, y = train if split == "train" else test
    return (x[:limit], y[:limit]) if limit else (x, y)


def _mb(n):
    return "-" if n is None else f"{n / 1e6:.3f}"


def format_export_table(results):
    """Markdown table of :class:`~tflite_export.convert.ExportResult` rows."""
    lines = ["| file | mode | MB | gzip MB | input | agreement | confident agreement | max abs diff | "
             "accuracy (Keras -> file) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r.parity
        acc = "-" if p is None or p.keras_accuracy is None else f"{p.keras_accuracy:.4f} -> {p.exported_accuracy:.4f}"
        confident = "-" if p is None or p.confident_agreement is None else (
            f"{p.confident_agreement:.4f} ({p.n_confident})")
        lines.append(
            f"| {os.path.basename(r.path)} | {r.mode} | {_mb(r.bytes)} | {_mb(r.gzip_bytes)} | {r.input['dtype']} | "
            f"{'-' if p is None else f'{p.top1_agreement:.4f}'} | {confident} | "
            f"{'-' if p is None else f'{p.max_abs_diff:.3g}'} | {acc} |"
        )
    return "\n".join(lines)


def format_bench_table(results):
    """Markdown table of :class:`~tflite_export.benchmark.BenchmarkResult` rows."""
    def ms(v):
        return "-" if v is None else f"{v:.4g}"

    hosts = {describe(r.host) for r in results if r.host}
    devices = {r.device for r in results if not r.host}
    lines = [f"Measured on {m}." for m in sorted(hosts | devices)]
    lines += ["", "| file | platform | threads | delegate | p50 ms | p90 ms | p99 ms | mean ms | MB | gzip MB | "
              "peak mem MB | accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat, mem = r.latency_ms, r.memory_mb or {}
        lines.append(
            f"| {os.path.basename(r.model)} | {r.platform} | {r.num_threads} | {r.delegate} | {ms(lat.get('p50'))} | "
            f"{ms(lat.get('p90'))} | {ms(lat.get('p99'))} | {ms(lat.get('mean'))} | {_mb(r.file_bytes)} | "
            f"{_mb(r.gzip_bytes)} | {ms(mem.get('overall'))} | "
            f"{'-' if r.accuracy is None else f'{r.accuracy:.4f}'} |"
        )
    return "\n".join(lines)


def export_command(model_path, out_dir, modes=("int8",), dataset="digits", data_dir=None, calibration_samples=500,
                   verify=True, min_agreement=None, max_accuracy_drop=None, confidence_margin=None, onnx=False,
                   opset=17, integer_io=True, labels=None, print_fn=print, model=None, calibration_data=None,
                   verify_data=None, normalization=None):
    """Export a saved Keras model to TFLite (each of ``modes``) and optionally ONNX.

    Calibration data is the dataset's training split; ``verify`` checks each file against the
    Keras model on the test split with the shared parity rule (``min_agreement``,
    ``max_accuracy_drop``, ``confidence_margin``; None = the default of
    :class:`~tflite_export.parity.ParityRule`). Each mode is written or refused on its own.
    ``calibration_data`` (inputs) and ``verify_data`` (``(x, y)``), already preprocessed, replace
    the named dataset's splits (``tfsafe export --data``); ``normalization`` (a
    :meth:`tfsafe.preprocessing.Preprocessing.to_dict` record) goes into each side-car; ``model``
    is the loaded ``model_path`` when the caller has it.

    Returns:
        The list of :class:`~tflite_export.convert.ExportResult` written.

    Raises:
        ExportRefused: every requested file was refused (each reason is printed and kept).

    Example:
        >>> export_command("model.keras", "out", modes=["int8", "float32"])  # doctest: +SKIP
    """
    from tflite_export.convert import CALIBRATED_MODES, MODES, to_tflite
    from tfsafe.io import load_model

    modes = [modes] if isinstance(modes, str) else list(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not (modes or onnx):
        raise InputError(f"modes must be a non-empty subset of {MODES}, got {modes}.")
    model = load_model(model_path) if model is None else model
    stem = os.path.splitext(os.path.basename(model_path))[0]
    x_train = load_split(dataset, data_dir, "train")[0] if calibration_data is None else calibration_data
    checked = None
    if verify:
        checked = load_split(dataset, data_dir, "test") if verify_data is None else verify_data
    rule = {"min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop,
            "confidence_margin": confidence_margin}
    results, failures = [], {}
    jobs = [(mode, lambda mode=mode: to_tflite(
        model, os.path.join(out_dir, f"{stem}_{mode}.tflite"), mode, x_train if mode in CALIBRATED_MODES else None,
        num_calibration_samples=calibration_samples, integer_io=integer_io, verify=checked, labels=labels,
        normalization=normalization, **rule))
        for mode in modes]
    if onnx:
        from tflite_export.onnx_export import to_onnx  # tf2onnx only when ONNX is asked for

        jobs.append(("onnx", lambda: to_onnx(model, os.path.join(out_dir, f"{stem}.onnx"), opset, verify=checked,
                                             labels=labels, normalization=normalization, **rule)))
    for mode, job in jobs:
        try:
            results.append(job())
        except (ParityError, TfsafeError) as err:
            failures[mode] = str(err)
    if results:
        print_fn(format_export_table(results))
        for r in results:
            print_fn(f"wrote {r.path} and {r.metadata_path}")
    for mode, reason in failures.items():
        print_fn(f"refused {mode}: {reason}")
    if not results:
        raise ExportRefused("no file was written; " + " | ".join(f"{m}: {r}" for m, r in failures.items()),
                            failures)
    return results


def _bench_isolated(path, dataset, data_dir, kwargs, data=None):
    """:func:`~tflite_export.benchmark.benchmark_grid` of one file in a fresh Python process."""
    with tempfile.TemporaryDirectory(prefix="tfsafe-bench-") as tmp:
        args_path, out = os.path.join(tmp, "args.json"), os.path.join(tmp, "results.json")
        data_npz = None
        if data is not None:
            data_npz = os.path.join(tmp, "data.npz")
            np.savez(data_npz, x=data[0], y=data[1])
        with open(args_path, "w", encoding="utf-8") as f:
            json.dump({"path": os.fspath(path), "out": out, "dataset": dataset, "data_dir": data_dir,
                       "data_npz": data_npz, "kwargs": kwargs}, f)
        proc = subprocess.run([sys.executable, "-m", "tflite_export.bench_worker", args_path],
                              capture_output=True, text=True, check=False)
        if not os.path.isfile(out):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise InputError(f"benchmarking '{path}' failed in its worker process: {tail[0]}")
        with open(out, encoding="utf-8") as f:
            data = json.load(f)
        if "error" in data:
            raise InputError(data["error"])
        return read_results(out)


def bench_command(model_paths, out=None, dataset=None, data_dir=None, threads=(1,), xnnpack=(True,),
                  warmup_runs=20, num_runs=200, isolate=True, android=False, adb=None, serial=None,
                  benchmark_binary=None, use_gpu=False, use_nnapi=False, enable_op_profiling=False, print_fn=print,
                  data=None):
    """Benchmark ``.tflite`` files on this host (LiteRT) or on an Android device (adb).

    Args:
        model_paths: one path or a list of ``.tflite`` files.
        out: JSON file for the results (written atomically), or None.
        dataset, data_dir: labelled test data for accuracy (host only), or None.
        data: ``(x, y)`` arrays as the files take them (preprocessed), instead of ``dataset``.
        threads, xnnpack: configurations to run (every combination).
        isolate: host only: each file in its own process (``python -m tflite_export.bench_worker``)
            so that peak-memory growth is measured from the same state for every file.
        android: run on a device with ``benchmark_model`` instead of this host.

    Returns:
        The list of :class:`~tflite_export.benchmark.BenchmarkResult`.
    """
    paths = [model_paths] if isinstance(model_paths, (str, os.PathLike)) else list(model_paths)
    if not paths:
        raise InputError("Pass at least one .tflite file to benchmark.")
    threads = [int(t) for t in threads]
    if not threads or min(threads) < 1:
        raise InputError(f"threads must be positive integers, got {threads}.")
    results = []
    if android:
        from tflite_export.android import benchmark_android

        for path in paths:
            for n in threads:
                for use_xnnpack in xnnpack:
                    results.append(benchmark_android(
                        path, adb=adb, serial=serial, benchmark_binary=benchmark_binary, num_threads=n,
                        use_xnnpack=use_xnnpack, use_gpu=use_gpu, use_nnapi=use_nnapi, warmup_runs=warmup_runs,
                        num_runs=num_runs, enable_op_profiling=enable_op_profiling))
    elif isolate:
        kwargs = {"threads": threads, "xnnpack": [bool(v) for v in xnnpack], "warmup_runs": int(warmup_runs),
                  "num_runs": int(num_runs)}
        for path in paths:
            results.extend(_bench_isolated(path, dataset, data_dir, kwargs, data))
    else:
        x, y = (None, None) if data is None else data
        if dataset and data is None:
            x, y = load_split(dataset, data_dir, "test")
        for path in paths:
            results.extend(benchmark_grid(path, x, y, threads=threads, xnnpack=xnnpack,
                                          warmup_runs=warmup_runs, num_runs=num_runs))
    print_fn(format_bench_table(results))
    if out:
        print_fn(f"wrote {write_results(results, out)}")
    return results

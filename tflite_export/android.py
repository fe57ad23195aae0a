"""Benchmark a ``.tflite`` on an Android device with TFLite's ``benchmark_model`` over adb.

:func:`benchmark_android` pushes the model (and optionally the ``benchmark_model`` binary) to
the device, runs it with the requested threads and delegates (XNNPack, GPU, NNAPI), and parses
its log with :func:`parse_benchmark_output` into the same
:class:`~tflite_export.benchmark.BenchmarkResult` the host harness produces.

Get the binary from the LiteRT / TensorFlow prebuilt nightlies
(``android_aarch64_benchmark_model``, see
https://ai.google.dev/edge/litert/models/measurement#native_benchmark_binary) and pass its
local path as ``benchmark_binary``, or push it yourself to ``/data/local/tmp/benchmark_model``.

``benchmark_model`` reports timings in microseconds (converted to ms here), the mean, std,
min, max and, in recent versions, p5 / median / p95 of the timed runs; it prints no p90 / p99,
so those stay None for Android results.
"""

import os
import re
import shlex
import shutil
import subprocess

from tfsafe.errors import InputError, MissingDependencyError, TfsafeError

__all__ = ["AndroidDeviceError", "parse_benchmark_output", "parse_adb_devices", "build_benchmark_command",
           "benchmark_android", "result_from_output", "find_adb"]

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# Log prefixes: "INFO: ", or logcat "07-08 15:33:56.256 I/tflite  ( 5395): ".
_PREFIX = re.compile(
    r"^\s*(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\w/\S+\s*\(\s*\d+\):\s*)?(?:(?:INFO|WARNING|ERROR|VERBOSE):\s*)?"
)
_STAT_KEYS = ("count", "first", "curr", "min", "max", "avg", "std", "p5", "median", "p95")
_SUMMARY_ROW = re.compile(
    rf"^\s*(?P<node_type>\S.*?)\s+(?P<count>\d+)\s+(?P<avg_ms>{_NUM})\s+(?P<percent>{_NUM})%\s+"
    rf"(?P<cdf_percent>{_NUM})%\s+(?P<mem_kb>{_NUM})\s+(?P<times_called>\d+)\s*$"
)
_DEVICE_DIR = "/data/local/tmp"
_BINARY_HELP = ("Download android_aarch64_benchmark_model (LiteRT/TensorFlow nightly prebuilts, see "
                "https://ai.google.dev/edge/litert/models/measurement#native_benchmark_binary) and pass "
                "benchmark_binary='path/to/it', or push it to {path} and chmod +x it.")


class AndroidDeviceError(TfsafeError):
    """No usable Android device, or the device could not run the benchmark."""


def _clean_lines(text):
    return [_PREFIX.sub("", line.rstrip("\r")) for line in text.splitlines()]


def _stats(line):
    values = dict(re.findall(rf"\b(\w+)=({_NUM})", line))
    return {k: float(values[k]) for k in _STAT_KEYS if k in values}


def _op_profile(lines):
    try:
        start = next(i for i, line in enumerate(lines) if "Operator-wise Profiling Info for Regular" in line)
        header = next(i for i in range(start, len(lines)) if "[Node type]" in lines[i])
    except StopIteration:
        return None
    rows = []
    for line in lines[header + 1:]:
        if not line.strip():
            break
        match = _SUMMARY_ROW.match(line)
        if match:
            row = match.groupdict()
            rows.append({"node_type": row["node_type"].strip(), "count": int(row["count"]),
                         "avg_ms": float(row["avg_ms"]), "percent": float(row["percent"]),
                         "cdf_percent": float(row["cdf_percent"]), "mem_kb": float(row["mem_kb"]),
                         "times_called": int(row["times_called"])})
    return rows


def parse_benchmark_output(text):
    """Parse the log of TFLite's ``benchmark_model`` into a dict.

    Understands the plain, ``INFO:``-prefixed and logcat forms, old (``Peak memory footprint``)
    and new (``Memory footprint delta from the start of the tool``) memory lines, and the
    ``--enable_op_profiling`` "Summary by node type" table of the regular runs.

    Returns:
        ``{"graph", "num_threads", "model_size_mb", "init_ms", "warmup_us", "inference_us",
        "timings_us", "memory_mb", "peak_memory_mb", "delegates", "fully_delegated",
        "delegated_nodes", "op_profile"}``; stat dicts hold ``count, first, curr, min, max, avg, std`` and, when
        printed, ``p5, median, p95`` (microseconds).

    Raises:
        InputError: the text has no ``Inference timings in us`` line (the run failed).

    Example:
        >>> log = "Inference timings in us: Init: 2113, First inference: 4171, Warmup (avg): 1534.5, " \\
        ...       "Inference (avg): 1466.28"
        >>> parse_benchmark_output(log)["timings_us"]["inference_avg"]
        1466.28
    """
    lines = _clean_lines(text)
    out = {"graph": None, "num_threads": None, "model_size_mb": None, "init_ms": None, "warmup_us": None,
           "inference_us": None, "timings_us": None, "memory_mb": None, "peak_memory_mb": None,
           "delegates": [], "fully_delegated": None, "delegated_nodes": None, "op_profile": None}
    count_lines = []
    for line in lines:
        if m := re.match(r"Graph: \[(.*)\]", line):
            out["graph"] = m.group(1)
        elif m := re.match(r"(?:Num threads|#threads used for CPU inference): \[(\d+)\]", line):
            out["num_threads"] = int(m.group(1))
        elif m := re.match(rf"The input model file size \(MB\): ({_NUM})", line):
            out["model_size_mb"] = float(m.group(1))
        elif m := re.match(rf"Initialized session in ({_NUM})\s*ms", line):
            out["init_ms"] = float(m.group(1))
        elif line.startswith("count="):
            count_lines.append(_stats(line))
        elif m := re.match(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                           rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})", line):
            out["timings_us"] = dict(zip(("init", "first_inference", "warmup_avg", "inference_avg"),
                                         map(float, m.groups())))
        elif m := re.match(rf"(Memory footprint delta from the start of the tool|Peak memory footprint) "
                           rf"\(MB\): init=({_NUM}) overall=({_NUM})", line):
            out["memory_mb"] = {"init": float(m.group(2)), "overall": float(m.group(3)),
                                "kind": "delta" if m.group(1).startswith("Memory") else "peak"}
        elif m := re.match(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})", line):
            out["peak_memory_mb"] = float(m.group(1))
        elif "XNNPACK delegate for CPU" in line:
            out["delegates"].append("xnnpack")
        elif re.search(r"delegate for GPU|GPU delegate created", line):
            out["delegates"].append("gpu")
        elif "delegate for NNAPI" in line:
            out["delegates"].append("nnapi")
        if m := re.search(r"applied (\w+) delegate, and the model graph will be (\w+) executed", line, re.I):
            out["fully_delegated"] = m.group(2) == "completely"
            out["delegates"].append(m.group(1).lower())
        elif m := re.match(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node", line):
            out["delegated_nodes"] = {"delegate": m.group(3), "replaced": int(m.group(1)), "total": int(m.group(2))}
    if out["timings_us"] is None:
        tail = " | ".join(line for line in lines[-5:] if line.strip())
        raise InputError(f"Not a complete benchmark_model log (no 'Inference timings in us' line); it ends: {tail}")
    out["delegates"] = sorted(set(out["delegates"]))
    if count_lines:
        out["inference_us"] = count_lines[-1]
        out["warmup_us"] = count_lines[0] if len(count_lines) > 1 else None
    out["op_profile"] = _op_profile(lines)
    return out


def result_from_output(text, model_path, device="android", num_threads=None, delegate=None,
                       warmup_runs=None, num_runs=None):
    """A :class:`~tflite_export.benchmark.BenchmarkResult` from a ``benchmark_model`` log."""
    from tflite_export.benchmark import BenchmarkResult
    from tflite_export.convert import gzip_size

    parsed = parse_benchmark_output(text)
    stats, timings = parsed["inference_us"] or {}, parsed["timings_us"]

    def ms(key):
        return None if key not in stats else stats[key] / 1e3

    latency = {"count": int(stats["count"]) if "count" in stats else None,
               "mean": ms("avg") if "avg" in stats else timings["inference_avg"] / 1e3,
               "std": ms("std"), "min": ms("min"), "max": ms("max"), "p50": ms("median"),
               "p90": None, "p99": None, "p5": ms("p5"), "p95": ms("p95")}
    file_bytes = gzip_bytes = None
    if model_path and os.path.isfile(model_path):
        with open(model_path, "rb") as f:
            data = f.read()
        file_bytes, gzip_bytes = len(data), gzip_size(data)
    if delegate is None:
        delegate = next((d for d in ("gpu", "nnapi", "xnnpack") if d in parsed["delegates"]), "none")
    memory = parsed["memory_mb"]
    return BenchmarkResult(
        model=model_path or parsed["graph"], platform="android", device=device, runtime="benchmark_model",
        file_bytes=file_bytes, gzip_bytes=gzip_bytes,
        num_threads=num_threads if num_threads is not None else parsed["num_threads"], delegate=delegate,
        batch_size=1, warmup_runs=warmup_runs, num_runs=num_runs if num_runs is not None else latency["count"],
        latency_ms=latency, init_ms=timings["init"] / 1e3, first_inference_ms=timings["first_inference"] / 1e3,
        warmup_mean_ms=timings["warmup_avg"] / 1e3,
        memory_mb=None if memory is None else {"init": memory["init"], "overall": memory["overall"],
                                               "method": f"benchmark_model {memory['kind']}",
                                               "peak": parsed["peak_memory_mb"]},
        delegation={"delegates": parsed["delegates"], "fully_delegated": parsed["fully_delegated"],
                    "nodes": parsed["delegated_nodes"]},
        op_profile=parsed["op_profile"],
    )


def parse_adb_devices(text):
    """``[(serial, state), ...]`` from ``adb devices`` output (state: device, offline, unauthorized...)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) >= 2:
            devices.append((parts[0], parts[1]))
    return devices


def find_adb(adb=None):
    """Path of the adb binary: ``adb``, then PATH, then ``$ANDROID_HOME/platform-tools``."""
    candidates = [adb] if adb else [shutil.which("adb")] + [
        os.path.join(os.environ[v], "platform-tools", "adb") for v in ("ANDROID_HOME", "ANDROID_SDK_ROOT")
        if os.environ.get(v)]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise MissingDependencyError(
        f"adb not found{f' at {adb!r}' if adb else ' on PATH or in $ANDROID_HOME/platform-tools'}. Install "
        "Android platform-tools (https://developer.android.com/tools/releases/platform-tools, or "
        "`apt install adb`) or pass adb='/path/to/adb' (CLI: --adb)."
    )


def build_benchmark_command(device_binary, device_model, num_threads=1, use_xnnpack=True, use_gpu=False,
                            use_nnapi=False, warmup_runs=None, num_runs=50, enable_op_profiling=False,
                            extra_flags=()):
    """The ``benchmark_model`` command line (a list) run on the device."""
    def flag(v):
        return "true" if v else "false"

    cmd = [device_binary, f"--graph={device_model}", f"--num_threads={int(num_threads)}",
           f"--use_xnnpack={flag(use_xnnpack)}", f"--use_gpu={flag(use_gpu)}", f"--use_nnapi={flag(use_nnapi)}",
           f"--num_runs={int(num_runs)}"]
    if warmup_runs is not None:
        cmd.append(f"--warmup_runs={int(warmup_runs)}")
    if enable_op_profiling:
        cmd.append("--enable_op_profiling=true")
    return cmd + list(extra_flags)


def _run(args, timeout):
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise AndroidDeviceError(f"'{' '.join(args[:4])} ...' did not finish within {timeout} s.") from err
    except OSError as err:
        raise MissingDependencyError(f"Cannot run '{args[0]}': {err}. Check the adb path.") from err
    return done.returncode, (done.stdout or "") + (done.stderr or "")


def _pick_device(adb, serial):
    rc, text = _run([adb, "devices"], 60)
    if rc != 0:
        raise AndroidDeviceError(f"'adb devices' failed (exit {rc}): {text.strip()[:300]}")
    devices = parse_adb_devices(text)
    ready = [s for s, state in devices if state == "device"]
    if serial is not None:
        if serial not in ready:
            state = dict(devices).get(serial, "not attached")
            raise AndroidDeviceError(f"Android device '{serial}' is {state}; attached: {devices or 'none'}.")
        return serial
    if not ready:
        detail = ", ".join(f"{s} ({state})" for s, state in devices)
        unauthorized = any(state == "unauthorized" for _, state in devices)
        hint = " Accept the USB-debugging prompt on the phone." if unauthorized else ""
        raise AndroidDeviceError(
            f"No Android device ready for adb{f': found {detail}' if detail else ''}. Connect a phone with USB "
            f"debugging enabled (check with `adb devices`), or start an emulator.{hint}"
        )
    if len(ready) > 1:
        raise AndroidDeviceError(f"Several Android devices are attached ({', '.join(ready)}); pass serial=.")
    return ready[0]


def benchmark_android(model_path, *, adb=None, serial=None, benchmark_binary=None,
                      device_binary=_DEVICE_DIR + "/benchmark_model", device_dir=_DEVICE_DIR, num_threads=1,
                      use_xnnpack=True, use_gpu=False, use_nnapi=False, warmup_runs=None, num_runs=50,
                      enable_op_profiling=False, extra_flags=(), timeout=600):
    """Run ``benchmark_model`` on an attached Android device and parse its result.

    Args:
        model_path: local ``.tflite`` file (pushed to ``device_dir``).
        adb: adb binary (default: found on PATH / ``$ANDROID_HOME``).
        serial: device serial when several are attached.
        benchmark_binary: local ``benchmark_model`` for the device's ABI, pushed to
            ``device_binary``; None when it is already there.
        num_threads, use_xnnpack, use_gpu, use_nnapi: ``benchmark_model`` flags.
        warmup_runs, num_runs: warm-up and timed runs (``benchmark_model`` may run more to
            fill its minimum duration).
        enable_op_profiling: add the per-op-type table to the result.
        extra_flags: more ``--flag=value`` strings for ``benchmark_model``.
        timeout: seconds per adb call.

    Returns:
        A :class:`~tflite_export.benchmark.BenchmarkResult` with ``platform="android"``.

    Raises:
        MissingDependencyError: no adb binary.
        AndroidDeviceError: no (or several, or unauthorized) devices, a missing
            ``benchmark_model`` on the device, or a failed run (with the end of its log).
        InputError: a missing or non-TFLite model file.

    Example:
        >>> r = benchmark_android("model_int8.tflite", benchmark_binary="android_aarch64_benchmark_model",
        ...                       num_threads=4)  # doctest: +SKIP
        >>> r.latency_ms["mean"]  # doctest: +SKIP
        1.47
    """
    from tflite_export.runtime import is_tflite_file

    if not os.path.isfile(model_path) or not is_tflite_file(model_path):
        raise InputError(f"'{model_path}' is not a .tflite file (missing, or no TFL3 identifier).")
    adb = find_adb(adb)
    serial = _pick_device(adb, serial)
    base = [adb, "-s", serial]
    if benchmark_binary is not None:
        if not os.path.isfile(benchmark_binary):
            raise InputError(f"benchmark_binary '{benchmark_binary}' does not exist.")
        for args in (["push", benchmark_binary, device_binary], ["shell", "chmod", "755", device_binary]):
            rc, text = _run(base + args, timeout)
            if rc != 0:
                raise AndroidDeviceError(f"adb {args[0]} of benchmark_model failed: {text.strip()[:300]}")
    rc, text = _run(base + ["shell", "ls", device_binary], timeout)
    if rc != 0 or "No such file" in text:
        raise AndroidDeviceError(f"benchmark_model is not on the device at {device_binary}. "
                                 + _BINARY_HELP.format(path=device_binary))
    device_model = f"{device_dir.rstrip('/')}/{os.path.basename(model_path)}"
    rc, text = _run(base + ["push", model_path, device_model], timeout)
    if rc != 0:
        raise AndroidDeviceError(f"adb push of the model failed: {text.strip()[:300]}")
    cmd = build_benchmark_command(device_binary, device_model, num_threads, use_xnnpack, use_gpu, use_nnapi,
                                  warmup_runs, num_runs, enable_op_profiling, extra_flags)
    rc, log = _run(base + ["shell", " ".join(shlex.quote(c) for c in cmd)], timeout)
    _, model_name = _run(base + ["shell", "getprop", "ro.product.model"], timeout)
    delegate = "gpu" if use_gpu else "nnapi" if use_nnapi else "xnnpack" if use_xnnpack else "none"
    try:
        return result_from_output(log, model_path, device=f"{model_name.strip()} ({serial})",
                                  num_threads=num_threads, delegate=delegate, warmup_runs=warmup_runs)
    except InputError as err:
        raise AndroidDeviceError(f"benchmark_model failed on {serial} (exit {rc}): {err}") from err

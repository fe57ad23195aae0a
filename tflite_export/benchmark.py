"""Host benchmark of ``.tflite`` files on LiteRT (``ai_edge_litert``), in the same JSON schema
as the Android harness (:mod:`tflite_export.android`).

For each configuration (threads x XNNPack on/off) :func:`benchmark_tflite` loads the file, runs
warm-up and timed ``invoke()`` calls on one fixed input batch (as TFLite's ``benchmark_model``
does), and reports latency percentiles, init and first-inference time, file and gzip size,
the process's peak memory growth, and accuracy on labelled data.

Peak memory without psutil: on Linux the kernel's peak-RSS mark (``VmHWM``) is reset by
writing ``5`` to ``/proc/self/clear_refs``; the peak after the runs minus the RSS before
loading is the model's footprint (``method="vmhwm"``). Elsewhere ``ru_maxrss`` growth is used,
which reads 0 when the process was already bigger earlier (``method="ru_maxrss"``).
XNNPack off means LiteRT's ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` op resolver. Memory growth is
only comparable between files measured in fresh processes (a later file reuses memory an
earlier one freed): ``tfsafe bench`` runs each file in its own process
(:mod:`tflite_export.bench_worker`).

Every result carries ``host`` (:func:`tflite_export.host_info.host_info`: CPU model, the ISA
features int8 speed depends on, LiteRT version), since a latency figure means nothing without
the machine that produced it.
"""

import dataclasses
import os
import time

import numpy as np

from tflite_export.host_info import describe, host_info, runtime_version
from tflite_export.runtime import TFLiteModel
from tfsafe.errors import InputError
from tfsafe.io import atomic_write_json
from tfsafe.validation import check_features

__all__ = ["SCHEMA", "BenchmarkResult", "benchmark_tflite", "benchmark_grid", "latency_stats",
           "write_results", "read_results", "host_description"]

SCHEMA = "tfsafe.benchmark/1"


@dataclasses.dataclass
class BenchmarkResult:
    """One benchmark run (host or Android), serialized with :meth:`to_dict`.

    Attributes:
        model: path of the ``.tflite`` file benchmarked.
        platform: ``"host"`` or ``"android"``.
        device: CPU / OS of the host, or the Android device's model and serial.
        runtime: ``"ai_edge_litert <version>"`` or ``"benchmark_model"``.
        file_bytes, gzip_bytes: size of the file and of its gzip.
        num_threads: CPU threads; delegate: ``"xnnpack"``, ``"none"``, ``"gpu"`` or ``"nnapi"``.
        batch_size, warmup_runs, num_runs: how it was run.
        latency_ms: ``count, mean, std, min, max, p50, p90, p99`` (Android adds ``p5, p95``
            and leaves ``p90, p99`` None: ``benchmark_model`` prints only p5/median/p95).
        init_ms, first_inference_ms, warmup_mean_ms: start-up costs.
        memory_mb: ``{"init", "overall", "method"}``: memory growth after init and overall.
        accuracy, n_eval: top-1 accuracy of the file on the given labelled data.
        delegation: ``{"delegates", "fully_delegated", "nodes"}`` as far as the runtime reports it.
        op_profile: per-op-type rows of ``--enable_op_profiling`` (Android), else None.
        host: host runs: :func:`~tflite_export.host_info.host_info` (CPU model, ISA features,
            CPU count, OS, runtime version); None for Android.
    """

    model: str
    platform: str
    device: str
    runtime: str
    file_bytes: int
    gzip_bytes: int
    num_threads: int
    delegate: str
    batch_size: int
    warmup_runs: int
    num_runs: int
    latency_ms: dict
    init_ms: float = None
    first_inference_ms: float = None
    warmup_mean_ms: float = None
    memory_mb: dict = None
    accuracy: float = None
    n_eval: int = None
    delegation: dict = None
    op_profile: list = None
    host: dict = None
    schema: str = SCHEMA

    def to_dict(self):
        return dataclasses.asdict(self)


def latency_stats(samples_ms):
    """Count, mean, std, min, max and p50/p90/p99 of latencies in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise InputError("No latency samples: num_runs must be >= 1.")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "max": float(a.max()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def host_description():
    """``"AMD EPYC (x86_64, 16 CPUs); ISA: avx2, ...; ai_edge_litert 2.3.0"``: where a host benchmark ran."""
    return describe()


def _status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _MemoryProbe:
    """Peak resident memory growth of this process from construction on, in MB."""

    def __init__(self):
        self.method = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.start_kb = _status_kb("VmRSS")
            self.method = "vmhwm" if self.start_kb is not None else None
        except OSError:
            pass
        if self.method is None:
            try:
                import resource

                self.start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                self.method = "ru_maxrss"
            except (ImportError, OSError):
                self.start_kb = None

    def growth_mb(self):
        if self.method == "vmhwm":
            peak = _status_kb("VmHWM")
        elif self.method == "ru_maxrss":
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        else:
            return None
        return None if peak is None else max(0.0, (peak - self.start_kb) / 1024.0)


def _timing_batch(model, x, batch_size, seed):
    if x is not None:
        x = np.asarray(x)
        reps = int(np.ceil(batch_size / len(x)))
        batch = np.concatenate([x] * reps)[:batch_size] if reps > 1 else x[:batch_size]
    else:
        shape = (batch_size,) + tuple(d or 1 for d in model.input_shape)
        batch = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return model.quantize_input(batch)


def benchmark_tflite(path, x=None, y=None, *, num_threads=1, use_xnnpack=True, warmup_runs=20, num_runs=200,
                     batch_size=1, eval_batch_size=256, seed=0):
    """Benchmark one ``.tflite`` file on this machine with LiteRT.

    Args:
        path: the ``.tflite`` file.
        x: inputs: the first ``batch_size`` feed the timed runs (random data when None); with
            ``y`` all of ``x`` is used for accuracy.
        y: integer labels for accuracy (optional).
        num_threads: interpreter CPU threads.
        use_xnnpack: LiteRT's default XNNPack delegate on or off.
        warmup_runs, num_runs: untimed and timed ``invoke()`` calls.
        batch_size: examples per timed ``invoke()``.
        eval_batch_size: batch size of the accuracy pass.
        seed: seed of the random timing input.

    Returns:
        A :class:`BenchmarkResult` with ``platform="host"``.

    Raises:
        InputError: a missing or corrupt file, bad data or run counts.

    Example:
        >>> r = benchmark_tflite("model_int8.tflite", x_test, y_test, num_threads=1)  # doctest: +SKIP
        >>> r.latency_ms["p50"], r.accuracy  # doctest: +SKIP
        (0.041, 0.987)
    """
    if int(num_runs) < 1 or int(warmup_runs) < 0 or int(batch_size) < 1 or int(num_threads) < 1:
        raise InputError("num_runs, batch_size and num_threads must be >= 1 and warmup_runs >= 0.")
    probe = _MemoryProbe()
    start = time.perf_counter()
    model = TFLiteModel(path, num_threads=int(num_threads), use_xnnpack=use_xnnpack, batch_size=eval_batch_size)
    model.allocate(int(batch_size))
    init_ms = (time.perf_counter() - start) * 1e3
    init_mb = probe.growth_mb()
    if x is not None:
        x = check_features(x, "x", model.input_shape, dtype=None)
    batch = _timing_batch(model, x, int(batch_size), seed)
    interpreter, index = model.interpreter, model.input_details["index"]
    interpreter.set_tensor(index, batch)
    start = time.perf_counter()
    interpreter.invoke()
    first_ms = (time.perf_counter() - start) * 1e3
    warm = []
    for _ in range(int(warmup_runs)):
        t = time.perf_counter()
        interpreter.invoke()
        warm.append(time.perf_counter() - t)
    timed = np.empty(int(num_runs))
    for i in range(int(num_runs)):
        t = time.perf_counter()
        interpreter.invoke()
        timed[i] = time.perf_counter() - t
    overall_mb = probe.growth_mb()
    accuracy = n_eval = None
    if x is not None and y is not None:
        from tfsafe.validation import check_labels

        accuracy = model.accuracy(x, check_labels(y, None, "y", n=len(x)))
        n_eval = int(len(x))
    with open(model.path, "rb") as f:
        data = f.read()
    from tflite_export.convert import gzip_size

    return BenchmarkResult(
        model=model.path, platform="host", device=host_description(), runtime=runtime_version(),
        file_bytes=len(data), gzip_bytes=gzip_size(data), num_threads=int(num_threads),
        delegate="xnnpack" if use_xnnpack else "none", batch_size=int(batch_size),
        warmup_runs=int(warmup_runs), num_runs=int(num_runs), latency_ms=latency_stats(timed * 1e3),
        init_ms=init_ms, first_inference_ms=first_ms,
        warmup_mean_ms=float(np.mean(warm) * 1e3) if warm else None,
        memory_mb={"init": init_mb, "overall": overall_mb, "method": probe.method},
        accuracy=accuracy, n_eval=n_eval,
        delegation={"delegates": ["xnnpack"] if use_xnnpack else [], "fully_delegated": None, "nodes": None},
        host=host_info(),
    )


def benchmark_grid(path, x=None, y=None, threads=(1,), xnnpack=(True, False), **kwargs):
    """:func:`benchmark_tflite` for every ``threads x xnnpack`` combination (list of results)."""
    return [benchmark_tflite(path, x, y, num_threads=n, use_xnnpack=use_xnnpack, **kwargs)
            for n in threads for use_xnnpack in xnnpack]


def write_results(results, path):
    """Write benchmark results (one or a list) as ``{"schema", "results": [...]}`` atomically."""
    if isinstance(results, BenchmarkResult):
        results = [results]
    atomic_write_json(path, {"schema": SCHEMA, "results": [r.to_dict() for r in results]})
    return os.fspath(path)


def read_results(path):
    """Read a file written by :func:`write_results` back into :class:`BenchmarkResult` objects."""
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise InputError(f"'{path}' is not a tfsafe benchmark file (schema {data.get('schema')!r}).")
    fields = {f.name for f in dataclasses.fields(BenchmarkResult)}
    return [BenchmarkResult(**{k: v for k, v in r.items() if k in fields}) for r in data["results"]]

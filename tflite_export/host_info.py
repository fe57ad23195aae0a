"""Which machine produced a latency figure: CPU model, the ISA features int8 speed depends on,
OS, Python and LiteRT versions.

Host int8 latency depends on the CPU's integer dot-product instructions (x86: AVX2, AVX-512
VNNI, AVX-VNNI, AMX; ARM: dot-product, i8mm), so an int8 / float32 ratio means nothing
without them; and a host is not a phone (measure phones with :mod:`tflite_export.android`).
Read from ``/proc/cpuinfo`` (Linux) or ``platform`` elsewhere; no extra dependency.

Example:
    >>> info = host_info()
    >>> sorted(info)[:3]
    ['cpu_count', 'cpu_model', 'isa_features']
"""

import functools
import os
import platform
from importlib import metadata

__all__ = ["ISA_FEATURES", "host_info", "runtime_version", "describe"]

# The flags of /proc/cpuinfo that matter for int8 / float16 inference speed.
ISA_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_int8", "amx_bf16",  # x86
                "asimd", "asimddp", "i8mm", "sve", "sve2", "fphp", "asimdhp", "bf16")  # ARM (Linux names)


def _cpuinfo(path="/proc/cpuinfo"):
    model, flags = None, set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and model is None:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model, flags


def runtime_version():
    """``"ai_edge_litert 2.x"``: the LiteRT package that ran the file (or the bare name)."""
    try:
        return f"ai_edge_litert {metadata.version('ai-edge-litert')}"
    except metadata.PackageNotFoundError:
        return "ai_edge_litert"


@functools.cache
def _cached(path):
    model, flags = _cpuinfo(path)
    features = [f for f in ISA_FEATURES if f in flags]
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "isa_features": features,
        "cpu_count": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "runtime": runtime_version(),
    }


def host_info(cpuinfo_path="/proc/cpuinfo"):
    """A dict: ``cpu_model``, ``machine``, ``isa_features`` (the :data:`ISA_FEATURES` present),
    ``cpu_count``, ``os``, ``python``, ``runtime``."""
    return dict(_cached(cpuinfo_path))


def describe(info=None, num_threads=None, delegate=None):
    """One line for a table caption: CPU, ISA features, threads, delegate, runtime."""
    info = info or host_info()
    parts = [f"{info['cpu_model']} ({info['machine']}, {info['cpu_count']} CPUs)",
             "ISA: " + (", ".join(info["isa_features"]) or "none of " + "/".join(ISA_FEATURES[:4]))]
    if num_threads is not None:
        parts.append(f"{num_threads} thread(s)")
    if delegate is not None:
        parts.append(f"delegate {delegate}")
    parts.append(info["runtime"])
    return "; ".join(parts)

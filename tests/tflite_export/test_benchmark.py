import gzip
import json
import os

import numpy as np
import pytest

from tflite_export import TFLiteModel, benchmark_grid, benchmark_tflite, read_results, write_results
from tflite_export.benchmark import SCHEMA, latency_stats
from tfsafe.errors import InputError


def test_host_benchmark_measures_latency_size_memory_accuracy(int8_tflite, digits):
    _, (xt, yt) = digits
    r = benchmark_tflite(int8_tflite.path, xt, yt, num_threads=1, warmup_runs=5, num_runs=30)
    data = open(int8_tflite.path, "rb").read()
    assert r.platform == "host" and r.runtime.startswith("ai_edge_litert") and r.delegate == "xnnpack"
    assert r.file_bytes == len(data) and r.gzip_bytes == len(gzip.compress(data, 9, mtime=0))
    lat = r.latency_ms
    assert lat["count"] == 30 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r.init_ms > 0 and r.first_inference_ms > 0 and r.warmup_mean_ms > 0
    assert r.memory_mb["method"] in ("vmhwm", "ru_maxrss")
    assert r.memory_mb["overall"] >= r.memory_mb["init"] >= 0
    expected = np.mean(TFLiteModel(int8_tflite.path).predict(xt).argmax(1) == yt)
    assert r.accuracy == pytest.approx(expected) and r.n_eval == len(xt)


def test_grid_threads_and_xnnpack_and_random_inputs(int8_tflite):
    results = benchmark_grid(int8_tflite.path, threads=(1, 2), xnnpack=(True, False), warmup_runs=2, num_runs=10,
                             batch_size=3)
    assert [(r.num_threads, r.delegate) for r in results] == [(1, "xnnpack"), (1, "none"), (2, "xnnpack"),
                                                              (2, "none")]
    assert all(r.accuracy is None and r.batch_size == 3 and r.latency_ms["count"] == 10 for r in results)


def test_results_json_round_trip(int8_tflite, tmp_path):
    r = benchmark_tflite(int8_tflite.path, num_runs=5, warmup_runs=0)
    path = write_results([r], tmp_path / "bench" / "host.json")
    data = json.load(open(path))
    assert data["schema"] == SCHEMA and data["results"][0]["latency_ms"]["count"] == 5
    assert os.listdir(tmp_path / "bench") == ["host.json"]  # written atomically, no temp files left
    (back,) = read_results(path)
    assert back == r
    other = tmp_path / "other.json"
    other.write_text('{"schema": "x"}')
    with pytest.raises(InputError, match="not a tfsafe benchmark file"):
        read_results(other)


def test_latency_stats_percentiles():
    stats = latency_stats(np.arange(1, 101))
    assert stats["count"] == 100 and stats["mean"] == 50.5 and stats["min"] == 1 and stats["max"] == 100
    assert stats["p50"] == pytest.approx(50.5) and stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    with pytest.raises(InputError):
        latency_stats([])


def test_benchmark_bad_inputs(int8_tflite, digits, tmp_path):
    _, (xt, yt) = digits
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(open(int8_tflite.path, "rb").read()[:1000])
    with pytest.raises(InputError, match="not a valid .tflite model"):
        benchmark_tflite(corrupt)
    with pytest.raises(InputError, match="num_runs"):
        benchmark_tflite(int8_tflite.path, num_runs=0)
    with pytest.raises(InputError, match="expects"):
        benchmark_tflite(int8_tflite.path, xt[..., 0], num_runs=2)
    with pytest.raises(InputError, match="labels but there are"):
        benchmark_tflite(int8_tflite.path, xt, yt[:3], num_runs=2)


def test_every_host_result_names_its_machine(int8_tflite, tmp_path):
    from tflite_export.host_info import ISA_FEATURES, describe, host_info

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    info = host_info(str(fake))
    assert info["cpu_model"] == "Test CPU 9000" and info["isa_features"] == ["avx2", "avx512f", "avx512_vnni"]
    arm = tmp_path / "cpuinfo_arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd41\n")
    assert host_info(str(arm))["isa_features"] == ["asimd", "asimddp", "i8mm"]
    assert set(host_info()["isa_features"]) <= set(ISA_FEATURES)
    line = describe(info, num_threads=2, delegate="xnnpack")
    assert line.startswith("Test CPU 9000") and "ISA: avx2, avx512f, avx512_vnni" in line and "2 thread(s)" in line
    r = benchmark_tflite(int8_tflite.path, num_runs=3, warmup_runs=0)
    assert r.host == host_info() and r.host["runtime"] == r.runtime and r.device == describe()
    assert read_results(write_results(r, tmp_path / "b.json"))[0].host == r.host

"""The Android harness, tested against real ``benchmark_model`` logs (tests/tflite_export/data,
see its README for their sources). No phone is attached in CI, so the adb path is exercised up
to the clear error a user without a device gets."""

import dataclasses
import os
import stat

import pytest

from tflite_export import AndroidDeviceError, benchmark_android, parse_benchmark_output, read_results, write_results
from tflite_export.android import build_benchmark_command, find_adb, parse_adb_devices, result_from_output
from tflite_export.benchmark import BenchmarkResult
from tfsafe.errors import InputError, MissingDependencyError

DATA = os.path.join(os.path.dirname(__file__), "data")


def log(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return f.read()


def test_android_logcat_output():
    p = parse_benchmark_output(log("benchmark_model_android_logcat.txt"))
    assert p["graph"] == "/data/local/tmp/yolo26l_fp16.tflite" and p["num_threads"] == 4
    assert p["model_size_mb"] == 49.9313 and p["init_ms"] == 458.883
    assert p["timings_us"] == {"init": 458883.0, "first_inference": 2732148.0, "warmup_avg": 2732150.0,
                               "inference_avg": 2719850.0}  # "2.71985e+06" notation
    assert p["inference_us"] == {"count": 10, "first": 2653894, "curr": 2709263, "min": 2640862, "max": 3025403,
                                 "avg": 2719850, "std": 105101, "p5": 2640862, "median": 2709263, "p95": 3025403}
    assert p["warmup_us"]["count"] == 1 and p["warmup_us"]["median"] == 2732148
    assert p["memory_mb"] == {"init": 286.73, "overall": 337.0, "kind": "delta"}
    assert p["delegates"] == ["xnnpack"]
    assert p["delegated_nodes"] == {"delegate": "TfLiteXNNPackDelegate", "replaced": 1036, "total": 1097}
    assert p["op_profile"] is None


def test_info_prefixed_cpu_output():
    p = parse_benchmark_output(log("benchmark_model_cpu_xnnpack.txt"))
    assert p["graph"] == "mobilenet_quant_v1_224.tflite" and p["init_ms"] == 87.639
    assert p["inference_us"]["count"] == 50 and p["inference_us"]["median"] == 105718
    assert p["warmup_us"]["count"] == 5 and p["warmup_us"]["avg"] == 106065
    assert p["timings_us"]["inference_avg"] == 105784 and p["timings_us"]["init"] == 87639
    assert p["memory_mb"] == {"init": 14.4414, "overall": 14.8164, "kind": "delta"}


def test_legacy_gpu_output_with_tab_separated_profile():
    p = parse_benchmark_output(log("benchmark_model_gpu_legacy_profiling.txt"))
    assert p["num_threads"] == 1 and p["init_ms"] == 1451.51
    assert p["memory_mb"] == {"init": 63.4883, "overall": 63.4883, "kind": "peak"}  # older "Peak memory" line
    assert p["delegates"] == ["gpu"] and p["fully_delegated"] is True
    assert p["inference_us"]["avg"] == 8680.33 and "median" not in p["inference_us"]
    # Only the regular runs' summary, not the initialization profile before it.
    assert p["op_profile"] == [{"node_type": "TfLiteGpuDelegateV2", "count": 1, "avg_ms": 8.671, "percent": 100.0,
                                "cdf_percent": 100.0, "mem_kb": 0.0, "times_called": 1}]


def test_op_profiling_summary_by_node_type():
    p = parse_benchmark_output(log("benchmark_model_x86_op_profiling.txt"))
    rows = p["op_profile"]
    assert len(rows) == 11
    assert rows[0] == {"node_type": "Convolution (NHWC, QC8) GEMM", "count": 62, "avg_ms": 5.236, "percent": 34.361,
                       "cdf_percent": 34.361, "mem_kb": 0.0, "times_called": 101}
    assert rows[-1]["node_type"] == "Max Pooling (NHWC, S8)" and rows[-1]["cdf_percent"] == 100.0
    assert sum(r["count"] for r in rows) == 171  # "Number of nodes executed: 171"
    assert p["memory_mb"]["overall"] == 34.8281 and p["inference_us"]["count"] == 64


def test_result_uses_the_host_schema(tmp_path, int8_tflite):
    r = result_from_output(log("benchmark_model_cpu_xnnpack.txt"), int8_tflite.path, device="RB1 (abc)",
                           num_threads=4, delegate="xnnpack")
    assert isinstance(r, BenchmarkResult) and r.platform == "android" and r.runtime == "benchmark_model"
    assert r.latency_ms == {"count": 50, "mean": 105.784, "std": 0.26, "min": 105.416, "max": 106.528,
                            "p50": 105.718, "p90": None, "p99": None, "p5": 105.485, "p95": 106.281}
    assert r.init_ms == 87.639 and r.first_inference_ms == 106.436 and r.warmup_mean_ms == 106.065
    assert r.memory_mb["overall"] == 14.8164 and r.file_bytes == int8_tflite.bytes
    assert r.gzip_bytes == int8_tflite.gzip_bytes
    path = write_results([r], tmp_path / "android.json")
    assert read_results(path) == [r]
    host_fields = {f.name for f in dataclasses.fields(BenchmarkResult)}
    assert set(r.to_dict()) == host_fields


def test_incomplete_log_is_an_error():
    text = log("benchmark_model_cpu_xnnpack.txt").split("INFO: Inference timings")[0]
    with pytest.raises(InputError, match="no 'Inference timings in us' line"):
        parse_benchmark_output(text)


def test_adb_devices_parsing():
    text = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
            "List of devices attached\nemulator-5554\tdevice\nR58M12ABCDE\tunauthorized\n192.168.1.7:5555\toffline\n\n")
    assert parse_adb_devices(text) == [("emulator-5554", "device"), ("R58M12ABCDE", "unauthorized"),
                                       ("192.168.1.7:5555", "offline")]
    assert parse_adb_devices("List of devices attached\n\n") == []


def test_benchmark_command_flags():
    cmd = build_benchmark_command("/data/local/tmp/benchmark_model", "/data/local/tmp/m.tflite", num_threads=4,
                                  use_xnnpack=False, use_gpu=True, num_runs=30, warmup_runs=5,
                                  enable_op_profiling=True)
    assert cmd == ["/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/m.tflite", "--num_threads=4",
                   "--use_xnnpack=false", "--use_gpu=true", "--use_nnapi=false", "--num_runs=30", "--warmup_runs=5",
                   "--enable_op_profiling=true"]


def test_missing_adb(int8_tflite, tmp_path, monkeypatch):
    with pytest.raises(MissingDependencyError, match="adb not found at '/nonexistent/adb'"):
        benchmark_android(int8_tflite.path, adb="/nonexistent/adb")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ANDROID_HOME", raising=False)
    monkeypatch.delenv("ANDROID_SDK_ROOT", raising=False)
    with pytest.raises(MissingDependencyError, match="platform-tools"):
        find_adb()


def _adb_printing(tmp_path, devices_output):
    """An executable that answers `adb devices` like adb does (a stand-in for the Android SDK tool)."""
    script = tmp_path / "adb"
    script.write_text(f"#!/bin/sh\nif [ \"$1\" = devices ]; then printf '{devices_output}'; fi\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_no_attached_device(int8_tflite, tmp_path):
    adb = _adb_printing(tmp_path, "List of devices attached\\n\\n")
    with pytest.raises(AndroidDeviceError, match="No Android device ready"):
        benchmark_android(int8_tflite.path, adb=adb)
    adb = _adb_printing(tmp_path, "List of devices attached\\nR58M12ABCDE\\tunauthorized\\n\\n")
    with pytest.raises(AndroidDeviceError, match="Accept the USB-debugging prompt"):
        benchmark_android(int8_tflite.path, adb=adb)
    adb = _adb_printing(tmp_path, "List of devices attached\\nA\\tdevice\\nB\\tdevice\\n\\n")
    with pytest.raises(AndroidDeviceError, match="pass serial="):
        benchmark_android(int8_tflite.path, adb=adb)
    with pytest.raises(AndroidDeviceError, match="'C' is not attached"):
        benchmark_android(int8_tflite.path, adb=adb, serial="C")


def test_model_file_is_checked_first(tmp_path):
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a .tflite file"):
        benchmark_android(str(bad), adb="/nonexistent/adb")


def test_full_run_through_adb(int8_tflite, tmp_path):
    """The adb conversation of one benchmark: devices, push, ls, shell benchmark_model, getprop.

    The stand-in adb records its arguments and answers `shell benchmark_model ...` with a real log.
    """
    calls = tmp_path / "calls.txt"
    script = tmp_path / "adb"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
case "$*" in
  devices) printf 'List of devices attached\\nR58M12ABCDE\\tdevice\\n\\n' ;;
  *" push "*) echo "1 file pushed." ;;
  *"shell ls "*) echo /data/local/tmp/benchmark_model ;;
  *"shell getprop"*) echo "Pixel 7" ;;
  *"--graph="*) cat {os.path.join(DATA, "benchmark_model_cpu_xnnpack.txt")} >&2 ;;
esac
""")
    script.chmod(0o755)
    r = benchmark_android(int8_tflite.path, adb=str(script), num_threads=2, use_xnnpack=True, num_runs=50,
                          warmup_runs=5)
    lines = calls.read_text().splitlines()
    assert lines[0] == "devices"
    assert lines[1] == "-s R58M12ABCDE shell ls /data/local/tmp/benchmark_model"
    assert lines[2] == f"-s R58M12ABCDE push {int8_tflite.path} /data/local/tmp/trained_cnn_int8.tflite"
    assert lines[3] == ("-s R58M12ABCDE shell /data/local/tmp/benchmark_model "
                        "--graph=/data/local/tmp/trained_cnn_int8.tflite --num_threads=2 --use_xnnpack=true "
                        "--use_gpu=false --use_nnapi=false --num_runs=50 --warmup_runs=5")
    assert r.device == "Pixel 7 (R58M12ABCDE)" and r.num_threads == 2 and r.delegate == "xnnpack"
    assert r.latency_ms["p50"] == 105.718 and r.file_bytes == int8_tflite.bytes


def test_missing_benchmark_binary_on_device(int8_tflite, tmp_path):
    script = tmp_path / "adb"
    script.write_text("""#!/bin/sh
case "$*" in
  devices) printf 'List of devices attached\\nemulator-5554\\tdevice\\n\\n' ;;
  *"shell ls "*) echo "ls: /data/local/tmp/benchmark_model: No such file or directory"; exit 1 ;;
esac
""")
    script.chmod(0o755)
    with pytest.raises(AndroidDeviceError, match="android_aarch64_benchmark_model"):
        benchmark_android(int8_tflite.path, adb=str(script))

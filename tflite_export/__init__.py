"""Export plain Keras models to TFLite (int8, dynamic, float16, float32) and ONNX, check parity
and benchmark them on the host and on Android devices.

Example:
    >>> from tflite_export import to_tflite, TFLiteModel, benchmark_tflite  # doctest: +SKIP
    >>> result = to_tflite(model, "model_int8.tflite", "int8", x_train[:500], verify=(x_test, y_test))  # doctest: +SKIP
    >>> TFLiteModel(result.path).predict(x_test)  # float outputs  # doctest: +SKIP
    >>> benchmark_tflite(result.path, x_test, y_test, num_threads=1).latency_ms["p50"]  # doctest: +SKIP
"""

from tflite_export.android import AndroidDeviceError, benchmark_android, parse_benchmark_output
from tflite_export.benchmark import BenchmarkResult, benchmark_grid, benchmark_tflite, read_results, write_results
from tflite_export.convert import MODES, ExportResult, to_tflite
from tflite_export.onnx_export import to_onnx
from tflite_export.parity import ParityError, ParityReport, check_parity
from tflite_export.runtime import ONNXModel, TFLiteModel, load_exported

__all__ = [
    "MODES", "ExportResult", "to_tflite", "to_onnx",
    "ParityError", "ParityReport", "check_parity",
    "TFLiteModel", "ONNXModel", "load_exported",
    "BenchmarkResult", "benchmark_tflite", "benchmark_grid", "write_results", "read_results",
    "AndroidDeviceError", "benchmark_android", "parse_benchmark_output",
]

"""Export plain Keras models to TFLite (int8, dynamic, float16, float32) and ONNX, check parity
and benchmark them on the host and on Android devices."""

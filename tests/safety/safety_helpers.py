"""Models and files shared by the safety tests (a helper module, not a test file)."""

from conftest import clone

from tfsafe._keras import keras, tf
from tfsafe.safety.bpda import register_bpda_surrogate


class RoundInput(keras.layers.Layer):
    """Quantizes inputs to 4 levels: piecewise constant, so its gradient is zero (None in TF)."""

    def call(self, inputs):
        return tf.round(inputs * 3.0) / 3.0


register_bpda_surrogate(RoundInput)


def rounded_model(cnn):
    """``cnn`` (a copy) behind a rounding input layer: white-box PGD gets no gradient."""
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, clone(cnn)(RoundInput()(inputs)))


def int8_tflite(model, x, path):
    """Convert ``model`` to a full-integer int8 ``.tflite`` file (int8 input and output) at ``path``."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(100))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with open(path, "wb") as f:
        f.write(converter.convert())
    return str(path)

"""strip(): turn a model full of tfsafe / TF-MOT wrappers into plain Keras layers.

Each wrapper type registers a *stripper* with :func:`register_stripper`: a function that takes
the wrapper instance and returns ``(plain_layer, weights)``, where ``plain_layer`` is a new,
unbuilt standard Keras layer and ``weights`` the list of arrays to load into it once built
(masks multiplied in, quantization applied, factors merged). Layers without a stripper are
copied as they are (same config, same weights).

Model-level passes that change shapes across layers (for example removing zero-bit channels
and the matching input channels of the next layer) register with :func:`register_model_pass`
and run after the layer-wise strip.

TF-MOT's ``PruneLowMagnitude`` wrapper is handled out of the box, like ``strip_pruning``.
"""

from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from tfsafe._keras import keras, tfmot
from tfsafe.compress._rewrite import clone_with_weights
from tfsafe.errors import UnsupportedModelError
from tfsafe.metrics import masked_weights, record_deploy_bits
from tfsafe.models import flat_layers

__all__ = ["strip", "register_stripper", "register_model_pass", "is_wrapped", "masked_weights"]

_STRIPPERS = {}
_MODEL_PASSES = []


def register_stripper(wrapper_class, fn):
    """Register ``fn(layer) -> (plain_layer, weights)`` for instances of ``wrapper_class``."""
    _STRIPPERS[wrapper_class] = fn


def register_model_pass(fn):
    """Register ``fn(stripped_model, original_model) -> model`` to run after layer stripping."""
    if fn not in _MODEL_PASSES:
        _MODEL_PASSES.append(fn)


def _stripper_for(layer):
    for cls in type(layer).__mro__:
        if cls in _STRIPPERS:
            return _STRIPPERS[cls]
    return None


def is_wrapped(model):
    """True when any layer of ``model`` needs stripping before export."""
    return any(_stripper_for(layer) is not None for layer in flat_layers(model))


def _strip_prune_low_magnitude(layer):
    inner = layer.layer
    weights = [value for _, value, _ in masked_weights(inner, [(w, m) for w, m, _ in layer.pruning_vars])]
    return inner.__class__.from_config(inner.get_config()), weights


register_stripper(PruneLowMagnitude, _strip_prune_low_magnitude)


def strip(model):
    """Return a copy of ``model`` made only of plain Keras layers, with compression baked in.

    Masks are multiplied into the weights, quantized weights land on their grid, factorized
    layers are merged back, and registered model passes run (e.g. zero-bit channel removal).
    The input model is not modified. The learned bits of each kernel are recorded on the
    result (:func:`tfsafe.metrics.record_deploy_bits`) so that ``model_size`` reports them.

    Args:
        model: a ``tf_keras`` model that may contain tfsafe or TF-MOT wrappers.

    Returns:
        A new ``tf_keras`` model of standard layers.

    Example:
        >>> from tfsafe.models import small_cnn
        >>> plain = strip(small_cnn())
        >>> [type(l).__name__ for l in plain.layers][:2]
        ['InputLayer', 'Conv2D']
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(f"strip() needs a tf_keras model, got {type(model).__name__}.")

    def clone_layer(layer):
        stripper = _stripper_for(layer)
        return None if stripper is None else stripper(layer)

    with tfmot.quantization.keras.quantize_scope():  # TF-MOT layers left as they are (QAT) deserialize
        stripped = clone_with_weights(model, clone_layer, "strip")
    for model_pass in _MODEL_PASSES:
        stripped = model_pass(stripped, model)
    return record_deploy_bits(stripped, model)  # the bits the kernels ship with, for model_size

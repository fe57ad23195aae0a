"""BPDA: straight-through surrogates for non-differentiable layers (Athalye et al., 2018).

A layer declared non-differentiable (:func:`register_bpda_surrogate`, or a layer with its own
``bpda_surrogate(inputs)`` method) runs exactly in the forward pass; inside
:func:`straight_through` its gradient is the surrogate's. Every attack in
:mod:`tfsafe.safety.adversarial` and :mod:`tfsafe.safety.apgd` takes ``bpda=True`` to use it.
"""

import contextlib

from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.safety._hooks import patched_calls

__all__ = ["register_bpda_surrogate", "has_bpda_layers", "straight_through"]

_BPDA_SURROGATES = {}


def register_bpda_surrogate(layer_cls, fn=None):
    """Declare ``layer_cls`` non-differentiable and give the surrogate BPDA backpropagates through.

    Args:
        layer_cls: A Keras layer class (subclasses match too).
        fn: ``fn(layer, inputs) -> tensor`` shaped like the layer's output, differentiable and
            close to the layer's forward pass. ``None`` means the identity (the usual choice for
            rounding and quantization layers whose output has the input's shape).

    Example:
        >>> class Round(keras.layers.Layer):
        ...     def call(self, x):
        ...         return tf.round(x * 4.0) / 4.0
        >>> register_bpda_surrogate(Round)
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.layers.Layer)):
        raise InputError(f"register_bpda_surrogate needs a Keras layer class, got {layer_cls!r}.")
    _BPDA_SURROGATES[layer_cls] = fn if fn is not None else (lambda layer, inputs: inputs)


def _surrogate_for(layer):
    method = getattr(layer, "bpda_surrogate", None)
    if callable(method):
        return method
    for cls in type(layer).__mro__:
        if cls in _BPDA_SURROGATES:
            fn = _BPDA_SURROGATES[cls]
            return lambda inputs, _fn=fn, _layer=layer: _fn(_layer, inputs)
    return None


def has_bpda_layers(model):
    """True when ``model`` contains a layer with a BPDA surrogate (registered or its own method)."""
    layers = [model] + [m for m in getattr(model, "submodules", ()) if isinstance(m, keras.layers.Layer)]
    return any(_surrogate_for(layer) is not None for layer in layers)


@contextlib.contextmanager
def straight_through(model):
    """Within this block, ``model``'s non-differentiable layers backpropagate through surrogates.

    The forward pass is unchanged (``surrogate + stop_gradient(exact - surrogate)``). Use it
    around code that traces or runs the model, e.g. a custom attack.

    Example:
        >>> with straight_through(model):
        ...     grads = tape.gradient(loss, x)  # doctest: +SKIP
    """
    layers = [model] + [m for m in getattr(model, "submodules", ()) if isinstance(m, keras.layers.Layer)]

    def make_call(layer, original):
        surrogate = _surrogate_for(layer)
        if surrogate is None:
            return None

        def call(inputs, *args, **kwargs):
            exact = original(inputs, *args, **kwargs)
            approx = tf.cast(surrogate(inputs), exact.dtype)
            return approx + tf.stop_gradient(exact - approx)

        return call

    with patched_calls(layers, make_call):
        yield
